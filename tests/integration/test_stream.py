"""Streaming a corpus: order, bounded memory, errors that say where to resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest

from dashscope_embed import (
    DashScopeClient,
    EmbeddingChunk,
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


def numpy_stream(
    client: DashScopeClient, mode: str, texts: list[str], **options: Any
) -> list[EmbeddingChunk]:
    if mode == "sync":
        return list(client.embed_stream(texts, as_numpy=True, **options))

    async def run() -> list[EmbeddingChunk]:
        return [c async for c in client.aembed_stream(texts, as_numpy=True, **options)]

    return asyncio.run(run())


@pytest.mark.parametrize("protocol", ["native", "openai-compatible"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_numpy_stream_holds_exactly_the_vectors_embed_returns(
    mode: str, protocol: str, make_client: Factory, dashscope_emulator: Emulator
) -> None:
    texts = [f"numpy {i % 7}" for i in range(95)]  # repeats inside every request
    want = np.asarray(
        make_client(protocol=protocol).embed(texts, dimension=128).require_dense(),
        dtype=np.float32,
    )
    # Slow, jittered replies, several in flight: requests finish out of order.
    dashscope_emulator.configure(latency=0.05, latency_jitter=0.1, seed=4)
    client = make_client(protocol=protocol, max_concurrency=4)
    chunks = numpy_stream(client, mode, texts, dimension=128)
    assert [(c.start, c.count) for c in chunks] == [(i, min(10, 95 - i)) for i in range(0, 95, 10)]
    assert all(c.array.dtype == np.float32 and c.array.shape == (c.count, 128) for c in chunks)
    got = np.concatenate([c.array for c in chunks])
    np.testing.assert_array_equal(got, want)
    # A repeated text's row is its own: writing into one changes no other.
    chunks[0].array[0] = 0.0
    assert chunks[0].array[7].any()
    # The result keeps no second copy of the vectors, and says where they are.
    assert chunks[0].result.dense is None and len(chunks[0].result) == 10
    with pytest.raises(InvalidInputError, match=r"chunk\.array"):
        chunks[0].result.require_dense()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_numpy_stream_combines_a_chunked_long_text_as_embed_does(
    mode: str, make_client: Factory
) -> None:
    texts = ["short", "retrieval augmented generation " * 3000, "also short"]
    client = make_client(long_text="chunk", max_concurrency=3)
    want = np.asarray(client.embed(texts, dimension=128).require_dense(), dtype=np.float32)
    (chunk,) = numpy_stream(client, mode, texts, dimension=128)
    # The pieces are averaged from float32 rows here, from the reply's floats there.
    np.testing.assert_allclose(chunk.array, want, rtol=0, atol=1e-6)
    assert np.allclose(np.linalg.norm(chunk.array, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_numpy_stream_of_sparse_vectors_alone_is_refused_before_anything_is_sent(
    mode: str, make_client: Factory, dashscope_emulator: Emulator
) -> None:
    client = make_client()
    start = client.embed_stream if mode == "sync" else client.aembed_stream
    with pytest.raises(InvalidInputError, match="as_numpy=True holds dense vectors"):
        start(["a"], output_type="sparse", as_numpy=True)  # type: ignore[operator]
    assert dashscope_emulator.stats()["requests"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("options", "says"),
    [({"dimensoin": 64}, "dimensoin"), ({"dimension": 100}, "dimension")],
    ids=["misspelled keyword", "a dimension the model lacks"],
)
def test_a_stream_refuses_bad_options_before_reading_a_text(
    mode: str,
    options: dict[str, Any],
    says: str,
    make_client: Factory,
    dashscope_emulator: Emulator,
) -> None:
    """Options are checked once, when the stream is made (not per slice): a corpus
    generator is not touched and nothing is sent."""
    client = make_client()
    corpus = CountingCorpus(50)
    start = client.embed_stream if mode == "sync" else client.aembed_stream
    with pytest.raises(InvalidInputError, match=says):
        start(corpus, **options)  # type: ignore[operator]
    assert corpus.read == 0
    assert dashscope_emulator.stats()["requests"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_slice_of_a_stream_is_sent_with_the_streams_options(
    mode: str, make_client: Factory, dashscope_emulator: Emulator
) -> None:
    """Checked once, the options must still reach each slice's request: the query
    type and the dimension, on every one of many slices run concurrently."""
    texts = [f"stream query {i}" for i in range(95)]
    options: dict[str, Any] = {"text_type": "query", "dimension": 128}
    if mode == "sync":
        chunks = list(make_client(max_concurrency=4).embed_stream(texts, **options))
    else:

        async def run() -> list[EmbeddingChunk]:
            client = make_client(max_concurrency=4)
            return [c async for c in client.aembed_stream(texts, **options)]

        chunks = asyncio.run(run())
    streamed = [v for chunk in chunks for v in chunk.result.require_dense()]
    assert dashscope_emulator.stats()["requests"] == 10
    assert streamed == make_client().embed(texts, **options).require_dense()
    assert {len(v) for v in streamed} == {128}


def test_a_numpy_stream_hands_on_complete_the_same_array_it_yields(
    make_client: Factory,
) -> None:
    completed: dict[int, Any] = {}
    chunks = list(
        make_client(max_concurrency=3).embed_stream(
            [f"c{i}" for i in range(45)],
            as_numpy=True,
            on_complete=lambda chunk: completed.__setitem__(chunk.start, chunk.array),
        )
    )
    assert all(completed[c.start] is c.array for c in chunks)


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
