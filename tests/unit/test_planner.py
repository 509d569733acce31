"""Validation, de-duplication, batching and reassembly: pure."""

from __future__ import annotations

from typing import Any

import pytest

from dashscope_embed import (
    EmbeddingResult,
    InvalidInputError,
    ModelSpec,
    PartialResult,
    SparseEmbedding,
    Usage,
)
from dashscope_embed.models import resolve_model
from dashscope_embed.options import TextEmbeddingOptions, TextParams, text_params
from dashscope_embed.planner import assemble, plan, validate_texts
from dashscope_embed.protocol.common import ParsedBatch


def resolve_params(model: Any, text_type: Any = None, **options: Any) -> TextParams:
    return text_params(resolve_model(model), text_type, TextEmbeddingOptions.from_call(options))


@pytest.mark.parametrize(
    ("texts", "positions", "reason"),
    [
        (["ok", ""], [1], "empty text"),
        (["ok", "   \n\t"], [1], "only whitespace"),
        (["ok", None, 3], [1, 2], "expected a str, got NoneType"),
        (["a\x00b"], [0], "NUL character at offset 1"),
        (["fine", "bad \ud800 surrogate"], [1], "lone surrogate at offset 4"),
    ],
)
def test_bad_texts_are_named_by_position_and_reason(
    texts: list[object], positions: list[int], reason: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_texts(texts)
    assert info.value.positions == positions
    assert reason in str(info.value)
    assert f"texts[{positions[0]}]" in str(info.value)


def test_a_single_string_is_refused_with_a_hint() -> None:
    with pytest.raises(InvalidInputError, match=r"wrap it in a list"):
        validate_texts("hello")


def test_many_problems_are_summarised() -> None:
    with pytest.raises(InvalidInputError) as info:
        validate_texts([""] * 25)
    assert len(info.value.problems) == 25
    assert "and 15 more" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dimension": 100},
            r"dimension=100 is not allowed for text-embedding-v4; allowed: \[2048",
        ),
        ({"dimension": 2048, "model": "text-embedding-v3"}, "not allowed for text-embedding-v3"),
        ({"output_type": "both"}, "output_type must be one of"),
        (
            {"output_type": "sparse", "model": "text-embedding-v2"},
            "not supported by text-embedding-v2",
        ),
        ({"text_type": "passage"}, "text_type must be 'query' or 'document'"),
        ({"instruct": "x", "model": "text-embedding-v3"}, "does not take an instruct"),
        ({"instruct": "  "}, "instruct must be a non-empty string"),
        ({"model": "text-embedding-async-v2"}, "batch jobs API"),
        ({"task": "no_such_task"}, "unknown task"),
        ({"dimension": "512"}, "valid integer"),
    ],
)
def test_parameters_are_checked_against_the_model_table(
    kwargs: dict[str, object], message: str
) -> None:
    call: dict[str, object] = {
        "model": "text-embedding-v4",
        "text_type": None,
        "instruct": None,
        "dimension": None,
        "output_type": "dense",
    }
    call.update(kwargs)
    model = call.pop("model")
    with pytest.raises(InvalidInputError, match=message):
        resolve_params(model, **call)  # type: ignore[arg-type]


def test_plan_deduplicates_and_respects_the_row_limit() -> None:
    texts = [f"t{i % 13}" for i in range(40)]
    the_plan = plan(texts, 5)
    assert len(the_plan.unique) == 13
    assert [len(b) for b in the_plan.batches] == [5, 5, 3]
    assert all(the_plan.unique[s] == t for s, t in zip(the_plan.slot_of, texts, strict=True))


def _reply(batch: range, dim: int = 4) -> ParsedBatch:
    return ParsedBatch(
        dense=[[float(s)] * dim for s in batch],
        sparse=None,
        total_tokens=len(batch),
        request_id=f"r{batch.start}",
    )


def test_assemble_fans_results_out_in_input_order_with_independent_copies() -> None:
    spec = ModelSpec(
        name="m", max_rows=2, max_tokens_per_row=10, dimensions=(4,), default_dimension=4
    )
    p = resolve_params(spec, text_type=None, instruct=None, dimension=None, output_type="dense")
    texts = ["a", "b", "a", "c", "b"]
    the_plan = plan(texts, 2)
    result = assemble(the_plan, [_reply(b) for b in the_plan.batches], p)
    assert isinstance(result, EmbeddingResult)
    assert result.dense is not None
    assert [v[0] for v in result.dense] == [0.0, 1.0, 0.0, 2.0, 1.0]
    assert result.usage.total_tokens == 3 and result.request_ids == ("r0", "r2")
    result.dense[0][0] = 99.0
    assert result.dense[2][0] == 0.0  # duplicates are copies


def test_assemble_reports_exactly_the_positions_of_failed_batches() -> None:
    spec = ModelSpec(
        name="m", max_rows=2, max_tokens_per_row=10, dimensions=(4,), default_dimension=4
    )
    p = resolve_params(spec, text_type=None, instruct=None, dimension=None, output_type="dense")
    texts = ["a", "b", "c", "d", "e", "a"]
    the_plan = plan(texts, 2)
    replies = [_reply(the_plan.batches[0]), None, _reply(the_plan.batches[2])]
    partial = assemble(the_plan, replies, p)
    assert isinstance(partial, PartialResult)
    assert partial.missing_positions == [2, 3]
    assert partial.dense is not None and partial.dense[2] is None and partial.dense[5] == [0.0] * 4
    rest = EmbeddingResult(
        dense=[[7.0] * 4, [8.0] * 4],
        sparse=None,
        usage=partial.usage,
        request_ids=("x",),
        model="m",
        dimension=4,
        count=2,
    )
    whole = partial.complete_with(rest)
    assert whole.dense is not None
    assert [v[0] for v in whole.dense] == [0.0, 1.0, 7.0, 8.0, 4.0, 0.0]
    with pytest.raises(InvalidInputError, match="one result per missing input"):
        partial.complete_with(
            EmbeddingResult(
                dense=[[1.0] * 4],
                sparse=None,
                usage=partial.usage,
                request_ids=(),
                model="m",
                dimension=4,
                count=1,
            )
        )


def test_regroup_maps_chunk_failures_to_the_owning_input() -> None:
    from dashscope_embed.planner import regroup
    from dashscope_embed.tokens import LongTextPlan

    spec = ModelSpec(
        name="m", max_rows=2, max_tokens_per_row=10, dimensions=(2,), default_dimension=2
    )
    p = resolve_params(spec, text_type=None, instruct=None, dimension=None, output_type="dense")
    # Input 1 was chunked into rows 1, 2, 3; rows 2-3 form the failed second batch.
    long_plan = LongTextPlan(
        rows=["a", "b1", "b2", "b3", "c"],
        owner=[0, 1, 1, 1, 2],
        weight=[1, 2, 2, 2, 1],
        token_counts=[1, 6, 1],
        changed=True,
    )
    the_plan = plan(long_plan.rows, 2)
    replies = [
        ParsedBatch(dense=[[1.0, 0.0], [0.0, 1.0]], sparse=None, total_tokens=3, request_id="r0"),
        None,
        ParsedBatch(dense=[[0.6, 0.8]], sparse=None, total_tokens=1, request_id="r2"),
    ]
    partial = regroup(assemble(the_plan, replies, p), long_plan)
    assert isinstance(partial, PartialResult)
    assert partial.missing_positions == [1]
    assert partial.dense == [[1.0, 0.0], None, [0.6, 0.8]]


def test_results_render_compactly() -> None:
    # Results hold millions of floats; printing one (or asyncio.run on Python 3.11,
    # which reprs the main task's result) must not format them all.
    result = EmbeddingResult(
        dense=[[0.123456789] * 1024] * 500,
        sparse=None,
        usage=Usage(7),
        request_ids=("r1",),
        model="text-embedding-v4",
        dimension=1024,
        count=500,
    )
    text = repr(result)
    assert len(text) < 200 and "count=500" in text and "0.1234" not in text
    sparse = repr(SparseEmbedding(list(range(9)), [0.5] * 9, [f"t{i}" for i in range(9)]))
    assert sparse == "SparseEmbedding(t0=0.5, t1=0.5, t2=0.5, t3=0.5, t4=0.5, ... 4 more)"
