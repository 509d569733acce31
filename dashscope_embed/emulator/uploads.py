"""The service's temporary upload storage, as the official SDK uses it (§6.1).

``GET /api/v1/uploads?action=getPolicy&model=M`` (authenticated) returns a signed policy
naming an upload host; here that host is this emulator's ``/emulator/oss``, which takes
the SDK's form POST and stores the file as ``oss://{key}``. The storage checks what the
real one would (the policy's signature and expiry, the key inside the policy's folder,
no overwrite, the size limit) and one thing more: a request that carries an API key is
refused and counted (``keys_sent_to_upload_host``), because the key must never leave for
a host other than the service's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from dashscope_embed.emulator.files import StoredFile
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.jobs import parse_multipart
from dashscope_embed.emulator.service import Reply, Service, ServiceError, invalid

UPLOAD_PATH = "/emulator/oss"
OSS_PREFIX = "oss://"
MAX_FILE_MB = 1024
EXPIRES_IN = 300
_SECRET = b"emulator-oss-signing-key"


def _sign(policy: str) -> str:
    return base64.b64encode(hmac.new(_SECRET, policy.encode(), hashlib.sha1).digest()).decode()


def get_policy(service: Service, request: Request) -> Reply:
    """An upload policy for the model named in the query."""
    if request.query.get("action", [""])[0] != "getPolicy":
        raise invalid("action must be getPolicy.", "action")
    model = request.query.get("model", [""])[0]
    if not model:
        raise invalid("model is required.", "model")
    folder = f"dashscope-instant/{uuid.uuid4().hex}/{time.strftime('%Y-%m-%d')}"
    document = {
        "expiration": time.time() + EXPIRES_IN,
        "conditions": [
            ["starts-with", "$key", folder],
            ["content-length-range", 0, MAX_FILE_MB * 1024 * 1024],
        ],
    }
    policy = base64.b64encode(json.dumps(document).encode()).decode()
    data = {
        "policy": policy,
        "signature": _sign(policy),
        "upload_dir": folder,
        "upload_host": f"{request.origin}{UPLOAD_PATH}",
        "expire_in_seconds": EXPIRES_IN,
        "max_file_size_mb": MAX_FILE_MB,
        "capacity_limit_mb": 999_999_999,
        "oss_access_key_id": "LTAI-emulator",
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    return Reply(Response.json(200, {"request_id": request.request_id, "data": data}))


def _oss_error(status: int, code: str, message: str) -> Reply:
    # OSS answers in XML; the SDK only shows the text.
    body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return Reply(Response(status, body, "application/xml"))


def receive_upload(service: Service, request: Request) -> Reply:
    """The upload host: store a file posted with a valid policy."""
    state = service.state
    if "authorization" in request.headers or "x-dashscope-workspace" in request.headers:
        with state.lock:
            state.stats.keys_sent_to_upload_host += 1
        return _oss_error(400, "InvalidArgument", "An API key was sent to the upload host.")
    try:
        fields = parse_multipart(request.headers.get("content-type", ""), request.body)
    except ServiceError as error:
        return _oss_error(400, "InvalidArgument", error.message)
    text = {name: data.decode("utf-8", "replace") for name, (_, data) in fields.items()}
    policy, key = text.get("policy", ""), text.get("key", "")
    if "file" not in fields or not key:
        return _oss_error(400, "InvalidArgument", "The form needs key and file.")
    if not hmac.compare_digest(_sign(policy), text.get("Signature", "")):
        return _oss_error(403, "SignatureDoesNotMatch", "The policy's signature is wrong.")
    document: dict[str, Any] = json.loads(base64.b64decode(policy))
    if document["expiration"] < time.time():
        return _oss_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    folder = document["conditions"][0][2]
    if not key.startswith(folder + "/"):
        return _oss_error(403, "AccessDenied", "Invalid according to Policy: key.")
    content = fields["file"][1]
    if len(content) > MAX_FILE_MB * 1024 * 1024:
        return _oss_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum.")
    with state.lock:
        if key in service.uploads and text.get("x-oss-forbid-overwrite") == "true":
            return _oss_error(409, "FileAlreadyExists", "The object you specified already exists.")
        service.uploads[key] = StoredFile(key, key.rsplit("/", 1)[-1], "upload", content)
        state.stats.uploads += 1
    return Reply(Response(int(text.get("success_action_status", "204") or 204), b"", "text/plain"))


def read_upload(service: Service, request: Request, url: str, where: str) -> StoredFile:
    """The file an ``oss://`` URL names; the request must opt in to resolving it."""
    if request.headers.get("x-dashscope-ossresourceresolve", "").lower() != "enable":
        raise invalid(
            f"{where}: oss:// resources need the header X-DashScope-OssResourceResolve: enable.",
            "input.contents",
        )
    stored = service.uploads.get(urlsplit(url).netloc + urlsplit(url).path)
    if stored is None:
        raise invalid(f"{where}: the uploaded file {url!r} was not found.", "input.contents")
    return stored
