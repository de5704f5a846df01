"""Self-instruct (the Alpaca recipe): the request prompt, its pure parser, and the rule filters.

`render()` shows the teacher k example tasks and asks for new ones; `parse()` turns the raw
reply into tasks (numbered `### Task N` blocks, or JSON in json_mode) plus what it had to drop
and why; `rule_reason()` applies Alpaca's filters. All pure functions, unit-tested on recorded
raw replies (tests/teachers/fixtures/).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from protege.prompts import Template, load

# Things a text-only model cannot do (Alpaca's list, whole words, case-insensitive).
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_BLOCK_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLOCKLIST) + r")\b", re.IGNORECASE)
_NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "none", "n/a", "na", "(none)", "-", "<none>", "null"}
# A placeholder written in the output slot (seen from the 1.5B teacher: "Output: <noinput>"); "None" or "null" can be
# real answers, so only the markers count.
_NO_OUTPUT = {"", "<noinput>", "<no input>", "noinput", "<none>", "<nooutput>", "<no output>"}


@dataclass
class Task:
    instruction: str
    input: str
    output: str


@dataclass
class Parsed:
    tasks: list[Task]
    dropped: list[tuple[str, str]]  # (raw block, reason)


# The guideline on what kinds of task to write: Alpaca's "many kinds of work" (broad), or the seeds' own kinds
# (a user specialising a student to their tasks wants more of those, with new subjects and inputs).
VARIETY = {
    "broad": """- Cover many kinds of work: open questions, writing, rewriting, summarizing, classification,
  extraction, step-by-step reasoning, math, coding, advice, brainstorming, editing.""",
    "seeds": """- Stay with the kinds of work the examples show: the same types of task and the same output
  formats, on new subjects, with new inputs and new wording. Do not switch to other kinds of task.""",
}


def template(json_mode: bool = False) -> Template:
    return load("self_instruct_json" if json_mode else "self_instruct")


def render(examples: list[Task], num_new: int, json_mode: bool = False, output_words: int = 150,
           variety: str = "broad") -> str:
    """The request prompt: the example tasks, numbered 1..k, then the ask for `num_new` more, each with an output
    preferably under `output_words` words, of many kinds (`variety` broad) or of the examples' kinds (seeds)."""
    tpl = template(json_mode)
    k = len(examples)
    if json_mode:
        shown = "\n".join(json.dumps({"instruction": t.instruction, "input": t.input, "output": t.output},
                                     ensure_ascii=False) for t in examples)
    else:
        shown = "\n\n".join(
            f"### Task {i}\nInstruction: {t.instruction}\nInput: {t.input or '<noinput>'}\nOutput: {t.output}"
            for i, t in enumerate(examples, 1))
    return tpl.text.format(num_examples=k, examples=shown, num_new=num_new, first=k + 1, last=k + num_new,
                           output_words=output_words, variety=VARIETY[variety])


_HEADER = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*Task[ \t]*#?(\d+)[ \t]*[:.)]?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*$",
                     re.IGNORECASE | re.MULTILINE)
# Alpaca's own style: "1. Instruction: ..." starts a block.
_NUMBERED = re.compile(r"^[ \t]*(\d+)[.)][ \t]*(?:\*\*)?Instruction", re.IGNORECASE | re.MULTILINE)
_FIELD = re.compile(r"^[ \t]*(?:\d+[.)][ \t]*)?(?:\*\*)?[ \t]*(instruction|input|output)s?[ \t]*(?:\*\*)?[ \t]*:[ \t]*(?:\*\*)?",
                    re.IGNORECASE | re.MULTILINE)


# Separator lines ("###", "---", "***") that end up after the last field of a block.
_TRAILING_RULE = re.compile(r"(\n[ \t]*(#{1,6}|-{3,}|\*{3,})[ \t]*)+\s*$")


def _blocks(text: str) -> list[str]:
    marks = [m.start() for m in _HEADER.finditer(text)]
    if not marks:
        marks = [m.start() for m in _NUMBERED.finditer(text)]
    if not marks:
        return [text] if _FIELD.search(text) else []
    return [text[a:b] for a, b in zip(marks, marks[1:] + [len(text)])]


def _fields(block: str) -> dict[str, str]:
    found = list(_FIELD.finditer(block))
    out: dict[str, str] = {}
    for m, nxt in zip(found, found[1:] + [None]):
        name = m.group(1).lower()
        if name in out:  # a second "Instruction:" means two tasks ran together: stop here
            break
        end = nxt.start() if nxt else len(block)
        value = block[m.end():end]
        header = _HEADER.search(value)  # "Output: ### Task 5": the field is empty, the next task's header follows
        out[name] = _TRAILING_RULE.sub("", value[:header.start()] if header else value).strip()
    return out


def _clean_input(value: str) -> str:
    return "" if value.strip().strip('"').lower() in _NO_INPUT else value.strip()


def _task_or_reason(fields: dict[str, object]) -> Task | str:
    inst, inp, out = (fields.get(k) for k in ("instruction", "input", "output"))
    if not isinstance(inst, str) or not inst.strip():
        return "malformed: no instruction"
    if not isinstance(out, str) or out.strip().strip('"').lower() in _NO_OUTPUT:
        return "malformed: no output"
    if inp is not None and not isinstance(inp, str):
        return "malformed: input is not text"
    return Task(inst.strip(), _clean_input(inp or ""), out.strip())


def parse(text: str, finish_reason: str | None = None, json_mode: bool = False) -> Parsed:
    """Tasks in a raw teacher reply, and the blocks dropped with their reason.

    When the reply was cut off (`finish_reason == "length"`), the last task is dropped as
    truncated even if it looks complete: its output may have been cut mid-sentence.
    """
    if json_mode:
        return _parse_json(text, finish_reason)
    tasks: list[tuple[str, Task]] = []
    dropped: list[tuple[str, str]] = []
    for block in _blocks(text):
        got = _task_or_reason(_fields(block))
        if isinstance(got, Task):
            tasks.append((block, got))
        else:
            dropped.append((block.strip(), got))
    if finish_reason == "length":
        if tasks and (not dropped or text.rfind(tasks[-1][0]) > text.rfind(dropped[-1][0])):
            block, _ = tasks.pop()
            dropped.append((block.strip(), "truncated: the reply hit max_tokens"))
        elif dropped:
            block, _ = dropped.pop()
            dropped.append((block, "truncated: the reply hit max_tokens"))
    return Parsed([t for _, t in tasks], dropped)


def _parse_json(text: str, finish_reason: str | None) -> Parsed:
    body = re.sub(r"^\s*```(?:json)?\s*|\s*```\s*$", "", text.strip())
    items: list[object] = []
    truncated_tail = ""
    try:
        data = json.loads(body)
        items = data.get("tasks", []) if isinstance(data, dict) else data if isinstance(data, list) else []
        if isinstance(data, dict) and "tasks" not in data and "instruction" in data:
            items = [data]
    except json.JSONDecodeError:
        items, truncated_tail = _salvage_objects(body)
    tasks, dropped = [], []
    for item in items if isinstance(items, list) else []:
        got = _task_or_reason(item) if isinstance(item, dict) else "malformed: not an object"
        (tasks.append(got) if isinstance(got, Task) else dropped.append((json.dumps(item)[:2000], got)))
    if truncated_tail.strip():
        dropped.append((truncated_tail.strip()[:2000], "truncated: unfinished JSON object"))
    elif finish_reason == "length" and tasks:
        last = tasks.pop()
        dropped.append((json.dumps(last.__dict__), "truncated: the reply hit max_tokens"))
    if not tasks and not dropped and body:
        dropped.append((body[:2000], "malformed: no JSON tasks found"))
    return Parsed(tasks, dropped)


def _salvage_objects(body: str) -> tuple[list[object], str]:
    """Complete JSON objects of a broken/truncated array, and the unparsable tail."""
    start = body.find("[")
    if start < 0:
        return [], body
    decoder, pos, items = json.JSONDecoder(), start + 1, []
    while True:
        while pos < len(body) and body[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(body) or body[pos] == "]":
            return items, ""
        try:
            obj, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return items, body[pos:]
        items.append(obj)


def rule_reason(task: Task) -> str | None:
    """Why Alpaca's rule filters reject this task, or None when it passes."""
    inst = task.instruction.strip()
    n = len(inst.split())
    if n < 3:
        return f"instruction too short ({n} words; at least 3)"
    if n > 150:
        return f"instruction too long ({n} words; at most 150)"
    hit = _BLOCK_RE.search(inst)
    if hit:
        return f"needs something a text model cannot do ({hit.group(1).lower()!r})"
    if inst[0] in string.punctuation:
        return "instruction starts with punctuation"
    if not inst[0].isascii():
        return "instruction starts with a non-ASCII character"
    return None
