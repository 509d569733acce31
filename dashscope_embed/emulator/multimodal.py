"""The multimodal embedding endpoint (``multimodal-embedding-v1``): text, image, video.

Images are a public URL or a ``data:image/...;base64,`` URI (JPEG, PNG or BMP, at most
3 MB); videos are URLs. No network is used: a URL served by the emulator itself is read
from its file store; any other URL is embedded from its text, with the words of its file
name pulling the vector towards texts that use them.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.facts import SERVICE_MODELS
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.service import Reply, Service, invalid, parse_json_object
from dashscope_embed.emulator.state import embedding_key
from dashscope_embed.emulator.text import dimension_for

IMAGE_FORMATS = {
    "jpeg": b"\xff\xd8\xff",
    "jpg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "bmp": b"BM",
}
VIDEO_SUFFIXES = (".mp4", ".mpeg", ".mpg", ".webm", ".avi", ".flv", ".mkv", ".mov")


def sniff_image_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"bmp"`` from the magic bytes, or ``None``."""
    for name, magic in IMAGE_FORMATS.items():
        if data.startswith(magic):
            return "jpeg" if name == "jpg" else name
    return None


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
    seen_types: set[str] = set()
    items: list[tuple[str, str, str]] = []  # (type, key for the vector, hint words)
    text_tokens = images = 0
    for position, content in enumerate(contents):
        if not isinstance(content, dict):
            raise invalid(f"input.contents[{position}] must be an object.", "input.contents")
        kinds = [k for k in ("text", "image", "video") if k in content]
        if len(kinds) != 1:
            raise invalid(
                f"input.contents[{position}] must have exactly one of text, image, video.",
                "input.contents",
            )
        kind = kinds[0]
        if spec.one_of_each_modality and kind in seen_types:
            raise invalid(
                f"Input contents should contain at most one {kind} per request.",
                "input.contents",
            )
        seen_types.add(kind)
        value = content[kind]
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise invalid(f"input.contents[{position}].text is empty.", "input.contents")
            # Longer text is truncated by the service, not refused.
            text_tokens += min(vectors.count_tokens(value), spec.max_tokens_per_row)
            items.append(("text", value, value))
        elif kind == "image":
            key, hint = _image_key(service, value, position, spec.max_image_bytes)
            images += 1
            items.append(("image", key, hint))
        else:
            if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https", "oss"):
                raise invalid(f"input.contents[{position}].video must be a URL.", "input.contents")
            if not urlsplit(value).path.lower().endswith(VIDEO_SUFFIXES):
                raise invalid(
                    f"input.contents[{position}].video has an unsupported format; supported: "
                    "MP4, MPEG, MPG, WEBM, AVI, FLV, MKV, MOV.",
                    "input.contents",
                )
            items.append(("video", value, _words_of_url(value)))

    def produce() -> Response:
        embeddings = []
        for index, (kind, key, hint) in enumerate(items):
            if kind == "text":
                vec = vectors.text_vector(
                    spec.name,
                    key,
                    dimension,
                    text_type="query" if instruct else None,
                    instruct=instruct,
                    full_size=spec.max_dimension,
                )
            else:
                vec = vectors.content_vector(spec.name, key, hint, dimension)
            embeddings.append({"index": index, "type": kind, "embedding": vec.astype("float64")})
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

    return await service.serve_work(
        request,
        len(items),
        text_tokens,
        produce,
        lambda: [
            embedding_key(spec.name, kind, key, dimension, instruct) for kind, key, _ in items
        ],
        compatible=False,
    )


def _words_of_url(url: str) -> str:
    path = urlsplit(url).path.rsplit("/", 1)[-1]
    stem = path.rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ")


def _image_key(service: Service, value: Any, position: int, limit: int) -> tuple[str, str]:

    where = f"input.contents[{position}].image"
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
        return _check_image_bytes(data, where, limit), ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "oss"):
        raise invalid(f"{where} must be an http(s) URL or a base64 data URI.", "input.contents")
    own = service.files.read_own_url(value)
    if own is not None:
        return _check_image_bytes(own, where, limit), _words_of_url(value)
    return value, _words_of_url(value)


def _check_image_bytes(data: bytes, where: str, limit: int) -> str:

    if len(data) > limit:
        raise invalid(
            f"{where}: image is {len(data)} bytes; the limit is {limit // (1024 * 1024)} MB.",
            "input.contents",
        )
    if sniff_image_format(data) is None:
        raise invalid(
            f"{where}: unsupported image format; supported: JPG, PNG, BMP.", "input.contents"
        )
    return embedding_key(data).hex()
