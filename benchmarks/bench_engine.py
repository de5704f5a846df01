"""Benchmarks of the teacher engine (issue 3). Results go to docs/benchmarks.md by hand.

    .venv/bin/python benchmarks/bench_engine.py [--quick]

1. overhead: requests/s with the cache on (every answer committed to SQLite), (a) against an
   instant in-process teacher (the engine alone), (b) through the openai SDK against an
   instant local HTTP server (a subprocess), (c) a rerun served from the cache.
2. throughput: a server with 1 s latency and 32 slots (capacity 32 req/s): the engine with
   max_concurrency 32 vs the Alpaca pattern (a batch of 5 prompts, wait for all, repeat).
3. limiter: requests_per_minute 600 against a server enforcing 600/min (token bucket with a
   1-second burst, as providers quantize limits): 429s seen and the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from protege.teachers.base import Completion, Request  # noqa: E402
from protege.teachers.cache import CallLog  # noqa: E402
from protege.teachers.engine import Engine  # noqa: E402
from protege.teachers.openai_compat import OpenAITeacher  # noqa: E402
from tests.teachers.fault_server import free_port  # noqa: E402


class Instant:
    info = {"kind": "bench", "endpoint": "in-process", "model": "instant"}

    async def complete(self, request: Request) -> Completion:
        return Completion("ok", "stop", 10, 1, "instant")

    async def aclose(self) -> None:
        pass


def server(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/teachers/fault_server.py"), "--port", str(port), *args])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/admin/stats", timeout=1)
            return proc, url + "/v1"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url.replace("/v1", "/admin/stats")).read())


def reqs(n: int, tag: str) -> list[Request]:
    return [Request(messages=[{"role": "user", "content": f"{tag} prompt {i}"}], sampling={"max_tokens": 8})
            for i in range(n)]


async def drain(engine: Engine, requests: list[Request]) -> tuple[float, int]:
    t0, ok = time.perf_counter(), 0
    async for r in engine.map(requests):
        ok += r.ok
    return time.perf_counter() - t0, ok


async def overhead(n: int, tmp: Path) -> dict:
    out = {}
    log = CallLog(tmp / "a.sqlite")
    dt, ok = await drain(Engine(Instant(), log, max_concurrency=64), reqs(n, "a"))
    out["engine_only_req_s"] = round(ok / dt)
    dt, ok = await drain(Engine(Instant(), log, max_concurrency=64), reqs(n, "a"))
    out["cache_hits_req_s"] = round(ok / dt)
    log.close()
    proc, url = server()
    try:
        teacher = OpenAITeacher(model="m", base_url=url, timeout_s=30, max_connections=64)
        log = CallLog(tmp / "b.sqlite")
        m = n // 2
        dt, ok = await drain(Engine(teacher, log, max_concurrency=64), reqs(m, "b"))
        out["http_sdk_req_s"] = round(ok / dt)
        out["http_ok"] = f"{ok}/{m}"
        await teacher.aclose()
        log.close()
    finally:
        proc.terminate()
    return out


async def throughput(n_engine: int, n_alpaca: int, tmp: Path) -> dict:
    proc, url = server("--latency", "1", "--slots", "32")
    out = {}
    try:
        teacher = OpenAITeacher(model="m", base_url=url, timeout_s=60, max_connections=64)
        dt, ok = await drain(Engine(teacher, CallLog(tmp / "t1.sqlite"), max_concurrency=32), reqs(n_engine, "e"))
        out["engine_req_s"] = round(ok / dt, 2)
        out["engine_pct_of_capacity"] = round(100 * ok / dt / 32, 1)
        eng = Engine(teacher, CallLog(tmp / "t2.sqlite"), max_concurrency=5)
        t0, ok = time.perf_counter(), 0
        pending = reqs(n_alpaca, "alpaca")
        for i in range(0, len(pending), 5):  # the Alpaca loop: a batch of 5, wait for all, repeat
            results = await asyncio.gather(*(eng.complete(r) for r in pending[i:i + 5]))
            ok += sum(r.ok for r in results)
        alpaca = ok / (time.perf_counter() - t0)
        out["alpaca_req_s"] = round(alpaca, 2)
        out["speedup_vs_alpaca"] = round(out["engine_req_s"] / alpaca, 1)
        await teacher.aclose()
    finally:
        proc.terminate()
    return out


async def limiter(seconds: float, tmp: Path) -> dict:
    proc, url = server("--rpm-limit", "600", "--rpm-burst", "10")
    try:
        teacher = OpenAITeacher(model="m", base_url=url, timeout_s=30)
        n = int(600 * seconds / 60)
        eng = Engine(teacher, CallLog(tmp / "l.sqlite"), max_concurrency=32, requests_per_minute=600, max_retries=0)
        dt, ok = await drain(eng, reqs(n, "l"))
        st = stats(url)
        await teacher.aclose()
    finally:
        proc.terminate()
    return {"requests": n, "ok": ok, "server_429s": st["by_status"].get("429", 0),
            "achieved_rpm": round(60 * ok / dt, 1), "pct_of_600": round(100 * ok / dt / 10, 1)}


async def main(quick: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    print("overhead:", await overhead(1000 if quick else 4000, tmp), flush=True)
    print("throughput:", await throughput(160 if quick else 640, 40 if quick else 160, tmp), flush=True)
    print("limiter:", await limiter(20 if quick else 90, tmp), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    asyncio.run(main(ap.parse_args().quick))
