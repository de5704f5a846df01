"""The model behind `protege serve` and `protege chat`: transformers (`hf`) or llama.cpp (`llamacpp`).

A backend turns a `GenRequest` (the model's input text, chat template already applied, plus sampling
parameters) into text, two ways:

- `stream(req, cancel)`: a blocking iterator of text pieces ending with one `Generation` (finish reason and
  real token counts). It runs the model in the caller's thread or a helper thread, stops between two tokens
  once `cancel` is set (Ctrl-C in chat, a client that hung up), and is what chat and streamed HTTP replies use.
- `generate(req)` (async): the whole answer. The hf backend sends it through protege's own HF teacher
  (`protege.teachers`, `kind: hf`), whose micro-batcher runs concurrent requests with the same sampling
  parameters as one left-padded `generate` call. llama.cpp (one sequence at a time in llama-cpp-python)
  simply drains `stream`.

Why a token loop of our own for llama.cpp instead of `create_chat_completion(stream=True)`: its stream
carries no token counts, and `usage` must be real; `Llama.generate` gives the token ids. The chat prompt is
rendered by llama-cpp-python's own `Jinja2ChatFormatter` from the template stored in the GGUF, exactly as
its server does.
"""

from __future__ import annotations

import codecs
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from protege.errors import UserError


@dataclass
class GenRequest:
    """One answer to produce. `prompt` is the exact model input (template applied, special tokens as text)."""

    prompt: str
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def sampling_key(self) -> tuple[Any, ...]:
        return (self.max_tokens, self.temperature, self.top_p)


@dataclass
class Generation:
    """A finished answer with real token counts (`finish_reason`: stop | length)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ChatTemplateError(ValueError):
    """The model has no chat template, or the template refused the messages (a 400 for the client)."""


class Backend(Protocol):
    """What serve and chat need from a model."""

    kind: str  # "hf" | "llamacpp"
    context_length: int
    batched: bool  # whether concurrent `generate` calls are batched (else they queue)

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...

    def completion_prompt(self, text: str) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def count_text_tokens(self, text: str) -> int: ...

    def stream(self, req: GenRequest, cancel: threading.Event) -> Iterator[str | Generation]: ...

    async def generate(self, req: GenRequest, index: int = 0) -> Generation: ...

    def close(self) -> None: ...


class StopMatcher:
    """Cut streamed text at the first stop sequence, holding back only what could still become one.

    Hand-written because the answer must stop *before* the stop sequence, and a stop sequence may arrive
    split over several pieces; neither transformers' streamer nor our llama.cpp loop does this.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.kept: list[str] = []
        self.hit = False

    def feed(self, text: str) -> str:
        """Text safe to emit now ('' while holding back); sets `hit` once a stop sequence is complete."""
        if self.hit:
            return ""
        self.buf += text
        if not self.stops:
            out, self.buf = self.buf, ""
            self.kept.append(out)
            return out
        found = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.buf, self.hit = self.buf[: min(found)], "", True
            self.kept.append(out)
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold:]
        self.kept.append(out)
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit else self.buf), ""
        self.kept.append(out)
        return out

    @property
    def text(self) -> str:
        return "".join(self.kept)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop sequence, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _seed(req: GenRequest) -> int:
    return req.seed if req.seed is not None else random.getrandbits(31)


# --------------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------------


class HFBackend:
    """A Hugging Face model folder through protege's HF teacher (batched) plus a streaming path.

    Batched answers go through `protege.teachers` (`kind: hf`: the same loading, left padding, EOS handling
    and token counts as everywhere else in protege). Streaming uses transformers' `TextIteratorStreamer`
    on the same model object, one request at a time; the server never runs it beside a batch (see
    `serve.Lane`). A second tokenizer instance renders and counts prompts on the server's event loop, so it
    never shares the Rust tokenizer with the generating thread.
    """

    kind = "hf"

    def __init__(self, model_dir: Path, *, max_batch: int = 8, n_threads: int | None = None) -> None:
        import torch
        from transformers import AutoTokenizer

        from protege.config import TeacherConfig
        from protege.teachers import build_teacher

        if n_threads:  # on a shared CPU fewer threads than cores can be much faster (no spinning on busy cores)
            torch.set_num_threads(n_threads)
        self.batched = max_batch > 1
        self.teacher: Any = build_teacher(TeacherConfig(kind="hf", model=str(model_dir), max_concurrency=max_batch))
        self.model = self.teacher.model
        self.tok = self.teacher.tok  # used by the generating thread only
        self.counter = AutoTokenizer.from_pretrained(str(model_dir))  # the event loop's own tokenizer
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.counter.model_max_length]
        self.context_length = int(min(x for x in limits if isinstance(x, int) and 0 < x < 10**7) or 2048)
        ids = self.counter("a").input_ids
        self._bos_text = (self.counter.bos_token or "") if ids and ids[0] == self.counter.bos_token_id else ""
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in eos:
            eos.append(self.tok.eos_token_id)
        self.eos_ids = eos

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self.counter.chat_template:
            raise ChatTemplateError("this model has no chat template: use /v1/completions with a plain prompt")
        try:
            return str(self.counter.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        except Exception as e:  # noqa: BLE001 - a template's raise_exception or a Jinja error: the client's 400
            raise ChatTemplateError(f"the model's chat template refused these messages: {e}") from None

    def completion_prompt(self, text: str) -> str:
        """A plain prompt as transformers would encode it: with the BOS token when the tokenizer adds one."""
        return text if not self._bos_text or text.startswith(self._bos_text) else self._bos_text + text

    def count_tokens(self, text: str) -> int:
        return len(self.counter(text, add_special_tokens=False).input_ids)

    count_text_tokens = count_tokens

    async def generate(self, req: GenRequest, index: int = 0) -> Generation:
        from protege.teachers import Request

        sampling = {"max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p}
        # The teacher seeds from the request's cache key: a distinct sample_index per request and choice
        # gives each its own sample (and a client's `seed` a repeatable one).
        out = await self.teacher.complete(Request(prompt=req.prompt, sampling=sampling,
                                                  sample_index=_seed(req) * 64 + index))
        text, cut = cut_at_stop(out.text, req.stop)
        n = self.count_text_tokens(text) if cut else out.completion_tokens
        return Generation(text, "stop" if cut else (out.finish_reason or "stop"), out.prompt_tokens, n)

    def stream(self, req: GenRequest, cancel: threading.Event) -> Iterator[str | Generation]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        halt = threading.Event()

        class Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), halt.is_set() or cancel.is_set(), dtype=torch.bool,
                                  device=input_ids.device)

        enc = self.tok(req.prompt, return_tensors="pt", add_special_tokens=False).to(self.teacher.device)
        n_prompt = int(enc["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {"max_new_tokens": req.max_tokens, "pad_token_id": self.tok.pad_token_id,
                                  "eos_token_id": self.eos_ids, "do_sample": req.temperature > 0,
                                  "streamer": streamer, "stopping_criteria": StoppingCriteriaList([Halt()])}
        if req.temperature > 0:
            kwargs.update(temperature=req.temperature, top_p=req.top_p)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                torch.manual_seed(_seed(req))
                with torch.inference_mode():
                    result["out"] = self.model.generate(**enc, **kwargs)
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer's thread
                result["error"] = e
                streamer.on_finalized_text("", stream_end=True)

        thread = threading.Thread(target=work, name="protege-stream", daemon=True)
        stops = StopMatcher(req.stop)
        thread.start()
        try:
            for piece in streamer:
                if cancel.is_set():
                    break
                out = stops.feed(piece)
                if out:
                    yield out
                if stops.hit:
                    break
            tail = stops.flush()
            if tail and not cancel.is_set():
                yield tail
        finally:
            halt.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, n_prompt:].tolist()
        end = next((i for i, t in enumerate(new) if t in self.eos_ids), None)
        tokens = new if end is None else new[:end]
        if stops.hit:
            finish, n = "stop", self.count_text_tokens(stops.text)
        else:
            finish = "stop" if end is not None or len(tokens) < req.max_tokens else "length"
            n = len(tokens)
        yield Generation(stops.text, finish, n_prompt, n)

    def close(self) -> None:
        import asyncio

        try:
            asyncio.run(self.teacher.aclose())
        except RuntimeError:  # inside a running loop: the pool shuts down with the process
            pass


# --------------------------------------------------------------------------------------------------
# llama.cpp
# --------------------------------------------------------------------------------------------------


class LlamaCppBackend:
    """A GGUF in-process through llama-cpp-python; one sequence at a time (its `Llama` is not re-entrant)."""

    kind = "llamacpp"
    batched = False

    def __init__(self, gguf: Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> None:
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise UserError("--backend llamacpp needs llama-cpp-python, which is not installed",
                            hint="pip install 'protege[llamacpp]'  (compiles llama.cpp; a few minutes)") from None
        import os

        threads = n_threads or os.cpu_count() or 1
        self._lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.context_length = self.llm.n_ctx()
        self._vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.eos_text = self._piece(eos) if eos >= 0 else ""
        self.bos_text = self._piece(bos) if bos >= 0 else ""
        self._formatter = (Jinja2ChatFormatter(template=template, eos_token=self.eos_text, bos_token=self.bos_text)
                           if template else None)
        self._adds_bos = meta.get("tokenizer.ggml.add_bos_token", "false") == "true" and bos >= 0

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self._formatter is None:
            raise ChatTemplateError("this GGUF has no chat template: use /v1/completions with a plain prompt")
        try:
            return self._formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - the template's raise_exception or a Jinja error
            raise ChatTemplateError(f"the model's chat template refused these messages: {e}") from None

    def completion_prompt(self, text: str) -> str:
        """A plain prompt as llama.cpp's completion API encodes it: with BOS when the GGUF asks for one."""
        return text if not self._adds_bos or text.startswith(self.bos_text) else self.bos_text + text

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def count_text_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream(self, req: GenRequest, cancel: threading.Event) -> Iterator[str | Generation]:
        tokens = self.tokenize(req.prompt)
        room = self.context_length - len(tokens)
        if room < 1:
            raise ChatTemplateError(f"the prompt has {len(tokens)} tokens; the context holds {self.context_length}")
        max_new = min(req.max_tokens, room)
        self.llm.set_seed(_seed(req))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(req.stop)
        n, finish = 0, "length"
        gen = self.llm.generate(tokens, top_k=0, top_p=req.top_p, min_p=0.0, temp=req.temperature,
                                repeat_penalty=1.0, presence_penalty=req.presence_penalty,
                                frequency_penalty=req.frequency_penalty)
        try:
            for token in gen:
                if cancel.is_set():
                    finish = "stop"
                    break
                if self.is_eog(token):
                    finish = "stop"
                    break
                n += 1
                out = stops.feed(decoder.decode(self.llm.detokenize([token], special=False)))
                if out:
                    yield out
                if stops.hit:
                    finish = "stop"
                    break
                if n >= max_new:
                    break
        finally:
            gen.close()
        tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        if tail and not cancel.is_set():
            yield tail
        count = self.count_text_tokens(stops.text) if stops.hit else n
        yield Generation(stops.text, finish, len(tokens), count)

    async def generate(self, req: GenRequest, index: int = 0) -> Generation:
        import asyncio

        return await asyncio.to_thread(drain, self.stream(req, threading.Event()))

    def close(self) -> None:
        self.llm.close()


def drain(stream: Iterator[str | Generation]) -> Generation:
    """Run a stream to its end; its `Generation`."""
    final = None
    for item in stream:
        if isinstance(item, Generation):
            final = item
    assert final is not None, "a backend stream ends with a Generation"
    return final


def open_backend(model: str, *, backend: str | None = None, base: str | None = None, max_batch: int = 8,
                 n_ctx: int = 4096, n_threads: int | None = None, say: Any = None) -> tuple[Backend, str]:
    """Load MODEL (run dir, adapter, model folder, GGUF or spec) for serving or chat; (backend, served name).

    Default backend: llama.cpp for a GGUF file, transformers otherwise. An adapter is merged into its base
    once (cached under protege's cache) so that both the batched and the streaming path see plain weights.
    """
    from protege.ship.source import locate

    if backend not in (None, "hf", "llamacpp"):
        raise UserError(f"unknown backend {backend!r}", hint="Use --backend hf or --backend llamacpp.")
    want = {"hf": "hf", "llamacpp": "gguf", None: None}[backend]
    src = locate(model, base=base, want=want)  # type: ignore[arg-type]
    if say:
        say(f"loading {src.describe()}")
    if src.kind == "gguf":
        return LlamaCppBackend(src.path, n_ctx=n_ctx, n_threads=n_threads), src.name
    path = src.path
    if src.kind == "adapter":
        from protege.ship.merge import merged_for_serving

        path = merged_for_serving(src, say=say)
    return HFBackend(path, max_batch=max_batch, n_threads=n_threads), src.name
