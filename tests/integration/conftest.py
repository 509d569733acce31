"""Integration tests: real HTTP over loopback against the bundled emulator.

The ``dashscope_emulator`` fixture comes from the package's own pytest plugin, the same
one users get, so these tests exercise it too.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from dashscope_embed import DashScopeClient, RetryPolicy
from dashscope_embed.emulator import Emulator
from dashscope_embed.emulator.server import free_port

FAST_RETRY = RetryPolicy(
    max_retries=6, initial_delay=0.01, max_delay=0.05, max_retry_after=5, total_timeout=30
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_BASE_URL",
        "DASHSCOPE_HTTP_BASE_URL",
        "DASHSCOPE_REGION",
        "DASHSCOPE_WORKSPACE",
        "DASHSCOPE_WORKSPACE_ID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_client(dashscope_emulator: Emulator) -> Callable[..., DashScopeClient]:
    """Build a client pointed at the emulator; keyword arguments override defaults."""

    def build(**kwargs: Any) -> DashScopeClient:
        kwargs.setdefault("api_key", dashscope_emulator.api_key)
        kwargs.setdefault("base_url", dashscope_emulator.base_url)
        kwargs.setdefault("retry", FAST_RETRY)
        return DashScopeClient(**kwargs)

    return build


@contextlib.contextmanager
def emulator_process(*flags: str) -> Iterator[str]:
    """The emulator in a process of its own (``dashscope-emulator`` flags); yields its URL.

    For tests whose client side must run in a fresh, single-threaded process, where an
    in-process emulator thread would not be representative (forks)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dashscope_embed.emulator", "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/emulator/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the emulator process did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
