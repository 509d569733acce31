"""Token counting and the long-text policies (pure)."""

from __future__ import annotations

import math

import pytest

from dashscope_embed import InvalidInputError, SparseEmbedding
from dashscope_embed.tokens import (
    EstimatingTokenCounter,
    QwenTokenCounter,
    apply_long_text_policy,
    combine_dense,
    combine_sparse,
)

SAMPLES = [
    "代码改变世界",
    "The quick brown fox jumps over the lazy dog. " * 20,
    "def foo_bar(x):\n    return x**2 + 12345\n" * 10,
    "Ünïcödé naïve café résumé " * 30,
    "aGVsbG8gd29ybGQ=" * 50,
    "Привет мир, как дела? " * 10,
    "https://example.com/path?query=1&x=2 " * 20,
    "getUserById(userId, includeDeleted=false)" * 10,
]


def test_qwen_tokenizer_matches_live_usage_numbers() -> None:
    # text-embedding-v2 billed 3 tokens for this text on the live service.
    assert QwenTokenCounter().count("代码改变世界") == 3


@pytest.mark.parametrize("text", SAMPLES)
def test_estimate_errs_high_for_natural_text_code_and_data(text: str) -> None:
    assert EstimatingTokenCounter().count(text) >= QwenTokenCounter().count(text)


@pytest.mark.parametrize("counter", [QwenTokenCounter(), EstimatingTokenCounter()])
def test_truncate_and_split_stay_within_the_limit(counter: object) -> None:
    exact = QwenTokenCounter()
    text = "alpha beta gamma delta " * 3000
    truncated = counter.truncate(text, 500)  # type: ignore[attr-defined]
    assert exact.count(truncated) <= 500 and text.startswith(truncated)
    pieces = counter.split(text, 500)  # type: ignore[attr-defined]
    assert all(exact.count(p) <= 500 for p in pieces)
    assert "".join(pieces).split() == text.split()  # nothing lost
    blob = "x" * 5000  # one "word" longer than the limit
    assert all(exact.count(p) <= 300 for p in counter.split(blob, 300))  # type: ignore[attr-defined]


class Refuses:
    exact = True

    def count(self, text: str) -> int:
        raise AssertionError("short texts must not be counted")


def test_error_policy_names_each_long_text_and_its_count() -> None:
    counter = QwenTokenCounter()
    texts = ["short", "word " * 300, "ok", "word " * 400]
    with pytest.raises(InvalidInputError) as info:
        apply_long_text_policy(texts, 100, "error", counter, reserved_tokens=1)
    assert info.value.positions == [1, 3]
    assert "301 tokens exceeds the model's limit of 99" in str(info.value)
    assert "long_text='truncate' or 'chunk'" in str(info.value)


def test_estimated_counts_say_so() -> None:
    with pytest.raises(InvalidInputError, match=r"estimated; dashscope-embed\[tokenizer\]"):
        apply_long_text_policy(["word " * 300], 100, "error", EstimatingTokenCounter())


def test_chunk_policy_maps_pieces_to_their_owner() -> None:
    counter = QwenTokenCounter()
    texts = ["first", "word " * 250, "last"]
    plan = apply_long_text_policy(texts, 100, "chunk", counter)
    assert plan.owner[0] == 0 and plan.owner[-1] == 2
    assert set(plan.owner[1:-1]) == {1} and len(plan.owner) >= 5
    assert all(counter.count(r) <= 100 for r in plan.rows)
    assert plan.token_counts[1] == 251  # 250 words and the trailing space
    assert plan.changed


def test_policy_name_is_checked() -> None:
    with pytest.raises(InvalidInputError, match="long_text must be one of"):
        apply_long_text_policy(["x"], 10, "split", QwenTokenCounter())  # type: ignore[arg-type]


def test_combine_dense_is_a_token_weighted_unit_average() -> None:
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    combined = combine_dense(vectors, owner=[0, 0, 1], weight=[3, 1, 5], count=2)
    norm = math.hypot(3.0, 1.0)
    assert combined[0] == pytest.approx([3.0 / norm, 1.0 / norm])
    assert combined[1] == pytest.approx([0.6, 0.8])


def test_combine_sparse_averages_weights_over_the_union_of_terms() -> None:
    a = SparseEmbedding([1, 2], [1.0, 0.5], ["cat", "dog"])
    b = SparseEmbedding([2, 3], [1.0, 2.0], ["dog", "fish"])
    (merged,) = combine_sparse([a, b], owner=[0, 0], weight=[1, 3], count=1)
    assert merged.as_dict() == pytest.approx({1: 0.25, 2: (0.5 + 3.0) / 4, 3: 1.5})
    assert dict(zip(merged.indices, merged.tokens, strict=True)) == {1: "cat", 2: "dog", 3: "fish"}
