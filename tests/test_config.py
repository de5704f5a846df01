"""The config contract: YAML <-> pydantic 1:1, overrides, all problems reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protege.config import RunConfig, load_config, parse_override
from protege.errors import UserError
from protege.scaffold import template_text
from tests.conftest import run_cli

CONTRACT = """
run_dir: runs/my-student
seeds: seeds.jsonl
teacher:
  kind: openai
  model: gpt-4o-mini
  base_url: https://api.openai.com/v1
  api_key_env: OPENAI_API_KEY
  max_concurrency: 16
  requests_per_minute: null
  tokens_per_minute: null
  timeout_s: 120
  max_retries: 6
generate:
  mode: self-instruct
  num: 1000
  instructions: null
  budget_usd: null
  max_requests: null
curate:
  rouge_threshold: 0.7
student:
  model: smollm2-135m-instruct
train:
  method: lora
  data: null
  epochs: 3
  max_steps: null
  max_seq_len: 1024
  batch_size: 8
  lr: 2.0e-4
  save_every: 100
eval:
  sets: []
  candidates: [student, base, teacher]
  judge: null
  max_prompts: null
"""


def write(tmp_path: Path, text: str, name: str = "protege.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_contract_skeleton_loads_with_every_name(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CONTRACT))
    assert cfg.teacher is not None and cfg.teacher.model == "gpt-4o-mini"
    assert cfg.generate.mode == "self-instruct" and cfg.generate.num == 1000
    assert cfg.curate.rouge_threshold == 0.7
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.train.save_every == 100
    assert cfg.eval.candidates == ["student", "base", "teacher"]
    # paths are relative to the config file
    assert cfg.run_dir == str((tmp_path / "runs/my-student").resolve())
    assert cfg.seeds == str((tmp_path / "seeds.jsonl").resolve())
    # an API model name is not turned into a path
    assert cfg.teacher.model == "gpt-4o-mini"


def test_yaml_mirrors_pydantic_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CONTRACT))
    again = RunConfig.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.hash() == cfg.hash()


def test_init_template_is_a_valid_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, template_text("protege.yaml")))
    assert cfg.teacher is not None and cfg.teacher.kind == "llamacpp"
    assert cfg.student.model == "smollm2-135m-instruct"


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, CONTRACT), ["train.lr=1e-4", "generate.num=5",
                                                 "teacher.model=other", "eval.candidates=[student]"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.generate.num == 5
    assert cfg.teacher is not None and cfg.teacher.model == "other"
    assert cfg.eval.candidates == ["student"]
    assert parse_override("train.max_steps=null") == (["train", "max_steps"], None)


@pytest.mark.parametrize("bad", ["train.lr", "=3", "train..lr=1", "a b=1"])
def test_bad_override_is_a_user_error(bad: str) -> None:
    with pytest.raises(UserError):
        parse_override(bad)


def test_every_problem_reported_at_once_with_yaml_paths(tmp_path: Path) -> None:
    text = CONTRACT.replace("  save_every: 100", "  save_every: 100\n  lerning_rate: 3")
    text = text.replace("  batch_size: 8", "  batch_size: eight")
    text = text.replace("  kind: openai\n", "")
    with pytest.raises(UserError) as exc:
        load_config(write(tmp_path, text))
    msg = str(exc.value)
    assert "train.lerning_rate: unknown key" in msg
    assert "train.batch_size" in msg and '"eight"' in msg
    assert "teacher.kind: required field is missing" in msg
    assert "3 problem(s)" in msg


def test_cli_rejects_bad_config_exit_2_no_traceback(tmp_path: Path) -> None:
    text = CONTRACT.replace("run_dir: runs/my-student\n", "").replace("  epochs: 3", "  epochs: 3\n  colour: blue")
    text = text.replace("  max_concurrency: 16", "  max_concurrency: many")
    cfg = write(tmp_path, text)
    proc = run_cli("config", "-c", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for path in ("run_dir", "train.colour", "teacher.max_concurrency"):
        assert path in proc.stderr


def test_secrets_are_never_accepted(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="api_key_env"):
        load_config(write(tmp_path, CONTRACT.replace("api_key_env: OPENAI_API_KEY", "api_key: sk-abc")))
    with pytest.raises(UserError, match="NAME of an environment variable"):
        load_config(write(tmp_path, CONTRACT.replace("api_key_env: OPENAI_API_KEY", "api_key_env: sk-proj-123abc")))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="line 3"):
        load_config(write(tmp_path, "run_dir: x\ntrain:\n\tlr: 1\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
