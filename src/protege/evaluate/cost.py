"""Cost and speed of each candidate, measured during the eval on this machine.

- parameters and size on disk: read from the weights' headers (safetensors JSON header, GGUF tensor table),
  so nothing is loaded;
- tokens/s: fresh (uncached) completion tokens over the wall time from the first fresh request sent to the
  last answer received (model loading excluded; batching included, as the eval ran it);
- p50/p95 latency: per request as the engine measured it (a batched request waits for its whole batch);
- peak memory: the process's peak resident set while the candidate answered. On Linux the peak (VmHWM) is
  reset before each candidate (`/proc/self/clear_refs`), so each figure is that candidate's; elsewhere
  `resource.getrusage` gives the process peak so far (said in `memory_basis`);
- price per 1,000 requests: an API model's configured prices x its measured tokens; a self-hosted one
  `eval.usd_per_hour` x the machine time it took per request.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from protege import models

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int | None:
    """Peak resident set of this process in bytes (VmHWM on Linux, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)
    except (ImportError, OSError):
        return None


MEMORY_BASIS = ("peak resident memory of the eval process while this candidate answered (Linux VmHWM, reset "
                "before each candidate)" if Path("/proc/self/clear_refs").exists()
                else "peak resident memory of the eval process so far (getrusage)")


def safetensors_params(path: Path) -> int:
    """Number of parameters in a .safetensors file, from its JSON header (nothing loaded)."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")


def gguf_params(path: Path) -> int | None:
    """Number of parameters in a GGUF file, from its tensor table (the `gguf` package, memory-mapped)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    return int(sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors))


def weights_info(tcfg: Any) -> tuple[int | None, int | None]:
    """(parameters, bytes on disk) of a model candidate; (None, None) for an API model."""
    if tcfg.kind == "openai":
        return None, None
    if tcfg.kind == "llamacpp":
        path = models.gguf_path(tcfg.model)
        return gguf_params(path), path.stat().st_size
    d = models.resolve(tcfg.model)
    files = [f for f in d.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES]
    size = sum(f.stat().st_size for f in files)
    st = [f for f in files if f.suffix == ".safetensors"]
    return (sum(safetensors_params(f) for f in st) if st else None), size


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def entry(cand: Any, timing: Any, cfg: Any, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cost-table row of a model candidate (scores.json `cost`); see the module docstring for each field.

    With every answer cached (a rerun), there is nothing to time: the speed measured when the answers were
    generated is carried over from the previous scores.json (`measured` says so).
    """
    tcfg = cand.teacher
    params, disk = weights_info(tcfg)
    row: dict[str, Any] = {"model": cand.model, "kind": tcfg.kind, "params": params, "disk_bytes": disk,
                           "tokens_per_s": None, "latency_p50_s": percentile(timing.latencies, 50),
                           "latency_p95_s": percentile(timing.latencies, 95), "peak_memory_bytes": None,
                           "memory_basis": MEMORY_BASIS if cand.local else "API: not on this machine",
                           "seconds_per_request": None, "requests": timing.requests, "measured": "this run",
                           "usd_per_1k_requests": None, "price_basis": ""}
    if timing.fresh_requests and timing.seconds > 0:
        row["tokens_per_s"] = round(timing.fresh_tokens / timing.seconds, 2)
        row["seconds_per_request"] = round(timing.seconds / timing.fresh_requests, 4)
        row["peak_memory_bytes"] = timing.peak_rss
    elif previous and previous.get("model") == cand.model:
        for k in ("tokens_per_s", "seconds_per_request", "peak_memory_bytes"):
            row[k] = previous.get(k)
        row["measured"] = "an earlier run (every answer came from the cache this time)"
    else:
        row["measured"] = "nothing new was generated and no earlier measurement exists"
    _price(row, tcfg, timing, cfg, cand.local)
    return row


def _price(row: dict[str, Any], tcfg: Any, timing: Any, cfg: Any, local: bool) -> None:
    pin, pout = tcfg.price_input_per_mtok, tcfg.price_output_per_mtok
    if pin is not None and pout is not None and timing.requests:
        pt, ct = timing.prompt_tokens / timing.requests, timing.completion_tokens / timing.requests
        row["usd_per_1k_requests"] = round((pt * pin + ct * pout) / 1e6 * 1000, 6)
        row["price_basis"] = (f"configured prices ${pin}/${pout} per million input/output tokens x measured mean "
                              f"{pt:.0f} prompt + {ct:.0f} completion tokens per request")
        return
    spr = row["seconds_per_request"]
    if not local:
        row["price_basis"] = "not priced: set price_input_per_mtok and price_output_per_mtok on its block"
    elif spr is None:
        row["price_basis"] = "self-hosted: no machine time measured"
    elif cfg.eval.usd_per_hour is None:
        row["price_basis"] = (f"self-hosted: {spr:.3f} s of this machine per request (batch {cfg.eval.batch_size}); "
                              "set eval.usd_per_hour to price it")
    else:
        row["usd_per_1k_requests"] = round(cfg.eval.usd_per_hour / 3600 * spr * 1000, 6)
        row["price_basis"] = (f"self-hosted: eval.usd_per_hour ${cfg.eval.usd_per_hour}/h x {spr:.3f} s of this "
                              f"machine per request (batch {cfg.eval.batch_size})")


def cheaper(cost: dict[str, dict[str, Any]], student: str, other: str) -> tuple[float, str] | None:
    """How many times cheaper per request `student` is than `other`: (factor, basis) or None.

    Prices when both are priced; machine time when both ran self-hosted here and neither is priced (the
    same machine, so the ratio holds whatever an hour of it costs).
    """
    a, b = cost.get(student), cost.get(other)
    if not a or not b:
        return None
    if a.get("usd_per_1k_requests") and b.get("usd_per_1k_requests"):
        return b["usd_per_1k_requests"] / a["usd_per_1k_requests"], "price"
    local = ("hf", "llamacpp", "vllm")
    if a.get("kind") in local and b.get("kind") in local and a.get("seconds_per_request") \
            and b.get("seconds_per_request"):
        return b["seconds_per_request"] / a["seconds_per_request"], "machine time"
    return None
