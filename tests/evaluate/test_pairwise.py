"""Pairwise judging: both orders through `judge.compare` with scripted judges (no model), the pairs chosen,
the length and self-preference warnings, and the headline."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from protege import judge
from protege.config import TeacherConfig
from protege.evaluate import pairwise
from protege.evaluate.candidates import Answer, Candidate
from protege.evaluate.headline import headline
from protege.evaluate.sets import EvalItem, EvalSet
from protege.teachers.base import Completion
from protege.teachers.engine import Result

JUDGE = TeacherConfig(kind="openai", model="judge-model", base_url="http://127.0.0.1:9/v1")


def scripted(policy: Callable[[str, str], str | None]) -> Callable[..., list[Any]]:
    """A stand-in for the engine: each judge request is answered by `policy(answer_a, answer_b)`."""
    def complete_all(cfg: Any, reqs: list[Any], calls_db: Any = None, gcfg: Any = None,
                     on_result: Callable[[Any], None] | None = None) -> list[Any]:
        out = []
        for i, r in enumerate(reqs):
            user = r.messages[-1]["content"]
            a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", user, re.S).group(1)
            b = re.search(r"\[Answer B\]\n(.*?)\n\nReply", user, re.S).group(1)
            verdict = policy(a, b)
            r.tag = i
            res = Result(r, str(i), error="connection refused") if verdict is None else \
                Result(r, str(i), completion=Completion(f"Reason: scripted.\nVerdict: {verdict}"))
            if on_result:
                on_result(res)
            out.append(res)
        return out
    return complete_all


def _judge(s: EvalSet, a: str, b: str, answers: dict[str, list[Answer]]) -> tuple[list[dict[str, Any]], int, Any]:
    (job,) = pairwise.judge_pairs([pairwise.PairJob(s, a, b)], {s.name: answers}, JUDGE, None, 64, "judge-model")
    return job.lines, job.unjudged, job.error


def _set(n: int) -> EvalSet:
    return EvalSet("test", "run:data/test.jsonl", "openai", [EvalItem(str(i), [f"Task {i}"]) for i in range(n)])


def _answers(name: str, texts: list[str]) -> list[Answer]:
    return [Answer("test", str(i), name, name, f"Task {i}", t, "stop", False, 1, 0.1, False)
            for i, t in enumerate(texts)]


def test_both_orders_content_judge_vs_position_biased_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _set(4)
    answers = {"student": _answers("student", ["good one", "good two", "meh", "good four"]),
               "teacher": _answers("teacher", ["meh", "meh", "good three", "good five"])}
    # A judge that prefers the answer with "good" wherever it is shown: verdicts agree across orders.
    monkeypatch.setattr(judge, "complete_all", scripted(
        lambda a, b: "tie" if ("good" in a) == ("good" in b) else ("A" if "good" in a else "B")))
    lines, unjudged, err = _judge(s, "student", "teacher", answers)
    assert [ln["winner"] for ln in lines] == ["a", "a", "b", "tie"] and unjudged == 0 and err is None
    assert all(ln["consistent"] for ln in lines)
    assert {ln["prompt_sha256"] for ln in lines} == {judge.prompt_hashes()["judge_pairwise"]}
    # A judge that always picks the first answer shown: the two orders disagree, every verdict is a tie.
    monkeypatch.setattr(judge, "complete_all", scripted(lambda a, b: "A"))
    lines, _, _ = _judge(s, "student", "teacher", answers)
    assert [ln["winner"] for ln in lines] == ["tie"] * 4 and not any(ln["consistent"] for ln in lines)
    entry = pairwise.summarize(Candidate("student", "student", "s"), Candidate("teacher", "teacher", "t"), lines, 0,
                               "judge-model", seed=0, resamples=200)
    assert entry["inconsistent"] == 1.0 and entry["tie"] == 1.0
    assert any("disagreed" in w for w in entry["warnings"])


def test_failed_judge_calls_are_unjudged_not_ties(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _set(3)
    answers = {"student": _answers("student", ["x", "FAIL", "z"]), "base": _answers("base", ["y", "w", "v"])}
    monkeypatch.setattr(judge, "complete_all", scripted(lambda a, b: None if "FAIL" in (a, b) else "B"))
    lines, unjudged, err = _judge(s, "student", "base", answers)
    assert [ln["id"] for ln in lines] == ["0", "2"] and unjudged == 1 and err == "connection refused"
    # a candidate that did not answer an item leaves that item out of the pair
    answers["base"][0].answer = None
    lines, unjudged, _ = _judge(s, "student", "base", answers)
    assert [ln["id"] for ln in lines] == ["2"]


def test_pairs_chosen() -> None:
    c = lambda name, role: Candidate(name, role, name)  # noqa: E731
    cands = [c("student", "student"), c("base", "base"), c("teacher", "teacher"), c("davinci", "reference")]
    assert pairwise.pairs(cands) == [("student", "base"), ("student", "teacher"), ("student", "davinci"),
                                     ("base", "teacher"), ("base", "davinci")]
    assert pairwise.pairs([c("m1", "model"), c("m2", "model"), c("m3", "model")]) == [("m1", "m2"), ("m1", "m3")]
    assert pairwise.pairs([c("student", "student")]) == []


def test_length_warning() -> None:
    # the longer answer (a) wins 4 of 5 decisive verdicts; ties and equal lengths do not count
    winners = ["a", "a", "a", "a", "b", "tie", "a"]
    wa, wb = [90, 80, 70, 60, 50, 10, 5], [10, 10, 10, 10, 10, 90, 5]
    w = pairwise.length_warning(winners, wa, wb)
    assert w is not None and "4 of 5" in w
    assert pairwise.length_warning(["b", "b", "b", "a"], [90, 80, 70, 5], [10, 10, 10, 50]) is None  # shorter wins
    assert pairwise.length_warning(["a", "a"], [90, 80], [1, 1]) is None  # too few decisive verdicts


def test_self_preference_warning() -> None:
    a, b = Candidate("student", "student", "student@sha256:1"), Candidate("teacher", "teacher", "qwen-1.5b")
    w = pairwise.self_preference_warning(a, b, "qwen-1.5b")
    assert w is not None and "teacher" in w and "self-preference" in w
    assert pairwise.self_preference_warning(a, b, "gpt-judge") is None
    entry = pairwise.summarize(a, b, [], 0, "qwen-1.5b", 0, 200)
    assert entry["n"] == 0 and any("self-preference" in x for x in entry["warnings"])


def test_multi_turn_items_are_judged_as_transcripts() -> None:
    it = EvalItem("1", ["Write a note.", "Make it formal."])
    assert "[Turn 2] Make it formal." in pairwise.judge_prompt(it)
    text = pairwise.judged_text(it, ["hi there", "Dear Sir"])
    assert text.index("hi there") < text.index("Make it formal.") < text.index("Dear Sir")


def _pair(a: str, b: str, n: int, wot: float) -> dict[str, Any]:
    return {"a": a, "b": b, "n": n, "win_or_tie": wot, "win_or_tie_ci": [wot - 0.1, wot + 0.1]}


def test_headline_parts_and_omissions() -> None:
    scores = {"sets": [
        {"name": "test", "n": 20, "candidates": {"student": {}, "base": {}, "teacher": {}}, "ifeval": None,
         "pairwise": [_pair("student", "base", 20, 0.7), _pair("student", "teacher", 20, 0.45),
                      _pair("base", "teacher", 20, 0.2)]},
        {"name": "ifeval_input_data", "n": 3, "candidates": {}, "pairwise": [],
         "ifeval": {"student": {"prompt_strict": 0.4}, "base": {"prompt_strict": 0.3},
                    "teacher": {"prompt_strict": 0.6}}}],
        "cost": {"student": {"kind": "hf", "seconds_per_request": 0.5, "usd_per_1k_requests": None},
                 "teacher": {"kind": "llamacpp", "seconds_per_request": 2.0, "usd_per_1k_requests": None}}}
    line = headline(scores)
    assert line == ("student wins or ties 45% [35%-55%] against the teacher on 20 held-out tasks, base 20% [10%-30%]; "
                    "IFEval strict student 40% vs base 30% vs teacher 60%; 4.0 times cheaper per request (machine time)")
    for name, x in (("student", 0.412), ("base", 0.3), ("teacher", 0.6667)):
        scores["sets"][1]["ifeval"][name]["instruction_strict"] = x
    assert "IFEval strict student 40% vs base 30% vs teacher 60% (instruction-level 0.412 vs 0.300 vs 0.667);" in \
        headline(scores)
    scores["cost"]["teacher"]["kind"] = "openai"  # an API teacher without prices: no ratio claimed
    scores["sets"] = scores["sets"][:1]
    assert headline(scores).endswith("base 20% [10%-30%]")
    # a judge that gave probabilities: the weighted win rates replace "wins or ties" (which all-tie judges inflate)
    pairs = scores["sets"][0]["pairwise"]
    pairs[1].update(win_rate_weighted=0.4812, win_rate_weighted_ci=[0.47, 0.49])
    pairs[2].update(win_rate_weighted=0.3, win_rate_weighted_ci=[0.25, 0.35])
    assert headline(scores) == ("student win rate 48% [47%-49%] against the teacher on 20 held-out tasks (the judge's "
                                "probabilities, both orders), base 30% [25%-35%]")
    scores["sets"][0]["pairwise"] = []
    assert "nothing was judged" in headline(scores)


def test_headline_of_student_vs_base_only() -> None:
    # The demo judges the student against its base alone: the headline must report that pair.
    pair = {"a": "student", "b": "base", "n": 5, "win": 0.6, "tie": 0.2, "loss": 0.2,
            "win_rate_ties_split": 0.7, "win_rate_ties_split_ci": [0.4, 1.0]}
    scores = {"sets": [{"name": "test", "n": 5, "candidates": {"student": {}, "base": {}}, "ifeval": None,
                        "pairwise": [pair]}], "cost": {}}
    assert headline(scores) == ("student vs base on 5 held-out tasks: wins 60%, ties 20%, loses 20%; "
                                "win rate with ties split 70% [40%-100%]")
    scores["sets"][0]["candidates"] = {"student": {"reference": "set answers", "rougeL_vs_reference": 0.3124},
                                       "base": {"reference": "set answers", "rougeL_vs_reference": 0.18}}
    assert headline(scores).endswith("[40%-100%]; ROUGE-L to the held-out answers: student 0.312 vs base 0.180")


def test_many_pairs_and_sets_in_one_judge_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    passes = []
    inner = scripted(lambda a, b: "A" if len(a) > len(b) else "B")

    def counting(*args: Any, **kwargs: Any) -> list[Any]:
        passes.append(len(args[1]))
        return inner(*args, **kwargs)

    monkeypatch.setattr(judge, "complete_all", counting)
    s1, s2 = _set(2), EvalSet("other", "other.jsonl", "instructions", [EvalItem("x", ["Task x"])])
    answers = {"test": {"student": _answers("student", ["long answer", "s"]), "base": _answers("base", ["s", "t"]),
                        "teacher": _answers("teacher", ["longest answer here", "tt"])},
               "other": {"student": [Answer("other", "x", "student", "student", "Task x", "aa", "stop", False, 1,
                                            0.1, False)],
                         "base": [Answer("other", "x", "base", "base", "Task x", "a", "stop", False, 1, 0.1, False)]}}
    jobs = [pairwise.PairJob(s1, "student", "base"), pairwise.PairJob(s1, "student", "teacher"),
            pairwise.PairJob(s2, "student", "base")]
    pairwise.judge_pairs(jobs, answers, JUDGE, None, 64, "judge-model")
    assert passes == [2 * 5]  # 5 items over 3 pairs and 2 sets, both orders, one engine pass
    assert [[ln["winner"] for ln in j.lines] for j in jobs] == [["a", "tie"], ["b", "b"], ["a"]]
    assert [ln["set"] for ln in jobs[2].lines] == ["other"]


def test_reference_guided_judging_shows_the_items_own_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a reference, the judge prompt holds it (and its own hash is recorded); a judge that prefers the answer
    matching the reference then decides pairs a reference-free judge could only call ties."""
    seen: list[str] = []

    def policy_with_ref(a: str, b: str) -> str:
        user = seen[-1]
        ref = re.search(r"\[Reference answer\]\n(.*?)\n\n\[Answer A\]", user, re.S)
        if ref is None:
            return "tie"
        return "A" if a == ref.group(1) else "B" if b == ref.group(1) else "tie"

    def recording(cfg: Any, reqs: list[Any], calls_db: Any = None, gcfg: Any = None,
                  on_result: Callable[[Any], None] | None = None) -> list[Any]:
        out = []
        for i, r in enumerate(reqs):  # one request at a time, so the policy sees its own prompt
            seen.append(r.messages[-1]["content"])
            a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", seen[-1], re.S).group(1)
            b = re.search(r"\[Answer B\]\n(.*?)\n\nReply", seen[-1], re.S).group(1)
            r.tag = i
            res = Result(r, str(i), completion=Completion(f"Reason: scripted.\nVerdict: {policy_with_ref(a, b)}"))
            if on_result:
                on_result(res)
            out.append(res)
        return out

    monkeypatch.setattr(judge, "complete_all", recording)
    s = EvalSet("test", "run:data/test.jsonl", "openai",
                [EvalItem("0", ["Task 0"], reference=["right"]), EvalItem("1", ["Task 1"], reference=["right"]),
                 EvalItem("2", ["Task 2"]), EvalItem("3", ["Task 3", "Turn 2"], reference=["right", "r2"])])
    answers = {"student": _answers("student", ["right", "wrong", "right", "x"]),
               "base": _answers("base", ["wrong", "right", "wrong", "y"])}
    answers["student"][3].answer, answers["base"][3].answer = ["x", "x2"], ["y", "y2"]
    (job,) = pairwise.judge_pairs([pairwise.PairJob(s, "student", "base", reference=True)], {"test": answers},
                                  JUDGE, None, 64, "judge-model")
    assert [ln["winner"] for ln in job.lines] == ["a", "b", "tie", "tie"]
    assert [ln["reference"] for ln in job.lines] == [True, True, False, False]  # none / multi-turn: no reference
    hashes = judge.prompt_hashes()
    assert [ln["prompt_sha256"] for ln in job.lines] == [hashes["judge_pairwise_ref"]] * 2 + \
        [hashes["judge_pairwise"]] * 2
    assert "[Reference answer]\nright\n" in seen[0] and "[Reference answer]" not in seen[4]
    # the two orders of an item are consecutive and share everything up to the answers (a local judge reuses it)
    assert seen[0].split("[Answer A]")[0] == seen[1].split("[Answer A]")[0]
    # switched off: the same items are judged without the reference
    seen.clear()
    (job,) = pairwise.judge_pairs([pairwise.PairJob(s, "student", "base")], {"test": answers}, JUDGE, None, 64,
                                  "judge-model")
    assert [ln["winner"] for ln in job.lines] == ["tie"] * 4 and not any(ln["reference"] for ln in job.lines)


def test_reference_is_never_used_against_the_teacher_or_a_reference() -> None:
    c = lambda name, role: Candidate(name, role, name)  # noqa: E731
    assert pairwise.use_reference(c("student", "student"), c("base", "base"), True)
    assert not pairwise.use_reference(c("student", "student"), c("base", "base"), False)
    assert not pairwise.use_reference(c("student", "student"), c("teacher", "teacher"), True)
    assert not pairwise.use_reference(c("base", "base"), c("davinci", "reference"), True)


def test_judge_check_runs_only_where_it_means_something() -> None:
    s = EvalSet("test", "run:data/test.jsonl", "openai",
                [EvalItem(str(i), [f"Task {i}"], [f"answer {i}"]) for i in range(3)])
    student, base = Candidate("student", "student", "s"), Candidate("base", "base", "b")
    own = pairwise.check_answers(s, [student, base])
    assert [a.answer for a in own] == ["answer 0", "answer 1", "answer 2"] and own[0].candidate == pairwise.CHECK
    assert pairwise.check_answers(s, [student]) is None  # no base to check against
    # a teacher or reference candidate is already judged against the base: that pair is the check
    assert pairwise.check_answers(s, [student, base, Candidate("teacher", "teacher", "t")]) is None
    assert pairwise.check_answers(s, [student, base, Candidate("reference", "reference", "r")]) is None
    assert pairwise.check_answers(_set(3), [student, base]) is None  # a set without answers of its own


@pytest.mark.parametrize("policy, passed", [
    (lambda a, b: "tie" if a.startswith("answer") == b.startswith("answer") else ("A" if a.startswith("answer")
                                                                                   else "B"), True),
    (lambda a, b: "A", False),  # names the first slot whatever it holds
])
def test_judge_check_passes_a_discerning_judge_and_flags_one_that_is_not(
        monkeypatch: pytest.MonkeyPatch, policy: Callable[[str, str], str], passed: bool) -> None:
    n = 6
    s = EvalSet("test", "run:data/test.jsonl", "openai",
                [EvalItem(str(i), [f"Task {i}"], [f"answer {i}"]) for i in range(n)])
    monkeypatch.setattr(judge, "complete_all", scripted(policy))
    own = pairwise.check_answers(s, [Candidate("student", "student", "s"), Candidate("base", "base", "b")])
    answers = {pairwise.CHECK: own, "base": _answers("base", [f"rambling {i}" for i in range(n)])}
    lines, unjudged, _ = _judge(s, pairwise.CHECK, "base", answers)
    assert unjudged == 0 and not any(ln["reference"] for ln in lines)  # never shown its own answer as reference
    check = pairwise.check_verdict(pairwise.summarize(Candidate(pairwise.CHECK, "reference", "own"),
                                                      Candidate("base", "base", "b"), lines, 0, "judge-model", 0, 200))
    assert check["passed"] is passed and check["check_ci"][0] <= check["check_rate"] <= check["check_ci"][1]
    assert any("judge check failed" in w for w in check["warnings"]) is not passed
    pair = {"a": "student", "b": "base", "n": n, "win": 0.0, "tie": 1.0, "loss": 0.0,
            "win_rate_ties_split": 0.5, "win_rate_ties_split_ci": [0.5, 0.5]}
    scores = {"sets": [{"name": "test", "n": n, "candidates": {"student": {}, "base": {}}, "ifeval": None,
                        "pairwise": [pair], "judge_check": check}], "cost": {}}
    text = headline(scores)
    assert ("judge check passed" in text) is passed and ("judge check FAILED" in text) is not passed
    assert text.endswith("the win rate is no evidence either way") is not passed


def test_judge_check_read_off_a_teacher_or_reference_pair() -> None:
    # base vs text-davinci-003, 49% [45%-53%] for the base: the reference's side is 51% [47%-55%], check failed
    pair = {"a": "base", "b": "text_davinci_003", "n": 24, "win_rate_weighted": 0.49,
            "win_rate_weighted_ci": [0.45, 0.53], "win_rate_ties_split": 0.5, "win_rate_ties_split_ci": [0.5, 0.5]}
    check = pairwise.check_from_pair(pair)
    assert (check["a"], check["b"], check["check_rate"], check["check_ci"]) == ("text_davinci_003", "base", 0.51,
                                                                                 [0.47, 0.55])
    assert check["passed"] is False and "text_davinci_003's answers" in check["warnings"][0]
    passed = pairwise.check_from_pair({**pair, "win_rate_weighted": 0.2, "win_rate_weighted_ci": [0.1, 0.3]})
    assert passed["passed"] is True and passed["check_rate"] == 0.8 and not passed["warnings"]
    # a judge without probabilities: the hard verdicts with ties split stand in
    hard = pairwise.check_from_pair({"a": "base", "b": "teacher", "n": 5, "win_rate_ties_split": 0.1,
                                     "win_rate_ties_split_ci": [0.0, 0.3]})
    assert hard["passed"] is True and hard["check_ci"] == [0.7, 1.0]
