"""The bad-input matrix with the emulator's faults on: refused by position, sent to no one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dashscope_embed import DashScopeClient, InvalidInputError, ModelSpec, UnknownModelError
from dashscope_embed.emulator import Emulator

Factory = Callable[..., DashScopeClient]
LONG = "token " * 9000


@pytest.mark.parametrize(
    ("texts", "options", "positions", "reason"),
    [
        (["ok", ""], {}, [1], "empty text"),
        (["ok", " \t\n"], {}, [1], "only whitespace"),
        (["ok", None], {}, [1], "expected a str, got NoneType"),
        ([b"bytes", "ok"], {}, [0], "expected a str, got bytes"),
        (["lone \udc80 surrogate"], {}, [0], "lone surrogate"),
        (["nul \x00 byte"], {}, [0], "NUL character"),
        (["ok", LONG], {}, [1], "exceeds the model's limit of 8191"),
        (["ok"], {"model": "text-embedding-v9"}, [], "unknown model 'text-embedding-v9'"),
        (["ok"], {"dimension": 999}, [], "dimension=999 is not allowed"),
        (["ok"], {"output_type": "bag-of-words"}, [], "output_type must be one of"),
        (["ok"], {"text_type": "passage"}, [], "text_type must be 'query' or 'document'"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    make_client: Factory,
    dashscope_emulator: Emulator,
    texts: list[Any],
    options: dict[str, Any],
    positions: list[int],
    reason: str,
) -> None:
    dashscope_emulator.configure(error_rate=0.3, drop_rate=0.3, latency=0.01)
    with pytest.raises(InvalidInputError) as info:
        make_client().embed(texts, **options)
    assert info.value.positions == positions
    assert reason in str(info.value)
    assert dashscope_emulator.stats()["requests"] == 0  # sent to no one, billed nothing


def test_a_batch_job_bigger_than_the_service_takes_is_refused_before_upload(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    from dashscope_embed.jobs import BATCH_API_MAX_REQUESTS, BatchAPIJobs

    dashscope_emulator.configure(error_rate=0.3, drop_rate=0.3, latency=0.01)
    texts = [f"text {i}" for i in range(BATCH_API_MAX_REQUESTS + 2)]
    with pytest.raises(InvalidInputError, match="a batch holds at most 50,000 requests") as info:
        BatchAPIJobs(make_client()).submit(texts)
    assert info.value.positions == [BATCH_API_MAX_REQUESTS]
    assert dashscope_emulator.stats()["requests"] == 0


def test_content_inspection_refusal_names_the_texts_of_that_request(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    from dashscope_embed import ContentFilterError, PartialEmbeddingError

    dashscope_emulator.configure(blocked_phrase="forbidden words")
    texts = [f"fine text {i}" for i in range(30)]
    texts[14] = "some forbidden words here"
    with pytest.raises(PartialEmbeddingError) as info:
        make_client().embed(texts)
    # The service refuses the whole request of ten; the other requests are kept.
    assert info.value.failed_positions == list(range(10, 20))
    assert isinstance(info.value.errors[0], ContentFilterError)
    partial = info.value.partial
    assert partial.dense is not None
    assert all(partial.dense[i] is not None for i in [*range(10), *range(20, 30)])


def test_unknown_model_error_says_how_to_proceed(make_client: Factory) -> None:
    with pytest.raises(UnknownModelError, match=r"ModelSpec\(name='text-embedding-v9'"):
        make_client().embed(["ok"], model="text-embedding-v9")
    spec = ModelSpec(
        name="text-embedding-v4",
        max_rows=5,
        max_tokens_per_row=8192,
        dimensions=(1024,),
        default_dimension=1024,
    )
    assert len(make_client().embed(["ok"] * 7 + ["other"], model=spec)) == 8
