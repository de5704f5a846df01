"""The eval block: candidate forms, validators, paths relative to the config file, and candidates checked
before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from protege.config import CandidateConfig, load_config
from protege.errors import UserError
from protege.evaluate.candidates import resolve
from protege.store import RunStore

FIX = Path(__file__).parent / "fixtures"


def _cfg(tmp_path: Path, body: str, overrides: list[str] | None = None):
    p = tmp_path / "p.yaml"
    p.write_text("run_dir: run\n" + body)
    return load_config(p, overrides)


def test_candidate_forms_and_paths(tmp_path: Path) -> None:
    (tmp_path / "answers.json").write_text("[]")
    cfg = _cfg(tmp_path, "eval:\n  candidates:\n    - student\n    - answers.json\n    - hf:Org/Model\n"
                         "    - {name: small, kind: llamacpp, model: ./weights/m.gguf}\n  sets: [sets/a.jsonl]\n")
    c = cfg.eval.candidates
    assert c[0] == "student" and c[1] == str(tmp_path / "answers.json") and c[2] == "hf:Org/Model"
    assert isinstance(c[3], CandidateConfig) and c[3].model == str(tmp_path / "weights" / "m.gguf")
    assert cfg.eval.sets == [str(tmp_path / "sets" / "a.jsonl")]
    assert (cfg.eval.max_new_tokens, cfg.eval.temperature, cfg.eval.bootstrap, cfg.eval.in_run) == (512, 0, 2000, False)


@pytest.mark.parametrize("body,needle", [
    ("eval: {candidates: [student, student]}", "appear twice"),
    ("eval: {candidates: []}", "candidates is empty"),
    ("eval: {candidates: [{name: teacher, kind: hf, model: x}]}", "built-in candidate"),
    ("eval: {candidates: [{name: 'bad name', kind: hf, model: x}]}", "eval.candidates"),
    ("eval: {bootstrap: 10}", "eval.bootstrap"),
    ("eval: {max_new_tokens: 0}", "eval.max_new_tokens"),
    ("eval: {judges: null}", "did you mean 'judge'"),
    ("eval: {candidates: [{name: x, kind: hf}]}", "eval.candidates[0].model: required field is missing"),
    ("eval: {candidates: [student, {name: x, kind: hf, model: m, colour: red}]}",
     "eval.candidates[1].colour: unknown key (allowed here: kind, model"),
    ("eval: {candidates: [3]}", "eval.candidates[0]: Input should be a valid string"),
])
def test_bad_eval_blocks(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(UserError) as err:
        _cfg(tmp_path, body + "\n")
    assert needle in str(err.value)


def test_candidates_that_do_not_exist(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with pytest.raises(UserError, match="no trained student"):
        resolve(_cfg(tmp_path, "eval: {candidates: [student]}\n"), store)
    with pytest.raises(UserError, match="no teacher block"):
        resolve(_cfg(tmp_path, "eval: {candidates: [teacher]}\n"), store)
    with pytest.raises(UserError, match="Unknown model"):
        resolve(_cfg(tmp_path, "eval: {candidates: [no-such-model-xyz]}\n"), store)
    with pytest.raises(UserError, match="file not found"):
        resolve(_cfg(tmp_path, "eval: {candidates: [missing_answers.json]}\n"), store)


def test_reference_file_candidate_named_after_generator(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, f"eval: {{candidates: [reference, {FIX / 'model_outputs.json'}]}}\n")
    cands = resolve(cfg, RunStore(tmp_path / "run"))
    assert [(c.name, c.role, c.is_model) for c in cands] == [("reference", "reference", False),
                                                             ("tiny_reference_model", "reference", False)]
