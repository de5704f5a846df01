"""Any OpenAI-compatible endpoint through the official `openai` SDK (async).

OpenAI, vLLM, Ollama, the llama.cpp server, LM Studio, TGI, gateways: chat completions, or
plain completions when `teacher.api: completions`. The SDK's own retries are off
(`max_retries=0`): the engine retries, so every attempt is logged and budgeted.

The API key is read from the environment variable named by `teacher.api_key_env` and lives
only in the SDK client: it is scrubbed from every error message this module raises.
"""

from __future__ import annotations

import email.utils
import json
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
    """The `openai` backend.

    `http`: the SDK's HTTP transport. "httpx" (default): the SDK's own httpx2 client.
    "aiohttp": the SDK's documented aiohttp transport (`openai.DefaultAioHttpClient`, needs
    `pip install 'openai[aiohttp]'`): the same SDK, errors and behaviour, with a cheaper
    connection pool — about a third less client CPU a request against a fast local server
    (docs/benchmarks.md), which matters only for very fast endpoints (local vLLM, cache-heavy
    gateways); against remote APIs latency dominates and the default is as fast.
    """

    def __init__(self, *, model: str, base_url: str | None = None, api_key_env: str | None = None,
                 api: str = "chat", timeout_s: float = 120, max_connections: int = 64,
                 http: str = "httpx") -> None:
        import httpx2  # the transport the installed openai SDK is built on
        import openai
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
        http_client = _http_client(http, limits, timeout_s)
        # One SDK client and one connection pool for the teacher's lifetime: keep-alive
        # connections are reused across requests (a new connection per request would cost a TCP
        # handshake and pool bookkeeping each time). The pool holds as many connections as the
        # engine keeps requests in flight (more would only add idle connections that httpcore
        # checks on every request).
        self._client = AsyncOpenAI(
            api_key=key, base_url=base_url or _DEFAULT_BASE_URL, max_retries=0, timeout=timeout_s,
            http_client=http_client,
        )
        self._openai = openai
        self._raw_response = httpx2.Response
        # As `create()` sends it: the bearer key only (no admin key from the environment).
        self._options: Any = {"security": {"bearer_auth": True}}

    def _scrub(self, text: str) -> str:
        if self._secret and self._secret != "no-key":
            text = text.replace(self._secret, "***")
        return _KEYLIKE.sub("***", text)[:500]

    async def complete(self, request: Request) -> Completion:
        openai = self._openai
        t0 = time.perf_counter()
        completions = self.api == "completions" or request.prompt is not None
        body = self._body(request, completions)
        try:
            # The SDK's generic `post` (its documented way to send a request body as-is): the
            # same client, auth header, base URL, timeout and typed errors as
            # `chat.completions.create()`, without the two steps that made up a third of a
            # request's client CPU in a profile against a fast server (~18 %, 0.5 ms, unprofiled;
            # docs/benchmarks.md): the recursive, annotation-driven
            # transform of the request body (an identity for our plain text messages and
            # sampling numbers) and the construction of a pydantic ChatCompletion tree of which
            # we read five fields. The reply is read with `json.loads` (see _read_reply).
            resp = await self._client.post("/completions" if completions else "/chat/completions",
                                           body=body, cast_to=self._raw_response, options=self._options)
            text, finish, prompt_tokens, completion_tokens, version = _read_reply(resp.content, completions)
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
        return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, model=version or self.model,
                          latency_s=time.perf_counter() - t0)

    def _body(self, request: Request, completions: bool) -> dict[str, Any]:
        """The JSON body `chat.completions.create()` / `completions.create()` would send."""
        body: dict[str, Any] = {"model": self.model}
        if completions:
            body["prompt"] = request.prompt if request.prompt is not None else _flatten(request.messages or [])
        else:
            body["messages"] = request.messages or []
        for k, v in request.sampling.items():
            if v is not None:
                body[k] = v
        if request.json_mode and not completions:
            body["response_format"] = {"type": "json_object"}
        return body

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


def _http_client(http: str, limits: Any, timeout_s: float) -> Any:
    """The SDK's HTTP client for `http` ("httpx" or "aiohttp"), redirects not followed."""
    import httpx2

    if http == "httpx":
        return httpx2.AsyncClient(limits=limits, timeout=timeout_s)
    if http != "aiohttp":
        raise UserError(f"openai teacher: unknown HTTP transport {http!r}", hint='use "httpx" or "aiohttp"')
    try:
        import aiohttp  # noqa: F401  (the SDK's aiohttp transport imports it lazily)
    except ImportError:
        raise UserError("the aiohttp HTTP transport needs the aiohttp package",
                        hint="pip install 'openai[aiohttp]' (or use the default httpx transport)") from None
    import openai

    return openai.DefaultAioHttpClient(limits=limits, timeout=timeout_s, follow_redirects=False)


def _read_reply(content: bytes, completions: bool) -> tuple[Any, Any, int, int, Any]:
    """(text, finish_reason, prompt_tokens, completion_tokens, model) of a completion reply.

    Raises ValueError/TypeError/AttributeError/KeyError on a body that is not the expected
    JSON object; `text` is whatever the reply holds (the caller insists on a string).
    """
    data = json.loads(content)
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise ValueError(f"no choices in the reply (got {type(data).__name__})")
    choice = choices[0]
    text = choice.get("text") if completions else (choice.get("message") or {}).get("content")
    usage = data.get("usage") or {}
    return (text, choice.get("finish_reason"), int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0), data.get("model"))


def _flatten(messages: list[dict[str, str]]) -> str:
    """Chat messages as one plain prompt, for `api: completions` endpoints."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
