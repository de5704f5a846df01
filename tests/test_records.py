"""Formats: detection, reading, writing, round trips, and precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege import records
from protege.errors import UserError
from protege.records import Example


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Summarise.", "input": "Line one.\n\nLine two.", "output": "Two lines."},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca_round_trip_through_every_format(tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"a{suffix}"
    if suffix == ".json":
        src.write_text(json.dumps(ALPACA))
    else:
        write_jsonl(src, ALPACA)
    assert records.detect_format(src) == "alpaca"
    exs = records.read_examples(src)
    assert exs[1].messages == [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                               {"role": "assistant", "content": "Bonjour"}]
    assert (exs[2].instruction, exs[2].input) == ("Summarise.", "Line one.\n\nLine two.")
    for fmt, name in [("openai", "o.jsonl"), ("sharegpt", "s.json"), ("parquet", "p.parquet")]:
        mid = tmp_path / name
        records.write_examples(mid, exs, fmt)
        back = tmp_path / f"back_{fmt}.json"
        records.write_examples(back, records.read_examples(mid), "alpaca")
        assert json.loads(back.read_text()) == ALPACA, fmt


def test_sharegpt_keeps_every_turn_and_round_trips(tmp_path: Path) -> None:
    convs = [
        {"id": "c1", "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
            {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]},
        {"id": "c2", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    src = tmp_path / "s.json"
    src.write_text(json.dumps(convs))
    exs = records.read_examples(src)
    assert [m["role"] for m in exs[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert exs[0].meta["extra"] == {"id": "c1"}
    mid, back = tmp_path / "o.jsonl", tmp_path / "back.json"
    records.write_examples(mid, exs, "openai")
    records.write_examples(back, records.read_examples(mid), "sharegpt")
    assert json.loads(back.read_text()) == convs


def test_real_sharegpt_file_keeps_every_turn(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "sharegpt" / "dummy_conversation.json"
    raw = json.loads(src.read_text())
    exs = records.read_examples(src)
    assert len(exs) == len(raw)
    assert sum(len(e.messages) for e in exs) == sum(len(r["conversations"]) for r in raw)
    back = tmp_path / "back.json"
    records.write_examples(tmp_path / "o.jsonl", exs, "openai")
    records.write_examples(back, records.read_examples(tmp_path / "o.jsonl"), "sharegpt")
    assert json.loads(back.read_text()) == raw


def test_real_alpaca_round_trip(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "alpaca" / "code_alpaca_2k.json"
    raw = json.loads(src.read_text())
    records.write_examples(tmp_path / "o.parquet", records.read_examples(src), "parquet")
    records.write_examples(tmp_path / "back.json", records.read_examples(tmp_path / "o.parquet"), "alpaca")
    assert json.loads((tmp_path / "back.json").read_text()) == raw


def test_seed_tasks(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "alpaca" / "seed_tasks.jsonl"
    assert records.detect_format(src) == "seed"
    exs = records.read_examples(src)
    assert len(exs) == 175
    first = json.loads(src.read_text().splitlines()[0])
    assert exs[0].instruction == first["instruction"]
    assert exs[0].output == first["instances"][0]["output"]
    assert exs[0].meta["id"] == "seed_task_0" and exs[0].meta["source"] == "seed"


def test_seed_with_several_instances_loses_nothing(tmp_path: Path) -> None:
    rec = {"id": "s1", "name": "n", "instruction": "Add.", "is_classification": False,
           "instances": [{"input": "1+1", "output": "2"}, {"input": "2+2", "output": "4"}]}
    ex = records.read_examples(write_jsonl(tmp_path / "s.jsonl", [rec]))[0]
    assert ex.input == "1+1" and ex.output == "2"
    assert ex.meta["instances"] == [{"input": "2+2", "output": "4"}]


def test_openai_with_meta_round_trip(tmp_path: Path) -> None:
    ex = Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 {"teacher": {"kind": "openai", "model": "m"}, "tokens": 12})
    records.write_examples(tmp_path / "o.jsonl", [ex], "openai")
    assert records.read_examples(tmp_path / "o.jsonl") == [ex]
    records.write_examples(tmp_path / "p.parquet", [ex], "parquet")
    assert records.read_examples(tmp_path / "p.parquet") == [ex]


def test_text_instructions(tmp_path: Path) -> None:
    p = tmp_path / "i.txt"
    p.write_text("Write a haiku.\n\n  Name three rivers. \n")
    exs = records.read_examples(p)
    assert [e.prompt for e in exs] == ["Write a haiku.", "Name three rivers."]


def test_every_bad_record_reported_with_location(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
    ]) + "\n")
    total, problems = records.validate_file(p)
    by_loc = {loc: reason for loc, reason in problems}
    assert total == 5
    assert set(by_loc) == {"line 2", "line 3", "line 4", "line 5"}
    assert "invalid JSON" in by_loc["line 2"]
    assert "robot" in by_loc["line 3"]
    assert "no assistant reply" in by_loc["line 4"]
    assert "empty" in by_loc["line 5"]
    with pytest.raises(UserError) as exc:
        records.read_examples(p)
    assert "line 2" in str(exc.value) and "line 3" in str(exc.value)


def test_alpaca_cannot_hold_multi_turn_nothing_written(tmp_path: Path) -> None:
    ex = Example([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])
    out = tmp_path / "x.json"
    with pytest.raises(UserError, match="record 1"):
        records.write_examples(out, [ex], "alpaca")
    assert not out.exists()


def test_unknown_format_and_forced_format(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "u.jsonl", [{"question": "?"}])
    with pytest.raises(UserError, match="unrecognised record"):
        records.detect_format(p)
    q = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    _, problems = records.validate_file(q, "sharegpt")
    assert problems and all("not sharegpt" in r for _, r in problems)


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_file_has_zero_records(tmp_path: Path, content: str) -> None:
    p = tmp_path / ("e.json" if content == "[]" else "e.jsonl")
    p.write_text(content)
    assert records.read_examples(p) == []
    assert records.validate_file(p) == (0, [])


def test_file_of_only_bad_lines_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text("nope\nalso nope\n")
    with pytest.raises(UserError, match="no readable record"):
        records.detect_format(p)
