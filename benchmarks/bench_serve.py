"""Benchmark: `protege serve` throughput and latency, against llama.cpp's own server as the anchor.

    python benchmarks/bench_serve.py [--levels 1,4,16] [--rounds 1] [--repeats 2] [--max-tokens 32]
                                     [--servers llama-server,llamacpp,hf,hf-1] [--threads 2]

Starts every server as a subprocess on loopback and warms each up. Then for each concurrency level C, on
each server in turn (`--repeats` times, order rotated: load changes on a shared machine hit all alike),
C clients (the official `openai` SDK, async) each send `--rounds` chat requests one after the other
(greedy, `max_tokens` fixed, a different short instruction each). Reports completion tokens/s (from the
servers' own `usage`, summed, over the summed wall time) and p50/p95 request latency.

Servers, all on SmolLM2-135M-Instruct (the offline student):
- `hf`           protege serve, transformers backend, concurrent requests batched (--max-batch 16)
- `hf-1`         the same, one request at a time (--max-batch 1): the batching baseline
- `llamacpp`     protege serve --backend llamacpp on the student's packaged GGUF (Q4_1)
- `llama-server` `python -m llama_cpp.server` on the same GGUF, `--logits_all false`: the anchor
- `llama-server-default` the same with its default `logits_all=true` (not run unless named)

Goals (issue 13): llamacpp within 10 % of llama-server; hf batched >= 3x hf-1 at 16 clients.
The machine may be shared: run it when it is quiet, and read the numbers as relative (same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
STUDENT = "smollm2-135m-instruct"
QUESTIONS = [
    "Name a colour of the rainbow.", "What is 3 plus 5?", "Give one use of a hammer.", "Say hello in French.",
    "Name a large animal.", "What is the capital of Italy?", "Describe rain in a few words.",
    "Name a fruit that is yellow.", "What do bees make?", "Give a synonym for happy.", "What is ice made of?",
    "Name a musical instrument.", "How many days are in a week?", "What does a chef do?", "Name a planet.",
    "What is the opposite of up?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, port: int, threads: int) -> tuple[list[str], str]:
    from protege.models import gguf_path

    py = sys.executable
    if kind == "hf":
        return [py, "-m", "protege.cli", "serve", STUDENT, "--port", str(port), "--max-batch", "16",
                "--max-queue", "256", "--n-threads", str(threads)], STUDENT
    if kind == "hf-1":
        return [py, "-m", "protege.cli", "serve", STUDENT, "--port", str(port), "--max-batch", "1",
                "--max-queue", "256", "--n-threads", str(threads)], STUDENT
    if kind == "llamacpp":
        return [py, "-m", "protege.cli", "serve", STUDENT, "--backend", "llamacpp", "--port", str(port),
                "--n-threads", str(threads), "--n-ctx", "2048", "--max-queue", "256"], STUDENT
    if kind in ("llama-server", "llama-server-default"):
        gguf = gguf_path(STUDENT)
        cmd = [py, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port), "--host", "127.0.0.1",
               "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
               "--model_alias", STUDENT]
        # Its default logits_all=true copies every position's logits (vocab 49,152) to Python per step, which
        # protege's backend does not; the anchor does the same work with it off.
        return cmd + (["--logits_all", "false"] if kind == "llama-server" else []), STUDENT
    raise SystemExit(f"unknown server {kind}")


def wait_up(proc: subprocess.Popen, url: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


async def level(url: str, model: str, clients: int, rounds: int, max_tokens: int) -> dict:
    """C clients, each sending `rounds` requests in turn; raw numbers (latencies kept for pooling)."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=1800)
    latencies: list[float] = []
    tokens = 0

    async def one_client(i: int) -> None:
        nonlocal tokens
        for r in range(rounds):
            q = QUESTIONS[(i * rounds + r) % len(QUESTIONS)]
            t0 = time.perf_counter()
            reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                                         max_tokens=max_tokens, temperature=0,
                                                         # llama_cpp.server defaults to 1.1 (protege: none); equal
                                                         # settings give identical greedy answers, so equal work
                                                         extra_body={"repeat_penalty": 1.0})
            latencies.append(time.perf_counter() - t0)
            tokens += reply.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"tokens": tokens, "wall": wall, "latencies": latencies}


def summarise(kind: str, clients: int, runs: list[dict]) -> dict:
    lat = sorted(x for r in runs for x in r["latencies"])
    tokens, wall = sum(r["tokens"] for r in runs), sum(r["wall"] for r in runs)
    p95 = lat[min(len(lat) - 1, max(0, round(0.95 * len(lat)) - 1))]
    return {"server": kind, "clients": clients, "requests": len(lat), "completion_tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "p50_s": round(statistics.median(lat), 2), "p95_s": round(p95, 2)}


def start(kind: str, threads: int, logdir: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    cmd, model = server_command(kind, port, threads)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=(logdir / f"{kind}.log").open("wb"),
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc, f"http://127.0.0.1:{port}/v1", model


def bench(kinds: list[str], levels: list[int], rounds: int, repeats: int, max_tokens: int, threads: int,
          logdir: Path) -> list[dict]:
    """All servers up at once (idle ones cost no CPU); each level measured on each server in turn, `repeats`
    times with the order rotated, so that a change in the shared machine's load hits every server alike."""
    servers = {k: start(k, threads, logdir) for k in kinds}
    try:
        for kind, (proc, url, model) in servers.items():
            wait_up(proc, url)
            asyncio.run(level(url, model, 1, 1, max_tokens))  # warm-up (first-call allocations, caches)
        rows = []
        for c in levels:
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            for rep in range(repeats):
                order = kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]
                for kind in order:
                    _, url, model = servers[kind]
                    runs[kind].append(asyncio.run(level(url, model, c, rounds, max_tokens)))
            for kind in kinds:
                rows.append(summarise(kind, c, runs[kind]))
                print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
        for proc, _, _ in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = [f for f in ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
                return f"{name}; {os.cpu_count()} CPUs; flags: {' '.join(keep)}"
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=1, help="requests each client sends, one after the other")
    ap.add_argument("--repeats", type=int, default=2, help="measurements per server and level, interleaved")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--servers", default="llama-server,llamacpp,hf,hf-1")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of every server (torch and llama.cpp)")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows to this file")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / "protege-bench-serve"
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"# {cpu_flags()}; load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    rows = bench(args.servers.split(","), levels, args.rounds, args.repeats, args.max_tokens, args.threads, logdir)
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")
    print("\n| server | clients | requests | completion tokens/s | p50 latency | p95 latency |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']} | {r['p50_s']} s | {r['p95_s']} s |")
    by = {(r["server"], r["clients"]): r["tokens_per_s"] for r in rows}
    top = max(levels)
    if ("llamacpp", top) in by and ("llama-server", top) in by:
        for c in levels:
            print(f"llamacpp / llama-server at {c} clients: {by['llamacpp', c] / by['llama-server', c]:.2f}")
    if ("hf", top) in by and ("hf-1", top) in by:
        print(f"hf batched / hf one-at-a-time at {top} clients: {by['hf', top] / by['hf-1', top]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
