"""Against the real DashScope service; run only when DASHSCOPE_API_KEY is set.

These check the assumptions the emulator encodes (row limits, vector norms, sparse
shape, error codes) on the live service: ``DASHSCOPE_API_KEY=sk-... bash scripts/test.sh
tests/live``. Set ``DASHSCOPE_REGION`` / ``DASHSCOPE_BASE_URL`` for your key's region.
"""

from __future__ import annotations

import math
import os

import pytest

from dashscope_embed import AuthenticationError, BadRequestError, DashScopeClient

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("DASHSCOPE_API_KEY"),
        reason="needs DASHSCOPE_API_KEY (talks to the real service)",
    ),
]


def test_native_roles_dimensions_and_order() -> None:
    client = DashScopeClient()
    texts = [f"live check {i}: retrieval augmented generation" for i in range(12)]
    result = client.embed(texts, text_type="document", dimension=256)
    assert len(result) == 12 and len(result.request_ids) == 2  # 10 rows per request
    assert all(len(v) == 256 for v in result.require_dense())
    assert all(math.isclose(math.hypot(*v), 1.0, abs_tol=1e-3) for v in result.require_dense())
    query = client.embed([texts[0]], text_type="query", instruct="Find passages").require_dense()
    assert query[0] != result.require_dense()[0]


def test_dense_and_sparse_from_one_request() -> None:
    result = DashScopeClient().embed(
        ["hybrid search with sparse vectors"], output_type="dense&sparse"
    )
    sparse = result.require_sparse()[0]
    assert len(result.require_dense()[0]) == 1024
    assert sparse.indices and len(sparse.indices) == len(sparse.values)


def test_openai_compatible_protocol() -> None:
    result = DashScopeClient(protocol="openai-compatible").embed(["compatible"], dimension=512)
    assert len(result.require_dense()[0]) == 512


def test_service_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    spec_texts = ["x"] * 11
    from dashscope_embed import ModelSpec

    # Tell the client the model takes 11 rows so the request reaches the service.
    liar = ModelSpec(
        name="text-embedding-v4",
        max_rows=11,
        max_tokens_per_row=8192,
        dimensions=(1024,),
        default_dimension=1024,
    )
    with pytest.raises(BadRequestError) as info:
        DashScopeClient().embed([f"{t}{i}" for i, t in enumerate(spec_texts)], model=liar)
    assert info.value.request_id and "10" in info.value.message
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-not-a-real-key")
    with pytest.raises(AuthenticationError):
        DashScopeClient().embed(["x"])


def test_framework_classes() -> None:
    from langchain_ext import DashScopeEmbeddings
    from llama_index_ext import DashScopeEmbedding

    assert len(DashScopeEmbedding(dimension=256).get_query_embedding("live")) == 256
    assert len(DashScopeEmbeddings(dimension=256).embed_documents(["live"])[0]) == 256
