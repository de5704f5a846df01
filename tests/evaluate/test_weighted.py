"""The probability-weighted pairwise verdict: token probabilities read from replies of both API shapes, kept in
the call log, read at the verdict, averaged over both orders, summarised with an interval, and shown in the
headline. Scripted judges (no model); the real backends' logprobs are checked in tests/teachers."""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protege import judge
from protege.evaluate import pairwise
from protege.evaluate.candidates import Candidate
from protege.evaluate.headline import headline
from protege.prompts import judge as P
from protege.teachers.base import Completion, completions_sampling, read_logprobs
from protege.teachers.cache import CallLog
from protege.teachers.engine import Result
from tests.evaluate.test_pairwise import JUDGE, _answers, _set


def _tokens(*pieces: tuple[str, dict[str, float]]) -> list[list[Any]]:
    return [[tok, alts] for tok, alts in pieces]


def test_read_logprobs_chat_and_completions_shapes() -> None:
    chat = {"logprobs": {"content": [
        {"token": "Verdict", "logprob": -0.01, "top_logprobs": [{"token": "Verdict", "logprob": -0.01}]},
        {"token": " B", "logprob": -0.4, "top_logprobs": [{"token": " B", "logprob": -0.4},
                                                          {"token": " A", "logprob": -1.2}]}]}}
    assert read_logprobs(chat) == [["Verdict", {"Verdict": -0.01}], [" B", {" B": -0.4, " A": -1.2}]]
    # the chosen token is kept even when the server lists no alternatives
    assert read_logprobs({"logprobs": {"content": [{"token": "x", "logprob": -2.0, "top_logprobs": []}]}}) == \
        [["x", {"x": -2.0}]]
    legacy = {"logprobs": {"tokens": ["Ver", " A"], "token_logprobs": [-0.1, -0.3],
                           "top_logprobs": [{"Ver": -0.1}, {" A": -0.3, " B": -1.5}]}}
    assert read_logprobs(legacy) == [["Ver", {"Ver": -0.1}], [" A", {" A": -0.3, " B": -1.5}]]
    for none in ({}, {"logprobs": None}, {"logprobs": {"content": [{"token": "x"}]}}, {"logprobs": {"other": 1}}):
        assert read_logprobs(none) is None


def test_completions_sampling_turns_top_logprobs_into_the_count() -> None:
    chat = {"temperature": 0.0, "max_tokens": 9, "logprobs": True, "top_logprobs": 10}
    assert completions_sampling(chat) == {"temperature": 0.0, "max_tokens": 9, "logprobs": 10}
    assert completions_sampling({"max_tokens": 9}) == {"max_tokens": 9}
    assert completions_sampling({"logprobs": False, "top_logprobs": 3}) == {"logprobs": False}


def test_verdict_probs_reads_the_token_that_holds_the_verdict() -> None:
    lp = _tokens(("Ver", {"Ver": -0.01}), ("dict", {"dict": 0.0}), (":", {":": 0.0}),
                 (" A", {" A": math.log(0.6), " B": math.log(0.3), " tie": math.log(0.05), " The": math.log(0.05)}),
                 ("\n", {"\n": 0.0}), ("Reason", {"Reason": 0.0}), (": B is short.", {": B is short.": 0.0}))
    got = P.verdict_probs(lp)
    assert got is not None and abs(sum(got.values()) - 1) < 1e-9
    assert got["A"] == pytest.approx(0.6 / 0.95) and got["B"] == pytest.approx(0.3 / 0.95)
    assert got["tie"] == pytest.approx(0.05 / 0.95)
    # MT-bench's brackets, the verdict in its own token; "C" is a tie
    lp = _tokens(("After", {"After": 0.0}), (" [[", {" [[": 0.0}),
                 ("C", {"C": math.log(0.5), "B": math.log(0.25), "A": math.log(0.25)}), ("]]", {"]]": 0.0}))
    assert P.verdict_probs(lp) == pytest.approx({"A": 0.25, "B": 0.25, "tie": 0.5})
    # a token that merges the colon and the letter still reads as the verdict
    lp = _tokens(("Verdict", {"Verdict": 0.0}), (": B", {": B": math.log(0.7), ": A": math.log(0.3)}))
    assert P.verdict_probs(lp) == pytest.approx({"A": 0.3, "B": 0.7, "tie": 0.0})


def test_verdict_probs_is_none_without_a_verdict_or_a_choice_between_verdicts() -> None:
    assert P.verdict_probs(None) is None and P.verdict_probs([]) is None
    assert P.verdict_probs(_tokens(("Both", {"Both": 0.0}), (" good", {" good": 0.0}))) is None
    # the verdict token's alternatives are mostly not verdicts: not a choice between A and B
    lp = _tokens(("Verdict:", {"Verdict:": 0.0}), (" A", {" A": math.log(0.2), " The": math.log(0.7)}))
    assert P.verdict_probs(lp) is None


def test_preference_averages_both_orders_and_halves_ties() -> None:
    first = judge.in_ab_terms({"A": 0.8, "B": 0.2, "tie": 0.0}, a_first=True)  # a shown first: "A" is a
    second = judge.in_ab_terms({"A": 0.6, "B": 0.3, "tie": 0.1}, a_first=False)  # b shown first: "A" is b
    assert first == {"a": 0.8, "b": 0.2, "tie": 0.0} and second == {"a": 0.3, "b": 0.6, "tie": 0.1}
    assert judge.preference(first, second) == pytest.approx((0.8 + 0.3 + 0.05) / 2)
    assert judge.preference(first, None) is None and judge.in_ab_terms(None, True) is None


def _biased(p_first: float, p_good: float) -> Callable[..., list[Any]]:
    """A judge that says "A" in both orders (position bias) but is surer of A when A is the "good" answer."""
    def complete_all(cfg: Any, reqs: list[Any], calls_db: Any = None, gcfg: Any = None,
                     on_result: Callable[[Any], None] | None = None) -> list[Any]:
        out = []
        for i, r in enumerate(reqs):
            assert r.sampling["logprobs"] is True and r.sampling["top_logprobs"] == judge.TOP_LOGPROBS
            user = r.messages[-1]["content"]
            a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", user, re.S).group(1)
            b = re.search(r"\[Answer B\]\n(.*?)\n\nReply", user, re.S).group(1)
            pa = p_first + (p_good if "good" in a else 0) - (p_good if "good" in b else 0)
            lp = _tokens(("Verdict", {"Verdict": 0.0}), (":", {":": 0.0}),
                         (" A", {" A": math.log(pa), " B": math.log(1 - pa)}), ("\nReason: x", {"\nReason: x": 0.0}))
            r.tag = i
            res = Result(r, str(i), completion=Completion("Verdict: A\nReason: x", logprobs=lp))
            if on_result:
                on_result(res)
            out.append(res)
        return out
    return complete_all


def test_a_position_biased_judge_voids_the_verdicts_but_not_the_weighted_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _set(10)
    answers = {"student": _answers("student", [f"good {i}" for i in range(9)] + ["meh 9"]),
               "base": _answers("base", [f"meh {i}" for i in range(9)] + ["good 9"])}
    monkeypatch.setattr(judge, "complete_all", _biased(p_first=0.75, p_good=0.1))
    (job,) = pairwise.judge_pairs([pairwise.PairJob(s, "student", "base")], {s.name: answers}, JUDGE, None, 64,
                                  "judge-model", weighted=True)
    lines = job.lines
    assert [ln["winner"] for ln in lines] == ["tie"] * 10 and not any(ln["consistent"] for ln in lines)
    # student first: P(A)=0.85; base first: P(A)=0.65, so P(student)=0.35: (0.85 + 0.35) / 2
    assert [ln["preference"] for ln in lines] == pytest.approx([0.6] * 9 + [0.4])
    assert lines[0]["p_first"] == pytest.approx({"a": 0.85, "b": 0.15, "tie": 0.0})
    assert lines[0]["p_second"] == pytest.approx({"a": 0.35, "b": 0.65, "tie": 0.0})
    entry = pairwise.summarize(Candidate("student", "student", "s"), Candidate("base", "base", "b"), lines, 0,
                               "judge-model", seed=0, resamples=500)
    assert entry["tie"] == 1.0 and entry["win_rate_ties_split"] == 0.5  # the hard verdicts say nothing
    assert entry["win_rate_weighted"] == pytest.approx((0.6 * 9 + 0.4) / 10, abs=1e-4)
    lo, hi = entry["win_rate_weighted_ci"]
    assert 0.5 < lo <= entry["win_rate_weighted"] <= hi <= 0.6 and entry["weighted_from_probabilities"] == 10
    scores = {"sets": [{"name": "test", "n": 10, "candidates": {"student": {}, "base": {}}, "pairwise": [entry]}],
              "cost": {}}
    assert headline(scores).startswith("student vs base on 10 held-out tasks: win rate 58% [")
    assert "(the judge's probabilities, both orders); verdicts both orders agree on: wins 0%, ties 100%" \
        in headline(scores)


def test_without_probabilities_the_hard_verdict_stands_in(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [{"winner": "a", "preference": 0.7}, {"winner": "b", "preference": None},
             {"winner": "tie", "preference": None}]
    got = pairwise.weighted(lines, seed=0, resamples=200)
    assert got["win_rate_weighted"] == pytest.approx((0.7 + 0 + 0.5) / 3, abs=1e-4)
    assert got["weighted_from_probabilities"] == 1
    assert pairwise.weighted([{"winner": "a", "preference": None}], 0, 200) == {}  # no probabilities: no entry
    # a judge without logprobs (weighted off): the lines carry no preference, the headline keeps the hard rate
    pair = {"a": "student", "b": "base", "n": 2, "win": 0.5, "tie": 0.5, "loss": 0.0,
            "win_rate_ties_split": 0.75, "win_rate_ties_split_ci": [0.5, 1.0]}
    scores = {"sets": [{"name": "test", "n": 2, "candidates": {"student": {}, "base": {}}, "pairwise": [pair]}],
              "cost": {}}
    assert "win rate with ties split 75% [50%-100%]" in headline(scores)


def test_call_log_keeps_logprobs_and_upgrades_an_old_log(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as db:  # the responses table as call logs were written before logprobs were kept
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL, "
                   "text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, "
                   "model_version TEXT, latency_s REAL, cost_usd REAL, created REAL NOT NULL)")
        db.execute("INSERT INTO responses VALUES ('k0', 'm', '{}', 'old answer', 'stop', 3, 2, 'm', 0.1, NULL, 0)")
    log = CallLog(old)
    assert log.get("k0").completion.text == "old answer" and log.get("k0").completion.logprobs is None
    lp = [["Verdict", {"Verdict": -0.01}], [" A", {" A": -0.2, " B": -1.7}]]
    log.put("k1", "m", {}, Completion("Verdict: A", "stop", 5, 2, "m", 0.2, logprobs=lp), None)
    log.put("k2", "m", {}, Completion("plain", "stop", 5, 1, "m", 0.2), None)
    again = CallLog(old)
    assert again.get("k1").completion.logprobs == lp and again.get("k2").completion.logprobs is None


def test_the_hf_backend_returns_token_probabilities(tmp_path: Path) -> None:
    """A `kind: hf` judge reports each generated token's top alternatives from generate's scores (greedy: the chosen
    token is the most probable one), and a request without logprobs gets none."""
    from protege import models
    from protege.config import TeacherConfig
    from protege.errors import UserError
    from protege.teachers import Request, complete_all

    try:
        folder = models.prepare("smollm2-135m-instruct")
    except UserError as err:
        pytest.skip(f"SmolLM2-135M-Instruct not available: {err.message}")
    msgs = [{"role": "user", "content": "Is the sky blue? Answer yes or no, then say why."}]
    asked = Request(messages=msgs, sampling={"temperature": 0.0, "max_tokens": 8, "logprobs": True, "top_logprobs": 4})
    plain = Request(messages=msgs, sampling={"temperature": 0.0, "max_tokens": 8})
    got, without = (r.completion for r in complete_all(TeacherConfig(kind="hf", model=str(folder)), [asked, plain],
                                                       tmp_path / "calls.sqlite"))
    assert without.logprobs is None and got.text == without.text
    assert len(got.logprobs) == got.completion_tokens and "".join(t for t, _ in got.logprobs) == got.text
    for token, alts in got.logprobs:
        assert 4 <= len(alts) <= 5 and max(alts, key=alts.get) == token and all(v <= 0 for v in alts.values())
        assert sum(math.exp(v) for v in alts.values()) <= 1 + 1e-6
