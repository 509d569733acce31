"""The connection pool's request assignment, made linear: the same decisions as
httpcore's, in the same order, on any pool state (httpcore's own method is the oracle)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import httpcore
import pytest

from dashscope_embed import transport


@dataclass(eq=False)
class FakeConnection:
    name: str
    origin: str
    closed: bool = False
    expired: bool = False
    idle: bool = False
    available: bool = False

    def is_closed(self) -> bool:
        return self.closed

    def has_expired(self) -> bool:
        return self.expired

    def is_idle(self) -> bool:
        return self.idle

    def is_available(self) -> bool:
        return self.available

    def can_handle_request(self, origin: str) -> bool:
        return origin == self.origin


@dataclass(eq=False)
class FakeUrl:
    origin: str


@dataclass(eq=False)
class FakeRequest:
    url: FakeUrl


@dataclass(eq=False)
class FakePoolRequest:
    request: FakeRequest
    queued: bool
    assigned: str | None = None

    def is_queued(self) -> bool:
        return self.queued and self.assigned is None

    def assign_to_connection(self, connection: FakeConnection) -> None:
        self.assigned = connection.name


@dataclass
class FakePool:
    _connections: list[FakeConnection]
    _requests: list[FakePoolRequest]
    _max_connections: int
    _max_keepalive_connections: int
    created: list[str] = field(default_factory=list)

    def create_connection(self, origin: str) -> FakeConnection:
        connection = FakeConnection(f"new-{len(self.created)}", origin)
        self.created.append(connection.name)
        return connection


def random_pool(rng: random.Random) -> FakePool:
    origins = ["https://a", "https://b"]
    connections = [
        FakeConnection(
            f"c{i}",
            rng.choice(origins),
            closed=rng.random() < 0.1,
            expired=rng.random() < 0.1,
            idle=rng.random() < 0.5,
            available=rng.random() < 0.4,
        )
        for i in range(rng.randint(0, 12))
    ]
    requests = [
        FakePoolRequest(FakeRequest(FakeUrl(rng.choice(origins))), queued=rng.random() < 0.7)
        for _ in range(rng.randint(0, 10))
    ]
    maximum = rng.randint(1, 14)
    return FakePool(connections, requests, maximum, rng.randint(0, maximum))


def outcome(pool: FakePool, closing: list[Any]) -> Any:
    return (
        [c.name for c in pool._connections],
        [c.name for c in closing],
        [r.assigned for r in pool._requests],
        pool.created,
    )


@pytest.mark.parametrize(
    "stock", [httpcore.ConnectionPool, httpcore.AsyncConnectionPool], ids=["sync", "async"]
)
def test_the_linear_assignment_decides_as_httpcore_does(stock: Any) -> None:
    if httpcore.__version__ not in transport._LINEAR_POOL_VERSIONS:
        pytest.skip(f"httpcore {httpcore.__version__}: the stock pool is used")
    for seed in range(2000):
        theirs, ours = random_pool(random.Random(seed)), random_pool(random.Random(seed))
        expected = outcome(theirs, stock._assign_requests_to_connections(theirs))
        assert outcome(ours, transport._assign_linearly(ours)) == expected, seed


def test_only_the_pools_this_package_made_are_swapped() -> None:
    plain = httpcore.ConnectionPool()
    proxy = httpcore.HTTPProxy(proxy_url="http://127.0.0.1:3128")
    transport._use_linear_pool(plain)
    transport._use_linear_pool(proxy)
    swapped = httpcore.__version__ in transport._LINEAR_POOL_VERSIONS
    assert (type(plain) is transport._LinearPool) is swapped
    assert type(proxy) is httpcore.HTTPProxy  # its own connection making is kept


def test_the_clients_this_package_makes_use_it_and_a_proxy_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if httpcore.__version__ not in transport._LINEAR_POOL_VERSIONS:
        pytest.skip(f"httpcore {httpcore.__version__}: the stock pool is used")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    from dashscope_embed import DashScopeClient

    client = DashScopeClient(api_key="sk-pool-test", base_url="https://example.com")
    http = client._transport.client
    assert type(http._transport._pool) is transport._LinearPool
    proxies = [mount._pool for mount in http._mounts.values() if mount is not None]
    assert proxies and all(type(pool) is httpcore.HTTPProxy for pool in proxies)
