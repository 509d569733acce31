from __future__ import annotations

import random

import pytest

from dashscope_embed import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(max_retries=10, initial_delay=0.5, max_delay=8.0, total_timeout=None)
    rng = random.Random(1)
    error = ServerError("x", status_code=500)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [policy.delay_before_retry(error, attempt, 0.0, rng) for _ in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d for d in delays if d is not None) > ceiling * 0.8  # spread, not fixed


def test_retry_after_is_honoured_and_a_longer_wait_fails_fast() -> None:
    policy = RetryPolicy(max_retry_after=5.0, total_timeout=None)
    asked = RateLimitError("slow", status_code=429, retry_after=2.0)
    delay = policy.delay_before_retry(asked, 1, 0.0)
    assert delay is not None and 2.0 <= delay <= 2.2
    # Retrying sooner than asked would only be refused again: the caller gets the error,
    # and the wait the service asked for, at once.
    greedy = RateLimitError("slow", status_code=429, retry_after=99999.0)
    assert policy.delay_before_retry(greedy, 1, 0.0) is None


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("no", status_code=400),
        AuthenticationError("no", status_code=401),
        ValueError("not ours"),
    ],
)
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    assert RetryPolicy().delay_before_retry(error, 1, 0.0) is None


def test_a_dropped_connection_is_retried_once_at_once_then_with_backoff() -> None:
    from dashscope_embed import APITimeoutError

    policy = RetryPolicy(initial_delay=1.0, total_timeout=None)
    rng = random.Random(3)
    dropped = APIConnectionError("peer closed connection")
    assert policy.delay_before_retry(dropped, 1, 0.0, rng) == 0.0
    second = [policy.delay_before_retry(dropped, 2, 0.0, rng) for _ in range(50)]
    assert max(d for d in second if d is not None) > 0.5  # backs off from the second retry
    timed_out = APITimeoutError("read timeout")  # a slow service: back off at once
    assert any(policy.delay_before_retry(timed_out, 1, 0.0, rng) for _ in range(5))
    patient = RetryPolicy(initial_delay=1.0, immediate_reconnect=False)
    assert any(patient.delay_before_retry(dropped, 1, 0.0, rng) for _ in range(5))


def test_retries_stop_at_max_retries_and_at_the_total_time_bound() -> None:
    policy = RetryPolicy(max_retries=2, total_timeout=10.0)
    error = APIConnectionError("dropped")
    assert policy.delay_before_retry(error, 2, 0.0) is not None
    assert policy.delay_before_retry(error, 3, 0.0) is None
    slow = RateLimitError("x", status_code=429, retry_after=3.0)
    assert policy.delay_before_retry(slow, 1, 8.0) is None  # 8 + 3 > 10
