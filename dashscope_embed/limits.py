"""How many requests may be in flight, and how fast they may start.

* :class:`ConcurrencyGate`: at most ``limit`` requests in flight, shared by every call
  of one client, sync and async alike; retries are let in before waiting first
  attempts. :class:`CapacityController` sets the limit: it finds the service's capacity
  (growing while the service keeps up, cutting on 429s and on latency climbing) up to
  ``max_concurrency`` if the caller set one.
* :class:`RateBudget`: optional requests-per-minute and tokens-per-minute limits enforced
  client-side, spread evenly (the service also enforces per second), so a known quota
  is never exceeded in the first place.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class Ticket:
    """One caller's place in the gate's queue. The gate grants it a slot (``epoch``) and
    calls :meth:`signal`; how the caller waits for that is the driver's business (a
    thread's event, an event loop's future), so the gate's logic exists once."""

    __slots__ = ("epoch", "priority")

    def __init__(self, priority: bool) -> None:
        self.priority = priority
        self.epoch: int | None = None

    def signal(self) -> bool:
        """Wake the caller; ``False`` if it can no longer be woken (its loop closed)."""
        raise NotImplementedError


class ThreadTicket(Ticket):
    __slots__ = ("_event",)

    def __init__(self, priority: bool) -> None:
        super().__init__(priority)
        self._event = threading.Event()

    def signal(self) -> bool:
        self._event.set()
        return True

    def wait(self) -> None:
        self._event.wait()


class LoopTicket(Ticket):
    __slots__ = ("_future", "_loop")

    def __init__(self, priority: bool) -> None:
        super().__init__(priority)
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] = self._loop.create_future()

    def signal(self) -> bool:
        # The gate is shared across threads and loops: wake this loop from anywhere.
        try:
            self._loop.call_soon_threadsafe(_resolve, self._future)
        except RuntimeError:  # the loop is closed: nobody will take the slot
            return False
        return True

    async def wait(self) -> None:
        await self._future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


DEFAULT_CEILING = 64
"""Most requests in flight when the caller sets no ``max_concurrency``: at 300 ms a
request, 64 in flight is 12,800 requests a minute, twice the largest quota documented."""


def _usable_cores() -> float:
    """Cores this process's Python code can keep busy at once: one under the GIL."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    if gil:
        return 1.0
    affinity = getattr(os, "sched_getaffinity", None)
    return float(len(affinity(0)) if affinity else os.cpu_count() or 1)


class CpuMonitor:
    """Whether this process's own CPU is the bottleneck: when it is, more requests in
    flight only queue inside the client (replies wait to be parsed), so growth stops."""

    WINDOW = 0.5  # seconds per measurement
    BUSY = 0.9  # share of the usable cores

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
        cores: float | None = None,
    ) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.cores = cores if cores is not None else _usable_cores()
        self._since = clock()
        self._cpu_since = cpu_clock()
        self.busy = False

    def saturated(self) -> bool:
        now = self._clock()
        if now - self._since >= self.WINDOW:
            cpu = self._cpu_clock()
            self.busy = (cpu - self._cpu_since) / (now - self._since) >= self.BUSY * self.cores
            self._since, self._cpu_since = now, cpu
        return self.busy


class CapacityController:
    """How many requests to keep in flight, found from how the service answers.

    A congestion controller in the manner of TCP Vegas with slow start, on the signals
    this service gives:

    * **Growth while the service keeps up.** From ``INITIAL`` (8) the limit grows by half
      a slot per success (x1.5 each round trip: slow start) until the first sign of a limit;
      after that by one per round trip, eight times more slowly within one of where it
      was last throttled, and after 8 quiet round trips by a quarter again per round
      trip (capacity another client gave up is taken back in seconds), up to the
      ceiling. It grows only when the requests sent were using the window (``load``),
      so an idle or paced client does not inflate it, and not while this process's CPU
      is the bottleneck.
    * **A cut on pushback.** A 429 (``Throttling``, ``Throttling.AllocationQuota``) cuts
      the limit to 70 %. Latency climbing cuts it too, as Netflix's Gradient limiter
      does: the recent round trip (smoothed over ~5) against the usual one (the least
      smoothed one over the last 500); above ``TOLERANCE`` times the usual the service
      is queueing and the limit is cut in proportion (to at most half); above ``HOLD``
      times it stops growing. Smoothed values, not single round trips, keep steady
      jitter from reading as queueing. Either cut happens at most once per round:
      replies to requests sent before a cut do not cut again. (A request-rate 429 is
      the pacer's business.)

    Pure: time and load come in as arguments, so the behaviour is tested step by step.
    """

    INITIAL = 8
    DECREASE = 0.7
    PROBE_SLOWDOWN = 8
    # Half a slot per success: x1.5 per round trip. Replies come back together, so the
    # round that crosses the capacity overshoots by up to this share of the window, and
    # each request past it is a 429: doubling made that a burst of a whole window.
    SLOW_START_STEP = 0.5
    # Round trips without pushback after which growth speeds up again (x1.25 a round).
    QUIET_ROUNDS = 8
    SHORT = 0.2  # smoothing of the recent round trip (the last ~5)
    BASELINE = 500  # samples the usual round trip is the least of
    TOLERANCE = 1.5  # recent over usual: the service is queueing; cut
    HOLD = 1.2  # recent over usual: stop growing

    def __init__(
        self, ceiling: int, *, adaptive: bool = True, cpu: CpuMonitor | None = None
    ) -> None:
        if ceiling < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {ceiling}")
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.limit = float(min(self.INITIAL, ceiling) if adaptive else ceiling)
        self.slow_start = True
        self.throttled_at = float("inf")  # the limit at the last cut
        self.epoch = 0
        self.throttle_cuts = 0
        self.latency_cuts = 0
        self.short_rtt: float | None = None
        self.long_rtt: float | None = None  # the usual round trip (see on_success)
        self._lows: deque[tuple[int, float]] = deque()  # (sample, smoothed rtt) ascending
        self._samples = 0
        self._quiet = 0.0
        self.cpu = cpu

    def _cut(self, factor: float) -> None:
        self.throttled_at = self.limit
        self.limit = max(1.0, self.limit * factor)
        self.slow_start = False
        self.epoch += 1
        self._quiet = 0.0

    def on_throttle(self, epoch: int, load: int | None = None) -> None:
        """The service refused a request sent in ``epoch`` (with ``load`` requests being
        sent, itself included) for concurrency or tokens.

        It refused this one with ``load - 1`` others under way, so its capacity is about
        that: the cut is to just under it (a slow-start overshoot lands there at once,
        not after rounds of 429s; a probe one past the capacity costs little), and never
        below half (the others under way may have been another client's share). With
        no load known, the cut is to 70 %.
        """
        if self.adaptive and epoch == self.epoch:
            factor = self.DECREASE
            if load is not None and load > 1:
                factor = min(1.0, max(0.5, 0.95 * (load - 1) / self.limit))
            self._cut(factor)
            self.throttle_cuts += 1

    def on_success(self, epoch: int, rtt: float, load: int) -> None:
        """A request sent in ``epoch``, with ``load`` requests being sent at the time
        (itself included), succeeded after ``rtt`` seconds."""
        if not self.adaptive:
            return
        short = rtt if self.short_rtt is None else self.short_rtt
        self.short_rtt = short = short + self.SHORT * (rtt - short)
        # The usual round trip: the least smoothed one over the last BASELINE samples.
        # Smoothing keeps steady jitter from setting it low; the window lets a service
        # that has really become slower set it higher, in time; and a standing queue
        # does not pass for normal while the window remembers the unqueued times.
        self._samples += 1
        while self._lows and self._lows[-1][1] >= short:
            self._lows.pop()
        self._lows.append((self._samples, short))
        while self._lows[0][0] <= self._samples - self.BASELINE:
            self._lows.popleft()
        self.long_rtt = long = self._lows[0][1]
        if short > long * self.TOLERANCE:  # the service is queueing what we send
            if epoch == self.epoch:
                self._cut(max(0.5, long / short))
                self.latency_cuts += 1
            return
        if short > long * self.HOLD:
            return  # a little queueing: hold
        if load < self.limit - 1 or self.limit >= self.ceiling:
            return  # the window was not in use: nothing learned about more
        if self.cpu is not None and self.cpu.saturated():
            return
        self._quiet += 1.0 / self.limit  # round trips since the last cut
        if self.slow_start:
            step = self.SLOW_START_STEP
        elif self._quiet >= self.QUIET_ROUNDS:
            # Long without pushback: capacity has freed up (another client left), so
            # probe for it as in slow start, if more gently.
            step = self.SLOW_START_STEP / 2
        else:
            near = self.limit + 1 >= self.throttled_at
            step = 1.0 / (self.limit * (self.PROBE_SLOWDOWN if near else 1))
        self.limit = min(float(self.ceiling), self.limit + step)


class ConcurrencyGate:
    """At most ``limit`` requests in flight, the limit set by a
    :class:`CapacityController`; safe across threads and event loops.

    Callers queue for a slot with a :class:`Ticket` (:meth:`enter`); a released slot is
    handed to the next ticket directly, retries first, so nobody barges past the queue.
    :meth:`acquire` and :meth:`aacquire` are the two thin waiting drivers.
    """

    def __init__(
        self,
        maximum: int | None = None,
        *,
        adaptive: bool = True,
        cpu: CpuMonitor | None = None,
    ) -> None:
        self.controller = CapacityController(maximum or DEFAULT_CEILING, adaptive=adaptive, cpu=cpu)
        self.in_flight = 0
        self.sending = 0
        self._lock = threading.Lock()
        self._queues: tuple[deque[Ticket], deque[Ticket]] = (deque(), deque())  # retries, firsts

    # The controller's state, read where the gate is.
    @property
    def maximum(self) -> int:
        return self.controller.ceiling

    @property
    def adaptive(self) -> bool:
        return self.controller.adaptive

    @property
    def limit(self) -> float:
        return self.controller.limit

    @property
    def epoch(self) -> int:
        return self.controller.epoch

    @property
    def throttle_cuts(self) -> int:
        return self.controller.throttle_cuts

    def _room(self) -> int:
        return max(1, int(self.controller.limit)) - self.in_flight

    def enter(self, ticket: Ticket) -> bool:
        """Take a slot now (``True``, ``ticket.epoch`` set) or queue for one (``False``:
        ``ticket.signal()`` is called once it is granted)."""
        with self._lock:
            retries, firsts = self._queues
            ahead = retries if ticket.priority else (retries or firsts)
            if self._room() > 0 and not ahead:
                self.in_flight += 1
                ticket.epoch = self.epoch
                return True
            (retries if ticket.priority else firsts).append(ticket)
            return False

    def withdraw(self, ticket: Ticket) -> None:
        """A queued caller gave up (cancelled): take its ticket out, or give back the
        slot it was granted meanwhile."""
        with self._lock:
            for queue in self._queues:
                if ticket in queue:
                    queue.remove(ticket)
                    return
        if ticket.epoch is not None:
            self.release(ticket.epoch)

    def acquire(self, *, priority: bool = False) -> int:
        """Block until a request may start; returns the epoch to pass to :meth:`release`."""
        ticket = ThreadTicket(priority)
        if not self.enter(ticket):
            ticket.wait()
        assert ticket.epoch is not None
        return ticket.epoch

    async def aacquire(self, *, priority: bool = False) -> int:
        """Async twin of :meth:`acquire` (the same gate: threads and loops share it)."""
        ticket = LoopTicket(priority)
        if not self.enter(ticket):
            try:
                await ticket.wait()
            except asyncio.CancelledError:
                self.withdraw(ticket)
                raise
        assert ticket.epoch is not None
        return ticket.epoch

    def begin_send(self) -> int:
        """A request holding a slot is being sent now; returns how many are (the load
        it is sent under), for :meth:`release`."""
        with self._lock:
            self.sending += 1
            return self.sending

    def release(
        self,
        epoch: int,
        *,
        throttled: bool = False,
        succeeded: bool = False,
        rtt: float | None = None,
        load: int | None = None,
    ) -> None:
        """A request finished (``load`` given: it had been sent): tell the controller
        how, and hand free slots to queued tickets."""
        granted: list[Ticket] = []
        with self._lock:
            self.in_flight -= 1
            if load is not None:
                self.sending -= 1
            if throttled:
                self.controller.on_throttle(epoch, load)
            elif succeeded and rtt is not None:
                # The window was in use if it was when this was sent or when it came back
                # (the first of a burst is sent alone but returns with the rest in flight).
                busy = max(load or 0, self.sending + (1 if load is not None else 0))
                self.controller.on_success(epoch, rtt, busy)
            elif succeeded:  # no round trip measured: count it as a full window's success
                self.controller.on_success(epoch, 0.0, int(self.controller.limit))
            for queue in self._queues:
                while queue and self._room() > 0:
                    ticket = queue.popleft()
                    self.in_flight += 1
                    ticket.epoch = self.controller.epoch
                    granted.append(ticket)
        for ticket in granted:
            if not ticket.signal() and ticket.epoch is not None:
                self.release(ticket.epoch)


@dataclass
class _Pace:
    """Generic cell rate: one unit per ``interval`` seconds, ``burst`` units at once."""

    interval: float
    burst: float
    ready_at: float = 0.0  # theoretical arrival time of the next unit

    def reserve(self, units: float, now: float) -> float:
        """Book ``units``; return how long to wait before using them.

        A request may start once the backlog is within ``burst - 1`` intervals; its
        units are then booked, so a large request delays the next one, not itself.
        """
        start = max(self.ready_at, now)
        self.ready_at = start + units * self.interval
        return max(0.0, start - now - (self.burst - 1) * self.interval)


class RateBudget:
    """Client-side requests-per-minute and tokens-per-minute limits.

    Args:
        requests_per_minute: e.g. your model's RPM quota (``None``: unlimited).
        tokens_per_minute: your TPM quota (``None``: unlimited).
        burst_seconds: how many seconds' worth of budget may be spent at once. The
            default, none, suits the service, which counts each second separately.
        headroom: share of the quota actually used, leaving room for timing jitter.
    """

    def __init__(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        burst_seconds: float = 0.0,
        headroom: float = 0.97,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._lock = threading.Lock()
        self._requests = (
            _Pace(
                60.0 / (requests_per_minute * headroom),
                max(1.0, requests_per_minute / 60 * burst_seconds),
            )
            if requests_per_minute
            else None
        )
        self._tokens = (
            _Pace(
                60.0 / (tokens_per_minute * headroom),
                max(1.0, tokens_per_minute / 60 * burst_seconds),
            )
            if tokens_per_minute
            else None
        )

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def reserve(self, tokens: int) -> float:
        """Book one request of ``tokens`` tokens; seconds to wait before sending it."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            if self._requests is not None:
                wait = max(wait, self._requests.reserve(1, now))
            if self._tokens is not None:
                wait = max(wait, self._tokens.reserve(tokens, now))
            return wait

    def __getstate__(self) -> dict[str, object]:
        return {"rpm": self.requests_per_minute, "tpm": self.tokens_per_minute}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["rpm"], state["tpm"])  # type: ignore[misc]


class AdaptivePace:
    """Learns a request-rate cap the client was not told about.

    Off until the service answers ``Throttling.RateQuota`` (requests per minute or second
    exceeded). The service counts the requests it admitted within the last second, so
    at a refusal the cap is estimated as the larger of two counts over that second: the
    replies that succeeded, and the requests sent minus those refused (refusals come at
    once). The second is right from the very first second, before a second's worth of
    replies exists. Requests then start no faster than 90 % of the estimate; each
    success raises the pace a little (one more request per second, per second), eight
    times more slowly within one request per second of the estimate, so the pace settles
    just under the quota and probes past it rarely. Past that band with no refusal the
    estimate was low (taken in a second the service answered slowly, say), and the pace
    grows at full speed again instead of crawling for the rest of the run.

    At a cut the service's window is full, so nothing more is sent until the oldest
    request in it has left the window; the pace runs from there. As the concurrency gate
    ignores throttling of requests sent before its last cut, a refusal only cuts again if
    its request was sent a full window after the last cut: until then the service's
    window may still hold what was admitted before the cut. Refusals of requests sent
    before the cut only sharpen the estimate. Concurrency is left alone: under a rate
    cap it is the wrong lever.
    """

    WINDOW = 1.0  # the service enforces RPM per second too (RPS = RPM / 60)
    CUT = 0.9
    PROBE_SLOWDOWN = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: deque[float] = deque()
        self._refused: deque[float] = deque()
        self._succeeded: deque[float] = deque()
        self._pace: _Pace | None = None
        self._cut_at = float("-inf")
        self.cap_estimate: float | None = None  # requests per second, from the last cut
        self.cuts = 0

    @property
    def rate(self) -> float | None:
        """Current requests per second, or ``None`` while unpaced."""
        return None if self._pace is None else 1.0 / self._pace.interval

    def _expire(self, now: float) -> None:
        for times in (self._sent, self._refused, self._succeeded):
            while times and now - times[0] > self.WINDOW:
                times.popleft()

    def reserve(self) -> float:
        """Book the next request: seconds to wait before it starts (0 while unpaced)."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0 if self._pace is None else self._pace.reserve(1, now)
            self._sent.append(now + wait)
            self._expire(now)
            return wait

    def on_success(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._succeeded.append(now)
            self._expire(now)
            if self._pace is None:
                return
            rate = 1.0 / self._pace.interval
            estimate = self.cap_estimate
            # Slow only near the estimate: a pace a request per second past it with no
            # refusal shows the estimate was low (a slow second when it was taken).
            near_cap = estimate is not None and estimate - 1.0 <= rate < estimate + 1.0
            step = 1.0 / (max(rate, 1.0) * (self.PROBE_SLOWDOWN if near_cap else 1))
            self._pace.interval = 1.0 / (rate + step)

    def on_rate_throttle(self, sent_at: float | None = None) -> None:
        """A request sent at ``sent_at`` (default: just now) was refused for rate."""
        now = time.monotonic()
        sent_at = now if sent_at is None else sent_at
        with self._lock:
            self._refused.append(now)
            self._expire(now)
            sent = sum(1 for t in self._sent if t <= now)
            observed = max(1.0, len(self._succeeded), sent - len(self._refused)) / self.WINDOW
            if sent_at <= self._cut_at:
                # Sent in the burst that caused the last cut: not admitted, so the
                # estimate drops, but this says nothing about the pace since.
                if self.cap_estimate is not None and observed < self.cap_estimate:
                    self._set_cap(observed)
                return
            if sent_at < self._cut_at + self.WINDOW:
                return  # the service's window still holds what it admitted before the cut
            current = self.rate
            pace = self._set_cap(observed if current is None else min(current, observed))
            # The service's window is full of what it just admitted: send nothing more
            # until its oldest entry leaves, rather than have the next sends refused too.
            # (A little later than that: the service admitted it after the trip there.)
            oldest = next((t for t in self._sent if t <= now), now)
            pace.ready_at = max(pace.ready_at, oldest + self.WINDOW * 1.05)
            self._cut_at = now
            self.cuts += 1

    def _set_cap(self, cap: float) -> _Pace:
        self.cap_estimate = cap
        interval = 1.0 / max(self.CUT * cap, 0.5)
        if self._pace is None:
            self._pace = _Pace(interval=interval, burst=1.0)
        else:
            self._pace.interval = interval
        return self._pace
