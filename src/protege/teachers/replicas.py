"""Many replicas of one teacher: `teacher.base_url` as a list of OpenAI-compatible endpoints.

`ReplicaTeacher` is a `Teacher` made of one `OpenAITeacher` per URL (composition: the engine
above it, its cache, limits, retries and budget, is unchanged and sees one teacher). Each
request goes to the replica with the fewest requests outstanding (ties: the next one in turn),
so a slow or busy replica gets less work; all replicas serve the same model, so the cache key
and the records do not depend on which one answered.

Failures are handled per replica, inside one engine attempt, where another replica can still
answer:

* **429 / Retry-After**: that replica cools down for the time it asked (or `cooldown_s`); the
  request goes to another replica at once. When every replica is cooling, the 429 goes up to the
  engine with the shortest remaining wait as its Retry-After (the engine waits that long; a 429
  never trips its circuit breaker).
* **Gone away** (connection refused or reset, no HTTP reply at all): the replica is marked down
  and the request, in flight or new, is sent again to another replica. A down replica is tried
  again after `revive_s` (doubling, up to `revive_max_s`, while it keeps failing), so one that
  restarts comes back. When no replica is up, the error goes to the engine (retry with backoff,
  circuit breaker).
* Anything else (5xx, timeouts, unreadable replies, fatal 401/404) goes to the engine as from a
  single teacher; its next attempt is routed afresh.

Why by hand: the openai SDK talks to one base URL and has no balancing; a proxy (nginx, LiteLLM)
would do this outside the process but is one more service to run. This is ~150 lines of routing
over the SDK, with no HTTP code of its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from protege.teachers.base import Completion, Request, TeacherError


@dataclass
class Replica:
    """One endpoint and what the router knows about it."""

    teacher: Any  # an OpenAITeacher
    url: str
    outstanding: int = 0
    cool_until: float = 0.0  # 429: not before this (time.monotonic())
    down_until: float = 0.0  # gone away: not before this
    down_for: float = 0.0  # the last down interval (doubles while it keeps failing)
    answered: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def available(self, now: float) -> bool:
        return now >= self.cool_until and now >= self.down_until


def gone_away(err: TeacherError) -> bool:
    """True when the call got no HTTP reply because nothing answers at that address any more
    (refused, reset, disconnected), as opposed to a timeout, an HTTP status or a bad reply.

    OpenAITeacher raises its TeacherError while handling the SDK's APIConnectionError, which
    stays on the error as `__context__`; `classify_connection_error` reads its cause chain.
    """
    if err.status is not None or err.fatal:
        return False
    import openai

    from protege.teachers.openai_compat import classify_connection_error

    ctx = err.__context__
    if not isinstance(ctx, openai.APIConnectionError):  # APITimeoutError included: the aiohttp
        return False  # transport reports a refused connection as one; the innermost cause decides
    kind, _ = classify_connection_error(ctx)
    return kind in ("refused", "other")


class ReplicaTeacher:
    """Route each request to the least-busy live replica; see the module docstring."""

    def __init__(self, teachers: list[Any], urls: list[str], *, cooldown_s: float = 1.0,
                 revive_s: float = 5.0, revive_max_s: float = 60.0) -> None:
        if not teachers or len(teachers) != len(urls):
            raise ValueError("one teacher per URL, at least one")
        self.replicas = [Replica(t, u) for t, u in zip(teachers, urls)]
        self.cooldown_s, self.revive_s, self.revive_max_s = cooldown_s, revive_s, revive_max_s
        first = teachers[0].info
        self.info = {**first, "endpoint": ",".join(t.info["endpoint"] for t in teachers),
                     "replicas": str(len(teachers))}
        self.base_url = ", ".join(getattr(t, "base_url", u) for t, u in zip(teachers, urls))
        self._turn = 0

    def _pick(self, now: float, exclude: set[int]) -> Replica | None:
        """Fewest outstanding among the available replicas not yet tried for this request."""
        n = len(self.replicas)
        best: Replica | None = None
        for k in range(n):  # start at a rotating index so equal loads spread evenly
            i = (self._turn + k) % n
            r = self.replicas[i]
            if i in exclude or not r.available(now):
                continue
            if best is None or r.outstanding < best.outstanding:
                best = r
        self._turn = (self._turn + 1) % n
        return best

    async def complete(self, request: Request) -> Completion:
        tried: set[int] = set()
        last: TeacherError | None = None
        while True:
            now = time.monotonic()
            replica = self._pick(now, tried)
            if replica is None:
                raise self._none_left(now, last)
            i = self.replicas.index(replica)
            tried.add(i)
            replica.outstanding += 1
            try:
                completion = await replica.teacher.complete(request)
            except TeacherError as err:
                last = err
                if err.status == 429:
                    replica.cool_until = time.monotonic() + (err.retry_after if err.retry_after is not None
                                                             else self.cooldown_s)
                    self._count(replica, "429")
                    continue
                if gone_away(err):
                    self._mark_down(replica, str(err)[:120])
                    self._count(replica, "gone")
                    continue
                raise
            finally:
                replica.outstanding -= 1
            replica.answered += 1
            if replica.down_for:
                _note(f"teacher replica {replica.url} answers again")
                replica.down_for = 0.0
            return completion

    def _count(self, replica: Replica, what: str) -> None:
        replica.failures[what] = replica.failures.get(what, 0) + 1

    def _mark_down(self, replica: Replica, why: str = "no reply") -> None:
        now = time.monotonic()
        if now < replica.down_until:
            return  # already down: other requests that were in flight there are failing over too
        was_up = replica.down_for == 0.0
        replica.down_for = min(self.revive_max_s, replica.down_for * 2 if replica.down_for else self.revive_s)
        replica.down_until = now + replica.down_for
        if was_up:
            _note(f"teacher replica {replica.url} went away ({why}): its requests go to the other replicas; "
                  f"trying it again in {replica.down_for:g} s")

    def _none_left(self, now: float, last: TeacherError | None) -> TeacherError:
        """The error for the engine when no replica can take the request now."""
        up = [r for r in self.replicas if now >= r.down_until]
        if up:  # alive but cooling (429): wait for the first to cool down, like one teacher's 429
            wait = max(0.0, min(r.cool_until for r in up) - now)
            return TeacherError(f"HTTP 429: all {len(up)} live replicas rate-limited; retry in {wait:.1f} s",
                                status=429, retry_after=wait)
        detail = f"; last error: {last}" if last is not None else ""
        wait = max(0.0, min(r.down_until for r in self.replicas) - now)
        return TeacherError(f"no replica answers (all {len(self.replicas)} down; next try in {wait:.1f} s){detail}",
                            retryable=True)

    def stats(self) -> list[dict[str, Any]]:
        """Per replica: URL, answers, failures by kind, whether it is down now."""
        now = time.monotonic()
        return [{"url": r.url, "answered": r.answered, "failures": dict(r.failures), "down": now < r.down_until}
                for r in self.replicas]

    async def check(self, timeout_s: float) -> None:
        """Preflight every replica at once. A bad key or model on any is fatal (the same config
        serves them all); replicas with no reply are marked down; fatal only when none answers."""
        results = await asyncio.gather(*(r.teacher.check(timeout_s) for r in self.replicas), return_exceptions=True)
        errors = []
        for r, res in zip(self.replicas, results):
            if isinstance(res, TeacherError):
                if res.status in (401, 403, 404):
                    raise res
                self._mark_down(r, str(res)[:120])
                errors.append(f"{r.url}: {res}")
            elif isinstance(res, BaseException):
                raise res
        if len(errors) == len(self.replicas):
            raise TeacherError("no replica answers: " + "; ".join(errors), fatal=True)

    async def aclose(self) -> None:
        if any(r.failures for r in self.replicas):
            _note("teacher replicas: " + "; ".join(
                f"{s['url']} answered {s['answered']}"
                + (" (" + ", ".join(f"{k} {v}" for k, v in s["failures"].items()) + ")" if s["failures"] else "")
                + (" [down]" if s["down"] else "") for s in self.stats()))
        for r in self.replicas:
            await r.teacher.aclose()


def _note(text: str) -> None:
    """One line on stderr (where the progress bars are): replica events are rare and worth seeing."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(text, style="yellow", markup=False, highlight=False)
