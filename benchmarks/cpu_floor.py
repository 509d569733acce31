"""Client CPU against a floor: what any Python client must spend on the same replies.

The throughput benchmark reports this package's CPU per 1,000 vectors; this one says how
much of it is the package. Beside its classes it runs a **floor client**: a bare asyncio
loop that is *told* the service's limit (so it never probes, is never refused and never
retries), writes a fixed request, reads the reply with asyncio streams, parses it with
orjson and checks each vector's components (every one a finite float, in C, as the
package does). No engine, no pool, no retries, no planner: what is left is the cost of
HTTP on the loopback, of the JSON, and of the Python floats and lists every list-
returning client hands back.

Each run is a fresh process against a fresh emulator (300 ms latency, in its own
process), 4,000 texts, after a full garbage collection; every client runs three times,
interleaved, and the table gives the median and the range, because on a shared 2-core
machine the same run moves by 10-20 %.

Run: ``.venv/bin/python benchmarks/cpu_floor.py [--texts 4000] [--rounds 3] [--readme]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))
from throughput import KEY, corpus, emulator, write_readme

BEGIN, END = "<!-- cpu-floor-benchmark:begin -->", "<!-- cpu-floor-benchmark:end -->"
ROWS = 10
PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"
# (name, emulator flags, what the floor client is told: requests/s or requests in flight)
SCENARIOS: list[tuple[str, tuple[str, ...], dict[str, float]]] = [
    ("1,200 requests/min", ("--rpm", "1200"), {"rate": 1200 / 60 * 0.95}),
    ("16 concurrent, 429 beyond", ("--max-concurrency", "16"), {"in_flight": 16}),
]
CLIENTS = [
    "floor: asyncio + orjson + component check, told the limit",
    "dashscope-embed (async)",
    "dashscope-embed (sync)",
    "dashscope-embed LlamaIndex DashScopeEmbedding (async)",
    "dashscope-embed stream, as_numpy=True (async)",
]


# --------------------------------------------------------------------- the floor
async def floor_client(base: str, texts: list[str], told: dict[str, float]) -> list[Any]:
    """Embed ``texts`` with nothing but asyncio streams and orjson, at the told limit."""
    import orjson

    where = urlsplit(base)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    vectors: list[Any] = [None] * len(texts)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(start: int) -> None:
        batch = texts[start : start + ROWS]
        body = orjson.dumps(
            {"model": "text-embedding-v4", "input": {"texts": batch}, "parameters": {}}
        )
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        reader, writer = idle.pop() if idle else await asyncio.open_connection(host, port)
        writer.write(head + body)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = await reader.readexactly(length)
        idle.append((reader, writer))
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the floor client is told the limit, yet got {status!r}")
        for row in orjson.loads(raw)["output"]["embeddings"]:
            vector = row["embedding"]
            if list(map(type, vector)).count(float) != len(vector):
                raise ValueError("a component that is not a float")
            if not math.isfinite(sum(vector)):
                raise ValueError("a component that is not finite")
            vectors[start + row["text_index"]] = vector

    starts = range(0, len(texts), ROWS)
    if "rate" in told:
        began = time.monotonic()
        tasks = []
        for number, start in enumerate(starts):
            await asyncio.sleep(max(0.0, began + number / told["rate"] - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(start)))
        await asyncio.gather(*tasks)
    else:
        slots = asyncio.Semaphore(int(told["in_flight"]))

        async def within(start: int) -> None:
            async with slots:
                await one(start)

        await asyncio.gather(*(within(start) for start in starts))
    for _, writer in idle:
        writer.close()
    return vectors


# --------------------------------------------------------------------- one run
def child(name: str, base: str, count: int, told: str) -> None:
    """One run in a fresh process; prints its CPU per 1,000 vectors as JSON."""
    from throughput import CLIENTS as PACKAGE_CLIENTS
    from throughput import import_clients

    # Every client, the floor too, runs in a process with the frameworks imported (as an
    # application's would be); the imports are not what is measured.
    import_clients()
    texts = corpus(count)
    # A full collection now, so that none falls due in the run for the imports' sake: a
    # process holding ~300,000 objects pays ~0.25 s for one, and which client happens to
    # tip the count over the threshold would decide the table (see the README).
    gc.collect()
    cpu0 = time.process_time()
    if name.startswith("floor"):
        vectors = asyncio.run(floor_client(base, texts, json.loads(told)))
    else:
        vectors = PACKAGE_CLIENTS[name](base, texts)
    cpu = time.process_time() - cpu0
    if len(vectors) != count or any(v is None or len(v) != 1024 for v in vectors):
        raise SystemExit(f"{name}: a vector is missing")
    print(json.dumps({"cpu_ms_per_1k": cpu / count * 1e6}))


def one_run(name: str, flags: tuple[str, ...], told: dict[str, float], count: int) -> float:
    with emulator(0.3, flags) as base:
        command = [sys.executable, __file__, "--child", name, base, str(count), json.dumps(told)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    value: float = json.loads(out.stdout.strip().splitlines()[-1])["cpu_ms_per_1k"]
    return value


def table(results: dict[tuple[str, str], list[float]], count: int, rounds: int) -> str:
    lines = [
        f"{count:,} texts per run, text-embedding-v4 (1,024 dims), 300 ms per request; "
        f"each client {rounds} times, interleaved, each run a fresh process and emulator. "
        "Client CPU ms per 1,000 vectors: median (range).",
        "",
        "| scenario | client | CPU ms / 1k vectors | range | over the floor |",
        "|---|---|---:|---:|---:|",
    ]
    for scenario, _, _ in SCENARIOS:
        floor = statistics.median(results[(scenario, CLIENTS[0])])
        for name in CLIENTS:
            values = results[(scenario, name)]
            median = statistics.median(values)
            over = "-" if name == CLIENTS[0] else f"{median - floor:+.0f}"
            lines.append(
                f"| {scenario} | {name} | {median:.0f} | {min(values):.0f}-{max(values):.0f} "
                f"| {over} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, base, count, told = args.child
        child(name, base, int(count), told)
        return
    results: dict[tuple[str, str], list[float]] = {}
    for scenario, flags, told in SCENARIOS:
        for _ in range(args.rounds):
            for name in CLIENTS:
                value = one_run(name, flags, told, args.texts)
                results.setdefault((scenario, name), []).append(value)
                print(f"{scenario:28} {name:55} {value:6.0f}", file=sys.stderr, flush=True)
    markdown = table(results, args.texts, args.rounds)
    print(markdown)
    if args.readme:
        write_readme(markdown, BEGIN, END)


if __name__ == "__main__":
    main()
