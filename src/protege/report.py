"""`protege report`: the run directory -> RUN/report.html and RUN/report.md.

Built only from files the stages wrote (manifest.json, generate/, data/stats/stats.json and its charts,
data/dropped.jsonl, student/metrics.jsonl and train_config.json, eval/scores.json, eval/answers/,
eval/judgements.jsonl); nothing is recomputed and no model is loaded. A stage that has not run leaves
its section saying so, so a run with no eval yet still gets a report.

report.html is one self-contained file: inline CSS, every chart a base64 PNG (matplotlib, Agg), no
script, font or stylesheet fetched, and every string from the data HTML-escaped. report.md carries the
same numbers as Markdown tables (it links the curate charts in data/stats/ where they exist).

Why by hand: no library renders this run layout; html.escape and matplotlib do the escaping and drawing.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.paths import atomic_write_text
from protege.store import RunStore

SECTIONS = (("headline", "Headline"), ("data", "Data"), ("funnel", "Filter funnel"), ("training", "Training"),
            ("winrates", "Win / tie / loss"), ("ifeval", "Instruction following (IFEval)"),
            ("cost", "Cost and speed"), ("examples", "Side-by-side examples"))
MAX_EXAMPLES = 5        # side-by-side examples per set
MAX_TEXT = 3000         # characters of one prompt or answer shown (the answers files hold the rest)
CANDIDATE_ORDER = ("teacher", "base", "student")

# ------------------------------------------------------------------------------------------------ reading


def _jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file and how many lines could not be read (a line cut by a killed run)."""
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, bad


def _count(path: Path) -> int:
    """Non-empty lines of a JSONL file (records), without parsing them."""
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})",
                        hint="It is written by a protege stage: rerun that stage to rewrite it.") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object", hint="Rerun the stage that writes it.")
    return data


def _reasons(rows: list[dict[str, Any]], key: str) -> Counter[str]:
    return Counter(str((r.get("meta") or {}).get(key) or "(no reason recorded)") for r in rows)


def gather(store: RunStore) -> dict[str, Any]:
    """Everything the report shows, read from the run directory (None where a stage has not run)."""
    raw, failed = _count(store.raw), _count(store.failed)
    gen_dropped, _ = _jsonl(store.generate_dropped)
    cur_dropped, _ = _jsonl(store.dropped)
    metrics, bad_metrics = _jsonl(store.metrics)
    judgements, _ = _jsonl(store.judgements)
    answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    if store.eval_answers_dir.is_dir():
        for path in sorted(store.eval_answers_dir.glob("*.jsonl")):
            set_name, _, cand = path.stem.partition("__")
            answers[(set_name, cand)] = _jsonl(path)[0]
    stats = _json(store.stats_file)
    return {
        "run": store.root.name, "manifest": _json(store.manifest_file) or {},
        "generate": None if not (raw or gen_dropped or failed) else {
            "kept": raw, "dropped": len(gen_dropped), "failed": failed,
            "reasons": _reasons(gen_dropped, "drop_reason")},
        "stats": stats, "curate_by": _reasons(cur_dropped, "dropped_by"),
        "curate_examples": {by: str((r.get("meta") or {}).get("drop_reason", "")) for r in cur_dropped
                            if (by := (r.get("meta") or {}).get("dropped_by"))},
        "metrics": metrics, "bad_metrics": bad_metrics, "train_config": _json(store.train_config),
        "scores": _json(store.scores), "answers": answers, "judgements": judgements,
    }


# ------------------------------------------------------------------------------------------------ charts


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def funnel_steps(facts: dict[str, Any]) -> list[tuple[str, int]]:
    """(stage, records left) from generation to the kept data and its splits."""
    steps: list[tuple[str, int]] = []
    g = facts["generate"]
    if g:
        steps += [("generated", g["kept"] + g["dropped"] + g["failed"]), ("after generation filters", g["kept"])]
    cur = (facts["stats"] or {}).get("curate")
    if cur:
        if not g:
            steps.append(("curate input", cur["input_records"]))
        for f in cur.get("filters", []):
            steps.append((f"after {f['name']}", f["in"] - f["dropped"]))
        steps.append(("kept", cur["kept"]))
        steps += [(f"split: {name}", n) for name, n in (cur.get("splits") or {}).items()]
    return steps


def chart_funnel(steps: list[tuple[str, int]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(steps) + 1))
    labels, values = [s for s, _ in steps][::-1], [n for _, n in steps][::-1]
    bars = ax.barh(labels, values, color=["#8172B3" if lbl.startswith("split") else "#4C72B0" for lbl in labels])
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("records")
    ax.set_title("From generated to kept")
    ax.margins(x=0.15)
    return _png(fig)


def chart_loss(metrics: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    train = [(m["step"], m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float))]
    val = [(m["step"], m["eval_loss"]) for m in metrics if isinstance(m.get("eval_loss"), (int, float))]
    if train:
        ax.plot(*zip(*train), label="training loss", color="#4C72B0")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", color="#C44E52")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training and validation loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def chart_pairwise(set_name: str, pairs: list[dict[str, Any]]) -> bytes:
    """Win / tie / loss rate of each pair (a vs b, from a's side) with its 95% bootstrap interval."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(pairs) + 1.2))
    y = np.arange(len(pairs))
    for k, (key, color) in enumerate((("win", "#55A868"), ("tie", "#8C8C8C"), ("loss", "#C44E52"))):
        vals = [p.get(key) or 0.0 for p in pairs]
        cis = [p.get(f"{key}_ci") or [v, v] for p, v in zip(pairs, vals)]
        err = [[max(0.0, v - lo) for v, (lo, _) in zip(vals, cis)], [max(0.0, hi - v) for v, (_, hi) in zip(vals, cis)]]
        ax.barh(y + (k - 1) * 0.27, vals, height=0.25, color=color, xerr=err, capsize=3, label=key)
    ax.set_yticks(y, [f"{p['a']} vs {p['b']} (n={p.get('n', 0)})" for p in pairs])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of prompts ({set_name}); bars: 95% bootstrap CI")
    ax.set_title(f"{set_name}: judged win / tie / loss of the first candidate")
    ax.legend(loc="lower right")
    return _png(fig)


# ------------------------------------------------------------------------------------------------ formatting


def _pct(x: Any, ci: Any = None) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    out = f"{x:.1%}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        out += f" [{ci[0]:.1%}, {ci[1]:.1%}]"
    return out


def _num(x: Any, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.3g}{unit}" if abs(x) < 100 else f"{x:,.0f}{unit}"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    return str(x)


def _bytes(x: Any) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(x) < 1024 or unit == "TiB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1024
    return str(x)


def _clip(text: Any) -> str:
    if isinstance(text, list):  # multi-turn: one entry per turn
        text = "\n\n".join(f"[turn {i}] {t}" for i, t in enumerate(text, 1))
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT:,} more characters)"


# ------------------------------------------------------------------------------------------------ sections
# Each section builder returns blocks: ("p", text) | ("table", header, rows) | ("img", alt, png) |
# ("file_img", alt, png, relative path) | ("example", title, [(label, text)], [verdict lines]).
# The HTML and Markdown renderers below turn blocks into markup; only they escape.

Block = tuple[Any, ...]


def sec_headline(f: dict[str, Any]) -> list[Block]:
    s = f["scores"]
    out: list[Block] = [("p", s["headline"] if s and s.get("headline") else
                         "No evaluation yet: run `protege eval -c FILE`, then `protege report -c FILE` again.")]
    stages = (f["manifest"].get("stages") or {})
    if stages:
        out.append(("table", ["stage", "status", "seconds", "finished"],
                    [[n, i.get("status", "?"), _num(i.get("seconds")), i.get("finished", "")]
                     for n, i in stages.items()]))
    return out


def sec_data(f: dict[str, Any], store: RunStore) -> list[Block]:
    st = f["stats"]
    if not st:
        return [("p", "No curated data yet (data/stats/stats.json is missing): run `protege curate -c FILE`.")]
    iw, ow = st.get("instruction_words") or {}, st.get("output_words") or {}
    out: list[Block] = [("table", ["", "records", "mean words", "median", "p95", "max"], [
        ["instructions", _num(iw.get("count", st.get("records"))), _num(iw.get("mean")), _num(iw.get("median")),
         _num(iw.get("p95")), _num(iw.get("max"))],
        ["replies", _num(ow.get("count", st.get("records"))), _num(ow.get("mean")), _num(ow.get("median")),
         _num(ow.get("p95")), _num(ow.get("max"))]])]
    facts = [f"{_num(st.get('records'))} records kept; {_num(st.get('with_input', 0))} with an input, "
             f"{_num(st.get('multi_turn', 0))} multi-turn."]
    if r := st.get("rougeL_nearest"):
        facts.append(f"ROUGE-L to the most similar other instruction ({_num(r.get('sampled'))} sampled): "
                     f"mean {_num(r.get('mean'))}, max {_num(r.get('max'))}.")
    if st.get("unique_verbs"):
        facts.append(f"{_num(st['unique_verbs'])} distinct root verbs.")
    out += [("p", " ".join(facts))] + [("p", f"Note: {n}") for n in st.get("notes", [])]
    if st.get("verb_noun_top"):
        out.append(("table", ["verb", "object", "instructions"],
                    [[v, o, _num(n)] for v, o, n in st["verb_noun_top"][:10]]))
    charts = st.get("charts") or {}
    for name in ("verb_noun", "lengths", "rouge"):
        path = store.stats_dir / str(charts.get(name, ""))
        if name in charts and path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
            out.append(("file_img", f"{name} chart", path.read_bytes(), f"data/stats/{path.name}"))
    if "verb_noun" not in charts:
        out.append(("p", "No verb/noun chart: curate ran without spaCy (see the note above)."))
    return out


def sec_funnel(f: dict[str, Any]) -> list[Block]:
    steps = funnel_steps(f)
    if not steps:
        return [("p", "No generation or curation yet: nothing to count.")]
    out: list[Block] = [("img", "filter funnel", chart_funnel(steps)),
                        ("table", ["stage", "records"], [[s, _num(n)] for s, n in steps])]
    g = f["generate"]
    if g and (g["reasons"] or g["failed"]):
        rows = [[r, _num(n)] for r, n in g["reasons"].most_common(10)]
        if g["failed"]:
            rows.append(["request failed after its last retry (generate/failed.jsonl)", _num(g["failed"])])
        out.append(("table", ["dropped during generation", "records"], rows))
    cur = (f["stats"] or {}).get("curate")
    if cur and cur.get("filters"):
        out.append(("table", ["curate filter", "settings", "in", "dropped", "e.g."],
                    [[x["name"], x.get("settings", ""), _num(x["in"]), _num(x["dropped"]),
                      f["curate_examples"].get(x["name"], "")] for x in cur["filters"]]))
    elif f["curate_by"]:
        out.append(("table", ["curate filter", "dropped"], [[k, _num(n)] for k, n in f["curate_by"].most_common()]))
    return out


def sec_training(f: dict[str, Any]) -> list[Block]:
    m = f["metrics"]
    train = [x for x in m if isinstance(x.get("loss"), (int, float))]
    val = [x for x in m if isinstance(x.get("eval_loss"), (int, float))]
    if not train and not val:
        return [("p", "No training metrics yet (student/metrics.jsonl): run `protege train -c FILE`.")]
    out: list[Block] = [("img", "training and validation loss", chart_loss(m))]
    rows = [["optimizer steps", _num(max(x.get("step", 0) for x in m))]]
    if train:
        rows += [["first / last training loss", f"{train[0]['loss']:.4f} / {train[-1]['loss']:.4f}"]]
        speeds = sorted(x["tokens_per_s"] for x in train if isinstance(x.get("tokens_per_s"), (int, float)))
        if speeds:
            rows.append(["tokens/s (median of logged steps)", _num(speeds[len(speeds) // 2])])
    if val:
        best = min(val, key=lambda x: x["eval_loss"])
        rows.append(["best validation loss", f"{best['eval_loss']:.4f} (step {best['step']})"])
    if (last := m[-1]).get("elapsed_s") is not None:
        rows.append(["training time", _num(last["elapsed_s"], " s")])
    tc = (f["train_config"] or {}).get("train") or {}
    rows += [[k, _num(tc[k])] for k in ("method", "epochs", "max_steps", "lr", "batch_size", "max_seq_len") if k in tc]
    if (f["train_config"] or {}).get("examples") is not None:
        rows.append(["training examples", _num(f["train_config"]["examples"])])
    out.append(("table", ["", "value"], rows))
    if f["bad_metrics"]:
        out.append(("p", f"{f['bad_metrics']} unreadable line(s) in metrics.jsonl skipped (a run killed mid-write)."))
    return out


def _sets(f: dict[str, Any]) -> list[dict[str, Any]]:
    return list((f["scores"] or {}).get("sets") or [])


def sec_winrates(f: dict[str, Any]) -> list[Block]:
    if not f["scores"]:
        return [("p", "No evaluation yet (eval/scores.json): run `protege eval -c FILE`.")]
    out: list[Block] = []
    judge = f["scores"].get("judge") or {}
    if judge:
        out.append(("p", f"Judge: {judge.get('kind', '?')} {judge.get('model', '?')}; each pair judged in both "
                         "orders, a verdict counts only when both agree (else a tie); the weighted win rate averages the "
                         "judge's probabilities of each verdict over both orders (ties halved)."))
    for s in _sets(f):
        cands = s.get("candidates") or {}
        out.append(("table", [f"{s['name']} ({_num(s.get('n'))} prompts, {s.get('format', '?')})", "model", "answers",
                              "hit cap", "mean words", "ROUGE-L vs reference", "grade 1-10"],
                    [[c, v.get("model", ""), _num(v.get("answers")), _num(v.get("hit_cap")), _num(v.get("mean_words")),
                      _num(v.get("rougeL_vs_reference")) + (f" (vs {v['reference']})" if v.get("reference") else ""),
                      _num(v.get("grade_mean"))] for c, v in cands.items()]))
        pairs = [p for p in s.get("pairwise") or [] if p.get("n")]
        if pairs:
            out.append(("img", f"win tie loss {s['name']}", chart_pairwise(s["name"], pairs)))
            out.append(("table", ["pair (a vs b)", "n", "a wins", "tie", "a loses", "a wins or ties", "inconsistent",
                                  "a's weighted win rate", "mean words a / b"],
                        [[f"{p['a']} vs {p['b']}", _num(p["n"]), _pct(p.get("win"), p.get("win_ci")),
                          _pct(p.get("tie"), p.get("tie_ci")), _pct(p.get("loss"), p.get("loss_ci")),
                          _pct(p.get("win_or_tie"), p.get("win_or_tie_ci")), _pct(p.get("inconsistent")),
                          _pct(p.get("win_rate_weighted"), p.get("win_rate_weighted_ci")),
                          f"{_num(p.get('mean_words_a'))} / {_num(p.get('mean_words_b'))}"] for p in pairs]))
            out += [("p", f"Warning ({p['a']} vs {p['b']}): {w}") for p in pairs for w in p.get("warnings") or []]
        out += [("p", f"Note ({s['name']}): {n}") for n in s.get("notes") or []]
    if not any(s.get("pairwise") for s in _sets(f)):
        out.append(("p", "No judged pairs in this eval."))
    return out


def sec_ifeval(f: dict[str, Any]) -> list[Block]:
    out: list[Block] = []
    for s in _sets(f):
        if not s.get("ifeval"):
            continue
        rows = [[c, _pct(v.get("prompt_strict")), _pct(v.get("prompt_loose")), _pct(v.get("instruction_strict")),
                 _pct(v.get("instruction_loose")), _num(v.get("n_prompts")), _num(v.get("n_instructions")),
                 _num(v.get("n_unscored"))] for c, v in s["ifeval"].items()]
        out.append(("table", [f"{s['name']}: candidate", "prompt strict", "prompt loose", "instruction strict",
                              "instruction loose", "prompts", "instructions", "unscored"], rows))
        notes = {v.get("note") for v in s["ifeval"].values() if v.get("note")}
        out += [("p", f"Note: {n}") for n in sorted(notes)]
    return out or [("p", "No IFEval set in this eval (add an IFEval input_data.jsonl to eval.sets)."
                    if f["scores"] else "No evaluation yet: run `protege eval -c FILE`.")]


def sec_cost(f: dict[str, Any]) -> list[Block]:
    cost = (f["scores"] or {}).get("cost") or {}
    if not cost:
        return [("p", "No cost table yet: `protege eval` measures it.")]
    rows = [[c, v.get("model", ""), _num(v.get("params")), _bytes(v.get("disk_bytes")), _num(v.get("tokens_per_s")),
             _num(v.get("latency_p50_s"), " s"), _num(v.get("latency_p95_s"), " s"), _bytes(v.get("peak_memory_bytes")),
             "n/a" if v.get("usd_per_1k_requests") is None else f"${v['usd_per_1k_requests']:,.4f}",
             v.get("price_basis", "")] for c, v in cost.items()]
    return [("table", ["candidate", "model", "parameters", "on disk", "tokens/s", "p50 latency", "p95 latency",
                       "peak memory", "USD per 1k requests", "price basis"], rows)]


def _order(cands: list[str]) -> list[str]:
    return sorted(cands, key=lambda c: (CANDIDATE_ORDER.index(c) if c in CANDIDATE_ORDER else -1, c))


def sec_examples(f: dict[str, Any]) -> list[Block]:
    by_set: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (set_name, cand), rows in f["answers"].items():
        by_set.setdefault(set_name, {})[cand] = rows
    verdicts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for j in f["judgements"]:  # pairwise verdicts and (optional) single-answer grades
        if "winner" in j or "grade" in j:
            verdicts.setdefault((str(j.get("set")), str(j.get("id"))), []).append(j)
    out: list[Block] = []
    for set_name, cands in sorted(by_set.items()):
        names = _order(list(cands))
        first = cands[names[0]]
        ids = [str(r.get("id")) for r in first]
        judged = [i for i in ids if (set_name, i) in verdicts]
        for item_id in (judged or ids)[:MAX_EXAMPLES]:
            rows = {c: next((r for r in cands[c] if str(r.get("id")) == item_id), None) for c in names}
            prompt = next((r.get("prompt") for r in rows.values() if r), "")
            texts = [("prompt", _clip(prompt))] + [
                (f"{c} ({r.get('model', '')})" + (" [hit the token cap]" if r.get("hit_cap") else ""),
                 _clip(r.get("answer")))
                for c, r in rows.items() if r is not None]
            lines = []
            for j in verdicts.get((set_name, item_id), []):
                if "winner" not in j:
                    lines.append(f"grade of {j.get('candidate')}: {j.get('grade', 'n/a')}/10 · "
                                 f"{j.get('rationale', '')}")
                    continue
                who = {"a": j.get("a"), "b": j.get("b")}.get(j.get("winner"), "tie")
                head = f"{j.get('a')} vs {j.get('b')}: " + ("tie" if who == "tie" else f"{who} wins")
                head += "" if j.get("consistent", True) else " (the two orders disagreed: counted as a tie)"
                lines.append(head + "".join(f" · {r}" for r in j.get("reasons") or []))
            out.append(("example", f"{set_name} · {item_id}", texts, lines or ["not judged"]))
    return out or [("p", "No answers yet (eval/answers/): run `protege eval -c FILE`.")]


def build_sections(f: dict[str, Any], store: RunStore) -> list[tuple[str, str, list[Block]]]:
    """(id, title, blocks) of every section, in SECTIONS order."""
    blocks = {"headline": sec_headline(f), "data": sec_data(f, store), "funnel": sec_funnel(f),
              "training": sec_training(f), "winrates": sec_winrates(f), "ifeval": sec_ifeval(f), "cost": sec_cost(f),
              "examples": sec_examples(f)}
    return [(key, title, blocks[key]) for key, title in SECTIONS]


# ------------------------------------------------------------------------------------------------ rendering

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:1.5rem;
color:#222;line-height:1.45}
h1{margin-bottom:.2rem} nav a{margin-right:.8rem} section{border-top:1px solid #ddd;margin-top:1.6rem}
table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem} th,td{border:1px solid #ccc;padding:.3rem .5rem;
text-align:left;vertical-align:top} th{background:#f3f3f3}
img{max-width:min(100%,820px);height:auto;display:block;margin:.6rem 0}
.example{border:1px solid #ccc;border-radius:6px;margin:1rem 0;padding:.6rem}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(250px,1fr));gap:.6rem}
.text{white-space:pre-wrap;word-wrap:break-word;background:#fafafa;border:1px solid #eee;padding:.4rem;max-height:22rem;
overflow:auto;font-size:.85rem} .label{font-weight:600;font-size:.85rem} .verdict{font-size:.85rem;color:#333}
.headline{font-size:1.15rem;font-weight:600}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_block(b: Block, first: bool) -> str:
    kind = b[0]
    if kind == "p":
        return ('<p class="headline">' if first else "<p>") + f"{_e(b[1])}</p>"
    if kind == "table":
        head = "".join(f"<th>{_e(h)}</th>" for h in b[1])
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in b[2])
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if kind in ("img", "file_img"):
        return f'<img alt="{_e(b[1])}" src="data:image/png;base64,{base64.b64encode(b[2]).decode("ascii")}">'
    if kind == "example":
        cols = "".join(f'<div><div class="label">{_e(label)}</div><div class="text">{_e(text)}</div></div>'
                       for label, text in b[2])
        verdict = "".join(f'<div class="verdict">{_e(v)}</div>' for v in b[3])
        return f'<div class="example"><div class="label">{_e(b[1])}</div><div class="cols">{cols}</div>{verdict}</div>'
    raise ValueError(f"unknown block {kind!r}")


def render_html(run: str, sections: list[tuple[str, str, list[Block]]]) -> str:
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>'
                   + "".join(_html_block(b, key == "headline" and i == 0) for i, b in enumerate(blocks)) + "</section>"
                   for key, title, blocks in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>protege report: {_e(run)}</title><style>{CSS}</style></head><body>"
            f"<h1>protege report: {_e(run)}</h1><nav>{nav}</nav>{body}</body></html>\n")


def _md_cell(x: Any) -> str:
    return str(x).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
    ticks = "`" * max(3, _longest_backticks(text) + 1)  # a fence no run of backticks in the text can close
    return f"{ticks}text\n{text}\n{ticks}"


def _longest_backticks(text: str) -> int:
    best = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        best = max(best, run)
    return best


def _md_block(b: Block) -> str:
    kind = b[0]
    if kind == "p":
        return str(b[1])
    if kind == "table":
        rows = [b[1], ["---"] * len(b[1]), *b[2]]
        return "\n".join("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    if kind == "img":
        return f"*Chart: {b[1]} (embedded in report.html).*"
    if kind == "file_img":
        return f"![{b[1]}]({b[3]})"
    if kind == "example":
        parts = [f"#### {b[1]}"] + [f"**{label}**\n\n{_fence(text)}" for label, text in b[2]]
        return "\n\n".join(parts + [f"- {v}" for v in b[3]])
    raise ValueError(f"unknown block {kind!r}")


def render_md(run: str, sections: list[tuple[str, str, list[Block]]]) -> str:
    out = [f"# protege report: {run}"]
    for _, title, blocks in sections:
        out += [f"## {title}"] + [_md_block(b) for b in blocks]
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ stage


def run(store: RunStore) -> dict[str, Any]:
    """Write RUN/report.html and RUN/report.md from the run directory; return their paths and sections."""
    if not store.root.is_dir():
        raise UserError(f"no run directory at {store.root}",
                        hint="Run `protege generate -c FILE` (or any stage) first, or check run_dir in the config.")
    with store.stage("report") as info:
        facts = gather(store)
        sections = build_sections(facts, store)
        atomic_write_text(store.report_html, render_html(facts["run"], sections))
        atomic_write_text(store.report_md, render_md(facts["run"], sections))
        for path in (store.report_html, store.report_md):
            store.record_artifact(path, "report")
        empty = [key for key, _, blocks in sections if all(b[0] == "p" for b in blocks) and key != "headline"]
        info.update(sections=[key for key, _, _ in sections], without_data=empty)
    return {"html": store.report_html, "md": store.report_md, "without_data": empty}
