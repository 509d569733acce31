"""Plan a call before anything is sent, and put the replies back together after.

Pure functions: validation (texts and parameters), de-duplication, splitting into
requests within the model's row limit, and reassembly in input order with a check that
every input got exactly one vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from dashscope_embed.errors import InputProblem, InvalidInputError
from dashscope_embed.models import ModelSpec
from dashscope_embed.protocol.common import ParsedBatch
from dashscope_embed.tokens import LongTextPlan, combine_dense, combine_sparse
from dashscope_embed.types import EmbeddingResult, PartialResult, SparseEmbedding, Usage

if TYPE_CHECKING:
    from numpy.typing import NDArray

Item = TypeVar("Item")


def text_problem(text: Any) -> str | None:
    """Why the service cannot embed ``text``, or ``None`` if it can."""
    if not isinstance(text, str):
        return f"expected a str, got {type(text).__name__}"
    if not text.strip():
        return "empty text" if not text else "text is only whitespace"
    if "\x00" in text:
        return f"contains a NUL character at offset {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"cannot be encoded as UTF-8 (lone surrogate at offset {exc.start})"
    return None


def validate_texts(texts: Any, subject: str = "texts") -> list[str]:
    """Return ``texts`` as a list, or raise naming every bad position and why.

    Any ordered collection or iterable of strings is taken. A mapping is refused (its
    keys would be embedded, not its texts), and so is a set (it has no order, so results
    could not be matched to inputs). ``subject`` is the list's name in messages.
    """
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(
            f"{subject} must be a list of strings, got a single {type(texts).__name__}; "
            "wrap it in a list: [text]"
        )
    if isinstance(texts, Mapping):
        raise InvalidInputError(
            f"{subject} must be a list of strings, got a {type(texts).__name__}, whose keys "
            "would be used instead of its values: pass list(d.values()) (and keep list(d) "
            "to match the results back to their keys)"
        )
    if isinstance(texts, AbstractSet):
        raise InvalidInputError(
            f"{subject} must be a list of strings, got a {type(texts).__name__}, which has no "
            "order, so results could not be matched to inputs: pass a list (e.g. sorted(s))"
        )
    if not isinstance(texts, Sequence):
        try:
            texts = list(texts)
        except TypeError:
            raise InvalidInputError(
                f"{subject} must be a list of strings, got {type(texts).__name__}"
            ) from None
    problems = [
        InputProblem(i, reason, subject)
        for i, text in enumerate(texts)
        if (reason := text_problem(text)) is not None
    ]
    if problems:
        raise InvalidInputError(problems)
    return list(texts)


class ResultParams(Protocol):
    """What putting replies back together needs to know about a call."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def expected_dimension(self) -> int: ...

    @property
    def wants_dense(self) -> bool: ...

    @property
    def wants_sparse(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Plan(Generic[Item]):
    """How a call's inputs map onto requests.

    ``unique`` holds each distinct input (a text, a multimodal content) once;
    ``slot_of[i]`` is input ``i``'s place in ``unique``; ``batches`` are slices of
    ``unique``, each within the row limit.
    """

    unique: list[Item]
    slot_of: list[int]
    batches: list[range]

    @property
    def input_count(self) -> int:
        return len(self.slot_of)

    def batch_items(self, batch: range) -> list[Item]:
        return self.unique[batch.start : batch.stop]

    def input_positions(self, batches: Sequence[range]) -> list[int]:
        """The input positions whose text is in any of ``batches``, in order."""
        slots = {slot for batch in batches for slot in batch}
        return [i for i, slot in enumerate(self.slot_of) if slot in slots]


def plan(items: Sequence[Item], rows_per_request: int) -> Plan[Item]:
    """Split ``items`` into requests of at most ``rows_per_request`` distinct items; an
    item that appears more than once is sent once."""
    if rows_per_request < 1:
        raise InvalidInputError(f"rows per request must be >= 1, got {rows_per_request}")
    index: dict[Item, int] = {}
    slot_of = [index.setdefault(item, len(index)) for item in items]
    unique = list(index)
    batches = [
        range(start, min(start + rows_per_request, len(unique)))
        for start in range(0, len(unique), rows_per_request)
    ]
    return Plan(unique=unique, slot_of=slot_of, batches=batches)


def plan_with_solos(
    items: Sequence[Item], rows_per_request: int, alone: Callable[[Item], bool]
) -> Plan[Item]:
    """Like :func:`plan`, but an item for which ``alone`` is true gets a request of its
    own (a fused item whose parts fill one request), after the others."""
    shared = plan([item for item in items if not alone(item)], rows_per_request)
    index = {item: slot for slot, item in enumerate(shared.unique)}
    for item in items:
        if alone(item):
            index.setdefault(item, len(index))
    unique = list(index)
    solos = range(len(shared.unique), len(unique))
    return Plan(
        unique=unique,
        slot_of=[index[item] for item in items],
        batches=shared.batches + [range(slot, slot + 1) for slot in solos],
    )


def _fan_out(values: list[Any], slot_of: Sequence[int]) -> list[Any]:
    # A text that appeared twice gets its own copy, so mutating one vector in place never
    # changes another input's vector (a list, or a float32 row of a reply's matrix).
    used = bytearray(len(values))
    out = []
    for slot in slot_of:
        value = values[slot]
        if used[slot] and value is not None and not isinstance(value, SparseEmbedding):
            value = value.copy()
        used[slot] = 1
        out.append(value)
    return out


def assemble(
    the_plan: Plan[Any],
    replies: Sequence[ParsedBatch | None],
    params: ResultParams,
) -> EmbeddingResult | PartialResult:
    """Put every reply's rows back at their input positions.

    Returns an :class:`EmbeddingResult` when every batch has a reply, otherwise a
    :class:`PartialResult` with ``None`` at the positions of failed batches.
    """
    slots = len(the_plan.unique)
    dense: list[Any] | None = [None] * slots if params.wants_dense else None
    sparse: list[Any] | None = [None] * slots if params.wants_sparse else None
    tokens = 0
    request_ids: list[str] = []
    failed: list[range] = []
    for batch, reply in zip(the_plan.batches, replies, strict=True):
        if reply is None:
            failed.append(batch)
            continue
        tokens += reply.total_tokens
        if reply.request_id:
            request_ids.append(reply.request_id)
        _put(dense, reply.dense, batch, "dense")
        _put(sparse, reply.sparse, batch, "sparse")
    dimension = params.expected_dimension if params.wants_dense else None
    dense_out = _fan_out(dense, the_plan.slot_of) if dense is not None else None
    sparse_out = _fan_out(sparse, the_plan.slot_of) if sparse is not None else None
    if failed:
        return PartialResult(
            dense=dense_out,
            sparse=sparse_out,
            usage=Usage(tokens),
            request_ids=tuple(request_ids),
            model=params.spec.name,
            dimension=dimension,
            missing_positions=the_plan.input_positions(failed),
        )
    return EmbeddingResult(
        dense=dense_out,
        sparse=sparse_out,
        usage=Usage(tokens),
        request_ids=tuple(request_ids),
        model=params.spec.name,
        dimension=dimension,
        count=the_plan.input_count,
    )


def _put(
    column: list[Any] | None,
    rows: Sequence[Any] | NDArray[Any] | None,
    batch: range,
    name: str,
) -> None:
    if column is None:
        return
    if rows is None or len(rows) != len(batch):
        # The protocol parsers guarantee this; a failure here is a bug, never a gap.
        raise AssertionError(f"{name} rows do not match batch {batch}")
    column[batch.start : batch.stop] = rows


def regroup(
    result: EmbeddingResult | PartialResult, long_plan: LongTextPlan
) -> EmbeddingResult | PartialResult:
    """Map per-row results (after truncation or chunking) back to the caller's inputs.

    A chunked input's pieces are combined (token-weighted); an input is missing if any
    of its pieces is.
    """
    count = len(long_plan.token_counts)
    owner, weight = long_plan.owner, long_plan.weight
    if isinstance(result, EmbeddingResult):
        dense = (
            combine_dense(result.dense, owner, weight, count) if result.dense is not None else None
        )
        sparse = (
            combine_sparse(result.sparse, owner, weight, count)
            if result.sparse is not None
            else None
        )
        return replace(result, dense=dense, sparse=sparse, count=count)
    missing_rows = set(result.missing_positions)
    missing_inputs = sorted({owner[r] for r in missing_rows})
    missing_set = set(missing_inputs)
    kept = [r for r in range(len(owner)) if owner[r] not in missing_set]
    kept_owner = [owner[r] for r in kept]
    kept_weight = [weight[r] for r in kept]

    def rebuild(column: list[Any] | None, combine: Any) -> list[Any] | None:
        if column is None:
            return None
        out: list[Any] = [None] * count
        present = sorted(set(kept_owner))
        index_of = {who: k for k, who in enumerate(present)}
        combined = combine(
            [column[r] for r in kept], [index_of[o] for o in kept_owner], kept_weight, len(present)
        )
        for who, value in zip(present, combined, strict=True):
            out[who] = value
        return out

    return replace(
        result,
        dense=rebuild(result.dense, combine_dense),
        sparse=rebuild(result.sparse, combine_sparse),
        missing_positions=missing_inputs,
    )


# A document that is not text bills tokens the client cannot count; this is what an
# image costs on the multimodal models (the emulator bills the same).
NON_TEXT_TOKENS = 1024


def split_rerank(
    documents: Sequence[Any],
    tokens: Sequence[int],
    query_tokens: int,
    max_documents: int,
    max_tokens_per_request: int,
    max_per_modality: Mapping[str, int],
) -> list[range]:
    """Consecutive slices of ``documents`` that each fit one rerank request: at most
    ``max_documents`` (and ``max_per_modality`` of a kind), and at most
    ``max_tokens_per_request`` tokens counted as the service counts them (the query's
    tokens once per document, plus each document's). Every document must fit alone."""
    batches: list[range] = []
    start = used = 0
    kinds: dict[str, int] = {}
    for position, document in enumerate(documents):
        cost = tokens[position] + query_tokens
        kind = getattr(document, "modality", "text")
        fits = (
            position - start < max_documents
            and used + cost <= max_tokens_per_request
            and kinds.get(kind, 0) < max_per_modality.get(kind, max_documents)
        )
        if position > start and not fits:
            batches.append(range(start, position))
            start, used, kinds = position, 0, {}
        used += cost
        kinds[kind] = kinds.get(kind, 0) + 1
    if start < len(documents):
        batches.append(range(start, len(documents)))
    return batches
