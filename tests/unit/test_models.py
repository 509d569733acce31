from __future__ import annotations

import pytest

from dashscope_embed import MODELS, ModelSpec, UnknownModelError, resolve_model


def test_table_holds_the_documented_limits() -> None:
    v4 = MODELS["text-embedding-v4"]
    assert (v4.max_rows, v4.max_tokens_per_row, v4.default_dimension) == (10, 8192, 1024)
    assert set(v4.dimensions) == {2048, 1536, 1024, 768, 512, 256, 128, 64}
    assert v4.supports_instruct and v4.supports_sparse and v4.openai_compatible
    v3 = MODELS["text-embedding-v3"]
    assert v3.max_rows == 10 and 2048 not in v3.dimensions and not v3.supports_instruct
    for legacy in ("text-embedding-v1", "text-embedding-v2"):
        spec = MODELS[legacy]
        assert spec.max_rows == 25 and spec.dimensions == (1536,)
        assert not spec.configurable_dimension and not spec.supports_sparse
    assert MODELS["text-embedding-async-v2"].kind == "async-batch"
    assert MODELS["multimodal-embedding-v1"].kind == "multimodal"
    assert MODELS["qwen3.7-text-embedding"].max_rows == 20


# The API notes (§6.4) list no price for these.
UNPRICED = {
    "qwen2.5-vl-embedding",
    "tongyi-embedding-vision-plus-2026-03-06",
    "tongyi-embedding-vision-flash-2026-03-06",
}


def test_every_model_has_a_price_and_a_consistent_default() -> None:
    for spec in MODELS.values():
        if spec.name in UNPRICED or spec.hosting == "self-hosted":
            assert spec.price_cny_per_1k_tokens is None
            continue
        assert spec.price_cny_per_1k_tokens and spec.price_cny_per_1k_tokens > 0
        assert spec.default_dimension in spec.dimensions


def test_unknown_model_error_explains_how_to_describe_it() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model("text-embedding-v9")
    message = str(info.value)
    assert "text-embedding-v9" in message and "ModelSpec(" in message
    assert "text-embedding-v4" in message


def test_a_caller_supplied_spec_is_used_as_is() -> None:
    spec = ModelSpec(
        name="text-embedding-v9",
        max_rows=32,
        max_tokens_per_row=32_000,
        dimensions=(4096, 1024),
        default_dimension=4096,
    )
    assert resolve_model(spec) is spec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rows": 0}, "max_rows"),
        ({"default_dimension": 7}, "default_dimension"),
        ({"output_types": ("dense", "bogus")}, "output_types"),
        ({"name": ""}, "name"),
    ],
)
def test_spec_rejects_inconsistent_limits(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {
        "name": "m",
        "max_rows": 1,
        "max_tokens_per_row": 1,
        "dimensions": (8,),
        "default_dimension": 8,
    }
    with pytest.raises(ValueError, match=match):
        ModelSpec(**{**base, **kwargs})  # type: ignore[arg-type]
