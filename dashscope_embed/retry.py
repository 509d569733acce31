"""The retry policy: when to send a failed request again, and how long to wait first."""

from __future__ import annotations

import random
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
    """

    max_retries: int = 4
    initial_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    total_timeout: float | None = 300.0
    immediate_reconnect: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("retry delays must be >= 0")

    def delay_before_retry(
        self,
        error: BaseException,
        attempt: int,
        elapsed: float,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or ``None`` to stop.

        Stops when the error is not retryable, the retries are used up, the service asks
        for a longer wait than ``max_retry_after``, or waiting would pass ``total_timeout``.
        """
        if not is_retryable(error) or attempt > self.max_retries:
            return None
        if (
            attempt == 1
            and self.immediate_reconnect
            and isinstance(error, APIConnectionError)
            and not isinstance(error, APITimeoutError)
        ):
            return 0.0
        draw = rng.random() if rng is not None else random.random()
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** (attempt - 1))
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
        return delay
