"""`protege demo`: the whole loop offline, on a laptop CPU, in a few minutes.

It scaffolds a project (our seed tasks + the commented config), then runs the real pipeline
with small settings: the offline teacher (Qwen2.5-Coder-1.5B-Instruct through llama.cpp)
writes new tasks by self-instruct, curate dedups and splits them, SmolLM2-135M-Instruct is
fine-tuned with LoRA, and the base and fine-tuned students answer held-out prompts side by side.
Rerunning it resumes: finished stages are skipped, teacher answers come from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.errors import UserError

DEFAULT_TEACHER = "qwen2.5-coder-1.5b-instruct"


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
        "curate.split.test=0.15",
        f"train.max_steps={steps}",
        "train.batch_size=4",
        "train.max_seq_len=512",
        "train.save_every=10",
        "train.lr=3.0e-4",
    ]


def run(directory: Path, *, num: int = 12, steps: int = 20, teacher: str = DEFAULT_TEACHER,
        compare: int = 3, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Scaffold (once) and run the pipeline in `directory`; return stage outcomes and comparisons."""
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
    cfg = load_config(directory / "protege.yaml", demo_overrides(num, steps, teacher))
    store = RunStore(cfg.run_dir)
    store.write_config(cfg.to_yaml())
    say(f"teacher {teacher} (llama.cpp) -> self-instruct {num} tasks -> curate -> "
        f"LoRA {steps} steps on {cfg.student.model}; artifacts in {store.root}")
    stages = pipeline.run(cfg, store, say=say)
    rows = compare_answers(cfg.student.model, store, compare)
    return {"stages": stages, "run_dir": str(store.root), "comparison": rows}


def compare_answers(base_spec: str, store: Any, n: int) -> list[dict[str, str]]:
    """Greedy answers of the base model and the fine-tuned student on held-out prompts.

    Both answer through the teachers' engine (`kind: hf` on their directories): batched, and cached in the
    run's call log, so a rerun of the demo computes nothing again.
    """
    from protege import records
    from protege.config import TeacherConfig
    from protege.teachers import Request, complete_all

    # Held-out prompts when the splits have any (a tiny demo may not): else training prompts.
    held_out: list[records.Example] = []
    for split in ("test", "val", "train"):
        if store.split(split).exists():
            held_out = records.read_examples(store.split(split))[:n]
        if held_out:
            break
    if not held_out:
        return []
    rows: list[dict[str, str]] = [{"prompt": ex.prompt, "reference": ex.output} for ex in held_out]
    requests = [Request(messages=[{"role": "user", "content": row["prompt"]}],
                        sampling={"temperature": 0.0, "max_tokens": 96}) for row in rows]
    student = store.merged_dir if store.merged_dir.exists() else store.adapter_dir
    for name, spec in (("base", base_spec), ("student", str(student))):
        results = complete_all(TeacherConfig(kind="hf", model=spec, max_concurrency=len(requests)), requests,
                               store.calls_db)
        for row, r in zip(rows, results):
            row[name] = r.completion.text.strip() if r is not None and r.ok else f"(no answer: {r and r.error})"
    return rows
