"""`teacher.kind: vllm` through `complete_all`, with a TEST DOUBLE of the `vllm` module.

vLLM needs a CUDA GPU and is not installed here (nor in the image of the GPU machine lent to this
project: docs/scale.md, "GPUs"), so this checks only what protege hands to vLLM: `vllm.LLM(model=<the
resolved model dir>)`, one batched `LLM.chat` (messages) or `LLM.generate` (plain prompts) call with one
`SamplingParams` per request (temperature, top_p, max_tokens, a per-request seed), and how the returned
`RequestOutput`-shaped objects become results. It does not show that vLLM itself runs.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from protege.config import TeacherConfig
from protege.teachers import complete_all
from protege.teachers.base import Request


class FakeVLLM:
    """Records every call; answers with text derived from the input so the mapping can be checked."""

    def __init__(self) -> None:
        self.llm_kwargs: list[dict[str, Any]] = []
        self.calls: list[tuple[str, list[Any], list[Any]]] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kw: Any) -> None:
                self.kw = kw

        class LLM:
            def __init__(self, **kw: Any) -> None:
                fake.llm_kwargs.append(kw)

            def _out(self, inputs: list[Any], params: list[Any], kind: str) -> list[Any]:
                fake.calls.append((kind, inputs, params))
                outs = []
                for x, p in zip(inputs, params):
                    text = (x[-1]["content"] if kind == "chat" else x).upper()
                    n = p.kw["max_tokens"]
                    gen = types.SimpleNamespace(text=text[:n], finish_reason="length" if len(text) > n else "stop",
                                                token_ids=list(range(min(len(text), n))))
                    outs.append(types.SimpleNamespace(outputs=[gen], prompt_token_ids=[0] * 7))
                return outs

            def chat(self, messages: list[Any], params: list[Any], use_tqdm: bool = True) -> list[Any]:
                return self._out(messages, params, "chat")

            def generate(self, prompts: list[Any], params: list[Any], use_tqdm: bool = True) -> list[Any]:
                return self._out(prompts, params, "generate")

        self.module = types.ModuleType("vllm")
        self.module.LLM = LLM  # type: ignore[attr-defined]
        self.module.SamplingParams = SamplingParams  # type: ignore[attr-defined]


def _model_dir(tmp_path: Path) -> Path:
    """A local model directory as protege's model specs accept it (vLLM itself is the double)."""
    d = tmp_path / "teacher-model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama"}')
    return d


@pytest.fixture
def fake_vllm(monkeypatch):  # type: ignore[no-untyped-def]
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    return fake


def test_chat_requests_reach_vllm_as_one_batch_with_per_request_sampling(tmp_path: Path, fake_vllm) -> None:  # type: ignore[no-untyped-def]
    model_dir = _model_dir(tmp_path)
    cfg = TeacherConfig(kind="vllm", model=str(model_dir), max_concurrency=16)
    reqs = [Request(messages=[{"role": "user", "content": f"question {i}"}],
                    sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": 8 + i}) for i in range(3)]
    results = complete_all(cfg, reqs, calls_db=tmp_path / "calls.db")
    assert fake_vllm.llm_kwargs == [{"model": str(model_dir)}]
    assert sum(len(inputs) for _, inputs, _ in fake_vllm.calls) == 3
    assert {kind for kind, _, _ in fake_vllm.calls} == {"chat"}
    given = {m[-1]["content"]: p.kw for _, inputs, params in fake_vllm.calls for m, p in zip(inputs, params)}
    for i in range(3):
        kw = given[f"question {i}"]
        assert (kw["temperature"], kw["top_p"], kw["max_tokens"]) == (0.7, 0.9, 8 + i)
        assert isinstance(kw["seed"], int)
    assert len({kw["seed"] for kw in given.values()}) == 3  # each request its own reproducible seed
    assert [r.completion.text for r in results] == [f"QUESTION {i}"[:8 + i] for i in range(3)]
    assert [r.completion.finish_reason for r in results] == ["length", "length", "stop"]  # 10 chars vs 8, 9, 10
    assert results[0].completion.completion_tokens == 8 and results[0].completion.prompt_tokens == 7
    # a rerun answers from the SQLite cache: vLLM is not asked again
    again = complete_all(cfg, reqs, calls_db=tmp_path / "calls.db")
    assert [r.completion.text for r in again] == [r.completion.text for r in results]
    assert sum(len(inputs) for _, inputs, _ in fake_vllm.calls) == 3


def test_plain_prompts_use_generate(tmp_path: Path, fake_vllm) -> None:  # type: ignore[no-untyped-def]
    cfg = TeacherConfig(kind="vllm", model=str(_model_dir(tmp_path)))
    res = complete_all(cfg, [Request(prompt="continue this", sampling={"max_tokens": 64})])
    (kind, inputs, params), = fake_vllm.calls
    assert (kind, inputs) == ("generate", ["continue this"])
    assert params[0].kw["temperature"] == 1.0 and params[0].kw["top_p"] == 1.0  # vLLM's own defaults
    assert res[0].completion.text == "CONTINUE THIS"


def test_without_vllm_the_error_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from protege.errors import UserError
    from protege.teachers.vllm_offline import VLLMTeacher

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(UserError, match="needs vLLM"):
        VLLMTeacher(str(_model_dir(tmp_path)))
