"""Fidelity: the official ``dashscope`` and ``openai`` SDKs, as clients of the emulator."""

from __future__ import annotations

import base64
import gzip
import io
import json
import time

import dashscope
import httpx
import numpy as np
import openai
import pytest
from dashscope import BatchTextEmbedding, MultiModalEmbedding, TextEmbedding
from dashscope.v2 import Client as DashScopeV2
from dashscope.v2 import errors as v2_errors

from dashscope_embed.emulator import Emulator

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def sdk(dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """Point the 1.x SDK's process-wide settings at the emulator for one test."""
    monkeypatch.setattr(dashscope, "base_http_api_url", dashscope_emulator.native_base_url)
    monkeypatch.setattr(dashscope, "api_key", dashscope_emulator.api_key)
    return dashscope_emulator


@pytest.fixture
def oai(dashscope_emulator: Emulator) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=dashscope_emulator.api_key,
        max_retries=0,
        base_url=dashscope_emulator.compatible_base_url,
    )


# ------------------------------------------------------------------ dashscope 1.x
@pytest.mark.parametrize("output_type", ["dense", "sparse", "dense&sparse"])
def test_dashscope_text_embedding_every_output_type(sdk: Emulator, output_type: str) -> None:
    response = TextEmbedding.call(
        model="text-embedding-v4",
        input=["hello world", "你好，世界"],
        text_type="query",
        dimension=256,
        output_type=output_type,
        instruct="Given a web search query, retrieve relevant passages",
    )
    assert response.status_code == 200, response.message
    rows = response.output["embeddings"]
    assert [r["text_index"] for r in rows] == [0, 1]
    for row in rows:
        assert ("embedding" in row) == (output_type != "sparse")
        assert ("sparse_embedding" in row) == (output_type != "dense")
        if "embedding" in row:
            assert len(row["embedding"]) == 256
            assert abs(np.linalg.norm(row["embedding"]) - 1.0) < 1e-5
    assert response.usage["total_tokens"] > 0 and response.request_id


def test_dashscope_error_paths_carry_codes(sdk: Emulator) -> None:
    too_many = TextEmbedding.call(model="text-embedding-v4", input=["x"] * 11)
    assert (too_many.status_code, too_many.code) == (400, "InvalidParameter")
    assert "should not be larger than 10" in too_many.message and too_many.request_id
    bad_key = TextEmbedding.call(model="text-embedding-v4", input=["x"], api_key="sk-nope")
    assert (bad_key.status_code, bad_key.code) == (401, "InvalidApiKey")
    sdk.configure(rpm=1)
    TextEmbedding.call(model="text-embedding-v4", input=["first"])
    throttled = TextEmbedding.call(model="text-embedding-v4", input=["second"])
    assert (throttled.status_code, throttled.code) == (429, "Throttling.RateQuota")


def test_dashscope_batch_text_embedding_runs_offline(sdk: Emulator) -> None:
    url = sdk.put_file("corpus.txt", b"first line\nsecond line\n\nfourth line\n")
    response = BatchTextEmbedding.call(
        model="text-embedding-async-v2", url=url, text_type="document"
    )
    assert response.status_code == 200
    output = response.output
    assert output["task_status"] == "SUCCEEDED"
    assert output["task_metrics"] == {"TOTAL": 4, "SUCCEEDED": 3, "FAILED": 1}
    lines = gzip.decompress(httpx.get(output["url"]).content).decode().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["text_index"] for r in rows] == [0, 1, 2, 3]
    assert "code" in rows[2] and "embedding" not in rows[2]
    assert len(rows[0]["embedding"]) == 1536


def test_dashscope_batch_task_cancel_and_list(sdk: Emulator) -> None:
    sdk.configure(task_delay=5.0)
    url = sdk.put_file("slow.txt", b"one\ntwo\n")
    created = BatchTextEmbedding.async_call(model="text-embedding-async-v1", url=url)
    task_id = created.output["task_id"]
    assert created.output["task_status"] == "PENDING"
    cancelled = BatchTextEmbedding.cancel(task_id)
    assert cancelled.status_code == 200
    status = BatchTextEmbedding.fetch(task_id)
    assert status.output["task_status"] == "CANCELED"
    again = BatchTextEmbedding.cancel(task_id)
    assert (again.status_code, again.code) == (400, "UnsupportedOperation")
    listed = BatchTextEmbedding.list(page_size=10)
    assert listed.status_code == 200 and listed.output["page_size"] == 10
    assert {
        "task_id": task_id,
        "status": "CANCELED",
        "model_name": "text-embedding-async-v1",
    }.items() <= next(t for t in listed.output["data"] if t["task_id"] == task_id).items()
    unknown = BatchTextEmbedding.fetch("no-such-task")
    assert unknown.output["task_status"] == "UNKNOWN"


def test_dashscope_task_with_unreachable_input_fails(sdk: Emulator) -> None:
    response = BatchTextEmbedding.call(
        model="text-embedding-async-v2", url="https://example.com/not-reachable-offline.txt"
    )
    assert response.output["task_status"] == "FAILED"
    assert response.output["code"] == "InvalidURL"


def test_dashscope_multimodal_text_image_video(sdk: Emulator) -> None:
    data_uri = "data:image/png;base64," + base64.b64encode(PNG_1x1).decode()
    response = MultiModalEmbedding.call(
        model="multimodal-embedding-v1",
        input=[
            {"text": "a red car"},
            {"image": data_uri},
            {"video": "https://example.com/clip.mp4"},
        ],
    )
    assert response.status_code == 200, response.message
    rows = response.output["embeddings"]
    assert [(r["index"], r["type"]) for r in rows] == [(0, "text"), (1, "image"), (2, "video")]
    assert all(len(r["embedding"]) == 1024 for r in rows)
    assert response.usage["image_count"] == 1
    # The file name's words pull an image towards texts that use them.
    car = MultiModalEmbedding.call(
        model="multimodal-embedding-v1", input=[{"image": "https://example.com/photos/red_car.jpg"}]
    ).output["embeddings"][0]["embedding"]
    cat = MultiModalEmbedding.call(
        model="multimodal-embedding-v1",
        input=[{"image": "https://example.com/photos/sleeping_cat.jpg"}],
    ).output["embeddings"][0]["embedding"]
    text = rows[0]["embedding"]
    assert np.dot(text, car) > np.dot(text, cat)


def test_dashscope_multimodal_rejects_bad_images(sdk: Emulator) -> None:
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a....").decode()
    response = MultiModalEmbedding.call(model="multimodal-embedding-v1", input=[{"image": gif}])
    assert (response.status_code, response.code) == (400, "InvalidParameter")
    assert "unsupported image format" in response.message
    huge = "data:image/png;base64," + base64.b64encode(PNG_1x1 + b"\0" * (3 * 1024 * 1024)).decode()
    too_big = MultiModalEmbedding.call(model="multimodal-embedding-v1", input=[{"image": huge}])
    assert too_big.status_code == 400 and "3 MB" in too_big.message


# ------------------------------------------------------------------ dashscope v2 client
def test_dashscope_v2_client_and_its_typed_errors(dashscope_emulator: Emulator) -> None:
    client = DashScopeV2(
        api_key=dashscope_emulator.api_key,
        max_retries=0,
        base_url=dashscope_emulator.native_base_url,
    )
    response = client.embeddings.create(
        model="text-embedding-v4",
        input=["hi", "there"],
        text_type="document",
        dimension=128,
        output_type="dense&sparse",
    )
    assert [len(e.embedding) for e in response.embeddings] == [128, 128]
    assert response.request_id
    with pytest.raises(v2_errors.BadRequestError) as bad:
        client.embeddings.create(model="text-embedding-v4", input=["x"] * 11)
    assert bad.value.code == "InvalidParameter"
    with pytest.raises(v2_errors.AuthenticationError):
        DashScopeV2(
            api_key="sk-wrong", base_url=dashscope_emulator.native_base_url, max_retries=0
        ).embeddings.create(model="text-embedding-v4", input=["x"])
    dashscope_emulator.configure(error_rate=1.0)
    with pytest.raises(v2_errors.InternalServerError):
        client.embeddings.create(model="text-embedding-v4", input=["x"])


def test_dashscope_rerank_native_endpoint_and_its_refusals(sdk: Emulator) -> None:
    """The SDKs' rerank (1.x TextReRank, v2 client.rerank) on the native endpoint: the
    reply shape they parse, and the service's refusals as they surface them."""
    docs = ["hybrid search fuses keyword and semantic matching", "billing per token", "x y"]
    response = dashscope.TextReRank.call(
        model="gte-rerank-v2",
        query="keyword and semantic search",
        documents=docs,
        top_n=2,
        return_documents=True,
    )
    assert response.status_code == 200, response.message
    results = response.output.results
    assert len(results) == 2 and results[0].index == 0  # the passage that answers
    assert results[0].relevance_score >= results[1].relevance_score
    assert results[0]["document"]["text"] == docs[results[0].index]  # (key access: SDK quirk)
    assert response.usage.total_tokens > 0 and response.request_id
    too_many = dashscope.TextReRank.call(model="gte-rerank-v2", query="q", documents=["d"] * 501)
    assert (too_many.status_code, too_many.code) == (400, "InvalidParameter")
    assert "larger than 500" in too_many.message
    retired = dashscope.TextReRank.call(model="gte-rerank", query="q", documents=["d"])
    assert retired.status_code == 400 and retired.output is None  # what the anchors trip on

    client = DashScopeV2(api_key=sdk.api_key, max_retries=0, base_url=sdk.native_base_url)
    v2 = client.rerank.create(
        model="qwen3-vl-rerank", query="red car", documents=docs, instruct="Find the passage."
    )
    assert sorted(r.index for r in v2.results) == [0, 1, 2] and v2.request_id
    with pytest.raises(v2_errors.BadRequestError):
        client.rerank.create(model="qwen3-rerank", query="q", documents=["d"])  # not native


# ------------------------------------------------------------------ openai
def test_openai_embeddings_in_both_encodings(oai: openai.OpenAI) -> None:
    default = oai.embeddings.create(
        model="text-embedding-v4", input=["alpha", "beta"], dimensions=512
    )  # the SDK asks for base64 by default
    floats = oai.embeddings.create(
        model="text-embedding-v4", input=["alpha", "beta"], dimensions=512, encoding_format="float"
    )
    assert [d.index for d in default.data] == [0, 1]
    assert len(default.data[0].embedding) == 512
    assert np.allclose(default.data[1].embedding, floats.data[1].embedding, atol=1e-6)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 0
    assert default.model == "text-embedding-v4"


def test_openai_sdk_parses_floats_when_base64_is_ignored(
    dashscope_emulator: Emulator, oai: openai.OpenAI
) -> None:
    dashscope_emulator.configure(base64_as_float=True)
    response = oai.embeddings.create(model="text-embedding-v4", input="x", dimensions=64)
    assert len(response.data[0].embedding) == 64


def test_openai_error_paths(dashscope_emulator: Emulator, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model="text-embedding-v4", input=["x"] * 11)
    assert "should not be larger than 10" in str(bad.value)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key="sk-wrong", base_url=dashscope_emulator.compatible_base_url, max_retries=0
        ).embeddings.create(model="text-embedding-v4", input="x")
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input="x")
    dashscope_emulator.configure(rpm=1)
    oai.embeddings.create(model="text-embedding-v4", input="first")
    with pytest.raises(openai.RateLimitError) as limited:
        oai.embeddings.create(model="text-embedding-v4", input="second")
    assert limited.value.response.headers["retry-after"]


def _wait_batch(oai: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    deadline = time.monotonic() + 30
    while True:
        batch = oai.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.05)


def test_openai_batch_api_for_embeddings(dashscope_emulator: Emulator, oai: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-v4", "input": "first text", "dimensions": 256},
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-v4", "input": ["two", "texts"]},
        },
        {
            "custom_id": "c",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-v4", "input": ""},
        },
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = oai.files.create(file=("requests.jsonl", io.BytesIO(jsonl)), purpose="batch")
    assert uploaded.id.startswith("file-batch-") and uploaded.bytes == len(jsonl)
    batch = oai.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"ds_name": "test"},
    )
    done = _wait_batch(oai, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (3, 2, 1)
    assert done.output_file_id and done.error_file_id
    outputs = {
        r["custom_id"]: r
        for r in map(json.loads, oai.files.content(done.output_file_id).text.splitlines())
    }
    assert len(outputs["a"]["response"]["body"]["data"][0]["embedding"]) == 256
    assert len(outputs["b"]["response"]["body"]["data"]) == 2
    errors = [json.loads(x) for x in oai.files.content(done.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "c" and errors[0]["response"]["status_code"] == 400
    assert any(b.id == batch.id for b in oai.batches.list().data)


def test_openai_batch_with_wrong_url_fails_validation(oai: openai.OpenAI) -> None:
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/chat/completion",
        "body": {"model": "text-embedding-v4", "input": "x"},
    }
    uploaded = oai.files.create(
        file=("bad.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch"
    )
    batch = _wait_batch(
        oai,
        oai.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        ).id,
    )
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "url_not_found" and batch.errors.data[0].line == 1


def test_openai_batch_cancel(dashscope_emulator: Emulator, oai: openai.OpenAI) -> None:
    dashscope_emulator.configure(task_delay=4.0)
    line = {
        "custom_id": "1",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-v4", "input": "x"},
    }
    uploaded = oai.files.create(
        file=("c.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch"
    )
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert oai.batches.cancel(batch.id).status == "cancelling"
    done = _wait_batch(oai, batch.id)
    assert done.status == "cancelled" and done.request_counts is not None
    assert done.request_counts.failed == 1 and done.error_file_id
