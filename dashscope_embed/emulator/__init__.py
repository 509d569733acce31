"""A local DashScope emulator: test your RAG app offline, in CI, with no key.

Speaks the native and OpenAI-compatible embedding protocols, the async batch tasks, the
Batch API and multimodal embedding; validates requests the way the service does; gives
deterministic vectors that behave like embeddings; injects latency, throttling, 500s and
dropped connections on demand. Needs ``pip install dashscope-embed[emulator]``.

Three ways to run it:

* ``python -m dashscope_embed.emulator --port 8000`` (or ``dashscope-emulator``)
* ``with Emulator() as emu: ...`` in Python
* the ``dashscope_emulator`` pytest fixture, registered automatically
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dashscope_embed._extras import needs_extra

if TYPE_CHECKING:
    from dashscope_embed.emulator.app import EmulatorApp
    from dashscope_embed.emulator.server import Emulator, service_or_emulator
    from dashscope_embed.emulator.state import EmulatorSettings

__all__ = ["Emulator", "EmulatorApp", "EmulatorSettings", "service_or_emulator"]

# Imported on first use: the package is imported by the pytest plugin on every install,
# and its dependencies (numpy, orjson, uvicorn) come with the ``emulator`` extra only.
_HOME = {
    "Emulator": "dashscope_embed.emulator.server",
    "service_or_emulator": "dashscope_embed.emulator.server",
    "EmulatorApp": "dashscope_embed.emulator.app",
    "EmulatorSettings": "dashscope_embed.emulator.state",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with needs_extra("The DashScope emulator", "emulator"):
        value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
