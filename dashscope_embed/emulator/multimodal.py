"""The multimodal embedding endpoint: text, image and video, alone or fused (§6).

Each model's rules come from the emulator's facts: how many contents a request takes,
image and video sizes and formats, and how it fuses (``enable_fusion`` on
qwen3-vl-embedding; several modalities in one content object on the dated tongyi
snapshots; every request on qwen2.5-vl-embedding). Images are a URL, an ``oss://`` URL
of an uploaded file (with ``X-DashScope-OssResourceResolve: enable``) or a base64 data
URI; videos are URLs.

No network is used: a URL served by the emulator itself, or an uploaded file, is read
from its store; any other URL is embedded from its text. Words in a file name or URL
("red_car.jpg"), and in a PNG's ``Title``/``Description``/``Comment`` text, pull an
image's vector towards texts that use them, so text-to-image search finds the picture
a person would expect. A fused vector is the normalised sum of its parts' vectors.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.facts import SERVICE_MODELS, ServiceModel
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.service import Reply, Service, invalid, parse_json_object
from dashscope_embed.emulator.state import embedding_key
from dashscope_embed.emulator.text import dimension_for
from dashscope_embed.emulator.uploads import OSS_PREFIX, read_upload

IMAGE_MAGIC: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("jpeg", (b"\xff\xd8\xff",)),
    ("png", (b"\x89PNG\r\n\x1a\n",)),
    ("bmp", (b"BM",)),
    ("tiff", (b"II*\x00", b"MM\x00*")),
    ("ico", (b"\x00\x00\x01\x00",)),
    ("icns", (b"icns",)),
    ("sgi", (b"\x01\xda",)),
)
MODALITIES = ("text", "image", "video")
_UPLOAD_DIGEST = re.compile(r"^[0-9a-f]{16}-")


def sniff_image_format(data: bytes) -> str | None:
    """The format from the magic bytes (``"jpeg"``, ``"png"``, ...), or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for name, magics in IMAGE_MAGIC:
        if data.startswith(magics):
            return name
    return None


@dataclass(frozen=True)
class Part:
    """One modality of one content object, checked: what to embed it from."""

    kind: str
    key: str  # the text, or a fingerprint of the image or video
    hint: str  # words that pull an image's or video's vector (empty for text)


async def embed_multimodal(service: Service, request: Request) -> Reply:
    body = parse_json_object(request.body)
    name = body.get("model")
    spec = SERVICE_MODELS.get(name) if isinstance(name, str) else None
    if spec is None or spec.kind != "multimodal":
        raise invalid("Model not exist.", "model")
    payload = body.get("input")
    contents = payload.get("contents") if isinstance(payload, dict) else None
    if not isinstance(contents, list) or not contents:
        raise invalid("Input contents should not be empty.: input.contents", "input.contents")
    if len(contents) > spec.max_rows:
        raise invalid(
            f"batch size is invalid, it should not be larger than {spec.max_rows}.: input.contents",
            "input.contents",
        )
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object.", "parameters")
    dimension = dimension_for(spec, parameters.get("dimension"), "parameters.dimension")
    instruct = parameters.get("instruct") if spec.instruct else None
    if instruct is not None and not isinstance(instruct, str):
        raise invalid("instruct should be a string.", "parameters.instruct")
    fuse_request = _check_parameters(spec, parameters)
    objects = [_content_object(service, request, spec, c, i) for i, c in enumerate(contents)]
    if spec.one_of_each_modality:
        kinds = [part.kind for parts in objects for part in parts]
        for kind in MODALITIES:
            if kinds.count(kind) > 1:
                raise invalid(
                    f"Input contents should contain at most one {kind} per request.",
                    "input.contents",
                )
    if fuse_request:
        objects = [[part for parts in objects for part in parts]]
    text_tokens = sum(
        min(vectors.count_tokens(p.key), spec.max_tokens_per_row)
        for parts in objects
        for p in parts
        if p.kind == "text"
    )
    images = sum(p.kind == "image" for parts in objects for p in parts)

    def vector_of(part: Part) -> np.ndarray:
        if part.kind == "text":
            return vectors.text_vector(
                spec.name,
                part.key,
                dimension,
                text_type="query" if instruct else None,
                instruct=instruct,
                full_size=spec.max_dimension,
            )
        return vectors.content_vector(spec.name, part.key, part.hint, dimension)

    def produce() -> Response:
        embeddings = []
        for index, parts in enumerate(objects):
            summed = np.sum([vector_of(part) for part in parts], axis=0)
            vector = summed / np.float32(np.linalg.norm(summed))
            # The type string of a fused vector is unconfirmed (§6.3); "fusion" here.
            kind = parts[0].kind if len(parts) == 1 else "fusion"
            embeddings.append({"index": index, "type": kind, "embedding": vector.astype("float64")})
        usage: dict[str, Any] = {"input_tokens": text_tokens, "image_count": images}
        if images:
            usage["image_tokens"] = 1024 * images
        return Response.json(
            200,
            {
                "output": {"embeddings": embeddings},
                "usage": usage,
                "request_id": request.request_id,
            },
        )

    def keys() -> list[bytes]:
        return [
            embedding_key(spec.name, tuple((p.kind, p.key) for p in parts), dimension, instruct)
            for parts in objects
        ]

    return await service.serve_work(
        request, len(objects), text_tokens, produce, keys, compatible=False
    )


def _check_parameters(spec: ServiceModel, parameters: dict[str, Any]) -> bool:
    """Check the optional parameters; return whether the request is fused into one vector."""
    fusion = parameters.get("enable_fusion")
    if fusion is not None:
        if not isinstance(fusion, bool):
            raise invalid("enable_fusion should be a boolean.", "parameters.enable_fusion")
        if fusion and spec.fusion != "parameter":
            raise invalid(
                f"Model {spec.name} does not support enable_fusion.", "parameters.enable_fusion"
            )
    fps = parameters.get("fps")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 <= fps <= 1
    ):
        raise invalid("fps should be a number in [0, 1].", "parameters.fps")
    for name, top in (("res_level", 3), ("max_video_frames", 64)):
        value = parameters.get(name)
        if value is None:
            continue
        if not spec.snapshot_parameters:
            raise invalid(f"Model {spec.name} does not support {name}.", f"parameters.{name}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise invalid(f"{name} should be an integer in [0, {top}].", f"parameters.{name}")
    return spec.fusion == "always" or bool(fusion)


def _content_object(
    service: Service, request: Request, spec: ServiceModel, content: Any, position: int
) -> list[Part]:
    where = f"input.contents[{position}]"
    if not isinstance(content, dict):
        raise invalid(f"{where} must be an object.", "input.contents")
    kinds = [k for k in MODALITIES if k in content]
    if not kinds:
        raise invalid(f"{where} must have one of text, image, video.", "input.contents")
    if len(kinds) > 1 and spec.fusion != "object":
        raise invalid(
            f"{where} must have exactly one of text, image, video for model {spec.name}.",
            "input.contents",
        )
    parts = []
    for kind in kinds:
        value = content[kind]
        if kind == "text":
            parts.append(_text_part(spec, value, f"{where}.text"))
        elif kind == "image":
            parts.append(_image_part(service, request, spec, value, f"{where}.image"))
        else:
            parts.append(_video_part(service, request, spec, value, f"{where}.video"))
    return parts


def _text_part(spec: ServiceModel, value: Any, where: str) -> Part:
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"{where} is empty.", "input.contents")
    if not spec.truncates_text and vectors.count_tokens(value) > spec.max_tokens_per_row:
        raise invalid(
            f"Range of input length should be [1, {spec.max_tokens_per_row}]: {where}",
            "input.contents",
        )
    return Part("text", value, "")


def _image_part(
    service: Service, request: Request, spec: ServiceModel, value: Any, where: str
) -> Part:
    if not isinstance(value, str) or not value:
        raise invalid(f"{where} must be a URL or a base64 data URI.", "input.contents")
    if value.startswith("data:"):
        header, _, encoded = value.partition(",")
        if ";base64" not in header or not header.startswith("data:image/"):
            raise invalid(
                f"{where}: data URIs must be data:image/<format>;base64,...", "input.contents"
            )
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{where}: invalid base64 data.", "input.contents") from None
        return _image_bytes_part(spec, data, where, "")
    if value.startswith(OSS_PREFIX):
        stored = read_upload(service, request, value, where)
        return _image_bytes_part(spec, stored.content, where, _words_of_name(stored.filename))
    if urlsplit(value).scheme not in ("http", "https"):
        raise invalid(f"{where} must be an http(s) URL or a base64 data URI.", "input.contents")
    own = service.files.read_own_url(value)
    if own is not None:
        return _image_bytes_part(spec, own, where, _words_of_url(value))
    return Part("image", value, _words_of_url(value))


def _image_bytes_part(spec: ServiceModel, data: bytes, where: str, words: str) -> Part:
    if len(data) > spec.max_image_bytes:
        raise invalid(
            f"{where}: image is {len(data)} bytes; the limit is "
            f"{spec.max_image_bytes // (1024 * 1024)} MB.",
            "input.contents",
        )
    kind = sniff_image_format(data)
    if kind is None or kind not in spec.image_formats:
        supported = ", ".join(f.upper() for f in spec.image_formats)
        raise invalid(
            f"{where}: unsupported image format; supported: {supported}.", "input.contents"
        )
    hint = " ".join(w for w in (words, png_text(data)) if w)
    return Part("image", embedding_key(data).hex(), hint)


def _video_part(
    service: Service, request: Request, spec: ServiceModel, value: Any, where: str
) -> Part:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https", "oss"):
        raise invalid(f"{where} must be a URL.", "input.contents")
    path = urlsplit(value).path
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if suffix not in spec.video_formats:
        supported = ", ".join(f.upper() for f in spec.video_formats)
        raise invalid(
            f"{where} has an unsupported format; supported: {supported}.", "input.contents"
        )
    if value.startswith(OSS_PREFIX):
        stored = read_upload(service, request, value, where)
        if len(stored.content) > spec.max_video_bytes:
            raise invalid(
                f"{where}: video is {len(stored.content)} bytes; the limit is "
                f"{spec.max_video_bytes // (1024 * 1024)} MB.",
                "input.contents",
            )
        return Part("video", embedding_key(stored.content).hex(), _words_of_name(stored.filename))
    return Part("video", value, _words_of_url(value))


def _words_of_name(name: str) -> str:
    stem = _UPLOAD_DIGEST.sub("", name).rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ")


def _words_of_url(url: str) -> str:
    return _words_of_name(urlsplit(url).path.rsplit("/", 1)[-1])


def png_text(data: bytes) -> str:
    """The text of a PNG's ``Title``, ``Description`` and ``Comment`` chunks (tEXt)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ""
    words = []
    offset = 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunk = data[offset + 8 : offset + 8 + length]
        if kind == b"tEXt":
            keyword, _, text = chunk.partition(b"\0")
            if keyword in (b"Title", b"Description", b"Comment"):
                words.append(text.decode("latin-1"))
        elif kind == b"IEND":
            break
        offset += 12 + length
    return " ".join(words)
