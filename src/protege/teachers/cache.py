"""SQLite call log and response cache (`RUN_DIR/calls.sqlite`).

- `responses`: one row per answered request, keyed by `Request.key(model)` (sha256 of the
  canonical JSON of model, messages/prompt, sampling params and sample index). A rerun, or a
  resume after `kill -9`, finds every answer already received here and makes no call for it.
- `calls`: every attempt sent to a teacher: ok, error (each retry too), with status, latency,
  tokens and cost. Cache hits are not calls and are not logged here.

WAL mode, and each answer is committed the moment it arrives (synchronous=NORMAL: a commit
appends to the WAL with write(2) and no fsync, so it is in the OS page cache when COMMIT
returns: a `kill -9` of this process loses nothing that was committed; only an OS crash or
power loss could lose the last commits. Checked by SIGKILLing a process that commits answers
in a loop: every answer it had reported committed was in the file. A commit costs tens of
microseconds this way, so batching commits, which would lose received answers on a kill,
buys nothing measurable: the engine's whole overhead is ~0.2 ms CPU a request, see
docs/benchmarks.md).
Nothing secret is stored: requests hold prompts, never keys.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.teachers.base import Completion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    model_version TEXT,
    latency_s REAL,
    cost_usd REAL,
    created REAL NOT NULL,
    logprobs TEXT
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    http_status INTEGER,
    error TEXT,
    latency_s REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL
);
CREATE INDEX IF NOT EXISTS calls_key ON calls(key);
"""


@dataclass
class CachedAnswer:
    completion: Completion
    cost_usd: float | None


class CallLog:
    """The call log + response cache of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we commit explicitly, once per answer or call row.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        if "logprobs" not in columns:  # a call log written before answers kept their token probabilities
            self._db.execute("ALTER TABLE responses ADD COLUMN logprobs TEXT")

    def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for a key (primary-key lookup: the fast path for reruns)."""
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, model_version, latency_s, cost_usd, logprobs "
            "FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        text, finish, pt, ct, version, latency, cost, logprobs = row
        return CachedAnswer(Completion(text, finish, pt or 0, ct or 0, version, latency or 0.0,
                                       json.loads(logprobs) if logprobs else None), cost)

    def put(self, key: str, model: str, request: dict[str, Any], completion: Completion,
            cost_usd: float | None) -> None:
        """Store an answer and commit at once (it survives a kill -9 of this process)."""
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, model, request, text, finish_reason, prompt_tokens, "
            "completion_tokens, model_version, latency_s, cost_usd, created, logprobs) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (key, model, json.dumps(request, ensure_ascii=False), completion.text, completion.finish_reason,
             completion.prompt_tokens, completion.completion_tokens, completion.model, completion.latency_s,
             cost_usd, time.time(),
             json.dumps(completion.logprobs, ensure_ascii=False) if completion.logprobs is not None else None))

    def log_call(self, *, key: str, model: str, attempt: int, status: str, http_status: int | None = None,
                 error: str | None = None, latency_s: float | None = None, prompt_tokens: int = 0,
                 completion_tokens: int = 0, cost_usd: float | None = None) -> None:
        """Append one attempt to the call log (committed at once)."""
        self._db.execute(
            "INSERT INTO calls (ts, key, model, attempt, status, http_status, error, latency_s, "
            "prompt_tokens, completion_tokens, cost_usd) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (time.time(), key, model, attempt, status, http_status, error, latency_s, prompt_tokens,
             completion_tokens, cost_usd))

    def record_answer(self, key: str, model: str, request: dict[str, Any], completion: Completion,
                      attempt: int, cost_usd: float | None) -> None:
        """The answer and its successful call row, in one transaction."""
        with self._db:  # BEGIN ... COMMIT
            self._db.execute("BEGIN")
            self.put(key, model, request, completion, cost_usd)
            self.log_call(key=key, model=model, attempt=attempt, status="ok", latency_s=completion.latency_s,
                          prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                          cost_usd=cost_usd)

    def count_calls(self, status: str | None = None) -> int:
        if status is None:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM calls WHERE status = ?", (status,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()
