"""Multimodal inputs: texts, images and videos, alone or fused into one vector.

Build inputs with :meth:`Content.text`, :meth:`Content.image` and :meth:`Content.video`;
a document made of several parts (a product's title and its photo) is a :class:`Fused`
item and gets one vector, on the models that make fused vectors.

An image may be an http(s) or ``oss://`` URL, a ``data:`` URI, a local path (or
``file://`` URI), raw bytes or a PIL image; a video is a URL or a local file. Small local
images go inline as base64; local videos and images over :data:`INLINE_IMAGE_BYTES` are
uploaded to the service's temporary storage first (as the official SDK does). Nothing
here depends on the model: :func:`check_items` checks every item against the model's
limits (formats, sizes, fusion rules) before anything is sent, naming each bad item.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from dashscope_embed.errors import InputProblem, InvalidInputError
from dashscope_embed.models import MODELS, ModelSpec

Modality = Literal["text", "image", "video"]
MODALITIES: tuple[Modality, ...] = ("text", "image", "video")
ImageInput = str | bytes | os.PathLike[str]
VideoInput = str | os.PathLike[str]

INLINE_IMAGE_BYTES = 3 * 1024 * 1024
"""Local images up to this size are sent inline as base64 (every model takes inline
images this large); larger ones are uploaded first."""

URL_SCHEMES = ("http://", "https://", "oss://")

_IMAGE_MAGIC: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("jpeg", lambda d: d.startswith(b"\xff\xd8\xff")),
    ("png", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n")),
    ("bmp", lambda d: d.startswith(b"BM")),
    ("webp", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("tiff", lambda d: d.startswith((b"II*\x00", b"MM\x00*"))),
    ("ico", lambda d: d.startswith(b"\x00\x00\x01\x00")),
    ("icns", lambda d: d.startswith(b"icns")),
    ("sgi", lambda d: d.startswith(b"\x01\xda")),
    ("gif", lambda d: d.startswith(b"GIF8")),  # known, so its refusal can name it
)
_SUFFIX_FORMATS = {"jpg": "jpeg", "jpe": "jpeg", "tif": "tiff", "dib": "bmp", "rgb": "sgi"}


def sniff_image(data: bytes) -> str | None:
    """The image format from the file's first bytes (``"jpeg"``, ``"png"``, ...), else
    ``None``."""
    for name, matches in _IMAGE_MAGIC:
        if matches(data):
            return name
    return None


def _suffix_format(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if "." not in name:
        return None
    suffix = name.rsplit(".", 1)[-1].lower()
    return _SUFFIX_FORMATS.get(suffix, suffix)


@dataclass(frozen=True)
class Content:
    """One multimodal input: ``Content.text("...")``, ``Content.image(...)`` or
    ``Content.video(...)``.

    Attributes:
        modality: ``"text"``, ``"image"`` or ``"video"``.
        value: What goes on the wire: the text, a URL or a ``data:`` URI; empty for a
            local file that is uploaded when the call is made.
        size: Bytes of an image or video given as a file or bytes (``None`` for URLs).
        format: The image's format from its bytes, or a file's or URL's suffix.
        path: A local file to upload before sending.
    """

    modality: Modality
    value: str
    size: int | None = None
    format: str | None = None
    path: str | None = None

    @classmethod
    def text(cls, text: str) -> Content:
        if not isinstance(text, str):
            raise InvalidInputError(f"a text must be a string, got {type(text).__name__}")
        return cls("text", text)

    @classmethod
    def image(cls, image: ImageInput | Any) -> Content:
        """An image from a URL, a ``data:`` URI, a path, bytes or a PIL image."""
        return _image(image, "image")

    @classmethod
    def video(cls, video: VideoInput) -> Content:
        """A video from an http(s) or ``oss://`` URL, or a local file (uploaded)."""
        if isinstance(video, str) and video.startswith(URL_SCHEMES):
            return cls("video", video, format=_suffix_format(urlsplit(video).path))
        if isinstance(video, (str, os.PathLike)):
            path = _local_path(video, "video")
            return cls(
                "video",
                "",
                size=path.stat().st_size,
                format=_suffix_format(path.name),
                path=str(path),
            )
        raise InvalidInputError(f"video: expected a URL or a path, got {type(video).__name__}")

    @property
    def needs_upload(self) -> bool:
        """Whether this is a local file still to be uploaded."""
        return self.path is not None and not self.value

    def uploaded(self, url: str) -> Content:
        """This content, now at ``url`` (an ``oss://`` URL of the temporary storage)."""
        return replace(self, value=url)

    def as_wire(self) -> dict[str, str]:
        if self.needs_upload:
            raise InvalidInputError(f"{self.describe()} was not uploaded before sending")
        return {self.modality: self.value}

    def describe(self) -> str:
        """A short name for messages: the file's name, or the start of the URL or text."""
        if self.path is not None:
            return f"{self.modality} {Path(self.path).name!r}"
        if self.value.startswith("data:"):
            return f"{self.modality} (inline {self.format or 'data'}, {self.size or 0:,} bytes)"
        return f"{self.modality} {self.value[:60]!r}"


class Fused:
    """One item made of several parts (a product's title and its photo, a video and its
    caption) that gets one vector.

    ``Fused("red running shoe", Content.image("shoe.jpg"))``: strings are texts. How
    the model fuses is in its table entry (``ModelSpec.media.fusion``): qwen3-vl-embedding
    sends the parts as one request with ``enable_fusion``; the dated
    ``tongyi-embedding-vision-*-2026-03-06`` snapshots put them in one content object
    (one text, one image, one video at most); qwen2.5-vl-embedding fuses every request.
    """

    __slots__ = ("parts",)
    parts: tuple[Content, ...]

    def __init__(self, *parts: Content | str) -> None:
        if not parts:
            raise InvalidInputError("a Fused item needs at least one part")
        built = tuple(Content.text(p) if isinstance(p, str) else p for p in parts)
        for position, part in enumerate(built):
            if not isinstance(part, Content):
                raise InvalidInputError(
                    f"Fused part {position}: expected a Content or a text, got "
                    f"{type(part).__name__}"
                )
        object.__setattr__(self, "parts", built)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Fused is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fused) and other.parts == self.parts

    def __hash__(self) -> int:
        return hash(("fused", self.parts))

    def __repr__(self) -> str:
        return f"Fused({', '.join(p.describe() for p in self.parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Fused, self.parts)

    def uploaded(self, urls: dict[Content, str]) -> Fused:
        return Fused(*(part.uploaded(urls[part]) if part in urls else part for part in self.parts))


MultimodalItem = Content | Fused


# ---------------------------------------------------------------------- building images
def _image(image: Any, where: str) -> Content:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        kind = sniff_image(data)
        if kind is None:
            raise InvalidInputError(f"{where}: the bytes are not an image of a known format")
        return Content("image", _data_uri(data, kind), size=len(data), format=kind)
    if isinstance(image, str) and image.startswith(URL_SCHEMES):
        return Content("image", image, format=_suffix_format(urlsplit(image).path))
    if isinstance(image, str) and image.startswith("data:"):
        header, _, encoded = image.partition(",")
        if not header.startswith("data:image/") or ";base64" not in header:
            raise InvalidInputError(f"{where}: data URIs must look like data:image/png;base64,...")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError(f"{where}: the data URI is not valid base64") from None
        return Content("image", image, size=len(data), format=sniff_image(data) or "unknown")
    if isinstance(image, (str, os.PathLike)):
        path = _local_path(image, where)
        size = path.stat().st_size
        with path.open("rb") as file:
            kind = sniff_image(file.read(16))
        if kind is None:
            raise InvalidInputError(f"{where} ({path.name}): not an image of a known format")
        if size <= INLINE_IMAGE_BYTES:
            return Content(
                "image",
                _data_uri(path.read_bytes(), kind),
                size=size,
                format=kind,
                path=str(path),
            )
        return Content("image", "", size=size, format=kind, path=str(path))
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return _image(buffer.getvalue(), where)
    raise InvalidInputError(
        f"{where}: expected a URL, path, bytes or PIL image, got {type(image).__name__}"
    )


def _data_uri(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _local_path(value: str | os.PathLike[str], where: str) -> Path:
    text = os.fspath(value)
    if text.startswith("file://"):
        parts = urlsplit(text)
        text = unquote(parts.netloc + parts.path)
    path = Path(text).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"{where}: no such file {str(path)!r} (and not a URL)")
    return path.resolve()


# ---------------------------------------------------------------------- checks
def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def content_problem(content: Content, spec: ModelSpec) -> str | None:
    """What is wrong with ``content`` for ``spec``'s model, or ``None``."""
    media = spec.media
    if media is None:
        return f"{spec.name} is not a multimodal model"
    if content.modality == "text":
        return None if content.value.strip() else "empty text"
    if content.modality == "image":
        limit, formats = media.image_bytes, media.image_formats
    else:
        limit, formats = media.video_bytes, media.video_formats
    if content.format is not None and content.format not in formats:
        return (
            f"{content.describe()}: {spec.name} does not take {content.format.upper()} "
            f"{content.modality}s; it takes {', '.join(f.upper() for f in formats)}"
        )
    if content.size is not None and content.size > limit:
        return (
            f"{content.describe()} is {_megabytes(content.size)}; {spec.name} takes "
            f"{content.modality}s of at most {_megabytes(limit)}"
        )
    return None


def item_problem(item: Any, spec: ModelSpec) -> str | None:
    """What is wrong with one item (a :class:`Content` or :class:`Fused`) for ``spec``."""
    if isinstance(item, Content):
        return content_problem(item, spec)
    if not isinstance(item, Fused):
        return f"expected a Content or Fused item, got {type(item).__name__}"
    media = spec.media
    assert media is not None
    if media.fusion == "none":
        fusing = sorted(m.name for m in _fusing_models())
        return f"{spec.name} makes no fused vectors; models that do: {', '.join(fusing)}"
    one_each = media.fusion == "object" or media.one_of_each_modality
    if one_each:
        counts = {m: sum(p.modality == m for p in item.parts) for m in MODALITIES}
        repeated = [m for m, n in counts.items() if n > 1]
        if repeated:
            return (
                f"{spec.name} fuses at most one text, one image and one video; this item has "
                + ", ".join(f"{counts[m]} {m}s" for m in repeated)
            )
    if len(item.parts) > spec.max_rows and media.fusion == "parameter":
        return f"{spec.name} fuses at most {spec.max_rows} parts; this item has {len(item.parts)}"
    problems = [content_problem(part, spec) for part in item.parts]
    found = [f"part {i}: {p}" for i, p in enumerate(problems) if p]
    return "; ".join(found) or None


def _fusing_models() -> Iterable[ModelSpec]:
    return (m for m in MODELS.values() if m.media is not None and m.media.fusion != "none")


def check_items(
    items: Sequence[Any],
    spec: ModelSpec,
    count_tokens: Callable[[str], int] | None = None,
) -> list[MultimodalItem]:
    """Every item checked against ``spec``'s model; one error names every bad item.

    ``count_tokens`` (when given) checks each text against the model's token limit,
    unless the service truncates long text for this model."""
    if isinstance(items, (str, Content, Fused)) or not isinstance(items, Sequence) or not items:
        raise InvalidInputError(
            "contents must be a non-empty list of Content or Fused items "
            "(Content.text / image / video)"
        )
    problems: list[InputProblem] = []
    for position, item in enumerate(items):
        problem = item_problem(item, spec)
        if problem is None and count_tokens is not None:
            problem = _text_length_problem(item, spec, count_tokens)
        if problem:
            problems.append(InputProblem(position, problem, "contents"))
    if problems:
        raise InvalidInputError(problems)
    return list(items)


def _text_length_problem(
    item: MultimodalItem, spec: ModelSpec, count_tokens: Callable[[str], int]
) -> str | None:
    assert spec.media is not None
    if spec.media.truncates_text:
        return None
    parts = item.parts if isinstance(item, Fused) else (item,)
    for part in parts:
        if part.modality == "text":
            tokens = count_tokens(part.value)
            if tokens > spec.max_tokens_per_row:
                return (
                    f"text of {tokens:,} tokens; {spec.name} takes at most "
                    f"{spec.max_tokens_per_row:,}"
                )
    return None


def contents_of(item: MultimodalItem) -> tuple[Content, ...]:
    """The contents an item sends: its parts, or itself."""
    return item.parts if isinstance(item, Fused) else (item,)


def pending_uploads(items: Sequence[MultimodalItem]) -> list[Content]:
    """The local files among ``items`` still to be uploaded, each once."""
    pending = (part for item in items for part in contents_of(item) if part.needs_upload)
    return list(dict.fromkeys(pending))


def with_uploads(item: MultimodalItem, urls: dict[Content, str]) -> MultimodalItem:
    """``item`` with its uploaded files named by their storage URLs."""
    if isinstance(item, Fused):
        return item.uploaded(urls)
    return item.uploaded(urls[item]) if item in urls else item
