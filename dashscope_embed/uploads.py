"""Local files the service cannot take inline: its temporary upload storage.

The official SDK's flow: ``GET {base}/uploads?action=getPolicy&model=...`` (with the key)
returns a signed upload policy; each file is then POSTed as a form to the policy's
``upload_host`` (*without* the key: it is another host, and the policy's signature is
its authority), and the request names it as ``oss://{key}`` with the
``X-DashScope-OssResourceResolve: enable`` header. Files are checked against the
policy's size limit before they are sent.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from dashscope_embed.config import ClientSettings
from dashscope_embed.errors import BadResponseError, InvalidInputError
from dashscope_embed.multimodal import Content
from dashscope_embed.protocol.base import HttpRequest
from dashscope_embed.protocol.common import reply_object

_POLICY_FIELDS = (
    "policy",
    "signature",
    "upload_dir",
    "upload_host",
    "oss_access_key_id",
    "x_oss_object_acl",
    "x_oss_forbid_overwrite",
)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class UploadPolicy:
    """A signed permission to put files in the service's temporary storage."""

    fields: dict[str, str]
    max_file_bytes: int | None

    @property
    def upload_host(self) -> str:
        return self.fields["upload_host"]


def policy_request(settings: ClientSettings, model: str) -> HttpRequest:
    """The authenticated request for an upload policy for ``model``'s inputs."""
    url = f"{settings.api_base('native')}/uploads?action=getPolicy&model={quote(model)}"
    return HttpRequest("GET", url, json=None, reply_limit=256 * 1024)


def parse_policy(content: bytes) -> UploadPolicy:
    """The policy from its reply; a reply without every field the upload needs, or one
    that names a plain-http host that is not this machine, is refused."""
    body, request_id = reply_object(content)
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponseError("the upload policy reply has no data object", request_id=request_id)
    missing = [name for name in _POLICY_FIELDS if not isinstance(data.get(name), str)]
    if missing:
        raise BadResponseError(
            f"the upload policy lacks {', '.join(missing)}", request_id=request_id
        )
    host = urlsplit(data["upload_host"])
    if host.scheme != "https" and not (host.scheme == "http" and host.hostname in _LOOPBACK):
        raise BadResponseError(
            f"the upload policy names {data['upload_host']!r}; files are only sent over "
            "https (or plain http on this machine)",
            request_id=request_id,
        )
    size_mb = data.get("max_file_size_mb")
    limit = int(size_mb * 1024 * 1024) if isinstance(size_mb, (int, float)) else None
    return UploadPolicy({name: data[name] for name in _POLICY_FIELDS}, limit)


def check_upload(policy: UploadPolicy, content: Content, size: int | None = None) -> None:
    """Refuse a file larger than the policy allows, before anything is uploaded."""
    size = content.size if size is None else size
    if policy.max_file_bytes is not None and size is not None and size > policy.max_file_bytes:
        raise InvalidInputError(
            f"{content.describe()} is {size / 1024 / 1024:.1f} MB; the service's upload "
            f"storage takes files of at most {policy.max_file_bytes / 1024 / 1024:.0f} MB"
        )


def upload_request(policy: UploadPolicy, content: Content) -> tuple[HttpRequest, str]:
    """The form POST that puts ``content``'s file in storage, and its ``oss://`` URL.

    The object key starts with a digest of the file, so two files of the same name
    never collide (the storage refuses to overwrite)."""
    assert content.path is not None
    path = Path(content.path)
    data = path.read_bytes()
    check_upload(policy, content, len(data))
    key = f"{policy.fields['upload_dir']}/{hashlib.sha256(data).hexdigest()[:16]}-{path.name}"
    form: dict[str, Any] = {
        "OSSAccessKeyId": policy.fields["oss_access_key_id"],
        "Signature": policy.fields["signature"],
        "policy": policy.fields["policy"],
        "key": key,
        "x-oss-object-acl": policy.fields["x_oss_object_acl"],
        "x-oss-forbid-overwrite": policy.fields["x_oss_forbid_overwrite"],
        "success_action_status": "200",
        "x-oss-content-type": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
    }
    request = HttpRequest(
        "POST",
        policy.upload_host,
        files={"file": (path.name, data, form["x-oss-content-type"])},
        data=form,
        authenticated=False,
        whole_timeout=False,
    )
    return request, f"oss://{key}"
