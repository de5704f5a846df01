"""What the in-process backends share: a micro-batcher and the reply shape.

Why hand-written: transformers and vLLM take a list of prompts per call; the engine sends
requests one by one (concurrently). The batcher collects the requests waiting at a moment,
groups them by sampling parameters, and runs each group as one blocking call in a worker
thread, one call at a time (a model is not re-entrant).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from protege.teachers.base import Completion, Request, read_logprobs


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list[Request]], list[Completion]], max_batch: int,
                 gather_s: float = 0.02) -> None:
        self._run_batch = run_batch
        self.max_batch = max(1, max_batch)
        self.gather_s = gather_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protege-teacher")
        self._pending: list[tuple[Request, asyncio.Future[Completion]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Completion:
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await asyncio.sleep(self.gather_s)  # let concurrent requests join this batch
            key = _group(self._pending[0][0])
            batch = [p for p in self._pending if _group(p[0]) == key][: self.max_batch]
            for p in batch:
                self._pending.remove(p)
            live = [(r, f) for r, f in batch if not f.cancelled()]
            if not live:
                continue
            try:
                outs = await loop.run_in_executor(self._pool, self._run_batch, [r for r, _ in live])
            except Exception as err:  # noqa: BLE001 - handed to every waiter of this batch
                for _, f in live:
                    if not f.done():
                        f.set_exception(err)
                continue
            for (_, f), out in zip(live, outs):
                if not f.done():
                    f.set_result(out)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _group(request: Request) -> str:
    return json.dumps([request.sampling, request.prompt is not None, request.json_mode], sort_keys=True)


def sampling_seed(request: Request, model: str) -> int:
    """A per-request seed from the cache key: the same request gives the same answer."""
    return int(request.key(model)[:8], 16)


def from_openai_dict(out: dict[str, Any], model: str, chat: bool) -> Completion:
    choice = out["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    usage = out.get("usage") or {}
    return Completion(text or "", choice.get("finish_reason"), int(usage.get("prompt_tokens", 0)),
                      int(usage.get("completion_tokens", 0)), out.get("model") or model,
                      logprobs=read_logprobs(choice))
