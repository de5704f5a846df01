"""`kind: llamacpp` — a GGUF model in-process through llama-cpp-python (the offline default).

llama.cpp calls block and a model is not re-entrant: requests run one at a time in a worker
thread, so the event loop (progress bar, cache writes) stays responsive.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from protege.errors import UserError
from protege.teachers.local import MicroBatcher, from_openai_dict, sampling_seed
from protege.teachers.base import Completion, Request, completions_sampling


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
        self._llama_cpp = llama_cpp
        self.info = {"kind": "llamacpp", "endpoint": "in-process", "model": public_id(spec), "file": path.name}
        self._batcher = MicroBatcher(self._run, max_batch=1, gather_s=0.0)

    def _run(self, requests: list[Request]) -> list[Completion]:
        return [self._one(r) for r in requests]

    def _one(self, request: Request) -> Completion:
        params: dict[str, Any] = {k: v for k, v in request.sampling.items() if v is not None}
        params["seed"] = sampling_seed(request, self.spec)
        top = int(params.pop("top_logprobs", 0) or 1) if params.pop("logprobs", None) else 0
        recorder = _Recorder(top, self._piece) if top else None
        if recorder is not None:
            params["logits_processor"] = self._llama_cpp.LogitsProcessorList([recorder])
        completion = self._complete(request, params)
        if recorder is not None:
            completion.logprobs = recorder.result(completion.text)
        return completion

    def _complete(self, request: Request, params: dict[str, Any]) -> Completion:
        # No reset: llama-cpp-python keeps the KV cache of the longest prefix this prompt shares with the last one
        # (where the model's cache allows it, else it starts over), so prompts with a common beginning (a judge's
        # two orders, a shared system prompt) evaluate it once. Answers stay per request: seeded, from the cache.
        if request.prompt is not None:
            out = self._llm.create_completion(request.prompt, **completions_sampling(params))
            return from_openai_dict(self._public(out), self.info["model"], chat=False)
        if request.json_mode:
            params["response_format"] = {"type": "json_object"}
        out = self._llm.create_chat_completion(messages=request.messages or [], **params)
        return from_openai_dict(self._public(out), self.info["model"], chat=True)

    def _piece(self, token: int) -> bytes:
        return self._llm.detokenize([token])

    def _public(self, out: dict[str, Any]) -> dict[str, Any]:
        """llama-cpp-python reports the GGUF's path as the model: provenance names its public id instead."""
        return {**out, "model": self.info["model"]}

    async def complete(self, request: Request) -> Completion:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        self._batcher.close()
        self._llm.close() if hasattr(self._llm, "close") else None



class _Recorder:
    """A llama-cpp-python logits processor that changes nothing and writes down, at each generated token, the top
    `top` alternatives with their log-probabilities: `logprobs` for the in-process backend.

    Why not llama-cpp-python's own `logprobs=`: it needs the model opened with `logits_all` (logits kept for every
    prompt position: ~0.6 MB a position with Qwen's 152k-token vocabulary) and then sorts the whole vocabulary in
    Python for each generated token. The processor sees the raw logits of each step, as the sampler does; the token
    chosen at a step is the last input of the next one, and the last step's token is the alternative whose bytes
    complete the reply. Token texts are decoded one by one (a lone byte of a multi-byte character reads U+FFFD).
    """

    def __init__(self, top: int, piece: Callable[[int], bytes]) -> None:
        self.top, self.piece = top, piece
        self.best: list[list[tuple[int, float]]] = []  # per step: the top alternatives (id, logprob), best first
        self.chosen: list[tuple[int, float]] = []  # per step: the token it produced and its logprob, once known
        self._last: Any = None  # the last step's log-probabilities, kept until its token is known

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self._last is not None:
            token = int(input_ids[-1])
            self.chosen.append((token, float(self._last[token])))
        row = np.asarray(logits, dtype=np.float64)
        peak = row.max()
        logp = row - (peak + np.log(np.exp(row - peak).sum()))
        k = min(self.top, len(logp))
        ids = np.argpartition(-logp, k - 1)[:k]
        self.best.append([(int(i), float(logp[i])) for i in ids[np.argsort(-logp[ids])]])
        self._last = logp
        return logits

    def result(self, text: str) -> list[list[Any]] | None:
        """`[[token, {alternative: logprob}], ...]` of the tokens that spell `text` (an end-of-text token or text cut
        at a stop string ends the list)."""
        want, done = text.encode("utf-8"), b""
        out: list[list[Any]] = []
        for k, best in enumerate(self.best):
            if k < len(self.chosen):
                token, own = self.chosen[k]
            else:
                rest = want[len(done):]
                token = next((i for i, _ in best if rest and self.piece(i) == rest), -1)
                if token < 0:
                    break
                own = float(self._last[token])
            piece = self.piece(token)
            if not piece or not want.startswith(done + piece):
                break
            alts = {self.piece(i).decode("utf-8", errors="replace"): lp for i, lp in best}
            alts.setdefault(piece.decode("utf-8", errors="replace"), own)
            out.append([piece.decode("utf-8", errors="replace"), alts])
            done += piece
        return out or None
