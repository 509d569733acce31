"""Result objects returned by the client: dense and sparse vectors, usage, request ids."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from dashscope_embed.errors import InvalidInputError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SparseEmbedding:
    """A sparse (lexical) vector: parallel lists of vocabulary ids, weights and tokens.

    ``tokens`` holds the service's readable token for each id (handy for debugging why a
    document matched); it may be empty strings when the protocol does not carry them.
    """

    indices: list[int]
    values: list[float]
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.indices) != len(self.values):
            raise ValueError(
                f"SparseEmbedding: {len(self.indices)} indices but {len(self.values)} values"
            )
        if self.tokens and len(self.tokens) != len(self.indices):
            raise ValueError(
                f"SparseEmbedding: {len(self.indices)} indices but {len(self.tokens)} tokens"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        labels = self.tokens or [str(i) for i in self.indices]
        shown = ", ".join(
            f"{label}={value:.3g}" for label, value in zip(labels[:5], self.values[:5], strict=True)
        )
        more = f", ... {len(self) - 5} more" if len(self) > 5 else ""
        return f"SparseEmbedding({shown}{more})"

    def as_dict(self) -> dict[int, float]:
        """``{vocabulary id: weight}``; weights of a repeated id are added up."""
        out: dict[int, float] = {}
        for index, value in zip(self.indices, self.values, strict=True):
            out[index] = out.get(index, 0.0) + value
        return out

    def top_tokens(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` heaviest tokens with their weights, heaviest first."""
        pairs = sorted(
            zip(self.tokens or [str(i) for i in self.indices], self.values, strict=True),
            key=lambda pair: pair[1],
            reverse=True,
        )
        return pairs[:k]


@dataclass(frozen=True, slots=True)
class Usage:
    """What the service billed: input tokens, summed over every request."""

    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.total_tokens + other.total_tokens)


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """Every input's vectors, in input order, plus usage and the service's request ids.

    Attributes:
        dense: one dense vector per input, or ``None`` when ``output_type="sparse"``.
        sparse: one sparse vector per input, or ``None`` unless sparse output was asked for.
        usage: billed tokens over all requests that produced this result.
        request_ids: one per request sent, for support tickets.
        model: the model that produced the vectors.
        dimension: the dense vector length (``None`` with sparse-only output).
        dense_in_chunk_array: the result of a stream chunk asked for NumPy output, whose
            dense vectors are in the chunk's float32 ``array`` (``dense`` is ``None``).
    """

    dense: list[list[float]] | None
    sparse: list[SparseEmbedding] | None
    usage: Usage
    request_ids: tuple[str, ...]
    model: str
    dimension: int | None
    count: int
    dense_in_chunk_array: bool = False

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        # Compact on purpose: results hold millions of floats, and Python 3.11's
        # asyncio.run reprs the main task's result when it restores the SIGINT handler.
        return (
            f"EmbeddingResult(count={self.count}, model={self.model!r}, "
            f"dimension={self.dimension}, dense={self.dense is not None}, "
            f"sparse={self.sparse is not None}, total_tokens={self.usage.total_tokens}, "
            f"requests={len(self.request_ids)})"
        )

    def __iter__(self) -> Iterator[list[float]]:
        """Iterate over the dense vectors."""
        return iter(self.require_dense())

    def require_dense(self) -> list[list[float]]:
        """The dense vectors; raises if the call asked for sparse output only."""
        if self.dense_in_chunk_array:
            raise InvalidInputError(
                "this stream was asked for NumPy output (as_numpy=True): its dense vectors "
                "are in chunk.array, a float32 array with one row per input"
            )
        if self.dense is None:
            raise InvalidInputError(
                "this result has no dense vectors: it was requested with output_type='sparse'; "
                "use output_type='dense' or 'dense&sparse'"
            )
        return self.dense

    def require_sparse(self) -> list[SparseEmbedding]:
        """The sparse vectors; raises if the call did not ask for them."""
        if self.sparse is None:
            raise InvalidInputError(
                "this result has no sparse vectors: request output_type='sparse' or "
                "'dense&sparse' (text-embedding-v3/v4 and qwen3.7 models)"
            )
        return self.sparse


@dataclass(slots=True)
class PartialResult:
    """The finished part of a call that failed in places (see ``PartialEmbeddingError``).

    ``dense[i]`` / ``sparse[i]`` is input ``i``'s vector, or ``None`` where it failed.
    (In a stream asked for NumPy output, the dense vectors are float32 array rows.)
    """

    dense: list[list[float] | None] | None
    sparse: list[SparseEmbedding | None] | None
    usage: Usage
    request_ids: tuple[str, ...]
    model: str
    dimension: int | None
    missing_positions: list[int]

    def __len__(self) -> int:
        column = self.dense if self.dense is not None else self.sparse
        return len(column) if column is not None else 0

    def __repr__(self) -> str:
        return (
            f"PartialResult(count={len(self)}, missing={len(self.missing_positions)}, "
            f"model={self.model!r}, dimension={self.dimension})"
        )

    def complete_with(self, rest: EmbeddingResult) -> EmbeddingResult:
        """Fill the missing positions with ``rest`` (the result of embedding exactly the
        missing texts, in order) and return the whole result."""
        if len(rest) != len(self.missing_positions):
            raise InvalidInputError(
                f"complete_with needs one result per missing input: {len(self.missing_positions)} "
                f"missing, {len(rest)} given"
            )
        dense = _fill(self.dense, rest.dense, self.missing_positions, "dense")
        sparse = _fill(self.sparse, rest.sparse, self.missing_positions, "sparse")
        return EmbeddingResult(
            dense=dense,
            sparse=sparse,
            usage=self.usage + rest.usage,
            request_ids=self.request_ids + rest.request_ids,
            model=self.model,
            dimension=self.dimension,
            count=len(self),
        )


def _fill(
    column: list[T | None] | None,
    patch: Sequence[T] | None,
    positions: Sequence[int],
    name: str,
) -> list[T] | None:
    if column is None:
        return None
    if patch is None:
        raise InvalidInputError(
            f"complete_with: the partial result has {name} vectors, rest has none"
        )
    filled = list(column)
    for position, value in zip(positions, patch, strict=True):
        filled[position] = value
    holes = [i for i, v in enumerate(filled) if v is None]
    if holes:
        raise InvalidInputError(f"complete_with: positions {holes[:10]} are still missing")
    return filled  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class RerankHit:
    """One document's place in a ranking.

    Attributes:
        index: its position in the caller's list of documents.
        relevance_score: the model's score for it against the query (higher: more
            relevant); scores from one model and one query compare across requests.
        document: the document as the caller gave it (``None`` only when the call
            passed ``return_documents=False``).
    """

    index: int
    relevance_score: float
    document: object


@dataclass(frozen=True, slots=True)
class RerankResult:
    """Documents in descending order of relevance (the ``top_n`` first, if one was set).

    Every document is ranked (or the call raised): a list longer than one request can
    carry was split, scored concurrently and merged into this one ranking.
    """

    hits: list[RerankHit]
    usage: Usage
    request_ids: tuple[str, ...]
    model: str
    count: int  # documents ranked, before top_n

    def __iter__(self) -> Iterator[RerankHit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, position: int) -> RerankHit:
        return self.hits[position]

    @property
    def indices(self) -> list[int]:
        """The documents' positions in the caller's list, most relevant first."""
        return [hit.index for hit in self.hits]

    @property
    def scores(self) -> list[float]:
        return [hit.relevance_score for hit in self.hits]

    def __repr__(self) -> str:
        top = ", ".join(f"{h.index}:{h.relevance_score:.3f}" for h in self.hits[:5])
        more = ", ..." if len(self.hits) > 5 else ""
        return (
            f"RerankResult(model={self.model!r}, ranked={self.count}, returned={len(self)}, "
            f"top=[{top}{more}], total_tokens={self.usage.total_tokens})"
        )
