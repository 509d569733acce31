"""Run a call's requests: concurrently, each retried on its own, finished work kept.

A request that succeeded is never sent again, whatever happens to the others. When a
request fails for good with an error that would fail every request the same way
(authentication, permission, unknown model, an exhausted retry budget), requests not yet
started are not sent; after an input-specific 400 the others carry on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from dashscope_embed.errors import BadRequestError, RateLimitError
from dashscope_embed.limits import AdaptivePace, ConcurrencyGate, RateBudget
from dashscope_embed.retry import RetryPolicy
from dashscope_embed.transport import call_deadline

logger = logging.getLogger("dashscope_embed")

Job = TypeVar("Job")
Raw = TypeVar("Raw")
Reply = TypeVar("Reply")


@dataclass
class Outcome:
    """Per-job replies (``None`` where a job failed or was not sent) and the errors."""

    replies: list[object | None]
    errors: list[tuple[int, BaseException]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors and all(r is not None for r in self.replies)


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

    def _deadline(self, started: float) -> float | None:
        # ``total_timeout`` bounds a request's attempts together, the last one included.
        total = self.retry.total_timeout
        return None if total is None else started + total

    def _pace_delay(self) -> float:
        return self.pace.reserve() if self.pace is not None else 0.0

    def _release(self, epoch: int, sent_at: float, error: BaseException | None) -> None:
        """Tell the gate (and the pacer) how a request sent at ``sent_at`` ended."""
        if error is None:
            self.gate.release(epoch, succeeded=True)
            if self.pace is not None:
                self.pace.on_success()
        elif _is_rate_quota(error) and self.pace is not None:
            self.gate.release(epoch)  # a rate cap: pace the starts, keep the concurrency
            self.pace.on_rate_throttle(sent_at)
        else:
            self.gate.release(epoch, throttled=_is_throttle(error))

    def _delay_or_raise(
        self, index: int, attempt: int, started: float, error: Exception, stopped: bool
    ) -> float:
        """Seconds to wait before retry ``attempt`` of job ``index``; raises ``error``
        when there is to be no retry (retries used up, not retryable, or the call
        stopped)."""
        delay = self.retry.delay_before_retry(error, attempt, time.monotonic() - started)
        if delay is None or stopped:
            raise error
        _log_retry(index, attempt, delay, error)
        return delay

    # ---------------------------------------------------------------- sync
    def run(
        self,
        jobs: Sequence[Job],
        send: Callable[[Job], Raw],
        decode: Callable[[Job, Raw], Reply],
        cost: Callable[[Job], int] | None = None,
        on_success: Callable[[Job], None] | None = None,
    ) -> Outcome:
        """Send every job (threads when there is more than one); never raises for a job.

        ``send`` is the request (it holds a concurrency slot); ``decode`` turns its raw
        reply into the job's result after the slot is freed, so the next request is not
        kept waiting on parsing. An error from either is retried the same way.
        """
        outcome = Outcome(replies=[None] * len(jobs))
        stop = threading.Event()

        def work(index: int) -> None:
            if stop.is_set():
                return
            try:
                outcome.replies[index] = self._send_with_retry(
                    index, jobs[index], send, decode, cost, stop
                )
                if on_success is not None:
                    on_success(jobs[index])
            except Exception as exc:  # every failure is recorded per job
                outcome.errors.append((index, exc))
                if _stops_everything(exc):
                    stop.set()

        # Twice the gate's limit: a worker sleeping before a retry holds no slot, and the
        # others must be able to use it meanwhile.
        workers = min(2 * self.gate.maximum, len(jobs))
        if workers <= 1:
            for index in range(len(jobs)):
                work(index)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dashscope") as pool:
                list(pool.map(work, range(len(jobs))))
        outcome.errors.sort(key=lambda pair: pair[0])
        return outcome

    def _send_with_retry(
        self,
        index: int,
        job: Job,
        send: Callable[[Job], Raw],
        decode: Callable[[Job, Raw], Reply],
        cost: Callable[[Job], int] | None,
        stop: threading.Event,
    ) -> Reply:
        started = time.monotonic()
        attempt = 0
        while True:
            if self.budget is not None:
                self.budget.wait(cost(job) if cost else 0)
            epoch = self.gate.acquire(priority=attempt > 0)
            # Paced inside the slot, so every send passes the pacer, however many
            # requests were already queued when it switched on.
            if (pause := self._pace_delay()) > 0:
                time.sleep(pause)
            sent_at = time.monotonic()
            try:
                with call_deadline(self._deadline(started)):
                    raw = send(job)
            except Exception as exc:
                self._release(epoch, sent_at, exc)
                error: Exception = exc
            else:
                self._release(epoch, sent_at, None)
                try:
                    return decode(job, raw)
                except Exception as exc:
                    error = exc
            attempt += 1
            delay = self._delay_or_raise(index, attempt, started, error, stop.is_set())
            if stop.wait(delay):
                raise error

    # ---------------------------------------------------------------- async
    async def arun(
        self,
        jobs: Sequence[Job],
        send: Callable[[Job], Awaitable[Raw]],
        decode: Callable[[Job, Raw], Reply],
        cost: Callable[[Job], int] | None = None,
        on_success: Callable[[Job], None] | None = None,
    ) -> Outcome:
        """Async twin of :meth:`run`; the gate bounds requests in flight."""
        outcome = Outcome(replies=[None] * len(jobs))
        stop = asyncio.Event()

        async def work(index: int) -> None:
            if stop.is_set():
                return
            try:
                outcome.replies[index] = await self._asend_with_retry(
                    index, jobs[index], send, decode, cost, stop
                )
                if on_success is not None:
                    on_success(jobs[index])
            except _Stopped:
                return
            except Exception as exc:  # recorded per job
                outcome.errors.append((index, exc))
                if _stops_everything(exc):
                    stop.set()

        await asyncio.gather(*(work(i) for i in range(len(jobs))))
        outcome.errors.sort(key=lambda pair: pair[0])
        return outcome

    async def _asend_with_retry(
        self,
        index: int,
        job: Job,
        send: Callable[[Job], Awaitable[Raw]],
        decode: Callable[[Job, Raw], Reply],
        cost: Callable[[Job], int] | None,
        stop: asyncio.Event,
    ) -> Reply:
        started = time.monotonic()
        attempt = 0
        while True:
            if self.budget is not None:
                await self.budget.await_turn(cost(job) if cost else 0)
            epoch = await self.gate.aacquire(priority=attempt > 0)
            if stop.is_set():
                self.gate.release(epoch)
                raise _Stopped()
            if (pause := self._pace_delay()) > 0:
                await asyncio.sleep(pause)
            sent_at = time.monotonic()
            try:
                with call_deadline(self._deadline(started)):
                    raw = await send(job)
            except BaseException as exc:
                self._release(epoch, sent_at, exc)
                if not isinstance(exc, Exception):
                    raise  # cancellation
                error: Exception = exc
            else:
                self._release(epoch, sent_at, None)
                # Let the request that takes this slot go out before parsing this reply.
                await asyncio.sleep(0)
                try:
                    return decode(job, raw)
                except Exception as exc:
                    error = exc
            attempt += 1
            delay = self._delay_or_raise(index, attempt, started, error, stop.is_set())
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                continue
            raise error


class _Stopped(Exception):  # noqa: N818 - control flow, never escapes Outcome
    """A job not sent because another job's failure stopped the call."""


def _is_throttle(error: BaseException) -> bool:
    return isinstance(error, RateLimitError) and error.retryable


def _is_rate_quota(error: BaseException) -> bool:
    # The service's code for "requests per minute (or second) exceeded".
    return isinstance(error, RateLimitError) and error.code == "Throttling.RateQuota"
