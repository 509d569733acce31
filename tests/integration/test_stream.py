"""Streaming a corpus: order, bounded memory, errors that say where to resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np
import pytest

from dashscope_embed import (
    DashScopeClient,
    EmbedStreamError,
    InvalidInputError,
    RetryPolicy,
    ServerError,
)
from dashscope_embed.emulator import Emulator

Factory = Callable[..., DashScopeClient]


class CountingCorpus:
    """A lazy corpus that records how far it has been read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        for i in range(self.size):
            self.read = i + 1
            yield f"streamed document {i} about topic {i % 17}"


def test_stream_is_ordered_complete_and_lazy(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    # Replies out of order (jitter), some failed or dropped and retried.
    dashscope_emulator.configure(latency_jitter=0.01, error_rate=0.1, drop_rate=0.05, seed=5)
    fast_retries = RetryPolicy(max_retries=10, initial_delay=0.001, max_delay=0.01)
    client = make_client(max_concurrency=3, retry=fast_retries)
    corpus = CountingCorpus(2345)
    lookahead = 6
    seen = 0
    vectors: list[list[float]] = []
    for chunk in client.embed_stream(corpus, dimension=64, lookahead=lookahead):
        assert chunk.start == seen
        seen = chunk.stop
        vectors.extend(chunk.result.require_dense())
        # Never more than the look-ahead window read beyond what was yielded.
        assert corpus.read - seen <= lookahead * 10
    assert seen == 2345
    stats = dashscope_emulator.stats()
    assert stats["injected_errors"] and stats["dropped_connections"]
    assert stats["duplicate_embeddings"] == 0
    dashscope_emulator.configure(latency_jitter=0.0, error_rate=0.0, drop_rate=0.0)
    whole = make_client().embed(list(CountingCorpus(2345)), dimension=64)
    assert vectors == whole.require_dense()


def test_stream_as_numpy(make_client: Factory) -> None:
    chunks = list(
        make_client().embed_stream([f"n{i}" for i in range(25)], dimension=128, as_numpy=True)
    )
    assert [c.array.shape for c in chunks] == [(10, 128), (10, 128), (5, 128)]
    assert all(c.array.dtype == np.float32 for c in chunks)


def test_stream_names_bad_inputs_by_their_corpus_position(make_client: Factory) -> None:
    texts = [f"t{i}" for i in range(100)]
    texts[73] = ""
    with pytest.raises(InvalidInputError) as info:
        list(make_client().embed_stream(texts))
    assert info.value.positions == [73]


def test_stream_failure_says_where_to_resume_and_keeps_later_work(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(error_rate=0.2, seed=11)
    client = make_client(retry=RetryPolicy(max_retries=0), max_concurrency=2)
    yielded: list[int] = []

    def consume() -> None:
        for chunk in client.embed_stream([f"r{i}" for i in range(300)], lookahead=4):
            yielded.extend(range(chunk.start, chunk.stop))

    with pytest.raises(EmbedStreamError) as info:
        consume()
    error = info.value
    assert yielded == list(range(error.position))  # everything before it, in order
    assert isinstance(error.cause, ServerError)
    assert all(c.start > error.position for c in error.completed)


async def test_async_stream_from_an_async_source(make_client: Factory) -> None:
    async def source() -> AsyncIterator[str]:
        for i in range(123):
            yield f"async streamed {i}"

    client = make_client(max_concurrency=4)
    starts, total = [], 0
    async for chunk in client.aembed_stream(source(), text_type="document"):
        starts.append(chunk.start)
        total += chunk.count
    assert total == 123 and starts == list(range(0, 123, 10))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stopped_stream_sends_nothing_more_than_was_in_flight(
    mode: str, make_client: Factory, dashscope_emulator: Emulator
) -> None:
    """Ctrl-C (or a consumer that breaks off) stops the spending: requests already on
    the wire finish, but the slices queued behind the concurrency limit, which the
    stream's read-ahead window holds many of, are never sent."""
    import asyncio

    # Slow, jittered replies: the window fills with slices waiting for a slot.
    dashscope_emulator.configure(latency=0.3, latency_jitter=0.3, seed=3)
    client = make_client(max_concurrency=4)
    corpus = CountingCorpus(2_000)
    if mode == "sync":
        chunks = client.embed_stream(corpus, dimension=64)
        next(chunks)
        at_stop = dashscope_emulator.stats()["requests"]
        chunks.close()  # type: ignore[attr-defined]
    else:

        async def consume() -> int:
            stream = client.aembed_stream(corpus, dimension=64)
            await anext(stream)
            at_stop = dashscope_emulator.stats()["requests"]
            await stream.aclose()  # type: ignore[attr-defined]
            return int(at_stop)

        at_stop = asyncio.run(consume())
    sent = dashscope_emulator.stats()["requests"]
    assert sent <= at_stop + 4, (at_stop, sent)  # at most the slots in use at the stop
    assert corpus.read < 2_000


def test_a_stopped_stream_resends_nothing_that_was_refused(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    """An untold rate cap refuses most of the first burst: those requests are waiting
    for their retry (a backoff, then the pacer's turn) when the consumer stops. The
    stop wakes them and none is sent again."""
    import time

    dashscope_emulator.configure(rpm=60)
    client = make_client(max_concurrency=4, retry=RetryPolicy(max_retries=3))
    chunks = client.embed_stream(CountingCorpus(200), dimension=64)
    next(chunks)
    time.sleep(0.3)  # the refused ones are waiting to retry now
    sent = dashscope_emulator.stats()["requests"]
    chunks.close()  # type: ignore[attr-defined]
    assert dashscope_emulator.stats()["requests"] == sent
