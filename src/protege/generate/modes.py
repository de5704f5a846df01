"""Generation modes that answer given prompts: `respond`, `explain` (Orca) and `self-chat`.

- respond: answer each instruction of `generate.instructions` with the teacher; `output:
  replace` writes the teacher's answer in place of any existing one (kept in meta), `add` also
  keeps the original record.
- explain: as respond, with a system prompt drawn (deterministically per instruction) from
  `generate.system_prompts` or our default pool asking for step-by-step explanations; the
  system prompt is part of the record's messages and of its meta.
- self-chat: the teacher plays the assistant, and the user (under our prompt, roles swapped),
  for `generate.turns` turns, starting from each seed instruction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError
from protege.generate.context import DEFAULT_SEEDS, Ctx, sampling_params
from protege.prompts import load
from protege.prompts.chat import clean_user_turn, explain_pool, user_turn_messages
from protege.records import Example, detect_format, read_examples
from protege.teachers.base import Request



def input_source(path: str | Path, ex: Example, fmt: str) -> str:
    """Where an instruction came from, for provenance: human chat logs are marked as such."""
    if ex.meta.get("source"):
        return str(ex.meta["source"])
    if fmt == "sharegpt" or (fmt == "openai" and sum(m["role"] == "user" for m in ex.messages) > 1):
        return "human-log"
    return f"file:{Path(path).name}"


def _to_answer(ex: Example) -> list[dict[str, str]]:
    """The conversation up to the turn the teacher must write (drops a trailing answer)."""
    msgs = list(ex.messages)
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


@dataclass
class _Item:
    gen_id: str
    request: Request
    example: Example
    source: str
    system_prompt: str | None = None


class Respond:
    """`respond` and `explain`."""

    def __init__(self, cfg: RunConfig, explain: bool = False) -> None:
        assert cfg.teacher is not None
        g = cfg.generate
        self.name = "explain" if explain else "respond"
        self.cfg = cfg
        if not g.instructions:
            raise UserError(f"generate.instructions: {self.name} mode needs a file of instructions to answer",
                            hint="Set generate.instructions to a file in any supported format (a .txt file "
                            "with one instruction per line works too).")
        fmt = detect_format(g.instructions)
        examples = read_examples(g.instructions, fmt)
        self.pool, self.template = explain_pool(g.system_prompts) if explain else ([], None)
        sampling, seen = sampling_params(cfg), Counter()
        self.items: list[_Item] = []
        bad = []
        for i, ex in enumerate(examples, 1):
            msgs = _to_answer(ex)
            if not any(m["role"] == "user" for m in msgs):
                bad.append(i)
                continue
            system = None
            if explain:
                system = self.pool[random.Random(f"{g.seed}:{ex.prompt}").randrange(len(self.pool))]
                msgs = [{"role": "system", "content": system}] + [m for m in msgs if m["role"] != "system"]
            blob = json.dumps(msgs, sort_keys=True)
            # Repeated instructions get their own sample index, hence their own answer and cache entry.
            req = Request(messages=msgs, sampling=sampling, sample_index=seen[blob])
            seen[blob] += 1
            item = _Item(f"{self.name}-{req.key(cfg.teacher.model)[:24]}", req, ex,
                         input_source(g.instructions, ex, fmt), system)
            req.tag = item
            self.items.append(item)
        if bad:
            raise UserError(f"{g.instructions}: record(s) {bad[:20]} have no user message to answer",
                            hint="Each record needs at least one user turn (or an instruction).")
        self.items = self.items[: g.num]
        self.total = len(self.items)

    def remaining(self, done_ids: set[str], kept_records: list[dict[str, Any]]) -> int:
        return sum(it.gen_id not in done_ids for it in self.items)

    def planned_requests(self, done_ids: set[str], kept_records: list[dict[str, Any]],
                         sampling: dict[str, Any]) -> tuple[int, list[Request]]:
        todo = [it.request for it in self.items if it.gen_id not in done_ids]
        return len(todo), todo

    async def run(self, ctx: Ctx) -> None:
        todo = (it.request for it in self.items if it.gen_id not in ctx.out.done_ids)
        async for res in ctx.engine.map(todo):
            item: _Item = res.request.tag
            if res.stopped:
                continue  # not sent (a cap was reached): left for the next run
            if not res.ok:
                ctx.out.fail(item.gen_id, res.request, res.error or "failed", res.attempts, mode=self.name)
                ctx.advance()
                continue
            self._write(ctx, res, item)
            ctx.advance()

    def _write(self, ctx: Ctx, res: Any, item: _Item) -> None:
        text = res.completion.text.strip()
        extra: dict[str, Any] = {"instruction_source": item.source}
        for key in ("input", "id"):
            if key in item.example.meta:
                extra[key] = item.example.meta[key]
        if item.system_prompt is not None:
            extra["system_prompt"] = item.system_prompt
        if item.example.output and ctx.cfg.generate.output == "replace":
            extra["original_output"] = item.example.output
        meta = ctx.provenance(res, mode=self.name, gen_id=item.gen_id, template=self.template, **extra)
        new = Example(res.request.messages + [{"role": "assistant", "content": text}], meta)
        reason = _drop_reason(text, res.completion.finish_reason, ctx.cfg.generate.drop_truncated)
        if reason:
            meta["drop_reason"] = reason
            ctx.out.drop([new])
            return
        keep = [new]
        if ctx.cfg.generate.output == "add" and item.example.output:
            orig_meta = {**item.example.meta, "gen_id": item.gen_id, "source": item.source}
            keep.insert(0, Example(item.example.messages, orig_meta))
        ctx.out.keep(keep)


def _drop_reason(text: str, finish_reason: str | None, drop_truncated: bool) -> str | None:
    if not text:
        return "empty answer"
    if finish_reason == "length" and drop_truncated:
        return "truncated: the answer hit generate.sampling.max_tokens (raise it, or set generate.drop_truncated: false)"
    return None


# ------------------------------------------------------------------ self-chat


@dataclass
class _Chat:
    gen_id: str
    opening: Example
    sample_index: int
    source: str
    results: list[Any] = field(default_factory=list)


class SelfChat:
    """The teacher plays both sides for `generate.turns` turns from each seed instruction."""

    name = "self-chat"

    def __init__(self, cfg: RunConfig) -> None:
        assert cfg.teacher is not None
        g = cfg.generate
        path = g.instructions or cfg.seeds or str(DEFAULT_SEEDS)
        fmt = detect_format(path)
        seeds = [ex for ex in read_examples(path, fmt) if ex.prompt]
        if not seeds:
            raise UserError(f"{path}: no instruction to start a conversation from")
        self.cfg, self.template = cfg, load("self_chat_user")
        self.chats: list[_Chat] = []
        for i in range(g.num):  # more conversations than seeds: seeds repeat with a new sample index
            ex, k = seeds[i % len(seeds)], i // len(seeds)
            ident = json.dumps([cfg.teacher.model, ex.prompt, k, sampling_params(cfg), g.turns], sort_keys=True)
            gid = "self-chat-" + hashlib.sha256(ident.encode()).hexdigest()[:24]
            self.chats.append(_Chat(gid, ex, k, input_source(path, ex, fmt)))
        self.total = len(self.chats)

    def remaining(self, done_ids: set[str], kept_records: list[dict[str, Any]]) -> int:
        return sum(c.gen_id not in done_ids for c in self.chats)

    def planned_requests(self, done_ids: set[str], kept_records: list[dict[str, Any]],
                         sampling: dict[str, Any]) -> tuple[int, list[Request]]:
        todo = [c for c in self.chats if c.gen_id not in done_ids]
        first = [Request(messages=[{"role": "user", "content": c.opening.prompt}], sampling=sampling,
                         sample_index=c.sample_index) for c in todo]
        return len(todo) * (2 * self.cfg.generate.turns - 1), first

    async def run(self, ctx: Ctx) -> None:
        queue: asyncio.Queue[_Chat] = asyncio.Queue()
        for chat in self.chats:
            if chat.gen_id not in ctx.out.done_ids:
                queue.put_nowait(chat)

        async def worker() -> None:
            while not queue.empty() and not ctx.engine.stop_reason:
                await self._converse(ctx, queue.get_nowait())

        n = min(ctx.engine.max_concurrency, max(1, queue.qsize()))
        await asyncio.gather(*(worker() for _ in range(n)))

    async def _converse(self, ctx: Ctx, chat: _Chat) -> None:
        sampling = ctx.sampling()
        conv = [{"role": "user", "content": chat.opening.prompt}]
        for turn in range(self.cfg.generate.turns):
            for role in ("assistant", "user") if turn < self.cfg.generate.turns - 1 else ("assistant",):
                msgs = conv if role == "assistant" else user_turn_messages(conv)
                res = await ctx.engine.complete(Request(messages=msgs, sampling=sampling,
                                                        sample_index=chat.sample_index))
                if res.stopped:
                    return
                if not res.ok:
                    ctx.out.fail(chat.gen_id, res.request, res.error or "failed", res.attempts, mode=self.name,
                                 turn=turn + 1, role=role)
                    ctx.advance()
                    return
                chat.results.append(res)
                text = res.completion.text.strip() if role == "assistant" else clean_user_turn(res.completion.text)
                conv.append({"role": role, "content": text})
                reason = _drop_reason(text, res.completion.finish_reason,
                                      ctx.cfg.generate.drop_truncated and role == "assistant")
                if reason:
                    self._finish(ctx, chat, conv, f"{role} turn {turn + 1}: {reason}")
                    return
        self._finish(ctx, chat, conv, None)

    def _finish(self, ctx: Ctx, chat: _Chat, conv: list[dict[str, str]], drop: str | None) -> None:
        last = chat.results[-1]
        meta = ctx.provenance(last, mode=self.name, gen_id=chat.gen_id, template=self.template,
                              instruction_source=chat.source, turns=sum(m["role"] == "assistant" for m in conv))
        meta["tokens"] = {"prompt": sum(r.completion.prompt_tokens for r in chat.results),
                          "completion": sum(r.completion.completion_tokens for r in chat.results)}
        costs = [r.cost_usd for r in chat.results]
        meta["cost_usd"] = None if None in costs else sum(costs)
        meta["cached"] = all(r.cached for r in chat.results)
        meta.pop("request_key", None)
        ex = Example(conv, meta)
        if drop:
            meta["drop_reason"] = drop
            ctx.out.drop([ex])
        else:
            ctx.out.keep([ex])
        ctx.advance()
