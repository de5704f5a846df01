"""GGUF → safetensors conversion, and the marker that says a converted directory is complete.

Split out of :mod:`protege.models`, which decides *what* to convert and *where*; this module does the
conversion itself (dequantize with transformers' GGUF reader, set the chat-turn eos, save atomically with a
``protege-model.json`` marker). torch, transformers and gguf are imported inside :func:`convert` only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from protege.errors import UserError

__all__ = ["MARKER_NAME", "Progress", "convert", "is_prepared"]

Progress = Callable[[str, float, float], None]
"""``progress(stage_description, done, total)``: bytes while assembling/hashing, percent while converting."""

MARKER_NAME = "protege-model.json"
MARKER_FORMAT = 1


# --------------------------------------------------------------------------------------------------
# Markers
# --------------------------------------------------------------------------------------------------


def _read_marker(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(directory: Path, source_sha256: str) -> bool:
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
# GGUF → safetensors conversion
# --------------------------------------------------------------------------------------------------

_CHAT_END_CANDIDATES = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def convert(
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
            if is_prepared(target, source_sha256):  # another process finished first: keep theirs
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
