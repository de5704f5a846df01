"""A fault-injecting OpenAI-compatible server (FastAPI/uvicorn on loopback), for tests and benchmarks.

Only for faults a real server will not produce on demand: 429 with Retry-After, 500s, hangs
past the client timeout, truncated and garbage bodies, truncated answers (finish_reason
length), a rate limit, and fixed latency with a fixed number of slots. Answers are plain
deterministic text (no model); the real-model tests use llama.cpp's server.

Faults follow a deterministic schedule: the fault for the n-th arrival of a given request body
is a function of (seed, body, n) only, so a run's fault pattern does not depend on timing or on
request order. `GET /admin/stats` reports what happened, including Retry-After violations
(a request retried before the wait the server asked for had passed).

Run standalone: `python tests/teachers/fault_server.py --port 8000 --latency 1 --slots 32`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response


@dataclass
class Faults:
    p429: float = 0.0
    p500: float = 0.0
    p_hang: float = 0.0
    p_truncated: float = 0.0
    p_garbage: float = 0.0
    p_length: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 5.0
    latency_s: float = 0.0
    slots: int | None = None  # requests served at once; the rest wait for a slot
    rpm_limit: float | None = None  # enforce requests/min (token bucket, burst `rpm_burst`)
    rpm_burst: float = 1.0
    status_always: int | None = None  # e.g. 401: every request fails with it
    seed: int = 0
    echo: bool = True  # answer text mentions the prompt


@dataclass
class Stats:
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    by_fault: Counter = field(default_factory=Counter)
    answered_bodies: Counter = field(default_factory=Counter)
    retry_after_violations: int = 0
    auth_headers: set = field(default_factory=set)
    first_ts: float | None = None
    last_ts: float | None = None
    ok_times: list = field(default_factory=list)
    model_checks: int = 0  # GET /v1/models (preflight checks)


def _unit(*parts: object) -> float:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class FaultServer:
    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.stats = Stats()
        self.seen: Counter = Counter()
        self.not_before: dict[str, float] = {}
        self._sem: asyncio.Semaphore | None = None
        self._bucket = (0.0, 0.0)  # (tokens, last time)
        self.app = self._build()

    def reset(self, faults: Faults) -> None:
        self.faults, self.stats, self.seen, self.not_before = faults, Stats(), Counter(), {}
        self._sem = None
        self._bucket = (faults.rpm_burst, time.monotonic())

    def _pick(self, body_key: str, n: int) -> str | None:
        f, u = self.faults, _unit(self.faults.seed, body_key, n)
        for name, p in (("429", f.p429), ("500", f.p500), ("hang", f.p_hang), ("truncated", f.p_truncated),
                        ("garbage", f.p_garbage), ("length", f.p_length)):
            if u < p:
                return name
            u -= p
        return None

    def _rate_ok(self) -> bool:
        f = self.faults
        tokens, last = self._bucket
        now = time.monotonic()
        tokens = min(f.rpm_burst, tokens + (now - last) * f.rpm_limit / 60.0)
        if tokens >= 1.0:
            self._bucket = (tokens - 1.0, now)
            return True
        self._bucket = (tokens, now)
        return False

    async def _handle(self, request: Request, chat: bool) -> Response:
        f, st = self.faults, self.stats
        raw = await request.body()
        now = time.monotonic()
        st.requests += 1
        st.first_ts = st.first_ts or now
        st.last_ts = now
        st.auth_headers.add(request.headers.get("authorization", ""))
        body = json.loads(raw)
        key = hashlib.sha256(raw).hexdigest()
        n = self.seen[key]
        self.seen[key] += 1
        if key in self.not_before and now < self.not_before[key] - 0.02:
            st.retry_after_violations += 1
        if f.status_always:
            st.by_status[f.status_always] += 1
            return JSONResponse({"error": {"message": "Incorrect API key provided: sk-abc***xyz",
                                           "type": "invalid_request_error"}}, status_code=f.status_always)
        if f.rpm_limit and not self._rate_ok():
            st.by_status[429] += 1
            return JSONResponse({"error": {"message": "rate limited"}}, status_code=429,
                                headers={"retry-after": "1"})
        fault = self._pick(key, n)
        st.by_fault[fault or "none"] += 1
        if fault == "429":
            self.not_before[key] = now + f.retry_after_s
            st.by_status[429] += 1
            return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                                headers={"retry-after": str(max(1, round(f.retry_after_s))),
                                         "retry-after-ms": str(int(f.retry_after_s * 1000))})
        if fault == "500":
            st.by_status[500] += 1
            return JSONResponse({"error": {"message": "internal error"}}, status_code=500)
        if fault == "hang":
            await asyncio.sleep(f.hang_s)
        if self._sem is None and f.slots:
            self._sem = asyncio.Semaphore(f.slots)
        if self._sem is not None:
            async with self._sem:
                await asyncio.sleep(f.latency_s)
        elif f.latency_s:
            await asyncio.sleep(f.latency_s)
        payload = self._answer(body, chat, finish="length" if fault == "length" else "stop")
        if fault == "garbage":
            st.by_status["garbage"] += 1
            return PlainTextResponse("<html><body>502 Bad Gateway</body></html>", status_code=200,
                                     media_type="application/json")
        if fault == "truncated":
            st.by_status["truncated"] += 1
            text = json.dumps(payload)
            return Response(text[: len(text) // 2], media_type="application/json")
        st.by_status[200] += 1
        st.answered_bodies[key] += 1
        st.ok_times.append(time.monotonic())
        return JSONResponse(payload)

    def _answer(self, body: dict[str, Any], chat: bool, finish: str) -> dict[str, Any]:
        if chat:
            last = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
        else:
            last = body.get("prompt", "")
        text = f"Answer: {last[:60]}" if self.faults.echo else "ok"
        # Like a tokenizer on English text: ~4 characters a token, 3 tokens of overhead a message.
        msgs = body.get("messages") or [{"content": body.get("prompt", "")}]
        prompt_tokens = sum(len(m.get("content", "")) // 4 + 3 for m in msgs) + 3
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                 "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {"id": "x", "created": int(time.time()), "model": "fault-model-2024-01", "usage": usage}
        if chat:
            return {**common, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
        return {**common, "object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await self._handle(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._handle(request, chat=False)

        @app.get("/v1/models")
        async def models() -> Response:
            # Like OpenAI/vLLM/llama.cpp: the route a client's preflight check asks (not counted
            # as a request). An always-failing server fails here too.
            self.stats.model_checks += 1
            if self.faults.status_always:
                return JSONResponse({"error": {"message": "Incorrect API key provided: sk-abc***xyz"}},
                                    status_code=self.faults.status_always)
            return JSONResponse({"object": "list", "data": [{"id": "fault-model", "object": "model"}]})

        @app.get("/admin/stats")
        async def stats() -> dict[str, Any]:
            return self.stats_dict()

        return app

    def stats_dict(self) -> dict[str, Any]:
        st = self.stats
        out = asdict(st)
        out["by_status"] = {str(k): v for k, v in st.by_status.items()}
        out["by_fault"] = dict(st.by_fault)
        out["answered_bodies"] = len(st.answered_bodies)
        out["duplicate_answers"] = sum(v - 1 for v in st.answered_bodies.values())
        out["auth_headers"] = sorted(st.auth_headers)
        out.pop("ok_times")
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run a FaultServer with uvicorn in a background thread; `.url` is its /v1 base URL."""

    def __init__(self, server: FaultServer, port: int | None = None) -> None:
        import uvicorn

        self.server = server
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(server.app, host="127.0.0.1", port=self.port, log_level="error",
                                access_log=False, timeout_keep_alive=60, backlog=4096)
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uv.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.time() + 20
        while not self._uv.started:
            if time.time() > deadline:
                raise RuntimeError("fault server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=10)


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--slots", type=int, default=None)
    ap.add_argument("--rpm-limit", type=float, default=None)
    ap.add_argument("--rpm-burst", type=float, default=1.0)
    args = ap.parse_args()
    srv = FaultServer()
    srv.reset(Faults(latency_s=args.latency, slots=args.slots, rpm_limit=args.rpm_limit, rpm_burst=args.rpm_burst))
    uvicorn.run(srv.app, host="127.0.0.1", port=args.port, log_level="error", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
