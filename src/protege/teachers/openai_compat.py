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
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from protege.errors import UserError
from protege.teachers.base import Completion, Request, TeacherError, completions_sampling, read_logprobs

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Keys that providers echo back partly masked in error bodies (e.g. "sk-abc***xyz").
_KEYLIKE = re.compile(r"\b(sk|rk|pk|key|hf|gsk|xai)[-_][A-Za-z0-9_\-\*\.]{6,}", re.IGNORECASE)


def endpoint_host(base_url: str | None) -> str:
    """host[:port] of a base URL: provenance without credentials, paths or query strings."""
    parts = urlsplit(base_url or _DEFAULT_BASE_URL)
    host = parts.hostname or "unknown"
    return f"{host}:{parts.port}" if parts.port else host


def display_url(base_url: str | None) -> str:
    """The base URL as safe to print: without user:password@, query or fragment."""
    raw = base_url or _DEFAULT_BASE_URL
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return raw.split("@")[-1].split("?")[0]
    if not parts.scheme or not host:
        return raw.split("@")[-1].split("?")[0]
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_base_url(base_url: str | None) -> None:
    """Refuse a base URL the HTTP client cannot even parse (bad port, brackets), as a UserError."""
    if base_url is None:
        return
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as err:
        raise UserError(f"teacher.base_url {display_url(base_url)!r} is not a valid URL: {err}",
                        hint="Write it like http://127.0.0.1:8000/v1 or https://api.openai.com/v1.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"teacher.base_url {display_url(base_url)!r} is not an http(s) URL with a host",
                        hint="Write it like http://127.0.0.1:8000/v1 or https://api.openai.com/v1.")


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

        check_base_url(base_url)
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
        self.base_url = display_url(base_url)
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
            text, finish, prompt_tokens, completion_tokens, version, logprobs = _read_reply(resp.content, completions)
        except openai.APIStatusError as err:
            raise self._status_error(err) from None
        except openai.APIConnectionError as err:  # APITimeoutError included
            raise self._connection_error(err) from None
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
                          latency_s=time.perf_counter() - t0, logprobs=logprobs)

    def _body(self, request: Request, completions: bool) -> dict[str, Any]:
        """The JSON body `chat.completions.create()` / `completions.create()` would send."""
        body: dict[str, Any] = {"model": self.model}
        if completions:
            body["prompt"] = request.prompt if request.prompt is not None else _flatten(request.messages or [])
        else:
            body["messages"] = request.messages or []
        for k, v in (completions_sampling(request.sampling) if completions else request.sampling).items():
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

    def _connection_error(self, err: Exception) -> TeacherError:
        """Classify a failure to get any HTTP reply. A malformed URL, a host that does not resolve
        or a TLS failure cannot fix itself: fatal (the run stops at once and says why). A refused
        connection is retryable (a local server restarting) and counts towards the engine's
        circuit breaker; a timeout is retryable."""
        kind, detail = classify_connection_error(err)
        where = self.base_url
        if kind == "timeout":
            return TeacherError(self._scrub(f"timed out ({detail})"), retryable=True)
        if kind == "refused":
            return TeacherError(self._scrub(f"connection refused by {where}: nothing listens there ({detail})"),
                                retryable=True)
        if kind == "dns":
            return TeacherError(self._scrub(f"cannot resolve the host of {where} ({detail}); check "
                                            "teacher.base_url"), fatal=True)
        if kind == "tls":
            return TeacherError(self._scrub(f"TLS error talking to {where} ({detail}); http:// vs https://, "
                                            "or the server's certificate"), fatal=True)
        if kind == "url":
            return TeacherError(self._scrub(f"malformed teacher.base_url {where!r} ({detail}); it must look "
                                            "like http://host:port/v1"), fatal=True)
        return TeacherError(self._scrub(f"connection error with {where}: {detail}"), retryable=True)

    async def check(self, timeout_s: float) -> None:
        """One cheap request before a run, so a dead or misconfigured endpoint fails in seconds.

        `GET {base_url}/models` (OpenAI, vLLM, llama.cpp, Ollama, LM Studio have it); where that
        route is missing (404), one completion of `max_tokens: 1`. Raises a fatal TeacherError
        for no reply at all (refused, DNS, TLS, malformed URL, timeout), 401/403 and 404; any
        other reply (200, 429, 5xx) means someone answers there and the run goes on.
        """
        openai = self._openai
        try:
            await self._client.get("/models", cast_to=self._raw_response,
                                   options={**self._options, "timeout": timeout_s})
            return
        except openai.APIStatusError as err:
            status = int(err.status_code)
            if status in (401, 403):
                raise self._status_error(err) from None
            if status not in (404, 405):
                return
        except openai.APIConnectionError as err:
            raise _fatal(self._connection_error(err), timeout_s) from None
        probe = Request(messages=[{"role": "user", "content": "ping"}], sampling={"max_tokens": 1})
        try:
            await self.complete(probe)
        except TeacherError as err:
            if err.fatal or err.status is None:
                raise _fatal(err, timeout_s) from None

    async def aclose(self) -> None:
        await self._client.close()


def _fatal(err: TeacherError, timeout_s: float) -> TeacherError:
    msg = str(err)
    if msg.startswith("timed out"):
        msg = f"no reply within {timeout_s:g} s ({msg}); is it the right host and port, and is the server up?"
    return TeacherError(msg, status=err.status, fatal=True)


# Exception type names (across the SDK's httpx and aiohttp transports) by what they mean.
_URL_ERRORS = {"UnsupportedProtocol", "InvalidURL", "LocalProtocolError", "InvalidUrlClientError",
               "NonHttpUrlClientError"}
_DNS_ERRORS = {"ClientConnectorDNSError"}
_TLS_ERRORS = {"ClientSSLError", "ClientConnectorSSLError", "ClientConnectorCertificateError"}


def classify_connection_error(err: BaseException) -> tuple[str, str]:
    """("url" | "dns" | "tls" | "refused" | "timeout" | "other", detail) for a failed connection.

    Walks the exception's cause chain: the SDK wraps the transport's error (httpx or aiohttp),
    which wraps the OS error, and the aiohttp transport reports even a refused connection as a
    "ConnectTimeout", so the innermost cause decides.
    """
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in chain and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    innermost = chain[-1]
    detail = f"{type(innermost).__name__}: {innermost}"[:300]
    names = {type(e).__name__ for e in chain}
    if names & _URL_ERRORS:
        return "url", detail
    if any(isinstance(e, socket.gaierror) for e in chain) or names & _DNS_ERRORS:
        return "dns", detail
    if any(isinstance(e, ssl.SSLError) for e in chain) or names & _TLS_ERRORS \
            or any("SSL" in str(e) and "ssl:default" not in str(e) for e in chain[1:]):
        return "tls", detail
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in detail \
            or "All connection attempts failed" in detail:
        return "refused", detail
    if any(isinstance(e, TimeoutError) for e in chain) or "Timeout" in " ".join(names):
        return "timeout", detail
    return "other", detail


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


def _read_reply(content: bytes, completions: bool) -> tuple[Any, Any, int, int, Any, list[list[Any]] | None]:
    """(text, finish_reason, prompt_tokens, completion_tokens, model, logprobs) of a completion reply.

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
            int(usage.get("completion_tokens") or 0), data.get("model"), read_logprobs(choice))


def _flatten(messages: list[dict[str, str]]) -> str:
    """Chat messages as one plain prompt, for `api: completions` endpoints."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"
