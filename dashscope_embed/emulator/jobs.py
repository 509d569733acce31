"""Long-running work in the emulator: async batch tasks, the Batch API and its files.

The emulator serves input and result files itself, so a whole job runs offline: upload
an input file with ``PUT /emulator/files/NAME`` (or the Batch API's ``POST /files``),
point a task at ``http://127.0.0.1:PORT/emulator/files/NAME``, and download the result
from the URL the finished task reports.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from dashscope_embed.emulator import text, vectors
from dashscope_embed.emulator.facts import SERVICE_MODELS, ServiceModel
from dashscope_embed.emulator.files import FILES_MARKER, StoredFile
from dashscope_embed.emulator.http import Request, Response, new_request_id
from dashscope_embed.emulator.service import (
    INSPECTION_FAILED,
    INSPECTION_MESSAGE,
    Reply,
    Service,
    ServiceError,
    invalid,
    parse_json_object,
)
from dashscope_embed.emulator.state import embedding_key

MAX_TASK_LINES = 100_000
MAX_RUNNING_TASKS = 3
MAX_QUEUED_TASKS = 50
_BEIJING = timezone(timedelta(hours=8))
TERMINAL_TASK_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"})


def _beijing_time(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, _BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class Task:
    task_id: str
    model: str
    input_url: str
    text_type: str | None
    origin: str
    request_id: str
    status: str = "PENDING"
    submit_time: float = field(default_factory=time.time)
    scheduled_time: float | None = None
    end_time: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    tokens: int = 0
    result_url: str | None = None
    code: str | None = None
    message: str | None = None
    runner: asyncio.Task[None] | None = None

    def output(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "submit_time": _beijing_time(self.submit_time),
        }
        if self.scheduled_time is not None:
            out["scheduled_time"] = _beijing_time(self.scheduled_time)
        if self.end_time is not None:
            out["end_time"] = _beijing_time(self.end_time)
        if self.status != "PENDING":
            out["task_metrics"] = {
                "TOTAL": self.total,
                "SUCCEEDED": self.succeeded,
                "FAILED": self.failed,
            }
        if self.result_url:
            out["url"] = self.result_url
        if self.code:
            out["code"] = self.code
            out["message"] = self.message
        return out


@dataclass
class Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict[str, Any] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    runner: asyncio.Task[None] | None = None
    cancel_requested: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": self.errors,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": None,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": None,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


class JobStore:
    """Files, async tasks and batches of one emulator."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.files = service.files
        self.tasks: dict[str, Task] = {}
        self.batches: dict[str, Batch] = {}
        self._running: asyncio.Semaphore | None = None

    @property
    def running_gate(self) -> asyncio.Semaphore:
        # Created lazily: it must belong to the server's event loop.
        if self._running is None:
            self._running = asyncio.Semaphore(MAX_RUNNING_TASKS)
        return self._running

    async def shutdown(self) -> None:
        runners = [t.runner for t in self.tasks.values() if t.runner] + [
            b.runner for b in self.batches.values() if b.runner
        ]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    def _reply(self, status: int, payload: Any) -> Reply:
        return Reply(Response.json(status, payload))

    # ------------------------------------------------------------------ async tasks
    async def create_task(self, request: Request) -> Reply:

        body = parse_json_object(request.body)
        name = body.get("model")
        spec = SERVICE_MODELS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise invalid("Model not exist.", "model")
        if spec.kind != "async-batch":
            raise ServiceError(
                403, "AccessDenied", "Current user api does not support asynchronous calls."
            )
        payload = body.get("input")
        url = payload.get("url") if isinstance(payload, dict) else None
        if not isinstance(url, str) or not url:
            raise invalid("Input should contain a file url.: input.url", "input.url")
        parameters = body.get("parameters") or {}
        text_type = parameters.get("text_type") if isinstance(parameters, dict) else None
        if text_type is not None and text_type not in ("query", "document"):
            raise invalid(f"text_type should be one of ['query', 'document'], got {text_type!r}.")
        active = sum(1 for t in self.tasks.values() if t.status in ("PENDING", "RUNNING"))
        if active >= MAX_QUEUED_TASKS:
            raise ServiceError(429, "Throttling", "Too many tasks queued, please try again later.")
        task = Task(
            task_id=str(uuid.uuid4()),
            model=spec.name,
            input_url=url,
            text_type=text_type,
            origin=request.origin,
            request_id=request.request_id,
        )
        self.tasks[task.task_id] = task
        task.runner = asyncio.get_running_loop().create_task(self._guard_task(task, spec))
        return self._reply(
            200,
            {
                "output": {"task_status": "PENDING", "task_id": task.task_id},
                "request_id": request.request_id,
            },
        )

    async def _guard_task(self, task: Task, spec: ServiceModel) -> None:
        try:
            await self._run_task(task, spec)
        except Exception as exc:  # an emulator bug must show, not leave a task hanging
            self._fail_task(task, "InternalError", f"emulator error: {exc!r}")

    async def _run_task(self, task: Task, spec: ServiceModel) -> None:
        settings = self.service.settings
        await asyncio.sleep(settings.task_delay)
        if task.status != "PENDING":
            return
        async with self.running_gate:
            if task.status != "PENDING":
                return
            task.status = "RUNNING"
            task.scheduled_time = time.time()
            content = self.files.read_own_url(task.input_url)
            if content is None:
                self._fail_task(
                    task,
                    "InvalidURL",
                    f"Failed to download the input file from {task.input_url}: the "
                    "emulator can only read files it serves (PUT /emulator/files/NAME).",
                )
                return
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                self._fail_task(task, "InvalidFile", "The input file is not valid UTF-8 text.")
                return
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()  # a trailing newline ends the last line; it is not an empty one
            lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            if not lines:
                self._fail_task(task, "InvalidFile", "The input file is empty.")
                return
            if len(lines) > MAX_TASK_LINES:
                self._fail_task(
                    task,
                    "InvalidFile",
                    f"The input file has {len(lines)} lines; at most {MAX_TASK_LINES} are allowed.",
                )
                return
            task.total = len(lines)
            if settings.task_seconds_per_line:
                await asyncio.sleep(settings.task_seconds_per_line * len(lines))
            self._finish_task(task, spec, lines)

    def _finish_task(self, task: Task, spec: ServiceModel, lines: list[str]) -> None:

        text_type = task.text_type or "document"
        out = []
        keys = []
        for i, line in enumerate(lines):
            problem = text.line_problem(spec, line)
            if problem is not None:
                task.failed += 1
                out.append({"text_index": i, "code": "InvalidParameter", "message": problem})
                continue
            if self.service.blocked(line):
                task.failed += 1
                out.append(
                    {"text_index": i, "code": INSPECTION_FAILED, "message": INSPECTION_MESSAGE}
                )
                continue
            vector = vectors.text_vector(
                spec.name, line, spec.default_dimension, text_type=text_type
            )
            task.succeeded += 1
            task.tokens += vectors.count_tokens(line, end_of_text=spec.bills_end_of_text)
            keys.append(
                embedding_key(spec.name, line, text_type, None, spec.default_dimension, "dense")
            )
            out.append({"text_index": i, "embedding": vector.tolist()})
        body = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in out)
        name = f"results/{task.task_id}_output_{int(time.time() * 1000)}.txt.gz"
        self.files[name] = StoredFile(
            name, name.rsplit("/", 1)[-1], "task-result", gzip.compress(body.encode("utf-8"))
        )
        task.result_url = f"{task.origin}{FILES_MARKER}{name}"
        task.status = "SUCCEEDED"
        task.end_time = time.time()
        state = self.service.state
        with state.lock:
            state.stats.texts_embedded += task.succeeded
            state.stats.tokens += task.tokens
        state.record_delivered(keys)

    def _fail_task(self, task: Task, code: str, message: str) -> None:
        task.status = "FAILED"
        task.code = code
        task.message = message
        task.end_time = time.time()

    async def route_tasks(self, request: Request, rest: str) -> Reply:

        if rest == "/tasks" and request.method == "GET":
            return self._list_tasks(request)
        parts = rest.split("/")  # ["", "tasks", id, ("cancel")]
        if len(parts) == 3 and request.method == "GET":
            task = self.tasks.get(parts[2])
            output = task.output() if task else {"task_id": parts[2], "task_status": "UNKNOWN"}
            payload: dict[str, Any] = {"request_id": request.request_id, "output": output}
            if task and task.status == "SUCCEEDED":
                payload["usage"] = {"total_tokens": task.tokens}
            return self._reply(200, payload)
        if len(parts) == 4 and parts[3] == "cancel" and request.method == "POST":
            task = self.tasks.get(parts[2])
            if task is None or task.status != "PENDING":
                raise ServiceError(
                    400,
                    "UnsupportedOperation",
                    "Failed to cancel the task, please confirm if the task is in PENDING status.",
                )
            task.status = "CANCELED"
            task.end_time = time.time()
            return self._reply(200, {"request_id": request.request_id})
        raise ServiceError(404, "NotFound", f"No route for {request.method} /api/v1{rest}")

    def _list_tasks(self, request: Request) -> Reply:
        page_no = max(1, int(request.query_value("page_no", "1") or 1))
        page_size = max(1, min(100, int(request.query_value("page_size", "10") or 10)))
        status = request.query_value("status")
        model_name = request.query_value("model_name")
        tasks = [
            t
            for t in sorted(self.tasks.values(), key=lambda t: t.submit_time, reverse=True)
            if (status is None or t.status == status)
            and (model_name is None or t.model == model_name)
        ]
        page = tasks[(page_no - 1) * page_size : page_no * page_size]
        data = [
            {
                "task_id": t.task_id,
                "status": t.status,
                "model_name": t.model,
                "request_id": t.request_id,
                "region": "cn-beijing",
                "gmt_create": int(t.submit_time * 1000),
                "start_time": int((t.scheduled_time or t.submit_time) * 1000),
                "end_time": int(t.end_time * 1000) if t.end_time else None,
            }
            for t in page
        ]
        return self._reply(
            200,
            {
                "total": len(tasks),
                "data": data,
                "total_page": max(1, math.ceil(len(tasks) / page_size)),
                "page_no": page_no,
                "page_size": page_size,
                "request_id": request.request_id,
            },
        )

    # ------------------------------------------------------------------ Batch API
    async def route_batch_api(self, request: Request, rest: str) -> Reply:

        parts = rest.strip("/").split("/")
        if parts[0] == "files":
            if len(parts) == 1 and request.method == "POST":
                return self._upload_file(request)
            if len(parts) == 1 and request.method == "GET":
                data = [f.describe() for f in self.files.values() if f.id.startswith("file-")]
                return self._reply(200, {"object": "list", "data": data, "has_more": False})
            stored = self.files.get(parts[1]) if len(parts) >= 2 else None
            if stored is None:
                raise ServiceError(
                    404,
                    "NotFound",
                    f"File {parts[1] if len(parts) > 1 else ''} not found.",
                    compatible_code="not_found",
                )
            if len(parts) == 2 and request.method == "GET":
                return self._reply(200, stored.describe())
            if len(parts) == 2 and request.method == "DELETE":
                del self.files[stored.id]
                return self._reply(200, {"id": stored.id, "object": "file", "deleted": True})
            if len(parts) == 3 and parts[2] == "content" and request.method == "GET":
                return Reply(Response(200, stored.content, "application/octet-stream"))
        if parts[0] == "batches":
            if len(parts) == 1 and request.method == "POST":
                return self._create_batch(request)
            if len(parts) == 1 and request.method == "GET":
                return self._list_batches(request)
            batch = self.batches.get(parts[1]) if len(parts) >= 2 else None
            if batch is None:
                raise ServiceError(404, "NotFound", "Batch not found.", compatible_code="not_found")
            if len(parts) == 2 and request.method == "GET":
                return self._reply(200, batch.describe())
            if len(parts) == 3 and parts[2] == "cancel" and request.method == "POST":
                if batch.status in ("validating", "in_progress"):
                    batch.cancel_requested = True
                    batch.status = "cancelling"
                    batch.cancelling_at = int(time.time())
                return self._reply(200, batch.describe())
        raise ServiceError(
            404, "NotFound", f"No route for {request.method} {rest}", compatible_code="not_found"
        )

    def _upload_file(self, request: Request) -> Reply:

        fields = parse_multipart(request.headers.get("content-type", ""), request.body)
        upload = fields.get("file")
        if upload is None:
            raise invalid("Missing file in the form data.", "file")
        purpose = fields.get("purpose", (None, b"batch"))[1].decode("utf-8", "replace")
        filename, content = upload
        file_id = f"file-batch-{uuid.uuid4().hex[:24]}"
        stored = StoredFile(file_id, filename or "upload.jsonl", purpose, content)
        self.files[file_id] = stored
        return self._reply(200, stored.describe())

    def _create_batch(self, request: Request) -> Reply:

        body = parse_json_object(request.body)
        input_file_id = body.get("input_file_id")
        endpoint = body.get("endpoint")
        if not isinstance(input_file_id, str) or input_file_id not in self.files:
            raise ServiceError(
                404, "NotFound", f"File {input_file_id} not found.", compatible_code="not_found"
            )
        if endpoint not in ("/v1/embeddings", "/v1/chat/completions", "/v1/chat/ds-test"):
            raise invalid(f"Unsupported endpoint {endpoint!r}.", "endpoint")
        if endpoint != "/v1/embeddings":
            raise invalid("The emulator serves batches for /v1/embeddings only.", "endpoint")
        batch = Batch(
            id=f"batch_{uuid.uuid4()}",
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=str(body.get("completion_window") or "24h"),
            metadata=body.get("metadata"),
        )
        self.batches[batch.id] = batch
        batch.runner = asyncio.get_running_loop().create_task(self._guard_batch(batch))
        return self._reply(200, batch.describe())

    def _list_batches(self, request: Request) -> Reply:
        limit = max(1, min(100, int(request.query_value("limit", "20") or 20)))
        after = request.query_value("after")
        ordered = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        page = ordered[:limit]
        if not page:
            return self._reply(
                200,
                {
                    "object": "list",
                    "data": None,
                    "first_id": None,
                    "last_id": None,
                    "has_more": False,
                },
            )
        return self._reply(
            200,
            {
                "object": "list",
                "data": [b.describe() for b in page],
                "first_id": page[0].id,
                "last_id": page[-1].id,
                "has_more": len(ordered) > limit,
            },
        )

    async def _guard_batch(self, batch: Batch) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:  # an emulator bug must show, not leave a batch hanging
            batch.status = "failed"
            batch.failed_at = int(time.time())
            batch.errors = {
                "object": "list",
                "data": [
                    {
                        "code": "internal_error",
                        "message": f"emulator error: {exc!r}",
                        "param": None,
                        "line": None,
                    }
                ],
            }

    async def _run_batch(self, batch: Batch) -> None:

        settings = self.service.settings
        await asyncio.sleep(settings.task_delay / 2)
        lines = [
            ln
            for ln in self.files[batch.input_file_id]
            .content.decode("utf-8", "replace")
            .splitlines()
            if ln.strip()
        ]
        requests, errors = [], []
        for number, line in enumerate(lines, start=1):
            try:
                item = json.loads(line)
            except ValueError:
                errors.append(
                    {
                        "code": "invalid_json_line",
                        "message": "Line is not valid JSON.",
                        "param": None,
                        "line": number,
                    }
                )
                continue
            if item.get("url") != batch.endpoint:
                errors.append(
                    {
                        "code": "url_not_found",
                        "message": f"The provided url '{item.get('url')}' is not supported "
                        "by the Batch API.",
                        "param": "url",
                        "line": number,
                    }
                )
                continue
            if not isinstance(item.get("custom_id"), str) or not isinstance(item.get("body"), dict):
                errors.append(
                    {
                        "code": "invalid_request",
                        "message": "Each line needs custom_id and body.",
                        "param": None,
                        "line": number,
                    }
                )
                continue
            requests.append(item)
        if errors or not requests:
            batch.status = "failed"
            batch.failed_at = int(time.time())
            batch.errors = {
                "object": "list",
                "data": errors
                or [
                    {
                        "code": "empty_file",
                        "message": "The input file has no requests.",
                        "param": None,
                        "line": None,
                    }
                ],
            }
            return
        batch.status = "in_progress"
        batch.in_progress_at = int(time.time())
        batch.total = len(requests)
        await asyncio.sleep(settings.task_delay / 2)
        outputs, failures, keys = [], [], []
        state = self.service.state
        for index, item in enumerate(requests):
            request_id = new_request_id()
            if batch.cancel_requested:
                failures.append(
                    _batch_line(
                        item,
                        request_id,
                        400,
                        {
                            "error": {
                                "code": "batch_cancelled",
                                "message": "The batch was cancelled.",
                            }
                        },
                    )
                )
                continue
            try:
                job = text.compatible_job(self.service, item["body"])
            except ServiceError as error:
                failures.append(
                    _batch_line(
                        item,
                        request_id,
                        error.status,
                        {
                            "error": {
                                "code": error.compatible_code or error.code,
                                "message": error.message,
                                "type": error.compatible_type or error.code,
                            }
                        },
                    )
                )
                continue
            outputs.append(_batch_line(item, request_id, 200, job.payload(request_id)))
            keys.extend(job.keys())
            with state.lock:
                state.stats.texts_embedded += len(job.texts)
                state.stats.tokens += job.tokens
            if settings.task_seconds_per_line:
                await asyncio.sleep(settings.task_seconds_per_line * len(job.texts))
            if index % 50 == 49:
                await asyncio.sleep(0)  # stay responsive to polls during big batches
        state.record_delivered(keys)
        now = int(time.time())
        batch.completed = len(outputs)
        batch.failed = len(failures)
        if outputs:
            batch.output_file_id = self._store_jsonl("file-batch_output", outputs)
        if failures:
            batch.error_file_id = self._store_jsonl("file-batch_error", failures)
        if batch.cancel_requested:
            batch.status = "cancelled"
            batch.cancelled_at = now
        else:
            batch.finalizing_at = now
            batch.status = "completed"
            batch.completed_at = now

    def _store_jsonl(self, prefix: str, rows: list[dict[str, Any]]) -> str:
        file_id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        content = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in rows)
        self.files[file_id] = StoredFile(file_id, f"{file_id}.jsonl", "batch_output", content)
        return file_id


def _batch_line(
    item: dict[str, Any], request_id: str, status: int, body: dict[str, Any]
) -> dict[str, Any]:
    error = body.get("error") if status != 200 else None
    return {
        "id": request_id,
        "custom_id": item.get("custom_id"),
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": error,
    }


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``{field: (filename, bytes)}`` from a multipart/form-data body."""

    boundary = None
    for part in content_type.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        raise invalid("Expected multipart/form-data with a boundary.", "file")
    fields: dict[str, tuple[str | None, bytes]] = {}
    delimiter = b"--" + boundary.encode("latin-1")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for attribute in line.split(";")[1:]:
                    key, _, value = attribute.strip().partition("=")
                    if key == "name":
                        name = value.strip('"')
                    elif key == "filename":
                        filename = value.strip('"')
        if name:
            fields[name] = (filename, data)
    return fields
