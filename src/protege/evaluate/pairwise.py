"""Pairwise judging of candidates on a set, and the numbers and warnings drawn from it.

Which pairs: the student against every other candidate, and the base against the teacher and each
reference, when present (without a student, the first candidate takes its place). Each pair is judged by
`judge.compare` in both orders; a verdict counts only when both orders agree, else it is a tie and counted
as inconsistent. A prompt whose judge call failed (not an unparsable reply: a call that got no answer) is
left out of the rates and counted as `unjudged`. With `reference` on, a single-turn item that carries the set's own
answer (a held-out task's output) shows it to the judge (MT-bench's reference-guided prompt); never for a pair
holding the teacher or the reference itself, which would be judged against its own answer.

The judge check (`eval.judge_check`): where a set has answers of its own and the base is a candidate, the set's
answers are judged against the base's too, without reference; when the judge cannot prefer them (the interval
of their win rate includes 50%), its verdicts on that set are flagged as no evidence either way.

With `weighted` on and a judge that returns token probabilities, every prompt also gets a's preference (the
judge's probabilities averaged over both orders, `judge.preference`) and the pair a probability-weighted win
rate: the mean over prompts of that preference, or of the hard verdict (1 win, 0.5 tie, 0 loss) where the judge
gave no probabilities, with its bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protege import judge
from protege.evaluate.candidates import Answer, Candidate, fixed_answers, words
from protege.evaluate.sets import EvalItem, EvalSet
from protege.evaluate.stats import bootstrap_means, rates

LENGTH_MIN_DECISIVE = 3  # below this many decisive verdicts, "the longer answer wins most" says nothing


def pairs(cands: Sequence[Candidate]) -> list[tuple[str, str]]:
    """(a, b) pairs to judge, a first: the student (or first candidate) vs each other; base vs teacher/references."""
    names = [c.name for c in cands]
    if len(names) < 2:
        return []
    anchor = "student" if "student" in names else names[0]
    out = [(anchor, n) for n in names if n != anchor]
    if "base" in names and anchor != "base":
        out += [("base", c.name) for c in cands if c.role in ("teacher", "reference") and c.name != "base"]
    return list(dict.fromkeys(out))


def judge_prompt(item: EvalItem) -> str:
    """The request shown to the judge: the prompt, or for a multi-turn item every user turn in order."""
    if not item.multi_turn:
        return item.turns[0]
    lines = [f"A conversation of {len(item.turns)} user turns; judge the assistant's answers to all of them."]
    lines += [f"[Turn {k + 1}] {t}" for k, t in enumerate(item.turns)]
    return "\n".join(lines)


def judged_text(item: EvalItem, answer: str | list[str]) -> str:
    """An answer as the judge sees it (a multi-turn answer as a transcript of its own conversation)."""
    if isinstance(answer, str):
        return answer
    return "\n\n".join(f"[Turn {k + 1}] User: {t}\nAssistant: {a}" for k, (t, a) in enumerate(zip(item.turns, answer)))


@dataclass
class PairJob:
    """One pair of one set to judge, and what came of it."""

    set: EvalSet
    a: str
    b: str
    lines: list[dict[str, Any]] = field(default_factory=list)  # judgements.jsonl lines
    unjudged: int = 0  # items both answered whose judge calls failed
    error: str | None = None  # the first failure
    reference: bool = False  # show the judge each item's own answer, where it has one (see `use_reference`)


def use_reference(a: Candidate, b: Candidate, wanted: bool) -> bool:
    """Whether the pair (a, b) is judged with the set's own answers as reference: not when either candidate is the
    teacher (the held-out answers are the teacher's) or a reference (it would be compared with itself)."""
    return wanted and not ({a.role, b.role} & {"teacher", "reference"})


def item_reference(item: EvalItem) -> str | None:
    """The set's own answer to a single-turn item, shown to the judge as reference; None for multi-turn items."""
    if item.multi_turn or not item.reference or not (item.reference[0] or "").strip():
        return None
    return item.reference[0]


def judge_pairs(jobs: list[PairJob], answers: dict[str, dict[str, list[Answer]]], judge_cfg: Any, calls_db: Any,
                max_tokens: int, judge_id: str, on_result: Callable[[Any], None] | None = None,
                weighted: bool = False) -> list[PairJob]:
    """Judge every item both candidates of each job answered, all jobs in one engine pass (one judge load).

    `answers[set name][candidate]`. Fills each job's lines, unjudged count and first error, and returns the jobs.
    """
    todo: list[tuple[PairJob, int]] = []
    for job in jobs:
        got = answers[job.set.name]
        todo += [(job, k) for k, (x, y) in enumerate(zip(got[job.a], got[job.b]))
                 if x.answer is not None and y.answer is not None]
    triples, refs = [], []
    for job, k in todo:
        it, got = job.set.items[k], answers[job.set.name]
        triples.append((judge_prompt(it), judged_text(it, got[job.a][k].answer), judged_text(it, got[job.b][k].answer)))
        refs.append(item_reference(it) if job.reference else None)
    ok: dict[int, int] = {}  # triple index -> judge calls answered (2 = both orders)
    errors: dict[int, str] = {}

    def seen(result: Any) -> None:
        j = result.request.tag // 2  # complete_all tags request i; compare asks triple j as requests 2j, 2j+1
        if result.ok:
            ok[j] = ok.get(j, 0) + 1
        else:
            errors.setdefault(j, result.error or "no answer")
        if on_result is not None:
            on_result(result)

    verdicts = judge.compare(triples, judge_cfg, calls_db, max_tokens=max_tokens, on_result=seen, references=refs,
                             weighted=weighted)
    hashes = judge.prompt_hashes()
    first_error = next(iter(errors.values()), "not sent: the judge stopped early")
    for j, ((job, k), v) in enumerate(zip(todo, verdicts)):
        if ok.get(j, 0) < 2:  # a call failed or was never sent (the engine stops after a fatal error)
            job.unjudged += 1
            job.error = job.error or errors.get(j, first_error)
            continue
        got = answers[job.set.name]
        job.lines.append({"set": job.set.name, "id": job.set.items[k].id, "a": job.a, "b": job.b,
                          "winner": v.winner, "consistent": v.consistent, "first": v.first, "second": v.second,
                          "reasons": v.reasons, "judge": judge_id, "preference": _round(v.preference),
                          "p_first": _round_all(v.p_first), "p_second": _round_all(v.p_second),
                          "prompt_sha256": hashes[judge.pairwise_prompt(refs[j])], "reference": refs[j] is not None,
                          "words_a": words(got[job.a][k].text), "words_b": words(got[job.b][k].text)})
    return jobs


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _round_all(d: dict[str, float] | None) -> dict[str, float] | None:
    return None if d is None else {k: round(v, 4) for k, v in d.items()}


CHECK = "reference"  # the set's own answers, judged against the base's in the judge check
OWN = Candidate(CHECK, "reference", "the set's own answers")


def check_answers(s: EvalSet, present: Sequence[Candidate]) -> list[Answer] | None:
    """The set's own answers (a test split's: the teacher's) for the judge check, or None where there is none to run.

    The check judges them against the base's answers, without showing them as reference: a judge worth its verdicts
    prefers the answers the student learned from to the untuned base's. None without a base candidate, when a teacher
    or reference candidate is already judged against the base (that pair is the check), or when the set has no
    answers of its own.
    """
    if "base" not in {c.name for c in present} or {c.role for c in present} & {"teacher", "reference"}:
        return None
    return fixed_answers(OWN, s)


def _whose(name: str) -> str:
    return "the set's own answers" if name == CHECK else f"{name}'s answers"


def check_verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """The judge check's summary (a = the set's answers, b = the base) with `passed` and, when it failed, a warning.

    Passed when the 95% interval of the set's answers' win rate over the base (probability-weighted where the judge
    gave probabilities, else the hard verdicts with ties split) lies above 50%; None when nothing was judged.
    """
    rate, ci = summary.get("win_rate_weighted"), summary.get("win_rate_weighted_ci")
    if rate is None:
        rate, ci = summary.get("win_rate_ties_split"), summary.get("win_rate_ties_split_ci")
    out = {**summary, "check_rate": rate, "check_ci": ci, "passed": None if ci is None else bool(ci[0] > 0.5)}
    if out["passed"] is False:
        out["warnings"] = [*summary.get("warnings", []),
                           f"judge check failed: the judge preferred {_whose(summary['a'])} to the base's in only "
                           f"{rate:.0%} [{ci[0]:.0%}-{ci[1]:.0%}] (50% = no preference): it cannot tell good answers "
                           "from the base's here, so its win rates on this set are no evidence either way (use a "
                           "stronger eval.judge)"]
    return out


def check_from_pairs(summaries: Sequence[dict[str, Any]], present: Sequence[Candidate]) -> dict[str, Any] | None:
    """The judge check of a set without one of its own: its base-vs-teacher (or reference) pair, where judged."""
    roles = {c.name: c.role for c in present}
    pair = next((p for p in summaries if p["a"] == "base" and roles.get(p["b"]) in ("teacher", "reference")
                 and p.get("n")), None)
    return None if pair is None else check_from_pair(pair)


def check_from_pair(summary: dict[str, Any]) -> dict[str, Any]:
    """The judge check read off an existing pair (base, teacher or reference): the same rates seen from the other
    side (a = the teacher or reference, b = the base), then `check_verdict`."""
    out = {"a": summary["b"], "b": summary["a"], "n": summary.get("n"), "warnings": [], "from_pair": True}
    for key in ("win_rate_weighted", "win_rate_ties_split"):
        if summary.get(key) is not None:
            out[key] = round(1 - summary[key], 4)
            ci = summary.get(f"{key}_ci")
            out[f"{key}_ci"] = None if ci is None else [round(1 - ci[1], 4), round(1 - ci[0], 4)]
    return check_verdict(out)


HARD = {"a": 1.0, "tie": 0.5, "b": 0.0}  # a hard verdict as a share, where the judge gave no probabilities


def weighted(lines: list[dict[str, Any]], seed: int, resamples: int) -> dict[str, Any]:
    """The probability-weighted win rate of a over b and its bootstrap 95% interval, and on how many prompts the
    judge gave probabilities ({} when it gave none: the hard verdicts alone are summarised by `rates`)."""
    prefs = [ln.get("preference") for ln in lines]
    n_probs = sum(1 for p in prefs if p is not None)
    if not n_probs:
        return {}
    shares = [p if p is not None else HARD[ln["winner"]] for p, ln in zip(prefs, lines)]
    ci = bootstrap_means({"w": shares}, seed, resamples)["w"]
    return {"win_rate_weighted": round(sum(shares) / len(shares), 4),
            "win_rate_weighted_ci": list(ci) if ci is not None else None, "weighted_from_probabilities": n_probs}


def length_warning(winners: Sequence[str], words_a: Sequence[int], words_b: Sequence[int]) -> str | None:
    """A warning when the longer answer won most decisive verdicts (LLM judges favour length)."""
    decisive = [(w, x, y) for w, x, y in zip(winners, words_a, words_b) if w != "tie" and x != y]
    if len(decisive) < LENGTH_MIN_DECISIVE:
        return None
    longer = sum(1 for w, x, y in decisive if (w == "a") == (x > y))
    if longer * 2 <= len(decisive):
        return None
    return (f"the longer answer won {longer} of {len(decisive)} decisive verdicts ({longer / len(decisive):.0%}): "
            "the judge may be rewarding length; compare mean_words_a and mean_words_b")


def self_preference_warning(a: Candidate, b: Candidate, judge_id: str) -> str | None:
    """A warning when the judge is one of the two candidates (LLM judges favour their own answers)."""
    same = [c.name for c in (a, b) if c.model == judge_id]
    if not same:
        return None
    return (f"the judge ({judge_id}) is also candidate {same[0]}: LLM judges tend to prefer their own answers "
            "(self-preference); use a different judge for a fair verdict")


def summarize(a: Candidate, b: Candidate, lines: list[dict[str, Any]], unjudged: int, judge_id: str,
              seed: int, resamples: int) -> dict[str, Any]:
    """The scores.json pairwise entry of one pair: rates, CIs, inconsistency, lengths and warnings."""
    winners = [ln["winner"] for ln in lines]
    wa, wb = [ln["words_a"] for ln in lines], [ln["words_b"] for ln in lines]
    out: dict[str, Any] = {"a": a.name, "b": b.name, **rates(winners, seed, resamples),
                           **weighted(lines, seed, resamples)}
    n = len(lines)
    out["inconsistent"] = round(sum(1 for ln in lines if not ln["consistent"]) / n, 4) if n else None
    out["unjudged"] = unjudged
    out["mean_words_a"] = round(sum(wa) / n, 2) if n else None
    out["mean_words_b"] = round(sum(wb) / n, 2) if n else None
    warnings = [w for w in (length_warning(winners, wa, wb), self_preference_warning(a, b, judge_id)) if w]
    if n and out["inconsistent"] > 0.5:
        warnings.append(f"the judge's two orders disagreed on {out['inconsistent']:.0%} of prompts: its verdicts "
                        "are weak (a larger judge helps)")
    if unjudged:
        warnings.append(f"{unjudged} prompt(s) left unjudged: the judge call failed")
    out["warnings"] = warnings
    return out
