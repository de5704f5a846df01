"""`protege serve MODEL`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for a student or any model.

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions
(both with `stream: true` as server-sent events in OpenAI's chunk format, ending `data: [DONE]`).

Scheduling (written here because no library schedules *our* backends):
- `Admission` bounds the requests inside the server (running + waiting); one more gets 503 with Retry-After.
- `Lane` decides who may use the model: any number of *batched* calls at once (the hf backend merges
  concurrent requests with equal sampling parameters into one `generate`), or one *exclusive* user (a
  stream, or any request on a backend that does not batch, such as llama.cpp). Waiters are served in
  arrival order, so streams are not starved by a flood of batched requests or the reverse. The lane is
  released when the model work really ends (a done-callback), never earlier, even when a client hangs up.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protege.errors import UserError
from protege.ship.backends import Backend, ChatTemplateError, GenRequest, Generation
from protege.ship.protocol import (APIError, ChatBody, CompletionBody, chat_chunk, chat_reply, completion_chunk,
                                   completion_reply, error_body, new_id, usage_chunk, validation_message)


@dataclass
class ServeSettings:
    api_key: str | None = None  # the key itself (read from --api-key-env at start), never logged
    max_queue: int = 64  # requests inside the server at once (running + waiting) before 503
    default_max_tokens: int = 512  # when a request gives no max_tokens


class Lane:
    """Shared (batched) or exclusive use of one model; FIFO between waiters. Event-loop thread only."""

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self._waiters: deque[tuple[bool, asyncio.Future[None]]] = deque()

    def _free(self, exclusive: bool) -> bool:
        return not self.exclusive and (not exclusive or self.shared == 0)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self.exclusive = True
        else:
            self.shared += 1

    async def acquire(self, exclusive: bool) -> None:
        if not self._waiters and self._free(exclusive):
            self._take(exclusive)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((exclusive, fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: hand it on
                self.release(exclusive)
            raise

    def release(self, exclusive: bool) -> None:
        if exclusive:
            self.exclusive = False
        else:
            self.shared -= 1
        while self._waiters:
            want, fut = self._waiters[0]
            if fut.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if not self._free(want):
                break
            self._waiters.popleft()
            self._take(want)
            fut.set_result(None)

    async def hold(self, exclusive: bool, work: Callable[[], Awaitable[Any]]) -> Any:
        """Start `work()` once the lane is ours; release it when the work finishes, even if we are cancelled."""
        await self.acquire(exclusive)
        fut = asyncio.ensure_future(work())
        fut.add_done_callback(lambda _: self.release(exclusive))
        return await asyncio.shield(fut)


class Admission:
    """How many requests are inside; Retry-After from the recent time a request spends inside."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self.avg_s = 1.0

    def enter(self) -> Ticket:
        if self.active >= self.limit:
            raise APIError(503, f"The server is busy ({self.active} requests in progress or queued, the limit is "
                           f"{self.limit}). Retry after the time in the Retry-After header.", type="server_error",
                           code="server_busy", headers={"Retry-After": str(max(1, math.ceil(self.avg_s)))})
        self.active += 1
        return Ticket(self)

    def leave(self, seconds: float) -> None:
        self.active -= 1
        self.avg_s = 0.8 * self.avg_s + 0.2 * seconds


class Ticket:
    """One admitted request; leaves exactly once (explicitly, or when dropped unused: a stream never started)."""

    def __init__(self, adm: Admission) -> None:
        self.adm, self.t0, self.done = adm, time.perf_counter(), False

    def leave(self) -> None:
        if not self.done:
            self.done = True
            self.adm.leave(time.perf_counter() - self.t0)

    def __del__(self) -> None:
        self.leave()


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class Server:
    """The request handling behind the routes (no FastAPI types here, so it reads as plain logic)."""

    def __init__(self, backend: Backend, name: str, settings: ServeSettings) -> None:
        self.backend, self.name, self.settings = backend, name, settings
        self.lane = Lane()
        self.admission = Admission(settings.max_queue)

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(404, f"The model `{model}` does not exist here; this server serves `{self.name}` "
                           "(see GET /v1/models).", param="model", code="model_not_found")

    def requests(self, body: ChatBody | CompletionBody, prompts: list[str]) -> tuple[list[GenRequest], int]:
        """One GenRequest per prompt and choice, checked against the context; (requests, prompt tokens)."""
        be = self.backend
        if be.kind == "hf" and (body.presence_penalty or body.frequency_penalty):
            raise APIError(400, "presence_penalty/frequency_penalty are not supported by the hf backend "
                           "(use --backend llamacpp, or leave them at 0)", param="presence_penalty")
        out, total = [], 0
        for prompt in prompts:
            n_prompt = be.count_tokens(prompt)
            total += n_prompt
            room = be.context_length - n_prompt
            want = body.limit or min(self.settings.default_max_tokens, room)
            if room < 1 or want > room:
                raise APIError(400, f"This model's maximum context length is {be.context_length} tokens. However, "
                               f"you requested {n_prompt + max(want, 1)} tokens ({n_prompt} in the prompt, "
                               f"{max(want, 1)} for the completion). Please reduce the prompt or max_tokens.",
                               param="messages" if isinstance(body, ChatBody) else "prompt",
                               code="context_length_exceeded")
            out += [GenRequest(prompt, want, body.temperature, body.top_p, body.stops,
                               None if body.seed is None else body.seed + i, body.presence_penalty,
                               body.frequency_penalty) for i in range(body.n)]
        return out, total

    async def complete(self, body: ChatBody | CompletionBody, prompts: list[str], chat: bool) -> dict[str, Any]:
        reqs, n_prompt = self.requests(body, prompts)
        ticket = self.admission.enter()
        try:
            be = self.backend
            if be.batched:
                gens = await self.lane.hold(False, lambda: asyncio.gather(*(be.generate(r, i)
                                                                            for i, r in enumerate(reqs))))
            else:
                gens = [await self.lane.hold(True, lambda r=r, i=i: be.generate(r, i)) for i, r in enumerate(reqs)]
        finally:
            ticket.leave()
        choices = [(g.text, g.finish_reason) for g in gens]
        done = sum(g.completion_tokens for g in gens)
        reply = chat_reply if chat else completion_reply
        return reply(new_id("chatcmpl" if chat else "cmpl"), self.name, choices, n_prompt, done)

    def stream(self, body: ChatBody | CompletionBody, prompt: str, chat: bool) -> AsyncIterator[str]:
        """Admit now (a 503 must be an HTTP status, not a stream event); the events come from the iterator."""
        (req,), _ = self.requests(body, [prompt])
        ticket = self.admission.enter()
        return self._events(req, chat, body.include_usage, ticket)

    async def _events(self, req: GenRequest, chat: bool, include_usage: bool, ticket: Ticket) -> AsyncIterator[str]:
        rid, created, loop = new_id("chatcmpl" if chat else "cmpl"), int(time.time()), asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel, end = threading.Event(), object()

        def pump() -> None:  # the model thread: pieces and the final Generation into the queue
            try:
                for item in self.backend.stream(req, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as e:  # noqa: BLE001 - reported to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, end)

        def piece(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
                return chat_chunk(rid, self.name, created, delta, finish)
            return completion_chunk(rid, self.name, created, text, finish)

        worker: asyncio.Future[Any] | None = None
        try:
            await self.lane.acquire(True)
            worker = loop.run_in_executor(None, pump)
            worker.add_done_callback(lambda _: (self.lane.release(True), ticket.leave()))
            if chat:
                yield _sse(piece("", None, first=True))
            final: Generation | None = None
            while (item := await queue.get()) is not end:
                if isinstance(item, BaseException):
                    msg = str(item) if isinstance(item, ChatTemplateError) else "the model failed while generating"
                    yield _sse(error_body(msg, "server_error"))
                    break
                if isinstance(item, Generation):
                    final = item
                elif item:
                    yield _sse(piece(item, None))
            if final is not None:
                yield _sse(piece("", final.finish_reason))
                if include_usage:
                    yield _sse(usage_chunk(rid, self.name, created, "chat.completion.chunk" if chat else
                                           "text_completion", final.prompt_tokens, final.completion_tokens))
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # a client that hung up stops the model at the next token
            if worker is None:
                ticket.leave()


def create_app(backend: Backend, name: str, settings: ServeSettings) -> Any:
    """The FastAPI app serving `backend` as model `name`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    server = Server(backend, name, settings)
    app = FastAPI(title="protege serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    if settings.api_key:
        app.add_middleware(BearerAuth, key=settings.api_key)  # type: ignore[arg-type]

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:  # the traceback goes to the server log only
        print(f"protege serve: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "backend": backend.kind, "in_flight": server.admission.active}

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "protege"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        server.check_model(model_id)
        return model_card()

    def _stream(events: AsyncIterator[str]) -> StreamingResponse:
        # X-Accel-Buffering: nginx would otherwise buffer the event stream behind a reverse proxy.
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody) -> Any:
        server.check_model(body.model)
        try:
            prompt = backend.render_chat([m.as_dict() for m in body.messages])
        except ChatTemplateError as e:
            raise APIError(400, str(e), param="messages") from None
        if body.stream:
            return _stream(server.stream(body, prompt, chat=True))
        return await server.complete(body, [prompt], chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> Any:
        server.check_model(body.model)
        prompts = [backend.completion_prompt(p) for p in body.prompts]
        if body.stream:
            if len(prompts) != 1:
                raise APIError(400, "streaming takes one prompt per request", param="prompt")
            return _stream(server.stream(body, prompts[0], chat=False))
        return await server.complete(body, prompts, chat=False)

    return app


class BearerAuth:
    """ASGI middleware: /v1/* needs `Authorization: Bearer <key>` (compared in constant time); /health does not.

    A plain ASGI middleware (not a route dependency) so that it answers 401 before the body is even parsed.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                from fastapi.responses import JSONResponse

                msg = ("Incorrect API key provided." if token.strip() else
                       "Missing API key: send the header `Authorization: Bearer <key>`.")
                resp = JSONResponse(error_body(msg, "invalid_request_error", None, "invalid_api_key"), status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}",
                            hint="Another server may be using the port: pick another with --port.") from None


def run(model: str, *, host: str = "127.0.0.1", port: int = 8000, api_key_env: str | None = None,
        backend: str | None = None, base: str | None = None, max_batch: int = 8, max_queue: int = 64,
        n_ctx: int = 4096, n_threads: int | None = None, served_name: str | None = None,
        say: Any = print) -> None:
    """Load MODEL and serve it until Ctrl-C (the stage function behind `protege serve`)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("protege serve needs FastAPI and uvicorn, which are not installed",
                        hint="pip install 'protege[serve]'") from None
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is empty or not set",
                            hint=f"export {api_key_env}=<a long random key>  (clients send it as the bearer token)")
    if not is_loopback(host) and not key:
        say(f"warning: serving on {host} without --api-key-env: anyone who can reach this port can use the model")
    if max_queue < 1 or max_batch < 1:
        raise UserError("--max-queue and --max-batch must be at least 1")
    _check_port(host, port)
    be, name = _open(model, backend, base, max_batch, n_ctx, n_threads, say)
    name = served_name or name
    app = create_app(be, name, ServeSettings(api_key=key, max_queue=max_queue))
    shown = f"[{host}]" if ":" in host else host
    say(f"serving {name} ({be.kind}{', batched' if be.batched else ''}) on http://{shown}:{port}/v1  "
        f"(queue limit {max_queue}{', bearer key required' if key else ''}; Ctrl-C stops)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        be.close()


def _open(model: str, backend: str | None, base: str | None, max_batch: int, n_ctx: int, n_threads: int | None,
          say: Any) -> tuple[Backend, str]:
    from protege.ship.backends import open_backend

    return open_backend(model, backend=backend, base=base, max_batch=max_batch, n_ctx=n_ctx, n_threads=n_threads,
                        say=say)
