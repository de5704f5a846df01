"""Every cross-field rule a stage would refuse is a config rule: `protege config` exits 2 before anything runs.

One case per rule, each checked through the real CLI, with the good neighbour of each bad config accepted
(so a test fails if a rule stops firing, and also if it fires too widely).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

TEACHER = "teacher: {kind: openai, model: gpt-4o-mini, base_url: 'http://127.0.0.1:9/v1'}\n"

# (rule, bad YAML, message fragment, a good neighbour)
RULES = [
    ("self-instruct shows more kept tasks than tasks",
     TEACHER + "generate: {num_prompt_tasks: 2, num_generated_in_prompt: 3}\n", "num_generated_in_prompt",
     TEACHER + "generate: {num_prompt_tasks: 3, num_generated_in_prompt: 3}\n"),
    ("respond needs instructions", TEACHER + "generate: {mode: respond}\n", "generate.instructions",
     TEACHER + "generate: {mode: respond, instructions: seeds.jsonl}\n"),
    ("explain needs instructions", TEACHER + "generate: {mode: explain}\n", "generate.instructions",
     TEACHER + "generate: {mode: self-chat}\n"),
    ("budget needs prices", TEACHER + "generate: {budget_usd: 5}\n", "budget_usd",
     TEACHER.replace("}", ", price_input_per_mtok: 0.15, price_output_per_mtok: 0.6}") + "generate: {budget_usd: 5}\n"),
    ("splits leave nothing to train on", "curate: {split: {val: 0.5, test: 0.5}}\n", "nothing to train on",
     "curate: {split: {val: 0.4, test: 0.5}}\n"),
    ("unknown language", "curate: {language: xx}\n", "curate.language", "curate: {language: de}\n"),
    ("early stopping must restore a saved checkpoint",
     "train: {early_stopping_patience: 2, save_every: 10, eval_every: 4}\n", "save_every",
     "train: {early_stopping_patience: 2, save_every: 12, eval_every: 4}\n"),
    ("qlora needs a GPU", "train: {method: qlora, preset: cpu}\n", "qlora", "train: {method: qlora}\n"),
    ("llama.cpp runs GGUF files", "teacher: {kind: llamacpp, model: 'hf:Qwen/Qwen2.5-1.5B-Instruct'}\n",
     "kind llamacpp", "teacher: {kind: hf, model: 'hf:Qwen/Qwen2.5-1.5B-Instruct'}\n"),
    ("base_url is for HTTP teachers", "teacher: {kind: llamacpp, model: smollm2-135m-instruct, base_url: 'http://x'}\n",
     "base_url", "teacher: {kind: llamacpp, model: smollm2-135m-instruct}\n"),
]


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Name a prime.", "input": "", "output": "7"}\n')
    path = tmp_path / "protege.yaml"
    path.write_text("run_dir: run\nseeds: seeds.jsonl\n" + body)
    return path


@pytest.mark.parametrize("rule,bad,fragment,good", RULES, ids=[r[0] for r in RULES])
def test_protege_config_refuses_what_a_stage_would(tmp_path: Path, rule: str, bad: str, fragment: str,
                                                    good: str) -> None:
    res = run_cli("config", "-c", str(_config(tmp_path, bad)))
    assert res.returncode == 2, (rule, res.stdout, res.stderr)
    assert fragment in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # nothing was created
    ok = run_cli("config", "-c", str(_config(tmp_path, good)))
    assert ok.returncode == 0, (rule, ok.stderr)


@pytest.mark.parametrize("body,fragment", [
    ("seeds: missing.jsonl\n", "seeds: "),
    (TEACHER + "generate: {mode: respond, instructions: nowhere.txt}\n", "generate.instructions"),
    ("train: {data: no-data.jsonl}\n", "train.data"),
    ("curate: {decontaminate: [evalset.jsonl]}\n", "curate.decontaminate[0]"),
    ("student: {model: 'gguf:missing.gguf'}\n", "student.model"),
    ("student: {model: 'hf:org/name/extra'}\n", "student.model"),
    ("teacher: {kind: llamacpp, model: ./not-a-model-dir}\n", "teacher.model"),
], ids=["seeds", "instructions", "train-data", "decontaminate", "gguf", "hf-spec", "teacher-dir"])
def test_protege_config_refuses_missing_files_and_bad_models(tmp_path: Path, body: str, fragment: str) -> None:
    path = tmp_path / "protege.yaml"
    (tmp_path / "seeds.jsonl").write_text('{"instruction": "Name a prime.", "input": "", "output": "7"}\n')
    (tmp_path / "not-a-model-dir").mkdir()
    path.write_text("run_dir: run\n" + ("seeds: seeds.jsonl\n" if not body.startswith("seeds") else "") + body)
    res = run_cli("config", "-c", str(path))
    assert res.returncode == 2, res.stdout
    assert fragment in res.stderr and "Traceback" not in res.stderr
