"""Processes and event loops: forks, worker pools, many ``asyncio.run`` calls.

A client used before ``os.fork()`` must not share its sockets with the child (each would
read the other's replies); a multi-process pipeline must work or fail at once, never
hang; one object used across many event loops must not pile up sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator
from tests.integration.conftest import emulator_process

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def run_scenario(url: str, mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.scenarios.fork", url, "sk-emulator", mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture(scope="module")
def slow_emulator() -> object:
    # 300 ms a request: parent and child are surely waiting on the same socket at once.
    with emulator_process("--api-key", "sk-emulator", "--latency", "0.3") as url:
        yield url


def test_a_forked_child_has_its_own_slots_and_retry_allowance() -> None:
    """Forked while a parent thread holds the retry allowance's lock (a request of the
    parent finishing) and a slot: the child must neither wait on that lock for ever nor
    spend the parent's saved retries, and its gate starts empty. Only a child's own
    successes earn its extra retries."""
    client = DashScopeClient(api_key="sk-fork-allowance", base_url="http://127.0.0.1:9")
    allowance = client._engine.allowance
    for _ in range(100):
        allowance.earn()
    client.gate.acquire()  # a request of the parent in flight
    read_end, write_end = os.pipe()
    with allowance._lock:  # as a parent thread recording a success holds it
        pid = os.fork()
        if pid == 0:
            signal.alarm(5)  # a child stuck on the parent's lock dies instead of hanging
            try:
                own = client._engine.allowance
                spent_parents = own.grant(0)
                own.earn()
                report = {
                    "spent_parents": spent_parents,
                    "successes": own.successes,
                    "in_flight": client.gate.in_flight,
                }
                os.write(write_end, json.dumps(report).encode())
            finally:
                os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert json.loads(answer or b"null") == {
        "spent_parents": False,
        "successes": 1,
        "in_flight": 0,
    }
    assert allowance.successes == 100 and client.gate.in_flight == 1  # the parent's own


def test_parent_and_child_of_a_bare_fork_each_get_their_own_vectors(slow_emulator: str) -> None:
    result = run_scenario(slow_emulator, "bare")
    assert "error" not in result, result
    assert result["compared"] == 20 and result["wrong"] == []


def test_a_fork_pool_of_workers_gets_every_vector_right(slow_emulator: str) -> None:
    result = run_scenario(slow_emulator, "pool")
    assert result["compared"] == 24 and result["wrong"] == []


def test_an_httpx_client_given_by_the_caller_is_refused_after_a_fork(slow_emulator: str) -> None:
    # Its pool cannot be renewed by us; using it would risk swapped replies: say so.
    result = run_scenario(slow_emulator, "given")
    assert str(result["child"]).startswith("ConfigurationError")
    assert "os.fork()" in str(result["child"])


def _open_files() -> int:
    """Open file descriptors of this process: sockets, event loops' epoll and pipes."""
    return len(os.listdir("/proc/self/fd"))


def _settled_open_files() -> int:
    """The open file count once it stops falling (the in-process emulator closes its side of
    finished connections shortly after the client closes its own)."""
    count = _open_files()
    for _ in range(50):
        time.sleep(0.02)
        now = _open_files()
        if now >= count:
            return now
        count = now
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts /proc/self/fd")
def test_many_asyncio_runs_leave_no_sockets_behind(dashscope_emulator: Emulator) -> None:
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )

    async def once(number: int) -> None:
        # Several requests at once, so each loop opens several connections.
        await client.aembed([f"text {number} {i}" for i in range(40)], dimension=64)

    asyncio.run(once(-1))
    before = _settled_open_files()
    for number in range(150):
        asyncio.run(once(number))
    after = _settled_open_files()
    # A leak keeps at least one connection per loop: 150 or more. The emulator serves from
    # this process, so its side of a connection the client just closed may still be open
    # for a moment; a few are allowed.
    assert after - before <= 8, f"{after - before} more open files after 150 asyncio.run calls"


def test_a_multi_process_ingestion_pipeline_with_a_key_in_code_fails_at_once(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    """Workers are spawned, and keys never travel in pickles: the pipeline must fail with
    the reason and the fix, not hang (an exception that cannot be unpickled kills the
    pool's result thread and leaves the parent waiting for ever)."""
    script = tmp_path / "pipeline.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            from llama_index.core import Document
            from llama_index.core.ingestion import IngestionPipeline
            from llama_index_ext import DashScopeEmbedding

            if __name__ == "__main__":
                os.environ.pop("DASHSCOPE_API_KEY", None)
                mode = os.environ["SCENARIO"]
                if mode == "env":
                    os.environ["DASHSCOPE_API_KEY"] = {dashscope_emulator.api_key!r}
                    embed = DashScopeEmbedding(base_url={dashscope_emulator.base_url!r})
                else:
                    embed = DashScopeEmbedding(
                        api_key={dashscope_emulator.api_key!r},
                        base_url={dashscope_emulator.base_url!r},
                    )
                docs = [Document(text=f"document number {{i}}") for i in range(8)]
                try:
                    nodes = IngestionPipeline(transformations=[embed]).run(
                        documents=docs, num_workers=2
                    )
                except Exception as exc:
                    print("FAILED", type(exc).__name__, exc)
                else:
                    print("EMBEDDED", sum(n.embedding is not None for n in nodes))
            """
        )
    )
    for mode, expected in (("code", "FAILED MissingApiKeyError"), ("env", "EMBEDDED 8")):
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SCENARIO": mode, "PYTHONPATH": str(ROOT)},
        )
        assert expected in done.stdout, (mode, done.stdout, done.stderr[-2000:])
        if mode == "code":
            assert "DASHSCOPE_API_KEY in the workers' environment" in done.stdout
