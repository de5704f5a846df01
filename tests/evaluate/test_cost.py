"""Cost table: parameters from weight headers, prices, machine-time ratios, peak memory."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from protege.config import TeacherConfig
from protege.evaluate import cost
from protege.evaluate.candidates import Candidate, Timing


def test_safetensors_params_from_header(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)}, str(tmp_path / "m.safetensors"))
    assert cost.safetensors_params(tmp_path / "m.safetensors") == 3 * 4 + 5


def _cfg(usd_per_hour: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(eval=SimpleNamespace(usd_per_hour=usd_per_hour, batch_size=8))


def test_api_price_from_configured_prices_and_measured_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    t = TeacherConfig(kind="openai", model="gpt-x", price_input_per_mtok=1.0, price_output_per_mtok=4.0)
    timing = Timing(requests=4, prompt_tokens=400, completion_tokens=800, latencies=[1.0, 2.0, 3.0, 10.0])
    row = cost.entry(Candidate("teacher", "teacher", "gpt-x", t), timing, _cfg())
    # per request 100 prompt + 200 completion tokens: (100*1 + 200*4)/1e6 USD; x1000 requests
    assert row["usd_per_1k_requests"] == pytest.approx(0.9)
    assert row["params"] is None and row["peak_memory_bytes"] is None
    assert row["latency_p50_s"] == 2.5 and row["latency_p95_s"] > 8
    assert "configured prices" in row["price_basis"]


def test_self_hosted_price_needs_machine_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "weights_info", lambda tcfg: (100, 1000))
    cand = Candidate("student", "student", "s@sha256:1", TeacherConfig(kind="hf", model="x"))
    timing = Timing(fresh_requests=10, fresh_tokens=500, requests=10, seconds=5.0, latencies=[0.5] * 10,
                    peak_rss=123)
    row = cost.entry(cand, timing, _cfg())
    assert (row["tokens_per_s"], row["seconds_per_request"], row["peak_memory_bytes"]) == (100.0, 0.5, 123)
    assert row["usd_per_1k_requests"] is None and "usd_per_hour" in row["price_basis"]
    row = cost.entry(cand, timing, _cfg(usd_per_hour=3.6))
    assert row["usd_per_1k_requests"] == pytest.approx(3.6 / 3600 * 0.5 * 1000)
    # a rerun with every answer cached carries the earlier measurement over
    cached = Timing(requests=10, latencies=[0.5] * 10)
    again = cost.entry(cand, cached, _cfg(), previous=row)
    assert again["tokens_per_s"] == 100.0 and "earlier run" in again["measured"]
    assert cost.entry(cand, cached, _cfg(), previous={**row, "model": "other"})["tokens_per_s"] is None


def test_cheaper_ratio() -> None:
    table = {"student": {"kind": "hf", "seconds_per_request": 0.5, "usd_per_1k_requests": None},
             "teacher": {"kind": "llamacpp", "seconds_per_request": 3.0, "usd_per_1k_requests": None}}
    assert cost.cheaper(table, "student", "teacher") == (6.0, "machine time")
    table["teacher"].update(kind="openai", usd_per_1k_requests=2.0)
    assert cost.cheaper(table, "student", "teacher") is None  # an unpriced student cannot be compared in USD
    table["student"]["usd_per_1k_requests"] = 0.5
    assert cost.cheaper(table, "student", "teacher") == (4.0, "price")


def test_peak_rss_grows_with_a_big_allocation() -> None:
    cost.reset_peak_rss()
    before = cost.peak_rss()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    after = cost.peak_rss()
    assert before and after and after - before > 32 * 1024 * 1024
    del block
