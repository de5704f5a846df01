"""The judge: a teacher-shaped model rates one answer (pointwise 1-5, graded 1-10) or compares two (pairwise).

Used by curate (the AlpaGasus-style quality filter) and evaluate (win rates). Prompts and their pure parsers
live in `prompts/judge.py`; calls go through the teacher engine (`teachers.complete_all`: cache, retries,
rate limits, SQLite call log), greedy, so a rerun asks nothing twice.

Pairwise judging asks both orders (A/B and B/A): a verdict counts only when both orders agree, otherwise the
pair is a tie and counted as inconsistent, since LLM judges prefer a position (Zheng et al., MT-bench). Where the
judge returns token probabilities (`weighted`), each pair also gets a's preference: the probability the judge gave
each verdict where it wrote it (as AlpacaEval 2's weighted win rate), a's share (ties halved) averaged over the two
orders, which cancels a position bias that shifts both orders alike (Wang et al. 2023, "Large Language Models are
not Fair Evaluators": balanced position calibration). A small judge that names the first answer in both orders
leaves no hard verdict, while its probabilities still carry whatever preference it has beyond the position. Given a
reference answer (a held-out task's own output), the judge sees it too (MT-bench's reference-guided pairwise
prompt): a small judge checks answers against it far more reliably than it solves the task itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protege.prompts import judge as prompts
from protege.teachers import Request, complete_all

GREEDY = {"temperature": 0.0}
TOP_LOGPROBS = 10  # alternatives asked for at each token of a weighted pairwise verdict (OpenAI allows up to 20)


@dataclass
class Rating:
    """A pointwise (1-5) or graded (1-10) judgement; `score` None when the judge gave none (`error` says why)."""

    score: int | None
    reason: str = ""
    error: str | None = None


@dataclass
class PairVerdict:
    """One pair judged in both orders. `winner`: "a", "b" or "tie" (also when the orders disagree)."""

    winner: str
    consistent: bool
    first: str | None  # verdict with a shown first ("A" = a), None when unparsed
    second: str | None  # verdict with b shown first, mapped back to a/b terms
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    p_first: dict[str, float] | None = None  # {"a", "b", "tie"}: the judge's probabilities with a shown first
    p_second: dict[str, float] | None = None  # the same with b shown first, in a/b terms
    preference: float | None = None  # a's share averaged over both orders (1 = a surely better); None without both


def _error(result: Any) -> str:
    if result is None:
        return "not sent (a cap was reached)"
    return result.error or "no verdict in the judge's reply"


def rate(items: list[tuple[str, str]], judge_cfg: Any, calls_db: Any = None, max_tokens: int = 128) -> list[Rating]:
    """Pointwise 1-5 ratings of (instruction, output) pairs."""
    reqs = [Request(messages=prompts.render("judge_pointwise", instruction=i, output=o),
                    sampling={**GREEDY, "max_tokens": max_tokens}) for i, o in items]
    out = []
    for r in complete_all(judge_cfg, reqs, calls_db):
        parsed = prompts.parse_score(r.completion.text) if r is not None and r.ok else None
        out.append(Rating(*parsed) if parsed else Rating(None, error=_error(r) if not (r and r.ok)
                                                         else "no score in the judge's reply"))
    return out


def grade(items: list[tuple[str, str]], judge_cfg: Any, calls_db: Any = None, max_tokens: int = 256) -> list[Rating]:
    """Single-answer grades 1-10 (MT-bench style) of (instruction, answer) pairs, with the rationale."""
    reqs = [Request(messages=prompts.render("judge_grade", instruction=i, answer=a),
                    sampling={**GREEDY, "max_tokens": max_tokens}) for i, a in items]
    out = []
    for r in complete_all(judge_cfg, reqs, calls_db):
        parsed = prompts.parse_grade(r.completion.text) if r is not None and r.ok else None
        out.append(Rating(*parsed) if parsed else Rating(None, error=_error(r) if not (r and r.ok)
                                                         else "no rating in the judge's reply"))
    return out


def combine(first: str | None, second_swapped: str | None) -> tuple[str, bool]:
    """(winner, consistent) from the verdict with a first ("A"/"B"/"tie") and with b first (also "A"/"B"/"tie").

    Pure: the second verdict is mapped back (its "A" is b); a winner counts only when both orders agree.
    """
    if first is None or second_swapped is None:
        return "tie", False
    a = {"A": "a", "B": "b", "tie": "tie"}[first]
    b = {"A": "b", "B": "a", "tie": "tie"}[second_swapped]
    return (a, True) if a == b else ("tie", False)


def in_ab_terms(probs: dict[str, float] | None, a_first: bool) -> dict[str, float] | None:
    """Verdict probabilities ({"A", "B", "tie"}) as {"a", "b", "tie"}: "A" is a when a was shown first."""
    if probs is None:
        return None
    a, b = ("A", "B") if a_first else ("B", "A")
    return {"a": probs[a], "b": probs[b], "tie": probs["tie"]}


def preference(first: dict[str, float] | None, second: dict[str, float] | None) -> float | None:
    """a's share (a's probability plus half the tie's) averaged over both orders; None unless both are known. Pure."""
    if first is None or second is None:
        return None
    return (first["a"] + first["tie"] / 2 + second["a"] + second["tie"] / 2) / 2


def pairwise_prompt(reference: str | None) -> str:
    """The name of the pairwise prompt used with (or without) a reference answer."""
    return "judge_pairwise" if reference is None else "judge_pairwise_ref"


def compare(items: list[tuple[str, str, str]], judge_cfg: Any, calls_db: Any = None, max_tokens: int = 256,
            on_result: Callable[[Any], None] | None = None,
            references: list[str | None] | None = None, weighted: bool = False) -> list[PairVerdict]:
    """Judge (instruction, answer a, answer b) triples in both orders; one PairVerdict each.

    `references[k]`, when given and not None, is shown to the judge as the reference answer of item k. The two
    orders of an item are consecutive requests sharing their beginning (a local judge reuses that prefix).
    `weighted` asks for the judge's token probabilities too (`logprobs`, top 10) and fills each verdict's
    probabilities and preference where the judge returned them.
    """
    refs = references if references is not None else [None] * len(items)
    if len(refs) != len(items):
        raise ValueError(f"compare: {len(refs)} references for {len(items)} items")
    reqs = []
    for (ins, a, b), ref in zip(items, refs):
        for x, y in ((a, b), (b, a)):
            fields = {"instruction": ins, "answer_a": x, "answer_b": y}
            if ref is not None:
                fields["reference"] = ref
            sampling: dict[str, Any] = {**GREEDY, "max_tokens": max_tokens}
            if weighted:
                sampling.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            reqs.append(Request(messages=prompts.render(pairwise_prompt(ref), **fields), sampling=sampling))
    results = complete_all(judge_cfg, reqs, calls_db, on_result=on_result)
    out = []
    for k in range(len(items)):
        r1, r2 = results[2 * k], results[2 * k + 1]
        p1 = prompts.parse_pairwise(r1.completion.text) if r1 is not None and r1.ok else None
        p2 = prompts.parse_pairwise(r2.completion.text) if r2 is not None and r2.ok else None
        winner, consistent = combine(p1[0] if p1 else None, p2[0] if p2 else None)
        err = None if (p1 and p2) else (_error(r1) if not p1 else _error(r2))
        second = None if p2 is None else {"A": "B", "B": "A", "tie": "tie"}[p2[0]]
        q1 = in_ab_terms(prompts.verdict_probs(r1.completion.logprobs), a_first=True) if p1 else None
        q2 = in_ab_terms(prompts.verdict_probs(r2.completion.logprobs), a_first=False) if p2 else None
        out.append(PairVerdict(winner, consistent, p1[0] if p1 else None, second,
                               [p[1] for p in (p1, p2) if p], err, q1, q2, preference(q1, q2)))
    return out


def prompt_hashes() -> dict[str, str]:
    """sha256 of each judge prompt, recorded with every judgement."""
    return {n: prompts.template(n).sha256
            for n in ("judge_pointwise", "judge_pairwise", "judge_pairwise_ref", "judge_grade")}
