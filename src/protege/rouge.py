"""ROUGE-L near-duplicate filter (the Alpaca / self-instruct rule), exact and fast.

Rule: process texts in order; a text is *dropped* when its ROUGE-L F-measure against any
already-kept text (or reference) is strictly greater than ``threshold`` (default 0.7),
otherwise it is kept and becomes a reference for later texts. Scores are those of Google's
``rouge-score`` (``RougeScorer(["rougeL"], use_stemmer=False)``), float for float, so every
decision is identical to the pair-by-pair reference loop, boundary cases included.

Why it is fast (hundreds to thousands of times the reference loop, see docs/benchmarks.md):
a text becomes a str of one code point per token, which rapidfuzz compares in C++, and a
candidate meets only the kept texts that can still pass. With lengths a (candidate) and b
(kept) and LCS L, F = 2L/(a+b), so F > t needs L >= alpha, the least integer above t(a+b)/2,
and L <= min(a, b) bounds b. L is at most the multiset overlap, which is at most d + r (d:
distinct shared tokens; r: either text's repeats, its length minus its distinct tokens), so
d >= alpha - r. Sort each text's distinct tokens rarest first (one global order): the rarest
shared token then sits at position <= a - alpha in the candidate and <= b - alpha in the kept
text (prefix filtering, with positions). Only those prefixes are indexed and probed. Every
bound carries a safety margin, so none can cut a true match; each survivor is confirmed with
the exact LCS (rapidfuzz) and rouge-score's own float expression.

This module must stay light: no torch/transformers (``protege dedup`` starts fast).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, count

from rapidfuzz.distance import LCSseq
from rapidfuzz.process import extract as _extract

__all__ = [
    "DedupResult",
    "Match",
    "RougeDeduper",
    "dedup",
    "exact_dedup",
    "normalize",
    "rougeL_f",
    "tokenize",
]

# Byte table: every byte but [a-z0-9] becomes a space (non-ASCII is first encoded as "?").
_KEEP = bytes(c if 48 <= c <= 57 or 97 <= c <= 122 else 32 for c in range(256))
_MAX_CODE = 0x10FFFF  # beyond: texts are stored as tuples of ints (slower, still exact)
_HUGE = 1 << 40  # stands for "no upper bound" on a text's length in tokens
_lcs = LCSseq.similarity


def tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming, exactly.

    It lowercases, turns every character outside ``[a-z0-9]`` into a space and splits, so
    non-ASCII letters vanish ("café" -> ["caf"]) just as in the reference.
    """
    # == re.findall("[a-z0-9]+", text.lower()), about 1.5x faster
    return text.lower().encode("ascii", "replace").translate(_KEEP).decode("ascii").split()


def _fmeasure(lcs: int, a: int, b: int) -> float:
    """F-measure of rouge-score ``_score_lcs(target (a tokens), prediction (b tokens))``.

    Same expression, same order of float operations (the order matters at exact boundaries).
    """
    if not a or not b:
        return 0.0
    precision = lcs / b
    recall = lcs / a
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rougeL_f(a_tokens: Sequence[str], b_tokens: Sequence[str]) -> float:
    """Exact ROUGE-L F-measure of two token lists (symmetric), as rouge-score computes it.

    Tokens become small ints first: rapidfuzz compares other objects by hash, ints by value.
    """
    ids: dict[str, int] = {}
    a = [ids.setdefault(t, len(ids)) for t in a_tokens]
    b = [ids.setdefault(t, len(ids)) for t in b_tokens]
    return _fmeasure(_lcs(a, b) if a and b else 0, len(a), len(b))


def _min_overlap(x: float) -> int:
    """Smallest integer that can satisfy ``L > x`` given float noise in the score (>= 1).

    The margin (far larger than any rounding error) only makes the filters weaker, never wrong:
    every surviving pair is still checked with the exact formula.
    """
    return max(1, math.floor(x - 1e-7 - 1e-9 * abs(x)) + 1)


@dataclass(frozen=True)
class Match:
    """The earlier text that blocks a candidate.

    ``index``: the matched item's position (in ``RougeDeduper``, in order of addition of
    references and kept texts together; in ``dedup`` results, its index in ``texts``, or in
    ``references`` when ``reference`` is true). ``score``: rouge-score's ROUGE-L F-measure.
    """

    index: int
    text: str
    score: float
    reference: bool = False


@dataclass
class DedupResult:
    """``kept``: input indices kept, in order; ``dropped``: (input index, what blocked it)."""

    kept: list[int] = field(default_factory=list)
    dropped: list[tuple[int, Match]] = field(default_factory=list)


class RougeDeduper:
    """Incremental ROUGE-L filter, for a generation loop that screens texts as they come.

    ``check`` returns the *highest*-scoring earlier item above the threshold (ties: the
    earliest), like Alpaca's record of the most similar instructions; it is exact and cheap
    because the filters leave every item that could be above the threshold.
    """

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0.0 <= threshold <= 1.0:  # also rejects NaN
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        # token -> code (>= 1; 0: a token no kept item has), given by decreasing document
        # frequency, so "rarest first", the order prefix filtering needs, is decreasing code.
        # A text is stored as a str of those code points: rapidfuzz compares those fastest.
        self._vocab: dict[str, int] = {}
        self._wide = False  # more tokens than code points: texts become tuples of ints
        self._texts: list[str] = []
        self._is_ref: list[bool] = []
        self._seqs: list = []  # list[str], or list[tuple[int, ...]] when wide
        self._first: dict = {}  # seq -> first item with it (equal seqs score equal: ties)
        # code -> {its position q in an item's ranked tokens -> those items' seqs}: fed to
        # rapidfuzz as they are, with no per-candidate Python work.
        self._post: dict[int, dict[int, list]] = {}
        self._df: Counter[int] = Counter()  # code -> number of items with it
        self._recode_at: int | None = 64  # recode by frequency each time the size doubles
        self._plans: dict[int, tuple[int, int, list[int]]] = {}

    def __len__(self) -> int:
        """Number of items that block candidates (references + kept texts)."""
        return len(self._texts)

    def check(self, text: str) -> Match | None:
        """The best match above the threshold among references and kept texts, or None."""
        return self._check(self._codes(tokenize(text), grow=False))

    def add(self, text: str) -> Match | None:
        """Check ``text``; keep it (it then blocks later texts) when there is no match."""
        tokens = tokenize(text)
        match = self._check(self._codes(tokens, grow=False))
        if match is None:
            self._keep(text, self._codes(tokens, grow=True), reference=False)
        return match

    def add_reference(self, text: str) -> int:
        """Add a text that blocks candidates but is not an output (e.g. seed tasks).

        References are never checked against each other. Returns the item's index.
        """
        self._keep(text, self._codes(tokenize(text), grow=True), reference=True)
        return len(self._texts) - 1

    # -- internals --------------------------------------------------------------------------

    def _codes(self, tokens: Sequence[str], grow: bool) -> list[int]:
        vocab = self._vocab
        if not grow:
            get = vocab.get
            return [get(t, 0) for t in tokens]
        return [vocab.get(t) or self._new_code(t) for t in tokens]

    def _new_code(self, token: str) -> int:
        c = len(self._vocab) + 1  # new tokens rank as the rarest until the next recode
        c = self._vocab[token] = c if c < 0xD800 else c + 0x800  # no surrogates
        if c > _MAX_CODE and not self._wide:
            self._wide = True
            self._reindex([tuple(map(ord, s)) for s in self._seqs])
        return c

    def _alpha(self, a: int, b: int) -> int:
        """Least LCS (hence multiset overlap) lengths a and b need for F > t (conservative)."""
        return _min_overlap(self.threshold * (a + b) / 2.0)

    def _plan(self, a: int) -> tuple[int, int, list[int]]:
        """For length a: (LCS cutoff, prefix length, max prefix position q per position p).

        A match needs a kept length b with min(a, b) >= alpha(a, b): b in [lo, hi]. Its first
        shared token in the global order sits at p <= a - alpha in the candidate's ranked
        distinct tokens and at q <= b - alpha in the kept item's (module docstring).
        alpha(a, b) and b - alpha(a, b) both grow with b, which the searches below rely on.
        """
        plan = self._plans.get(a)
        if plan is None:
            t, alpha = self.threshold, self._alpha

            def last(k: int, lo: int, hi: int) -> int:
                """Largest b in [lo, hi] with alpha(a, b) <= k, given alpha(a, lo) <= k: a guess
                from alpha ~ t(a+b)/2, then unit steps (alpha grows with b, by <= 1 a step)."""
                b = hi if t == 0.0 else int(min(hi, max(lo, 2.0 * k / t - a)))
                while b < hi and alpha(a, b + 1) <= k:
                    b += 1
                while b > lo and alpha(a, b) > k:
                    b -= 1
                return b

            lo = min(a, max(1, int(t * a / (2.0 - t))))  # least b with b >= alpha(a, b)
            while lo > 1 and lo - 1 >= alpha(a, lo - 1):
                lo -= 1
            while lo < alpha(a, lo):  # ends by b = a: alpha(a, a) <= a for t <= 1
                lo += 1
            hi = last(a, a, _HUGE)  # the largest b whose alpha an LCS <= a can reach
            n_prefix = a - alpha(a, lo) + 1
            qmax, b = [], hi
            for p in range(n_prefix):  # b - alpha(a, b) grows with b: take the largest b
                b = last(a - p, lo, b)
                qmax.append(b - alpha(a, b))
            plan = self._plans[a] = (alpha(a, lo), n_prefix, qmax)
        return plan

    def _check(self, codes: list[int], ranked: list[int] | None = None,
               seq: str | None = None) -> Match | None:
        """``ranked``: the distinct codes by rank, all known (batch); ``seq``: the text's str."""
        a = len(codes)
        if not a or not self._texts:
            return None  # an empty text scores 0 against everything: never above t >= 0
        cutoff, n_prefix, qmax = self._plan(a)
        p = 0
        if ranked is None:
            distinct = set(codes)
            if 0 in distinct:  # tokens in no kept item rank first (as one: a looser bound)
                distinct.discard(0)
                p = 1
            ranked = sorted(distinct, reverse=True)
        post = self._post
        choices: list = []
        for c in ranked[: max(0, n_prefix - p)]:
            by_q = post.get(c)
            if by_q is not None:
                qm = qmax[p]
                for q, seqs in by_q.items():
                    if q <= qm:
                        choices += seqs
            p += 1
        if not choices:
            return None
        # Exact LCS of every candidate in one C++ loop (an item found twice is scored twice,
        # cheaper than deduplicating); the cutoff is the least LCS any length could need.
        if seq is None:
            seq = tuple(codes) if self._wide else "".join(map(chr, codes))
        hits = _extract(seq, choices, scorer=_lcs, score_cutoff=cutoff, limit=None)
        t = self.threshold
        first = self._first
        best_j, best_f = -1, -1.0
        for other, lcs, _ in hits:
            j = first[other]
            f = _fmeasure(int(lcs), a, len(other))
            if f > t and (f > best_f or (f == best_f and j < best_j)):
                best_j, best_f = j, f
        if best_j < 0:
            return None
        return Match(best_j, self._texts[best_j], best_f, self._is_ref[best_j])

    def _keep(self, text: str, codes: list[int], reference: bool,
              ranked: list[int] | None = None, seq: str | None = None) -> None:
        j = len(self._texts)
        self._texts.append(text)
        self._is_ref.append(reference)
        if seq is None:
            seq = tuple(codes) if self._wide else "".join(map(chr, codes))
        self._seqs.append(seq)
        self._first.setdefault(seq, j)
        if self._recode_at is not None:
            self._df.update(set(codes))
            if j + 1 >= self._recode_at:
                self._recode_at *= 2
                self._recode()
                return  # _recode re-indexed every item, this one included
        self._index_item(j, codes, ranked)

    def _index_item(self, j: int, codes: list[int], ranked: list[int] | None = None) -> None:
        if not codes:
            return
        seq = self._seqs[j]
        post = self._post
        if ranked is None:
            ranked = sorted(set(codes), reverse=True)
        for q, c in enumerate(ranked[: self._plan(len(codes))[1]]):
            by_q = post.get(c)
            if by_q is None:
                post[c] = {q: [seq]}
            else:
                lst = by_q.get(q)
                if lst is None:
                    by_q[q] = [seq]
                else:
                    lst.append(seq)

    def _reindex(self, seqs: list) -> None:
        self._seqs, self._first, self._post = seqs, {}, {}
        for j, s in enumerate(seqs):
            self._first.setdefault(s, j)
            self._index_item(j, list(s) if self._wide else list(map(ord, s)))

    def _recode(self) -> None:
        """Renumber tokens by decreasing frequency and rebuild the index (stream mode).

        Any fixed order is correct for prefix filtering; rare-first keeps lists short.
        """
        df = self._df
        by_df = sorted(df, key=lambda c: (-df[c], c))
        new = dict(zip(by_df, chain(range(1, 0xD800), count(0xE000))))
        self._vocab = {t: new[c] for t, c in self._vocab.items()}
        self._df = Counter({new[c]: n for c, n in df.items()})
        if self._wide:
            self._reindex([tuple(map(new.__getitem__, s)) for s in self._seqs])
        else:
            self._reindex([s.translate(new) for s in self._seqs])

    def _prime(self, token_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Batch mode (a fresh deduper): codes by frequency over all texts, fixed from now on.

        Frequent tokens also get the smallest code points (about 2x faster in rapidfuzz).
        Returns each text's codes.
        """
        df = Counter(chain.from_iterable(map(set, token_lists)))
        by_df = [t for t, _ in df.most_common()]
        vocab = self._vocab = dict(zip(by_df, chain(range(1, 0xD800), count(0xE000))))
        self._wide = bool(by_df) and vocab[by_df[-1]] > _MAX_CODE
        self._recode_at = None
        get = vocab.__getitem__
        return [list(map(get, tokens)) for tokens in token_lists]


def dedup(
    texts: Sequence[str], threshold: float = 0.7, references: Sequence[str] = ()
) -> DedupResult:
    """Filter ``texts`` in order with the ROUGE-L rule; ``references`` block but are not kept.

    Decisions are identical to scoring every candidate against every kept text with
    rouge-score. ``Match.index`` is an index into ``texts`` (or into ``references``).
    """
    d = RougeDeduper(threshold)
    all_codes = d._prime([tokenize(t) for t in references] + [tokenize(t) for t in texts])
    origin: list[int] = []  # item index in d -> index in references / texts
    for i, text in enumerate(references):
        d._keep(text, all_codes[i], reference=True)
        origin.append(i)
    result = DedupResult()
    wide = d._wide
    for i, (text, codes) in enumerate(zip(texts, all_codes[len(references) :])):
        ranked = sorted(set(codes), reverse=True)  # rarest first
        seq = tuple(codes) if wide else "".join(map(chr, codes))
        m = d._check(codes, ranked, seq)
        if m is None:
            d._keep(text, codes, False, ranked, seq)
            origin.append(i)
            result.kept.append(i)
        else:
            result.dropped.append((i, Match(origin[m.index], m.text, m.score, m.reference)))
    return result


def normalize(text: str) -> str:
    """Key for exact duplicates: casefold, collapse whitespace, strip punctuation at the ends."""
    s = " ".join(text.casefold().split())
    start, end = 0, len(s)
    while start < end and (s[start] == " " or unicodedata.category(s[start])[0] == "P"):
        start += 1
    while end > start and (s[end - 1] == " " or unicodedata.category(s[end - 1])[0] == "P"):
        end -= 1
    return s[start:end]


def exact_dedup(texts: Sequence[str], references: Sequence[str] = ()) -> DedupResult:
    """Drop texts whose ``normalize``d form equals an earlier text's or a reference's."""
    first: dict[str, tuple[int, bool]] = {}
    for i, t in enumerate(references):
        first.setdefault(normalize(t), (i, True))
    result = DedupResult()
    for i, t in enumerate(texts):
        hit = first.setdefault(normalize(t), (i, False))
        if hit == (i, False):
            result.kept.append(i)
        else:
            j, ref = hit
            result.dropped.append((i, Match(j, (references if ref else texts)[j], 1.0, ref)))
    return result
