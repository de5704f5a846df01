"""The dataset card (Markdown) written with every curated dataset.

Sources, teachers and their terms, generation settings (read from the records' provenance),
filters with the counts they dropped, split sizes, the seeds' licence, stats charts and the
known limitations. Pure rendering: the curate stage gathers the facts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from protege.config import RunConfig
from protege.governance import GateReport, render_governance_section
from protege.records import Example

_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")
_SUM_KEYS = ("prompt_tokens", "completion_tokens", "cost_usd")


def generation_settings(examples: Sequence[Example]) -> dict[str, Any]:
    """What the records' provenance says about how they were made (counts of each value)."""
    modes: Counter[str] = Counter()
    sampling: Counter[str] = Counter()
    templates: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    licenses: Counter[str] = Counter()
    sums: dict[str, float] = {}
    for ex in examples:
        m = ex.meta
        sources[str(m.get("source", "(not recorded)"))] += 1
        if m.get("mode"):
            modes[str(m["mode"])] += 1
        s = m.get("sampling")
        if isinstance(s, dict):
            sampling[json.dumps({k: s[k] for k in _SAMPLING_KEYS if k in s}, sort_keys=True)] += 1
        for key in ("template", "template_hash", "prompt_template"):
            if m.get(key):
                tpl = m[key]
                if isinstance(tpl, dict):  # generate's template.provenance(): name + hash
                    tpl = " ".join(str(tpl[k]) for k in ("name", "sha256", "hash") if tpl.get(k)) or \
                        json.dumps(tpl, sort_keys=True)
                templates[str(tpl)] += 1
                break
        tokens = m.get("tokens")
        if isinstance(tokens, dict):  # generate writes {"prompt": n, "completion": n}
            for key in ("prompt", "completion"):
                if isinstance(tokens.get(key), (int, float)):
                    sums[f"{key}_tokens"] = sums.get(f"{key}_tokens", 0) + tokens[key]
        t = m.get("teacher")
        if isinstance(t, dict) and t.get("model_version"):
            versions[f"{t.get('model')}: {t['model_version']}"] += 1
        if m.get("license"):
            licenses[str(m["license"])] += 1
        for holder in (m, m.get("usage") if isinstance(m.get("usage"), dict) else {}):
            for key in _SUM_KEYS:
                if isinstance(holder.get(key), (int, float)):
                    sums[key] = sums.get(key, 0) + holder[key]
    return {"sources": dict(sources.most_common()), "modes": dict(modes.most_common()),
            "sampling": dict(sampling.most_common(5)), "templates": dict(templates.most_common(5)),
            "model_versions": dict(versions.most_common(5)), "licenses": dict(licenses.most_common()),
            "totals": {k: round(v, 4) for k, v in sums.items()}}


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"`{k}` ({v})" for k, v in d.items()) or "not recorded"


def render_card(cfg: RunConfig, summary: dict[str, Any], gate: GateReport,
                gen: dict[str, Any], stats: dict[str, Any] | None) -> str:
    """The dataset card's Markdown."""
    c = cfg.curate
    out = [f"# Dataset card: {summary['name']}", "",
           f"Curated by protege {summary.get('protege_version', '')} on {summary['created']}. "
           f"Input: `{summary['input']}` ({summary['input_records']} records).", ""]
    out += ["## Sources", "", f"- record sources (`meta.source`): {_counts(gen['sources'])}"]
    if cfg.seeds:
        out.append(f"- seed tasks: `{cfg.seeds}`")
    lic = c.seeds_license or (", ".join(gen["licenses"]) if gen["licenses"] else None)
    out.append(f"- licence of the seeds: {lic or 'not stated (set curate.seeds_license)'}")
    out.append("")
    out.append(render_governance_section(gate))
    out += ["## Generation settings", ""]
    out.append(f"- modes (`meta.mode`): {_counts(gen['modes'])}")
    if cfg.teacher is not None:
        out.append(f"- configured teacher: {cfg.teacher.kind} `{cfg.teacher.model}`")
    out.append(f"- sampling (`meta.sampling`): {_counts(gen['sampling'])}")
    out.append(f"- prompt templates: {_counts(gen['templates'])}")
    if gen["model_versions"]:
        out.append(f"- teacher model versions: {_counts(gen['model_versions'])}")
    if gen["totals"]:
        out.append("- totals: " + ", ".join(f"{k} {v}" for k, v in gen["totals"].items()))
    out += ["", "## Filters", "", "Applied in this order; each dropped record is in `dropped.jsonl` "
            "with `meta.drop_reason` and `meta.dropped_by`.", "",
            "| filter | settings | in | dropped |", "|---|---|---|---|"]
    for f in summary["filters"]:
        out.append(f"| {f['name']} | {f['settings']} | {f['in']} | {f['dropped']} |")
    out += ["", f"Kept {summary['kept']} of {summary['input_records']} records "
            f"({summary['dropped']} dropped).", ""]
    out += ["## Splits", "", f"Seeded shuffle (seed {c.split.seed}), val {c.split.val}, test {c.split.test}:", ""]
    out += [f"- {name}: {n} records (`{name}.jsonl`)" for name, n in summary["splits"].items()]
    out.append("")
    if stats:
        out += _stats_section(stats)
    out += ["## Known limitations", ""]
    out += [f"- {line}" for line in limitations(cfg, gate, summary)]
    out.append("")
    return "\n".join(out)


def _stats_section(stats: dict[str, Any]) -> list[str]:
    iw, ow = stats["instruction_words"], stats["output_words"]
    out = ["## Stats", "",
           f"- instruction words: mean {iw['mean']}, median {iw['median']}, p95 {iw['p95']}, max {iw['max']}",
           f"- reply words: mean {ow['mean']}, median {ow['median']}, p95 {ow['p95']}, max {ow['max']}",
           f"- records with an input: {stats.get('with_input', 0)}; multi-turn: {stats.get('multi_turn', 0)}"]
    if "rougeL_nearest" in stats:
        r = stats["rougeL_nearest"]
        out.append(f"- ROUGE-L to the nearest other instruction ({r['sampled']} sampled): mean {r['mean']}, "
                   f"max {r['max']}")
    if "unique_verbs" in stats:
        top = ", ".join(f"{v} {o} ({n})" for v, o, n in stats["verb_noun_top"][:10])
        out.append(f"- {stats['unique_verbs']} distinct root verbs; top verb/object pairs: {top}")
    out += [f"- note: {n}" for n in stats.get("notes", [])]
    out.append("")
    for name, file in stats.get("charts", {}).items():
        out += [f"![{name}](stats/{file})", ""]
    return out


def limitations(cfg: RunConfig, gate: GateReport, summary: dict[str, Any]) -> list[str]:
    """What this dataset does not guarantee, stated plainly."""
    c = cfg.curate
    out = ["Machine-generated records are not checked for truth by protege: replies can be wrong, "
           "outdated or biased in ways no filter here detects."]
    if not c.decontaminate:
        out.append("Not decontaminated: no eval sets were configured (curate.decontaminate).")
    else:
        out.append(f"Decontaminated by {c.decontam_ngram}-token n-gram overlap with the configured eval "
                   "sets only; paraphrased overlap is not caught.")
    if c.language:
        out.append(f"The language filter ({c.language}) is a light heuristic (scripts and common words), "
                   "not a language identifier.")
    if c.drop_refusals:
        out.append("Refusal and boilerplate detection uses English patterns only.")
    if c.judge is None:
        out.append("No LLM-judge quality filter was applied.")
    if gate.unattributed:
        out.append(f"{gate.unattributed} record(s) carry no provenance, so their terms were not checked.")
    if gate.blocked:
        out.append("Some teachers' terms restrict or may restrict training on their outputs "
                   "(see above); training stops until they are acknowledged.")
    if summary["splits"].get("test", 0) < 50:
        out.append("The test split is small: metrics on it have wide confidence intervals.")
    return out
