"""The retry policy: when to send a failed request again, and how long to wait first."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dashscope_embed.errors import APIConnectionError, APIError, APITimeoutError, is_retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring the service's ``Retry-After``.

    Attributes:
        max_retries: resends of one request after its first try.
        initial_delay: backoff ceiling for the first retry, in seconds; doubles each time.
        max_delay: largest backoff ceiling.
        max_retry_after: largest ``Retry-After`` waited for. A service that asks for a
            longer wait is not retried: its error is raised at once, with the wait it
            asked for in ``retry_after``, rather than retried too early.
        total_timeout: give up on a request once this many seconds have passed since its
            first try (``None``: only ``max_retries`` bounds it).
        immediate_reconnect: retry a dropped connection (not a timeout) once without
            waiting. A dropped connection is usually a pooled keep-alive connection the
            server closed, or a network blip, not a service asking for less load; the
            official SDK also resends such a request at once. Later retries back off.
        extra_retries: further retries for a request that used up ``max_retries``
            while the client's other requests kept succeeding: bad luck, not a service in
            trouble. Each one needs another request to have succeeded while it was out,
            and a token from a :class:`RetryAllowance` (one per ten successes, at most
            ten saved). A service that is down, or a call of one request, still fails
            after ``max_retries``; a long call against a service that fails now and then
            is not stopped by one unlucky request. Their backoff stays at the last
            regular retry's. ``0``: ``max_retries`` is the only bound.
    """

    max_retries: int = 4
    initial_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    total_timeout: float | None = 300.0
    immediate_reconnect: bool = True
    extra_retries: int = 4

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.extra_retries < 0:
            raise ValueError(f"extra_retries must be >= 0, got {self.extra_retries}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("retry delays must be >= 0")

    def delay_before_retry(
        self,
        error: BaseException,
        attempt: int,
        elapsed: float,
        rng: random.Random | None = None,
        extra: Callable[[], bool] | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or ``None`` to stop.

        Stops when the error is not retryable, the retries are used up, the service asks
        for a longer wait than ``max_retry_after``, or waiting would pass ``total_timeout``.
        Past ``max_retries``, an extra retry is granted only by ``extra``: whether others
        succeeded meanwhile and a token was spent (asked last, so a token is only spent
        on a retry that happens).
        """
        if not is_retryable(error) or attempt > self.max_retries + self.extra_retries:
            return None
        beyond = attempt > self.max_retries
        if beyond and (extra is None or self.max_retries == 0):
            return None
        if (
            attempt == 1
            and self.immediate_reconnect
            and isinstance(error, APIConnectionError)
            and not isinstance(error, APITimeoutError)
        ):
            return 0.0
        draw = rng.random() if rng is not None else random.random()
        # An extra retry waits as long as the last regular one: it is for bad luck, and
        # a service in trouble gets no extra retries at all.
        step = min(attempt, self.max_retries)
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** (step - 1))
        delay = ceiling * draw
        retry_after = error.retry_after if isinstance(error, APIError) else None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            # Wait at least what the service asked, spread a little so that requests
            # throttled together do not return together.
            delay = retry_after * (1.0 + 0.1 * draw)
        if self.total_timeout is not None and elapsed + delay > self.total_timeout:
            return None
        if beyond and not (extra is not None and extra()):
            return None
        return delay


# One extra retry per ten successful requests (gRPC's retry throttling earns 0.1 token
# per success too); at most ten saved, so a long healthy run cannot pay for a storm.
SUCCESSES_PER_TOKEN = 10
MAX_SAVED_TOKENS = 10


class RetryAllowance:
    """The tokens that pay for retries beyond ``max_retries``, earned by successes.

    One per client (renewed after a fork), shared by its threads and event loops.
    ``successes`` counts every successful request, so a request can tell whether any
    succeeded while it was out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credit = 0  # successes not yet spent, at most a full store's worth
        self.successes = 0

    def earn(self) -> None:
        """A request succeeded."""
        with self._lock:
            self.successes += 1
            self._credit = min(SUCCESSES_PER_TOKEN * MAX_SAVED_TOKENS, self._credit + 1)

    def grant(self, successes_before: int) -> bool:
        """Spend a token on an extra retry, if another request succeeded since
        ``successes`` read ``successes_before`` and a whole token is saved."""
        with self._lock:
            if self.successes <= successes_before or self._credit < SUCCESSES_PER_TOKEN:
                return False
            self._credit -= SUCCESSES_PER_TOKEN
            return True
