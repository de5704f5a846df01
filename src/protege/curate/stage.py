"""The curate stage: raw records -> filtered, deduplicated, decontaminated, split, documented.

`run(cfg, store)` reads the generate stage's `generate/raw.jsonl` (or any supported file given
as `input_path`), streams it through the filters in order, splits what is kept with a seeded
shuffle, and writes `data/{train,val,test}.jsonl`, `data/dropped.jsonl` (every dropped record
with `meta.drop_reason`), `data/stats/` (stats.json + PNG charts) and the dataset card
`data/card.md`, each recorded in the manifest. The governance gate is *assessed* here for the
card (a warning, not a stop); it stops the run before training (`governance.check_gate`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.curate import filters as F
from protege.errors import UserError
from protege.records import Example, read_examples, write_examples
from protege.store import RunStore, now_iso

SPLITS = ("train", "val", "test")


def split_examples(examples: list[Example], val: float, test: float,
                   seed: int) -> dict[str, list[Example]]:
    """Seeded shuffle, then test and val cut off the front (rounded sizes); same input and seed
    give the same splits. Records keep their relative order inside each split."""
    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(n * test), round(n * val)
    if n_test + n_val > n:
        raise UserError(f"curate.split: val {val} + test {test} leave no training records of {n}")
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {name: [examples[i] for i in sorted(parts[name])] for name in SPLITS}


def _counted(stream: Iterable[Example], counter: list[int]) -> Iterator[Example]:
    for ex in stream:
        counter[0] += 1
        yield ex


def _chain(cfg: RunConfig, drops: F.Drops, calls_db: Path | None = None) -> list[tuple[str, str, F.Filter]]:
    """(name, settings shown in the card, filter) in the order they apply."""
    c = cfg.curate
    settings = {"empty/truncated": "empty instruction or reply; finish_reason=length",
                "refusal": f"{len(F.REFUSAL_PATTERNS)} refusal/boilerplate patterns",
                "length": f"reply words in [{c.min_output_words}, {c.max_output_words or '∞'}]",
                "blocklist": ("default list" if c.blocklist is None else f"{len(c.blocklist)} entries"),
                "language": f"target {c.language} (heuristic)",
                "exact_duplicate": "whole conversation, normalised"}
    chain = [(name, settings[name], f) for name, f in F.build_filters(c, drops)]
    if c.decontaminate:
        from protege.curate.decontam import decontaminate, load_eval_ngrams

        index = load_eval_ngrams(c.decontaminate, c.decontam_ngram)
        chain.append(("decontam", f"{c.decontam_ngram}-gram overlap with {index.items} eval prompts "
                      f"({', '.join(Path(p).name for p in c.decontaminate)}); {c.decontam_action}",
                      partial(decontaminate, drops=drops, index=index, action=c.decontam_action)))
    if c.dedup_mode == "minhash":
        from protege.curate import minhash

        chain.append(("near_duplicate", f"ROUGE-L({c.dedup_field}) > {c.rouge_threshold} on MinHash LSH "
                      f"candidates ({minhash.BANDS} bands x {minhash.NUM_PERM // minhash.BANDS} rows)",
                      partial(minhash.near_duplicates, drops=drops, threshold=c.rouge_threshold,
                              field=c.dedup_field)))
    else:
        chain.append(("near_duplicate", f"ROUGE-L({c.dedup_field}) > {c.rouge_threshold}",
                      partial(F.near_duplicates, drops=drops, threshold=c.rouge_threshold, field=c.dedup_field)))
    if c.judge is not None:  # last: the only filter that costs teacher calls
        chain.append(("llm_judge", f"{c.judge.kind} {c.judge.model}, keep score >= {c.judge_threshold}",
                      partial(F.llm_judge, drops=drops, cfg=c.judge, threshold=c.judge_threshold,
                              calls_db=calls_db)))
    return chain


def _filter_all(examples: list[Example], chain: list[tuple[str, str, F.Filter]],
                drops: F.Drops) -> tuple[list[Example], list[dict[str, Any]]]:
    from rich.progress import track

    counters = [[0] for _ in chain]
    stream: Iterable[Example] = track(examples, description="curating", transient=True)
    for (_, _, f), counter in zip(chain, counters):
        stream = f(_counted(stream, counter))
    kept = list(stream)
    rows = [{"name": name, "settings": settings, "in": counter[0], "dropped": drops.counts.get(key, 0)}
            for (name, settings, _), counter, key in zip(chain, counters, _drop_keys(chain))]
    return kept, rows


def _drop_keys(chain: list[tuple[str, str, F.Filter]]) -> list[str]:
    # The `by` each filter records; "empty/truncated" records two kinds.
    return [name for name, _, _ in chain]


def run(cfg: RunConfig, store: RunStore, input_path: str | Path | None = None,
        stats: bool = True) -> dict[str, Any]:
    """Curate `input_path` (default: the run's generate/raw.jsonl) into the run's data/ folder.

    `stats=False` skips the charts (spaCy parsing takes seconds); the card then says so.

    Returns the summary (counts per filter, split sizes, files written).
    """
    import json

    from rich.console import Console

    from protege import __version__
    from protege.curate.card import generation_settings, render_card
    from protege.curate.stats import compute_stats
    from protege.governance import assess

    console = Console(stderr=True)
    src = Path(input_path) if input_path is not None else store.raw
    if not src.exists():
        raise UserError(f"curate: input not found: {src}",
                        hint="Run `protege generate -c CONFIG` first, or curate any file with --input FILE.")
    examples = read_examples(src)  # a bad input is refused before anything in the run directory changes
    if not examples:
        raise UserError(f"curate: {src} holds no records")
    store.write_config(cfg.to_yaml())
    with store.stage("curate", cfg.hash()) as info:
        drops = F.Drops()
        chain = _chain(cfg, drops, store.calls_db)
        t0 = time.perf_counter()
        kept, rows = _filter_all(examples, chain, drops)
        # "empty" and "truncated" are two reasons of one filter: fold them into its row.
        rows[0]["dropped"] = drops.counts.get("empty", 0) + drops.counts.get("truncated", 0)
        seconds = time.perf_counter() - t0
        c = cfg.curate
        splits = split_examples(kept, c.split.val, c.split.test, c.split.seed)
        store.ensure(store.data_dir, store.stats_dir)
        written: dict[str, int] = {}
        for name in SPLITS:
            written[name] = write_examples(store.split(name), splits[name])
            store.record_artifact(store.split(name), "curate", written[name])
        n_dropped = write_examples(store.dropped, drops.records)
        store.record_artifact(store.dropped, "curate", n_dropped)
        gate = assess(kept, cfg)
        numbers = (compute_stats(kept, store.stats_dir, c.rouge_threshold, c.dedup_field, c.split.seed)
                   if stats else {"records": len(kept), "charts": {}, "notes": ["stats skipped (--no-stats)"]})
        summary: dict[str, Any] = {
            "name": Path(cfg.run_dir).name, "created": now_iso(), "protege_version": __version__,
            "input": str(src), "input_records": len(examples), "kept": len(kept), "dropped": n_dropped,
            "filters": rows, "drop_reasons": dict(drops.counts), "splits": written,
            "seconds_filtering": round(seconds, 3), "governance": gate.to_dict(),
        }
        numbers["curate"] = {k: summary[k] for k in ("input_records", "kept", "dropped", "filters", "splits")}
        store.stats_file.write_text(json.dumps(numbers, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        store.record_artifact(store.stats_file, "curate")
        for file in numbers["charts"].values():
            store.record_artifact(store.stats_dir / file, "curate")
        card = render_card(cfg, summary, gate, generation_settings(examples), numbers if stats else None)
        store.card.write_text(card, encoding="utf-8")
        store.record_artifact(store.card, "curate")
        info.update(input=str(src), input_records=len(examples), kept=len(kept), dropped=n_dropped,
                    splits=written)
    _print_summary(console, summary, gate)
    summary["files"] = {"splits": {n: str(store.split(n)) for n in SPLITS}, "dropped": str(store.dropped),
                        "card": str(store.card), "stats": str(store.stats_dir)}
    return summary


def _print_summary(console: Any, summary: dict[str, Any], gate: Any) -> None:
    from rich.table import Table

    table = Table(title=f"curate: kept {summary['kept']} of {summary['input_records']}")
    for col in ("filter", "in", "dropped", "settings"):
        table.add_column(col)
    for r in summary["filters"]:
        table.add_row(r["name"], str(r["in"]), str(r["dropped"]), r["settings"])
    console.print(table)
    console.print("splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    if gate.blocked:
        console.print("[yellow]governance: training will stop until these teachers are acknowledged "
                      "(governance.acknowledge): " + ", ".join(f"{t.model} ({t.entry.status})"
                                                               for t in gate.blocked) + "[/yellow]")
