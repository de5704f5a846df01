"""Decontamination: drop (or flag) training records that overlap the eval sets.

A training record is contaminated when its prompt (instruction + input) shares a run of `n`
consecutive tokens (default 13, the GPT-3 paper's choice) with the prompt of any eval item.
Eval prompts shorter than `n` tokens but at least `n // 2` long count as one whole n-gram of
their own length, so a short eval question copied verbatim is still caught; shorter ones are
ignored (a 3-word prompt shares words with everything).

Tokens are rouge-score's (lower-cased `[a-z0-9]+` runs), so case and punctuation do not hide
an overlap. N-grams are kept as Python hashes of token tuples in sets: memory is one int per
eval n-gram, and a check costs one set lookup per training n-gram. A 64-bit hash collision
could flag a clean record, with odds too small to matter (~n_grams² / 2⁶⁴).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protege.curate.filters import Drops
from protege.rouge import tokenize
from protege.errors import UserError
from protege.records import Example, read_examples


@dataclass
class EvalNgrams:
    """Hashed n-grams of the eval prompts, and where each came from (for drop reasons)."""

    n: int
    grams: dict[int, set[int]] = field(default_factory=dict)  # length -> hashes
    origin: dict[tuple[int, int], str] = field(default_factory=dict)  # (length, hash) -> source
    items: int = 0

    def add(self, text: str, source: str) -> None:
        tokens = tokenize(text)
        self.items += 1
        if len(tokens) >= self.n:
            lengths = [self.n]
        elif len(tokens) >= max(1, self.n // 2):
            lengths = [len(tokens)]
        else:
            return
        for m in lengths:
            bucket = self.grams.setdefault(m, set())
            for i in range(len(tokens) - m + 1):
                h = hash(tuple(tokens[i: i + m]))
                if h not in bucket:
                    bucket.add(h)
                    self.origin[(m, h)] = source

    def find(self, text: str) -> tuple[str, str] | None:
        """(the shared n-gram, where it comes from) for the first overlap, or None."""
        tokens = tokenize(text)
        for m, bucket in self.grams.items():
            for i in range(len(tokens) - m + 1):
                gram = tuple(tokens[i: i + m])
                h = hash(gram)
                if h in bucket:
                    return " ".join(gram), self.origin[(m, h)]
        return None


def load_eval_ngrams(paths: Sequence[str | Path], n: int = 13) -> EvalNgrams:
    """N-grams of every prompt of the eval files (any supported format)."""
    if n < 1:
        raise UserError(f"curate.decontam_ngram must be >= 1, got {n}")
    index = EvalNgrams(n)
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"curate.decontaminate: eval file not found: {path}",
                            hint="Fix the path (relative to the config file) or remove it from the list.")
        for k, ex in enumerate(read_examples(path), 1):
            index.add(ex.prompt, f"{path.name}#{k}")
    return index


def decontaminate(examples: Iterable[Example], drops: Drops, index: EvalNgrams,
                  action: str = "drop") -> Iterator[Example]:
    """Drop (or, with action="flag", keep but mark `meta.contamination`) records whose prompt
    shares an n-gram with an eval prompt."""
    for ex in examples:
        hit = index.find(ex.prompt)
        if hit is None:
            yield ex
            continue
        gram, source = hit
        if action == "flag":
            yield Example(ex.messages, {**ex.meta, "contamination": {"ngram": gram, "eval_item": source}})
        else:
            drops(ex, "decontam", f"prompt shares a {len(gram.split())}-token n-gram with eval item "
                  f"{source}", contamination={"ngram": gram, "eval_item": source})
