"""Plain weights from whatever was trained: a LoRA adapter merged into its base, or a model folder re-saved.

`save_merged()` writes safetensors + tokenizer (its chat template included, also as chat_template.jinja) +
a generation config whose EOS list holds the chat turn's end token, so that any runtime loading the folder
stops where training taught the model to stop. `merged_for_serving()` merges an adapter once into protege's
cache for `serve`/`chat`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.ship.source import Source


def _base_dir(base: str) -> Path:
    from protege.models import resolve

    p = Path(base).expanduser()
    return p if (p / "config.json").is_file() else resolve(base)


def load_merged(src: Source) -> tuple[Any, Any]:
    """(model, tokenizer) with any adapter merged in (PEFT `merge_and_unload`), in the weights' own dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if src.kind == "gguf":
        raise UserError(f"{src.path} is a GGUF; transformers needs a model folder here.",
                        hint="Use the model spec gguf:PATH, which protege converts once to a folder.")
    if src.kind == "hf":
        return (AutoModelForCausalLM.from_pretrained(str(src.path), dtype="auto"),
                AutoTokenizer.from_pretrained(str(src.path)))
    from peft import PeftModel

    assert src.base is not None
    base_dir = _base_dir(src.base)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    try:
        merged = PeftModel.from_pretrained(model, str(src.path)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:
        raise UserError(f"Could not apply the LoRA adapter {src.path} to the base {src.base}: {e}",
                        hint="Is this the base it was trained on? Pass the right one with --base SPEC.") from e
    has_tok = any((src.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(str(src.path if has_tok else base_dir))
    return merged, tokenizer


def eos_ids(configured: int | list[int] | None, tokenizer: Any) -> list[int]:
    """The ids that end an answer: the generation config's `eos_token_id`, plus the tokenizer's EOS."""
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def save_merged(model: Any, tokenizer: Any, out: Path) -> None:
    """safetensors + tokenizer + chat template + generation config (EOS) into `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    ids = eos_ids(model.generation_config.eos_token_id, tokenizer)
    model.generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids
    if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    template = tokenizer.chat_template
    if isinstance(template, str) and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def _adapter_digest(src: Source) -> str:
    from protege.hashing import sha256_file

    h = hashlib.sha256(str(src.base).encode())
    for f in sorted(src.path.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "adapter_config.json"):
            h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()[:12]


def merged_for_serving(src: Source, say: Callable[[str], None] | None = None) -> Path:
    """The adapter merged into its base, saved once under `<protege cache>/merged/` (keyed by content)."""
    from protege.models import cache_dir

    target = cache_dir() / "merged" / f"{src.name}-{_adapter_digest(src)}"
    if (target / "config.json").is_file():
        return target
    if say:
        say(f"merging the adapter into {src.base} (once; cached at {target})")
    model, tokenizer = load_merged(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_merged(model, tokenizer, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
