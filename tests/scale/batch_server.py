"""A local fake of the OpenAI Files + Batch endpoints (FastAPI on loopback), with faults, for tests.

Follows the published shapes: `POST /v1/files` (multipart: file, purpose) -> File object;
`GET /v1/files?purpose=` (cursor page), `GET /v1/files/{id}/content`; `POST /v1/batches`
(input_file_id, endpoint, completion_window, metadata) -> Batch object; `GET /v1/batches/{id}`,
`GET /v1/batches` (cursor page). Output lines are `{id, custom_id, response: {status_code, request_id,
body}, error}`; error-file lines carry a non-200 response or an `error` {code, message}
(`batch_expired` for the requests an expired batch never ran).

A batch moves validating -> in_progress -> finalizing -> completed (or expired / failed) one step per
`GET /v1/batches/{id}`, staying in_progress for `polls_in_progress` polls, so a test can kill the client
while the batch is running. Answers are deterministic text, no model. `POST /v1/chat/completions`
answers online too (the fallback for requests a batch did not answer). Faults: every `fail_every`-th
request gets a 500 line, `expire_after` ends the batch `expired` after that many requests, `invalid`
fails validation, `flaky_polls` makes the first polls answer HTTP 500.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@dataclass
class BatchFaults:
    polls_in_progress: int = 2
    fail_every: int | None = None
    expire_after: int | None = None
    invalid: bool = False
    flaky_polls: int = 0


@dataclass
class BatchServer:
    faults: BatchFaults = field(default_factory=BatchFaults)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.app = self._build()

    # -- helpers --------------------------------------------------------------------------------
    def _new_file(self, name: str, data: bytes, purpose: str) -> dict[str, Any]:
        fid = f"file-{len(self.files) + 1:04d}"
        self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                           "filename": name, "purpose": purpose, "status": "processed"}
        self.contents[fid] = data
        return self.files[fid]

    @staticmethod
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        last = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
        text = f"Answer: {last[:60]}"
        return {"id": "chatcmpl-x", "object": "chat.completion", "created": int(time.time()),
                "model": "fake-batch-model-2024", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                        "content": text},
                                                                "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()),
                          "total_tokens": 10 + len(text.split())}}

    def _run(self, b: dict[str, Any]) -> None:
        """Answer the batch's requests into an output file and an error file (faults applied)."""
        f = self.faults
        lines = [json.loads(x) for x in self.contents[b["input_file_id"]].decode().splitlines() if x.strip()]
        out, err = [], []
        for i, line in enumerate(lines):
            rid = f"batch_req_{b['id']}_{i}"
            if f.expire_after is not None and i >= f.expire_after:
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                            "error": {"code": "batch_expired", "message": "This request could not be executed "
                                      "before the completion window expired."}})
            elif f.fail_every and i % f.fail_every == f.fail_every - 1:
                err.append({"id": rid, "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 500, "request_id": f"req_{i}",
                    "body": {"error": {"message": "The server had an error", "type": "server_error"}}}})
            else:
                out.append({"id": rid, "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": 200, "request_id": f"req_{i}", "body": self.answer(line["body"])}})
        now = int(time.time())
        if out:
            b["output_file_id"] = self._new_file(f"{b['id']}_output.jsonl", _jsonl(out), "batch_output")["id"]
        if err:
            b["error_file_id"] = self._new_file(f"{b['id']}_error.jsonl", _jsonl(err), "batch_output")["id"]
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        expired = f.expire_after is not None and f.expire_after < len(lines)
        b["status"] = "expired" if expired else "completed"
        b["expired_at" if expired else "completed_at"] = now

    def _advance(self, b: dict[str, Any]) -> None:
        n = self.polls[b["id"]]
        self.polls[b["id"]] += 1
        if b["status"] == "validating":
            if self.faults.invalid:
                b.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                    {"code": "model_not_found", "line": 1, "message": "The model does not exist", "param": "body.model"}]})
            else:
                total = len(self.contents[b["input_file_id"]].decode().splitlines())
                b.update(status="in_progress", in_progress_at=int(time.time()),
                         request_counts={"total": total, "completed": 0, "failed": 0})
        elif b["status"] == "in_progress" and n > self.faults.polls_in_progress:
            b.update(status="finalizing", finalizing_at=int(time.time()))
        elif b["status"] == "finalizing":
            self._run(b)

    # -- routes -----------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "fake-batch-model", "object": "model"}]}

        @app.post("/v1/files")
        async def upload(request: Request) -> Response:
            raw = await request.body()
            head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
            msg = BytesParser(policy=HTTP).parsebytes(head + raw)
            parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            purpose = parts["purpose"].get_payload(decode=True).decode()
            if purpose != "batch":
                return JSONResponse({"error": {"message": f"bad purpose {purpose}"}}, status_code=400)
            self.stats["uploads"] += 1
            return JSONResponse(self._new_file(parts["file"].get_filename(), parts["file"].get_payload(decode=True),
                                               purpose))

        @app.get("/v1/files")
        async def list_files(purpose: str | None = None) -> dict[str, Any]:
            data = [f for f in self.files.values() if purpose is None or f["purpose"] == purpose]
            return {"object": "list", "data": data[::-1], "has_more": False}

        @app.get("/v1/files/{fid}/content")
        async def content(fid: str) -> Response:
            self.stats["downloads"] += 1
            return Response(self.contents[fid], media_type="application/octet-stream")

        @app.post("/v1/batches")
        async def create(request: Request) -> Response:
            body = await request.json()
            if body.get("input_file_id") not in self.files or body.get("endpoint") != "/v1/chat/completions" \
                    or body.get("completion_window") != "24h":
                return JSONResponse({"error": {"message": f"bad batch request {body}"}}, status_code=400)
            self.stats["creates"] += 1
            bid = f"batch_{len(self.batches) + 1:04d}"
            self.batches[bid] = {
                "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
                "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
                "in_progress_at": None, "expires_at": int(time.time()) + 86400, "finalizing_at": None,
                "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
                "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata")}
            return JSONResponse(self.batches[bid])

        @app.get("/v1/batches/{bid}")
        async def retrieve(bid: str) -> Response:
            self.stats["polls"] += 1
            if self.stats["polls"] <= self.faults.flaky_polls:
                return JSONResponse({"error": {"message": "temporarily unavailable"}}, status_code=500)
            b = self.batches[bid]
            self._advance(b)
            return JSONResponse(b)

        @app.get("/v1/batches")
        async def list_batches(limit: int = 20) -> dict[str, Any]:
            data = list(self.batches.values())[::-1][:limit]
            return {"object": "list", "data": data, "has_more": False}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            self.stats["chat"] += 1
            return JSONResponse(self.answer(await request.json()))

        return app


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
