"""Training data: examples -> token ids + label masks, token-budget batches, padding collator.

Why hand-written: the loss must fall on assistant tokens only (every assistant turn, each one's
end-of-turn/EOS token included) and SmolLM2's chat template has no `{% generation %}` markers, so
`return_assistant_tokens_mask` is not available. We find the assistant spans by rendering prefix
conversations with the tokenizer's own chat template (`messages[:i]` + generation prompt, and
`messages[:i+1]`), check each prefix really is a prefix of the full rendering (templates that rewrite
earlier turns are reported, never silently mis-masked), and map character spans to tokens with the fast
tokenizer's offsets. Attention masks come from the true sequence lengths, never from `ids != pad`
(SmolLM2's pad token IS its end-of-turn token).

torch is imported inside functions only (the CLI must start fast).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from protege.errors import UserError
from protege.prompts import alpaca
from protege.records import Example

IGNORE = -100



@dataclass
class Tokenized:
    """One training example as the model sees it."""

    index: int  # position in the input list (for messages that name the example)
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    truncated: bool = False
    full_length: int = 0  # tokens before truncation

    @property
    def trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class TokenizeResult:
    items: list[Tokenized] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (index, why) -> refused
    dropped: list[tuple[int, str]] = field(default_factory=list)  # lost all trained tokens to truncation
    truncated: int = 0
    no_eos: int = 0  # kept examples whose last trained token is not the EOS (truncated mid-answer)
    lengths: list[int] = field(default_factory=list)  # full lengths of every tokenized example
    spans_text: list[tuple[str, list[tuple[int, int]]]] = field(default_factory=list)  # first examples


def _messages(ex: Example) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in ex.messages]


def _end_token(tokenizer: Any) -> str | None:
    return tokenizer.eos_token


def chat_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the chat template; return (text, char spans of the trained parts).

    Each span starts where the assistant's content starts (after the generation prompt) and ends right
    after the end-of-turn token (the tokenizer's eos) that closes the turn; text after it (a newline)
    is not trained, since generation stops at the EOS. Raises ValueError when the template does not
    render prefixes consistently.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    end = _end_token(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(prefix) and full.startswith(through) and through.startswith(prefix)):
            raise ValueError(f"the chat template renders turn {i} differently once later turns follow "
                             "(prefix rendering mismatch)")
        tail = through[len(prefix):]
        cut = tail.rfind(end) if end else -1
        stop = len(prefix) + (cut + len(end) if cut >= 0 else len(tail.rstrip()))
        if stop > len(prefix):
            spans.append((len(prefix), stop))
    return full, spans


def alpaca_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The Alpaca prompt (protege.prompts.alpaca) for base models without a chat template; the EOS is
    appended to each response and trained."""
    return alpaca.render(messages, eos=tokenizer.eos_token or "")


def encode(tokenizer: Any, text: str, spans: list[tuple[int, int]], add_special: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels: a token is trained when it STARTS inside a trained character span."""
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    for tid, (a, b) in zip(ids, enc["offset_mapping"]):
        inside = b > a and any(s <= a < e for s, e in spans)
        labels.append(tid if inside else IGNORE)
    return ids, labels


def tokenize_examples(examples: Sequence[Example], tokenizer: Any, prompt_format: str,
                      max_seq_len: int, keep_rendered: int = 1) -> TokenizeResult:
    """Tokenize every example; report problems (refused) and truncation losses (dropped, listed)."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("protege needs a fast (Rust) tokenizer to map assistant spans to tokens",
                        hint="Use a model directory with tokenizer.json.")
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("the student's tokenizer has no chat template (a base model?)",
                        hint="Set train.prompt_format: alpaca to train it with the Alpaca prompt.")
    res = TokenizeResult()
    eos_id = tokenizer.eos_token_id
    for i, ex in enumerate(examples):
        msgs = _messages(ex)
        if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            res.problems.append((i, "no assistant turn with content (nothing to learn)"))
            continue
        try:
            if prompt_format == "chat":
                text, spans = chat_spans(tokenizer, msgs)
                ids, labels = encode(tokenizer, text, spans, add_special=False)
            else:
                text, spans = alpaca_spans(tokenizer, msgs)
                ids, labels = encode(tokenizer, text, spans, add_special=True)
        except ValueError as err:
            res.problems.append((i, str(err)))
            continue
        if len(res.spans_text) < keep_rendered:
            res.spans_text.append((text, spans))
        if not any(x != IGNORE for x in labels):
            res.problems.append((i, "zero trained tokens after tokenization"))
            continue
        n = len(ids)
        res.lengths.append(n)
        item = Tokenized(i, ids, labels, full_length=n)
        if n > max_seq_len:
            res.truncated += 1
            item.truncated = True
            item.input_ids, item.labels = ids[:max_seq_len], labels[:max_seq_len]
            if item.trained == 0:
                res.dropped.append((i, f"all trained tokens lie past max_seq_len ({n} tokens)"))
                continue
        trained = [x for x in item.labels if x != IGNORE]
        if eos_id is not None and trained[-1] != eos_id:
            res.no_eos += 1
        res.items.append(item)
    return res


class TokenBudgetBatchSampler:
    """Batches of indices grouped by length and bounded by a token budget.

    Why ours: HF's `LengthGroupedSampler` bounds the number of sequences, not the padded tokens, so its
    longest batch sets the memory peak (activations are ~4 MiB per padded token in fp32 on SmolLM2).
    Here every batch holds at most `max_batch_size` sequences AND `n * longest <= token_budget`
    (a single sequence longer than the budget goes alone). Examples are sorted by length (random tie
    breaks, fixed by the seed) so padding is near zero and the batch composition, hence `len()`, is the
    same every epoch (resume skips exactly the trained batches); the ORDER of batches is shuffled per
    epoch, with the most expensive batch first so a memory problem shows at step 1, not at hour 3.
    """

    def __init__(self, lengths: Sequence[int], max_batch_size: int, token_budget: int,
                 seed: int = 42, shuffle: bool = True) -> None:
        self.lengths = list(lengths)
        self.max_batch_size = max_batch_size
        self.token_budget = token_budget
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        rng = random.Random(seed)
        keys = [rng.random() for _ in self.lengths]
        order = sorted(range(len(self.lengths)), key=lambda i: (-self.lengths[i], keys[i]))
        self.batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = self.lengths[cur[0]] if cur else self.lengths[i]
            if cur and (len(cur) + 1 > max_batch_size or (len(cur) + 1) * longest > token_budget):
                self.batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            self.batches.append(cur)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def cost(self, batch: list[int]) -> int:
        return len(batch) * max(self.lengths[i] for i in batch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # type: ignore[no-untyped-def]
        batches = list(self.batches)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(batches)
            worst = max(range(len(batches)), key=lambda k: self.cost(batches[k]))
            batches.insert(0, batches.pop(worst))
        return iter([list(b) for b in batches])


class PadCollator:
    """Right-pads a list of {input_ids, labels} to the longest; attention_mask from true lengths."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for r, f in enumerate(features):
            k = len(f["input_ids"])
            ids[r, :k] = torch.tensor(f["input_ids"])
            labels[r, :k] = torch.tensor(f["labels"])
            mask[r, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ListDataset:
    """A map-style dataset over tokenized items (Trainer only needs __len__/__getitem__)."""

    def __init__(self, items: Sequence[Tokenized]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        it = self.items[i]
        return {"input_ids": it.input_ids, "labels": it.labels}

    @property
    def lengths(self) -> list[int]:
        return [len(it.input_ids) for it in self.items]


def render_marked(text: str, spans: list[tuple[int, int]], open_: str = "[[", close: str = "]]") -> str:
    """The rendered example with trained spans wrapped in markers (for the preflight)."""
    out, pos = [], 0
    for s, e in spans:
        out += [text[pos:s], open_, text[s:e], close]
        pos = e
    out.append(text[pos:])
    return "".join(out)
