"""The self-instruct parser and rule filters on recorded raw teacher replies (fixtures/)."""

from __future__ import annotations

from pathlib import Path

from protege.prompts.self_instruct import VARIETY, Task, parse, render, rule_reason, template

FIX = Path(__file__).parent / "fixtures"


def raw(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def test_numbered_blocks_with_preamble_and_code():
    p = parse(raw("si_numbered_ok.txt"), "stop")
    assert [t.instruction.split()[0] for t in p.tasks] == ["Rewrite", "Give", "Classify", "What", "Write"]
    assert p.dropped == []
    assert p.tasks[0].input == "The committee approved the new budget on Monday."
    assert p.tasks[1].input == ""  # <noinput>
    assert p.tasks[1].output.count("\n") == 2  # multi-line output kept whole
    assert p.tasks[4].input == ""  # empty "Input:" line
    assert p.tasks[4].output.startswith("```python") and p.tasks[4].output.endswith("```")


def test_alpaca_numbered_style_and_separators():
    p = parse(raw("si_alpaca_style.txt"), "stop")
    assert [t.output for t in p.tasks][0] == "Rise & Crumb"  # the "###" separator is not part of it
    assert len(p.tasks) == 3 and p.tasks[1].input.startswith("The city council")
    assert p.tasks[2].instruction == "Convert 72 degrees Fahrenheit to Celsius."


def test_markdown_bold_labels_and_none_input():
    p = parse(raw("si_markdown_bold.txt"))
    assert len(p.tasks) == 2
    assert p.tasks[0].instruction == "Explain why the sky appears blue during the day."
    assert p.tasks[1].input == ""  # "None" means no input
    assert not p.tasks[1].output.startswith("*")


def test_truncated_reply_drops_last_task():
    text = raw("si_truncated.txt")
    cut = parse(text, "length")
    assert [t.instruction for t in cut.tasks] == ["Translate the phrase into French."]
    assert len(cut.dropped) == 1 and cut.dropped[0][1].startswith("truncated")
    assert "haiku" in cut.dropped[0][0]
    # The same text that ended normally keeps both tasks.
    assert len(parse(text, "stop").tasks) == 2


def test_malformed_blocks_are_dropped_with_reasons():
    p = parse(raw("si_malformed.txt"), "stop")
    assert [t.instruction for t in p.tasks] == ["Correct the grammar in this sentence."]
    reasons = sorted(r for _, r in p.dropped)
    assert reasons == ["malformed: no instruction", "malformed: no instruction", "malformed: no output"]


def test_truncated_reply_whose_last_block_is_malformed_drops_that_block():
    text = raw("si_malformed.txt").rsplit("### Task 7", 1)[0] + "### Task 7\nInstruction: Name a pla"
    p = parse(text, "length")
    assert [t.instruction for t in p.tasks] == ["Correct the grammar in this sentence."]
    assert p.dropped[-1][1].startswith("truncated") and "Name a pla" in p.dropped[-1][0]


def test_json_mode_with_fences_and_a_bad_item():
    p = parse(raw("si_json_ok.txt"), "stop", json_mode=True)
    assert [t.output for t in p.tasks] == ["Joyful", "2, 4, 7, 9", "True"]
    assert p.dropped == [('{"instruction": "Missing output here", "input": ""}', "malformed: no output")]


def test_json_mode_salvages_complete_objects_of_a_truncated_array():
    p = parse(raw("si_json_truncated.txt"), "length", json_mode=True)
    assert [t.output for t in p.tasks][1] == "carrot" and len(p.tasks) == 2
    assert len(p.dropped) == 1 and p.dropped[0][1].startswith("truncated")
    assert "prime number" in p.dropped[0][0]


def test_garbage_gives_no_task():
    assert parse("I am unable to help with that.", "stop").tasks == []
    p = parse("not json at all", "stop", json_mode=True)
    assert p.tasks == [] and len(p.dropped) == 1 and p.dropped[0][1].startswith(("malformed", "truncated"))


def test_rule_filters():
    p = parse(raw("si_rules.txt"), "stop")
    got = {t.instruction.split()[0]: rule_reason(t) for t in p.tasks}
    assert "picture" in got["Draw"] or "draw" in got["Draw"]
    assert got["Summarize."].startswith("instruction too short")
    assert got["-"] == "instruction starts with punctuation"
    assert got["¿Cuál"] in ("instruction starts with punctuation", "instruction starts with a non-ASCII character")
    assert "go to" in got["Go"]
    assert got["Explain"] is None
    assert rule_reason(Task("word " * 151, "", "x")).startswith("instruction too long")
    assert rule_reason(Task("Édite ce texte pour moi", "", "x")) == "instruction starts with a non-ASCII character"
    assert rule_reason(Task("Describe the files in a typical Linux home folder.", "", "x")) is not None
    assert rule_reason(Task("Describe a profile of a typical user.", "", "x")) is None  # 'file' only as a word


def test_render_numbers_examples_and_asks_for_the_rest():
    ex = [Task("Say hi.", "", "Hi!"), Task("Add the numbers.", "2 3", "5")]
    text = render(ex, 5)
    assert "### Task 1\nInstruction: Say hi.\nInput: <noinput>\nOutput: Hi!" in text
    assert "### Task 2\nInstruction: Add the numbers.\nInput: 2 3" in text
    assert "from 3 to 7" in text and "### Task 3" in text
    assert "preferably under 150 words." in text and "preferably under 60 words." in render(ex, 5, output_words=60)
    # What render asks for, parse reads back.
    back = parse(text.split("Use exactly this format")[0], "stop")
    assert [t.instruction for t in back.tasks] == ["Say hi.", "Add the numbers."]
    js = render(ex, 4, json_mode=True)
    assert '{"instruction": "Say hi.", "input": "", "output": "Hi!"}' in js and "{{" not in js
    assert "preferably under 40 words." in render(ex, 4, json_mode=True, output_words=40)
    assert template(True).sha256 != template(False).sha256


def test_a_task_header_written_where_the_output_belongs_is_no_output():
    # A real Qwen2.5-Coder-1.5B reply: every "Output:" is followed by the next "### Task 4" header on the same
    # line, so no task has an output. Before, the header itself ("### Task 4") was kept as the output.
    p = parse(raw("si_header_as_output.txt"), "stop")
    assert p.tasks == []
    assert [r for _, r in p.dropped] == ["malformed: no output"]
    assert "detect diseases early" in p.dropped[0][0]


def test_variety_asks_for_many_kinds_of_task_or_for_the_seeds_own_kinds():
    ex = [Task("Extract the city from the address. Reply with JSON.", "1 Main St, Leeds", '{"city": "Leeds"}')]
    for json_mode in (False, True):
        broad = render(ex, 3, json_mode)
        seeds = render(ex, 3, json_mode, variety="seeds")
        assert broad == render(ex, 3, json_mode, variety="broad")
        assert "Cover many kinds of work" in broad and "Stay with the kinds of work" not in broad
        assert "Stay with the kinds of work the examples show" in seeds and "Cover many kinds" not in seeds
        assert broad.replace(VARIETY["broad"], VARIETY["seeds"]) == seeds  # nothing else differs


def test_a_no_input_marker_written_as_the_output_is_no_output():
    # Seen from the 1.5B teacher: "Output: <noinput>" for tasks that ask to write a recipe. "None" is a real answer.
    p = parse("### Task 1\nInstruction: Write a recipe for pancakes.\nInput: <noinput>\nOutput: <noinput>\n\n"
              "### Task 2\nInstruction: What does print() return in Python?\nInput: <noinput>\nOutput: None", "stop")
    assert [(t.instruction, t.output) for t in p.tasks] == [("What does print() return in Python?", "None")]
    assert [r for _, r in p.dropped] == ["malformed: no output"]
