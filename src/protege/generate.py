"""`protege generate`: the teacher writes new records into `RUN_DIR/generate/raw.jsonl`.

Modes (`generate.mode`): `self-instruct` (generate_self_instruct.py), `respond`, `explain` and
`self-chat` (generate_modes.py). This module holds what they share: building the teacher and
the engine, the output files, resume, provenance, the progress bar and `--dry-run`.

Resume: every record carries `meta.gen_id` (which unit of work produced it). On a rerun, units
already in raw.jsonl or dropped.jsonl are skipped, and anything else is asked again through the
response cache, so an answer already received (even if the process was killed before writing
the record) costs no call. failed.jsonl lists the units that still failed after their last
retry; they are tried again on the next run.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protege.config import RunConfig
from protege.errors import UserError
from protege.records import Example
from protege.store import RunStore, now_iso
from protege.teachers.base import Request

MODES = ("self-instruct", "respond", "explain", "self-chat")


# ------------------------------------------------------------------ output files


def _read_jsonl_tolerant(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file we write ourselves; a torn last line (kill -9) is cut off.

    The torn line was never a complete record; its answer is in the response cache, so the
    unit is simply produced again, at no cost.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    out = []
    for line in data.decode("utf-8").splitlines():
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
        self.kept_records = _read_jsonl_tolerant(store.raw)
        dropped = _read_jsonl_tolerant(store.generate_dropped)
        self._old_failed = _read_jsonl_tolerant(store.failed)
        self.done_ids = {(r.get("meta") or {}).get("gen_id") for r in self.kept_records + dropped}
        self.done_ids.discard(None)
        self.previous = {"kept": len(self.kept_records), "dropped": len(dropped)}
        self.kept = self.dropped = self.failed = 0
        self._failed_now: dict[str, dict[str, Any]] = {}
        self._raw = store.raw.open("a", encoding="utf-8")
        self._drop = store.generate_dropped.open("a", encoding="utf-8")

    def _write(self, f: Any, recs: list[dict[str, Any]]) -> None:
        # One write per unit of work: its records land together or (torn line) not at all.
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
        with self.store.failed.open("a", encoding="utf-8") as f:  # a crash keeps what failed so far
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
        tmp = self.store.failed.with_name("failed.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in latest.values()),
                       encoding="utf-8")
        os.replace(tmp, self.store.failed)
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


def _build_mode(cfg: RunConfig) -> Mode:
    from protege.generate_modes import Respond, SelfChat
    from protege.generate_self_instruct import SelfInstruct

    mode = cfg.generate.mode
    if mode == "self-instruct":
        return SelfInstruct(cfg)
    if mode in ("respond", "explain"):
        return Respond(cfg, explain=mode == "explain")
    return SelfChat(cfg)


# ------------------------------------------------------------------ run


def _check(cfg: RunConfig) -> None:
    if cfg.teacher is None:
        raise UserError("teacher: the config has no teacher block; generate needs one",
                        hint="Add teacher: {kind: openai|llamacpp|hf|vllm, model: ...} (see protege init).")
    t, g = cfg.teacher, cfg.generate
    if g.budget_usd is not None and (t.price_input_per_mtok is None or t.price_output_per_mtok is None):
        raise UserError("generate.budget_usd is set but the teacher has no prices, so spend cannot be counted",
                        hint="Set teacher.price_input_per_mtok and teacher.price_output_per_mtok (USD per "
                        "million tokens), or use generate.max_requests as the cap.")


def run(cfg: RunConfig, store: RunStore, dry_run: bool = False) -> dict[str, Any]:
    """Run the generate stage. With `dry_run`, print the plan (requests, tokens, cost) and call nothing."""
    _check(cfg)
    mode = _build_mode(cfg)  # reads and validates the inputs before anything is written
    if dry_run:
        return dry_run_report(cfg, store, mode)
    store.write_config(cfg.to_yaml())
    with store.stage("generate", cfg.hash()) as info:
        summary = asyncio.run(_generate(cfg, store, mode))
        info.update({k: v for k, v in summary.items() if k != "notes"})
    for path, n in ((store.raw, summary["records"]), (store.generate_dropped, summary["dropped_total"]),
                    (store.failed, summary["failed_outstanding"])):
        if path.exists():
            store.record_artifact(path, "generate", n)
    _print_summary(summary)
    if summary.get("fatal"):
        raise UserError(f"generate stopped: {summary['stop_reason']}",
                        hint="Everything received so far is saved; fix the problem and run again to resume.")
    return summary


async def _generate(cfg: RunConfig, store: RunStore, mode: Mode) -> dict[str, Any]:
    from protege.teachers import build_engine, build_teacher
    from protege.teachers.cache import CallLog

    assert cfg.teacher is not None
    teacher = build_teacher(cfg.teacher)
    calls = CallLog(store.calls_db)
    engine = build_engine(teacher, calls, cfg.teacher, cfg.generate)
    out = Outputs(store)
    ctx = Ctx(cfg, engine, out)
    try:
        remaining = mode.remaining(out.done_ids, out.kept_records)
        with Tracker(mode.total, f"generate {mode.name}", engine, out) as tracker:
            ctx.tracker = tracker
            tracker.advance(mode.total - remaining)
            await mode.run(ctx)
    finally:
        outstanding = out.close()
        await teacher.aclose()
        calls.close()
    kept_total = out.previous["kept"] + out.kept
    return {
        "mode": mode.name, "target": mode.total, "records": kept_total, "kept_now": out.kept,
        "dropped_now": out.dropped, "dropped_total": out.previous["dropped"] + out.dropped,
        "failed_now": out.failed, "failed_outstanding": outstanding,
        "stop_reason": engine.stop_reason, "fatal": bool(engine.stop_reason and "fatal" in engine.stop_reason),
        "ledger": engine.ledger.as_dict(), "notes": ctx.notes,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console(stderr=True)
    led = summary["ledger"]
    cost = f"${led['cost_usd']:.4f}" if led["cost_usd"] is not None else "not priced"
    con.print(f"[bold]generate {summary['mode']}[/]: {summary['records']} records in raw.jsonl "
              f"(+{summary['kept_now']} this run), dropped {summary['dropped_now']}, "
              f"failed {summary['failed_outstanding']} · {led['calls']} calls, {led['cache_hits']} cache hits, "
              f"{led['retries']} retries, tokens {led['prompt_tokens']}+{led['completion_tokens']}, cost {cost}")
    if summary.get("stop_reason"):
        con.print(f"[yellow]stopped early: {summary['stop_reason']}[/] (rerun to continue)")
    for note in summary.get("notes", []):
        con.print(f"[yellow]{note}[/]")


def dry_run_report(cfg: RunConfig, store: RunStore, mode: Mode) -> dict[str, Any]:
    """Print what a run would send (requests, tokens, cost) without calling the teacher."""
    from rich.console import Console

    from protege.teachers.cache import CallLog

    assert cfg.teacher is not None
    t = cfg.teacher
    done, kept_records = _peek(store)
    n_requests, sample = mode.planned_requests(done, kept_records, sampling_params(cfg))
    cached = 0
    if store.calls_db.exists() and sample:
        log = CallLog(store.calls_db)
        cached = sum(1 for r in sample if log.get(r.key(t.model)) is not None)
        log.close()
    per_prompt = (sum(r.estimated_prompt_tokens() for r in sample) / len(sample)) if sample else 0
    max_out = cfg.generate.sampling.max_tokens
    to_send = max(0, n_requests - cached)
    prompt_tokens, completion_tokens = int(per_prompt * to_send), to_send * max_out
    cost = None
    if t.price_input_per_mtok is not None and t.price_output_per_mtok is not None:
        cost = (prompt_tokens * t.price_input_per_mtok + completion_tokens * t.price_output_per_mtok) / 1e6
    con = Console()
    con.print(f"[bold]dry run[/]: generate {mode.name} with {t.kind}:{t.model}")
    con.print(f"  target: {mode.total} records; {mode.remaining(done, kept_records)} still to produce")
    con.print(f"  requests: ~{n_requests} ({cached} answered already in the cache: free)")
    con.print(f"  tokens: ~{prompt_tokens} prompt (estimated at ~4 characters a token) + at most "
              f"{completion_tokens} completion (max_tokens {max_out} each)")
    con.print(f"  cost: {'at most $%.4f' % cost if cost is not None else 'not priced (set teacher.price_*_per_mtok)'}")
    for cap in ("budget_usd", "max_requests"):
        if getattr(cfg.generate, cap) is not None:
            con.print(f"  cap: generate.{cap} = {getattr(cfg.generate, cap)}")
    if sample:
        con.print("  first request:")
        con.print_json(json.dumps({"messages": sample[0].messages, "prompt": sample[0].prompt,
                                   **sample[0].sampling})[:4000])
    return {"mode": mode.name, "requests": n_requests, "cached": cached, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "cost_usd": cost}


def _peek(store: RunStore) -> tuple[set[str], list[dict[str, Any]]]:
    """(done gen_ids, kept records) of a run directory, read without changing anything."""
    ids: set[str] = set()
    kept: list[dict[str, Any]] = []
    for path in (store.raw, store.generate_dropped):
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                gid = (rec.get("meta") or {}).get("gen_id")
            except (json.JSONDecodeError, AttributeError):
                continue
            if gid:
                ids.add(gid)
            if path == store.raw:
                kept.append(rec)
    return ids, kept


def main(argv: list[str] | None = None) -> int:
    """`python -m protege.generate -c FILE [--set k=v ...] [--dry-run]` (the CLI calls `run`)."""
    import argparse

    from protege.config import load_config

    parser = argparse.ArgumentParser(prog="python -m protege.generate")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, RunStore(cfg.run_dir), dry_run=args.dry_run)
    except UserError as err:
        print(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
