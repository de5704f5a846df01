"""The OpenAI wire format `protege serve` speaks: request bodies (pydantic), replies, stream chunks, errors.

Only the fields a local model can honour are accepted with meaning; fields OpenAI clients commonly send
with neutral values (`user`, `logprobs: false`, `n: 1`, ...) are accepted and ignored, and a field asking
for something we cannot do (tools, logprobs, `best_of`, token-id prompts) is a 400 naming it, so a client
never silently gets something other than what it asked for.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class APIError(Exception):
    """An error reply in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use; the ones that matter are checked

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in stops if s]

    @model_validator(mode="after")
    def _unsupported(self) -> _Body:
        extra = self.model_extra or {}
        for key in ("tools", "functions", "logit_bias", "response_format", "suffix"):
            if extra.get(key) not in (None, [], {}) and not (key == "response_format" and extra[key] == {"type": "text"}):
                raise ValueError(f"`{key}` is not supported by protege serve")
        for key in ("logprobs", "echo", "top_logprobs"):
            if extra.get(key):
                raise ValueError(f"`{key}` is not supported by protege serve")
        if (extra.get("best_of") or 1) != 1:
            raise ValueError("`best_of` is not supported by protege serve")
        if self.stream and self.n != 1:
            raise ValueError("`n` must be 1 when streaming")
        return self

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    @property
    def stops(self) -> list[str]:
        return self.stop if isinstance(self.stop, list) else []


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(_Body):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _text_prompts(cls, v: str | list[str]) -> str | list[str]:
        if (isinstance(v, list) and not v) or any(p == "" for p in ([v] if isinstance(v, str) else v)):
            raise ValueError("must not be empty")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def limit(self) -> int | None:
        return self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_reply(rid: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    """A chat.completion object; `choices` is [(text, finish_reason), ...]."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish} for i, (text, finish) in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_reply(rid: str, model: str, choices: list[tuple[str, str]], prompt_tokens: int,
                     completion_tokens: int) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                        for i, (text, finish) in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(rid: str, model: str, created: int, object_: str, prompt_tokens: int,
                completion_tokens: int) -> dict[str, Any]:
    """The last chunk when the client asked for `stream_options: {include_usage: true}`."""
    return {"id": rid, "object": object_, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A one-paragraph message (and the first offending parameter) from pydantic/FastAPI errors."""
    parts, param = [], None
    for e in errors[:5]:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
        where = ".".join(loc)
        param = param or (where or None)
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            msg, where = "the request body is not valid JSON", ""
        elif not where and e.get("type") in ("model_attributes_type", "dict_type", "missing"):
            msg = "the request body must be a JSON object (send Content-Type: application/json)"
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more, param
