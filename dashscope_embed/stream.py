"""Embed a corpus of any size in input order with bounded memory.

The stream reads texts lazily, one request's worth (a *slice*) at a time, keeps at
most ``lookahead`` slices in flight (the client's concurrency gate still bounds the
requests), and yields each slice's result as soon as every slice before it is done.
Memory is bounded by ``lookahead`` slices, never by the corpus.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from dashscope_embed._extras import needs_extra
from dashscope_embed.engine import CancelScope, cancel_scope
from dashscope_embed.errors import DashScopeError, InputProblem, InvalidInputError
from dashscope_embed.types import EmbeddingResult


@dataclass(frozen=True)
class EmbeddingChunk:
    """The vectors of ``count`` consecutive inputs starting at position ``start``.

    ``array`` is the dense vectors as a float32 ``numpy`` array (rows × dimension) when
    the stream was asked for NumPy output, else ``None``.
    """

    start: int
    result: EmbeddingResult
    array: Any = None

    @property
    def count(self) -> int:
        return len(self.result)

    def __repr__(self) -> str:
        return f"EmbeddingChunk(start={self.start}, count={self.count})"

    @property
    def stop(self) -> int:
        """One past the last input position in this chunk."""
        return self.start + len(self.result)


class EmbedStreamError(DashScopeError):
    """A stream stopped: every input before ``position`` was yielded, in order.

    Attributes:
        position: the first input position that was not yielded.
        cause: what failed at ``position`` (an ``APIError`` or ``PartialEmbeddingError``
            whose positions are relative to ``position``).
        completed: chunks after ``position`` that had already finished; they are kept so a
            resumed run need not pay for them again.

    Resume by embedding ``texts[position:]`` again, minus the inputs in ``completed``.
    """

    def __init__(self, position: int, cause: BaseException, completed: list[EmbeddingChunk]):
        self.position = position
        self.cause = cause
        self.completed = completed
        super().__init__(
            f"stream stopped at input {position} (all earlier inputs were yielded; "
            f"{sum(c.count for c in completed)} later inputs finished and are attached): {cause}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.position, self.cause, self.completed))


def _shift(error: InvalidInputError, offset: int) -> InvalidInputError:
    """The same problems with positions in the caller's numbering."""
    return InvalidInputError(
        [
            InputProblem(None if p.index is None else p.index + offset, p.reason)
            for p in error.problems
        ]
    )


def _slices(texts: Iterable[str], size: int) -> Iterator[tuple[int, list[str]]]:
    iterator = iter(texts)
    start = 0
    while True:
        batch = list(itertools.islice(iterator, size))
        if not batch:
            return
        yield start, batch
        start += len(batch)


@dataclass
class _Pending:
    start: int
    future: Future[EmbeddingChunk]


OnComplete = Callable[[EmbeddingChunk], None]
"""Called with each slice's chunk as soon as its request finishes, in completion order."""


def _window(lookahead: int | Callable[[], int]) -> Callable[[], int]:
    return lookahead if callable(lookahead) else (lambda: lookahead)


MAX_STREAM_WORKERS = 512


def stream_sync(
    texts: Iterable[str],
    embed: Callable[[list[str]], EmbeddingResult],
    *,
    slice_size: int,
    lookahead: int | Callable[[], int],
    as_numpy: bool = False,
    on_complete: OnComplete | None = None,
) -> Iterator[EmbeddingChunk]:
    """Ordered pipeline of ``embed`` calls over consecutive slices of ``texts``.

    With ``as_numpy`` the results' dense rows are float32 arrays (see
    :func:`array_chunk`)."""
    slices = _slices(texts, slice_size)
    pending: deque[_Pending] = deque()
    stopped = CancelScope()

    def run(start: int, batch: list[str]) -> EmbeddingChunk:
        with cancel_scope(stopped):
            result = embed(batch)
        chunk = array_chunk(start, result) if as_numpy else EmbeddingChunk(start, result)
        if on_complete is not None:
            on_complete(chunk)
        return chunk

    window = _window(lookahead)
    # Threads start as slices are submitted: as many as the window holds at its widest.
    with ThreadPoolExecutor(
        max_workers=MAX_STREAM_WORKERS, thread_name_prefix="dashscope-stream"
    ) as pool:

        def top_up() -> None:
            while len(pending) < window():
                nxt = next(slices, None)
                if nxt is None:
                    return
                start, batch = nxt
                pending.append(_Pending(start, pool.submit(run, start, batch)))

        try:
            top_up()
            while pending:
                head = pending.popleft()
                try:
                    chunk = head.future.result()
                except InvalidInputError as exc:
                    _drain(pending)
                    raise _shift(exc, head.start) from None
                except Exception as exc:
                    completed = _drain(pending)
                    raise EmbedStreamError(head.start, exc, completed) from exc
                yield chunk
                top_up()
        finally:
            # The consumer stopped (Ctrl-C, an error, or it broke off): requests already
            # on the wire finish (their on_complete still runs); the others, queued in
            # the pool or already in a call waiting for a slot, are not sent.
            stopped.cancel()
            for item in pending:
                item.future.cancel()


def _drain(pending: deque[_Pending]) -> list[EmbeddingChunk]:
    """Wait for in-flight slices after a failure; keep the ones that finished."""
    completed = []
    for item in pending:
        try:
            completed.append(item.future.result())
        except Exception:  # noqa: S112 - a later failure adds nothing to the first one
            continue
    pending.clear()
    return completed


@dataclass
class _AsyncPending:
    start: int
    task: asyncio.Task[EmbeddingChunk]


async def stream_async(
    texts: Iterable[str] | AsyncIterable[str],
    embed: Callable[[list[str]], Awaitable[EmbeddingResult]],
    *,
    slice_size: int,
    lookahead: int | Callable[[], int],
    as_numpy: bool = False,
    on_complete: OnComplete | None = None,
) -> AsyncIterator[EmbeddingChunk]:
    """Async twin of :func:`stream_sync`; ``texts`` may be an async iterable."""
    source = _aslices(texts, slice_size)
    pending: deque[_AsyncPending] = deque()
    exhausted = False

    async def run(start: int, batch: list[str]) -> EmbeddingChunk:
        result = await embed(batch)
        chunk = array_chunk(start, result) if as_numpy else EmbeddingChunk(start, result)
        if on_complete is not None:
            on_complete(chunk)
        return chunk

    window = _window(lookahead)

    async def top_up() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window():
            try:
                start, batch = await source.__anext__()
            except StopAsyncIteration:
                exhausted = True
                return
            pending.append(_AsyncPending(start, asyncio.ensure_future(run(start, batch))))

    try:
        await top_up()
        while pending:
            head = pending.popleft()
            try:
                chunk = await head.task
            except InvalidInputError as exc:
                await _adrain(pending)
                raise _shift(exc, head.start) from None
            except Exception as exc:
                completed = await _adrain(pending)
                raise EmbedStreamError(head.start, exc, completed) from exc
            yield chunk
            await top_up()
    finally:
        for item in pending:  # the consumer stopped early: do not leave work running
            item.task.cancel()


async def _adrain(pending: deque[_AsyncPending]) -> list[EmbeddingChunk]:
    completed = []
    for item in pending:
        try:
            completed.append(await item.task)
        except Exception:  # noqa: S112 - a later failure adds nothing to the first one
            continue
    pending.clear()
    return completed


async def _aslices(
    texts: Iterable[str] | AsyncIterable[str], size: int
) -> AsyncIterator[tuple[int, list[str]]]:
    if not isinstance(texts, AsyncIterable):
        for item in _slices(texts, size):
            yield item
        return
    start = 0
    batch: list[str] = []
    async for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield start, batch
            start += size
            batch = []
    if batch:
        yield start, batch


def check_numpy_output(wants_dense: bool) -> None:
    """Before anything is read or sent: ``as_numpy=True`` needs dense vectors to hold,
    and numpy (:class:`MissingExtraError` names the extra)."""
    if not wants_dense:
        raise InvalidInputError(
            "as_numpy=True holds dense vectors, and output_type='sparse' asks for none: use "
            "output_type='dense&sparse', or as_numpy=False for sparse vectors alone"
        )
    with needs_extra("as_numpy=True", "bulk"):
        import numpy  # noqa: F401


def array_chunk(start: int, result: EmbeddingResult) -> EmbeddingChunk:
    """A chunk whose dense vectors are one float32 array, from a result whose dense rows
    are float32 arrays already (the client parsed them so); the result keeps no rows."""
    import numpy as np

    assert result.dense is not None  # check_numpy_output refused sparse-only output
    array = np.stack(result.dense).astype(np.float32, copy=False)
    return EmbeddingChunk(start, replace(result, dense=None, dense_in_chunk_array=True), array)
