"""Benchmark: does the demo's student measurably learn? One row of docs/quality.md per run.

    python benchmarks/bench_quality.py DIR [--num N] [--steps S] [--set key=value ...]
                                       [--ifeval input_data.jsonl] [--ifeval-n 100] [--ifeval-tokens 512]

1. `protege demo DIR` through the real CLI (a fresh DIR measures everything; an existing one resumes), with
   `--set` overrides after the demo's own settings (the lever being measured): wall time and peak RSS of the
   whole command, the run's data sizes, and the verdict it printed (student vs base on the held-out split,
   judged by the teacher in both orders: the probability-weighted win rate, and the hard verdicts with ties
   split; ROUGE-L of each to the held-out answers).
2. With --ifeval: the out-of-domain check on the first N IFEval prompts (greedy, --ifeval-tokens new tokens,
   lm-eval's checker), student and base, through `protege eval` on the same run. The demo's own eval files
   are kept: they are copied aside and restored, the IFEval scores go to DIR/quality/ifeval_scores.json.

Prints one Markdown row (and DIR/quality/row.md). Quality numbers are noisy: they are benchmark results,
never test assertions.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROTEGE = [sys.executable, "-m", "protege.cli"]


def run(cmd: list[str]) -> tuple[float, str]:
    t = time.time()
    proc = subprocess.run(cmd, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return time.time() - t, proc.stdout


def lines(path: Path) -> int:
    return sum(1 for x in path.read_text(encoding="utf-8").splitlines() if x.strip()) if path.exists() else 0


def capped(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return f"{sum(1 for r in rows if r.get('hit_cap'))}/{len(rows)}"


def ifeval(d: Path, src: Path, n: int, tokens: int) -> dict[str, Any]:
    run_dir = d / "run"
    ev = run_dir / "eval"
    keep = d / "quality" / "demo_eval"
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    for name in ("scores.json", "judgements.jsonl"):
        if (ev / name).exists():
            shutil.copy2(ev / name, keep / name)
    first = d / "quality" / "ifeval.jsonl"
    rows = [x for x in src.read_text(encoding="utf-8").splitlines() if x.strip()][:n]
    first.write_text("\n".join(rows) + "\n", encoding="utf-8")
    try:
        # absolute: eval.sets are read relative to the config file, which lives in run_dir
        seconds, _ = run(PROTEGE + ["eval", "-c", str(run_dir / "config.yaml"), "--set", f"eval.sets=[{first.resolve()}]",
                                    "--set", "eval.test_split=false", "--set", f"eval.max_new_tokens={tokens}",
                                    "--set", "eval.candidates=[student, base]"])
        scores = json.loads((ev / "scores.json").read_text(encoding="utf-8"))
        shutil.copy2(ev / "scores.json", d / "quality" / "ifeval_scores.json")
    finally:
        for name in ("scores.json", "judgements.jsonl"):
            if (keep / name).exists():
                shutil.copy2(keep / name, ev / name)
    (s,) = [x for x in scores["sets"] if x.get("ifeval")]
    answers = {c: capped(ev / "answers" / f"{s['name']}__{c}.jsonl") for c in ("student", "base")}
    return {"seconds": round(seconds, 1), "scores": s["ifeval"], "capped": answers}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--num", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--ifeval", type=Path)
    ap.add_argument("--ifeval-n", type=int, default=100)
    ap.add_argument("--ifeval-tokens", type=int, default=512)
    a = ap.parse_args()
    cmd = PROTEGE + ["demo", str(a.dir)]
    cmd += ["--num", str(a.num)] if a.num else []
    cmd += ["--steps", str(a.steps)] if a.steps else []
    for s in a.sets:
        cmd += ["--set", s]
    wall, out = run(cmd)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    run_dir = a.dir / "run"
    scores = json.loads((run_dir / "eval" / "scores.json").read_text(encoding="utf-8"))
    test = next(s for s in scores["sets"] if s["name"] == "test")
    pair = next(p for p in test["pairwise"] if (p["a"], p["b"]) == ("student", "base"))
    cands = test["candidates"]
    result: dict[str, Any] = {
        "command": " ".join(["protege"] + cmd[3:]), "wall_s": round(wall, 1), "peak_rss_gib": round(peak, 2),
        "kept": lines(run_dir / "generate" / "raw.jsonl"),
        "splits": {k: lines(run_dir / "data" / f"{k}.jsonl") for k in ("train", "val", "test")},
        "pair": pair, "rouge": {c: cands[c].get("rougeL_vs_reference") for c in ("student", "base")},
        "capped": {c: capped(run_dir / "eval" / "answers" / f"test__{c}.jsonl") for c in ("student", "base")},
        "headline": scores["headline"],
    }
    if a.ifeval:
        result["ifeval"] = ifeval(a.dir, a.ifeval, a.ifeval_n, a.ifeval_tokens)
    (a.dir / "quality").mkdir(exist_ok=True)
    (a.dir / "quality" / "result.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    p = pair
    ci = p["win_rate_ties_split_ci"]
    ife = result.get("ifeval", {}).get("scores", {})
    ife_txt = (f"{ife['student']['instruction_strict']:.3f} vs {ife['base']['instruction_strict']:.3f}"
               if ife else "not run")
    sp = result["splits"]
    wci = p.get("win_rate_weighted_ci")
    weighted = (f"{p['win_rate_weighted']:.0%} [{wci[0]:.0%}-{wci[1]:.0%}]" if p.get("win_rate_weighted") is not None
                else "no probabilities")
    row = (f"| `{' '.join(a.sets) or 'defaults'}` | {sp['train']}/{sp['test']} | {wall / 60:.1f} min, {peak:.1f} GiB | "
           f"{weighted} | {p['win']:.0%} / {p['tie']:.0%} / {p['loss']:.0%} | {p['win_rate_ties_split']:.0%} "
           f"[{ci[0]:.0%}-{ci[1]:.0%}] | {p['inconsistent']:.0%} | "
           f"{result['rouge']['student']:.3f} vs {result['rouge']['base']:.3f} | "
           f"{result['capped']['student']} vs {result['capped']['base']} | {ife_txt} |")
    (a.dir / "quality" / "row.md").write_text(row + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    print(row)


if __name__ == "__main__":
    main()
