"""Async batch embedding tasks (``text-embedding-async-v1`` / ``-v2``): submit, wait, fetch.

The service embeds a whole text file (one text per line, up to 100,000 lines) on its
own infrastructure and leaves a gzip'd result file behind a signed URL. This module
submits such a task, polls it with backoff, cancels it, and turns the result file into
an :class:`EmbeddingResult` in line order. A line the service could not embed is never
dropped: the call raises :class:`PartialEmbeddingError` naming every failed line and
why, with the finished vectors attached.

With ``state_file``, the task id is written down before waiting, so a restarted process
resumes the same task instead of submitting (and paying for) it again.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from dashscope_embed.errors import (
    APIError,
    BadResponseError,
    InputProblem,
    InvalidInputError,
    PartialEmbeddingError,
)
from dashscope_embed.models import ModelSpec, TextType, resolve_model
from dashscope_embed.protocol.common import encode_json, load_json
from dashscope_embed.protocol.native import TEXT_EMBEDDING_PATH
from dashscope_embed.types import EmbeddingResult, PartialResult, Usage

if TYPE_CHECKING:
    from dashscope_embed.client import DashScopeClient

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


class JobFailedError(APIError):
    """The task as a whole ended FAILED, CANCELED or UNKNOWN (``code`` says why)."""


@dataclass(frozen=True)
class TaskStatus:
    """One poll of a task: its state, line counts and (once done) the result URL."""

    task_id: str
    status: str
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    result_url: str | None = None
    code: str | None = None
    message: str | None = None
    total_tokens: int = 0
    request_id: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_reply(cls, body: Any) -> TaskStatus:
        output = body.get("output") if isinstance(body, dict) else None
        if not isinstance(output, dict) or "task_id" not in output:
            raise BadResponseError(f"task reply has no output.task_id: {body!r:.200}")
        metrics = output.get("task_metrics") or {}
        usage = body.get("usage") or {}
        return cls(
            task_id=str(output["task_id"]),
            status=str(output.get("task_status", "UNKNOWN")),
            total=int(metrics.get("TOTAL") or 0),
            succeeded=int(metrics.get("SUCCEEDED") or 0),
            failed=int(metrics.get("FAILED") or 0),
            result_url=output.get("url"),
            code=output.get("code"),
            message=output.get("message"),
            total_tokens=int(usage.get("total_tokens") or 0),
            request_id=body.get("request_id"),
        )


S = TypeVar("S", bound="_StateFile")


def write_whole(path: Path, text: str) -> None:
    """Replace ``path``'s text in one step: a process killed at any moment leaves the
    old text or the new one, never an empty or half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class _StateFile:
    """A small JSON file that lets a restarted process resume the same job."""

    def save(self, path: Path) -> None:
        write_whole(path, json.dumps(asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def load(cls: type[S], path: Path) -> S | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class _Pollable(Protocol):
    @property
    def done(self) -> bool: ...

    @property
    def status(self) -> str: ...


P = TypeVar("P", bound=_Pollable)


def _poll(
    fetch: Callable[[], P],
    what: str,
    first_interval: float,
    max_interval: float,
    timeout: float | None,
    on_poll: Callable[[P], None] | None,
) -> P:
    """Poll ``fetch`` until its status is done, doubling the interval up to a cap."""
    started = time.monotonic()
    interval = first_interval
    while True:
        status = fetch()
        if on_poll is not None:
            on_poll(status)
        if status.done:
            return status
        if timeout is not None and time.monotonic() - started + interval > timeout:
            raise TimeoutError(f"{what} still {status.status} after {timeout:.0f} s")
        time.sleep(interval)
        interval = min(max_interval, interval * 2)


@dataclass
class JobState(_StateFile):
    """What a resumed process needs: written to ``state_file`` before waiting."""

    task_id: str
    model: str
    input_url: str
    text_type: str | None = None
    submitted_at: float = field(default_factory=time.time)


class BatchJobs:
    """Async batch tasks through a :class:`DashScopeClient` (its key, host and retries).

    Example::

        jobs = BatchJobs(client)
        result = jobs.run("https://.../corpus.txt", state_file="corpus.job.json")
        result.dense[0][:3]
    """

    def __init__(self, client: DashScopeClient) -> None:
        self.client = client

    @property
    def _base(self) -> str:
        return self.client.config.native_base_url

    def submit(
        self,
        input_url: str,
        *,
        model: str | ModelSpec = "text-embedding-async-v2",
        text_type: TextType | None = None,
    ) -> TaskStatus:
        """Start a task over the file at ``input_url`` (one text per line)."""
        spec = resolve_model(model)
        if spec.kind != "async-batch":
            raise InvalidInputError(
                f"{spec.name} is not an async batch model; use text-embedding-async-v1/v2"
            )
        if text_type not in (None, "query", "document"):
            raise InvalidInputError(f"text_type must be 'query' or 'document', got {text_type!r}")
        if not input_url.startswith(("http://", "https://", "oss://")):
            raise InvalidInputError(
                f"input_url must be an http(s) or oss:// URL, got {input_url!r}"
            )
        parameters = {"text_type": text_type} if text_type else {}
        body = {"model": spec.name, "input": {"url": input_url}, "parameters": parameters}
        content = self.client._transport.post(
            self._base + TEXT_EMBEDDING_PATH, body, extra_headers={"X-DashScope-Async": "enable"}
        )
        return TaskStatus.from_reply(load_json(content))

    def status(self, task_id: str) -> TaskStatus:
        """Poll once (``GET /tasks/{id}``); an unknown id reports status ``UNKNOWN``."""
        return TaskStatus.from_reply(load_json(self.client._transport.get(self._tasks(task_id))))

    def cancel(self, task_id: str) -> None:
        """Cancel a task that is still PENDING (the service refuses otherwise)."""
        self.client._transport.post(self._tasks(task_id) + "/cancel", {})

    def wait(
        self,
        task_id: str,
        *,
        first_interval: float = 1.0,
        max_interval: float = 8.0,
        timeout: float | None = 24 * 3600,
        on_poll: Callable[[TaskStatus], None] | None = None,
    ) -> TaskStatus:
        """Poll until the task ends, backing off from ``first_interval`` to ``max_interval``."""
        return _poll(
            lambda: self.status(task_id),
            f"task {task_id}",
            first_interval,
            max_interval,
            timeout,
            on_poll,
        )

    def result(
        self, status: TaskStatus, *, expected_lines: int | None = None, model: str = ""
    ) -> EmbeddingResult:
        """Download and check a finished task's vectors, in line order.

        Raises:
            JobFailedError: the task did not succeed.
            PartialEmbeddingError: some lines failed; each is named with the reason.
            BadResponseError: the result file is missing lines or malformed.
        """
        if status.status != "SUCCEEDED" or not status.result_url:
            raise JobFailedError(
                status.message or f"task ended {status.status}",
                code=status.code or status.status,
                request_id=status.request_id,
            )
        raw = self.client._transport.download(status.result_url)
        return parse_result_file(raw, status, expected_lines, model)

    def run(
        self,
        input_url: str,
        *,
        model: str | ModelSpec = "text-embedding-async-v2",
        text_type: TextType | None = None,
        state_file: str | Path | None = None,
        expected_lines: int | None = None,
        **wait_options: Any,
    ) -> EmbeddingResult:
        """Submit (or resume, from ``state_file``), wait, and return the vectors."""
        path = Path(state_file) if state_file else None
        spec = resolve_model(model)
        state = JobState.load(path) if path else None
        if state is not None and (state.input_url != input_url or state.model != spec.name):
            raise InvalidInputError(
                f"state file {path} belongs to another job ({state.model} over "
                f"{state.input_url}); delete it or pass another state_file"
            )
        if state is None:
            submitted = self.submit(input_url, model=spec, text_type=text_type)
            state = JobState(submitted.task_id, spec.name, input_url, text_type)
            if path:
                state.save(path)
        status = self.wait(state.task_id, **wait_options)
        return self.result(status, expected_lines=expected_lines, model=spec.name)

    def _tasks(self, task_id: str) -> str:
        if not task_id or "/" in task_id:
            raise InvalidInputError(f"not a task id: {task_id!r}")
        return f"{self._base}/tasks/{task_id}"


def parse_result_file(
    raw: bytes, status: TaskStatus, expected_lines: int | None = None, model: str = ""
) -> EmbeddingResult:
    """One JSON object per input line: ``{"text_index", "embedding"}`` or, for a line the
    service could not embed, ``{"text_index", "code", "message"}`` (gzip'd or plain)."""
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    rows: dict[int, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            index = int(row["text_index"])
        except (ValueError, KeyError, TypeError):
            raise BadResponseError(
                f"result file line {number} is not a result row: {line[:120]!r}",
                request_id=status.request_id,
            ) from None
        if index in rows:
            raise BadResponseError(f"result file lists line {index} twice")
        rows[index] = row
    count = expected_lines if expected_lines is not None else (status.total or len(rows))
    missing = [i for i in range(count) if i not in rows]
    if missing or any(i >= count for i in rows):
        raise BadResponseError(
            f"result file does not match the {count} input lines (missing {missing[:10]})",
            request_id=status.request_id,
        )
    dense: list[list[float] | None] = []
    reasons: dict[int, str] = {}
    for i in range(count):
        row = rows[i]
        vector = row.get("embedding")
        if isinstance(vector, list) and vector:
            dense.append(vector)
            continue
        dense.append(None)
        reasons[i] = (
            f"{row.get('code') or 'Failed'}: {row.get('message') or 'no embedding returned'}"
        )
    ids = (status.request_id,) if status.request_id else ()
    return lines_to_result(dense, reasons, Usage(status.total_tokens), ids, model)


def lines_to_result(
    dense: list[list[float] | None],
    reasons: dict[int, str],
    usage: Usage,
    request_ids: tuple[str, ...],
    model: str,
) -> EmbeddingResult:
    """Every line's vector in order, or a PartialEmbeddingError naming each failed line
    (``reasons``: position → why) with the other vectors attached."""
    dimension = next((len(v) for v in dense if v is not None), None)
    if reasons:
        failed = sorted(reasons)
        partial = PartialResult(
            dense=dense,
            sparse=None,
            usage=usage,
            request_ids=request_ids,
            model=model,
            dimension=dimension,
            missing_positions=failed,
        )
        raise PartialEmbeddingError(
            partial, failed, [InvalidInputError([InputProblem(i, reasons[i])]) for i in failed]
        )
    return EmbeddingResult(
        dense=[v for v in dense if v is not None],  # every line has one here
        sparse=None,
        usage=usage,
        request_ids=request_ids,
        model=model,
        dimension=dimension,
        count=len(dense),
    )


# --------------------------------------------------------------------------- Batch API
BATCH_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})


@dataclass(frozen=True)
class BatchStatus:
    """One poll of an OpenAI-compatible batch."""

    batch_id: str
    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in BATCH_TERMINAL

    @classmethod
    def from_reply(cls, body: Any) -> BatchStatus:
        if not isinstance(body, dict) or "id" not in body:
            raise BadResponseError(f"batch reply has no id: {body!r:.200}")
        counts = body.get("request_counts") or {}
        errors = (body.get("errors") or {}).get("data") or []
        return cls(
            batch_id=str(body["id"]),
            status=str(body.get("status")),
            total=int(counts.get("total") or 0),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            output_file_id=body.get("output_file_id"),
            error_file_id=body.get("error_file_id"),
            errors=list(errors),
        )


@dataclass
class BatchState(_StateFile):
    """Written to ``state_file`` before waiting, so a restart resumes the same batch."""

    batch_id: str
    model: str
    count: int
    fingerprint: str


# DashScope does not publish the Batch API's per-batch limits; these are OpenAI's, whose
# protocol it follows. Both can be changed on BatchAPIJobs if the service differs.
BATCH_API_MAX_REQUESTS = 50_000
BATCH_API_MAX_FILE_BYTES = 200 * 1024 * 1024


def batch_file(
    texts: list[str],
    model: str,
    dimension: int | None = None,
    *,
    max_requests: int = BATCH_API_MAX_REQUESTS,
    max_file_bytes: int = BATCH_API_MAX_FILE_BYTES,
) -> bytes:
    """The Batch API request file: one ``/v1/embeddings`` request per text, ``custom_id``
    = its position (one text per line is the documented form; arrays inside a line are
    unconfirmed). A batch bigger than the service takes is refused, naming the first text
    that does not fit, before anything is uploaded."""
    if len(texts) > max_requests:
        raise InvalidInputError(
            [
                InputProblem(
                    max_requests,
                    f"a batch holds at most {max_requests:,} requests (one per text) and "
                    f"{len(texts):,} texts were given: this text and the "
                    f"{len(texts) - max_requests - 1:,} after it do not fit. Split the list "
                    "into several batches (the dashscope-embed command does this itself)",
                )
            ]
        )
    lines = []
    size = 0
    for i, text in enumerate(texts):
        body: dict[str, Any] = {"model": model, "input": text, "encoding_format": "float"}
        if dimension is not None:
            body["dimensions"] = dimension
        request = {"custom_id": str(i), "method": "POST", "url": "/v1/embeddings", "body": body}
        line = encode_json(request) + b"\n"
        size += len(line)
        if size > max_file_bytes:
            raise InvalidInputError(
                [
                    InputProblem(
                        i,
                        f"the request file would pass the Batch API's {max_file_bytes:,}-byte "
                        "limit at this text; split the list into several batches",
                    )
                ]
            )
        lines.append(line)
    return b"".join(lines)


class BatchAPIJobs:
    """The OpenAI-compatible Batch API for embeddings (``text-embedding-v4`` at half price).

    ``run(texts)`` writes the request file from your texts, uploads it, creates the
    batch, waits, and returns the vectors in input order; a text the service refused is
    named in a :class:`PartialEmbeddingError`, never dropped.
    """

    def __init__(
        self,
        client: DashScopeClient,
        *,
        max_requests: int = BATCH_API_MAX_REQUESTS,
        max_file_bytes: int = BATCH_API_MAX_FILE_BYTES,
    ) -> None:
        """
        Args:
            client: the client whose key, region and workspace the jobs use.
            max_requests: texts per batch (one request each); larger lists are refused
                before upload. DashScope does not publish this limit; the default is
                OpenAI's.
            max_file_bytes: size limit of the uploaded request file (OpenAI's, likewise).
        """
        self.client = client
        self.max_requests = max_requests
        self.max_file_bytes = max_file_bytes

    @property
    def _base(self) -> str:
        return self.client.config.compatible_base_url

    def submit(
        self,
        texts: list[str],
        *,
        model: str | ModelSpec = "text-embedding-v4",
        dimension: int | None = None,
        metadata: dict[str, str] | None = None,
    ) -> BatchStatus:
        from dashscope_embed.options import TextEmbeddingOptions, text_params
        from dashscope_embed.planner import validate_texts

        spec = resolve_model(model)
        text_params(spec, None, TextEmbeddingOptions(dimension=dimension))
        valid = validate_texts(texts)
        if not spec.openai_compatible:
            raise InvalidInputError(f"{spec.name} is not served by the Batch API")
        file = batch_file(
            valid,
            spec.name,
            dimension,
            max_requests=self.max_requests,
            max_file_bytes=self.max_file_bytes,
        )
        # Too-long texts would only be refused hours later, one line at a time.
        self.client._long_text_plan(valid, spec, "error")
        uploaded = load_json(
            self.client._transport.upload(
                self._base + "/files", "requests.jsonl", file, {"purpose": "batch"}
            )
        )
        body = {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
            "metadata": metadata or {},
        }
        return BatchStatus.from_reply(
            load_json(self.client._transport.post(self._base + "/batches", body))
        )

    def status(self, batch_id: str) -> BatchStatus:
        return BatchStatus.from_reply(
            load_json(self.client._transport.get(f"{self._base}/batches/{batch_id}"))
        )

    def cancel(self, batch_id: str) -> BatchStatus:
        return BatchStatus.from_reply(
            load_json(self.client._transport.post(f"{self._base}/batches/{batch_id}/cancel", {}))
        )

    def wait(
        self,
        batch_id: str,
        *,
        first_interval: float = 2.0,
        max_interval: float = 30.0,
        timeout: float | None = 24 * 3600,
        on_poll: Callable[[BatchStatus], None] | None = None,
    ) -> BatchStatus:
        return _poll(
            lambda: self.status(batch_id),
            f"batch {batch_id}",
            first_interval,
            max_interval,
            timeout,
            on_poll,
        )

    def result(self, status: BatchStatus, count: int, model: str = "") -> EmbeddingResult:
        """Vectors in input order from the output file; refusals from the error file."""
        if status.status == "failed" or (
            status.status != "completed" and not status.output_file_id and not status.error_file_id
        ):
            detail = "; ".join(str(e.get("message")) for e in status.errors) or status.status
            raise JobFailedError(
                f"batch {status.batch_id} {status.status}: {detail}", code=status.status
            )
        dense: list[list[float] | None] = [None] * count
        reasons: dict[int, str] = {}
        tokens = 0
        for file_id, is_error in ((status.output_file_id, False), (status.error_file_id, True)):
            if not file_id:
                continue
            raw = self.client._transport.get(f"{self._base}/files/{file_id}/content")
            for line in raw.decode("utf-8").splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                index = int(row["custom_id"])
                response = row.get("response") or {}
                body = response.get("body") or {}
                if not is_error and response.get("status_code") == 200:
                    dense[index] = body["data"][0]["embedding"]
                    tokens += int((body.get("usage") or {}).get("total_tokens") or 0)
                else:
                    error = row.get("error") or body.get("error") or {}
                    reasons[index] = f"{error.get('code') or 'Failed'}: {error.get('message')}"
        for i in range(count):  # a line in neither file was lost by the service: say so
            if dense[i] is None and i not in reasons:
                reasons[i] = f"no result for this line (batch ended {status.status})"
        return lines_to_result(dense, reasons, Usage(tokens), (), model)

    def run(
        self,
        texts: list[str],
        *,
        model: str | ModelSpec = "text-embedding-v4",
        dimension: int | None = None,
        state_file: str | Path | None = None,
        **wait_options: Any,
    ) -> EmbeddingResult:
        """Submit (or resume from ``state_file``), wait, and return the vectors."""
        spec = resolve_model(model)
        path = Path(state_file) if state_file else None
        fingerprint = _fingerprint(texts, spec.name, dimension)
        state = BatchState.load(path) if path else None
        if state is not None and state.fingerprint != fingerprint:
            raise InvalidInputError(
                f"state file {path} belongs to another batch (other texts or settings); "
                "delete it or pass another state_file"
            )
        if state is None:
            submitted = self.submit(texts, model=spec, dimension=dimension)
            state = BatchState(submitted.batch_id, spec.name, len(texts), fingerprint)
            if path:
                state.save(path)
        status = self.wait(state.batch_id, **wait_options)
        return self.result(status, state.count, spec.name)


def _fingerprint(texts: list[str], model: str, dimension: int | None) -> str:
    import hashlib

    digest = hashlib.sha256(f"{model}|{dimension}|{len(texts)}".encode())
    for text in texts:
        digest.update(b"\x1e" + text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
