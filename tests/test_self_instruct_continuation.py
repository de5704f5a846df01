"""Self-instruct continues a reply that stopped short in the same conversation (small teachers often write one
task of the several asked, then end): a scripted in-process teacher, the real generate stage and engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protege import teachers
from protege.config import validate_config
from protege.store import RunStore
from protege.teachers.base import Completion, Request


TOPICS = ["Explain why the sky looks blue at noon.", "Write a haiku about autumn rain on a tin roof.",
          "Convert 350 degrees Fahrenheit to Celsius and show the steps.", "Suggest three names for a bakery.",
          "Summarize the plot of Hamlet in two sentences.", "List four uses of baking soda at home.",
          "Compare trains and planes for a 500 km trip.", "Fix the grammar: 'me and him goes to school'.",
          "Give a SQL query counting orders per customer.", "Describe how photosynthesis stores energy."]


class OneTaskAtATime:
    """Writes exactly one new task per reply, numbered as asked, then stops; records every conversation."""

    info = {"kind": "scripted", "endpoint": "in-process", "model": "scripted-teacher"}

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    async def complete(self, request: Request) -> Completion:
        msgs = request.messages or []
        self.seen.append(msgs)
        n = len(self.seen)
        number = msgs[-1]["content"].rsplit("### Task ", 1)[1].split("\n", 1)[0]
        text = (f"### Task {number}\nInstruction: {TOPICS[n % len(TOPICS)]}\nInput: <noinput>\nOutput: Answer {n}.")
        return Completion(text, "stop", 100, 30, "scripted-teacher")

    async def aclose(self) -> None:
        pass


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **generate: Any) -> tuple[OneTaskAtATime, list[str]]:
    teacher = OneTaskAtATime()
    monkeypatch.setattr(teachers, "build_teacher", lambda tcfg: teacher)
    cfg = validate_config({"run_dir": str(tmp_path / "run"),
                           "teacher": {"kind": "openai", "model": "scripted-teacher",
                                       "base_url": "http://127.0.0.1:9/v1", "max_concurrency": 1},
                           "generate": {"mode": "self-instruct", "num_prompt_tasks": 2, "tasks_per_request": 4,
                                        **generate}})
    monkeypatch.setattr("protege.generate.stage._preflight", _no_preflight)
    from protege import generate

    generate.run(cfg, RunStore(cfg.run_dir))
    lines = (tmp_path / "run" / "generate" / "raw.jsonl").read_text().splitlines()
    return teacher, lines


async def _no_preflight(cfg: Any) -> None:
    return None


def test_short_reply_is_continued_in_the_same_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, lines = _run(tmp_path, monkeypatch, num=5, continuations=2)
    assert len(lines) == 5
    first, follow = teacher.seen[0], teacher.seen[1]
    assert len(first) == 1 and len(follow) == 3  # the prompt; then prompt, the reply, the ask for the rest
    assert follow[0] == first[0] and follow[1]["role"] == "assistant" and "### Task 3" in follow[1]["content"]
    assert "Now write tasks 4 to 6" in follow[2]["content"] and follow[2]["content"].endswith("### Task 4\nInstruction:")
    assert "Now write tasks 5 to 6" in teacher.seen[2][-1]["content"]
    # two continuations at most, then a fresh request (one user message) with new example tasks
    assert [len(m) for m in teacher.seen[:4]] == [1, 3, 5, 1]
    import json
    gen_ids = [json.loads(x)["meta"]["gen_id"] for x in lines]
    assert gen_ids[1].endswith("+1") and gen_ids[2].endswith("+2") and gen_ids[0].split("+")[0] == \
        gen_ids[1].split("+")[0]


def test_continuations_off_asks_fresh_requests_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, lines = _run(tmp_path, monkeypatch, num=3, continuations=0)
    assert len(lines) == 3 and all(len(m) == 1 for m in teacher.seen)
