"""Bad input, across every command: exit 2, a message naming the problem, no traceback, and the
project folder (earlier artifacts included) byte-for-byte unchanged.

A prepared project (a curated run directory: config, manifest, splits, card) is copied for each
case; the case writes its bad file, the folder is hashed, the real CLI runs, and the folder is
hashed again. No case needs a model or a live teacher (the teacher URL is a closed port, so a
case that slipped past validation would fail on the preflight with a different message).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.reliability.conftest import KEY_ENV, cli_env, tree_hash
from tests.teachers.fault_server import free_port

BOUND_S = 120  # every case must return within this (subprocess timeout); most take ~1 s


def _records(n: int = 30) -> str:
    return "".join(json.dumps({"instruction": f"Name a use of the number {i}.", "input": "",
                               "output": f"The number {i} can count {i} apples in a basket."}) + "\n"
                   for i in range(n))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with a curated run: what bad input must leave untouched."""
    p = tmp_path_factory.mktemp("project")
    (p / "good.jsonl").write_text(_records())
    (p / "instructions.txt").write_text("Say hello.\nSay goodbye.\n")
    (p / "protege.yaml").write_text(yaml.safe_dump(_base_cfg()))
    proc = run_cli("curate", "-c", str(p / "protege.yaml"), "--input", str(p / "good.jsonl"), "--no-stats",
                   cwd=p, timeout=BOUND_S)
    assert proc.returncode == 0, proc.stderr
    assert (p / "run" / "data" / "train.jsonl").exists()
    return p


_CLOSED_PORT = free_port()  # nothing listens there; fixed so every case writes the same config


def _base_cfg(**over) -> dict:
    cfg = {"run_dir": "run",
           "teacher": {"kind": "openai", "model": "m", "base_url": f"http://127.0.0.1:{_CLOSED_PORT}/v1",
                       "api_key_env": KEY_ENV, "timeout_s": 5, "max_retries": 1},
           "generate": {"mode": "respond", "instructions": "instructions.txt", "num": 2}}
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


_DELETE = object()


def _cfg(p: Path, name: str = "bad.yaml", **over) -> str:
    (p / name).write_text(yaml.safe_dump(_base_cfg(**over)))
    return str(p / name)


def _write(p: Path, name: str, data: str | bytes) -> str:
    (p / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p / name)


def _loop(p: Path, name: str = "loop") -> str:
    (p / f"{name}-a").symlink_to(p / f"{name}-b")
    (p / f"{name}-b").symlink_to(p / f"{name}-a")
    return str(p / f"{name}-a")


_BIG_LINE = b'{"instruction": "' + b"x" * (50 * 1024 * 1024) + b'"'  # 50 MB, one line, never closed

# id -> builds the case in the project folder: (argv, a phrase the message must contain)
Case = Callable[[Path], tuple[list[str], str]]
CASES: dict[str, Case] = {
    # -- config (every stage command loads it the same way) ----------------------------------
    "config-missing": lambda p: (["config", "-c", str(p / "nope.yaml")], "config file not found"),
    "config-invalid-yaml": lambda p: (["config", "-c", _write(p, "c.yaml", "run_dir: [unclosed\n")], "not valid YAML"),
    "config-not-a-mapping": lambda p: (["config", "-c", _write(p, "c.yaml", "- a\n- b\n")], "YAML mapping"),
    "config-empty-file": lambda p: (["config", "-c", _write(p, "c.yaml", "")], "run_dir"),
    "config-non-utf8": lambda p: (["config", "-c", _write(p, "c.yaml", b"run_dir: \xff\xfe\n")], "UTF-8"),
    "config-unknown-key": lambda p: (["config", "-c", _cfg(p, **{"train.epochz": 2})], "did you mean 'epochs'"),
    "config-wrong-type": lambda p: (["config", "-c", _cfg(p, **{"train.epochs": "many"})], "train.epochs"),
    "config-negative-lr": lambda p: (["config", "-c", _cfg(p, **{"train.lr": -1})], "train.lr"),
    "config-absurd-concurrency": lambda p: (["config", "-c", _cfg(p, **{"teacher.max_concurrency": 10**9})],
                                            "teacher.max_concurrency"),
    "config-zero-num": lambda p: (["config", "-c", _cfg(p, **{"generate.num": 0})], "generate.num"),
    "config-api-key-inline": lambda p: (["config", "-c", _cfg(p, **{"teacher.api_key": "sk-123"})],
                                        "keys are never stored"),
    "config-api-key-env-is-a-key": lambda p: (["config", "-c", _cfg(p, **{"teacher.api_key_env": "sk-abc-123"})],
                                              "NAME of an environment variable"),
    "config-unknown-teacher-kind": lambda p: (["config", "-c", _cfg(p, **{"teacher.kind": "gpt"})], "teacher.kind"),
    "config-splits-leave-nothing": lambda p: (["config", "-c", _cfg(p, **{"curate.split": {"val": 0.6, "test": 0.5}})],
                                              "nothing to train on"),
    "config-set-malformed": lambda p: (["config", "-c", _cfg(p), "--set", "train.lr"], "KEY.PATH=VALUE"),
    "config-set-wrong-type": lambda p: (["config", "-c", _cfg(p), "--set", "train.batch_size=-3"],
                                        "train.batch_size"),
    "config-is-a-directory": lambda p: (["config", "-c", str(p / "run")], "config file not found"),
    "config-symlink-loop": lambda p: (["config", "-c", _loop(p)], "config file not found"),
    # -- generate ------------------------------------------------------------------------------
    "generate-instructions-missing": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": "missing.txt"})], "missing.txt"),
    "generate-instructions-empty": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": _write(p, "empty.jsonl", "")})], "empty.jsonl"),
    "generate-instructions-malformed-jsonl": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": _write(p, "bad.jsonl", '{"instruction": "a"\n')})],
        "bad.jsonl"),
    "generate-instructions-non-utf8": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": _write(p, "bin.txt", b"hello \xff\xfe\x00 world\n")})],
        "bin.txt"),
    "generate-instructions-50mb-line": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": _write(p, "big.jsonl", _BIG_LINE)})], "big.jsonl"),
    "generate-seeds-missing-fields": lambda p: (
        ["generate", "-c", _cfg(p, seeds=_write(p, "seeds.jsonl", '{"instruction": "only this"}\n'),
                                **{"generate.mode": "self-instruct", "generate.instructions": None})], "seed"),
    "generate-api-key-env-unset": lambda p: (
        ["generate", "-c", _cfg(p, **{"teacher.api_key_env": "PROTEGE_NO_SUCH_KEY_VAR"})], "PROTEGE_NO_SUCH_KEY_VAR"),
    "generate-respond-without-instructions": lambda p: (
        ["generate", "-c", _cfg(p, **{"generate.instructions": None})], "generate.instructions"),
    "generate-run-dir-under-a-file": lambda p: (
        ["generate", "-c", _cfg(p, run_dir=_write(p, "afile", "x") + "/run")], "afile"),
    "generate-run-dir-symlink-loop": lambda p: (["generate", "-c", _cfg(p, run_dir=_loop(p))], "loop-a"),
    "curate-run-dir-not-creatable": lambda p: (["curate", "-c", _cfg(p, run_dir="/proc/protege-run"),
                                                "--input", str(p / "good.jsonl")], "/proc/protege-run"),
    # -- curate --------------------------------------------------------------------------------
    "curate-input-missing": lambda p: (["curate", "-c", _cfg(p, "protege.yaml"), "--input", str(p / "no.jsonl")],
                                       "no.jsonl"),
    "curate-input-empty": lambda p: (["curate", "-c", _cfg(p, "protege.yaml"), "--input", _write(p, "e.jsonl", "")],
                                     "e.jsonl"),
    "curate-input-malformed-json": lambda p: (
        ["curate", "-c", _cfg(p, "protege.yaml"), "--input", _write(p, "b.json", '[{"instruction": "a",')], "b.json"),
    "curate-input-missing-fields": lambda p: (
        ["curate", "-c", _cfg(p, "protege.yaml"), "--input", _write(p, "f.jsonl", '{"foo": 1}\n{"bar": 2}\n')],
        "f.jsonl"),
    "curate-input-wrong-field-types": lambda p: (
        ["curate", "-c", _cfg(p, "protege.yaml"), "--input",
         _write(p, "t.jsonl", '{"instruction": 5, "input": [], "output": {"a": 1}}\n')], "t.jsonl"),
    "curate-input-non-utf8": lambda p: (
        ["curate", "-c", _cfg(p, "protege.yaml"), "--input", _write(p, "n.jsonl", b'{"instruction": "\xff"}\n')],
        "n.jsonl"),
    "curate-input-50mb-line": lambda p: (["curate", "-c", _cfg(p, "protege.yaml"), "--input",
                                          _write(p, "big.jsonl", _BIG_LINE)], "big.jsonl"),
    "curate-input-is-a-directory": lambda p: (["curate", "-c", _cfg(p, "protege.yaml"), "--input", str(p / "run")],
                                              "run"),
    "curate-input-symlink-loop": lambda p: (["curate", "-c", _cfg(p, "protege.yaml"), "--input", _loop(p)],
                                            "loop-a"),
    # -- train (refused before any model is loaded) ---------------------------------------------
    "train-data-missing": lambda p: (["train", "-c", _cfg(p, **{"train.data": "nodata.jsonl"})], "nodata.jsonl"),
    "train-data-malformed": lambda p: (
        ["train", "-c", _cfg(p, **{"train.data": _write(p, "td.jsonl", "{not json}\n")})], "td.jsonl"),
    "train-resume-without-checkpoint": lambda p: (["train", "-c", _cfg(p, "protege.yaml"), "--resume"],
                                                  "no complete checkpoint"),
    "train-negative-seq-len": lambda p: (["train", "-c", _cfg(p, **{"train.max_seq_len": -5})], "train.max_seq_len"),
    # -- dedup / data / models / init ----------------------------------------------------------
    "dedup-src-missing": lambda p: (["dedup", str(p / "none.jsonl"), str(p / "out.jsonl")], "none.jsonl"),
    "dedup-dst-exists": lambda p: (["dedup", str(p / "good.jsonl"), str(p / "good.jsonl")], "already exists"),
    "dedup-dst-under-a-file": lambda p: (["dedup", str(p / "good.jsonl"), _write(p, "plain", "x") + "/out.jsonl"],
                                         "plain"),
    "data-validate-bad-records": lambda p: (["data", "validate", _write(p, "v.jsonl", '{"instruction": ""}\n')],
                                            "v.jsonl"),
    "data-convert-unknown-format": lambda p: (["data", "convert", str(p / "good.jsonl"), str(p / "o.json"),
                                               "--to", "yaml"], "yaml"),
    "data-convert-same-file": lambda p: (["data", "convert", str(p / "good.jsonl"), str(p / "good.jsonl"), "--to",
                                          "alpaca", "--force"], "same file"),
    "models-prepare-unknown": lambda p: (["models", "prepare", "no-such-model-xyz"], "no-such-model-xyz"),
    "models-prepare-missing-gguf": lambda p: (["models", "prepare", f"gguf:{p / 'none.gguf'}"], "none.gguf"),
    "init-into-a-file": lambda p: (["init", _write(p, "notadir", "x")], "notadir"),
}


def _check(p: Path, argv: list[str], phrase: str) -> None:
    before = tree_hash(p)
    proc = run_cli(*argv, cwd=p, env=cli_env(), timeout=BOUND_S)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error" in err.lower() and phrase in err, proc.stderr[-3000:]
    assert tree_hash(p) == before  # earlier artifacts (and the bad input itself) untouched


def _copy(project: Path, tmp_path: Path) -> Path:
    """The prepared project as if it had been made at tmp_path/p (config.yaml holds absolute paths)."""
    p = tmp_path / "p"
    shutil.copytree(project, p, symlinks=True)
    for f in (p / "run" / "config.yaml", p / "run" / "manifest.json"):
        f.write_text(f.read_text().replace(str(project), str(p)))
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_a_message_and_changes_nothing(case, project, tmp_path):
    p = _copy(project, tmp_path)
    argv, phrase = CASES[case](p)
    _check(p, argv, phrase)


@pytest.fixture(scope="module")
def small_mounts(tmp_path_factory):
    """A full and a read-only file system (tmpfs), where this machine allows mounting (root in a
    privileged container); skipped elsewhere."""
    base = tmp_path_factory.mktemp("mounts")
    full, ro = base / "full", base / "ro"
    full.mkdir()
    ro.mkdir()
    mounted = []
    try:
        for target, opts in ((full, "size=16k"), (ro, "ro,size=16k")):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:100]})")
            mounted.append(target)
        fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)  # fill it up
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield full, ro
    finally:
        for target in mounted:
            subprocess.run(["umount", str(target)], capture_output=True)


def test_disk_full_is_exit_2_naming_the_path(project, tmp_path, small_mounts):
    full, _ = small_mounts
    p = _copy(project, tmp_path)
    _check(p, ["data", "convert", str(p / "good.jsonl"), str(full / "out.jsonl"), "--to", "alpaca"],
           "no space left")
    _check(p, ["curate", "-c", _cfg(p, run_dir=str(full / "run")), "--input", str(p / "good.jsonl"),
               "--no-stats"], "no space left")


def test_read_only_file_system_is_exit_2_naming_the_path(project, tmp_path, small_mounts):
    _, ro = small_mounts
    p = _copy(project, tmp_path)
    _check(p, ["generate", "-c", _cfg(p, run_dir=str(ro / "run"))], "read-only")
    _check(p, ["dedup", str(p / "good.jsonl"), str(ro / "out.jsonl")], "read-only")


def test_converting_onto_a_special_file_is_refused(project, tmp_path):
    p = _copy(project, tmp_path)
    os.mkfifo(p / "pipe")
    _check(p, ["data", "convert", str(p / "good.jsonl"), str(p / "pipe"), "--to", "alpaca", "--force"], "pipe")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
