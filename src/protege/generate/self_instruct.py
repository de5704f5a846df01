"""`generate.mode: self-instruct` — the Alpaca recipe, with our own prompt wording.

Each request shows the teacher `num_prompt_tasks` example tasks (from the seeds, and
`num_generated_in_prompt` of them from tasks kept so far) and asks for `tasks_per_request`
new ones. Replies are parsed (prompts/self_instruct.py), malformed and truncated tasks are
dropped, Alpaca's rule filters applied, and near-duplicates (ROUGE-L above
`curate.rouge_threshold` against the seeds and every task kept so far) dropped; the loop asks
for more until `generate.num` tasks are kept. Every drop goes to generate/dropped.jsonl with
its reason.

Request i's examples are drawn with a seed derived from i, so a rerun rebuilds the same
requests and finds their answers in the cache (when `num_generated_in_prompt` is 0; with
kept tasks in the prompt, a resumed run draws from what was kept by then).

A reply that stops with fewer tasks than asked (small teachers often write one or two, then end) is
continued in the same conversation, up to `generate.continuations` times: "now write tasks k to n". The
teacher sees what it already wrote (fewer near-duplicates), and a local teacher reuses the evaluated
prompt, so the rest of the tasks cost their own tokens instead of another full prompt.

The loop always ends: failed requests do not count towards `generate.num`, so besides the
engine's circuit breaker (a dead teacher) it stops when replies stop giving new tasks
(`_STALL_AFTER`), and, with `generate.max_requests`, when the kept-per-call rate seen so far
(failures included) cannot reach `generate.num` with the calls left; each says so.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from protege.config import RunConfig
from protege.errors import UserError
from protege.generate.context import DEFAULT_SEEDS, Ctx, sampling_params
from protege.prompts.self_instruct import Task, parse, render, rule_reason, template
from protege.records import Example, read_examples, user_prompt
from protege.teachers.base import Request

_ASSUMED_YIELD = 0.5  # share of generated tasks kept before any reply is seen (for planning only)
_STALL_AFTER = 20  # consecutive replies with nothing kept: stop instead of paying forever
_MIN_CALLS_TO_JUDGE = 10  # calls seen before the kept-per-call rate is trusted to call a target unreachable


def continuation(req: Request, reply: str, written: int, asked: int, first: int) -> Request:
    """The follow-up of a self-instruct request whose reply held `written` of the `asked` tasks (numbered from
    `first`): the same conversation, the reply, then the ask for the remaining ones."""
    nxt, last = first + written, first + asked - 1
    ask = (f"Now write tasks {nxt} to {last} in the same format, each different from the tasks above. Start with:"
           f"\n\n### Task {nxt}\nInstruction:") if nxt < last else (
        f"Now write task {nxt} in the same format, different from the tasks above. Start with:\n\n"
        f"### Task {nxt}\nInstruction:")
    messages = list(req.messages or []) + [{"role": "assistant", "content": reply}, {"role": "user", "content": ask}]
    return Request(messages=messages, sampling=req.sampling, sample_index=req.sample_index, json_mode=req.json_mode)


class SelfInstruct:
    name = "self-instruct"

    def __init__(self, cfg: RunConfig) -> None:
        assert cfg.teacher is not None
        g = cfg.generate
        if g.num_generated_in_prompt > g.num_prompt_tasks:
            raise UserError(f"generate.num_generated_in_prompt ({g.num_generated_in_prompt}) is larger than "
                            f"generate.num_prompt_tasks ({g.num_prompt_tasks})")
        path = cfg.seeds or str(DEFAULT_SEEDS)
        examples = read_examples(path)
        self.seeds: list[tuple[str, Task]] = []
        for i, ex in enumerate(examples):
            if ex.instruction and ex.output:
                self.seeds.append((str(ex.meta.get("id") or f"seed-{i}"), Task(ex.instruction, ex.input, ex.output)))
        if len(self.seeds) < g.num_prompt_tasks - g.num_generated_in_prompt:
            raise UserError(f"{path}: {len(self.seeds)} usable seed task(s) (instruction + output), but each "
                            f"request shows {g.num_prompt_tasks - g.num_generated_in_prompt}",
                            hint="Add seed tasks, or lower generate.num_prompt_tasks.")
        self.cfg, self.total = cfg, g.num
        self._written = 0  # task blocks in the reply last processed (kept or dropped)
        self.json_mode = cfg.teacher.json_mode
        self.template = template(self.json_mode)
        ident = json.dumps([cfg.teacher.model, self.template.sha256, sampling_params(cfg), g.seed,
                            g.num_prompt_tasks, g.num_generated_in_prompt, g.tasks_per_request,
                            Path(path).name], sort_keys=True)
        self.run_tag = hashlib.sha256(ident.encode()).hexdigest()[:10]

    @staticmethod
    def _kept_in(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if (r.get("meta") or {}).get("mode") == "self-instruct"]

    def remaining(self, done_ids: set[str], kept_records: list[dict[str, Any]]) -> int:
        return max(0, self.total - len(self._kept_in(kept_records)))

    def planned_requests(self, done_ids: set[str], kept_records: list[dict[str, Any]],
                         sampling: dict[str, Any]) -> tuple[int, list[Request]]:
        need = self.remaining(done_ids, kept_records)
        n = -(-need // max(1, int(self.cfg.generate.tasks_per_request * _ASSUMED_YIELD)))
        return n, [self._request(i, [], sampling)[0] for i in range(min(n, 1))]

    def _gen_id(self, i: int) -> str:
        return f"si-{self.run_tag}-{i}"

    def _request(self, i: int, kept: list[tuple[str, Task]], sampling: dict[str, Any]) -> tuple[Request, list[str]]:
        g = self.cfg.generate
        rng = random.Random(f"{g.seed}:{self.run_tag}:{i}")
        n_gen = min(g.num_generated_in_prompt, len(kept))
        demos = rng.sample(self.seeds, g.num_prompt_tasks - n_gen) + rng.sample(kept, n_gen)
        rng.shuffle(demos)
        prompt = render([t for _, t in demos], g.tasks_per_request, self.json_mode, g.output_words, g.variety)
        req = Request(messages=[{"role": "user", "content": prompt}], sampling=sampling, sample_index=i,
                      json_mode=self.json_mode)
        return req, [sid for sid, _ in demos]

    async def run(self, ctx: Ctx) -> None:
        from protege.rouge import RougeDeduper

        g = self.cfg.generate
        dedup = RougeDeduper(self.cfg.curate.rouge_threshold)
        for _, task in self.seeds:
            dedup.add_reference(task.instruction)
        kept: list[tuple[str, Task]] = []
        for rec in self._kept_in(ctx.out.kept_records):
            ex = Example(rec["messages"], rec.get("meta") or {})
            kept.append((ex.meta.get("gen_id", "?"), Task(ex.instruction, ex.input, ex.output)))
            dedup.add_reference(ex.instruction)
        state = {"next": 0, "in_flight": 0, "replies": 0, "kept_now": 0, "zero_streak": 0, "failed": 0,
                 "unreachable": 0}
        sampling = ctx.sampling()
        follow_ups: list[Request] = []  # continuations of replies that stopped short, asked before new requests

        def next_request() -> Request | None:
            if len(kept) >= g.num or state["zero_streak"] >= _STALL_AFTER or state["unreachable"]:
                return None
            if follow_ups:
                state["in_flight"] += 1
                return follow_ups.pop(0)
            if self._unreachable(ctx.engine.ledger, len(kept), state):
                state["unreachable"] = 1
                return None
            rate = max(0.05, state["kept_now"] / (state["replies"] * g.tasks_per_request)) if state["replies"] \
                else _ASSUMED_YIELD
            if len(kept) + state["in_flight"] * g.tasks_per_request * rate >= g.num:
                return None
            while self._gen_id(state["next"]) in ctx.out.done_ids:
                state["next"] += 1
            i = state["next"]
            state["next"] += 1
            req, seed_ids = self._request(i, kept, sampling)
            req.tag = (self._gen_id(i), seed_ids)
            state["in_flight"] += 1
            return req

        async for res in ctx.engine.map(next_request):
            state["in_flight"] -= 1
            gen_id, seed_ids, *cont = res.request.tag
            if res.stopped:
                continue
            if not res.ok:
                ctx.out.fail(gen_id, res.request, res.error or "failed", res.attempts, mode=self.name)
                state["failed"] += 1
                continue
            n = self._process(ctx, res, gen_id, seed_ids, dedup, kept)
            rounds, written = (cont[0], cont[1]) if cont else (0, 0)
            written += self._written
            if (not self.json_mode and res.completion.finish_reason == "stop" and 0 < self._written
                    and written < g.tasks_per_request and rounds < g.continuations and len(kept) < g.num):
                follow = continuation(res.request, res.completion.text, written, g.tasks_per_request,
                                      g.num_prompt_tasks + 1)
                follow.tag = (f"{gen_id.split('+')[0]}+{rounds + 1}", seed_ids, rounds + 1, written)
                follow_ups.append(follow)
            state["replies"] += 1
            state["kept_now"] += n
            state["zero_streak"] = 0 if n else state["zero_streak"] + 1
        if state["zero_streak"] >= _STALL_AFTER and len(kept) < g.num:
            ctx.notes.append(f"self-instruct stopped: {_STALL_AFTER} replies in a row gave no usable new task "
                             f"({len(kept)} of {g.num} kept). See generate/dropped.jsonl for the reasons.")
        if state["unreachable"] and len(kept) < g.num:
            led = ctx.engine.ledger
            ctx.notes.append(
                f"self-instruct stopped: generate.num={g.num} cannot be reached within generate.max_requests="
                f"{g.max_requests}: {led.calls} calls so far ({led.calls - led.answered} failed, "
                f"{state['failed']} request(s) given up) kept {state['kept_now']} new task(s), and "
                f"{g.max_requests - led.calls} calls are left ({len(kept)} of {g.num} kept). Fix the teacher "
                "(see generate/failed.jsonl) or raise generate.max_requests, then rerun to continue.")

    def _unreachable(self, ledger: Any, n_kept: int, state: dict[str, int]) -> bool:
        """With failures seen and `max_requests` set: can the calls left still reach `num` at the
        kept-per-call rate so far (which counts failed calls)?"""
        g = self.cfg.generate
        if g.max_requests is None or ledger.calls < _MIN_CALLS_TO_JUDGE or ledger.calls == ledger.answered:
            return False
        per_call = state["kept_now"] / ledger.calls
        return n_kept + (g.max_requests - ledger.calls) * per_call < g.num

    def _process(self, ctx: Ctx, res: Any, gen_id: str, seed_ids: list[str], dedup: Any,
                 kept: list[tuple[str, Task]]) -> int:
        """Parse one reply, filter its tasks, write kept and dropped ones. Returns the number kept."""
        thr = self.cfg.curate.rouge_threshold
        parsed = parse(res.completion.text, res.completion.finish_reason, self.json_mode)
        self._written = len(parsed.tasks) + len(parsed.dropped)  # task blocks in the reply, kept or not
        base = ctx.provenance(res, mode=self.name, gen_id=gen_id, template=self.template, seed_ids=seed_ids)
        keep, drop = [], []
        for j, task in enumerate(parsed.tasks):
            meta = {**base, "task_index": j}
            if task.input:
                meta["input"] = task.input
            ex = Example([{"role": "user", "content": user_prompt(task.instruction, task.input)},
                          {"role": "assistant", "content": task.output}], meta)
            reason = rule_reason(task)
            if reason is None:
                match = dedup.check(task.instruction)
                if match is not None:
                    what = "a seed task" if match.index < len(self.seeds) else "a kept task"
                    reason = f"near-duplicate of {what} (ROUGE-L {match.score:.2f} > {thr}): {match.text[:80]!r}"
            if reason is None and len(kept) >= self.total:
                reason = "surplus: generate.num was already reached"
            if reason is None:
                dedup.add_reference(task.instruction)
                kept.append((gen_id, task))
                keep.append(ex)
            else:
                meta["drop_reason"] = reason
                drop.append(ex)
        for raw, reason in parsed.dropped:
            drop.append(Example([{"role": "assistant", "content": raw}], {**base, "drop_reason": reason}))
        if not keep and not drop:
            drop.append(Example([{"role": "assistant", "content": res.completion.text}],
                                {**base, "drop_reason": "no task found in the reply"}))
        ctx.out.keep(keep)
        ctx.out.drop(drop)
        ctx.advance(len(keep))
        return len(keep)
