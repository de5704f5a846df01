"""`kind: llamacpp` — a GGUF model in-process through llama-cpp-python (the offline default).

llama.cpp calls block and a model is not re-entrant: requests run one at a time in a worker
thread, so the event loop (progress bar, cache writes) stays responsive.
"""

from __future__ import annotations

import os
from typing import Any

from protege.errors import UserError
from protege.teachers.local import MicroBatcher, from_openai_dict, sampling_seed
from protege.teachers.base import Completion, Request


class LlamaCppTeacher:
    def __init__(self, spec: str, *, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise UserError("teacher.kind llamacpp needs llama-cpp-python, which is not installed",
                            hint="pip install 'protege[llamacpp]'  (compiles llama.cpp; a few minutes)") from None
        from protege.models import gguf_path, public_id

        path = gguf_path(spec)
        self.spec = spec
        self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                                    verbose=False)
        self.info = {"kind": "llamacpp", "endpoint": "in-process", "model": public_id(spec), "file": path.name}
        self._batcher = MicroBatcher(self._run, max_batch=1, gather_s=0.0)

    def _run(self, requests: list[Request]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Completion:
        params: dict[str, Any] = {k: v for k, v in request.sampling.items() if v is not None}
        params["seed"] = sampling_seed(request, self.spec)
        # No reset: llama-cpp-python keeps the KV cache of the longest prefix this prompt shares with the last one
        # (where the model's cache allows it, else it starts over), so prompts with a common beginning (a judge's
        # two orders, a shared system prompt) evaluate it once. Answers stay per request: seeded, from the cache.
        if request.prompt is not None:
            out = self._llm.create_completion(request.prompt, **params)
            return from_openai_dict(self._public(out), self.info["model"], chat=False)
        if request.json_mode:
            params["response_format"] = {"type": "json_object"}
        out = self._llm.create_chat_completion(messages=request.messages or [], **params)
        return from_openai_dict(self._public(out), self.info["model"], chat=True)

    def _public(self, out: dict[str, Any]) -> dict[str, Any]:
        """llama-cpp-python reports the GGUF's path as the model: provenance names its public id instead."""
        return {**out, "model": self.info["model"]}

    async def complete(self, request: Request) -> Completion:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
        self._llm.close() if hasattr(self._llm, "close") else None
