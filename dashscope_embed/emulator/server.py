"""Run the emulator on 127.0.0.1 in a background thread: ``with Emulator() as emu: ...``."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import httpx

from dashscope_embed._extras import needs_extra
from dashscope_embed.emulator.app import EmulatorApp
from dashscope_embed.emulator.http import INJECTED_DROPS_FILTER
from dashscope_embed.emulator.state import EmulatorSettings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Emulator:
    """A local DashScope service, listening on 127.0.0.1 until the block ends.

    Example::

        with Emulator(latency=0.05, rpm=600) as emu:
            client = DashScopeClient(api_key=emu.api_key, base_url=emu.base_url)
            client.embed(["hello"])
            assert emu.stats()["requests"] == 1

    Any :class:`EmulatorSettings` field is a keyword argument. ``api_key`` defaults to
    ``"sk-emulator"`` and is the only key accepted.
    """

    def __init__(self, *, port: int = 0, host: str = "127.0.0.1", **settings: Any) -> None:
        with needs_extra("The DashScope emulator", "emulator"):
            import uvicorn

        settings.setdefault("api_key", "sk-emulator")
        self.settings = EmulatorSettings(**settings)
        self.app = EmulatorApp(self.settings)
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(
            self.app,
            host=host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._log_filter = INJECTED_DROPS_FILTER

    @property
    def api_key(self) -> str:
        """The key clients must send."""
        return self.settings.api_key or "sk-emulator"

    @property
    def base_url(self) -> str:
        """Host root, e.g. ``http://127.0.0.1:54321``; append ``/api/v1`` or
        ``/compatible-mode/v1`` for SDKs that want a protocol base."""
        return f"http://{self.host}:{self.port}"

    @property
    def native_base_url(self) -> str:
        return self.base_url + "/api/v1"

    @property
    def compatible_base_url(self) -> str:
        return self.base_url + "/compatible-mode/v1"

    def start(self) -> Emulator:
        logging.getLogger("uvicorn.error").addFilter(self._log_filter)
        self._thread = threading.Thread(
            target=self._server.run, name="dashscope-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.base_url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        logging.getLogger("uvicorn.error").removeFilter(self._log_filter)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Convenience for tests and benchmarks ---------------------------------------
    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /emulator/stats``."""
        response = httpx.get(self.base_url + "/emulator/stats", timeout=10)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def requests(self, path_contains: str = "") -> list[dict[str, Any]]:
        """Requests received since the last reset (oldest first): method, path, query,
        headers (without ``Authorization``) and parsed JSON body. Filter by a path
        fragment."""
        response = httpx.get(self.base_url + "/emulator/requests", timeout=10)
        response.raise_for_status()
        return [r for r in response.json() if path_contains in r["path"]]

    def reset(self) -> None:
        """Zero the counters, rate windows and request log; settings stay."""
        httpx.post(self.base_url + "/emulator/reset", timeout=10).raise_for_status()

    def configure(self, **changes: Any) -> None:
        """Change settings while running (e.g. turn faults on for one test)."""
        known = {f.name for f in fields(EmulatorSettings)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown emulator settings: {sorted(unknown)}")
        for name, value in changes.items():
            setattr(self.settings, name, value)
        self.settings.__post_init__()
        if "seed" in changes:
            self.app.state.reseed()  # a new seed means its sequence, from the start

    def put_file(self, name: str, content: bytes) -> str:
        """Store a file the emulator serves (task input, an image); returns its URL."""
        response = httpx.put(f"{self.base_url}/emulator/files/{name}", content=content, timeout=30)
        response.raise_for_status()
        url: str = response.json()["url"]
        return url


@contextlib.contextmanager
def service_or_emulator(announce: bool = True) -> Iterator[dict[str, str]]:
    """Connection settings for examples: the real service when ``DASHSCOPE_API_KEY`` is
    set (yields ``{}``, so the environment applies), else a fresh local emulator (yields
    its ``api_key`` and ``base_url``). Says which in one line when ``announce``."""
    if os.environ.get("DASHSCOPE_API_KEY"):
        if announce:
            print("Using the DashScope service (DASHSCOPE_API_KEY is set).")
        yield {}
        return
    with Emulator() as emulator:
        if announce:
            print(f"DASHSCOPE_API_KEY is not set: using the local emulator at {emulator.base_url}.")
        yield {"api_key": emulator.api_key, "base_url": emulator.base_url}
