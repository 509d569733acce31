"""Multimodal inputs (text, image, video) for ``multimodal-embedding-v1``.

Images may be a local path, raw bytes, a ``data:`` URI or an http(s)/oss URL; local
files and bytes are sent inline as base64 data URIs after the service's limits are
checked here (JPEG, PNG or BMP; at most 3 MB), so a bad image fails before any request.
Videos are URLs.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dashscope_embed.errors import InputProblem, InvalidInputError

MAX_IMAGE_BYTES = 3 * 1024 * 1024
_MAGIC = {"jpeg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",), "bmp": (b"BM",)}
VIDEO_SUFFIXES = (".mp4", ".mpeg", ".mpg", ".webm", ".avi", ".flv", ".mkv", ".mov")

Modality = Literal["text", "image", "video"]
ImageInput = str | bytes | os.PathLike[str]


@dataclass(frozen=True)
class Content:
    """One multimodal input: ``Content.text("...")``, ``Content.image(path_or_url_or_bytes)``
    or ``Content.video(url)``. The value is what goes on the wire."""

    modality: Modality
    value: str

    @classmethod
    def text(cls, text: str) -> Content:
        return cls("text", text)

    @classmethod
    def image(cls, image: ImageInput) -> Content:
        return cls("image", image_reference(image))

    @classmethod
    def video(cls, url: str) -> Content:
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "oss://")):
            raise InvalidInputError(f"a video must be an http(s) or oss:// URL, got {url!r:.80}")
        if not url.split("?", 1)[0].lower().endswith(VIDEO_SUFFIXES):
            raise InvalidInputError(
                f"unsupported video format in {url!r:.80}; supported: MP4, MPEG, MPG, WEBM, "
                "AVI, FLV, MKV, MOV"
            )
        return cls("video", url)

    def as_wire(self) -> dict[str, str]:
        return {self.modality: self.value}


def sniff_image(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"bmp"`` from the file's first bytes, else ``None``."""
    for name, magics in _MAGIC.items():
        if any(data.startswith(m) for m in magics):
            return name
    return None


def check_image_bytes(data: bytes, where: str) -> str:
    """Validate image bytes against the service's limits; return the format name."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInputError(
            f"{where}: image is {len(data) / 1024 / 1024:.1f} MB; the limit is 3 MB"
        )
    kind = sniff_image(data)
    if kind is None:
        raise InvalidInputError(f"{where}: not a JPEG, PNG or BMP image (the formats accepted)")
    return kind


def image_reference(image: ImageInput, where: str = "image") -> str:
    """The wire form of an image: its URL, or a base64 data URI built from a file or bytes."""
    if isinstance(image, bytes):
        kind = check_image_bytes(image, where)
        return f"data:image/{kind};base64," + base64.b64encode(image).decode("ascii")
    if isinstance(image, str) and image.startswith(("http://", "https://", "oss://")):
        return image
    if isinstance(image, str) and image.startswith("data:"):
        header, _, encoded = image.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise InvalidInputError(f"{where}: data URIs must look like data:image/png;base64,...")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError(f"{where}: the data URI is not valid base64") from None
        check_image_bytes(data, where)
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidInputError(f"{where}: no such file {str(path)!r} (and not a URL)")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise InvalidInputError(
                f"{where}: {path.name} is {path.stat().st_size / 1024 / 1024:.1f} MB; "
                "the limit is 3 MB"
            )
        return image_reference(path.read_bytes(), f"{where} ({path.name})")
    raise InvalidInputError(f"{where}: expected a path, URL or bytes, got {type(image).__name__}")


def to_contents(items: list[Any], modality: Modality) -> list[Content]:
    """Build contents of one modality, reporting every bad item by position."""
    builders = {"text": Content.text, "image": Content.image, "video": Content.video}
    contents: list[Content] = []
    problems: list[InputProblem] = []
    for i, item in enumerate(items):
        try:
            if modality == "text" and (not isinstance(item, str) or not item.strip()):
                raise InvalidInputError("expected a non-empty text")
            contents.append(builders[modality](item))
        except InvalidInputError as exc:
            problems.append(InputProblem(i, str(exc)))
    if problems:
        raise InvalidInputError(problems)
    return contents
