"""Ray Data against one account's rate cap: the shared quota keeper against actors that
pace themselves.

A local Ray (``ray.init(num_cpus=2)``) embeds a corpus with ``DashScopeEmbedder`` on an
actor pool, against the emulator (in its own process) enforcing an account-wide request
cap it does not tell anyone (429 ``Throttling.RateQuota`` past it). Default settings:
the embedders are told nothing. For each cap and setup it reports throughput as a share
of the cap (requests per second while embedding, from the first request to the last
reply), 429s as a share of requests, duplicate embeddings (paid twice) and lost rows.

Run: ``.venv/bin/python benchmarks/ray_quota.py [--texts 20000] [--caps 1200,600]``
(needs the ``ray`` extra). ``--readme`` writes the table into README.md.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parents[1]))

from benchmarks.throughput import KEY, emulator, write_readme

BEGIN, END = "<!-- ray-benchmark:begin -->", "<!-- ray-benchmark:end -->"
ROWS_PER_REQUEST = 10  # text-embedding-v4


def run(
    base: str, texts: list[str], actors: int, shared: bool, name: str, told: int | None
) -> dict[str, Any]:
    import pyarrow as pa
    import ray

    from dashscope_embed.raydata import DashScopeEmbedder, stop_quota_keeper

    ds = ray.data.from_items(
        [{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=actors * 4
    )
    first: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and not first:
            if httpx.get(base + "/emulator/stats", timeout=5).json()["requests"]:
                first.append(time.monotonic())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    out = ds.map_batches(
        DashScopeEmbedder,
        fn_constructor_kwargs={
            "base_url": base,
            "dimension": 64,
            "shared_quota": shared,
            "quota_name": name,
            "requests_per_minute": told,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=max(1, len(texts) // (actors * 4)),
        batch_format="pyarrow",
    )
    try:
        table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    except Exception as error:  # the job failed: requests ran out of retries
        done.set()
        watcher.join()
        stats = httpx.get(base + "/emulator/stats", timeout=10).json()
        message = str(error).split("RuntimeError: ", 1)[-1].split(" (ids", 1)[0]
        return {"failed": message.strip(), **_counts(stats)}
    end = time.monotonic()
    done.set()
    watcher.join()
    if shared:
        keeper = ray.get_actor(name, namespace="dashscope_embed")
        print(f"  keeper: {ray.get(keeper.stats.remote())}", file=sys.stderr, flush=True)
    stop_quota_keeper(name)
    stats = httpx.get(base + "/emulator/stats", timeout=10).json()
    ids = set(table.column("id").to_pylist())
    return {"seconds": end - first[0], "lost": len(texts) - len(ids), **_counts(stats)}


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": stats["by_status"].get("200", 0),
        "throttled": stats["by_status"].get("429", 0),
        "requests": stats["requests"],
        "duplicates": stats["duplicate_embeddings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--caps", default="1200,600", help="RPM caps, comma-separated")
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--setups", help="indices of the setups to run, e.g. 0,3")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()

    import ray

    texts = [f"passage {i} on topic {i % 97} with detail {i % 13}" for i in range(args.texts)]
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"DASHSCOPE_API_KEY": KEY}},
    )
    rows = [
        "| RPM cap (untold) | setup | throughput / cap | 429s / requests | duplicates | lost rows "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    setups = [
        ("4 actors, shared quota", 4, True, False),
        ("1 actor", 1, True, False),
        ("4 actors pacing alone (naive)", 4, False, False),
        ("4 actors each told the quota (per-worker qps)", 4, False, True),
    ]
    chosen = [setups[int(i)] for i in args.setups.split(",")] if args.setups else setups
    for cap in (int(c) for c in args.caps.split(",")):
        for label, actors, shared, told in chosen:
            name = f"bench-{cap}-{actors}-{shared}-{told}"
            with emulator(args.latency, ("--rpm", str(cap))) as base:
                result = run(base, texts, actors, shared, name, cap if told else None)
            throttled = f"{result['throttled'] / max(1, result['requests']):.1%}"
            if "failed" in result:
                row = (
                    f"| {cap:,} | {label} | job failed: {result['failed']} | {throttled} "
                    f"| {result['duplicates']} | - | - |"
                )
            else:
                rate = result["ok"] / result["seconds"]
                row = (
                    f"| {cap:,} | {label} | {rate / (cap / 60):.2f} | {throttled} "
                    f"| {result['duplicates']} | {result['lost']} | {result['seconds']:.0f} |"
                )
            print(row, flush=True)
            rows.append(row)
    ray.shutdown()
    markdown = "\n".join(rows)
    print(markdown)
    if args.readme:
        write_readme(markdown, BEGIN, END)


if __name__ == "__main__":
    main()
