"""The teacher contract: a `Request` in, a `Completion` out, behind a small `Teacher` Protocol.

Backends (OpenAI-compatible HTTP, in-process llama.cpp, transformers, vLLM) implement only
`complete()`; caching, retries, rate limits and budgets live in `engine.py`, which wraps any of
them (convention 3: wrappers compose, no implementation inheritance).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Request:
    """One thing to ask the teacher.

    `messages` (chat) or `prompt` (plain completions API). `sampling` holds the sampling
    parameters sent as-is (temperature, top_p, max_tokens, stop...). `sample_index` tells
    otherwise identical requests apart (several samples of one prompt each get their own cache
    entry). `tag` is the caller's bookkeeping and is not part of the cache key.
    """

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    sample_index: int = 0
    json_mode: bool = False
    tag: Any = None

    def key(self, model: str) -> str:
        """sha256 of the canonical JSON of what determines the answer (the cache key)."""
        blob = {
            "model": model,
            "messages": self.messages,
            "prompt": self.prompt,
            "sampling": self.sampling,
            "sample_index": self.sample_index,
            "json_mode": self.json_mode,
        }
        canon = json.dumps(blob, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def estimated_prompt_tokens(self) -> int:
        """A cheap, deliberately high token estimate for rate limits, budget caps and --dry-run.

        ~3.5 characters a token (English averages ~4) plus 4 tokens of chat overhead a
        message: erring high keeps the budget cap and the tokens/min limiter on the safe side.
        """
        if self.prompt is not None:
            return max(1, -(-len(self.prompt) * 2 // 7))
        msgs = self.messages or []
        chars = sum(len(m.get("content", "")) for m in msgs)
        return max(1, -(-chars * 2 // 7) + 4 * len(msgs) + 3)

    @property
    def max_tokens(self) -> int:
        return int(self.sampling.get("max_tokens") or 0)


@dataclass
class Completion:
    """The teacher's answer. `model` is the model name/version the API reports.

    `logprobs`, only when the request asked for them (`sampling: {logprobs: true, top_logprobs: k}`) and the
    backend returned them: one `[token, {alternative: logprob}]` per generated token, the token itself included.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    latency_s: float = 0.0
    logprobs: list[list[Any]] | None = None


def completions_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """Sampling for a plain completions API: there `logprobs` is the number of alternatives (chat's `top_logprobs`)."""
    if not sampling.get("logprobs"):
        return {k: v for k, v in sampling.items() if k != "top_logprobs"}
    out = {k: v for k, v in sampling.items() if k not in ("logprobs", "top_logprobs")}
    out["logprobs"] = int(sampling.get("top_logprobs") or 1)
    return out


def read_logprobs(choice: dict[str, Any]) -> list[list[Any]] | None:
    """`[[token, {alternative: logprob}], ...]` from one choice of an OpenAI-shaped reply, or None.

    Reads the chat shape (`logprobs.content[i].top_logprobs`, a list of {token, logprob}) and the completions
    shape (`logprobs.tokens` with `logprobs.top_logprobs`, a list of {token: logprob}), as OpenAI, vLLM, llama.cpp's
    server and llama-cpp-python write them. Anything else gives None (the caller treats it as not returned).
    """
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    out: list[list[Any]] = []
    try:
        if isinstance(lp.get("content"), list):
            for t in lp["content"]:
                alts = {str(a["token"]): float(a["logprob"]) for a in (t.get("top_logprobs") or [])}
                alts.setdefault(str(t["token"]), float(t["logprob"]))
                out.append([str(t["token"]), alts])
        elif isinstance(lp.get("tokens"), list):
            tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
            for tok, top, own in zip(lp["tokens"], tops, lp.get("token_logprobs") or [None] * len(lp["tokens"])):
                alts = {str(k): float(v) for k, v in (top or {}).items()}
                if own is not None:
                    alts.setdefault(str(tok), float(own))
                out.append([str(tok), alts])
        else:
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return out or None


class TeacherError(Exception):
    """A failed call, classified for the engine's retry logic.

    `retryable`: worth trying again (429, 5xx, timeouts, broken or garbage replies).
    `fatal`: no request can succeed (bad key, unknown model): the engine stops issuing.
    `retry_after`: seconds the server asked us to wait (Retry-After header), if any.
    The message must never contain secrets.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 fatal: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable and not fatal
        self.fatal = fatal
        self.retry_after = retry_after


@runtime_checkable
class Teacher(Protocol):
    """What every backend provides.

    `info`: provenance, safe to write anywhere: kind, endpoint (host only, never a key), model.
    """

    info: dict[str, str]

    async def complete(self, request: Request) -> Completion:
        """Answer one request; raise TeacherError (or let asyncio.TimeoutError through)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads or models."""
        ...
