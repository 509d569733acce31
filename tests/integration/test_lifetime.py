"""Framework objects own connections: ``close()`` / ``with`` / ``async with`` release
them, the object stays usable afterwards, and nothing is left for the garbage collector
to complain about (``ResourceWarning: unclosed <socket>``)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from dashscope_embed.emulator import Emulator
from langchain_ext import DashScopeEmbeddings
from langchain_ext import DashScopeRerank as LangChainRerank
from llama_index_ext import DashScopeEmbedding, DashScopeRerank


def settings(emulator: Emulator) -> dict[str, Any]:
    return {"api_key": emulator.api_key, "base_url": emulator.base_url}


FACTORIES: dict[str, tuple[Callable[..., Any], Callable[[Any], Any], Callable[[Any], Any]]] = {
    # name: (class, one sync call, one async call)
    "llama_index embedding": (
        DashScopeEmbedding,
        lambda m: m.get_text_embedding("hello"),
        lambda m: m.aget_text_embedding("hello"),
    ),
    "llama_index rerank": (
        DashScopeRerank,
        lambda m: m.rank("q", ["a", "b"]),
        lambda m: m.arank("q", ["a", "b"]),
    ),
    "langchain embeddings": (
        DashScopeEmbeddings,
        lambda m: m.embed_query("hello"),
        lambda m: m.aembed_query("hello"),
    ),
    "langchain rerank": (
        LangChainRerank,
        lambda m: m.rerank(["a", "b"], "q"),
        lambda m: m.arank("q", ["a", "b"]),
    ),
}


def resource_warnings(action: Callable[[], None]) -> list[str]:
    """ResourceWarnings from what ``action`` leaves behind (earlier tests' garbage is
    collected first, so it is not counted here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        action()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("name", FACTORIES)
def test_with_closes_and_the_object_stays_usable(name: str, dashscope_emulator: Emulator) -> None:
    cls, call, _ = FACTORIES[name]

    def use() -> None:
        with cls(**settings(dashscope_emulator)) as model:
            call(model)
        call(model)  # reconnects after close
        model.close()

    assert resource_warnings(use) == []
    assert dashscope_emulator.stats()["requests"] == 2


@pytest.mark.parametrize("name", FACTORIES)
def test_async_with_closes_the_loops_pool(name: str, dashscope_emulator: Emulator) -> None:
    cls, _, acall = FACTORIES[name]

    async def use() -> None:
        async with cls(**settings(dashscope_emulator)) as model:
            await acall(model)

    assert resource_warnings(lambda: asyncio.run(use())) == []
    assert dashscope_emulator.stats()["requests"] == 1


def test_a_forked_child_never_closes_its_parents_pool() -> None:
    """The pool of a collected client is closed only in the process that made it: in a
    forked child the sockets are the parent's, and closing a TLS one sends close_notify
    into the parent's connection."""
    import os

    import httpx

    from dashscope_embed.transport import _close_in_process

    pool = httpx.Client()
    _close_in_process(pool, os.getpid() + 1)  # as a child sees its parent's pool
    assert not pool.is_closed
    _close_in_process(pool, os.getpid())
    assert pool.is_closed
