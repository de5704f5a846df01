"""Benchmark: `curate.dedup_mode: minhash` (datasketch MinHash LSH + exact ROUGE-L) at 52k and 1M.

    python benchmarks/bench_minhash.py [--cases recall52k,filter1m,exact1m,curate1m] [--n 1000000]

Data as in bench_rouge.py: the 17,387 distinct instructions of the four Alpaca subsets in
../shared/data/alpaca plus seeded near-duplicates (word dropped / inserted / swapped, case and
punctuation changed, exact copies), shuffled. Each case runs in its own subprocess, so peak RSS is
that case's own (ru_maxrss; for curate1m, the `protege curate` child's):
  recall52k  exact filter (`rouge.dedup`) vs minhash on the same 52,002 texts: kept counts, recall
             (records the exact filter drops that minhash drops too), minhash-only drops, times;
  filter1m   the minhash filter alone on --n texts (default 1,000,000);
  exact1m    the exact filter on the same --n texts, for comparison;
  curate1m   `protege curate --input FILE --no-stats` with dedup_mode: minhash through the CLI on
             --n records (instruction + the Alpaca output of the instruction it was derived from),
             timed from outside: reading, every default filter, splits, dropped.jsonl, card.
Not pinned: the goal is for 2 cores, and the filters are single-threaded anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rouge import DATA, FILES, THRESHOLD, instructions, near_duplicates  # noqa: E402

CASES = ("recall52k", "filter1m", "exact1m", "curate1m")


def texts_for(n: int) -> list[str]:
    """bench_rouge's construction: the real instructions + seeded near-duplicates, shuffled."""
    base = instructions()
    texts = base + near_duplicates(base, n - len(base))
    random.Random(7).shuffle(texts)
    return texts


def records_for(n: int) -> list[dict[str, str]]:
    """The same texts as Alpaca records; each variant gets the output of the instruction it came from
    (found by replaying bench_rouge's seeded choices: choice() and randrange() draw alike)."""
    outputs: dict[str, str] = {}
    for name in FILES:
        for rec in json.loads((DATA / name).read_text()):
            outputs.setdefault(rec["instruction"], rec["output"])
    base = instructions()
    variants = near_duplicates(base, n - len(base))
    rng = random.Random(52)  # near_duplicates' seed: replay which base text each variant came from
    sources = []
    for _ in range(len(variants)):
        k = rng.randrange(len(base))
        words = base[k].split()
        op = rng.randrange(5)
        if op == 0 and len(words) > 1:
            rng.randrange(len(words))
        elif op == 1:
            rng.randrange(len(words) + 1)
            rng.choice(["very", "the", "please", "new"])
        elif op == 2 and len(words) > 1:
            rng.randrange(len(words) - 1)
        elif op == 3:
            for _ in words:
                rng.random()
        sources.append(k)
    recs = [(t, outputs[t]) for t in base] + [(t, outputs[base[k]]) for t, k in zip(variants, sources)]
    random.Random(7).shuffle(recs)
    return [{"instruction": t, "input": "", "output": o} for t, o in recs]


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def case_recall52k(n: int) -> dict:
    from protege.curate.minhash import minhash_dedup
    from protege.rouge import dedup

    texts = texts_for(52_002)
    t0, c0 = time.perf_counter(), cpu()
    exact = dedup(texts, THRESHOLD)
    exact_s, exact_cpu = time.perf_counter() - t0, cpu() - c0
    t0, c0 = time.perf_counter(), cpu()
    kept, dropped, pairs = minhash_dedup(texts, THRESHOLD)
    mh_s, mh_cpu = time.perf_counter() - t0, cpu() - c0
    want, found = {i for i, _ in exact.dropped}, {i for i, _ in dropped}
    return {"n": len(texts), "exact_kept": len(exact.kept), "exact_dropped": len(want),
            "minhash_kept": len(kept), "minhash_dropped": len(found), "found": len(found & want),
            "recall": len(found & want) / len(want), "minhash_only": len(found - want), "pairs": pairs,
            "exact_s": exact_s, "exact_cpu_s": exact_cpu, "minhash_s": mh_s, "minhash_cpu_s": mh_cpu,
            "peak_mib": peak_mib()}


def case_filter1m(n: int) -> dict:
    from protege.curate.minhash import minhash_dedup

    texts = texts_for(n)
    base_mib = peak_mib()
    t0, c0 = time.perf_counter(), cpu()
    kept, dropped, pairs = minhash_dedup(texts, THRESHOLD)
    return {"n": n, "kept": len(kept), "pairs": pairs, "s": time.perf_counter() - t0, "cpu_s": cpu() - c0,
            "peak_mib": peak_mib(), "texts_mib": base_mib}


def case_exact1m(n: int) -> dict:
    from protege.rouge import dedup

    texts = texts_for(n)
    base_mib = peak_mib()
    t0, c0 = time.perf_counter(), cpu()
    res = dedup(texts, THRESHOLD)
    return {"n": n, "kept": len(res.kept), "s": time.perf_counter() - t0, "cpu_s": cpu() - c0,
            "peak_mib": peak_mib(), "texts_mib": base_mib}


def case_curate1m(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_minhash_") as tmp:
        src = Path(tmp) / "raw.jsonl"
        with src.open("w") as f:
            for rec in records_for(n):
                f.write(json.dumps(rec) + "\n")
        cfg = Path(tmp) / "protege.yaml"
        cfg.write_text("run_dir: run\ncurate:\n  dedup_mode: minhash\n")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "protege.cli", "curate", "-c", str(cfg), "--input", str(src),
                              "--no-stats"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        data = Path(tmp) / "run" / "data"
        kept = sum(sum(1 for _ in (data / f"{s}.jsonl").open()) for s in ("train", "val", "test"))
        dropped = [json.loads(line)["meta"]["dropped_by"] for line in (data / "dropped.jsonl").open()]
        by = {k: dropped.count(k) for k in sorted(set(dropped))}
        return {"n": n, "file_mib": src.stat().st_size / 2**20, "s": wall,
                "cpu_s": child.ru_utime + child.ru_stime, "peak_mib": child.ru_maxrss / 1024,
                "kept": kept, "dropped_by": by}


def run_case(name: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", name, "--n", str(n)], capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"case {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    model, flags = "?", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("sse4_2", "avx2", "avx512f", "avx512_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    import datasketch

    return (f"{os.cpu_count()} CPUs ({model}; flags: {' '.join(flags) or '?'}), Python "
            f"{platform.python_version()}, datasketch {datasketch.__version__}, {platform.system()} "
            f"{platform.machine()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--n", type=int, default=1_000_000, help="texts for the 1M cases")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(globals()[f"case_{args.case}"](args.n)))
        return
    if not (DATA / FILES[0]).exists():
        sys.exit(f"data not found: {DATA} (../shared/data/alpaca beside the repo)")
    print(f"machine: {machine()}; load average {os.getloadavg()}", flush=True)
    for name in args.cases.split(","):
        r = run_case(name, args.n)
        if name == "recall52k":
            print(f"recall52k: {r['n']} texts; exact keeps {r['exact_kept']} (drops {r['exact_dropped']}) in "
                  f"{r['exact_s']:.1f} s wall / {r['exact_cpu_s']:.1f} s cpu; minhash keeps {r['minhash_kept']} "
                  f"in {r['minhash_s']:.1f} s wall / {r['minhash_cpu_s']:.1f} s cpu; recall {r['recall']:.5f} "
                  f"({r['found']}/{r['exact_dropped']}), minhash-only drops {r['minhash_only']}, pairs scored "
                  f"{r['pairs']}; peak RSS {r['peak_mib']:.0f} MiB", flush=True)
        elif name in ("filter1m", "exact1m"):
            extra = f", pairs scored {r['pairs']}" if "pairs" in r else ""
            print(f"{name}: {r['n']} texts, kept {r['kept']}: {r['s']:.1f} s wall, {r['cpu_s']:.1f} s cpu; "
                  f"peak RSS {r['peak_mib']:.0f} MiB (texts alone {r['texts_mib']:.0f} MiB){extra}", flush=True)
        else:
            print(f"curate1m: `protege curate` on {r['n']} records ({r['file_mib']:.0f} MiB JSONL), kept "
                  f"{r['kept']}: {r['s']:.1f} s wall, {r['cpu_s']:.1f} s cpu; peak RSS {r['peak_mib']:.0f} MiB; "
                  f"dropped by {r['dropped_by']}", flush=True)
        print(f"  load average now {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
