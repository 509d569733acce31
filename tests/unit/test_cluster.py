"""The shared quota, without Ray: the keeper paces every worker's starts together, leases
come in blocks, and a worker whose keeper is gone paces itself instead of stalling."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from dashscope_embed.cluster import Lease, LeasedPace, LeaseRequest, QuotaKeeper, split_quota


def test_the_keeper_spaces_every_workers_starts_at_the_told_rate() -> None:
    keeper = QuotaKeeper(requests_per_minute=600)  # 10 a second
    first = keeper.lease(LeaseRequest(starts=5))
    second = keeper.lease(LeaseRequest(starts=5))  # another worker, just after
    offsets = sorted(first.offsets + second.offsets)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert len(offsets) == 10
    assert min(gaps) > 0.09  # ~0.103 s apart (600 RPM at 97 %), whoever asked
    assert offsets[-1] == pytest.approx(9 * 60 / (600 * 0.97), abs=0.05)


def test_the_keeper_learns_an_untold_cap_from_the_workers_refusals() -> None:
    keeper = QuotaKeeper()
    assert keeper.lease(LeaseRequest(starts=40)).offsets == (0.0,) * 40  # unpaced at first
    time.sleep(0.05)
    # A worker reports that 30 of them were refused for rate, sent ~0.05 s ago.
    lease = keeper.lease(LeaseRequest(starts=4, successes=10, throttled_ages=(0.05,) * 30))
    assert keeper.stats()["cuts"] == 1
    estimate = keeper.stats()["cap_estimate"]
    assert estimate is not None and 9 <= estimate <= 11  # the 10 that were admitted
    assert all(b > a for a, b in itertools.pairwise(lease.offsets))


def test_a_worker_leases_in_blocks_not_per_request() -> None:
    keeper = QuotaKeeper(requests_per_minute=6000)
    asked: list[LeaseRequest] = []

    def ask(request: LeaseRequest) -> Lease:
        asked.append(request)
        return keeper.lease(request)

    worker = LeasedPace(ask)
    for _ in range(150):
        time.sleep(max(0.0, worker.take_slot()))
        worker.on_success()
    assert len(asked) < 40  # blocks grow with the worker's own pace
    assert sum(r.successes for r in asked) >= 100  # successes travel with later leases


def test_workers_sharing_a_keeper_stay_under_the_quota_together() -> None:
    keeper = QuotaKeeper(requests_per_minute=1200)  # 20 a second
    starts: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        pace = LeasedPace(keeper.lease)
        for _ in range(10):
            time.sleep(max(0.0, pace.take_slot()))
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    # In any one-second window, at most the quota's second (plus one for the edge).
    most = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    assert most <= 21
    assert starts[-1] - starts[0] >= (40 - 21) / 20 * 0.95  # and no faster


def test_a_worker_whose_keeper_is_gone_paces_itself_and_comes_back() -> None:
    keeper = QuotaKeeper(requests_per_minute=600)
    down = threading.Event()
    down.set()

    def ask(request: LeaseRequest) -> Lease:
        if down.is_set():
            raise ConnectionError("actor restarting")
        return keeper.lease(request)

    pace = LeasedPace(ask, fallback_rpm=split_quota(600, 2), retry_keeper_after=0.2)
    waits = [pace.take_slot() for _ in range(3)]
    assert pace.fallbacks == 1 and pace.leases == 0
    assert waits[0] == 0 and waits[2] == pytest.approx(2 * 60 / (300 * 0.97), abs=0.05)
    down.clear()
    time.sleep(0.25)
    pace.take_slot()
    assert pace.leases == 1  # back on the shared pace


def test_split_quota() -> None:
    assert split_quota(None, 4) is None
    assert split_quota(1200, 4) == 300
    assert split_quota(3, 8) == 1


def test_the_keeper_paces_a_told_token_quota_by_what_each_request_bills() -> None:
    keeper = QuotaKeeper(tokens_per_minute=6000)  # 100 tokens a second
    offsets = keeper.lease(LeaseRequest(starts=3, tokens=50)).offsets
    assert offsets[0] == 0
    assert offsets[2] == pytest.approx(2 * 50 * 60 / (6000 * 0.97), abs=0.05)  # ~1 s


def test_the_tokens_the_engine_books_reach_the_keeper() -> None:
    asked: list[LeaseRequest] = []
    keeper = QuotaKeeper(tokens_per_minute=60_000)

    def ask(request: LeaseRequest) -> Lease:
        asked.append(request)
        return keeper.lease(request)

    pace = LeasedPace(ask)
    assert pace.reserve(321) == 0.0  # the budget step only records the cost
    pace.take_slot()
    assert asked[0].tokens == 321
