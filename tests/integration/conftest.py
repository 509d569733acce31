"""Integration tests: real HTTP over loopback against the bundled emulator.

The ``dashscope_emulator`` fixture comes from the package's own pytest plugin, the same
one users get, so these tests exercise it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dashscope_embed import DashScopeClient, RetryPolicy
from dashscope_embed.emulator import Emulator

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
