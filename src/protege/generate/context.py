"""What the generation modes share while they run: the output files, the progress bar, the context.

`Outputs` writes one unit of work at a time and cuts a torn last line, so a killed run resumes cleanly;
`Ctx` is what a mode gets (config, engine, outputs, provenance). The modes (self_instruct.py, modes.py)
import from here, and stage.py wires them together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protege.config import RunConfig
from protege.errors import UserError
from protege.paths import atomic_write_text, writing
from protege.records import Example
from protege.store import RunStore, now_iso
from protege.teachers.base import Request

DEFAULT_SEEDS = Path(__file__).resolve().parent.parent / "templates" / "seeds.jsonl"


# ------------------------------------------------------------------ output files


def read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file we write ourselves; a torn last line (kill -9) is cut off.

    The torn line was never a complete record; its answer is in the response cache, so the
    unit is simply produced again, at no cost.
    """
    if not path.exists():
        return []
    with writing(path, "read and repair"):
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with path.open("r+b") as f:
                f.truncate(cut)
            data = data[:cut]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 (byte {err.start}); protege writes this file itself, so it was "
                        "changed by something else",
                        hint="Restore it, or move it away to generate those records again.") from None
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


class Outputs:
    """raw.jsonl / dropped.jsonl / failed.jsonl of a run, appended and flushed as results come."""

    def __init__(self, store: RunStore) -> None:
        store.ensure(store.generate_dir)
        self.store = store
        self.kept_records = read_jsonl_tolerant(store.raw)
        dropped = read_jsonl_tolerant(store.generate_dropped)
        self._old_failed = read_jsonl_tolerant(store.failed)
        self.done_ids = {(r.get("meta") or {}).get("gen_id") for r in self.kept_records + dropped}
        self.done_ids.discard(None)
        self.previous = {"kept": len(self.kept_records), "dropped": len(dropped)}
        self.kept = self.dropped = self.failed = 0
        self._failed_now: dict[str, dict[str, Any]] = {}
        with writing(store.raw, "append to"):
            self._raw = store.raw.open("a", encoding="utf-8")
        with writing(store.generate_dropped, "append to"):
            self._drop = store.generate_dropped.open("a", encoding="utf-8")

    def _write(self, f: Any, recs: list[dict[str, Any]]) -> None:
        # One write per unit of work: its records land together or (torn line) not at all.
        with writing(f.name, "append to"):
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
            f.flush()

    def keep(self, examples: list[Example]) -> None:
        if examples:
            self._write(self._raw, [ex.to_dict() for ex in examples])
            self.kept += len(examples)
            self.done_ids.update(ex.meta.get("gen_id") for ex in examples)

    def drop(self, examples: list[Example]) -> None:
        """Examples with `meta.drop_reason` set."""
        if examples:
            self._write(self._drop, [ex.to_dict() for ex in examples])
            self.dropped += len(examples)
            self.done_ids.update(ex.meta.get("gen_id") for ex in examples)

    def fail(self, gen_id: str, request: Request, error: str, attempts: int, **extra: Any) -> None:
        rec = {"gen_id": gen_id, "error": error, "attempts": attempts, "time": now_iso(),
               "messages": request.messages, "prompt": request.prompt, **extra}
        self._failed_now[gen_id] = rec
        self.failed += 1
        with writing(self.store.failed, "append to"), \
                self.store.failed.open("a", encoding="utf-8") as f:  # a crash keeps what failed so far
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def close(self) -> int:
        """Close files; rewrite failed.jsonl to the units still failed (one line each)."""
        self._raw.close()
        self._drop.close()
        latest: dict[str, dict[str, Any]] = {}
        for rec in self._old_failed + list(self._failed_now.values()):
            gid = rec.get("gen_id")
            if gid and gid not in self.done_ids:
                latest[gid] = rec
        atomic_write_text(self.store.failed,
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in latest.values()))
        return len(latest)


# ------------------------------------------------------------------ progress


class Tracker:
    """A Rich progress bar with ETA, kept/dropped/failed counts and spend."""

    def __init__(self, total: int, description: str, engine: Any, outputs: Outputs) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.engine, self.outputs = engine, outputs
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[stats]}"), console=Console(stderr=True))
        self.task = self.progress.add_task(description, total=total, stats="")

    def __enter__(self) -> Tracker:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self.progress.stop()

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)
        self.refresh()

    def refresh(self) -> None:
        led, out = self.engine.ledger, self.outputs
        spend = f"${led.cost_usd:.4f}" if led.priced else "spend: not priced"
        stats = (f"kept {out.kept} · dropped {out.dropped} · failed {out.failed} · calls {led.calls} "
                 f"· cached {led.cache_hits} · {spend}")
        self.progress.update(self.task, stats=stats)


# ------------------------------------------------------------------ shared context


def sampling_params(cfg: RunConfig) -> dict[str, Any]:
    """The sampling parameters sent with every request (and recorded in every record)."""
    s = cfg.generate.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}


@dataclass
class Ctx:
    """What a mode needs while it runs."""

    cfg: RunConfig
    engine: Any
    out: Outputs
    tracker: Tracker | None = None
    notes: list[str] = field(default_factory=list)

    def sampling(self) -> dict[str, Any]:
        return sampling_params(self.cfg)

    def provenance(self, result: Any, *, mode: str, gen_id: str, template: Any, **extra: Any) -> dict[str, Any]:
        """meta for a record made from one engine Result."""
        c = result.completion
        info = dict(self.engine.teacher.info)
        return {
            "source": "teacher", "mode": mode, "gen_id": gen_id,
            "teacher": {**info, "model_version": c.model},
            "template": template.provenance() if template is not None else None,
            "sampling": result.request.sampling, "sample_index": result.request.sample_index,
            "created": now_iso(),
            "tokens": {"prompt": c.prompt_tokens, "completion": c.completion_tokens},
            "cost_usd": result.cost_usd, "finish_reason": c.finish_reason, "cached": result.cached,
            "request_key": result.key, **extra,
        }

    def advance(self, n: int = 1) -> None:
        if self.tracker is not None:
            self.tracker.advance(n)


class Mode(Protocol):
    """A generation mode: knows its work up front (for --dry-run) and runs it through Ctx."""

    name: str
    total: int

    def remaining(self, done_ids: set[str], kept_records: list[dict[str, Any]]) -> int: ...
    def planned_requests(self, done_ids: set[str], kept_records: list[dict[str, Any]],
                         sampling: dict[str, Any]) -> tuple[int, list[Request]]: ...
    async def run(self, ctx: Ctx) -> None: ...
