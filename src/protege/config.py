"""The run configuration: pydantic models mirrored 1:1 in YAML.

The names in `RunConfig` and its blocks are the contract of `shared/docs/architecture.md`
(users, docs and tests rely on them): extend freely, rename nothing.

`load_config(path, overrides)` reads a YAML file, applies `--set key.path=value` overrides,
validates everything at once and raises one `UserError` listing every problem with its YAML
path and the offending value. Paths in the file are relative to the file. Secrets are never
stored: a config names the environment variable that holds an API key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protege.errors import UserError


class _Block(BaseModel):
    """Base for every config block: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherConfig(_Block):
    """A teacher LLM (also the shape of an eval judge)."""

    kind: Literal["openai", "llamacpp", "hf", "vllm"]
    model: str = Field(description="API model name, or a model spec for llamacpp/hf/vllm")
    base_url: str | None = None
    api_key_env: str | None = Field(None, description="NAME of the env variable holding the key")
    api: Literal["chat", "completions"] = "chat"
    http: Literal["auto", "httpx", "aiohttp"] = Field(
        "auto", description="openai kind: the SDK's HTTP transport; auto = aiohttp when installed (cheaper per request)")
    max_concurrency: int = Field(16, ge=1, le=4096)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(120, gt=0)
    max_retries: int = Field(6, ge=0, le=100)
    json_mode: bool = False
    # USD per million tokens; None = not priced (the cost ledger then says "unknown").
    price_input_per_mtok: float | None = Field(None, ge=0)
    price_output_per_mtok: float | None = Field(None, ge=0)
    # Local backends (llamacpp/hf/vllm).
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)

    @field_validator("api_key_env")
    @classmethod
    def _key_is_a_name(cls, v: str | None) -> str | None:
        # Catch the classic mistake of pasting the key itself: it would end up in the run dir.
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                "never the key itself"
            )
        return v


class SamplingConfig(_Block):
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)


class GenerateConfig(_Block):
    mode: Literal["self-instruct", "respond", "explain", "self-chat"] = "self-instruct"
    num: int = Field(1000, ge=1)
    instructions: str | None = None
    budget_usd: float | None = Field(None, gt=0)
    max_requests: int | None = Field(None, ge=1)
    seed: int = 0
    sampling: SamplingConfig = SamplingConfig()
    # self-instruct
    num_prompt_tasks: int = Field(3, ge=1, le=20, description="example tasks shown per request")
    num_generated_in_prompt: int = Field(0, ge=0, le=20, description="of those, from kept tasks")
    tasks_per_request: int = Field(10, ge=1, le=50)
    # respond / explain
    output: Literal["replace", "add"] = "replace"
    system_prompts: list[str] | None = None
    # self-chat
    turns: int = Field(3, ge=1, le=50)
    drop_truncated: bool = Field(
        True, description="drop answers cut off at max_tokens (finish_reason=length) to generate/dropped.jsonl")


class SplitConfig(_Block):
    val: float = Field(0.05, ge=0, lt=1)
    test: float = Field(0.05, ge=0, lt=1)
    seed: int = 0


class CurateConfig(_Block):
    rouge_threshold: float = Field(0.7, ge=0, le=1)
    dedup_field: Literal["instruction", "output", "prompt"] = "instruction"
    dedup_mode: Literal["exact", "minhash"] = "exact"
    min_output_words: int = Field(1, ge=0)
    max_output_words: int | None = Field(None, ge=1)
    drop_refusals: bool = True
    blocklist: list[str] | None = None
    language: str | None = None
    decontaminate: list[str] = []
    decontam_ngram: int = Field(13, ge=1)
    decontam_action: Literal["drop", "flag"] = Field(
        "drop", description="drop contaminated records, or keep them marked in meta.contamination"
    )
    seeds_license: str | None = Field(
        None, description="licence of the seed tasks, for the dataset card (e.g. Apache-2.0)"
    )
    judge: TeacherConfig | None = None
    judge_threshold: int = Field(4, ge=1, le=5)
    split: SplitConfig = SplitConfig()


class StudentConfig(_Block):
    model: str = Field(description="any model spec: a named offline model, hf:ORG/NAME, gguf:PATH, a dir")


class TrainConfig(_Block):
    method: Literal["lora", "full", "qlora"] = "lora"
    data: str | None = None
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_seq_len: int = Field(1024, ge=16)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2.0e-4, gt=0)
    save_every: int = Field(100, ge=1)
    preset: Literal["auto", "cpu", "single-gpu", "multi-gpu"] = "auto"
    prompt_format: Literal["chat", "alpaca"] = "chat"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="0 = PEFT's and torchtune's default; dropout on CPU costs ~12% of a step (bernoulli)")
    target_modules: str | list[str] = "all-linear"
    grad_accum: int = Field(1, ge=1)
    token_budget: int | None = Field(None, ge=16, description="max tokens per micro-batch")
    gradient_checkpointing: bool | None = None
    bf16: bool | None = None
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_every: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 42
    fast_loss: bool = Field(True, description="loss on trained positions only, chunked (False: the model's "
                            "own full-logits loss; same values, slower, more memory)")


class EvalConfig(_Block):
    sets: list[str] = []
    candidates: list[Literal["student", "base", "teacher"]] = ["student", "base", "teacher"]
    judge: TeacherConfig | None = None
    max_prompts: int | None = Field(None, ge=1)


class TermsOverride(_Block):
    """A user's addition to, or override of, the shipped teacher terms registry."""

    id: str
    provider: str | None = None
    match: list[str]
    status: Literal["allowed", "restricted", "conditional", "unknown"]
    condition: str = ""
    source: str | None = None
    checked: str | None = None


class GovernanceConfig(_Block):
    acknowledge: list[str] = Field(
        [], description="teacher ids or model names whose terms you have read and accept"
    )
    terms: list[TermsOverride] = []


class RunConfig(_Block):
    run_dir: str
    seeds: str | None = None
    teacher: TeacherConfig | None = None
    generate: GenerateConfig = GenerateConfig()
    curate: CurateConfig = CurateConfig()
    student: StudentConfig = StudentConfig(model="smollm2-135m-instruct")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    governance: GovernanceConfig = GovernanceConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def hash(self) -> str:
        """sha256 of the canonical JSON form: what the manifest records to detect changes."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# Fields holding file paths, resolved relative to the config file's folder.
_PATH_FIELDS = [("run_dir",), ("seeds",), ("generate", "instructions"), ("train", "data")]
_PATH_LIST_FIELDS = [("eval", "sets"), ("curate", "decontaminate")]
_MODEL_FIELDS = [("teacher", "model"), ("student", "model")]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 1e-4). The value is parsed as YAML."""
    if "=" not in text:
        raise UserError(
            f"--set {text!r}: expected KEY.PATH=VALUE",
            hint="Example: --set train.lr=1e-4 --set teacher.model=gpt-4o-mini",
        )
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise UserError(f"--set {text!r}: {key!r} is not a dotted key path like train.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        # YAML 1.1 reads 1e-4 as a string; users mean a number.
        try:
            value = float(value) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value) else value
        except ValueError:
            pass
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise UserError(f"--set {text!r}: {where} is a value, not a block")
            node = child
        node[parts[-1]] = value
    return data


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        model = next((a for a in inner if issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} problem(s) in the config:"]
    for e in err.errors():
        path = _loc_to_path(e["loc"]) or "(top level)"
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(e["loc"])
            near = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            tip = f"; did you mean {near[0]!r}?" if near else ""
            lines.append(f"  - {path}: unknown key{tip} (allowed here: {', '.join(allowed)})")
        elif kind == "missing":
            lines.append(f"  - {path}: required field is missing")
        else:
            got = e.get("input")
            shown = json.dumps(got, default=str) if not isinstance(got, dict) else "{...}"
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - {path}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def validate_config(data: Any, source: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the config must be a YAML mapping (key: value), got {type(data).__name__}")
    if isinstance(data.get("teacher"), dict) and "api_key" in data["teacher"]:
        raise UserError(
            f"{source}: teacher.api_key: keys are never stored in configs",
            hint="Put the key in an environment variable and name it: teacher.api_key_env: OPENAI_API_KEY",
        )
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(
            format_validation_error(err, source),
            hint="Fix these keys in the YAML file (or the --set overrides) and run again.",
        ) from None


def _resolve_model_spec(spec: str, base: Path) -> str:
    if spec.startswith("gguf:"):
        p = Path(spec[5:]).expanduser()
        return "gguf:" + str(p if p.is_absolute() else (base / p).resolve())
    if spec.startswith(("./", "../", "~")) or (base / spec).is_dir():
        return str((base / Path(spec).expanduser()).resolve())
    return spec


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make every path field absolute, relative to the config file's folder."""

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    for path in _PATH_FIELDS:
        node: Any = cfg
        for part in path[:-1]:
            node = getattr(node, part)
        value = getattr(node, path[-1])
        if value is not None:
            setattr(node, path[-1], absolute(value))
    for path in _PATH_LIST_FIELDS:
        node = getattr(cfg, path[0])
        setattr(node, path[1], [absolute(p) for p in getattr(node, path[1])])
    for block, field in _MODEL_FIELDS:
        node = getattr(cfg, block)
        if node is None or getattr(node, "kind", None) == "openai":
            continue  # an API model name is not a path
        setattr(node, field, _resolve_model_spec(getattr(node, field), base))
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override, validate and resolve a config file. Raises UserError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file not found: {path}",
            hint="Create one with `protege init DIR`, or pass the right path with -c.",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(
            f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}",
            hint="Check indentation and quoting around that line.",
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = apply_overrides(data, overrides or [])
    cfg = validate_config(data, source=str(path))
    return resolve_paths(cfg, path.resolve().parent)
