"""What an endpoint codec is, and the registry that finds one by family and protocol.

An endpoint codec owns everything about one endpoint that is not I/O: its URL, the
checks that must pass before anything is sent, the request body, the reply limit and
the reply parsing. The client's call path, the engine and the transport know nothing
about any particular endpoint: a new endpoint (or protocol) is a codec registered here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, TypeVar

from dashscope_embed.config import Api, ClientSettings
from dashscope_embed.errors import InvalidInputError
from dashscope_embed.protocol.arrays import DenseReplyLayout, fast_dense_batch, float32_matrix

Params = TypeVar("Params")
Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, ready for the transport: everything but the key."""

    method: str
    url: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reply_limit: int = 64 * 1024 * 1024
    # Multipart uploads (the Batch API's files).
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    # With the key, to the service's origin; without it (a signed download URL elsewhere).
    authenticated: bool = True
    # Whether ``timeout`` bounds the whole exchange (not for uploads and downloads of
    # files, whose size decides their time).
    whole_timeout: bool = True


class Endpoint(Generic[Item, Params]):
    """One endpoint's codec: pure, no I/O. Subclasses set the class attributes and
    implement :meth:`body` and :meth:`parse`."""

    family: ClassVar[str]
    protocol: ClassVar[str]
    api: ClassVar[Api]
    path: ClassVar[str]
    # Where extra_parameters go: into this object of the body, or at its top level.
    parameters_key: ClassVar[str | None] = "parameters"
    # What the codec itself writes there: extra_parameters may not override it (the
    # reply would then not be what the parser checks it against).
    own_parameters: ClassVar[frozenset[str]] = frozenset()
    # Where a dense reply keeps its rows, for the float32 fast path (None: no fast path).
    dense_layout: ClassVar[DenseReplyLayout | None] = None

    def url(self, settings: ClientSettings) -> str:
        return settings.api_base(self.api) + self.path

    def rows_per_request(self, max_rows: int) -> int:
        """Most items one request carries, given the model's limit (a server may take
        fewer)."""
        return max_rows

    def check(self, params: Params) -> None:
        """Raise :class:`InvalidInputError` if this endpoint cannot carry ``params``."""
        extra = getattr(params, "extra_parameters", None) or {}
        clashes = sorted(set(extra) & self.own_parameters)
        if clashes:
            raise InvalidInputError(
                f"extra_parameters may not set {', '.join(map(repr, clashes))}: this package "
                "sends them itself from their own options"
            )
        problem = json_problem(extra, "extra_parameters")
        if problem is not None:
            raise InvalidInputError(problem)

    def body(self, items: Sequence[Item], params: Params) -> dict[str, Any]:
        raise NotImplementedError

    def headers(self, items: Sequence[Item], params: Params) -> dict[str, str]:
        return {}

    def reply_limit(self, items: Sequence[Item], params: Params) -> int:
        """The most bytes a correct reply can have; a longer one is not read."""
        raise NotImplementedError

    def parse(self, content: bytes, count: int, params: Params) -> Any:
        """The reply's results for ``count`` items, checked complete (embedding
        endpoints return a :class:`ParsedBatch`)."""
        raise NotImplementedError

    def parse_float32(self, content: bytes, count: int, params: Params) -> Any:
        """:meth:`parse`, with the dense vectors as one float32 matrix (for callers who
        asked for NumPy arrays; embedding endpoints only). A dense-only reply of an
        endpoint with a :attr:`dense_layout` is read by the fast path when it can be."""
        if self.dense_layout is not None and getattr(params, "output_type", None) == "dense":
            fast = fast_dense_batch(
                content,
                count,
                params.expected_dimension,  # type: ignore[attr-defined]
                self.dense_layout,
            )
            if fast is not None:
                return fast
        parsed = self.parse(content, count, params)
        if parsed.dense is None:
            return parsed
        return replace(parsed, dense=float32_matrix(parsed.dense, parsed.request_id))

    def request(
        self, settings: ClientSettings, items: Sequence[Item], params: Params
    ) -> HttpRequest:
        """The request for one batch: body, ``extra_parameters`` merged last."""
        body = self.body(items, params)
        extra = getattr(params, "extra_parameters", None)
        if extra:
            if self.parameters_key is None:
                body.update(extra)
            else:
                body[self.parameters_key] = {**body.get(self.parameters_key, {}), **extra}
        return HttpRequest(
            "POST",
            self.url(settings),
            json=body,
            headers=self.headers(items, params),
            reply_limit=self.reply_limit(items, params),
        )


_REGISTRY: dict[tuple[str, str], Endpoint[Any, Any]] = {}


def register(
    endpoint: Endpoint[Any, Any], *, protocols: Sequence[str] | None = None
) -> Endpoint[Any, Any]:
    """Make ``endpoint`` the codec for its family and protocol (or each of
    ``protocols``: an endpoint a model always uses, whatever the client's protocol)."""
    for protocol in protocols or (endpoint.protocol,):
        _REGISTRY[(endpoint.family, protocol)] = endpoint
    return endpoint


def endpoint_for(family: str, protocol: str, model: str = "") -> Endpoint[Any, Any]:
    """The codec serving ``family`` over ``protocol``, or a clear error naming both."""
    endpoint = _REGISTRY.get((family, protocol))
    if endpoint is None:
        served = sorted(p for f, p in _REGISTRY if f == family)
        what = f"model {model!r} ({family})" if model else family
        raise InvalidInputError(
            f"{what} is not served over protocol={protocol!r}"
            + (f"; use protocol={served[0]!r}" if served else "")
        )
    return endpoint


def json_problem(value: Any, where: str) -> str | None:
    """What in ``value`` JSON cannot carry (named by its path), or ``None``.

    Checked before sending: a NaN or a set would otherwise surface as the service's
    parse error (or, with some encoders, be sent as ``null``)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot carry"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if (problem := json_problem(item, f"{where}[{index}]")) is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}; JSON object keys are strings"
            if (problem := json_problem(item, f"{where}[{key!r}]")) is not None:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, which JSON cannot carry"
