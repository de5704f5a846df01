"""Records: the one `Example` type and the file formats it is read from and written to.

An `Example` is a conversation in OpenAI chat form (`messages`: role + content) plus a `meta`
dict carrying provenance (which teacher, template, seeds, sampling, cost...). Every stage reads
and writes Examples; the formats below are only at the edges:

- alpaca:   {"instruction", "input", "output"}          (JSON list or JSONL)
- seed:     {"instruction", "instances": [{"input", "output"}], ...}   self-instruct seed tasks
- sharegpt: {"conversations": [{"from": human|gpt|system, "value"}]}
- openai:   {"messages": [{"role", "content"}], "meta": {...}}        (JSONL; protege's own format)
- parquet:  a Parquet file (or a `datasets.save_to_disk` folder) whose rows are any of the above
- text:     one instruction per line (read only)

Alpaca's `input` is kept apart in `meta["input"]`; the user message is
`instruction + "\\n\\n" + input`, so converting back splits it exactly.
This module must stay light to import (no torch, no datasets at import time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.paths import atomic_write_bytes, atomic_write_text

ROLES = ("system", "user", "assistant")
READ_FORMATS = ("alpaca", "seed", "sharegpt", "openai", "parquet", "text")
WRITE_FORMATS = ("alpaca", "seed", "sharegpt", "openai", "parquet")

_SHAREGPT_ROLE = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
}
_ROLE_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}
_ALPACA_KEYS = ("instruction", "input", "output")


class RecordError(ValueError):
    """One record could not be read; the message is the reason."""


@dataclass
class Example:
    """One training conversation plus its provenance."""

    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The first user message (instruction and input together)."""
        return next((m["content"] for m in self.messages if m["role"] == "user"), "")

    @property
    def input(self) -> str:
        inp = self.meta.get("input") or ""
        return inp if inp and self.prompt.endswith("\n\n" + inp) else ""

    @property
    def instruction(self) -> str:
        """The task without its input: what self-instruct's ROUGE-L filter compares."""
        prompt, inp = self.prompt, self.meta.get("input") or ""
        return prompt[: -(len(inp) + 2)] if inp and prompt.endswith("\n\n" + inp) else prompt

    @property
    def output(self) -> str:
        """The last assistant message ('' when there is none)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "assistant"), "")

    def to_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "meta": self.meta}


def user_prompt(instruction: str, input: str = "") -> str:
    """Alpaca's instruction + input as one user message."""
    return f"{instruction}\n\n{input}" if input else instruction


# ---------------------------------------------------------------- record <-> Example


def _text(rec: dict[str, Any], key: str, required: bool = True) -> str:
    value = rec.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _extras(rec: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    extra = {k: v for k, v in rec.items() if k not in known and k != "meta"}
    meta = dict(rec.get("meta") or {}) if isinstance(rec.get("meta"), dict) else {}
    if extra:
        meta["extra"] = {**meta.get("extra", {}), **extra}
    return meta


def from_alpaca(rec: dict[str, Any]) -> Example:
    instruction = _text(rec, "instruction")
    inp = _text(rec, "input", required=False)
    out = _text(rec, "output", required=False)
    meta = _extras(rec, _ALPACA_KEYS)
    if inp:
        meta["input"] = inp
    messages = [{"role": "user", "content": user_prompt(instruction, inp)}]
    if "output" in rec:
        messages.append({"role": "assistant", "content": out})
    return Example(messages, meta)


def from_seed(rec: dict[str, Any]) -> Example:
    instruction = _text(rec, "instruction")
    instances = rec.get("instances")
    if not isinstance(instances, list) or not instances or not all(isinstance(i, dict) for i in instances):
        raise RecordError("'instances' must be a non-empty list of {input, output} objects")
    first = instances[0]
    inp, out = _text(first, "input", required=False), _text(first, "output", required=False)
    meta = _extras(rec, ("instruction", "instances"))
    for key in ("id", "name", "is_classification"):
        if key in meta.get("extra", {}):
            meta[key] = meta["extra"].pop(key)
    if not meta.get("extra"):
        meta.pop("extra", None)
    if inp:
        meta["input"] = inp
    if len(instances) > 1:
        meta["instances"] = instances[1:]  # kept so nothing is lost; training uses the first
    meta.setdefault("source", "seed")
    messages = [{"role": "user", "content": user_prompt(instruction, inp)},
                {"role": "assistant", "content": out}]
    return Example(messages, meta)


def from_sharegpt(rec: dict[str, Any]) -> Example:
    turns = rec.get("conversations")
    if not isinstance(turns, list):
        raise RecordError("'conversations' must be a list of {from, value} objects")
    messages = []
    if isinstance(rec.get("system"), str) and rec["system"]:
        messages.append({"role": "system", "content": rec["system"]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}] is not an object")
        who = turn.get("from")
        role = _SHAREGPT_ROLE.get(str(who).lower())
        if role is None:
            raise RecordError(
                f"conversations[{i}].from = {who!r}: expected one of human, gpt, system"
            )
        value = turn.get("value")
        if not isinstance(value, str):
            raise RecordError(f"conversations[{i}].value must be a string")
        messages.append({"role": role, "content": value})
    return Example(messages, _extras(rec, ("conversations", "system")))


def from_openai(rec: dict[str, Any]) -> Example:
    msgs = rec.get("messages")
    if not isinstance(msgs, list):
        raise RecordError("'messages' must be a list of {role, content} objects")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RecordError(f"messages[{i}].role = {role!r}: expected system, user or assistant")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}].content must be a string (multimodal parts are not supported)")
        messages.append({"role": role, "content": content})
    return Example(messages, _extras(rec, ("messages",)))


_READERS = {"alpaca": from_alpaca, "seed": from_seed, "sharegpt": from_sharegpt, "openai": from_openai}


def record_format(rec: Any) -> str:
    """Which format one record is in, from its keys."""
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        return "sharegpt"
    if "instances" in rec:
        return "seed"
    if "instruction" in rec:
        return "alpaca"
    raise RecordError(
        f"unrecognised record with keys {sorted(rec)[:8]}: expected messages (openai), "
        "conversations (sharegpt), instruction+instances (seed) or instruction/input/output (alpaca)"
    )


def _meta_out(ex: Example, drop: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in ex.meta.items() if k not in drop}


def to_alpaca(ex: Example) -> dict[str, Any]:
    roles = [m["role"] for m in ex.messages]
    if "system" in roles:
        raise RecordError("has a system message, which Alpaca format cannot hold (use openai or sharegpt)")
    if roles not in (["user"], ["user", "assistant"]):
        raise RecordError(
            f"is a {len(roles)}-message conversation; Alpaca holds one instruction and one output "
            "(use openai or sharegpt)"
        )
    rec: dict[str, Any] = {"instruction": ex.instruction, "input": ex.input, "output": ex.output}
    rec.update(ex.meta.get("extra", {}))
    meta = _meta_out(ex, ("input", "extra"))
    if meta:
        rec["meta"] = meta
    return rec


def to_seed(ex: Example) -> dict[str, Any]:
    """Self-instruct seed-task form (what `protege init` ships and self-instruct reads)."""
    to_alpaca(ex)  # same shape constraints: one instruction, one output, no system message
    rec: dict[str, Any] = {k: ex.meta[k] for k in ("id", "name") if k in ex.meta}
    rec["instruction"] = ex.instruction
    rec["instances"] = [{"input": ex.input, "output": ex.output}, *ex.meta.get("instances", [])]
    rec["is_classification"] = bool(ex.meta.get("is_classification", False))
    rec.update(ex.meta.get("extra", {}))
    meta = _meta_out(ex, ("id", "name", "input", "instances", "is_classification", "extra", "source"))
    if meta:
        rec["meta"] = meta
    return rec


def to_sharegpt(ex: Example) -> dict[str, Any]:
    rec: dict[str, Any] = dict(ex.meta.get("extra", {}))
    rec["conversations"] = [{"from": _ROLE_SHAREGPT[m["role"]], "value": m["content"]} for m in ex.messages]
    meta = _meta_out(ex, ("extra",))
    if meta:
        rec["meta"] = meta
    return rec


def to_openai(ex: Example) -> dict[str, Any]:
    rec: dict[str, Any] = dict(ex.meta.get("extra", {}))
    rec["messages"] = ex.messages
    meta = _meta_out(ex, ("extra",))
    if meta:
        rec["meta"] = meta
    return rec


_WRITERS = {"alpaca": to_alpaca, "seed": to_seed, "sharegpt": to_sharegpt, "openai": to_openai}


# ---------------------------------------------------------------- files


def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists())


def detect_format(path: str | Path) -> str:
    """The file's format, from its extension and first record. Raises UserError if unknown."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".parquet" or _is_hf_dataset_dir(path):
        return "parquet"
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a data file (or a datasets.save_to_disk folder)")
    if path.suffix == ".txt":
        return "text"
    seen, first = 0, None
    for _, rec in _iter_json(path):
        seen += 1
        if not isinstance(rec, RecordError):
            first = rec
            break
    if first is None:
        if seen == 0:  # an empty file (e.g. an empty val split) holds zero records in any format
            return "openai"
        raise UserError(f"{path}: no readable record found", hint="Run `protege data validate` on it.")
    try:
        return record_format(first)
    except RecordError as err:
        raise UserError(f"{path}: {err}", hint="Force a format with --from.") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed JSON object or RecordError) for a JSON list or a JSONL file."""
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
        for i, rec in enumerate(data, 1):
            yield f"record {i}", rec
        return
    if stripped.startswith("{") and path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSONL with a .json name: fall through
        if isinstance(data, dict):
            for key in ("data", "train", "examples", "records"):
                if isinstance(data.get(key), list):
                    for i, rec in enumerate(data[key], 1):
                        yield f"{key}[{i}]", rec
                    return
            yield "record 1", data
            return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as err:
            yield f"line {lineno}", RecordError(f"invalid JSON: {err.msg} at column {err.colno}")


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    if _is_hf_dataset_dir(path):
        import datasets  # heavy: only for this case

        rows: Iterable[dict[str, Any]] = datasets.load_from_disk(str(path))
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    for i, row in enumerate(rows, 1):
        if isinstance(row.get("meta"), str):
            try:
                row["meta"] = json.loads(row["meta"])
            except json.JSONDecodeError:
                pass
        yield f"row {i}", {k: v for k, v in row.items() if v is not None}


def iter_examples(path: str | Path, fmt: str | None = None) -> Iterator[tuple[str, Example | RecordError]]:
    """(location, Example or RecordError) for every record of a file; bad records do not stop it."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in READ_FORMATS:
        raise UserError(f"unknown format {fmt!r}: expected one of {', '.join(READ_FORMATS)}")
    if fmt == "text":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})",
                            hint="Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None
        for lineno, line in enumerate(lines, 1):
            if line.strip():
                yield f"line {lineno}", Example([{"role": "user", "content": line.strip()}], {})
        return
    source = _iter_parquet(path) if fmt == "parquet" else _iter_json(path)
    for loc, rec in source:
        if isinstance(rec, RecordError):
            yield loc, rec
            continue
        try:
            rec_fmt = record_format(rec) if fmt == "parquet" else fmt
            if fmt != "parquet" and record_format(rec) != fmt and not (fmt == "alpaca" and "instruction" in rec):
                raise RecordError(f"looks like {record_format(rec)}, not {fmt}")
            yield loc, _READERS[rec_fmt](rec)
        except RecordError as err:
            yield loc, err


def read_examples(path: str | Path, fmt: str | None = None) -> list[Example]:
    """All records of a file. Any bad record raises one UserError listing them all."""
    good, bad = [], []
    for loc, item in iter_examples(path, fmt):
        (bad if isinstance(item, RecordError) else good).append((loc, item))
    if bad:
        raise UserError(_problems_message(path, [(loc, str(e)) for loc, e in bad], len(good) + len(bad)),
                        hint=f"Run `protege data validate {path}` for the full list.")
    return [ex for _, ex in good]


def _problems_message(path: str | Path, problems: list[tuple[str, str]], total: int, limit: int = 20) -> str:
    lines = [f"{path}: {len(problems)} bad record(s) out of {total}:"]
    lines += [f"  {loc}: {reason}" for loc, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def check_example(ex: Example) -> list[str]:
    """Why this example is not usable as training data (empty list: it is)."""
    problems = []
    if not ex.messages:
        return ["has no messages"]
    for i, m in enumerate(ex.messages):
        if not m["content"].strip():
            problems.append(f"message {i + 1} ({m['role']}) is empty")
        if m["role"] == "system" and i != 0:
            problems.append(f"message {i + 1} is a system message after the start")
    roles = [m["role"] for m in ex.messages]
    if "assistant" not in roles:
        problems.append("has no assistant reply to train on")
    elif roles[-1] != "assistant":
        problems.append("ends with a user turn that has no reply")
    return problems


def validate_file(path: str | Path, fmt: str | None = None) -> tuple[int, list[tuple[str, str]]]:
    """(records seen, [(location, reason)]) for every bad record of a file."""
    total, problems = 0, []
    for loc, item in iter_examples(path, fmt):
        total += 1
        if isinstance(item, RecordError):
            problems.append((loc, str(item)))
        else:
            problems += [(loc, p) for p in check_example(item)]
    return total, problems


def write_examples(path: str | Path, examples: Iterable[Example], fmt: str = "openai") -> int:
    """Write examples in a format; `.json` gives a JSON list, anything else JSONL. Returns the count.

    Raises UserError naming every record the format cannot hold, before writing anything.
    """
    path = Path(path)
    if fmt not in WRITE_FORMATS:
        raise UserError(f"cannot write format {fmt!r}: expected one of {', '.join(WRITE_FORMATS)}")
    examples = list(examples)
    if fmt == "parquet":
        rows = [{"messages": ex.messages, "meta": json.dumps(ex.meta, ensure_ascii=False)} for ex in examples]
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return len(rows)
    writer, recs, problems = _WRITERS[fmt], [], []
    for i, ex in enumerate(examples, 1):
        try:
            recs.append(writer(ex))
        except RecordError as err:
            problems.append((f"record {i}", str(err)))
    if problems:
        raise UserError(_problems_message(path, problems, len(examples)),
                        hint="Nothing was written. Choose a format that can hold these records.")
    if path.suffix == ".json":
        # One record per line: valid JSON, diff-friendly, and written by the C encoder
        # (json.dump with indent= falls back to the pure-Python one: 3x slower on 17k records).
        text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + ("\n]\n" if recs else "]\n")
    else:
        text = "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in recs)
    atomic_write_text(path, text)  # refuses a device, pipe or folder in the way; never a torn file
    return len(recs)


def output_format(path: str | Path, input_format: str) -> str:
    """The format to write when none is asked for: the input's where it can be written."""
    if Path(path).suffix == ".parquet":
        return "parquet"
    return input_format if input_format in WRITE_FORMATS else "openai"
