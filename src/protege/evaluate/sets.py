"""Eval sets: the run's held-out test split and external files in their public formats, detected from fields.

Every set becomes a list of `EvalItem`s (the user turns to ask, plus the set's own answer when it has one).
Formats read (first record decides; docs/evaluate.md shows one record of each):

| format | fields | notes |
|---|---|---|
| `alpaca_eval` | instruction, output, generator | AlpacaEval `model_outputs.json`: the outputs become a reference candidate named after the generator |
| `self_instruct_user` | id, motivation_app, instruction, instances[{input, output}] | self-instruct `user_oriented_instructions.jsonl`; one item per instance |
| `mt_bench` | question_id, category, turns[] | FastChat MT-bench / Vicuna-bench `question.jsonl`; turn 2 follows the candidate's own turn-1 answer |
| `vicuna` | question_id, text, category | FastChat's older Vicuna `question.jsonl` |
| `ifeval` | key, prompt, instruction_id_list, kwargs | IFEval `input_data.jsonl`; scored by the IFEval checker, not judged |
| `alpaca`, `seed`, `sharegpt`, `openai`, `parquet`, `text` | see `protege.records` | everything `protege data` reads |
| `instructions` | a JSON list / JSONL of strings, or of objects with a `prompt` string | plain prompts |

Why hand-written: each benchmark ships its own loader inside its own package (alpaca_eval, fastchat,
instruction_following_eval) with heavy dependencies; reading their files is a few lines each.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege import records
from protege.errors import UserError
from protege.store import RunStore

FORMATS = {
    "alpaca_eval": "AlpacaEval model_outputs.json: instruction, output, generator",
    "self_instruct_user": "self-instruct user_oriented_instructions.jsonl: id, motivation_app, instruction, instances",
    "mt_bench": "FastChat MT-bench / Vicuna-bench question.jsonl: question_id, category, turns",
    "vicuna": "FastChat Vicuna question.jsonl (old): question_id, text, category",
    "ifeval": "IFEval input_data.jsonl: key, prompt, instruction_id_list, kwargs",
    "alpaca": "Alpaca: instruction, input, output",
    "seed": "self-instruct seed tasks: instruction, instances",
    "sharegpt": "ShareGPT: conversations[{from, value}]",
    "openai": "OpenAI chat: messages[{role, content}]",
    "instructions": "plain instructions: a JSON list or JSONL of strings, or of objects with a prompt string",
    "parquet/text": "a Parquet file with rows of any of the above; a .txt file with one instruction per line",
}


@dataclass
class EvalItem:
    """One prompt of a set: the user turns (one unless multi-turn) and the set's own answers, if any."""

    id: str
    turns: list[str]
    reference: list[str] | None = None  # the set's answer to each turn (test split outputs, expert answers)
    system: str | None = None
    row: dict[str, Any] | None = None  # the source row where a scorer needs it (IFEval)

    @property
    def multi_turn(self) -> bool:
        return len(self.turns) > 1


@dataclass
class EvalSet:
    name: str
    source: str  # the file name, or "run:data/test.jsonl"
    format: str
    items: list[EvalItem]
    # Answers shipped with the file under a generator's name (AlpacaEval): reference candidates, per item.
    references: dict[str, list[str | None]] = field(default_factory=dict)

    @property
    def has_own_answers(self) -> bool:
        return any(it.reference for it in self.items)


# ------------------------------------------------------------------ reading rows


def read_rows(path: Path) -> list[Any]:
    """The records of a JSON list, a JSON object holding a list, a JSONL file or a Parquet file."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return [{k: v for k, v in row.items() if v is not None} for row in pq.read_table(path).to_pylist()]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        return list(data)
    if stripped.startswith("{") and path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # JSONL under a .json name: read below
        if isinstance(data, dict):
            for key in ("data", "examples", "records", "questions"):
                if isinstance(data.get(key), list):
                    return list(data[key])
            return [data]
    rows, bad = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            bad.append(f"line {lineno}: {err.msg} at column {err.colno}")
    if bad:
        shown = "; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise UserError(f"{path}: not valid JSON or JSONL: {shown}",
                        hint="Each line of a .jsonl file must be one JSON object.")
    return rows


def detect(row: Any) -> str | None:
    """The format of a set from its first record's fields; None when the shape is unknown."""
    if isinstance(row, str):
        return "instructions"
    if not isinstance(row, dict):
        return None
    keys = set(row)
    if {"key", "prompt", "instruction_id_list"} <= keys:
        return "ifeval"
    if {"question_id", "turns"} <= keys:
        return "mt_bench"
    if {"question_id", "text"} <= keys:
        return "vicuna"
    if {"instruction", "output", "generator"} <= keys:
        return "alpaca_eval"
    if {"instruction", "instances", "motivation_app"} <= keys:
        return "self_instruct_user"
    try:
        return records.record_format(row)
    except records.RecordError:
        pass
    if isinstance(row.get("prompt"), str):
        return "instructions"
    return None


def unknown_shape(path: Path, row: Any) -> UserError:
    found = sorted(row)[:12] if isinstance(row, dict) else [type(row).__name__]
    accepted = "\n".join(f"  - {name}: {desc}" for name, desc in FORMATS.items())
    return UserError(f"{path}: unknown eval set shape: the first record has fields {found}",
                     hint=f"Formats accepted (detected from the fields of the first record):\n{accepted}")


# ------------------------------------------------------------------ formats -> items


def _str(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {key!r} must be a non-empty string (got {type(value).__name__})")
    return value


def _turns(row: dict[str, Any], where: str) -> list[str]:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise UserError(f"{where}: 'turns' must be a non-empty list of strings")
    return list(turns)


def _items_of(fmt: str, rows: list[Any], path: Path) -> tuple[list[EvalItem], dict[str, list[str | None]]]:
    items: list[EvalItem] = []
    refs: dict[str, list[str | None]] = {}
    position: dict[str, int] = {}  # alpaca_eval: prompt -> item index (several generators may share prompts)
    for i, row in enumerate(rows):
        where = f"{path} record {i + 1}"
        if fmt != "instructions" and not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object like the first record ({fmt}), got {type(row).__name__}")
        if fmt == "instructions":
            text = row if isinstance(row, str) else _str(row, "prompt", where) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where}: expected a non-empty string or an object with a prompt string")
            items.append(EvalItem(str(i), [text]))
        elif fmt == "ifeval":
            if not isinstance(row.get("instruction_id_list"), list) or not isinstance(row.get("kwargs"), list):
                raise UserError(f"{where}: IFEval rows need lists instruction_id_list and kwargs")
            items.append(EvalItem(str(row["key"]), [_str(row, "prompt", where)], row=row))
        elif fmt == "mt_bench":
            ref = row.get("reference")
            ref = [str(r) for r in ref] if isinstance(ref, list) and ref and any(ref) else None
            items.append(EvalItem(str(row["question_id"]), _turns(row, where), reference=ref))
        elif fmt == "vicuna":
            items.append(EvalItem(str(row["question_id"]), [_str(row, "text", where)]))
        elif fmt == "alpaca_eval":
            instruction = _str(row, "instruction", where)
            prompt = records.user_prompt(instruction, row.get("input") or "")
            gen = str(row.get("generator") or "reference")
            idx = position.get(prompt)
            if idx is None:
                idx = position[prompt] = len(items)
                items.append(EvalItem(str(idx), [prompt]))
                for answers in refs.values():
                    answers.append(None)
            answers = refs.setdefault(gen, [None] * len(items))
            answers[idx] = row.get("output") if isinstance(row.get("output"), str) else None
        elif fmt == "self_instruct_user":
            instruction = _str(row, "instruction", where)
            instances = row.get("instances")
            if not isinstance(instances, list) or not instances:
                raise UserError(f"{where}: 'instances' must be a non-empty list of {{input, output}} objects")
            base_id = str(row.get("id", i))
            for k, inst in enumerate(instances):
                inp = inst.get("input") or "" if isinstance(inst, dict) else ""
                out = inst.get("output") if isinstance(inst, dict) else None
                items.append(EvalItem(base_id if len(instances) == 1 else f"{base_id}#{k}",
                                      [records.user_prompt(instruction, inp)],
                                      reference=[out] if isinstance(out, str) and out else None))
        else:  # a records format: conversations
            try:
                ex = records.from_alpaca(row) if fmt == "alpaca" else \
                    {"seed": records.from_seed, "sharegpt": records.from_sharegpt,
                     "openai": records.from_openai}[fmt](row)
            except records.RecordError as err:
                raise UserError(f"{where}: {err}") from None
            items.append(example_item(ex, str(i)))
    return items, refs


def example_item(ex: records.Example, default_id: str) -> EvalItem:
    """An eval item from a conversation: its user turns, and its assistant turns as the set's own answer."""
    system = next((m["content"] for m in ex.messages if m["role"] == "system"), None)
    turns = [m["content"] for m in ex.messages if m["role"] == "user"]
    answers = [m["content"] for m in ex.messages if m["role"] == "assistant"]
    if not turns:
        raise UserError(f"record {default_id}: has no user message to ask")
    ref = answers[: len(turns)] if len(answers) >= len(turns) else None
    return EvalItem(str(ex.meta.get("id", default_id)), turns, reference=ref, system=system)


# ------------------------------------------------------------------ loading sets


def set_name(path: Path, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-") or "set"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    return name


def load_file(path: str | Path, name: str | None = None) -> EvalSet:
    """An external eval file, its format detected from its first record (UserError when unknown)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"eval set not found: {path}", hint="Fix the path in eval.sets (relative to the config file).")
    name = name or set_name(path, set())
    if path.is_dir() or path.suffix.lower() == ".txt":  # datasets folders and text files: protege.records
        examples = records.read_examples(path)
        fmt = records.detect_format(path)
        return EvalSet(name, path.name, fmt, [example_item(ex, str(i)) for i, ex in enumerate(examples)])
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: holds no records", hint="An eval set needs at least one prompt.")
    fmt = detect(rows[0])
    if fmt is None:
        raise unknown_shape(path, rows[0])
    items, refs = _items_of(fmt, rows, path)
    return EvalSet(name, path.name, fmt, items, refs)


def load_sets(cfg: Any, store: RunStore) -> list[EvalSet]:
    """The sets an eval runs on: the run's test split (when it exists and eval.test_split) and eval.sets."""
    out: list[EvalSet] = []
    test = store.split("test")
    if cfg.eval.test_split and test.exists():
        examples = records.read_examples(test)
        if examples:
            out.append(EvalSet("test", f"run:{store.relative(test)}", "openai",
                               [example_item(ex, str(i)) for i, ex in enumerate(examples)]))
    taken = {s.name for s in out}
    for p in cfg.eval.sets:
        s = load_file(p, set_name(Path(p), taken))
        taken.add(s.name)
        out.append(s)
    if not out:
        raise UserError(f"eval: nothing to evaluate: no test split at {test} and eval.sets is empty",
                        hint="Run `protege curate` (it writes the test split), or list eval files in eval.sets.")
    if cfg.eval.max_prompts:
        for s in out:
            s.items = s.items[: cfg.eval.max_prompts]
            s.references = {g: a[: cfg.eval.max_prompts] for g, a in s.references.items()}
    return out
