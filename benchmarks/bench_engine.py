"""Benchmarks of the teacher engine (issue 3). Results go to docs/benchmarks.md by hand.

    .venv/bin/python benchmarks/bench_engine.py [--quick]

1. overhead: requests/s with the cache on (every answer committed to SQLite), (a) against an
   instant in-process teacher (the engine alone), (b) a rerun served from the cache, (c) through
   the openai SDK (one AsyncOpenAI client, one keep-alive pool) against an instant local HTTP
   server: a minimal raw asyncio HTTP/1.1 keep-alive server in a subprocess (`--serve PORT`,
   below) that answers every POST with one fixed chat.completion, so that the row measures the
   client, not the server; with the SDK's default httpx2 transport and, where aiohttp is
   installed, its aiohttp transport. Each row: the median of `--repeats` runs with min..max, and
   CPU milliseconds a request of the client (and of the server) process, which are much less
   sensitive than wall-clock rates to other jobs sharing the machine.
2. throughput: a server with 1 s latency and 32 slots (capacity 32 req/s): the engine with
   max_concurrency 32 vs the Alpaca pattern (a batch of 5 prompts, wait for all, repeat).
3. limiter: requests_per_minute 600 against a server enforcing 600/min (token bucket with a
   1-second burst, as providers quantize limits): 429s seen and the achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
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


# -- the instant server -------------------------------------------------------------------------
# Hand-written on purpose: a FastAPI/uvicorn server costs more CPU a request than the client
# under test, on the same 2 cores. This one parses just enough HTTP/1.1 (headers, Content-Length
# body, keep-alive, pipelining) to answer each request with one fixed, valid reply.
_REPLY = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": "instant",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}).encode()
_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(_REPLY)).encode() + b"\r\n\r\n" + _REPLY)


class _InstantHTTP(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        buf, replies = self.buf + data, 0
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(buf) < end + 4 + length:
                break
            buf, replies = buf[end + 4 + length:], replies + 1
        self.buf = buf
        if replies:
            self.transport.write(_RESPONSE * replies)  # type: ignore[attr-defined]


async def _serve(port: int) -> None:
    srv = await asyncio.get_running_loop().create_server(_InstantHTTP, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


def instant_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("instant server did not start")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _spread(runs: list[dict]) -> dict:
    """Median and min..max of each measure over repeated runs."""
    out = {}
    for k in runs[0]:
        vals = sorted(r[k] for r in runs)
        out[k] = f"{vals[len(vals) // 2]} ({vals[0]}..{vals[-1]})" if len(vals) > 1 else vals[0]
    return out


async def _http_run(url: str, pid: int, http: str, n: int, concurrency: int, tmp: Path, tag: str) -> dict:
    teacher = OpenAITeacher(model="m", base_url=url, timeout_s=30, max_connections=concurrency, http=http)
    log = CallLog(tmp / f"{tag}.sqlite")
    eng = Engine(teacher, log, max_concurrency=concurrency)
    await drain(eng, reqs(50, tag + "-warmup"))  # connections opened, code paths warm
    c0, s0 = time.process_time(), cpu_s(pid)
    dt, ok = await drain(eng, reqs(n, tag))
    c1, s1 = time.process_time(), cpu_s(pid)
    await teacher.aclose()
    log.close()
    if ok != n:
        raise RuntimeError(f"{tag}: only {ok}/{n} answered")
    return {"req_s": round(ok / dt), "client_cpu_ms": round(1000 * (c1 - c0) / n, 2),
            "server_cpu_ms": round(1000 * (s1 - s0) / n, 2)}


async def overhead(n: int, tmp: Path, repeats: int, concurrency: int) -> dict:
    out: dict = {"load_avg_before": os.getloadavg()[0]}
    alone, hits = [], []
    for i in range(repeats):
        log = CallLog(tmp / f"a{i}.sqlite")
        c0 = time.process_time()
        dt, ok = await drain(Engine(Instant(), log, max_concurrency=concurrency), reqs(n, f"a{i}"))
        alone.append({"req_s": round(ok / dt), "cpu_ms": round(1000 * (time.process_time() - c0) / n, 3)})
        dt, ok = await drain(Engine(Instant(), log, max_concurrency=concurrency), reqs(n, f"a{i}"))
        hits.append({"req_s": round(ok / dt)})
        log.close()
    out["engine_only"], out["cache_hits"] = _spread(alone), _spread(hits)
    transports = ["httpx"]
    try:
        import aiohttp  # noqa: F401
        transports.append("aiohttp")
    except ImportError:
        out["http_sdk_aiohttp"] = "skipped: pip install 'openai[aiohttp]'"
    proc, url = instant_server()
    try:
        runs: dict[str, list[dict]] = {t: [] for t in transports}
        for i in range(repeats):  # interleaved, so both transports see the same machine load
            for http in transports:
                runs[http].append(await _http_run(url, proc.pid, http, n // 2, concurrency, tmp, f"{http}{i}"))
        for http in transports:
            out[f"http_sdk_{http}"] = _spread(runs[http])
    finally:
        proc.terminate()
        proc.wait()
    out["load_avg_after"] = os.getloadavg()[0]
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


async def main(quick: bool, repeats: int, concurrency: int, only_overhead: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    print("overhead:", await overhead(1000 if quick else 4000, tmp, repeats, concurrency), flush=True)
    if only_overhead:
        return
    print("throughput:", await throughput(160 if quick else 640, 40 if quick else 160, tmp), flush=True)
    print("limiter:", await limiter(20 if quick else 90, tmp), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each overhead row (median, min..max)")
    ap.add_argument("--concurrency", type=int, default=16, help="max_concurrency of the overhead rows")
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--serve", type=int, metavar="PORT", help="run the instant HTTP server (internal)")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
    else:
        asyncio.run(main(args.quick, args.repeats, args.concurrency, args.overhead_only))
