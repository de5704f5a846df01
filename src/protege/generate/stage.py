"""`protege generate`: the teacher writes new records into `RUN_DIR/generate/raw.jsonl`.

Modes (`generate.mode`): `self-instruct` (self_instruct.py), `respond`, `explain` and
`self-chat` (modes.py); what they share while running is in context.py. This module builds the
teacher and the engine, runs the mode, prints the summary, and answers `--dry-run`.

Resume: every record carries `meta.gen_id` (which unit of work produced it). On a rerun, units
already in raw.jsonl or dropped.jsonl are skipped, and anything else is asked again through the
response cache, so an answer already received (even if the process was killed before writing
the record) costs no call. failed.jsonl lists the units that still failed after their last
retry; they are tried again on the next run.

Failing fast: an HTTP teacher is asked once before anything is written (`Engine.preflight`), so a
dead server, a typo in the URL or a bad key ends in seconds with exit 2 and the run directory
untouched. During the run, a fatal error or the engine's circuit breaker stops it cleanly:
everything received is kept, and the message says how to resume. Ctrl-C / SIGTERM cancel the
requests in flight and keep what arrived (the CLI prints how to resume).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError, report
from protege.generate.context import Ctx, Mode, Outputs, Tracker, sampling_params
from protege.store import RunStore

MODES = ("self-instruct", "respond", "explain", "self-chat")


def _build_mode(cfg: RunConfig) -> Mode:
    try:
        return _mode_for(cfg)
    except UnicodeDecodeError as err:
        path = cfg.generate.instructions if cfg.generate.mode in ("respond", "explain") else cfg.seeds
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r})",
                        hint="Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from None


def _mode_for(cfg: RunConfig) -> Mode:
    from protege.generate.modes import Respond, SelfChat
    from protege.generate.self_instruct import SelfInstruct

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
    # budget_usd without prices is refused by the config itself (config.RunConfig).


def run(cfg: RunConfig, store: RunStore, dry_run: bool = False) -> dict[str, Any]:
    """Run the generate stage. With `dry_run`, print the plan (requests, tokens, cost) and call nothing."""
    _check(cfg)
    mode = _build_mode(cfg)  # reads and validates the inputs before anything is written
    if mode.total == 0:
        raise UserError(f"generate.{'instructions' if cfg.generate.instructions else 'seeds'}: "
                        f"{cfg.generate.instructions or cfg.seeds}: nothing to generate from (no records)",
                        hint="Point it at a file with at least one instruction.")
    if dry_run:
        return dry_run_report(cfg, store, mode)
    store.check_writable()  # a run_dir that cannot be created fails before the teacher is asked
    done, kept_records = _peek(store)
    if mode.remaining(done, kept_records) > 0:
        asyncio.run(_preflight(cfg))
    store.write_config(cfg.to_yaml())
    with store.stage("generate", cfg.hash()) as info:
        if cfg.generate.batch_api:  # answers arrive through the Batch API into the cache; the run below writes them
            from protege.generate.batch_api import run_batches

            info["batch_api"] = run_batches(cfg, store, mode.planned_requests(done, kept_records,
                                                                              sampling_params(cfg))[1])
        summary = asyncio.run(_generate(cfg, store, mode))
        info.update({k: v for k, v in summary.items() if k != "notes"})
    for path, n in ((store.raw, summary["records"]), (store.generate_dropped, summary["dropped_total"]),
                    (store.failed, summary["failed_outstanding"])):
        if path.exists():
            store.record_artifact(path, "generate", n)
    _print_summary(summary)
    if summary.get("fatal"):
        raise UserError(f"generate stopped: {summary['stop_reason']}",
                        hint=f"Everything received so far is kept ({summary['records']} records in {store.raw}). "
                             "Fix the teacher, then run the same command again to resume: answers already "
                             "received are not asked again.")
    return summary


async def _preflight(cfg: RunConfig) -> None:
    """Ask an HTTP teacher once before anything is written (raises UserError when it cannot answer)."""
    from protege.teachers import build_engine, build_teacher

    assert cfg.teacher is not None
    if cfg.teacher.kind != "openai":  # in-process backends: loading the model is the check
        return
    teacher = build_teacher(cfg.teacher)
    try:
        await build_engine(teacher, None, cfg.teacher, cfg.generate).preflight()
    finally:
        await teacher.aclose()


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
        "stop_reason": engine.stop_reason, "fatal": engine.fatal,
        "ledger": engine.ledger.as_dict(), "notes": ctx.notes,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console

    con = Console(stderr=True, soft_wrap=True)  # one line per message: greppable in logs
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
        return report(err)
    return 0
