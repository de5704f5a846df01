"""`protege export MODEL --format hf|gguf|ollama [--quant f16|q8_0|q4_k_m] --out DIR`.

- hf: the adapter merged into its base (or the model folder re-saved): safetensors, tokenizer, chat
  template, generation config with the chat EOS, README.md model card.
- gguf: the same folder, staged in DIR and converted by llama.cpp's converter (`gguf.py`), quantised on
  request; then checked against the HF model with llama.cpp (`check.py`). The staging folder is removed.
- ollama: the gguf export plus a `Modelfile` beside it (`modelfile.py`), whose template is rendered both
  ways on test conversations before it is written.

The model card carries over the training run's `student/MODEL_CARD.md` (data provenance, teachers and
their terms, the governance gate's result) when MODEL came from a run; `export.json` records what was
written (sha256 of each file) and the check's results. A failed check (chat template, EOS or tokenizer
lost) leaves the files for inspection, marks export.json `ok: false` and exits 2 with the explanation.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.ship.source import Source, locate

FORMATS = ("hf", "gguf", "ollama")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", hint="Give a folder (created if missing).")
    if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")) and not force:
        raise UserError(f"--out {out} is not empty", hint="Choose an empty or new folder, or pass --force to write into it.")
    out.mkdir(parents=True, exist_ok=True)


def model_card(src: Source, fmt: str, quant: str | None, files: list[str], check: dict[str, Any] | None) -> str:
    """README.md: what was exported from what, the check, and the training record carried over."""
    tags = ["protege", "distillation"] + (["gguf"] if fmt != "hf" else []) + (["ollama"] if fmt == "ollama" else [])
    front = ["---", "library_name: " + ("transformers" if fmt == "hf" else "gguf"), "tags:"]
    front += [f"- {t}" for t in tags] + ["---", ""]
    what = "merged safetensors" if fmt == "hf" else f"GGUF ({quant})" + (" + Ollama Modelfile" if fmt == "ollama" else "")
    lines = [f"# {src.name}", "",
             f"Exported by `protege export` ({what}) on {datetime.now(timezone.utc).date().isoformat()} "
             f"from `{src.name}`" + (f" (a LoRA adapter merged into `{Path(src.base).name if src.base else '?'}`)"
                                     if src.kind == "adapter" else "") + ".", "",
             "## Files", ""] + [f"- `{f}`" for f in files] + [""]
    if check is not None:
        a = check["agreement"]
        lines += ["## Export check (llama.cpp vs the HF model)", "",
                  f"- chat template: {check['template']}", f"- EOS: {check['eos']}",
                  f"- tokenizer: {check['tokenizer']}",
                  f"- greedy answers identical for the first {check['max_new_tokens']} tokens on {a['identical']} "
                  f"of {a['prompts']} prompts", ""]
    lines += ["## How to run it", ""]
    if fmt == "hf":
        lines += ["```bash", "protege serve .   # OpenAI-compatible API", "vllm serve .      # many users", "```", ""]
    else:
        lines += ["```bash", "protege serve ./*.gguf", "python -m llama_cpp.server --model ./*.gguf"]
        lines += (["ollama create my-student -f Modelfile && ollama run my-student"] if fmt == "ollama" else [])
        lines += ["```", ""]
    lines += ["## Training record", ""]
    if src.card is not None and src.card.is_file():
        body = src.card.read_text(encoding="utf-8")
        # Demote its headings one level so they sit under this section.
        body = re.sub(r"^(#{1,5}) ", lambda m: "#" + m.group(1) + " ", body, flags=re.M)
        lines += [f"Carried over from the training run's model card (`{src.card.name}`): the training data, its "
                  "teachers and their terms, and the governance gate's result.", "", body.strip(), ""]
    else:
        lines += ["No protege training record was found beside this model, so its training data provenance and "
                  "governance status are unknown. Check the license and terms of the base model and of any data it "
                  "was trained on before you share it.", ""]
    return "\n".join(front + lines)


def _sha_files(out: Path, names: list[str]) -> dict[str, str]:
    from protege.hashing import sha256_file

    return {n: sha256_file(out / n) for n in names if (out / n).is_file()}


def run(model: str, *, fmt: str, out: Path, quant: str | None = None, base: str | None = None,
        force: bool = False, check_prompts: int = 5, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Export MODEL; returns what export.json holds. UserError (exit 2) on bad input or a failed check."""
    from protege.ship.gguf import QUANTS
    from protege.ship.merge import load_merged, save_merged

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}", hint=f"Use one of: {', '.join(FORMATS)}")
    if fmt == "hf" and quant not in (None,):
        raise UserError("--quant is for --format gguf/ollama", hint="--format hf writes the weights' own dtype.")
    quant = quant or ("f16" if fmt != "hf" else None)
    if quant is not None and quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}", hint=f"Use one of: {', '.join(QUANTS)}")
    if not 0 <= check_prompts <= 10:
        raise UserError("--check-prompts must be between 0 and 10")
    src = locate(model, base=base, want="hf")
    _prepare_out(out, force)
    t0 = time.perf_counter()
    say(f"loading {src.describe()}")
    weights, tokenizer = load_merged(src)
    record: dict[str, Any] = {"ok": True, "source": src.name, "source_kind": src.kind, "format": fmt, "quant": quant,
                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if fmt == "hf":
        save_merged(weights, tokenizer, out)
        files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in ("README.md", "export.json"))
        check = None
    else:
        stem = f"{_slug(src.name)}.{quant}"
        stage = out / f".{stem}.hf-staging"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            save_merged(weights, tokenizer, stage)
            del weights
            gguf_file = out / f"{stem}.gguf"
            say(f"converting to GGUF ({quant}) with llama.cpp's converter")
            from protege.ship.gguf import write_gguf

            write_gguf(stage, gguf_file, quant, say=say)
            files = [gguf_file.name]
            check = _check(stage, gguf_file, check_prompts, say)
            if fmt == "ollama":
                files.append(_write_modelfile(stage, tokenizer, gguf_file, out, say))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    record["files"] = _sha_files(out, files)
    record["check"] = check
    record["seconds"] = round(time.perf_counter() - t0, 1)
    problems = (check or {}).get("problems") or []
    record["ok"] = not problems
    (out / "README.md").write_text(model_card(src, fmt, quant, files, check), encoding="utf-8")
    (out / "export.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if problems:
        raise UserError("export check failed:\n  - " + "\n  - ".join(problems),
                        hint=f"The files are left in {out} for inspection (export.json has the details). Check that "
                        "the model folder's tokenizer_config.json / chat_template.jinja carry the chat template and "
                        "that generation_config.json lists the chat turn's end token as eos_token_id.")
    return record


def _check(stage: Path, gguf_file: Path, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    from protege.ship.check import CHECK_PROMPTS, check_gguf

    say(f"checking the GGUF with llama.cpp against the HF model ({n} prompts, greedy)")
    report = check_gguf(stage, gguf_file, CHECK_PROMPTS[:n])
    say(report.summary())
    return report.to_dict()


def _write_modelfile(stage: Path, tokenizer: Any, gguf_file: Path, out: Path, say: Callable[[str], None]) -> str:
    """The Modelfile beside the GGUF; its template is checked against the HF chat template first."""
    from protege.ship.merge import eos_ids
    from protege.ship.modelfile import (PROBE_CONVERSATIONS, TemplateNotExpressible, derive_template, go_template,
                                        modelfile_text, render_messages)

    if not isinstance(tokenizer.chat_template, str):
        raise UserError("--format ollama needs a chat model, and this model has no chat template",
                        hint="Use --format gguf and a raw-prompt runtime, or export an instruct model.")

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))

    try:
        wrappers = derive_template(render)
        template = go_template(wrappers)
        modelfile_text("x", template, wrappers.default_system, [], {})  # refuses text Ollama could not read
    except TemplateNotExpressible as e:
        raise UserError(f"the chat template cannot be written as an Ollama Go template: {e}",
                        hint=f"The GGUF in {out} is fine (llama.cpp reads the template from it); write the Modelfile's "
                        "TEMPLATE by hand, see docs/ship.md.") from None
    bad = [c for c in PROBE_CONVERSATIONS if render_messages(template, c, wrappers.default_system) != render(c, True)]
    if bad:
        raise UserError(f"the Go template derived from the chat template renders {len(bad)} of "
                        f"{len(PROBE_CONVERSATIONS)} test conversations differently; no Modelfile written",
                        hint="Write the Modelfile's TEMPLATE by hand, see docs/ship.md.")
    config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
    gen_cfg = json.loads((stage / "generation_config.json").read_text(encoding="utf-8")) \
        if (stage / "generation_config.json").is_file() else {}
    stops = [tokenizer.convert_ids_to_tokens(i) for i in eos_ids(gen_cfg.get("eos_token_id"), tokenizer)]
    specials = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    opener = next((s for s in sorted(specials, key=len, reverse=True) if s and wrappers.head["user"].startswith(s)), None)
    if opener and opener not in stops:
        stops.append(opener)  # stop before the model writes the next user turn itself
    params: dict[str, Any] = {"num_ctx": min(int(config.get("max_position_embeddings") or 4096), 4096)}
    if gen_cfg.get("do_sample"):
        params.update({k: gen_cfg[k] for k in ("temperature", "top_p", "top_k") if gen_cfg.get(k) is not None})
    else:
        params["temperature"] = 0.7  # what `protege chat` uses by default
    text = modelfile_text(gguf_file.name, template, wrappers.default_system, [s for s in stops if s], params,
                          header=f"Modelfile written by protege export for {gguf_file.name}.\n"
                          "ollama create NAME -f Modelfile && ollama run NAME")
    (out / "Modelfile").write_text(text, encoding="utf-8")
    say(f"wrote Modelfile (template checked on {len(PROBE_CONVERSATIONS)} conversations; stops: {', '.join(stops)})")
    return "Modelfile"
