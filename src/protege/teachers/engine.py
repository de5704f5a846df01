"""The engine: wraps any `Teacher` with what API-scale generation needs.

- response cache + call log (`cache.CallLog`): a cached answer costs no call, no cap, no wait;
- bounded concurrency (`max_concurrency` requests in flight);
- a rate limiter for requests/min and tokens/min (GCRA, i.e. a token bucket with no burst:
  requests are spread evenly, which never trips per-second quantized provider limits);
- retries with exponential backoff and jitter that honour `Retry-After`, a per-request timeout,
  and failures after the last retry returned as results (never fatal to a run);
- a token and cost ledger, and hard caps (`budget_usd`, `max_requests`): at a cap the engine
  issues nothing more, lets the requests in flight finish, and says why it stopped;
- a fail-fast path for a dead or misconfigured teacher: `preflight()` asks it once before a run,
  a fatal error (bad key, unknown model or route, malformed URL, DNS, TLS) stops the engine, and a
  circuit breaker stops it after `max_consecutive_failures` failed attempts in a row with no
  success (429s excluded: a rate-limiting server is alive). Such a halt cancels the requests in
  flight and the retry waits at once; they come back as `stopped` results (asked again on a rerun).

Why hand-written: the SDK's retry loop is per call and invisible (no logging, no budget, no
shared limiter), and no library combines a persistent response cache with these caps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from protege.errors import UserError
from protege.teachers.base import Completion, Request, Teacher, TeacherError
from protege.teachers.cache import CallLog


@dataclass
class Result:
    """What became of one request. Exactly one of: answered (`completion`), failed (`error`),
    or `stopped` (not sent: a cap was reached or a fatal error happened)."""

    request: Request
    key: str
    completion: Completion | None = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    cost_usd: float | None = None
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.completion is not None


@dataclass
class Ledger:
    """Running totals of this engine's work (cache hits cost nothing and are counted apart)."""

    calls: int = 0
    answered: int = 0
    cache_hits: int = 0
    failed: int = 0
    retries: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cost_usd"] = round(self.cost_usd, 6) if self.priced else None
        return out


class RateLimiter:
    """Evenly spaced admission at `per_minute` units/min (GCRA without burst tolerance).

    Reservations are made in call order, so waiting requests are served first come, first served.
    `refund` gives back units reserved on an estimate that turned out too high.
    """

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self._tat = 0.0  # theoretical arrival time of the next unit

    async def take(self, units: float = 1.0) -> None:
        now = time.monotonic()
        start = max(now, self._tat)
        self._tat = start + units / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    def refund(self, units: float) -> None:
        self._tat -= units / self.rate


class Engine:
    """Runs requests against a teacher with caching, limits, retries and caps."""

    def __init__(self, teacher: Teacher, calls: CallLog | None = None, *, max_concurrency: int = 16,
                 requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 timeout_s: float | None = 120, max_retries: int = 6,
                 price_input_per_mtok: float | None = None, price_output_per_mtok: float | None = None,
                 budget_usd: float | None = None, max_requests: int | None = None,
                 backoff_base_s: float = 1.0, backoff_max_s: float = 60.0, seed: int | None = None,
                 max_consecutive_failures: int | None = 8) -> None:
        self.teacher = teacher
        self.calls = calls
        self.model = teacher.info.get("model", "?")
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.prices = (price_input_per_mtok, price_output_per_mtok)
        self.budget_usd = budget_usd
        self.max_requests = max_requests
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.ledger = Ledger(priced=None not in self.prices)
        self.stop_reason: str | None = None
        self.fatal = False  # halted: a fatal error or the circuit breaker (no request can succeed)
        self.max_consecutive_failures = max_consecutive_failures
        self._consecutive_failures = 0
        self._halt: asyncio.Event | None = None  # made in the running loop (see _halt_event)
        self._sem = asyncio.Semaphore(max_concurrency)
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self._in_flight = 0
        self._reserved_usd = 0.0
        self._rng = random.Random(seed)

    # -- money --------------------------------------------------------------------------------
    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """USD for these tokens, or None when the model is not priced."""
        pin, pout = self.prices
        if pin is None or pout is None:
            return None
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6

    def estimate_cost(self, request: Request) -> float | None:
        """Upper estimate: the estimated prompt plus `max_tokens` of output."""
        return self.cost(request.estimated_prompt_tokens(), request.max_tokens)

    def _cap_reason(self, request: Request) -> str | None:
        if self.stop_reason:
            return self.stop_reason
        if self.max_requests is not None and self.ledger.calls >= self.max_requests:
            return f"max_requests reached ({self.max_requests} calls)"
        if self.budget_usd is not None:
            est = self.estimate_cost(request) or 0.0
            if self.ledger.cost_usd + self._reserved_usd + est > self.budget_usd:
                spent = self.ledger.cost_usd
                return f"budget_usd reached (spent ${spent:.4f} of ${self.budget_usd:.4f})"
        return None

    # -- failing fast -------------------------------------------------------------------------
    async def preflight(self, timeout_s: float | None = None) -> None:
        """Ask the teacher once whether anyone answers there (backends with a `check()`).

        Raises UserError naming the endpoint and the error on no reply (refused, DNS, TLS,
        malformed URL, timeout), a bad key or an unknown model/route: a dead or misconfigured
        teacher then fails in seconds instead of looking like a slow one.
        """
        check = getattr(self.teacher, "check", None)
        if check is None:
            return
        limit = min(self.timeout_s or 30.0, 30.0) if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(check(limit), limit + 5)
        except TeacherError as err:
            if not err.fatal:
                return
            raise UserError(f"the teacher at {self._where()} cannot be used: {err}",
                            hint="Fix teacher.base_url / teacher.api_key_env / teacher.model (or start the "
                                 "server), then run again; nothing was sent or written.") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise UserError(f"the teacher at {self._where()} gave no reply within {limit:g} s",
                            hint="Is it the right host and port, and is the server up? Then run again.") from None

    def _where(self) -> str:
        return str(getattr(self.teacher, "base_url", None) or self.teacher.info.get("endpoint", "?"))

    def _halt_event(self) -> asyncio.Event:
        if self._halt is None:
            self._halt = asyncio.Event()
        return self._halt

    def _trip(self, reason: str) -> None:
        """Stop issuing, and wake every retry wait: nothing more can succeed."""
        if not self.fatal:
            self.stop_reason, self.fatal = reason, True
        self._halt_event().set()

    def _count_failure(self, error: str, status: int | None) -> None:
        if status == 429:  # rate limited: the server is alive and answering
            return
        self._consecutive_failures += 1
        n = self.max_consecutive_failures
        if n is not None and self._consecutive_failures >= n:
            self._trip(f"circuit breaker: {self._consecutive_failures} attempts in a row failed with no "
                       f"success (teacher.max_consecutive_failures: {n}); last error: {error}")

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if the engine halts meanwhile."""
        try:
            await asyncio.wait_for(self._halt_event().wait(), delay)
        except (asyncio.TimeoutError, TimeoutError):
            pass

    # -- one request --------------------------------------------------------------------------
    def lookup(self, request: Request) -> Result | None:
        """The cached answer as a Result (fast path: no task, no lock, no call), or None."""
        return self._lookup(request, request.key(self.model))

    def _lookup(self, request: Request, key: str) -> Result | None:
        if self.calls is None:
            return None
        hit = self.calls.get(key)
        if hit is None:
            return None
        self.ledger.cache_hits += 1
        return Result(request, key, completion=hit.completion, cached=True, cost_usd=hit.cost_usd)

    async def complete(self, request: Request) -> Result:
        """Answer one request: from the cache, or from the teacher with retries."""
        key = request.key(self.model)  # hashed once per request: lookup, call log and answer share it
        hit = self._lookup(request, key)
        if hit is not None:
            return hit
        return await self._run_one(request, key)

    async def _attempts(self, request: Request, key: str) -> Result:
        error = "not attempted"
        for attempt in range(1, self.max_retries + 2):
            delay, error, done = await self._one_attempt(request, key, attempt)
            if done is not None:
                return done
            if delay is None:  # not retryable
                break
            if attempt <= self.max_retries:
                self.ledger.retries += 1
                await self._pause(delay)
        self.ledger.failed += 1
        return Result(request, key, error=error, attempts=attempt)

    async def _one_attempt(self, request: Request, key: str,
                           attempt: int) -> tuple[float | None, str, Result | None]:
        """(retry delay or None, error text, final Result when answered)."""
        est_tokens = request.estimated_prompt_tokens() + request.max_tokens
        if self._rpm:
            await self._rpm.take(1)
        if self._tpm:
            await self._tpm.take(est_tokens)
        # Checked right before sending (after any limiter wait), with no await in between, so
        # concurrent requests can never overshoot a cap together.
        reason = self._cap_reason(request)
        if reason:
            self.stop_reason = reason
            if self._tpm:
                self._tpm.refund(est_tokens)
            return None, reason, Result(request, key, error=reason, attempts=attempt - 1, stopped=True)
        est_cost = self.estimate_cost(request) or 0.0
        self._in_flight += 1
        self._reserved_usd += est_cost
        self.ledger.calls += 1
        t0 = time.perf_counter()
        status_code: int | None = None
        try:
            completion = await _with_timeout(self.teacher.complete(request), self.timeout_s)
        except TeacherError as err:
            error, status_code = str(err), err.status
            if err.fatal:
                self._trip(f"stopped after a fatal teacher error: {error}")
            delay = self._backoff(attempt, err.retry_after) if err.retryable else None
        except (asyncio.TimeoutError, TimeoutError):
            error, delay = f"timed out after {self.timeout_s} s", self._backoff(attempt, None)
        else:
            completion.latency_s = time.perf_counter() - t0
            self._consecutive_failures = 0
            return None, "", self._answered(request, key, completion, attempt, est_tokens)
        finally:
            self._in_flight -= 1
            self._reserved_usd -= est_cost
        if self._tpm:
            self._tpm.refund(est_tokens)  # failed calls rarely count against token limits
        self._count_failure(error, status_code)
        label = str(status_code) if status_code else error.split(":")[0][:40]
        self.ledger.errors_by_status[label] = self.ledger.errors_by_status.get(label, 0) + 1
        if self.calls is not None:
            self.calls.log_call(key=key, model=self.model, attempt=attempt, status="error", http_status=status_code,
                                error=error[:500], latency_s=time.perf_counter() - t0)
        return delay, error, None

    def _answered(self, request: Request, key: str, completion: Completion, attempt: int,
                  est_tokens: int) -> Result:
        cost = self.cost(completion.prompt_tokens, completion.completion_tokens)
        if self._tpm and completion.prompt_tokens + completion.completion_tokens:
            self._tpm.refund(est_tokens - completion.prompt_tokens - completion.completion_tokens)
        led = self.ledger
        led.answered += 1
        led.prompt_tokens += completion.prompt_tokens
        led.completion_tokens += completion.completion_tokens
        led.cost_usd += cost or 0.0
        if self.calls is not None:
            self.calls.record_answer(key, self.model, _request_dict(request), completion, attempt, cost)
        return Result(request, key, completion=completion, attempts=attempt, cost_usd=cost)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; never less than what the server asked for."""
        expo = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            return retry_after * self._rng.uniform(1.0, 1.1)  # jitter only upwards: never early
        return expo

    # -- many requests ------------------------------------------------------------------------
    async def map(self, source: Iterable[Request] | Callable[[], Request | None]) -> AsyncIterator[Result]:
        """Results as they complete, with at most `max_concurrency` requests in flight.

        `source` is an iterable, or a callable asked for the next request whenever a slot is
        free (None: nothing to issue now; it is asked again after the next result). This lets
        a caller decide what to ask next from what came back (self-instruct's loop). Cached
        answers are yielded at once without a task. At a cap, nothing more is pulled.
        """
        if callable(source):
            next_request = source
        else:
            it = iter(source)
            next_request = lambda: next(it, None)  # noqa: E731
        pending: dict[asyncio.Task[Result], tuple[Request, str]] = {}
        # Finished tasks report themselves here. (`asyncio.wait(pending, FIRST_COMPLETED)` would
        # add and remove a callback on every pending task for each wake-up: O(max_concurrency)
        # work per result, which showed in profiles at high concurrency.)
        done: asyncio.Queue[asyncio.Task[Result]] = asyncio.Queue()
        try:
            while True:
                while len(pending) < self.max_concurrency and not self.stop_reason:
                    request = next_request()
                    if request is None:
                        break
                    key = request.key(self.model)
                    hit = self._lookup(request, key)
                    if hit is not None:
                        yield hit
                        continue
                    task = asyncio.ensure_future(self._run_one(request, key))
                    task.add_done_callback(done.put_nowait)
                    pending[task] = (request, key)
                if not pending:
                    return
                finished = [await done.get()]
                while not done.empty():
                    finished.append(done.get_nowait())
                for task in finished:
                    if pending.pop(task, None) is not None:
                        yield task.result()
                if self.fatal and pending:
                    # Halted: what is in flight cannot succeed (or would hang until its timeout).
                    # Cancel it and report it as not sent; a rerun asks again.
                    for task, (request, key) in list(pending.items()):
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    for task, (request, key) in list(pending.items()):
                        del pending[task]
                        if not task.cancelled() and task.exception() is None:
                            yield task.result()
                        else:
                            yield Result(request, key, error=self.stop_reason, stopped=True)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _run_one(self, request: Request, key: str) -> Result:
        async with self._sem:
            return await self._attempts(request, key)


async def _with_timeout(aw: Awaitable[Completion], timeout_s: float | None) -> Completion:
    """`await aw` with a deadline; raises TimeoutError past it.

    `asyncio.timeout` (3.11+) cancels in place; `asyncio.wait_for` before 3.12 wraps the call in
    an extra task (a task creation and two loop turns per request).
    """
    if timeout_s is None:
        return await aw
    if _timeout is None:  # Python 3.10
        return await asyncio.wait_for(aw, timeout_s)
    async with _timeout(timeout_s):
        return await aw


_timeout = getattr(asyncio, "timeout", None)


def _request_dict(request: Request) -> dict[str, Any]:
    return {"messages": request.messages, "prompt": request.prompt, "sampling": request.sampling,
            "sample_index": request.sample_index, "json_mode": request.json_mode}
