"""Adaptive concurrency and the client-side rate budget."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dashscope_embed.limits import (
    DEFAULT_CEILING,
    CapacityController,
    ConcurrencyGate,
    CpuMonitor,
    RateBudget,
    _Pace,
)


def full(controller: CapacityController) -> int:
    """The load of a request sent with the whole window in use."""
    return int(controller.limit)


def grow_to(controller: CapacityController, target: float) -> None:
    while controller.limit < target:
        controller.on_success(controller.epoch, 0.3, full(controller))


def test_slow_start_grows_half_again_per_round_trip_up_to_the_ceiling() -> None:
    controller = CapacityController(64)
    assert controller.limit == CapacityController.INITIAL
    rounds = 0
    while controller.limit < 64:
        window = int(controller.limit)
        for _ in range(window):  # one round trip: every request in the window succeeds
            controller.on_success(controller.epoch, 0.3, full(controller))
        rounds += 1
    assert rounds <= 6  # 8 -> 12 -> 18 -> 27 -> 40 -> 60 -> 64
    for _ in range(100):
        controller.on_success(controller.epoch, 0.3, full(controller))
    assert controller.limit == 64  # never past the ceiling


def test_an_idle_window_does_not_grow() -> None:
    controller = CapacityController(64)
    for _ in range(100):
        controller.on_success(controller.epoch, 0.3, load=1)  # one request at a time
    assert controller.limit == CapacityController.INITIAL


def test_a_429_cuts_once_per_round_and_ends_slow_start() -> None:
    controller = CapacityController(64)
    grow_to(controller, 16)
    assert controller.limit == 16
    sent_in = controller.epoch
    controller.on_throttle(sent_in)  # with no load known: to 70 %
    assert controller.limit == pytest.approx(16 * 0.7)
    for _ in range(5):  # the same round answering 429 too: no further cuts
        controller.on_throttle(sent_in)
    assert controller.limit == pytest.approx(11.2) and controller.throttle_cuts == 1
    before = controller.limit
    controller.on_success(controller.epoch, 0.3, full(controller))
    assert controller.limit == pytest.approx(before + 1 / before)  # additive now
    while controller.limit + 1 < 16:
        controller.on_success(controller.epoch, 0.3, full(controller))
    before = controller.limit
    controller.on_success(controller.epoch, 0.3, full(controller))
    slow = 1 / (before * CapacityController.PROBE_SLOWDOWN)  # near where it was throttled
    assert controller.limit - before == pytest.approx(slow)


def test_a_429_after_an_overshoot_cuts_to_what_the_service_admitted() -> None:
    controller = CapacityController(64)
    grow_to(controller, 24)  # slow start overshot a capacity of 16
    controller.on_throttle(controller.epoch, load=17)  # refused with 16 others under way
    assert controller.limit == pytest.approx(0.95 * 16)
    fresh = CapacityController(64)
    grow_to(fresh, 24)
    fresh.on_throttle(fresh.epoch, load=3)  # most of those under way were another's
    assert fresh.limit == pytest.approx(12)  # never below half


def test_latency_climbing_cuts_in_proportion_once_per_round() -> None:
    controller = CapacityController(64)
    grow_to(controller, 16)
    assert controller.limit == 16
    sent_in = controller.epoch
    for _ in range(10):  # the service queues: round trips double
        controller.on_success(sent_in, 0.6, full(controller))
    assert controller.latency_cuts == 1
    assert 8 <= controller.limit < 16
    assert not controller.slow_start


def test_jitter_under_the_tolerance_does_not_cut() -> None:
    controller = CapacityController(64)
    for i in range(400):
        controller.on_success(controller.epoch, 0.3 + 0.1 * (i % 3) / 2, full(controller))
    assert controller.latency_cuts == 0 and controller.limit == 64


def test_a_busy_cpu_stops_growth() -> None:
    clock = [0.0]
    cpu = [0.0]
    monitor = CpuMonitor(lambda: clock[0], lambda: cpu[0], cores=1.0)
    controller = CapacityController(64, cpu=monitor)
    for _ in range(4):
        controller.on_success(controller.epoch, 0.3, full(controller))
    grown = controller.limit
    clock[0], cpu[0] = 1.0, 0.95  # the process used 95 % of its core over the last second
    for _ in range(50):
        controller.on_success(controller.epoch, 0.3, full(controller))
    assert controller.limit == grown
    clock[0], cpu[0] = 2.0, 1.2  # 25 % the next second: free to grow again
    controller.on_success(controller.epoch, 0.3, full(controller))
    assert controller.limit > grown


def test_the_limit_never_drops_below_one() -> None:
    controller = CapacityController(4)
    for _ in range(8):
        controller.on_throttle(controller.epoch)
    assert controller.limit == 1


def test_fixed_gate_does_not_adapt() -> None:
    gate = ConcurrencyGate(3, adaptive=False)
    assert gate.limit == 3
    gate.release(gate.acquire(), throttled=True)
    assert gate.limit == 3


def test_a_user_ceiling_is_a_hard_one() -> None:
    gate = ConcurrencyGate(6)
    for _ in range(500):
        epoch = gate.acquire()
        load = gate.begin_send()
        gate.release(epoch, succeeded=True, rtt=0.3, load=max(load, int(gate.limit)))
    assert gate.limit == 6 and gate.maximum == 6
    assert ConcurrencyGate().maximum == DEFAULT_CEILING


def _service_with_a_cap(
    controllers: list[CapacityController], cap: int, rounds: int
) -> tuple[list[float], int, int]:
    """Each round trip every client sends its window; the service admits ``cap`` in all
    (in turn, a client at a time, as arrivals interleave) and refuses the rest with 429.
    Returns each client's share of admitted requests, the 429s and all requests."""
    admitted = [0.0] * len(controllers)
    refused = sent = 0
    for round_number in range(rounds):
        windows = [int(c.limit) for c in controllers]
        order = [i for k in range(max(windows)) for i in range(len(windows)) if k < windows[i]]
        shift = round_number % len(controllers)  # whose request arrives first varies
        order = order[shift:] + order[:shift]
        free = cap
        epochs = [c.epoch for c in controllers]
        for i in order:
            sent += 1
            if free > 0:
                free -= 1
                admitted[i] += 1
                controllers[i].on_success(epochs[i], 0.3, windows[i])
            else:
                refused += 1
                controllers[i].on_throttle(epochs[i])
    total = sum(admitted)
    return [a / total for a in admitted], refused, sent


def test_two_clients_sharing_a_cap_split_it_fairly_with_few_429s() -> None:
    clients = [CapacityController(64), CapacityController(64)]
    _service_with_a_cap(clients, cap=16, rounds=50)  # converge
    shares, refused, sent = _service_with_a_cap(clients, cap=16, rounds=400)
    assert all(share >= 0.35 for share in shares), shares
    use = sum(min(int(c.limit), 16) for c in clients)
    assert use >= 0.9 * 16 or sent * 0.95 <= 16 * 400 + refused
    assert refused <= 0.05 * sent, (refused, sent)


def test_capacity_another_client_gives_up_is_taken_back_quickly() -> None:
    first, second = CapacityController(64), CapacityController(64)
    _service_with_a_cap([first, second], cap=16, rounds=100)
    assert first.limit < 12
    rounds = 0
    while int(first.limit) < 15 and rounds < 100:  # the second client has left
        _service_with_a_cap([first], cap=16, rounds=1)
        rounds += 1
    assert rounds <= 16, f"{rounds} round trips to take back the freed capacity"


def test_one_client_under_a_cap_uses_nearly_all_of_it() -> None:
    client = [CapacityController(64)]
    _service_with_a_cap(client, cap=16, rounds=50)
    _, refused, sent = _service_with_a_cap(client, cap=16, rounds=400)
    admitted = sent - refused
    assert admitted >= 0.9 * 16 * 400
    assert refused <= 0.05 * sent


def test_a_full_gate_blocks_until_a_release() -> None:
    gate = ConcurrencyGate(1)
    first = gate.acquire()
    entered = threading.Event()

    def second() -> None:
        gate.release(gate.acquire(), succeeded=True)
        entered.set()

    worker = threading.Thread(target=second)
    worker.start()
    assert not entered.wait(0.1)
    gate.release(first, succeeded=True)
    assert entered.wait(2)
    worker.join()


async def test_async_waiters_are_bounded_and_all_served() -> None:
    gate = ConcurrencyGate(3, adaptive=False)
    peak = 0
    running = 0

    async def job() -> None:
        nonlocal peak, running
        epoch = await gate.aacquire()
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        gate.release(epoch, succeeded=True)

    await asyncio.gather(*(job() for _ in range(40)))
    assert peak == 3 and gate.in_flight == 0


async def test_cancelled_async_waiter_does_not_leak_a_slot() -> None:
    gate = ConcurrencyGate(1)
    held = await gate.aacquire()
    waiter = asyncio.ensure_future(gate.aacquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    gate.release(held, succeeded=True)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    again = await asyncio.wait_for(gate.aacquire(), 1)
    gate.release(again)
    assert gate.in_flight == 0


def test_pace_spreads_units_evenly_after_a_burst() -> None:
    pace = _Pace(interval=0.5, burst=2)
    waits = [pace.reserve(1, now=100.0) for _ in range(5)]
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert pace.reserve(1, now=110.0) == 0.0  # idle time refills the burst


def test_budget_applies_both_limits() -> None:
    budget = RateBudget(
        requests_per_minute=6000, tokens_per_minute=600, burst_seconds=1.0, headroom=1.0
    )
    assert budget.reserve(10) == 0.0  # within the 10-token burst
    assert budget.reserve(60) == pytest.approx(0.1, abs=0.02)  # starts when one token is free
    wait = budget.reserve(1)  # ...and its 60 tokens (6 s at 10/s) delay the next request
    assert 5.9 <= wait <= 6.2
    assert not RateBudget().active
    with pytest.raises(ValueError, match="tokens_per_minute"):
        RateBudget(tokens_per_minute=0)


def test_budget_books_requests_one_interval_apart() -> None:
    budget = RateBudget(requests_per_minute=1200, burst_seconds=0.05)  # 1 per 50 ms
    waits = [budget.reserve(0) for _ in range(4)]
    assert waits[0] == 0.0
    assert waits[3] == pytest.approx(3 * 0.05 / 0.97, abs=0.01)  # 97 % of the quota


def test_retries_are_let_in_before_first_attempts() -> None:
    gate = ConcurrencyGate(1, adaptive=False)
    held = gate.acquire()
    order: list[str] = []
    ready = threading.Barrier(3)

    def wait(name: str, priority: bool) -> None:
        ready.wait()
        if priority:
            time.sleep(0.05)  # the retry starts waiting after the first attempt
        epoch = gate.acquire(priority=priority)
        order.append(name)
        gate.release(epoch)

    first = threading.Thread(target=wait, args=("first attempt", False))
    retry = threading.Thread(target=wait, args=("retry", True))
    first.start()
    retry.start()
    ready.wait()
    time.sleep(0.15)  # both are waiting now
    gate.release(held)
    first.join(2)
    retry.join(2)
    assert order == ["retry", "first attempt"]


def test_adaptive_pace_is_off_until_a_rate_throttle_then_paces_under_it() -> None:
    from dashscope_embed.limits import AdaptivePace

    pace = AdaptivePace()
    assert pace.rate is None
    # 21 requests sent within a second, unpaced; the service refuses the 21st.
    assert all(pace.reserve() == 0.0 for _ in range(21))
    pace.on_rate_throttle()
    assert pace.cap_estimate == pytest.approx(20.0)  # it admitted 20 in the last second
    assert pace.rate == pytest.approx(18.0)  # 90 % of that
    pace.on_rate_throttle()  # the same burst answering 429 again: no second cut
    assert pace.cuts == 1
    before = pace.rate
    pace.on_success()
    assert pace.rate is not None and before is not None and pace.rate > before  # grows back
    waits = [pace.reserve() for _ in range(3)]
    # Nothing until the burst has left the service's one-second window, then spaced.
    assert 0.95 < waits[0] < 1.1
    assert waits[2] - waits[1] == pytest.approx(waits[1] - waits[0], rel=0.05)
    assert waits[1] - waits[0] == pytest.approx(1 / pace.rate, rel=0.05)


def test_adaptive_pace_counts_sends_not_replies_so_the_first_second_is_judged_right() -> None:
    import time

    from dashscope_embed.limits import AdaptivePace

    # The first 429 comes 0.3 s in, when few replies exist yet: what the service admitted
    # is what was sent minus what it refused, whatever has come back so far.
    pace = AdaptivePace()
    burst_sent_at = time.monotonic()
    for _ in range(24):
        pace.reserve()
    pace.on_rate_throttle(burst_sent_at)
    assert pace.cap_estimate == pytest.approx(23.0)  # three sent may still be refused
    for _ in range(3):  # they are: the same burst, so no new cut, a better estimate
        pace.on_rate_throttle(burst_sent_at)
    assert pace.cuts == 1 and pace.cap_estimate == pytest.approx(20.0)
    assert pace.rate == pytest.approx(18.0)


def test_adaptive_pace_ignores_refusals_while_the_window_holds_the_old_burst() -> None:
    import time

    from dashscope_embed.limits import AdaptivePace

    pace = AdaptivePace()
    for _ in range(21):
        pace.reserve()
    pace.on_rate_throttle()
    # Sent after the cut but within a window of it: the service still counts the burst.
    pace.on_rate_throttle(time.monotonic())
    assert pace.cuts == 1 and pace.rate == pytest.approx(18.0)
    # Sent a full window after the cut: the pace itself is too fast, so cut again.
    pace.on_rate_throttle(time.monotonic() + pace.WINDOW)
    assert pace.cuts == 2 and pace.rate is not None and pace.rate < 18.0


def test_adaptive_pace_probes_slowly_near_the_cap_it_learned() -> None:
    from dashscope_embed.limits import AdaptivePace

    pace = AdaptivePace()
    for _ in range(41):
        pace.reserve()
    pace.on_rate_throttle()  # cap 40/s: pace 36/s
    assert pace.rate == pytest.approx(36.0)
    for _ in range(36):  # a second of successes far below the cap: about +1/s
        pace.on_success()
    assert pace.rate == pytest.approx(37.0, abs=0.05)
    for _ in range(80):  # two seconds of successes near the cap: 8x more slowly
        pace.on_success()
    assert pace.rate is not None and 39.0 < pace.rate < 39.5


def test_adaptive_pace_recovers_at_full_speed_from_an_estimate_that_was_too_low() -> None:
    """The first refusal came in a second the service answered slowly: six admitted, so
    the estimate is 6/s though the quota is far higher. Past the estimate with no
    refusal, the pace must not keep crawling at the near-the-cap speed all run."""
    from dashscope_embed.limits import AdaptivePace

    pace = AdaptivePace()
    for _ in range(7):
        pace.reserve()
    pace.on_rate_throttle()
    assert pace.cap_estimate == pytest.approx(6.0) and pace.rate == pytest.approx(5.4)
    seconds = 0.0
    while pace.rate is not None and pace.rate < 7.0:  # through the band, slowly
        seconds += 1.0 / pace.rate
        pace.on_success()
    assert seconds > 8  # ~1.6 requests/s gained at one-eighth speed
    seconds = 0.0
    while pace.rate < 20.0:  # past it: about one more request per second, per second
        seconds += 1.0 / pace.rate
        pace.on_success()
    assert seconds == pytest.approx(13.0, rel=0.15)
