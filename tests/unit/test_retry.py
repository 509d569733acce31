from __future__ import annotations

import random
import threading

import pytest

from dashscope_embed import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from dashscope_embed.retry import RetryAllowance


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


# ---------------------------------------------------------------- extra retries
def test_past_max_retries_only_a_granted_extra_retry_happens() -> None:
    policy = RetryPolicy(max_retries=2, extra_retries=2, total_timeout=None)
    error = ServerError("boom", status_code=500)
    assert policy.delay_before_retry(error, 3, 0.0) is None  # nobody to grant it
    assert policy.delay_before_retry(error, 3, 0.0, extra=lambda: False) is None
    assert policy.delay_before_retry(error, 3, 0.0, extra=lambda: True) is not None
    assert policy.delay_before_retry(error, 4, 0.0, extra=lambda: True) is not None
    assert policy.delay_before_retry(error, 5, 0.0, extra=lambda: True) is None  # 2 + 2 used
    # Within max_retries nothing is asked for.
    asked: list[int] = []
    assert policy.delay_before_retry(error, 2, 0.0, extra=lambda: bool(asked.append(1))) is not None
    assert asked == []


def test_an_extra_retry_waits_no_longer_than_the_last_regular_one() -> None:
    policy = RetryPolicy(max_retries=3, initial_delay=1.0, max_delay=100.0, extra_retries=4)
    error = ServerError("boom", status_code=500)
    top = random.Random(0)
    top.random = lambda: 1.0  # type: ignore[method-assign]  # the ceiling itself
    assert policy.delay_before_retry(error, 3, 0.0, top) == 4.0
    for attempt in (4, 5, 6, 7):
        assert policy.delay_before_retry(error, attempt, 0.0, top, extra=lambda: True) == 4.0
    # A dropped connection's immediate resend is the first retry's, never an extra one's.
    once = RetryPolicy(max_retries=1, initial_delay=1.0, extra_retries=1)
    dropped = APIConnectionError("dropped")
    assert once.delay_before_retry(dropped, 2, 0.0, top, extra=lambda: True) == 1.0


def test_no_token_is_spent_on_an_extra_retry_that_would_not_happen() -> None:
    policy = RetryPolicy(max_retries=1, extra_retries=3, total_timeout=10.0, max_retry_after=5)
    spent: list[int] = []

    def spend() -> bool:
        spent.append(1)
        return True

    assert (
        policy.delay_before_retry(AuthenticationError("no", status_code=401), 2, 0, None, spend)
        is None
    )
    assert (
        policy.delay_before_retry(RateLimitError("x", retry_after=6.0), 2, 0.0, None, spend) is None
    )
    assert (
        policy.delay_before_retry(RateLimitError("x", retry_after=3.0), 2, 8.0, None, spend) is None
    )
    assert spent == []


def test_max_retries_zero_means_no_retry_at_all() -> None:
    policy = RetryPolicy(max_retries=0)
    assert (
        policy.delay_before_retry(ServerError("b", status_code=500), 1, 0.0, extra=lambda: True)
        is None
    )
    with pytest.raises(ValueError, match="extra_retries must be >= 0"):
        RetryPolicy(extra_retries=-1)


def test_the_allowance_grants_only_after_a_success_since_and_a_whole_token() -> None:
    allowance = RetryAllowance()
    seen = allowance.successes
    assert not allowance.grant(seen)  # nothing earned yet
    for _ in range(9):
        allowance.earn()
    assert not allowance.grant(seen)  # 0.9 of a token
    allowance.earn()
    assert not allowance.grant(allowance.successes)  # a token, but no success since
    assert allowance.grant(seen)
    assert not allowance.grant(seen)  # spent
    for _ in range(1000):
        allowance.earn()
    granted = sum(allowance.grant(seen) for _ in range(50))
    assert granted == 10  # at most ten saved, however long the healthy run


def test_the_allowance_counts_every_success_across_threads() -> None:
    allowance = RetryAllowance()
    threads = [
        threading.Thread(target=lambda: [allowance.earn() for _ in range(2000)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowance.successes == 16000
    granted = sum(allowance.grant(0) for _ in range(20))
    assert granted == 10
