"""One account's request budget shared by many processes: the keeper and its leases.

DashScope's limits are per account, summed over every key and process. Processes that
each pace themselves either overrun the quota together or, told a fraction of it, leave
the rest unused. Here one :class:`QuotaKeeper` (in Ray, a named actor) paces the starts
of every request in the cluster: the told quotas (``requests_per_minute``,
``tokens_per_minute``) and the pace learned from ``Throttling.RateQuota`` refusals,
exactly as one client would, but for all of them.

Workers do not ask once per request: a :class:`LeasedPace` leases start times in blocks
(about half a second's worth of its own sending), reports its successes and refusals
with the next lease, and falls back to pacing itself if the keeper cannot be reached
(a restarting actor), so work slows rather than stalls. It plugs into the client's
engine as its rate budget and pace, so concurrency, retries and order are unchanged.

Pure: the transport to the keeper is a callable, so everything here is tested without
Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dashscope_embed.limits import AdaptivePace, RateBudget

logger = logging.getLogger("dashscope_embed.cluster")


@dataclass(frozen=True)
class LeaseRequest:
    """What a worker asks for and reports.

    Attributes:
        starts: how many request starts it wants.
        tokens: the tokens each of those requests will bill (for a told TPM quota).
        successes: replies that succeeded since its last lease.
        throttled_ages: for each ``Throttling.RateQuota`` refusal since then, how many
            seconds ago its request was sent (ages, not times: clocks differ between
            machines).
    """

    starts: int
    tokens: int = 0
    successes: int = 0
    throttled_ages: tuple[float, ...] = ()


@dataclass(frozen=True)
class Lease:
    """Start offsets, in seconds from when the keeper answered, one per granted start."""

    offsets: tuple[float, ...]
    rate: float | None  # the cluster's current pace (requests per second), for logs


class QuotaKeeper:
    """Paces every request start of an account across processes.

    Args:
        requests_per_minute: the account's told request quota, if any.
        tokens_per_minute: the account's told token quota, if any.
        learn: learn an untold request-rate cap from refusals (as one client does).
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        learn: bool = True,
    ) -> None:
        self.budget = RateBudget(requests_per_minute, tokens_per_minute)
        self.pace = AdaptivePace() if learn else None
        self.leases = 0
        self.starts = 0
        self._lock = threading.Lock()

    def lease(self, request: LeaseRequest) -> Lease:
        """Take the worker's reports, then grant its starts, each at its slot."""
        with self._lock:
            now = time.monotonic()
            if self.pace is not None:
                for _ in range(request.successes):
                    self.pace.on_success()
                for age in request.throttled_ages:
                    self.pace.on_rate_throttle(now - max(0.0, age))
            offsets = []
            for _ in range(max(0, request.starts)):
                wait = self.budget.reserve(request.tokens) if self.budget.active else 0.0
                if self.pace is not None:
                    wait = max(wait, self.pace.reserve())
                offsets.append(wait)
            self.leases += 1
            self.starts += len(offsets)
            return Lease(tuple(offsets), self.pace.rate if self.pace is not None else None)

    def stats(self) -> dict[str, float | int | None]:
        with self._lock:
            return {
                "leases": self.leases,
                "starts": self.starts,
                "rate": self.pace.rate if self.pace is not None else None,
                "cap_estimate": self.pace.cap_estimate if self.pace is not None else None,
                "cuts": self.pace.cuts if self.pace is not None else 0,
            }


@dataclass
class _Reports:
    successes: int = 0
    throttled_sent_at: list[float] = field(default_factory=list)


class LeasedPace:
    """A worker's side of the shared budget: the engine's rate budget *and* pace.

    ``ask`` sends a :class:`LeaseRequest` to the keeper and returns its :class:`Lease`
    (in Ray: a call to the named actor); when it raises, this worker paces itself with
    ``fallback_rpm`` / ``fallback_tpm`` (its share of the told quotas) and a pace
    learned locally, and tries the keeper again after ``retry_keeper_after`` seconds.

    The start slot is taken right before sending (the engine's pace step, after the
    concurrency slot), so requests that waited for a slot do not go out together. A
    refusal is reported at once with a new lease, and the slots granted at the old
    pace are given up.
    """

    active = True  # as a RateBudget: always consulted
    MIN_BLOCK = 1
    MAX_BLOCK = 32
    BLOCK_SECONDS = 0.25  # lease about this long of this worker's own sending

    def __init__(
        self,
        ask: Callable[[LeaseRequest], Lease],
        *,
        fallback_rpm: int | None = None,
        fallback_tpm: int | None = None,
        retry_keeper_after: float = 5.0,
    ) -> None:
        self._ask = ask
        self._lock = threading.Lock()
        self._starts: deque[float] = deque()  # granted start times (this clock)
        self._reports = _Reports()
        self._urgent = False  # a refusal to report now
        self._recent: deque[float] = deque()  # this worker's own start times, last 2 s
        self._tokens = threading.local()  # the cost of the request on this thread
        self._fallback_budget = RateBudget(fallback_rpm, fallback_tpm)
        self._fallback_pace = AdaptivePace()
        self._keeper_down_until = float("-inf")
        self._retry_after = retry_keeper_after
        self.leases = 0
        self.fallbacks = 0
        # As a RateBudget: a told TPM makes the client count each request's tokens.
        self.tokens_per_minute: int | None = None

    # -------------------------------------------------------------- as the budget
    def reserve(self, tokens: int = 0) -> float:
        """The engine's budget step: remember what the request costs (its slot is
        taken at :meth:`take_slot`, right before it is sent)."""
        self._tokens.cost = tokens
        return 0.0

    def take_slot(self) -> float:
        """Seconds this request waits for its start (its slot in the cluster's pace)."""
        tokens = getattr(self._tokens, "cost", 0)
        with self._lock:
            now = time.monotonic()
            self._recent.append(now)
            while self._recent and now - self._recent[0] > 2.0:
                self._recent.popleft()
            if now < self._keeper_down_until:
                return self._local_wait(tokens)
            if self._urgent:
                self._starts.clear()  # granted at the pace the refusal just disproved
            while self._starts and self._starts[0] < now - 1.0:
                self._starts.popleft()  # a slot long past: the cluster's window moved on
            if not self._starts and not self._lease(now, tokens):
                return self._local_wait(tokens)
            return max(0.0, self._starts.popleft() - time.monotonic())

    def _lease(self, now: float, tokens: int) -> bool:
        block = round(len(self._recent) / 2.0 * self.BLOCK_SECONDS)
        block = max(self.MIN_BLOCK, min(self.MAX_BLOCK, block))
        reports, self._reports = self._reports, _Reports()
        self._urgent = False
        request = LeaseRequest(
            starts=block,
            tokens=tokens,
            successes=reports.successes,
            throttled_ages=tuple(now - sent for sent in reports.throttled_sent_at),
        )
        try:
            lease = self._ask(request)
        except Exception as error:  # the keeper restarting, unreachable or gone
            logger.warning("shared quota keeper unreachable (%s); pacing locally", error)
            self._keeper_down_until = now + self._retry_after
            self.fallbacks += 1
            return False
        answered = time.monotonic()
        self._starts.extend(answered + offset for offset in lease.offsets)
        self.leases += 1
        return bool(self._starts)

    def _local_wait(self, tokens: int) -> float:
        wait = self._fallback_budget.reserve(tokens) if self._fallback_budget.active else 0.0
        return max(wait, self._fallback_pace.reserve())

    # -------------------------------------------------------------- reports
    def on_success(self) -> None:
        with self._lock:
            self._reports.successes += 1
        self._fallback_pace.on_success()

    def on_rate_throttle(self, sent_at: float | None = None) -> None:
        sent = time.monotonic() if sent_at is None else sent_at
        with self._lock:
            self._reports.throttled_sent_at.append(sent)
            self._urgent = True
        self._fallback_pace.on_rate_throttle(sent)


class EnginePace:
    """:class:`LeasedPace` seen as the engine's pace: the start slot, taken right before
    the request is sent."""

    def __init__(self, leased: LeasedPace) -> None:
        self._leased = leased

    def reserve(self) -> float:
        return self._leased.take_slot()

    def on_success(self) -> None:
        self._leased.on_success()

    def on_rate_throttle(self, sent_at: float | None = None) -> None:
        self._leased.on_rate_throttle(sent_at)


def split_quota(quota: int | None, workers: int) -> int | None:
    """A worker's share of a told quota when it must pace alone."""
    return None if quota is None else max(1, quota // max(1, workers))


__all__: Sequence[str] = [
    "EnginePace",
    "Lease",
    "LeaseRequest",
    "LeasedPace",
    "QuotaKeeper",
    "split_quota",
]
