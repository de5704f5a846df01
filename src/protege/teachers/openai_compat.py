"""Any OpenAI-compatible endpoint through the official `openai` SDK (async).

OpenAI, vLLM, Ollama, the llama.cpp server, LM Studio, TGI, gateways: chat completions, or
plain completions when `teacher.api: completions`. The SDK's own retries are off
(`max_retries=0`): the engine retries, so every attempt is logged and budgeted.

The API key is read from the environment variable named by `teacher.api_key_env` and lives
only in the SDK client: it is scrubbed from every error message this module raises.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit

from protege.errors import UserError
from protege.teachers.base import Completion, Request, TeacherError

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Keys that providers echo back partly masked in error bodies (e.g. "sk-abc***xyz").
_KEYLIKE = re.compile(r"\b(sk|rk|pk|key|hf|gsk|xai)[-_][A-Za-z0-9_\-\*\.]{6,}", re.IGNORECASE)


def endpoint_host(base_url: str | None) -> str:
    """host[:port] of a base URL: provenance without credentials, paths or query strings."""
    parts = urlsplit(base_url or _DEFAULT_BASE_URL)
    host = parts.hostname or "unknown"
    return f"{host}:{parts.port}" if parts.port else host


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


class OpenAITeacher:
    """The `openai` backend."""

    def __init__(self, *, model: str, base_url: str | None = None, api_key_env: str | None = None,
                 api: str = "chat", timeout_s: float = 120, max_connections: int = 64) -> None:
        import httpx2  # the transport the installed openai SDK is built on
        from openai import AsyncOpenAI

        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(
                    f"teacher.api_key_env: the environment variable {api_key_env} is not set (or empty)",
                    hint=f"export {api_key_env}=... in the shell that runs protege "
                    "(the key is never written to the config or the run directory).",
                )
        else:
            # Local servers (llama.cpp, vLLM, Ollama) accept any key; the SDK insists on one.
            key = "no-key"
        self._secret = key
        self.model = model
        self.api = api
        self.info = {"kind": "openai", "endpoint": endpoint_host(base_url), "model": model, "api": api}
        limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = AsyncOpenAI(
            api_key=key, base_url=base_url or _DEFAULT_BASE_URL, max_retries=0, timeout=timeout_s,
            http_client=httpx2.AsyncClient(limits=limits, timeout=timeout_s),
        )

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret != "no-key":
            text = text.replace(self._secret, "***")
        return _KEYLIKE.sub("***", text)[:500]

    async def complete(self, request: Request) -> Completion:
        import openai

        t0 = time.perf_counter()
        params = {k: v for k, v in request.sampling.items() if v is not None}
        try:
            if self.api == "completions" or request.prompt is not None:
                prompt = request.prompt if request.prompt is not None else _flatten(request.messages or [])
                resp = await self._client.completions.create(model=self.model, prompt=prompt, **params)
                choice = _first_choice(resp)
                text = getattr(choice, "text", None)
            else:
                if request.json_mode:
                    params["response_format"] = {"type": "json_object"}
                resp = await self._client.chat.completions.create(
                    model=self.model, messages=request.messages or [], **params)
                choice = _first_choice(resp)
                message = getattr(choice, "message", None)
                text = getattr(message, "content", None)
        except openai.APIStatusError as err:
            raise self._status_error(err) from None
        except openai.APITimeoutError:
            raise TeacherError("timed out (SDK timeout)", retryable=True) from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(err)
            raise TeacherError(self._scrub(f"connection error: {detail}"), retryable=True) from None
        except openai.APIResponseValidationError as err:
            raise TeacherError(self._scrub(f"invalid reply: {err}"), retryable=True) from None
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            # A 200 whose body is not the expected JSON (gateways, proxies, broken servers).
            raise TeacherError(self._scrub(f"unreadable reply: {type(err).__name__}: {err}"),
                               retryable=True) from None
        if not isinstance(text, str):
            raise TeacherError("reply without text (no choices or null content)", retryable=True)
        usage = getattr(resp, "usage", None)
        return Completion(
            text=text,
            finish_reason=getattr(choice, "finish_reason", None),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=getattr(resp, "model", None) or self.model,
            latency_s=time.perf_counter() - t0,
        )

    def _status_error(self, err: Any) -> TeacherError:
        status = int(err.status_code)
        msg = self._scrub(f"HTTP {status}: {getattr(err, 'message', err)}")
        retry_after = parse_retry_after(getattr(err.response, "headers", None))
        if status in (401, 403):
            return TeacherError(msg + " (check the key in teacher.api_key_env and its permissions)",
                                status=status, fatal=True)
        if status == 404:
            return TeacherError(msg + f" (is teacher.model {self.model!r} served at this endpoint?)",
                                status=status, fatal=True)
        retryable = status in (408, 409, 425, 429) or status >= 500
        return TeacherError(msg, status=status, retryable=retryable, retry_after=retry_after)

    async def aclose(self) -> None:
        await self._client.close()


def _first_choice(resp: Any) -> Any:
    choices = getattr(resp, "choices", None)
    if not choices:
        raise ValueError(f"no choices in the reply (got {type(resp).__name__})")
    return choices[0]


def _flatten(messages: list[dict[str, str]]) -> str:
    """Chat messages as one plain prompt, for `api: completions` endpoints."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
