"""What `protege serve|chat|export MODEL` is pointed at, found on disk.

MODEL is one of:
- a run directory (it has `student/`): its merged student (`student/merged/`), else its LoRA adapter;
- a `student/` directory of a run, an adapter directory (`adapter_config.json`), or any Hugging Face
  model directory (`config.json`);
- a `.gguf` file;
- any model spec of `protege.models` (a named offline model, `hf:ORG/NAME`, `gguf:PATH`).

The result says which weights to load (`kind`: hf directory, adapter + its base, or GGUF), how to name
the model to clients (never an absolute path), and where the training run's model card is, so that an
export carries the run's data provenance and governance status along.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protege.errors import UserError
from protege.store import RunStore

Kind = Literal["hf", "adapter", "gguf"]


@dataclass
class Source:
    """A model found from the MODEL argument."""

    kind: Kind
    path: Path  # the HF directory, the adapter directory, or the GGUF file
    spec: str  # what the user typed
    name: str  # how clients and model cards call it: a run name, a model spec, a file or folder name
    base: str | None = None  # adapter only: the base model (a directory or a model spec)
    card: Path | None = None  # the training run's MODEL_CARD.md, when there is one

    def describe(self) -> str:
        what = {"hf": "Hugging Face model", "adapter": "LoRA adapter", "gguf": "GGUF"}[self.kind]
        extra = f" on base {self.base}" if self.base else ""
        return f"{self.name}: {what} {self.path}{extra}"


def _is_hf_dir(p: Path) -> bool:
    return (p / "config.json").is_file()


def _is_adapter_dir(p: Path) -> bool:
    return (p / "adapter_config.json").is_file()


def _card_near(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def _run_base(store: RunStore) -> str | None:
    """The student's base model of a run: the resolved path training used, else the config's spec."""
    try:
        base = json.loads(store.train_config.read_text(encoding="utf-8")).get("student_base")
        if base and Path(base).is_dir():
            return str(base)
    except (OSError, ValueError):
        pass
    try:
        import yaml

        cfg = yaml.safe_load(store.config_file.read_text(encoding="utf-8")) or {}
        spec = (cfg.get("student") or {}).get("model")
        return str(spec) if spec else None
    except (OSError, ValueError, AttributeError):
        return None


def _adapter_base(adapter: Path, run_base: str | None, base_override: str | None) -> str:
    if base_override:
        return base_override
    if run_base:
        return run_base
    try:
        recorded = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"{adapter / 'adapter_config.json'} is not valid JSON: {e}") from e
    if recorded and (Path(recorded).is_dir() or not recorded.startswith("/")):
        return str(recorded)
    raise UserError(
        f"The LoRA adapter {adapter} names its base model as {recorded!r}, which is not on this machine.",
        hint="Say which base model to merge it into: --base SPEC (a named offline model, hf:ORG/NAME or a folder).",
    )


def _from_run(root: Path, spec: str, base_override: str | None) -> Source:
    store = RunStore(root)
    card = _card_near(store.model_card)
    name = root.resolve().name
    if _is_hf_dir(store.merged_dir):
        return Source("hf", store.merged_dir, spec, name, card=card)
    if _is_adapter_dir(store.adapter_dir):
        base = _adapter_base(store.adapter_dir, _run_base(store), base_override)
        return Source("adapter", store.adapter_dir, spec, name, base=base, card=card)
    raise UserError(
        f"The run {root} has no trained student yet (neither {store.merged_dir} nor {store.adapter_dir}).",
        hint=f"Train it first: protege train -c {root / 'config.yaml'} (or point at a model folder or spec).",
    )


def locate(model: str, *, base: str | None = None, want: Literal["hf", "gguf"] | None = None) -> Source:
    """Find the model MODEL names. UserError, with what was looked for, when nothing fits.

    `want="gguf"` (llama.cpp) takes a named model's packaged GGUF; `want="hf"` (transformers) takes a GGUF's
    converted folder (`protege.models` converts once, cached). A trained student has no GGUF until exported.
    """
    src = _locate(model, base, want)
    if want == "hf" and src.kind == "gguf":
        from protege.models import resolve

        return Source("hf", resolve(f"gguf:{src.path}"), src.spec, src.name, card=src.card)
    if want == "gguf" and src.kind != "gguf":
        raise UserError(
            f"--backend llamacpp needs a GGUF file, and {model} is a {src.describe().split(': ', 1)[1]}.",
            hint=f"Export it first: protege export {model} --format gguf --out DIR, then serve DIR/<name>.gguf "
            "(or use --backend hf).",
        )
    return src


def _locate(model: str, base: str | None, want: str | None) -> Source:
    if not model or not model.strip():
        raise UserError("No MODEL given.", hint="Give a run directory, a model folder, a .gguf file or a model spec.")
    p = Path(model).expanduser()
    if p.is_dir():
        if (p / "student").is_dir():
            return _from_run(p, model, base)
        if p.name == "student" and ((p / "merged").is_dir() or (p / "adapter").is_dir()):
            return _from_run(p.parent, model, base)
        if _is_adapter_dir(p):
            run_root = p.parent.parent if p.parent.name == "student" else None
            run_base = _run_base(RunStore(run_root)) if run_root is not None else None
            name = run_root.resolve().name if run_root is not None else p.resolve().name
            return Source("adapter", p, model, name, base=_adapter_base(p, run_base, base),
                          card=_card_near(p / "MODEL_CARD.md", p.parent / "MODEL_CARD.md"))
        if _is_hf_dir(p):
            run_named = p.name == "merged" and p.parent.name == "student"
            name = p.parent.parent.resolve().name if run_named else p.resolve().name
            return Source("hf", p, model, name, card=_card_near(p / "MODEL_CARD.md", p.parent / "MODEL_CARD.md"))
        raise UserError(
            f"{p} is a folder but not a run directory (no student/), a model folder (no config.json) "
            "or a LoRA adapter (no adapter_config.json).",
            hint="Point at a run directory after `protege train`, at student/merged, or at a model folder.",
        )
    if p.is_file() and p.suffix.lower() == ".gguf":
        return Source("gguf", p, model, p.stem)
    if p.exists():
        raise UserError(f"{p} is a file but not a .gguf model.", hint="Give a .gguf file, a model folder or a model spec.")
    return _from_spec(model, want)


def _from_spec(spec: str, want: str | None) -> Source:
    from protege.models import gguf_path, parse_spec, resolve

    ms = parse_spec(spec)  # UserError with the accepted forms when it is none of them
    if ms.kind == "gguf":
        assert ms.path is not None
        return Source("gguf", ms.path, spec, ms.path.stem)
    if ms.kind == "named" and want == "gguf":
        # Named models have both forms: the GGUF the package ships (llama.cpp), the converted folder (transformers).
        return Source("gguf", gguf_path(spec), spec, spec)
    return Source("hf", resolve(spec), spec, spec)
