"""Self-hosted Qwen3-Embedding and Qwen3-Reranker servers: the same classes, your GPUs.

``text-embedding-v4`` is Qwen3-Embedding, and its weights are open. Point ``base_url`` at
your server's root and name its kind (``server="vllm"``); the client then speaks that
server's API and applies the open model's recipe itself:

* a query gets its task instruction written into the text, in the model's own format
  (``Instruct: {task}\\nQuery:{query}``; the web-search task when none is given), and a
  document gets none: ``text_type`` and ``instruct`` are never sent as fields;
* ``dimension`` is sent where the server takes ``dimensions``, and otherwise applied
  here: the first *k* components, L2-renormalised, which is what a server that takes
  it does;
* sparse output is refused (the open model has none).

Each server's quirks are a row of :data:`SERVERS`: adding a server is a row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from dashscope_embed.config import SERVER_KINDS, ClientSettings, ServerKind
from dashscope_embed.errors import BadResponseError, InvalidInputError
from dashscope_embed.options import RerankParams, TextParams
from dashscope_embed.protocol.base import Endpoint, register
from dashscope_embed.protocol.common import (
    ParsedBatch,
    check_dense,
    load_json,
    place_rows,
    usage_tokens,
)
from dashscope_embed.protocol.rerank import Document, ParsedScores, echo_limit, wire_document

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
"""The open model's default query task (its README's)."""

EmbedShape = Literal["openai", "tei", "ollama"]
RerankShape = Literal["cohere", "tei", "sglang"]

__all__ = ["DEFAULT_TASK", "SERVERS", "SERVER_KINDS", "Server", "format_query", "row_limit"]


@dataclass(frozen=True)
class Server:
    """How one kind of server serves embeddings and reranking.

    Attributes:
        name: The ``server=`` setting's value.
        embed_path: Where embeddings are asked for, from the server's root.
        embed_shape: The request and reply format: ``"openai"`` (``{"model", "input"}``
            → ``{"data": [{"index", "embedding"}]}``), ``"tei"`` (``{"inputs"}`` → a list
            of vectors) or ``"ollama"`` (``{"model", "input"}`` → ``{"embeddings"}``).
        takes_dimensions: Whether ``dimensions`` is sent; otherwise the client cuts the
            full vector itself.
        max_batch: Most texts one request carries.
        rerank_path: Where reranking is asked for (``None``: the server cannot rerank).
        rerank_shape: ``"cohere"`` (``{"model", "query", "documents", "top_n"}`` →
            ``{"results": [{"index", "relevance_score"}]}``), ``"tei"`` (``{"query",
            "texts"}`` → ``[{"index", "score"}]``) or ``"sglang"`` (``{"query",
            "documents", "instruct"}`` → ``[{"index", "score"}]``).
        rerank_instruct: Whether the rerank request carries an ``instruct``.
        sends_model: Whether requests name the served model.
        notes: Where the row's facts come from.
    """

    name: ServerKind
    embed_path: str
    embed_shape: EmbedShape
    takes_dimensions: bool
    max_batch: int
    rerank_path: str | None = None
    rerank_shape: RerankShape | None = None
    rerank_instruct: bool = False
    sends_model: bool = True
    notes: str = ""


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Server(
            "vllm",
            "/v1/embeddings",
            "openai",
            # Refused ("does not support matryoshka representation") unless the server was
            # started with is_matryoshka; cutting here is right either way.
            takes_dimensions=False,
            max_batch=256,
            rerank_path="/rerank",
            rerank_shape="cohere",
            notes="vllm serve <model> --runner pooling; Qwen3-Reranker needs its hf_overrides",
        ),
        Server(
            "sglang",
            "/v1/embeddings",
            "openai",
            takes_dimensions=False,  # unconfirmed: cutting here is right either way
            max_batch=256,
            rerank_path="/v1/rerank",
            rerank_shape="sglang",
            rerank_instruct=True,
            notes="python -m sglang.launch_server --is-embedding",
        ),
        Server(
            "tei",
            "/embed",
            "tei",
            takes_dimensions=False,  # not for Qwen3 (TEI #658)
            max_batch=32,  # TEI's default --max-client-batch-size
            rerank_path="/rerank",
            rerank_shape="tei",
            sends_model=False,
            notes="text-embeddings-inference; one model per server",
        ),
        Server(
            "ollama",
            "/api/embed",
            "ollama",
            takes_dimensions=True,  # since ollama PR #12242 (Sep 2025)
            max_batch=256,
            notes="no rerank endpoint",
        ),
        Server(
            "infinity",
            "/embeddings",
            "openai",
            takes_dimensions=True,
            max_batch=256,
            rerank_path="/rerank",
            rerank_shape="cohere",
        ),
    )
}


def row_limit(max_rows: int, server: str | None) -> int:
    """Most texts one request carries: the model's limit, or less if the server's is."""
    return min(max_rows, SERVERS[server].max_batch) if server in SERVERS else max_rows


def format_query(text: str, instruct: str | None) -> str:
    """A query as the open model expects it: its task instruction, then the query."""
    return f"Instruct: {instruct or DEFAULT_TASK}\nQuery:{text}"


def server_url(settings: ClientSettings, path: str) -> str:
    """``path`` on the server; a base URL that already ends in ``/v1`` is not doubled."""
    root = settings.root_url
    if root.endswith("/v1") and path.startswith("/v1/"):
        root = root[: -len("/v1")]
    return root + path


def _renormalised_prefix(vector: list[float], size: int, row: int, rid: str | None) -> list[float]:
    prefix = vector[:size]
    norm = math.sqrt(math.fsum(x * x for x in prefix))
    if norm == 0 or not math.isfinite(norm):
        raise BadResponseError(
            f"row {row}: the first {size} components have no length to normalise",
            request_id=rid,
        )
    return [x / norm for x in prefix]


ItemT = TypeVar("ItemT")
ParamsT = TypeVar("ParamsT")


class _OnServer(Endpoint[ItemT, ParamsT]):
    """A codec for one server kind: registered under its name, its URLs on the server."""

    api = "native"  # unused: url() is the server's
    path = ""
    parameters_key = None

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def protocol(self) -> str:  # type: ignore[override]
        return self.server.name


class SelfHostedTextEmbedding(_OnServer[str, TextParams]):
    """Dense embeddings from a self-hosted Qwen3-Embedding server."""

    family = "text-embedding"
    own_parameters = frozenset({"model", "input", "inputs", "dimensions", "encoding_format"})

    def url(self, settings: ClientSettings) -> str:
        return server_url(settings, self.server.embed_path)

    def rows_per_request(self, max_rows: int) -> int:
        return row_limit(max_rows, self.server.name)

    def check(self, params: TextParams) -> None:
        super().check(params)
        if params.spec.hosting != "self-hosted":
            raise InvalidInputError(
                f"{params.spec.name!r} is a DashScope model; a {self.server.name} server "
                "serves open models: name the one it serves (Qwen/Qwen3-Embedding-0.6B, -4B, "
                "-8B, or self_hosted_model('served-name', like=...))"
            )
        if params.output_type != "dense":  # a ModelSpec may claim more than the servers give
            raise InvalidInputError(
                f"output_type={params.output_type!r}: a {self.server.name} server returns "
                "dense vectors only"
            )

    def _sends_dimensions(self, params: TextParams) -> bool:
        return self.server.takes_dimensions and params.options.dimension is not None

    def _texts(self, items: Sequence[str], params: TextParams) -> list[str]:
        if params.text_type == "query":
            return [format_query(text, params.instruct) for text in items]
        return list(items)

    def body(self, items: Sequence[str], params: TextParams) -> dict[str, Any]:
        texts = self._texts(items, params)
        if self.server.embed_shape == "tei":
            return {"inputs": texts, "normalize": True, "truncate": False}
        body: dict[str, Any] = {"model": params.spec.name, "input": texts}
        if self.server.embed_shape == "openai":
            body["encoding_format"] = "float"
        else:  # ollama: a text over the context is an error, not silently cut
            body["truncate"] = False
        if self._sends_dimensions(params):
            body["dimensions"] = params.options.dimension
        return body

    def reply_limit(self, items: Sequence[str], params: TextParams) -> int:
        return 64 * 1024 + len(items) * (params.spec.max_dimension * 32 + 256)

    def parse(self, content: bytes, count: int, params: TextParams) -> ParsedBatch:
        body = load_json(content)
        request_id: str | None = None
        tokens = 0
        shape = self.server.embed_shape
        if shape == "tei":
            if not isinstance(body, list):
                raise BadResponseError(f"reply is not a list of vectors: {body!r:.80}")
            vectors = place_rows(list(enumerate(body)), count, None)
        elif not isinstance(body, dict):
            raise BadResponseError(f"reply is not a JSON object: {body!r:.80}")
        elif shape == "ollama":
            rows = body.get("embeddings")
            if not isinstance(rows, list):
                raise BadResponseError("reply has no embeddings list")
            vectors = place_rows(list(enumerate(rows)), count, None)
            evaluated = body.get("prompt_eval_count")
            tokens = evaluated if type(evaluated) is int and evaluated >= 0 else 0
        else:
            request_id = body.get("id") if isinstance(body.get("id"), str) else None
            data = body.get("data")
            if not isinstance(data, list):
                raise BadResponseError("reply has no data list", request_id=request_id)
            vectors = place_rows(
                [
                    (r.get("index"), r.get("embedding")) if isinstance(r, dict) else (None, r)
                    for r in data
                ],
                count,
                request_id,
            )
            usage = body.get("usage")
            if usage is not None:
                tokens = usage_tokens(usage, "total_tokens", "prompt_tokens", request_id=request_id)
        wanted = params.expected_dimension
        if self._sends_dimensions(params):
            dense = check_dense(vectors, wanted, request_id)
        else:
            full = check_dense(vectors, params.spec.default_dimension, request_id)
            dense = (
                full
                if wanted == params.spec.default_dimension
                else [_renormalised_prefix(v, wanted, i, request_id) for i, v in enumerate(full)]
            )
        return ParsedBatch(dense=dense, sparse=None, total_tokens=tokens, request_id=request_id)


class SelfHostedRerank(_OnServer[Document, RerankParams]):
    """Scores from a self-hosted Qwen3-Reranker: Cohere-style, TEI or SGLang."""

    family = "rerank-self-hosted"
    own_parameters = frozenset(
        {"model", "query", "documents", "texts", "top_n", "instruct", "return_documents"}
    )

    def url(self, settings: ClientSettings) -> str:
        assert self.server.rerank_path is not None
        return server_url(settings, self.server.rerank_path)

    def check(self, params: RerankParams) -> None:
        super().check(params)
        if params.instruct is not None and not self.server.rerank_instruct:
            raise InvalidInputError(
                f"a {self.server.name} server's rerank takes no instruct; "
                "servers whose rerank does: "
                + ", ".join(s.name for s in SERVERS.values() if s.rerank_instruct)
            )

    def body(self, items: Sequence[Document], params: RerankParams) -> dict[str, Any]:
        documents = [wire_document(d) for d in items]
        shape = self.server.rerank_shape
        if shape == "tei":
            return {"query": params.query, "texts": documents, "return_text": False}
        body: dict[str, Any] = {
            "model": params.spec.name,
            "query": params.query,
            "documents": documents,
            "top_n": len(items),
            "return_documents": False,
        }
        if params.instruct is not None:
            body["instruct"] = params.instruct
        return body

    def reply_limit(self, items: Sequence[Document], params: RerankParams) -> int:
        return echo_limit(items)

    def parse(self, content: bytes, count: int, params: RerankParams) -> ParsedScores:
        body = load_json(content)
        request_id = None
        if isinstance(body, dict):  # cohere: {"results": [...]}
            request_id = body.get("id") if isinstance(body.get("id"), str) else None
            results = body.get("results")
        else:
            results = body
        if not isinstance(results, list):
            raise BadResponseError("reply has no results list", request_id=request_id)
        rows = []
        for item in results:
            if not isinstance(item, dict):
                raise BadResponseError(f"result is not an object: {item!r:.80}")
            score: Any = item.get("relevance_score", item.get("score"))
            if type(score) not in (float, int) or not math.isfinite(score):
                raise BadResponseError(
                    f"result {item.get('index')!r}: score is {score!r:.40}, not a finite number",
                    request_id=request_id,
                )
            rows.append((item.get("index"), float(score)))
        return ParsedScores(place_rows(rows, count, request_id), 0, request_id)


for _server in SERVERS.values():
    register(SelfHostedTextEmbedding(_server), protocols=(_server.name,))
    if _server.rerank_path is not None:
        register(SelfHostedRerank(_server), protocols=(_server.name,))
