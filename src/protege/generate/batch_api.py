"""`generate.batch_api: true`: respond/explain requests through the OpenAI Batch API.

For 50k+ records from a provider that offers it (OpenAI and the providers that copy its Batch API):
asynchronous, within 24 h, at half the online price. The flow, with the official `openai` SDK:

1. the mode's outstanding requests (those not already answered in the run's cache) are written as
   Batch input JSONL in the run directory (`generate/batch/batch-<sha>.jsonl`, one line per request:
   `custom_id` = the request's cache key, `method`, `url` = /v1/chat/completions, `body` = what the
   online path would send), at most 50,000 requests and ~190 MB a file (the API's limits);
2. each file is uploaded (`files.create(purpose="batch")`) and a batch created
   (`batches.create(endpoint="/v1/chat/completions", completion_window="24h")`);
3. the batches are polled (`batches.retrieve`) every `generate.batch_poll_s` seconds, with progress;
4. the output and error files are downloaded (`files.content`) and every answer is put into the
   same SQLite cache and call log as an online answer (`CallLog.record_answer`, cost at the
   Batch API's 50 % price when the teacher is priced);
5. the online path then runs as usual: every answered request is a cache hit, so the records are
   written by the same code, with the same provenance, as online ones. Requests the batch did not
   answer (error lines, an expired or cancelled batch) are asked online, at the online price.

Resumable across process restarts: the state (`generate/batch_api.json`: each file's upload id and
batch id) is saved atomically after every remote step, so a rerun polls the same batch and never
uploads or creates twice. Even a kill inside an upload or create call is covered: before uploading,
the provider's files are searched for one with the same name (the name holds the content's hash),
and before creating, its batches for one with the same input file.

Why by hand: the SDK has the calls but no loop over them (chunking, polling, resume, merging into a
cache); the Batch API is exactly what is being used, nothing is reimplemented.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError
from protege.store import RunStore
from protege.teachers.base import Completion, Request

MAX_REQUESTS = 50_000  # the API's limit per batch file
MAX_BYTES = 190 * 2**20  # under its 200 MB limit
ENDPOINT = "/v1/chat/completions"
DISCOUNT = 0.5  # OpenAI's published Batch API price: half the online price
TERMINAL = ("completed", "failed", "expired", "cancelled")


def run_batches(cfg: RunConfig, store: RunStore, requests: list[Request]) -> dict[str, Any]:
    """Answer `requests` (the mode's outstanding ones) through the Batch API into the run's cache.

    Returns a summary: jobs, requests sent, answered, errors, files uploaded and batches created by
    this process (0 on a resumed run). Raises UserError when a batch fails validation or the provider
    cannot be reached (the state is kept: rerun to resume).
    """
    from protege.teachers.cache import CallLog

    t = cfg.teacher
    assert t is not None and t.kind == "openai" and not isinstance(t.base_url, list)
    state_path = store.generate_dir / "batch_api.json"
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {"jobs": []}
    client = _client(t)  # first: a missing key fails before anything is opened
    calls = CallLog(store.calls_db)
    summary = {"jobs": 0, "sent": 0, "answered": 0, "errors": 0, "uploaded": 0, "created": 0}
    try:
        by_key = {r.key(t.model): r for r in requests}
        pending = {k for job in state["jobs"] if not job.get("merged") for k in _job_keys(store, job)}
        todo = [r for k, r in by_key.items() if k not in pending and calls.get(k) is None]
        for chunk in _chunks(todo, t.model):
            state["jobs"].append(_write_input(store, chunk, t.model))
        jobs = [j for j in state["jobs"] if not j.get("merged")]
        if not jobs:
            return summary  # everything answered already (a rerun): nothing to send or poll
        _save(store, state_path, state)
        summary["jobs"] = len(jobs)
        summary["sent"] = sum(j["requests"] for j in jobs)
        for job in jobs:
            _submit(client, store, state_path, state, job, summary)
        _poll(client, jobs, cfg.generate.batch_poll_s, store, state_path, state)
        for job in jobs:
            answered, errors = _merge(client, calls, job, by_key, t)
            summary["answered"] += answered
            summary["errors"] += errors
            job.update(merged=True, answered=answered, errors=errors)
            _save(store, state_path, state)
    finally:
        calls.close()
        client.close()
    if summary["jobs"]:
        _print_summary(summary)
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console

    left = s["sent"] - s["answered"]
    Console(stderr=True, soft_wrap=True).print(
        f"[bold]batch_api[/]: {s['sent']} requests in {s['jobs']} batch(es) ({s['uploaded']} uploaded, "
        f"{s['created']} created by this run): {s['answered']} answered"
        + (f", {left} not answered: asked online now" if left else ""))


# ------------------------------------------------------------------ the input files


def _body(r: Request, model: str) -> dict[str, Any]:
    """The chat body the online path (`OpenAITeacher`) sends for `r`."""
    body: dict[str, Any] = {"model": model, "messages": r.messages or []}
    body.update({k: v for k, v in r.sampling.items() if v is not None})
    if r.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _chunks(todo: list[Request], model: str) -> list[list[tuple[str, bytes]]]:
    """(custom_id, JSONL line) lists within the API's per-file limits."""
    out: list[list[tuple[str, bytes]]] = []
    size = 0
    for r in todo:
        if r.messages is None:
            raise UserError("generate.batch_api sends chat requests; this request has a plain prompt",
                            hint="Use teacher.api: chat, or set generate.batch_api: false.")
        key = r.key(model)
        line = json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": _body(r, model)},
                          ensure_ascii=False).encode() + b"\n"
        if not out or len(out[-1]) >= MAX_REQUESTS or size + len(line) > MAX_BYTES:
            out.append([])
            size = 0
        out[-1].append((key, line))
        size += len(line)
    return out


def _write_input(store: RunStore, chunk: list[tuple[str, bytes]], model: str) -> dict[str, Any]:
    data = b"".join(line for _, line in chunk)
    sha = hashlib.sha256(data).hexdigest()
    name = f"protege-batch-{sha[:24]}.jsonl"
    path = store.generate_dir / "batch" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {"file": f"batch/{name}", "sha256": sha, "bytes": len(data), "requests": len(chunk), "model": model,
            "input_file_id": None, "batch_id": None, "status": None, "merged": False}


def _job_keys(store: RunStore, job: dict[str, Any]) -> list[str]:
    path = store.generate_dir / job["file"]
    return [json.loads(line)["custom_id"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def _save(store: RunStore, path: Path, state: dict[str, Any]) -> None:
    store.write_text(path, json.dumps(state, indent=2) + "\n")


# ------------------------------------------------------------------ remote steps


def _client(t: Any) -> Any:
    import openai

    key = "no-key"
    if t.api_key_env:
        key = os.environ.get(t.api_key_env) or ""
        if not key:
            raise UserError(f"teacher.api_key_env: the environment variable {t.api_key_env} is not set (or empty)",
                            hint=f"export {t.api_key_env}=... in the shell that runs protege.")
    # The SDK's own retries (with backoff, honouring Retry-After) cover transient errors of these few calls.
    return openai.OpenAI(api_key=key, base_url=t.base_url or "https://api.openai.com/v1", timeout=t.timeout_s,
                         max_retries=t.max_retries)


def _remote(what: str, fn: Any, *a: Any, **kw: Any) -> Any:
    """One SDK call; its failure after the SDK's retries becomes a UserError that says how to resume."""
    import openai

    try:
        return fn(*a, **kw)
    except openai.APIStatusError as err:
        raise UserError(f"batch_api: {what} failed: HTTP {err.status_code}: {getattr(err, 'message', err)}"[:600],
                        hint="Nothing received is lost; the batch ids are in generate/batch_api.json. "
                             "Fix the cause, then run the same command again to resume.") from None
    except openai.APIConnectionError as err:
        raise UserError(f"batch_api: {what} failed: no reply from the provider ({err})"[:600],
                        hint="Run the same command again to resume: the batch goes on on the provider's side "
                             "and is polled again (generate/batch_api.json keeps its id).") from None


def _submit(client: Any, store: RunStore, state_path: Path, state: dict[str, Any], job: dict[str, Any],
            summary: dict[str, Any]) -> None:
    """Upload the job's file and create its batch, unless done already (saved after each step)."""
    name = Path(job["file"]).name
    if job["input_file_id"] is None:
        found = next((f.id for f in _remote("listing files", client.files.list, purpose="batch")
                      if f.filename == name and f.bytes == job["bytes"]), None)
        if found is None:
            data = (store.generate_dir / job["file"]).read_bytes()
            found = _remote("uploading the batch file", client.files.create, file=(name, data), purpose="batch").id
            summary["uploaded"] += 1
        job["input_file_id"] = found
        _save(store, state_path, state)
    if job["batch_id"] is None:
        found = next((b.id for b in _remote("listing batches", client.batches.list, limit=100)
                      if b.input_file_id == job["input_file_id"] and b.status not in ("failed", "cancelled",
                                                                                      "cancelling")), None)
        if found is None:
            found = _remote("creating the batch", client.batches.create, input_file_id=job["input_file_id"],
                            endpoint=ENDPOINT, completion_window="24h",
                            metadata={"created_by": "protege", "file": name}).id
            summary["created"] += 1
        job["batch_id"] = found
        _save(store, state_path, state)


def _poll(client: Any, jobs: list[dict[str, Any]], every_s: float, store: RunStore, state_path: Path,
          state: dict[str, Any]) -> None:
    """Poll every batch until each one ends, with a progress bar (requests done of all)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(j["requests"] for j in jobs)
    columns = (TextColumn("[bold]batch_api"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[st]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("batch", total=total, st="")
        while True:
            done = 0
            for job in jobs:
                if job.get("status") not in TERMINAL:
                    b = _remote(f"checking batch {job['batch_id']}", client.batches.retrieve, job["batch_id"])
                    job.update(status=b.status, output_file_id=b.output_file_id, error_file_id=b.error_file_id,
                               counts=b.request_counts.model_dump() if b.request_counts else None,
                               validation=[e.message for e in (b.errors.data or [])] if b.errors else [])
                c = job.get("counts") or {}
                done += (c.get("completed") or 0) + (c.get("failed") or 0)
            _save(store, state_path, state)
            statuses = sorted({j["status"] for j in jobs})
            bar.update(task, completed=done, st=", ".join(statuses))
            if all(j["status"] in TERMINAL for j in jobs):
                break
            time.sleep(every_s)
    failed = [j for j in jobs if j["status"] == "failed"]
    if failed:
        for j in failed:  # a rerun submits these again (the upload is found and reused)
            j["batch_id"] = None
            j["status"] = None
        _save(store, state_path, state)
        why = "; ".join(f"{j['file']}: {', '.join(j.get('validation') or ['no reason given'])}" for j in failed)
        raise UserError(f"batch_api: {len(failed)} batch(es) failed validation: {why}"[:1500],
                        hint="Fix what the provider reports, then run again: the upload is reused, a new batch "
                             "is created for those requests; answers already merged are kept.")


# ------------------------------------------------------------------ merging


def _merge(client: Any, calls: Any, job: dict[str, Any], by_key: dict[str, Request], t: Any) -> tuple[int, int]:
    """Put every answer of a finished batch into the cache; log its error lines. (answered, errors)."""
    answered = errors = 0
    for field in ("output_file_id", "error_file_id"):
        file_id = job.get(field)
        if not file_id:
            continue
        text = _remote(f"downloading {file_id}", client.files.content, file_id).text
        for line in text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = row.get("custom_id")
            resp = row.get("response") or {}
            req = by_key.get(key)
            if req is None:
                continue  # not a request of this run any more (config changed): its answer is not ours
            if resp.get("status_code") == 200 and not row.get("error"):
                completion = _completion(resp.get("body") or {})
                if completion is not None:
                    calls.record_answer(key, t.model, _request_dict(req), completion, 1, _cost(t, completion))
                    answered += 1
                    continue
            err = row.get("error") or (resp.get("body") or {}).get("error") or {}
            message = f"batch {job['batch_id']}: {err.get('code') or ''} {err.get('message') or 'no answer'}".strip()
            calls.log_call(key=key, model=t.model, attempt=1, status="error", http_status=resp.get("status_code"),
                           error=message[:500])
            errors += 1
    return answered, errors


def _completion(body: dict[str, Any]) -> Completion | None:
    """A chat.completion body (what the online call returns) as a Completion; None when it holds no text."""
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    text = (choices[0].get("message") or {}).get("content")
    if not isinstance(text, str):
        return None
    usage = body.get("usage") or {}
    return Completion(text=text, finish_reason=choices[0].get("finish_reason"),
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0), model=body.get("model"))


def _cost(t: Any, c: Completion) -> float | None:
    if t.price_input_per_mtok is None or t.price_output_per_mtok is None:
        return None
    return DISCOUNT * (c.prompt_tokens * t.price_input_per_mtok + c.completion_tokens * t.price_output_per_mtok) / 1e6


def _request_dict(r: Request) -> dict[str, Any]:
    """What the call log stores for a request (as the engine stores it)."""
    return {"messages": r.messages, "prompt": r.prompt, "sampling": r.sampling, "sample_index": r.sample_index,
            "json_mode": r.json_mode}
