"""How long a prepared model takes to load in a fresh process (goal: < 2 s for SmolLM2-135M).

    python benchmarks/model_load_time.py [SPEC] [--runs N]

Prepares SPEC first if needed (default smollm2-135m-instruct; timed separately), then, N times, starts a
fresh Python that imports torch + transformers and loads model and tokenizer from the prepared dir with
HF_HUB_OFFLINE=1. Prints one JSON line per run and the median of each figure:
import_s (torch + transformers), model_s / tokenizer_s (first from_pretrained, which also runs
transformers' lazy imports of the model classes), load_s (their sum: "load time"), model_again_s
(from_pretrained again in the same process: reading the weights alone), process_s (whole child).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
t1 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True)
t2 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(sys.argv[1], local_files_only=True)
t3 = time.perf_counter()
del model
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True)  # lazy imports now done
t4 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "model_s": round(t2 - t1, 3), "tokenizer_s": round(t3 - t2, 3),
                  "load_s": round(t3 - t1, 3), "model_again_s": round(t4 - t3, 3),
                  "params_M": round(model.num_parameters() / 1e6, 1)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", nargs="?", default="smollm2-135m-instruct")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from protege.models import resolve

    t0 = time.perf_counter()
    path = resolve(args.spec)
    print(f"resolve({args.spec!r}) -> {path} in {time.perf_counter() - t0:.1f} s", flush=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    runs = []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["process_s"] = round(time.perf_counter() - t, 3)
        print(json.dumps(r), flush=True)
        runs.append(r)
    keys = ("import_s", "model_s", "tokenizer_s", "load_s", "model_again_s", "process_s")
    print("median:", json.dumps({k: statistics.median(r[k] for r in runs) for k in keys}))


if __name__ == "__main__":
    main()
