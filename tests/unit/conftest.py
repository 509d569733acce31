"""Unit tests run with the network off: only pure code and in-memory HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_socket


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    # Unix sockets stay allowed: asyncio's event loop uses a socketpair internally.
    pytest_socket.disable_socket(allow_unix_socket=True)
    yield
    pytest_socket.enable_socket()


@pytest.fixture(autouse=True)
def _offline_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution without a network: localhost is loopback, other names fail."""

    def resolve(host: str) -> set[str]:
        if host == "localhost":
            return {"127.0.0.1", "::1"}
        raise OSError(f"{host}: name resolution is off in unit tests")

    monkeypatch.setattr("dashscope_embed.config.resolve_host", resolve)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DASHSCOPE_API_KEY",
        "DASHSCOPE_BASE_URL",
        "DASHSCOPE_HTTP_BASE_URL",
        "DASHSCOPE_REGION",
        "DASHSCOPE_API_REGION",
        "DASHSCOPE_WORKSPACE",
        "DASHSCOPE_WORKSPACE_ID",
    ):
        monkeypatch.delenv(name, raising=False)
