"""The Alpaca prompt: how base models without a chat template are trained (`train.prompt_format: alpaca`) and
asked (the `hf` backend uses it for any model whose tokenizer has no chat template), so both sides agree.

Later turns are appended as more `### Instruction:` / `### Response:` blocks; a first user turn of the form
"instruction\\n\\ninput" gets Alpaca's `### Input:` section.
"""

from __future__ import annotations

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                  "further context. Write a response that appropriately completes the request.")


def render(messages: list[dict[str, str]], eos: str = "", add_generation_prompt: bool = False
           ) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of the assistant answers, each including `eos`). With `add_generation_prompt`
    and a conversation ending on a user turn, the text ends with `### Response:\\n` ready for the answer."""
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    text, spans, first = "", [], True
    for m in turns:
        if m["role"] == "user":
            if first:
                instruction, _, inp = m["content"].partition("\n\n")
                pre = system or (PREAMBLE_INPUT if inp else PREAMBLE)
                text += f"{pre}\n\n### Instruction:\n{instruction}\n\n"
                text += f"### Input:\n{inp}\n\n" if inp else ""
                first = False
            else:
                text += f"\n\n### Instruction:\n{m['content']}\n\n"
            text += "### Response:\n"
        elif m["role"] == "assistant":
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
    if not add_generation_prompt and turns and turns[-1]["role"] == "user":
        text = text.removesuffix("### Response:\n")
    return text, spans


def prompt(messages: list[dict[str, str]]) -> str:
    """The text a model continues to answer the last user turn."""
    return render(messages, add_generation_prompt=True)[0]
