"""The judge prompts' pure parsers and the both-orders rule (no model needed)."""

import pytest

from protege import judge
from protege.prompts import judge as P


# Replies in the shapes judges give (written by us after the AlpaGasus prompt's format).
@pytest.mark.parametrize("reply,expected", [
    ("Score: 4\nReason: Correct and clear, but misses one edge case.", (4, "Correct and clear, but misses one edge case")),
    ("**Score:** 2 out of 5\n**Reason:** The code does not run.", (2, "The code does not run")),
    ("Rating: 5/5. Reason: complete and accurate.", (5, "complete and accurate")),
    ("3\nThe answer is partly wrong about the dates.", (3, "The answer is partly wrong about the dates")),
    ("I think this response is quite good overall.", None),
    ("Score: 9\nReason: great", None),
])
def test_parse_score(reply, expected):
    assert P.parse_score(reply) == expected


@pytest.mark.parametrize("reply,expected", [
    ("Reason: A answers the question; B repeats it.\nVerdict: A", ("A", "A answers the question; B repeats it")),
    ("Reason: both fine\nVerdict: tie", ("tie", "both fine")),
    ("**Reason:** B is correct.\n**Verdict:** Answer B", ("B", "B is correct")),
    ("Verdict: A\nReason: first\n\nOn reflection... Verdict: B", ("B", "first")),
    ("After comparing, [[B]]", ("B", "After comparing")),
    ("[[C]] both equally good", ("tie", "both equally good")),
    ("Both answers have merits.", None),
    ("Verdict: maybe", None),
])
def test_parse_pairwise(reply, expected):
    got = P.parse_pairwise(reply)
    if expected is None:
        assert got is None
    else:
        assert got[0] == expected[0]
        assert expected[1].split()[0].strip("*") in got[1]


@pytest.mark.parametrize("reply,expected", [
    ("Reason: thorough and correct.\nRating: 8", 8),
    ("Rating: [[10]]", 10),
    ("The answer is fine. [[6]]", 6),
    ("Rating: 7/10", 7),
    ("no number here", None),
])
def test_parse_grade(reply, expected):
    got = P.parse_grade(reply)
    assert (got[0] if got else None) == expected


@pytest.mark.parametrize("first,second,expected", [
    ("A", "B", ("a", True)),      # a first wins; b first, the second slot (a) wins: agree on a
    ("B", "A", ("b", True)),
    ("A", "A", ("tie", False)),   # position bias: each order prefers the first slot
    ("tie", "tie", ("tie", True)),
    ("A", "tie", ("tie", False)),
    (None, "A", ("tie", False)),
])
def test_both_orders_must_agree(first, second, expected):
    assert judge.combine(first, second) == expected


def test_prompts_are_hashed_and_render_their_fields():
    hashes = judge.prompt_hashes()
    assert set(hashes) == {"judge_pointwise", "judge_pairwise", "judge_pairwise_ref", "judge_grade"}
    assert all(len(h) == 64 for h in hashes.values())
    msgs = P.render("judge_pairwise", instruction="Add {2} and 2.", answer_a="4", answer_b="five")
    assert msgs[0]["role"] == "system" and "Add {2} and 2." in msgs[1]["content"]
    assert "[Answer A]\n4\n" in msgs[1]["content"] and "[Answer B]\nfive" in msgs[1]["content"]
    ref = P.render("judge_pairwise_ref", instruction="Add 2 and 2.", reference="4", answer_a="4", answer_b="5")[1]
    assert "[Reference answer]\n4\n" in ref["content"] and ref["content"].index("[Reference answer]") < \
        ref["content"].index("[Answer A]")
    pw = P.render("judge_pointwise", instruction="Add 2 and 2.", output="4")[1]["content"]
    assert "Add 2 and 2." in pw and "\n4\n" in pw and "Score: <1-5>" in pw
