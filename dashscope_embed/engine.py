"""Run a call's requests: concurrently, each retried on its own, finished work kept.

A request that succeeded is never sent again, whatever happens to the others. When a
request fails for good with an error that would fail every request the same way
(authentication, permission, unknown model, an exhausted retry budget), requests not yet
started are not sent; after an input-specific 400 the others carry on.

The algorithm for one request (rate budget, concurrency slot, pacing, send, retry
decision, backoff) is written once, as a generator that does no I/O: :meth:`Engine.flow`
yields what it needs done (:class:`Sleep`, :class:`Enter`, :class:`Send`,
:class:`Backoff`) and gets the result back. :meth:`Engine.run` drives it with threads
and blocking calls, :meth:`Engine.arun` with tasks on the event loop; neither decides
anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dashscope_embed.errors import APIError, BadRequestError, RateLimitError
from dashscope_embed.limits import AdaptivePace, ConcurrencyGate, RateBudget
from dashscope_embed.protocol.base import HttpRequest
from dashscope_embed.retry import RetryAllowance, RetryPolicy
from dashscope_embed.transport import call_deadline

logger = logging.getLogger("dashscope_embed")

Job = TypeVar("Job")
Reply = TypeVar("Reply")


@dataclass
class Outcome:
    """Per-job replies (``None`` where a job failed or was not sent) and the errors."""

    replies: list[object | None]
    errors: list[tuple[int, BaseException]] = field(default_factory=list)
    unsent: int = 0  # jobs never sent because the call had stopped

    @property
    def complete(self) -> bool:
        return not self.errors and all(r is not None for r in self.replies)


# ---------------------------------------------------------------------- the steps
@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long (a told quota, or the pacer)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Enter:
    """Wait for a concurrency slot; reply with its epoch."""

    priority: bool


@dataclass(frozen=True, slots=True)
class Send:
    """Send the request; reply with :class:`Sent` or :class:`Failed`."""

    request: HttpRequest


@dataclass(frozen=True, slots=True)
class Backoff:
    """Wait before a retry; reply ``True`` if the call was stopped meanwhile."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Sent:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    error: Exception


Step = Sleep | Enter | Send | Backoff


class _Stopped(Exception):  # noqa: N818 - control flow, never escapes Outcome
    """A job not sent because another job's failure stopped the call."""


class CancelScope:
    """Stops the sync calls made inside :func:`cancel_scope`: requests on the wire
    finish, the others (waiting for a slot, a pace or a retry's backoff) are not sent.
    A stream's worker threads call inside one, so a consumer that stops (Ctrl-C) stops
    them at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: set[threading.Event] = set()
        self.cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            calls = list(self._calls)
        for stop in calls:
            stop.set()

    def _watch(self, stop: threading.Event) -> None:
        with self._lock:
            if self.cancelled:
                stop.set()
            self._calls.add(stop)

    def _unwatch(self, stop: threading.Event) -> None:
        with self._lock:
            self._calls.discard(stop)


_SCOPE: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar(
    "dashscope_embed_cancel_scope", default=None
)


@contextlib.contextmanager
def cancel_scope(scope: CancelScope) -> Iterator[None]:
    """Sync calls made inside this block stop when ``scope`` is cancelled."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


class StopFlag:
    """Whether the call was stopped (an account-level failure, or its
    :class:`CancelScope`); read by the flow, waited on by the drivers (a thread's event
    or a loop's)."""

    def __init__(self, event: threading.Event | asyncio.Event) -> None:
        self.event = event

    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass(frozen=True)
class Jobs(Generic[Job, Reply]):
    """A call's requests for the engine: the jobs, how each becomes a request, how its
    reply is decoded, what it costs (tokens, for a told TPM budget) and who to tell
    when one is done."""

    items: Sequence[Job]
    request: Callable[[Job], HttpRequest]
    decode: Callable[[Job, bytes], Reply]
    cost: Callable[[Job], int] | None = None
    on_success: Callable[[Job], None] | None = None


def _stops_everything(error: BaseException) -> bool:
    # An input-specific rejection says nothing about the other requests.
    return not isinstance(error, BadRequestError)


def _log_retry(job_index: int, attempt: int, delay: float, error: BaseException) -> None:
    # Throttling is routine under adaptive concurrency; other retries are worth a note.
    level = logging.DEBUG if isinstance(error, RateLimitError) else logging.INFO
    logger.log(level, "request %d failed (%s); retry %d in %.2fs", job_index, error, attempt, delay)


class Engine:
    """Sends jobs within the client's concurrency gate and rate budget, retrying each."""

    def __init__(
        self,
        retry: RetryPolicy,
        gate: ConcurrencyGate,
        budget: RateBudget | None = None,
        pace: AdaptivePace | None = None,
    ) -> None:
        self.retry = retry
        self.gate = gate
        self.budget = budget if budget is not None and budget.active else None
        self.pace = pace
        self.allowance = RetryAllowance()

    # ---------------------------------------------------------------- the algorithm
    def flow(
        self, index: int, job: Job, jobs: Jobs[Job, Reply], stop: StopFlag
    ) -> Generator[Step, Any, Reply]:
        """One job from first try to its reply or its final error; no I/O of its own."""
        started = time.monotonic()
        attempt = 0
        while True:
            if self.budget is not None:
                wait = self.budget.reserve(jobs.cost(job) if jobs.cost else 0)
                if wait > 0:
                    yield Sleep(wait)
            if stop.is_set():
                raise _Stopped
            epoch: int = yield Enter(priority=attempt > 0)
            if stop.is_set():  # stopped while this one waited for its slot: not sent
                self.gate.release(epoch)
                raise _Stopped
            load: int | None = None
            try:
                # Paced inside the slot, so every send passes the pacer, however many
                # requests were already queued when it switched on.
                if (pause := self.pace.reserve() if self.pace is not None else 0.0) > 0:
                    yield Sleep(pause)
                    if stop.is_set():  # stopped while it waited for its turn: not sent
                        raise _Stopped
                load = self.gate.begin_send()
                sent_at = time.monotonic()
                successes_before = self.allowance.successes
                result = yield Send(jobs.request(job))
            except BaseException:  # cancelled while holding the slot
                self.gate.release(epoch, load=load)
                raise
            rtt = time.monotonic() - sent_at
            assert load is not None
            if isinstance(result, Sent):
                self._release(epoch, sent_at, rtt, load, None)
                try:
                    reply = jobs.decode(job, result.raw)
                except Exception as exc:  # a reply that broke the protocol: retried
                    error: Exception = exc
                else:
                    self.allowance.earn()
                    return reply
            else:
                error = result.error
                self._release(epoch, sent_at, rtt, load, error)
            attempt += 1
            delay = self.retry.delay_before_retry(
                error,
                attempt,
                time.monotonic() - started,
                extra=functools.partial(self.allowance.grant, successes_before),
            )
            if delay is None or stop.is_set():
                raise _final(error, attempt)
            _log_retry(index, attempt, delay, error)
            if (yield Backoff(delay)):
                raise _final(error, attempt)

    def _release(
        self, epoch: int, sent_at: float, rtt: float, load: int, error: BaseException | None
    ) -> None:
        """Tell the gate (and the pacer) how a request sent at ``sent_at`` under ``load``
        ended, ``rtt`` seconds later."""
        if error is None:
            self.gate.release(epoch, succeeded=True, rtt=rtt, load=load)
            if self.pace is not None:
                self.pace.on_success()
        elif _is_rate_quota(error) and self.pace is not None:
            # A rate cap: pace the starts, keep the concurrency.
            self.gate.release(epoch, load=load)
            self.pace.on_rate_throttle(sent_at)
        else:
            self.gate.release(epoch, throttled=_is_throttle(error), load=load)

    def _deadline(self, started: float) -> float | None:
        # ``total_timeout`` bounds a request's attempts together, the last one included.
        total = self.retry.total_timeout
        return None if total is None else started + total

    def _settle(
        self,
        outcome: Outcome,
        index: int,
        jobs: Jobs[Any, Any],
        stop: StopFlag,
        reply: Any = None,
        error: Exception | None = None,
    ) -> None:
        """Record how job ``index`` ended; an account-level failure stops the call."""
        if isinstance(error, _Stopped):
            outcome.unsent += 1
            return
        if error is not None:
            outcome.errors.append((index, error))
            if _stops_everything(error):
                stop.event.set()
            return
        outcome.replies[index] = reply
        if jobs.on_success is not None:
            jobs.on_success(jobs.items[index])

    # ---------------------------------------------------------------- sync driver
    def run(self, jobs: Jobs[Job, Reply], send: Callable[[HttpRequest], bytes]) -> Outcome:
        """Send every job on threads with blocking I/O; never raises for a job."""
        outcome = Outcome(replies=[None] * len(jobs.items))
        stopped = threading.Event()
        stop = StopFlag(stopped)
        scope = _SCOPE.get()
        if scope is not None:
            scope._watch(stopped)  # also wakes a backoff, not only the next check

        def work(index: int) -> None:
            flow = self.flow(index, jobs.items[index], jobs, stop)
            deadline = self._deadline(time.monotonic())
            try:
                reply = self._drive(flow, send, stop, deadline)
            except Exception as exc:  # every failure is recorded per job
                self._settle(outcome, index, jobs, stop, error=exc)
            else:
                self._settle(outcome, index, jobs, stop, reply=reply)

        # Twice the gate's limit: a worker sleeping before a retry holds no slot, and the
        # others must be able to use it meanwhile.
        workers = min(2 * self.gate.maximum, len(jobs.items))
        try:
            if workers <= 1:
                for index in range(len(jobs.items)):
                    work(index)
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="dashscope") as pool:
                    list(pool.map(work, range(len(jobs.items))))
        finally:
            if scope is not None:
                scope._unwatch(stopped)
        outcome.errors.sort(key=lambda pair: pair[0])
        return outcome

    def _drive(
        self,
        flow: Generator[Step, Any, Reply],
        send: Callable[[HttpRequest], bytes],
        stop: StopFlag,
        deadline: float | None,
    ) -> Reply:
        event = stop.event
        assert isinstance(event, threading.Event)
        reply: Any = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                result: Reply = done.value
                return result
            if isinstance(step, Send):
                try:
                    with call_deadline(deadline):
                        reply = Sent(send(step.request))
                except Exception as exc:
                    reply = Failed(exc)
            elif isinstance(step, Enter):
                reply = self.gate.acquire(priority=step.priority)
            elif isinstance(step, Backoff):
                reply = event.wait(step.seconds)
            else:
                event.wait(step.seconds)  # a stop wakes it
                reply = None

    # ---------------------------------------------------------------- async driver
    async def arun(
        self, jobs: Jobs[Job, Reply], send: Callable[[HttpRequest], Awaitable[bytes]]
    ) -> Outcome:
        """Async twin of :meth:`run`: the same flow, driven by tasks on the event loop."""
        outcome = Outcome(replies=[None] * len(jobs.items))
        stop = StopFlag(asyncio.Event())

        async def work(index: int) -> None:
            flow = self.flow(index, jobs.items[index], jobs, stop)
            deadline = self._deadline(time.monotonic())
            try:
                reply = await self._adrive(flow, send, stop, deadline)
            except Exception as exc:  # every failure is recorded per job
                self._settle(outcome, index, jobs, stop, error=exc)
            else:
                self._settle(outcome, index, jobs, stop, reply=reply)

        if len(jobs.items) == 1:  # a query, a stream's slice: no task of its own needed
            await work(0)
        else:
            await asyncio.gather(*(work(i) for i in range(len(jobs.items))))
        outcome.errors.sort(key=lambda pair: pair[0])
        return outcome

    async def _adrive(
        self,
        flow: Generator[Step, Any, Reply],
        send: Callable[[HttpRequest], Awaitable[bytes]],
        stop: StopFlag,
        deadline: float | None,
    ) -> Reply:
        event = stop.event
        assert isinstance(event, asyncio.Event)
        reply: Any = None
        while True:
            try:
                step = flow.send(reply)
            except StopIteration as done:
                result: Reply = done.value
                return result
            try:
                if isinstance(step, Send):
                    try:
                        with call_deadline(deadline):
                            reply = Sent(await send(step.request))
                    except Exception as exc:
                        reply = Failed(exc)
                    else:
                        # Let the request that takes this slot go out before parsing.
                        await asyncio.sleep(0)
                elif isinstance(step, Enter):
                    reply = await self.gate.aacquire(priority=step.priority)
                elif isinstance(step, Backoff):
                    try:
                        await asyncio.wait_for(event.wait(), timeout=step.seconds)
                        reply = True
                    except asyncio.TimeoutError:
                        reply = False
                else:
                    await asyncio.sleep(step.seconds)
                    reply = None
            except asyncio.CancelledError:
                flow.close()  # the flow gives its slot back on the way out
                raise


def _final(error: Exception, attempts: int) -> Exception:
    """``error`` as the end of its request: it says how many times the request was sent."""
    if isinstance(error, APIError):
        error.gave_up_after(attempts)
    return error


def _is_throttle(error: BaseException) -> bool:
    return isinstance(error, RateLimitError) and error.retryable


def _is_rate_quota(error: BaseException) -> bool:
    # The service's code for "requests per minute (or second) exceeded".
    return isinstance(error, RateLimitError) and error.code == "Throttling.RateQuota"
