"""Near-duplicates at millions: MinHash LSH proposes pairs, the exact ROUGE-L rule decides.

`curate.dedup_mode: minhash`. Same rule as the exact filter (`rouge.dedup`): records are taken
in order and one is dropped when its ROUGE-L F against an earlier *kept* record is strictly
greater than the threshold. The difference is which pairs get scored. The exact filter scores
every pair that could pass (prefix filtering, in `protege.rouge`); its index grows with the
distinct tokens of the kept texts and its candidate lists with their number, which is fine at
~10^5 records and slow at 10^6. Here datasketch's MinHash LSH proposes candidates and each
proposed pair is scored with the exact ROUGE-L (rouge-score's numbers, `rouge.rougeL_f`).

What this guarantees, and what it can miss:

* **Every drop is justified exactly**: a record is dropped only when a kept record has
  ROUGE-L F > threshold with it (scored exactly, recorded in `dropped.jsonl` with the score).
  So no record is lost to a false positive of the sketch.
* **Near-duplicates can be kept**: a pair above the ROUGE threshold that LSH never proposes
  is not scored, so both records stay. Recall is therefore < 1; it is measured against the
  exact filter in docs/benchmarks.md (`benchmarks/bench_minhash.py`). Because decisions
  cascade (a kept miss can then block a later record the exact filter keeps), the kept set
  is not always a superset of the exact filter's.

Why the default bands catch most pairs: a pair with ROUGE-L F > t has LCS L > t(a+b)/2 for
token counts a, b, and L is at most their multiset overlap I, so their multiset Jaccard
I/(a+b-I) > t/(2-t) (0.538 for t = 0.7). Tokens are hashed as a *multiset* (the k-th repeat
of a token is its own element) so this bound holds for the sets MinHash sees. With 128
permutations in 32 bands of 4 rows, LSH proposes a pair at that Jaccard floor with
probability 1-(1-0.538^4)^32 = 0.94, and at Jaccard 0.7 with 0.9997; typical near-duplicates
(one word changed) sit far above the floor. Fewer rows per band raise recall and the number
of candidates scored; more rows lower both.

Memory grows with the *kept* records (their LSH band keys and token codes), not with the
input: a stream of 10^6 records of which 10^4 are kept holds 10^4 in the index.
The tokens are rouge-score's (`rouge.tokenize`), hashed with datasketch's default SHA-1
hash, so signatures and decisions are the same on every run and machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from rapidfuzz.distance import LCSseq
from rapidfuzz.process import cdist as _cdist

from protege.records import Example
from protege.rouge import Match, rougeL_f, tokenize

NUM_PERM = 128
BANDS = 32
_lcs = LCSseq.similarity
_MAX_CODE = 0x10FFFF  # more distinct tokens than code points: kept texts become tuples


def jaccard_floor(threshold: float) -> float:
    """Lowest multiset Jaccard a pair with ROUGE-L F > `threshold` can have: t / (2 - t)."""
    return threshold / (2.0 - threshold)


def candidate_probability(jaccard: float, bands: int = BANDS, rows: int = NUM_PERM // BANDS) -> float:
    """Chance that LSH with `bands` x `rows` proposes a pair of this Jaccard similarity."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def _shingles(tokens: Sequence[str]) -> list[bytes]:
    """The multiset of tokens as a set: the k-th repeat of a token is the element "tok k"."""
    seen: dict[str, int] = {}
    out = []
    for t in tokens:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append(f"{t} {k}".encode())
    return out


class MinHashDeduper:
    """Incremental ROUGE-L filter whose candidate pairs come from MinHash LSH.

    `add(text)` returns the best-scoring kept text above the threshold (ties: the earliest),
    or None and keeps `text`. `add_reference(text)` blocks later texts without counting as kept.
    """

    def __init__(self, threshold: float = 0.7, num_perm: int = NUM_PERM, bands: int = BANDS,
                 seed: int = 1) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as e:  # the `scale` extra
            from protege.errors import UserError

            raise UserError("curate.dedup_mode: minhash needs datasketch (not installed)",
                            hint="pip install 'protege[scale]'  (or: pip install datasketch)") from e
        if not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        if bands < 2 or num_perm // bands < 1:
            raise ValueError(f"need 2 <= bands <= num_perm, got bands={bands}, num_perm={num_perm}")
        self.threshold = float(threshold)
        self.bands, self.rows = bands, num_perm // bands
        self._lsh = MinHashLSH(num_perm=num_perm, params=(self.bands, self.rows))
        self._sig = MinHash(num_perm=num_perm, seed=seed)  # reused: cleared for every text
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._is_ref: list[bool] = []
        self._seqs: list[Any] = []  # each kept text's tokens as a str of code points (or a tuple)
        self._first: dict[Any, int] = {}  # token sequence -> first item with it
        self.pairs_scored = 0  # LSH candidates scored with the exact ROUGE-L

    def __len__(self) -> int:
        """Number of items that block candidates (references + kept texts)."""
        return len(self._texts)

    def _encode(self, tokens: Sequence[str]) -> Any:
        vocab = self._vocab
        codes = [vocab.setdefault(t, len(vocab) + 1) for t in tokens]
        if len(vocab) < _MAX_CODE:
            return "".join(map(chr, codes))
        return tuple(codes)

    def _check(self, seq: Any) -> Match | None:
        candidates = sorted(self._lsh.query(self._sig))
        if not candidates:
            return None
        self.pairs_scored += len(candidates)
        seqs = [self._seqs[j] for j in candidates]
        # LCS of every candidate in one C++ call; F = 2L/(a+b) in exact arithmetic, so a pair
        # clearly below t(a+b)/2 cannot pass. The margin only lets more pairs through to the
        # exact score, which alone decides (rouge-score's float expression, `rougeL_f`).
        lcs = _cdist([seq], seqs, scorer=_lcs, dtype=np.int32, workers=1)[0]
        a, t = len(seq), self.threshold
        best: Match | None = None
        for j, other, n in zip(candidates, seqs, lcs.tolist()):
            if 2 * n < t * (a + len(other)) - 1e-6:
                continue
            # rougeL_f is symmetric and maps any hashable tokens: code points work as tokens.
            score = rougeL_f(seq, other)
            if score > t and (best is None or score > best.score):
                best = Match(j, self._texts[j], score, self._is_ref[j])
        return best

    def _process(self, text: str, reference: bool) -> Match | None:
        tokens = tokenize(text)
        if not tokens:  # ROUGE-L with no tokens is 0: never a duplicate, never blocks
            return None
        seq = self._encode(tokens)
        same = self._first.get(seq)
        if same is not None:
            # Same tokens as an indexed item: ROUGE-L 1.0, the best score there is, and the
            # earliest such item is the match the full check would return. No sketch needed.
            score = rougeL_f(seq, seq)
            if reference or score <= self.threshold:
                return None  # an identical item is indexed already: it blocks the same texts
            return Match(same, self._texts[same], score, self._is_ref[same])
        self._sig.clear()
        self._sig.update_batch(_shingles(tokens))
        m = None if reference else self._check(seq)
        if m is None:
            j = len(self._texts)
            self._lsh.insert(j, self._sig, check_duplication=False)
            self._texts.append(text)
            self._is_ref.append(reference)
            self._seqs.append(seq)
            self._first[seq] = j
        return m

    def add(self, text: str) -> Match | None:
        """Drop (return the match) or keep `text`."""
        return self._process(text, reference=False)

    def add_reference(self, text: str) -> None:
        """Index `text` so it blocks later texts; it is not checked itself."""
        self._process(text, reference=True)


def minhash_dedup(texts: Iterable[str], threshold: float = 0.7, num_perm: int = NUM_PERM,
                  bands: int = BANDS) -> tuple[list[int], list[tuple[int, Match]], int]:
    """Texts in, (kept indices, [(dropped index, match)], pairs scored) out; Match.index is an
    index into `texts`."""
    d = MinHashDeduper(threshold, num_perm, bands)
    origin: list[int] = []
    kept: list[int] = []
    dropped: list[tuple[int, Match]] = []
    for i, text in enumerate(texts):
        n = len(d)
        m = d.add(text)
        if m is None:
            kept.append(i)
            if len(d) > n:
                origin.append(i)
        else:
            dropped.append((i, Match(origin[m.index], m.text, m.score)))
    return kept, dropped, d.pairs_scored


def near_duplicates(examples: Iterable[Example], drops: Any, threshold: float = 0.7,
                    field: str = "instruction", references: Sequence[str] = (),
                    num_perm: int = NUM_PERM, bands: int = BANDS) -> Iterator[Example]:
    """The ROUGE-L rule on MinHash LSH candidates, streaming (one record at a time).

    Drops go to `drops` (a `curate.filters.Drops`) with the matched text and its exact score,
    like `curate.filters.near_duplicates`; what is kept keeps its order.
    """
    d = MinHashDeduper(threshold, num_perm, bands)
    for ref in references:
        d.add_reference(ref)
    for ex in examples:
        text = {"instruction": ex.instruction, "prompt": ex.prompt, "output": ex.output}[field]
        m = d.add(text)
        if m is None:
            yield ex
            continue
        what = "reference" if m.reference else "kept record"
        drops(ex, "near_duplicate",
              f"{field} has ROUGE-L {m.score:.3f} > {threshold} with an earlier {what} (MinHash LSH candidate)",
              near_duplicate_of=m.text, rougeL=round(m.score, 6))
