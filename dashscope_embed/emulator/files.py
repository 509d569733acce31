"""Files the emulator stores and serves: task inputs and results, Batch API files, images.

A URL of the emulator's own (``http://127.0.0.1:PORT/emulator/files/NAME``) is read from
here, so jobs and image URLs work with no network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

FILES_MARKER = "/emulator/files/"


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "created_at": self.created_at,
        }


class FileStore(dict[str, StoredFile]):
    """Stored files by id (or name)."""

    def read_own_url(self, url: str) -> bytes | None:
        """Content of a URL this emulator serves, or ``None``."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or FILES_MARKER not in parts.path:
            return None
        stored = self.get(unquote(parts.path.split(FILES_MARKER, 1)[1]))
        return stored.content if stored else None
