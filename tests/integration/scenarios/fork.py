"""Fork after use, as gunicorn --preload, Celery prefork and multiprocessing do.

Run as ``python -m tests.integration.scenarios.fork BASE_URL KEY MODE``, in a fresh,
single-threaded process (as a pre-forking server is). Prints one JSON object: how many
vectors came back that are not the vector of the text that was sent.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

import httpx

from dashscope_embed import DashScopeClient, DashScopeError

BASE_URL, KEY, MODE = sys.argv[1:4]
CLIENT = DashScopeClient(api_key=KEY, base_url=BASE_URL, max_concurrency=1)


def embed_one(text: str) -> list[float]:
    return CLIENT.embed([text], dimension=64).require_dense()[0]


def reference(texts: list[str]) -> dict[str, list[float]]:
    fresh = DashScopeClient(api_key=KEY, base_url=BASE_URL)
    vectors = fresh.embed(texts, dimension=64).require_dense()
    return dict(zip(texts, vectors, strict=True))


def bare_forks(rounds: int) -> dict[str, object]:
    got: dict[str, list[float]] = {}
    for number in range(rounds):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child embeds while the parent does, over the inherited client
            status = 0
            try:
                os.close(read_end)
                vector = embed_one(f"child {number}")
                os.write(write_end, json.dumps(vector).encode())
            except BaseException as exc:
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
                status = 1
            finally:
                os._exit(status)
        os.close(write_end)
        got[f"parent {number}"] = embed_one(f"parent {number}")
        with os.fdopen(read_end, "rb") as pipe:
            answer = json.loads(pipe.read())
        os.waitpid(pid, 0)
        if isinstance(answer, dict):
            return {"error": answer["error"]}
        got[f"child {number}"] = answer
    expected = reference(list(got))
    return {"compared": len(got), "wrong": sorted(t for t in got if got[t] != expected[t])}


def fork_pool(count: int) -> dict[str, object]:
    texts = [f"pooled text {i}" for i in range(count)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        vectors = pool.map(embed_one, texts, chunksize=1)
    expected = reference(texts)
    wrong = [t for t, v in zip(texts, vectors, strict=True) if v != expected[t]]
    return {"compared": len(texts), "wrong": wrong}


def given_client() -> dict[str, object]:
    client = DashScopeClient(api_key=KEY, base_url=BASE_URL, http_client=httpx.Client())
    client.embed(["warm"])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            client.embed(["child"])
            os.write(write_end, b"no error")
        except DashScopeError as exc:
            os.write(write_end, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return {"child": message}


if __name__ == "__main__":
    embed_one("warm")  # the pool now holds a live keep-alive connection
    if MODE == "bare":
        print(json.dumps(bare_forks(10)))
    elif MODE == "pool":
        print(json.dumps(fork_pool(24)))
    else:
        print(json.dumps(given_client()))
