"""Benchmark: the exact ROUGE-L near-duplicate filter against the pair-by-pair reference.

    python benchmarks/bench_rouge.py [--repeat 3]

Runs, pinned to CPU 0 where the OS allows (each case in a fresh subprocess, so peak memory is
per case):
  1. the reference loop (rouge-score, every candidate against every kept text, as Alpaca) and
     ours on the same first 1,000 distinct Alpaca instructions: per-decision time, ratio,
     decisions asserted identical;
  1b. the last 20 decisions of the full set (each against 17,367 kept texts), reference vs
     ours (``RougeDeduper.check``): the per-decision ratio at Alpaca's scale;
  2. ours on all distinct instructions of the four Alpaca subsets in ../shared/data (17,387);
  3. ours on a ~52k set: those plus seeded near-duplicates (word dropped / inserted /
     swapped, case and punctuation changed, exact copies), shuffled;
  4. end to end: ``python -c`` that imports the module, reads the JSON files and dedups the
     17,387 (start-up included), timed from outside.
Needs rouge-score (the reference) and ../shared/data/alpaca (relative to the repo root).
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "alpaca"
FILES = ["alpagasus_random_9k.json", "alpagasus_claude_t45.json",
         "alpagasus_helpfulness_t45.json", "cherry_alpaca_5_percent.json"]
THRESHOLD = 0.7


def pin() -> str:
    try:
        os.sched_setaffinity(0, {0})
        return "pinned to CPU 0"
    except (AttributeError, OSError) as e:  # not Linux, or not allowed
        return f"not pinned ({e.__class__.__name__})"


def instructions() -> list[str]:
    seen: dict[str, None] = {}
    for name in FILES:
        for rec in json.loads((DATA / name).read_text()):
            seen.setdefault(rec["instruction"])
    return list(seen)


def near_duplicates(texts: list[str], n: int, seed: int = 52) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(texts).split()
        op = rng.randrange(5)
        if op == 0 and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["very", "the", "please", "new"]))
        elif op == 2 and len(words) > 1:
            k = rng.randrange(len(words) - 1)
            words[k], words[k + 1] = words[k + 1], words[k]
        elif op == 3:
            words = [w.upper() if rng.random() < 0.5 else w.strip(".,?!") + "," for w in words]
        out.append(" ".join(words))
    return out


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def reference_kept(texts: list[str], kept_tokens: list[list[str]] | None = None) -> list[int]:
    """Alpaca's loop: score against every kept text (rouge-score), drop if the max > t."""
    from rouge_score import rouge_scorer

    tok = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)._tokenizer.tokenize
    kept_tokens = [] if kept_tokens is None else kept_tokens
    kept = []
    for i, text in enumerate(texts):
        cand = tok(text)
        scores = [rouge_scorer._score_lcs(cand, k).fmeasure for k in kept_tokens]
        if not scores or max(scores) <= THRESHOLD:
            kept.append(i)
            kept_tokens.append(cand)
    return kept


def case_reference_1000() -> dict:
    from protege.rouge import dedup

    texts = instructions()[:1000]
    t0, c0 = time.perf_counter(), cpu()
    ref = reference_kept(texts)
    ref_wall, ref_cpu = time.perf_counter() - t0, cpu() - c0
    pairs = sum(min(i, len(ref)) for i in range(len(texts)))  # an upper bound; exact if all kept
    ours, ours_cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), cpu()
        res = dedup(texts, THRESHOLD)
        ours.append(time.perf_counter() - t0)
        ours_cpu.append(cpu() - c0)
        assert res.kept == ref, "decisions differ from the reference"
    return {"n": len(texts), "kept": len(ref), "ref_s": ref_wall, "ref_cpu_s": ref_cpu,
            "ref_us_per_pair": ref_wall / pairs * 1e6, "ours_s": min(ours), "ours_all_s": ours,
            "ours_cpu_s": min(ours_cpu)}


def case_last_20() -> dict:
    from rouge_score import rouge_scorer

    from protege.rouge import RougeDeduper, dedup

    texts = instructions()
    kept = dedup(texts, THRESHOLD).kept
    assert kept == list(range(len(texts))), "expected every distinct instruction kept"
    head, tail = texts[:-20], texts[-20:]
    tok = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)._tokenizer.tokenize
    head_tokens = [tok(t) for t in head]
    t0, c0 = time.perf_counter(), cpu()
    ref = reference_kept(tail, head_tokens)
    ref_wall, ref_cpu = time.perf_counter() - t0, cpu() - c0
    d = RougeDeduper(THRESHOLD)
    for t in head:
        d.add_reference(t)
    t0, c0 = time.perf_counter(), cpu()
    ours = [i for i, t in enumerate(tail) if d.add(t) is None]
    ours_wall, ours_cpu = time.perf_counter() - t0, cpu() - c0
    assert ours == ref, "decisions differ from the reference"
    return {"n": 20, "against": len(head), "ref_s": ref_wall, "ours_s": ours_wall,
            "ref_cpu_s": ref_cpu, "ours_cpu_s": ours_cpu}


def case_full() -> dict:
    from protege.rouge import dedup

    texts = instructions()
    t0, c0 = time.perf_counter(), cpu()
    res = dedup(texts, THRESHOLD)
    return {"n": len(texts), "kept": len(res.kept), "s": time.perf_counter() - t0,
            "cpu_s": cpu() - c0, "peak_mib": peak_mib()}


def case_52k() -> dict:
    from protege.rouge import dedup

    base = instructions()
    texts = base + near_duplicates(base, 52_002 - len(base))
    random.Random(7).shuffle(texts)
    t0, c0 = time.perf_counter(), cpu()
    res = dedup(texts, THRESHOLD)
    return {"n": len(texts), "kept": len(res.kept), "s": time.perf_counter() - t0,
            "cpu_s": cpu() - c0, "peak_mib": peak_mib()}


END_TO_END = f"""
import json, resource
from protege.rouge import dedup
seen = {{}}
for name in {FILES!r}:
    for rec in json.load(open({str(DATA)!r} + '/' + name)):
        seen.setdefault(rec['instruction'])
kept = dedup(list(seen), {THRESHOLD}).kept
print(len(seen), len(kept), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_case(name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def end_to_end() -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", END_TO_END], capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - t0
    n, kept, maxrss = map(int, out.stdout.split())
    return {"n": n, "kept": kept, "s": wall, "peak_mib": maxrss / 1024}


def spread(xs: list[float], unit: str = "s", fmt: str = "{:.2f}") -> str:
    f = [fmt.format(x) for x in sorted(xs)]
    return f"best {f[0]} {unit} (runs: {', '.join(f)})"


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.machine()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs of cases 2-4 (default 3)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        pin()
        print(json.dumps(globals()[f"case_{args.case}"]()))
        return
    if not (DATA / FILES[0]).exists():
        sys.exit(f"data not found: {DATA} (../shared/data/alpaca beside the repo)")
    print(f"machine: {machine()}; {pin()}; load average {os.getloadavg()}")
    r = run_case("reference_1000")
    per_ref, per_ours = r["ref_s"] / r["n"] * 1e3, r["ours_s"] / r["n"] * 1e3
    print(f"1. first {r['n']} instructions ({r['kept']} kept), identical decisions: reference "
          f"{r['ref_s']:.1f} s ({per_ref:.2f} ms/decision, {r['ref_us_per_pair']:.1f} us/pair), "
          f"ours {spread(r['ours_all_s'], 's', '{:.4f}')} ({per_ours * 1e3:.1f} us/decision): "
          f"{per_ref / per_ours:.0f}x wall, {r['ref_cpu_s'] / r['ours_cpu_s']:.0f}x cpu time")
    r = run_case("last_20")
    print(f"1b. last {r['n']} decisions, each against {r['against']} kept, identical: reference "
          f"{r['ref_s'] / r['n'] * 1e3:.0f} ms/decision, ours {r['ours_s'] / r['n'] * 1e6:.0f} "
          f"us/decision: {r['ref_s'] / r['ours_s']:.0f}x wall, "
          f"{r['ref_cpu_s'] / r['ours_cpu_s']:.0f}x cpu time")
    full = [run_case("full") for _ in range(args.repeat)]
    print(f"2. all {full[0]['n']} distinct instructions ({full[0]['kept']} kept): dedup "
          f"{spread([x['s'] for x in full])} wall, cpu {spread([x['cpu_s'] for x in full])}; "
          f"peak RSS {max(x['peak_mib'] for x in full):.0f} MiB")
    big = [run_case("52k") for _ in range(args.repeat)]
    print(f"3. {big[0]['n']} texts with near-duplicates ({big[0]['kept']} kept): dedup "
          f"{spread([x['s'] for x in big])} wall, cpu {spread([x['cpu_s'] for x in big])}; "
          f"peak RSS {max(x['peak_mib'] for x in big):.0f} MiB")
    e2e = [end_to_end() for _ in range(args.repeat)]
    print(f"4. end to end (python start-up + import + read JSON + dedup {e2e[0]['n']}): "
          f"{spread([x['s'] for x in e2e])} wall; peak RSS {max(x['peak_mib'] for x in e2e):.0f} MiB")
    print(f"load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()
