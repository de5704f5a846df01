"""`protege dedup IN OUT`: the ROUGE-L near-duplicate filter on any supported file.

Kept records are written in input order (in the input's format unless asked otherwise);
dropped ones go to OUT's sibling `<name>.dropped.jsonl` with the kept record they matched
and the score, so every decision can be checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from protege import records
from protege import rouge
from protege.errors import UserError

FIELDS = ("instruction", "input", "output", "prompt")


@dataclass
class DedupSummary:
    total: int
    kept: int
    dropped: int
    seconds: float
    output: Path
    dropped_file: Path


def dropped_path(dst: Path) -> Path:
    return dst.with_name(dst.name.split(".")[0] + ".dropped.jsonl")


def dedup_file(src: Path, dst: Path, *, threshold: float = 0.7, field: str = "instruction",
               from_: str | None = None, to: str | None = None, exact: bool = False) -> DedupSummary:
    """Drop near-duplicates (ROUGE-L F > threshold against any kept record) from a file."""
    t0 = time.perf_counter()
    if field not in FIELDS:
        raise UserError(f"--field {field!r}: expected one of {', '.join(FIELDS)}")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: must be between 0 and 1")
    fmt = from_ or records.detect_format(src)
    examples = records.read_examples(src, fmt)
    texts = [getattr(ex, field) for ex in examples]
    result = rouge.exact_dedup(texts) if exact else rouge.dedup(texts, threshold=threshold)
    kept = [examples[i] for i in result.kept]
    n = records.write_examples(dst, kept, to or records.output_format(dst, fmt))
    dropped = []
    for i, match in result.dropped:
        ex = examples[i]
        ex.meta.update({"drop_reason": "exact-duplicate" if exact else "rouge-l",
                        "index": i, "matched_index": match.index, "matched_text": match.text,
                        "score": match.score})
        dropped.append(ex)
    dfile = dropped_path(dst)
    records.write_examples(dfile, dropped, "openai")
    return DedupSummary(len(examples), n, len(dropped), time.perf_counter() - t0, dst, dfile)
