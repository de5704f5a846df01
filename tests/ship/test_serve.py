"""`protege serve` as a real process on loopback, driven by the official `openai` SDK (and raw HTTP for what
the SDK will not send): a LoRA-adapted student on the hf backend with a bearer key, and the offline student's
GGUF on the llama.cpp backend without one and with a one-request queue."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from tests.ship.conftest import STUDENT, serve

pytestmark = pytest.mark.slow
KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def hf_server(adapter_run: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "hf.log"
    with serve(str(adapter_run), "--api-key-env", "PROTEGE_TEST_SERVE_KEY", "--max-batch", "8",
               "--max-queue", "32", env={"PROTEGE_TEST_SERVE_KEY": KEY}, log=log) as url:
        yield url, log


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("llama_cpp")
    log = tmp_path_factory.mktemp("serve") / "llama.log"
    with serve(STUDENT, "--backend", "llamacpp", "--max-queue", "1", "--n-threads", "2", log=log) as url:
        yield url, log


@pytest.fixture(scope="module")
def tok(student_dir: Path):
    return AutoTokenizer.from_pretrained(student_dir)


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)


def prompt_tokens(tok, messages) -> int:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False).input_ids)


def no_traceback(r: httpx.Response) -> dict:
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"] and body["error"]["type"]
    return body["error"]


# -- hf backend: a trained (LoRA) student, bearer key on --------------------------------------------

def test_models_and_plain_chat_with_real_usage(hf_server, tok) -> None:
    url, _ = hf_server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny-student"]  # the run directory's name
    msgs = [{"role": "user", "content": "Write a long story about a dragon."}]
    r = c.chat.completions.create(model="tiny-student", messages=msgs, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens == prompt_tokens(tok, msgs)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_streaming_matches_the_plain_answer(hf_server) -> None:
    url, _ = hf_server
    c = client(url)
    msgs = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What colour is the sky?"}]
    plain = c.chat.completions.create(model="tiny-student", messages=msgs, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="tiny-student", messages=msgs, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) >= 2  # streamed in pieces
    assert text == plain.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_raw_event_stream_format(hf_server) -> None:
    url, _ = hf_server
    body = {"model": "tiny-student", "prompt": "Once upon a time", "max_tokens": 6, "stream": True}
    with httpx.stream("POST", url + "/completions", json=body, timeout=600,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert {e["object"] for e in events} == {"text_completion"}
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_endpoint(hf_server, tok) -> None:
    url, _ = hf_server
    r = client(url).completions.create(model="tiny-student", prompt=["The capital of France is", "1, 2, 3,"],
                                       max_tokens=5, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1] and all(ch.text for ch in r.choices)
    assert r.usage.prompt_tokens == sum(len(tok(p).input_ids) for p in ["The capital of France is", "1, 2, 3,"])
    assert r.usage.completion_tokens <= 10


def test_eight_concurrent_clients(hf_server, tok) -> None:
    url, _ = hf_server
    c = client(url)
    questions = [f"Say the number {i} in words." for i in range(8)]

    def ask(q: str):
        return c.chat.completions.create(model="tiny-student", messages=[{"role": "user", "content": q}],
                                         max_tokens=8, temperature=0)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, questions))
    for q, r in zip(questions, replies):
        assert r.choices[0].message.content.strip()
        assert r.usage.prompt_tokens == prompt_tokens(tok, [{"role": "user", "content": q}])
        assert 1 <= r.usage.completion_tokens <= 8


def test_auth(hf_server) -> None:
    url, _ = hf_server
    with pytest.raises(openai.AuthenticationError) as e:
        client(url, key="wrong-key").models.list()
    assert e.value.status_code == 401
    err = no_traceback(httpx.post(url + "/chat/completions", json={"model": "tiny-student"}, timeout=30))
    assert err["code"] == "invalid_api_key"  # checked before the body: no key, no validation details
    r = httpx.get(url + "/models", headers={"Authorization": "Bearer wrong-key"}, timeout=30)
    assert r.status_code == 401 and no_traceback(r)["code"] == "invalid_api_key"
    assert httpx.get(url.removesuffix("/v1") + "/health", timeout=30).status_code == 200  # for load balancers


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "tiny-student", "messages": [', 400, None),  # not JSON
    (b'[1, 2]', 400, None),
    ({"model": "tiny-student"}, 400, "messages"),
    ({"model": "tiny-student", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ({"model": "tiny-student", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "tiny-student", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400,
     "temperature"),
    ({"model": "tiny-student", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, None),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "tiny-student", "messages": [{"role": "user", "content": "hello " * 9000}]}, 400, "messages"),
])
def test_malformed_requests_get_openai_errors(hf_server, body, status, param) -> None:
    url, log = hf_server
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + "/chat/completions", content=data, headers=headers, timeout=120)
    assert r.status_code == status, r.text
    err = no_traceback(r)
    if param:
        assert err["param"] == param
    assert "Traceback" not in log.read_text()


def test_wrong_routes_and_methods(hf_server) -> None:
    url, _ = hf_server
    h = {"Authorization": f"Bearer {KEY}"}
    assert no_traceback(httpx.get(url + "/chat/completions", headers=h, timeout=30)) and \
        httpx.get(url + "/chat/completions", headers=h, timeout=30).status_code == 405
    assert httpx.get(url + "/nope", headers=h, timeout=30).status_code == 404


def test_a_client_hanging_up_mid_stream_frees_the_model(hf_server) -> None:
    url, _ = hf_server
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny-student", "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400, "stream": True}
    with httpx.stream("POST", url + "/chat/completions", json=body, headers=h, timeout=600) as r:
        seen = 0
        for line in r.iter_lines():
            seen += bool(line)
            if seen >= 3:
                break  # hang up after the first pieces
    health = url.removesuffix("/v1") + "/health"
    deadline = time.time() + 120
    while httpx.get(health, timeout=30).json()["in_flight"] and time.time() < deadline:
        time.sleep(0.2)
    assert httpx.get(health, timeout=30).json()["in_flight"] == 0  # stopped long before 400 tokens
    r = client(url).chat.completions.create(model="tiny-student", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4)
    assert r.usage.completion_tokens >= 1


# -- llama.cpp backend: the offline student's GGUF, no key, a queue of one ------------------------

def test_llamacpp_plain_and_streaming_without_a_key(llama_server) -> None:
    url, _ = llama_server
    c = client(url, key="anything")  # no --api-key-env: any or no key is accepted
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    plain = c.chat.completions.create(model=STUDENT, messages=msgs, max_tokens=12, temperature=0)
    assert plain.choices[0].message.content and plain.usage.prompt_tokens > 10
    stream = c.chat.completions.create(model=STUDENT, messages=msgs, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    r = httpx.post(url + "/completions", json={"model": STUDENT, "prompt": "Hello", "max_tokens": 3}, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


def test_full_queue_gets_503_with_retry_after(llama_server) -> None:
    url, _ = llama_server
    c = client(url, key="anything")

    def ask(i: int):
        try:
            return c.chat.completions.create(model=STUDENT, max_tokens=24, temperature=0,
                                             messages=[{"role": "user", "content": f"Count from {i} to {i + 20}."}])
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(6)))
    busy = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert busy and len(busy) < 6  # one request fits in a queue of one; the others arrive while it runs
    for e in busy:
        assert e.status_code == 503 and int(e.response.headers["retry-after"]) >= 1
        assert e.response.json()["error"]["code"] == "server_busy"
    r = c.chat.completions.create(model=STUDENT, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert r.choices[0].message.content is not None  # the slot was freed
