"""`protege demo`: the whole loop offline, on a laptop CPU, in a few minutes.

It scaffolds a project (our seed tasks + the commented config), then runs the real pipeline
with small settings: the offline teacher (Qwen2.5-Coder-1.5B-Instruct through llama.cpp)
writes new tasks by self-instruct, curate dedups and splits them, SmolLM2-135M-Instruct is
fine-tuned with LoRA, and the base and fine-tuned students answer held-out prompts side by side.
Rerunning it resumes: finished stages are skipped, teacher answers come from the cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.errors import UserError

DEFAULT_TEACHER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_NUM = 20  # tasks to keep: with test 0.25, 5 held out for the verdict (--num 100 for a tighter one)
DEFAULT_STEPS = 30


def demo_overrides(num: int, steps: int, teacher: str) -> list[str]:
    """The small settings the demo runs with (everything else is the init template's)."""
    return [
        "run_dir=run",
        f"teacher.model={teacher}",
        "teacher.n_threads=2",
        f"generate.num={num}",
        "generate.tasks_per_request=5",
        "generate.sampling.temperature=0.7",
        "generate.sampling.max_tokens=1024",
        "curate.split.val=0.1",
        "curate.split.test=0.25",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.max_seq_len=512",
        "train.save_every=10",
        "train.lr=3.0e-4",
        # The verdict: student vs its base on the held-out test split, judged by the teacher in both orders
        # (one pair: two judge calls a task, so the verdict costs minutes, not the demo's whole budget).
        "eval.candidates=[student, base]",
        "eval.max_new_tokens=256",
        "eval.judge_max_tokens=64",  # the verdict comes first; the reason after it is for people reading
    ]


def run(directory: Path, *, num: int = DEFAULT_NUM, steps: int = DEFAULT_STEPS, teacher: str = DEFAULT_TEACHER,
        compare: int = 3, overrides: list[str] | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Scaffold (once) and run the pipeline in `directory`, then evaluate the student on the held-out tasks;
    return stage outcomes, the headline and a few side-by-side answers. `overrides` (`key=value`, as `--set`)
    apply after the demo's own settings."""
    from protege import models, pipeline
    from protege.config import load_config
    from protege.scaffold import init_project
    from protege.store import RunStore

    if num < 2 or steps < 1:
        raise UserError("demo: --num must be >= 2 and --steps >= 1")
    models.gguf_path(teacher)  # fails early, with the pip line, when the teacher is not installed
    if not (directory / "protege.yaml").exists():
        for path in init_project(directory):
            say(f"wrote {path}")
    else:
        say(f"{directory}: existing demo project, resuming")
    sets = demo_overrides(num, steps, teacher) + list(overrides or [])
    cfg = load_config(directory / "protege.yaml", sets)
    store = RunStore(cfg.run_dir)
    store.write_config(cfg.to_yaml())
    say(f"teacher {teacher} (llama.cpp) -> self-instruct {num} tasks -> curate -> "
        f"LoRA {steps} steps on {cfg.student.model} -> eval on held-out tasks; artifacts in {store.root}")
    stages = pipeline.run(cfg, store, say=say)
    headline = None
    if _count(store.split("test")):
        # The same pipeline again with eval switched on: the finished stages are skipped (unchanged).
        cfg = load_config(directory / "protege.yaml", sets + ["eval.in_run=true"])
        stages.update(pipeline.run(cfg, store, say=say))
        headline = json.loads(store.scores.read_text(encoding="utf-8")).get("headline")
    else:
        say("eval: skipped, no held-out tasks (the test split is empty); run with a larger --num for a verdict")
    return {"stages": stages, "run_dir": str(store.root), "headline": headline,
            "comparison": compare_answers(store, compare)}


def _count(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.exists() else 0


def compare_answers(store: Any, n: int) -> list[dict[str, str]]:
    """The first `n` held-out prompts with the teacher's answer (the split's output), the base's and the student's
    answers from `protege eval` (eval/answers/, generated through the engine and cached), and the verdict."""
    from protege import records

    rows: dict[str, dict[str, str]] = {}
    for name in ("base", "student"):
        path = store.eval_answers("test", name)
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines()[:n]:
            a = json.loads(line)
            row = rows.setdefault(a["id"], {"prompt": a["prompt"] if isinstance(a["prompt"], str) else a["prompt"][0]})
            answer = a.get("answer")
            row[name] = (answer if isinstance(answer, str) else " / ".join(answer or [])) or "(no answer)"
    teacher = {ex.prompt: ex.output for ex in records.read_examples(store.split("test"))} if rows else {}
    for row in rows.values():  # the teacher's own answer to the task, from the held-out split
        row["reference"] = teacher.get(row["prompt"], "(not found in data/test.jsonl)")
    if store.judgements.exists():
        for line in store.judgements.read_text(encoding="utf-8").splitlines():
            j = json.loads(line)
            if j.get("set") == "test" and {j.get("a"), j.get("b")} == {"student", "base"} and j["id"] in rows:
                winner = {"a": j["a"], "b": j["b"]}.get(j["winner"], "tie")
                verdict = f"{winner}" + ("" if j.get("consistent") else " (orders disagreed)")
                if j.get("preference") is not None:  # a's share; the student's whichever side it was judged on
                    share = j["preference"] if j["a"] == "student" else 1 - j["preference"]
                    verdict += f"; the judge's preference for the student over both orders: {share:.2f}"
                rows[j["id"]]["verdict"] = verdict
    return [r for r in rows.values() if all(k in r for k in ("reference", "base", "student"))]
