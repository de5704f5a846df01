"""Teachers: backends behind one Protocol (`base.Teacher`), chosen by `teacher.kind`.

`BACKENDS[kind](cfg)` builds a teacher from a `TeacherConfig`; each factory imports its backend
only when called, so optional dependencies (llama-cpp-python, vllm) are needed only when used.
`build_engine()` wraps a teacher with the cache, limits, retries and caps of `engine.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from protege.teachers.base import Completion, Request, Teacher, TeacherError

if TYPE_CHECKING:
    from protege.config import GenerateConfig, TeacherConfig
    from protege.teachers.cache import CallLog
    from protege.teachers.engine import Engine


def _openai(cfg: TeacherConfig) -> Teacher:
    from protege.teachers.openai_compat import OpenAITeacher

    http = cfg.http
    if http == "auto":  # aiohttp costs ~1.4 ms CPU per request vs ~2.2 for httpx (docs/benchmarks.md)
        import importlib.util

        http = "aiohttp" if importlib.util.find_spec("aiohttp") else "httpx"
    if isinstance(cfg.base_url, list):  # replicas: one client each, least-outstanding routing on top
        from protege.teachers.replicas import ReplicaTeacher

        return ReplicaTeacher([OpenAITeacher(model=cfg.model, base_url=u, api_key_env=cfg.api_key_env, api=cfg.api,
                                             timeout_s=cfg.timeout_s, max_connections=max(cfg.max_concurrency, 1),
                                             http=http) for u in cfg.base_url], cfg.base_url)
    return OpenAITeacher(model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, api=cfg.api,
                         timeout_s=cfg.timeout_s, max_connections=max(cfg.max_concurrency, 1), http=http)


def _llamacpp(cfg: TeacherConfig) -> Teacher:
    from protege.teachers.llamacpp import LlamaCppTeacher

    return LlamaCppTeacher(cfg.model, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)


def _hf(cfg: TeacherConfig) -> Teacher:
    from protege.teachers.hf_local import HFTeacher

    return HFTeacher(cfg.model, batch_size=max(1, min(cfg.max_concurrency, 32)))


def _vllm(cfg: TeacherConfig) -> Teacher:
    from protege.teachers.vllm_offline import VLLMTeacher

    return VLLMTeacher(cfg.model, max_batch=cfg.max_concurrency)


BACKENDS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "openai": _openai, "llamacpp": _llamacpp, "hf": _hf, "vllm": _vllm,
}


def build_teacher(cfg: TeacherConfig) -> Teacher:
    """The backend named by `cfg.kind`."""
    return BACKENDS[cfg.kind](cfg)


def build_engine(teacher: Teacher, calls: CallLog | None, tcfg: TeacherConfig,
                 gcfg: GenerateConfig | None = None) -> Engine:
    """An engine configured from the teacher and generate blocks."""
    from protege.teachers.engine import Engine

    local = tcfg.kind != "openai"
    return Engine(
        teacher, calls,
        # Local backends queue requests internally (one model call at a time), so a timeout
        # would count queueing as slowness and a retry would queue behind the abandoned call:
        # no timeout for them. llama.cpp runs one request at a time anyway.
        max_concurrency=1 if tcfg.kind == "llamacpp" else tcfg.max_concurrency,
        requests_per_minute=None if local else tcfg.requests_per_minute,
        tokens_per_minute=None if local else tcfg.tokens_per_minute,
        timeout_s=None if local else tcfg.timeout_s, max_retries=tcfg.max_retries,
        price_input_per_mtok=tcfg.price_input_per_mtok, price_output_per_mtok=tcfg.price_output_per_mtok,
        budget_usd=gcfg.budget_usd if gcfg else None, max_requests=gcfg.max_requests if gcfg else None,
        seed=gcfg.seed if gcfg else None, max_consecutive_failures=tcfg.max_consecutive_failures,
    )


def complete_all(tcfg: TeacherConfig, requests: list[Request], calls_db: Any = None,
                 gcfg: GenerateConfig | None = None, on_result: Callable[[Any], None] | None = None) -> list[Any]:
    """Answer every request with the model of `tcfg` through the engine; one `engine.Result` per request, in order.

    The one way any model answers a list of prompts: a teacher, a judge, the student or its base (`kind: hf`
    on a directory, `llamacpp` on a GGUF). Answers are cached in `calls_db` (SQLite) when given, so a rerun
    computes only what is new; local backends batch concurrent requests. `on_result` sees each result as it
    arrives (progress bars).
    """
    import asyncio

    from protege.teachers.cache import CallLog

    calls = CallLog(calls_db) if calls_db is not None else None
    tagged = [Request(r.messages, r.prompt, r.sampling, r.sample_index, r.json_mode, tag=i)
              for i, r in enumerate(requests)]

    async def go() -> list[Any]:
        teacher = build_teacher(tcfg)
        engine = build_engine(teacher, calls, tcfg, gcfg)
        out: list[Any] = [None] * len(tagged)
        try:
            async for result in engine.map(tagged):
                out[result.request.tag] = result
                if on_result is not None:
                    on_result(result)
        finally:
            await teacher.aclose()
        return out

    try:
        return asyncio.run(go())
    finally:
        if calls is not None:
            calls.close()


__all__ = ["BACKENDS", "Completion", "Request", "Teacher", "TeacherError", "build_engine", "build_teacher",
           "complete_all"]
