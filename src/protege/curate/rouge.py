"""ROUGE-L near-duplicate filter (the Alpaca / self-instruct rule), exact and fast.

Rule: process texts in order; a text is *dropped* when its ROUGE-L F-measure against any
already-kept text (or reference) is strictly greater than ``threshold`` (default 0.7),
otherwise it is kept and becomes a reference for later texts. Scores are those of Google's
``rouge-score`` (``RougeScorer(["rougeL"], use_stemmer=False)``), float for float, so every
decision is identical to the pair-by-pair reference loop, boundary cases included.

Why it is fast (~1000x the reference loop): tokens become integer ids; a kept text is only
compared with candidates that can still reach the threshold. For token lists of lengths ``a``
(candidate) and ``b`` (kept) with LCS ``L``, F = 2L/(a+b), so F > t needs L > t(a+b)/2, and
L <= multiset overlap <= min(a, b). That gives a length filter and an overlap lower bound
alpha; by the prefix-filtering lemma two lists sharing >= alpha elements (token, occurrence)
share an element among their ``n - alpha + 1`` rarest ones. Only those prefixes are indexed
and probed. Bounds are computed with a safety margin (never cut a true match), then every
survivor is confirmed with the exact LCS (rapidfuzz, C++) and rouge-score's float expression.

This module must stay light: no torch/transformers (``protege dedup`` starts fast).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, count
from operator import itemgetter

from rapidfuzz.distance import LCSseq
from rapidfuzz.process import extract as _extract

from protege.errors import UserError

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

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_OCC = 1 << 40  # element id = token id + k * _OCC for the k-th repeat (k >= 1) of a token
_MAX_CODE = 0x10FFFF  # beyond: texts are stored as lists of ints (slower, still exact)
_HUGE = 1 << 40  # stands for "no upper bound" on a text's length in tokens
_lcs = LCSseq.similarity


def tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming, exactly.

    It lowercases, turns every character outside ``[a-z0-9]`` into a space and splits, so
    non-ASCII letters vanish ("café" -> ["caf"]) just as in the reference.
    """
    return _TOKEN_RE.findall(text.lower())


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
    """Exact ROUGE-L F-measure of two token lists (symmetric), as rouge-score computes it."""
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
        # token -> code point (>= 1, surrogates skipped); 0 = a token no kept item has. A text
        # is stored as a str of those code points: rapidfuzz compares those fastest, exactly.
        self._vocab: dict[str, int] = {}
        self._wide = False  # more tokens than code points: texts become lists of ints
        self._texts: list[str] = []
        self._is_ref: list[bool] = []
        self._seqs: list = []  # list[str], or list[tuple[int, ...]] when wide
        self._first: dict = {}  # seq -> first item with it (equal seqs score equal: ties)
        # element -> {its position q in an item's sorted prefix -> those items' seqs}: fed to
        # rapidfuzz as they are, with no per-candidate Python work.
        self._post: dict[int, dict[int, list]] = {}
        self._rank: dict[int, int] = {}  # global element order: rarest first
        self._df: Counter[int] = Counter()
        self._next_rank = -1  # elements first seen after the last re-rank: rarer than all
        self._rerank_at: int | None = 64  # re-rank and re-index each time the size doubles
        self._plans: dict[int, tuple[int, int, list[int]]] = {}

    def __len__(self) -> int:
        """Number of items that block candidates (references + kept texts)."""
        return len(self._texts)

    def check(self, text: str) -> Match | None:
        """The best match above the threshold among references and kept texts, or None."""
        codes = self._codes(tokenize(text), grow=False)
        return self._check(codes, _elements(codes))

    def add(self, text: str) -> Match | None:
        """Check ``text``; keep it (it then blocks later texts) when there is no match."""
        tokens = tokenize(text)
        codes = self._codes(tokens, grow=False)
        match = self._check(codes, _elements(codes))
        if match is None:
            codes = self._codes(tokens, grow=True)
            self._keep(text, codes, _elements(codes), reference=False)
        return match

    def add_reference(self, text: str) -> int:
        """Add a text that blocks candidates but is not an output (e.g. seed tasks).

        References are never checked against each other. Returns the item's index.
        """
        codes = self._codes(tokenize(text), grow=True)
        self._keep(text, codes, _elements(codes), reference=True)
        return len(self._texts) - 1

    # -- internals --------------------------------------------------------------------------

    def _codes(self, tokens: Sequence[str], grow: bool) -> list[int]:
        vocab = self._vocab
        if not grow:
            get = vocab.get
            return [get(t, 0) for t in tokens]
        return [vocab.get(t) or self._new_code(t) for t in tokens]

    def _new_code(self, token: str) -> int:
        c = len(self._vocab) + 1
        c = self._vocab[token] = c if c < 0xD800 else c + 0x800
        if c > _MAX_CODE and not self._wide:
            self._wide = True
            self._seqs = [tuple(map(ord, s)) for s in self._seqs]
            self._first = {tuple(map(ord, s)): j for s, j in self._first.items()}
            self._set_order(self._df)  # postings hold the seqs
        return c

    def _alpha(self, a: int, b: int) -> int:
        """Least LCS (hence multiset overlap) lengths a and b need for F > t (conservative)."""
        return _min_overlap(self.threshold * (a + b) / 2.0)

    def _plan(self, a: int) -> tuple[int, int, list[int]]:
        """For length a: (LCS cutoff, prefix length, max prefix position q per position p).

        A match needs a kept length b with min(a, b) >= alpha(a, b): b in [lo, hi]. Its first
        shared element in the global order sits at p <= a - alpha in the candidate and at
        q <= b - alpha in the kept item (else fewer than alpha elements are left to share).
        Both bounds grow monotonically in b, hence the binary searches.
        """
        plan = self._plans.get(a)
        if plan is None:
            t, alpha = self.threshold, self._alpha

            def last(lo: int, hi: int, ok) -> int:  # largest x in [lo, hi] with ok(x), ok(lo)
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
                return lo

            # smallest compatible b (b = a is one for t <= 1), then the largest: beyond
            # (2a + 1) / t, t(a+b)/2 exceeds a + 1/2 and no LCS <= a can do.
            lo = a - last(0, a - 1, lambda k: a - k >= alpha(a, a - k))
            top = (2 * a + 1) / t if t > 0.0 else math.inf
            hi = _HUGE if top >= _HUGE else last(a, int(top) + 1, lambda b: a >= alpha(a, b))
            n_prefix = a - alpha(a, lo) + 1
            qmax = []
            for p in range(n_prefix):
                b = last(lo, hi, lambda b: alpha(a, b) <= a - p)
                qmax.append(b - alpha(a, b))
            plan = self._plans[a] = (alpha(a, lo), n_prefix, qmax)
        return plan

    def _check(self, codes: list[int], elems: list[int]) -> Match | None:
        a = len(codes)
        if not a or not self._texts:
            return None  # an empty text scores 0 against everything: never above t >= 0
        cutoff, n_prefix, qmax = self._plan(a)
        rank = self._rank
        known = [e for e in elems if e in rank]
        # Elements in no indexed item sort first: they take prefix slots and match nothing.
        p = a - len(known)
        if p >= n_prefix:
            return None
        known.sort(key=rank.__getitem__)
        post = self._post
        choices: list = []
        for e in known[: n_prefix - p]:
            by_q = post.get(e)
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

    def _keep(self, text: str, codes: list[int], elems: list[int], reference: bool) -> None:
        j = len(self._texts)
        self._texts.append(text)
        self._is_ref.append(reference)
        seq = tuple(codes) if self._wide else "".join(map(chr, codes))
        self._seqs.append(seq)
        self._first.setdefault(seq, j)
        if self._rerank_at is not None:
            self._df.update(elems)
            rank = self._rank
            for e in elems:
                if e not in rank:
                    rank[e] = self._next_rank
                    self._next_rank -= 1
            if j + 1 >= self._rerank_at:
                self._rerank_at *= 2
                self._set_order(self._df)
                return  # _set_order re-indexed every item, this one included
        self._index_item(j, elems)

    def _index_item(self, j: int, elems: list[int]) -> None:
        if not elems:
            return
        seq = self._seqs[j]
        post = self._post
        prefix = sorted(elems, key=self._rank.__getitem__)[: self._plan(len(elems))[1]]
        for q, e in enumerate(prefix):
            by_q = post.get(e)
            if by_q is None:
                post[e] = {q: [seq]}
            else:
                lst = by_q.get(q)
                if lst is None:
                    by_q[q] = [seq]
                else:
                    lst.append(seq)

    def _set_order(self, df: Counter[int]) -> None:
        """Order elements rarest first by ``df`` and rebuild the index with that order.

        Any fixed order is correct for prefix filtering; rare-first keeps lists short.
        """
        order = sorted(df.items(), key=itemgetter(1))  # stable: ties in first-seen order
        self._rank = {e: r for r, (e, _) in enumerate(order)}
        self._next_rank = -1
        self._post = {}
        for j, s in enumerate(self._seqs):
            self._index_item(j, _elements(list(s) if self._wide else list(map(ord, s))))

    def _prime(self, token_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Batch mode: fix vocabulary and element order from all texts up front.

        Frequent tokens get the smallest code points (about 2x faster in rapidfuzz).
        Returns each text's codes.
        """
        assert not self._texts and not self._vocab
        by_freq = [t for t, _ in Counter(chain.from_iterable(token_lists)).most_common()]
        # the code points _new_code would give, in one C-level pass
        vocab = self._vocab = dict(zip(by_freq, chain(range(1, 0xD800), count(0xE000))))
        self._wide = len(vocab) > 0xD7FF and vocab[by_freq[-1]] > _MAX_CODE
        get = vocab.__getitem__
        all_codes = [list(map(get, tokens)) for tokens in token_lists]
        df = Counter(chain.from_iterable(map(_elements, all_codes)))
        self._rerank_at = None  # the order is final: no re-ranking while adding
        self._set_order(df)
        return all_codes


def _elements(codes: list[int]) -> list[int]:
    """Multiset -> set: the k-th repeat (k >= 1) of token c becomes element c + k * _OCC."""
    if len(set(codes)) == len(codes):
        return codes
    seen: dict[int, int] = {}
    out = []
    for c in codes:
        k = seen[c] = seen.get(c, -1) + 1
        out.append(c + k * _OCC)
    return out


def _translate(m: Match, origin: list[int]) -> Match:
    return Match(origin[m.index], m.text, m.score, m.reference)


def dedup(
    texts: Sequence[str], threshold: float = 0.7, references: Sequence[str] = ()
) -> DedupResult:
    """Filter ``texts`` in order with the ROUGE-L rule; ``references`` block but are not kept.

    Decisions are identical to scoring every candidate against every kept text with
    rouge-score. ``Match.index`` is an index into ``texts`` (or into ``references``).
    """
    d = RougeDeduper(threshold)
    ref_tokens = [tokenize(t) for t in references]
    tokens = [tokenize(t) for t in texts]
    all_codes = d._prime(ref_tokens + tokens)
    origin: list[int] = []  # item index in d -> index in references / texts
    for i, text in enumerate(references):
        d._keep(text, all_codes[i], _elements(all_codes[i]), reference=True)
        origin.append(i)
    result = DedupResult()
    for i, (text, codes) in enumerate(zip(texts, all_codes[len(references) :])):
        elems = _elements(codes)
        m = d._check(codes, elems)
        if m is None:
            d._keep(text, codes, elems, reference=False)
            origin.append(i)
            result.kept.append(i)
        else:
            result.dropped.append((i, _translate(m, origin)))
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
