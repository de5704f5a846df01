"""Reading a config: YAML file, `--set key.path=value` overrides, validation, paths made absolute.

`load_config(path, overrides)` reads a YAML file, applies the overrides, validates everything at once
and raises one `UserError` listing every problem with its YAML path, the offending value and, for an
unknown key, the nearest allowed one. Paths in the file are relative to the file. Secrets are never
stored: a config names the environment variable that holds an API key.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from protege.config.schema import EVAL_RESERVED, CandidateConfig, EvalConfig, RunConfig
from protege.errors import UserError


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


# Tags pydantic adds to an error's location inside a tagged union (eval.candidates): not YAML keys.
_UNION_TAGS = ("block", "name")


def _yaml_loc(loc: tuple[Any, ...]) -> list[Any]:
    return [p for i, p in enumerate(loc) if not (p in _UNION_TAGS and i and isinstance(loc[i - 1], int))]


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in _yaml_loc(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_in(ann: Any) -> Any:
    """The first pydantic model inside an annotation (through list, Union, Annotated), else None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = RunConfig
    for part in _yaml_loc(loc)[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
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
    _resolve_eval_models(cfg.eval, base)
    return cfg


def _resolve_eval_models(ev: EvalConfig, base: Path) -> None:
    """eval.candidates (model specs, answer files, blocks) and eval.judge, relative to the config's folder."""
    out: list[str | CandidateConfig] = []
    for c in ev.candidates:
        if isinstance(c, CandidateConfig):
            if c.kind != "openai":
                c.model = _resolve_model_spec(c.model, base)
        elif c not in EVAL_RESERVED:
            p = Path(c).expanduser()
            is_file = (base / p).is_file() or p.suffix.lower() in (".json", ".jsonl", ".parquet", ".gguf")
            if is_file and not c.startswith(("hf:", "gguf:")):
                c = str(p if p.is_absolute() else (base / p).resolve())
            else:
                c = _resolve_model_spec(c, base)
        out.append(c)
    ev.candidates = out
    if ev.judge is not None and ev.judge.kind != "openai":
        ev.judge.model = _resolve_model_spec(ev.judge.model, base)


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
