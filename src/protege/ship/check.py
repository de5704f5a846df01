"""Does the exported GGUF still behave like the HF model? Checked with llama.cpp itself.

A silently lost chat template or EOS is the most reported failure of GGUF exports: the model then rambles
past the end of its answer, or answers a differently formatted prompt than it was trained on. So export
loads its GGUF in llama.cpp and compares it with the HF folder it came from:

1. chat template: the template stored in the GGUF, rendered the way llama-cpp-python renders it
   (`Jinja2ChatFormatter`, what its server uses), must give the same text as the HF tokenizer's
   `apply_chat_template` on a few conversations;
2. EOS: every token the HF model stops at (its generation config's EOS list) must be an end-of-generation
   token for llama.cpp;
3. tokenizer: llama.cpp must turn each rendered prompt into the same token ids as the HF tokenizer;
4. agreement: greedy answers (first `max_new` tokens, or up to EOS) through the chat template, token by
   token, HF vs llama.cpp. Reported, not enforced: quantisation legitimately changes some answers.

1-3 failing is an export that would misbehave in every runtime: `problems` lists them and export exits 2.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protege.ship.modelfile import PROBE_CONVERSATIONS

# Our own short instructions for the greedy comparison (varied: arithmetic, lists, code, prose).
CHECK_PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Write a Python function that reverses a string.",
    "Explain what a rainbow is in two sentences.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Name four planets of the solar system.",
    "Write a haiku about autumn leaves.",
    "Why do we need to drink water?",
    "Suggest a name for a small coffee shop.",
]


@dataclass
class PromptResult:
    prompt: str
    agree: bool
    first_difference: int | None  # index of the first differing token, None when identical
    hf_tokens: int
    gguf_tokens: int
    hf_text: str
    gguf_text: str


@dataclass
class CheckReport:
    template: str  # "same" | "missing" | "different" | "none" (the model has no chat template)
    eos: str  # "ok" | "lost"
    tokenizer: str  # "same" | "different"
    problems: list[str] = field(default_factory=list)
    prompts: list[PromptResult] = field(default_factory=list)
    max_new_tokens: int = 32

    @property
    def agreement(self) -> tuple[int, int]:
        return sum(p.agree for p in self.prompts), len(self.prompts)

    def summary(self) -> str:
        a, n = self.agreement
        return (f"chat template {self.template}, EOS {self.eos}, tokenizer {self.tokenizer}; greedy answers "
                f"identical (first {self.max_new_tokens} tokens) on {a} of {n} prompts")

    def to_dict(self) -> dict[str, Any]:
        a, n = self.agreement
        return {**asdict(self), "agreement": {"identical": a, "prompts": n}}


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_gguf(hf_dir: Path, gguf: Path, prompts: list[str], *, max_new: int = 32,
               n_threads: int | None = None) -> CheckReport:
    """Compare `gguf` (through llama.cpp) with the HF model in `hf_dir`; see the module docstring."""
    import llama_cpp
    import torch
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype="auto").eval()
    threads = n_threads or os.cpu_count() or 1
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        problems: list[str] = []

        # 1. chat template
        hf_template = tok.chat_template if isinstance(tok.chat_template, str) else None
        gguf_template = llm.metadata.get("tokenizer.chat_template")
        has_template = hf_template is not None

        def hf_render(msgs: list[dict[str, str]]) -> str:
            return str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

        if not has_template:
            template = "none"
        elif not gguf_template:
            template = "missing"
            problems.append("the chat template did not survive: the GGUF carries no tokenizer.chat_template, so "
                            "llama.cpp, Ollama and LM Studio would format chats with a guessed template")
        else:
            piece = lambda t: llm.detokenize([t], special=True).decode("utf-8", "replace") if t >= 0 else ""  # noqa: E731
            fmt = Jinja2ChatFormatter(template=gguf_template, eos_token=piece(llm.token_eos()),
                                      bos_token=piece(llm.token_bos()))
            bad = [c for c in PROBE_CONVERSATIONS if fmt(messages=c).prompt != hf_render(c)]  # type: ignore[arg-type]
            template = "different" if bad else "same"
            if bad:
                problems.append(f"the chat template did not survive: llama.cpp renders {len(bad)} of "
                                f"{len(PROBE_CONVERSATIONS)} test conversations differently from the HF tokenizer, "
                                f"e.g. {fmt(messages=bad[0]).prompt!r} vs {hf_render(bad[0])!r}")  # type: ignore[arg-type]

        # 2. EOS
        stop_ids = model.generation_config.eos_token_id
        stop_ids = [] if stop_ids is None else [stop_ids] if isinstance(stop_ids, int) else list(stop_ids)
        if tok.eos_token_id is not None and tok.eos_token_id not in stop_ids:
            stop_ids.append(tok.eos_token_id)
        lost = [i for i in stop_ids if not llama_cpp.llama_vocab_is_eog(vocab, i)]
        eos = "lost" if lost or not stop_ids else "ok"
        if lost:
            names = ", ".join(f"{tok.convert_ids_to_tokens(i)!r} (id {i})" for i in lost)
            problems.append(f"EOS did not survive: the HF model stops at {names}, which llama.cpp does not treat as "
                            f"end of generation (its EOS is id {llm.token_eos()}); answers would run on past the end")

        # 3 + 4. tokenizer and greedy agreement, through the chat template when there is one
        results, tok_bad = [], 0
        for p in prompts:
            text = hf_render([{"role": "user", "content": p}]) if has_template else p
            ids = tok(text, add_special_tokens=not has_template).input_ids
            gguf_ids = llm.tokenize(text.encode("utf-8"), add_bos=not has_template, special=True)
            if gguf_ids != ids:
                tok_bad += 1
            with torch.inference_mode():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=max_new, eos_token_id=stop_ids or None,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else
                                     (stop_ids[0] if stop_ids else 0))
            hf_new = [t for t in out[0, len(ids):].tolist()]
            hf_new = hf_new[: next((i for i, t in enumerate(hf_new) if t in stop_ids), len(hf_new))]
            gg_new: list[int] = []
            gen = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0)
            try:
                for t in gen:
                    if llama_cpp.llama_vocab_is_eog(vocab, t) or len(gg_new) >= max_new:
                        break
                    gg_new.append(t)
                    if len(gg_new) >= max_new:
                        break
            finally:
                gen.close()
            diff = _first_difference(hf_new, gg_new)
            results.append(PromptResult(p, diff is None, diff, len(hf_new), len(gg_new),
                                        tok.decode(hf_new, skip_special_tokens=True),
                                        llm.detokenize(gg_new).decode("utf-8", "replace")))
        tokenizer = "different" if tok_bad else "same"
        if tok_bad:
            problems.append(f"the tokenizer did not survive: llama.cpp tokenizes {tok_bad} of {len(prompts)} "
                            "rendered prompts differently from the HF tokenizer")
        return CheckReport(template, eos, tokenizer, problems, results, max_new)
    finally:
        llm.close()
