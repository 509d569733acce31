"""Async batch tasks end to end against the emulator's task endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dashscope_embed import DashScopeClient, InvalidInputError, PartialEmbeddingError
from dashscope_embed.emulator import Emulator, vectors
from dashscope_embed.jobs import (
    BatchAPIJobs,
    BatchJobs,
    BatchState,
    JobFailedError,
    _fingerprint,
)

Factory = Callable[..., DashScopeClient]
CREATE = "POST /api/v1/services/embeddings/text-embedding/text-embedding"


def lines(n: int) -> list[str]:
    return [f"batch line {i} about topic {i % 11}" for i in range(n)]


def put_corpus(emu: Emulator, name: str, texts: list[str]) -> str:
    return emu.put_file(name, ("\n".join(texts) + "\n").encode())


def test_a_whole_job_returns_every_line_in_order(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(task_delay=0.05)
    texts = lines(250)
    url = put_corpus(dashscope_emulator, "corpus.txt", texts)
    polls: list[str] = []
    result = BatchJobs(make_client()).run(
        url, text_type="document", first_interval=0.05, on_poll=lambda s: polls.append(s.status)
    )
    assert len(result) == 250 and result.dimension == 1536
    assert result.model == "text-embedding-async-v2"
    for i in (0, 137, 249):  # each line's own vector, at its own position
        expected = vectors.text_vector(
            "text-embedding-async-v2", texts[i], 1536, text_type="document"
        )
        assert np.allclose(result.require_dense()[i], expected, atol=1e-6)
    assert polls[-1] == "SUCCEEDED" and result.usage.total_tokens > 0


def test_failed_lines_are_named_never_dropped(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(task_delay=0.05)
    texts = lines(20)
    texts[4] = "   "
    texts[17] = ""
    url = put_corpus(dashscope_emulator, "holes.txt", texts)
    with pytest.raises(PartialEmbeddingError) as info:
        BatchJobs(make_client()).run(url, first_interval=0.05)
    assert info.value.failed_positions == [4, 17]
    assert "texts[4]: InvalidParameter" in str(info.value.errors[0])
    partial = info.value.partial
    assert partial.dense is not None and partial.dense[4] is None and partial.dense[5] is not None


def test_a_failed_job_raises_with_the_services_code(make_client: Factory) -> None:
    with pytest.raises(JobFailedError) as info:
        BatchJobs(make_client()).run("https://example.com/unreachable.txt", first_interval=0.05)
    assert info.value.code == "InvalidURL"


def test_cancel_a_pending_job(make_client: Factory, dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(task_delay=5.0)
    jobs = BatchJobs(make_client())
    task = jobs.submit(put_corpus(dashscope_emulator, "slow.txt", lines(5)))
    jobs.cancel(task.task_id)
    status = jobs.wait(task.task_id, first_interval=0.05)
    assert status.status == "CANCELED"
    with pytest.raises(JobFailedError, match="CANCELED"):
        jobs.result(status)


def test_bad_job_arguments_fail_before_submitting(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    jobs = BatchJobs(make_client())
    with pytest.raises(InvalidInputError, match="not an async batch model"):
        jobs.submit("https://example.com/a.txt", model="text-embedding-v4")
    with pytest.raises(InvalidInputError, match="http"):
        jobs.submit("/local/path.txt")
    assert dashscope_emulator.stats()["requests"] == 0


def test_resume_after_the_process_is_killed_mid_job(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    dashscope_emulator.configure(task_delay=2.0)
    texts = lines(40)
    url = put_corpus(dashscope_emulator, "resume.txt", texts)
    state = tmp_path / "job.json"
    script = (
        "import sys\n"
        "from dashscope_embed import DashScopeClient\n"
        "from dashscope_embed.jobs import BatchJobs\n"
        f"client = DashScopeClient(api_key={dashscope_emulator.api_key!r}, "
        f"base_url={dashscope_emulator.base_url!r})\n"
        f"BatchJobs(client).run({url!r}, state_file={str(state)!r}, first_interval=0.05)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not state.exists():
        assert time.monotonic() < deadline, "the worker never wrote its state file"
        time.sleep(0.02)
    worker.kill()  # mid-wait: the task is submitted, the result not yet fetched
    worker.wait(timeout=10)
    task_id = json.loads(state.read_text())["task_id"]

    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )
    result = BatchJobs(client).run(url, state_file=state, first_interval=0.05)
    assert len(result) == 40
    stats = dashscope_emulator.stats()
    assert stats["by_endpoint"][CREATE] == 1  # resumed, not resubmitted
    assert stats["duplicate_embeddings"] == 0 and stats["texts_embedded"] == 40
    assert BatchJobs(client).status(task_id).status == "SUCCEEDED"
    with pytest.raises(InvalidInputError, match="belongs to another job"):
        BatchJobs(client).run("https://example.com/other.txt", state_file=state)


# ------------------------------------------------------------------ OpenAI-compatible Batch API
BATCH_CREATE = "POST /compatible-mode/v1/batches"


def test_batch_api_run_matches_the_synchronous_vectors(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(task_delay=0.05)
    texts = lines(35)
    client = make_client()
    result = BatchAPIJobs(client).run(texts, dimension=256, first_interval=0.05)
    assert len(result) == 35 and result.dimension == 256
    direct = client.embed(texts, dimension=256)
    assert np.allclose(result.require_dense(), direct.require_dense(), atol=1e-6)
    sent = dashscope_emulator.requests("/compatible-mode/v1/batches")
    assert sent[0]["json"]["endpoint"] == "/v1/embeddings"


def test_batch_api_names_the_lines_the_service_refused(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    # Content inspection is the service's alone: no client can foresee it.
    dashscope_emulator.configure(task_delay=0.05, blocked_phrase="forbidden words")
    texts = lines(12)
    texts[7] = "a line with forbidden words in it"
    with pytest.raises(PartialEmbeddingError) as info:
        BatchAPIJobs(make_client()).run(texts, first_interval=0.05)
    assert info.value.failed_positions == [7]
    assert "inappropriate content" in str(info.value.errors[0])
    assert info.value.partial.dense is not None and info.value.partial.dense[6] is not None


def test_batch_api_refuses_too_many_texts_and_too_long_ones_before_uploading(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    jobs = BatchAPIJobs(make_client(), max_requests=20)
    with pytest.raises(InvalidInputError) as info:
        jobs.run(lines(23))
    assert info.value.positions == [20]  # the first text that does not fit
    assert "at most 20 requests" in str(info.value) and "23 texts" in str(info.value)
    small_file = BatchAPIJobs(make_client(), max_file_bytes=1_000)
    with pytest.raises(InvalidInputError, match="1,000-byte limit") as info:
        small_file.run(lines(23))
    assert info.value.positions and 0 < info.value.positions[0] < 23
    too_long = lines(5)
    too_long[3] = "word " * 9000
    with pytest.raises(InvalidInputError, match="exceeds the model's limit") as info:
        jobs.run(too_long)
    assert info.value.positions == [3]
    assert dashscope_emulator.stats()["requests"] == 0  # nothing uploaded, nothing billed


def test_batch_api_cancel(make_client: Factory, dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(task_delay=4.0)
    jobs = BatchAPIJobs(make_client())
    batch = jobs.submit(lines(3))
    assert jobs.cancel(batch.batch_id).status == "cancelling"
    status = jobs.wait(batch.batch_id, first_interval=0.1)
    assert status.status == "cancelled"
    with pytest.raises(PartialEmbeddingError) as info:
        jobs.result(status, 3)
    assert info.value.failed_positions == [0, 1, 2]


def test_batch_api_resumes_from_its_state_file(
    make_client: Factory, dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    dashscope_emulator.configure(task_delay=0.3)
    texts = lines(8)
    jobs = BatchAPIJobs(make_client())
    submitted = jobs.submit(texts)  # a first process submitted, saved its state, died
    state = tmp_path / "batch.json"
    BatchState(
        submitted.batch_id, "text-embedding-v4", 8, _fingerprint(texts, "text-embedding-v4", None)
    ).save(state)
    result = jobs.run(texts, state_file=state, first_interval=0.05)
    assert len(result) == 8
    assert dashscope_emulator.stats()["by_endpoint"][BATCH_CREATE] == 1
    with pytest.raises(InvalidInputError, match="belongs to another batch"):
        jobs.run(lines(9), state_file=state)


def test_framework_classes_embed_through_a_batch_job(dashscope_emulator: Emulator) -> None:
    from langchain_ext import DashScopeEmbeddings
    from llama_index_ext import DashScopeEmbedding

    dashscope_emulator.configure(task_delay=0.05)
    connect = {"api_key": dashscope_emulator.api_key, "base_url": dashscope_emulator.base_url}
    texts = lines(23)
    llama = DashScopeEmbedding(**connect, dimension=128)
    via_llama = llama.embed_documents_via_batch_job(texts, first_interval=0.05)
    chain = DashScopeEmbeddings(**connect, dimension=128)
    via_chain = chain.embed_documents_via_batch_job(texts, first_interval=0.05)
    assert np.allclose(via_llama, via_chain, atol=1e-6)
    assert np.allclose(via_llama, llama.get_text_embedding_batch(texts), atol=1e-6)
    assert dashscope_emulator.stats()["by_endpoint"][BATCH_CREATE] == 2  # explicit, twice


def test_batch_api_failed_batch_raises_with_the_services_errors(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    import io

    import openai

    dashscope_emulator.configure(task_delay=0.05)
    # A batch whose file fails validation (created with the official SDK: ours never
    # writes a bad line), then followed and read through this package.
    oai = openai.OpenAI(
        api_key=dashscope_emulator.api_key,
        max_retries=0,
        base_url=dashscope_emulator.compatible_base_url,
    )
    bad = {"custom_id": "0", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    uploaded = oai.files.create(
        file=("bad.jsonl", io.BytesIO(json.dumps(bad).encode())), purpose="batch"
    )
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    jobs = BatchAPIJobs(make_client())
    status = jobs.wait(batch.id, first_interval=0.05)
    assert status.status == "failed" and status.errors[0]["code"] == "url_not_found"
    with pytest.raises(JobFailedError, match="not supported by the Batch API"):
        jobs.result(status, 1)
