"""Small media files for multimodal tests, built byte by byte (no imaging library)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

GIF = b"GIF89a" + b"\0" * 10


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    description: str = "", *, pad: int = 0, colour: tuple[int, int, int] = (255, 0, 0)
) -> bytes:
    """A valid 1x1 PNG whose ``Description`` text chunk says ``description`` (the
    emulator draws the image's vector towards those words), padded to about ``pad``
    extra bytes with a private chunk."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes(colour))
    chunks = [_chunk(b"IHDR", header)]
    if description:
        chunks.append(_chunk(b"tEXt", b"Description\0" + description.encode("latin-1")))
    if pad:
        chunks.append(_chunk(b"skIp", b"\0" * pad))
    chunks += [_chunk(b"IDAT", pixels), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def mp4(size: int = 4096, seed: int = 0) -> bytes:
    """Bytes that start like an MP4 file (the emulator reads only the name and size)."""
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    return head + bytes([seed % 256]) * max(0, size - len(head))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
