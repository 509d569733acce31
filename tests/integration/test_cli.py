"""The bulk command, run as a user runs it, against the emulator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator


def texts(n: int) -> list[str]:
    return [f"bulk line {i}: topic {i % 23} and identifier id_{i:05d}" for i in range(n)]


def write_corpus(folder: Path, corpus: list[str]) -> Path:
    source = folder / "corpus.txt"
    source.write_text("\n".join(corpus) + "\n")
    return source


def run_cli(emu: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DASHSCOPE_API_KEY": emu.api_key, "DASHSCOPE_BASE_URL": emu.base_url}
    return subprocess.run(
        [sys.executable, "-m", "dashscope_embed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sync_mode_plain_lines_to_jsonl_and_npy(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    corpus = texts(3000)
    source = write_corpus(tmp_path, corpus)
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(tmp_path / "v.jsonl"),
        "--dimension",
        "128",
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "v.jsonl")
    assert [r["index"] for r in rows] == list(range(3000))
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )
    sample = client.embed([corpus[0], corpus[2999]], text_type="document", dimension=128)
    assert rows[0]["embedding"] == sample.require_dense()[0]
    assert rows[2999]["embedding"] == sample.require_dense()[1]

    done = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(tmp_path / "v.npy"),
        "--dimension",
        "128",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    matrix = np.load(tmp_path / "v.npy")
    assert matrix.shape == (3000, 128) and matrix.dtype == np.float32
    assert np.allclose(matrix[2999], sample.require_dense()[1], atol=1e-6)
    assert not (tmp_path / "v.npy.progress").exists()


def test_jsonl_and_csv_inputs_with_a_field(dashscope_emulator: Emulator, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts(25)))
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(jsonl),
        "--field",
        "body",
        "--out",
        str(tmp_path / "a.jsonl"),
        "--output-type",
        "dense&sparse",
    )
    assert done.returncode == 0, done.stderr
    row = read_jsonl(tmp_path / "a.jsonl")[3]
    assert len(row["embedding"]) == 1024 and row["sparse"]  # type: ignore[arg-type]
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("id,body\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts(7))))
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(csv_file),
        "--field",
        "body",
        "--out",
        str(tmp_path / "b.jsonl"),
    )
    assert done.returncode == 0 and len(read_jsonl(tmp_path / "b.jsonl")) == 7
    missing = run_cli(
        dashscope_emulator, "embed", str(csv_file), "--out", str(tmp_path / "c.jsonl")
    )
    assert missing.returncode != 0 and "no column 'text'" in missing.stderr


def test_ctrl_c_then_resume_pays_nothing_twice_for_saved_work(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    dashscope_emulator.configure(latency=0.05)
    corpus = texts(3000)
    source = write_corpus(tmp_path, corpus)
    out = tmp_path / "v.jsonl"
    env = {
        **os.environ,
        "DASHSCOPE_API_KEY": dashscope_emulator.api_key,
        "DASHSCOPE_BASE_URL": dashscope_emulator.base_url,
        "PYTHONFAULTHANDLER": "1",
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dashscope_embed.cli",
            "embed",
            str(source),
            "--out",
            str(out),
            "--max-concurrency",
            "4",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not out.exists() or out.stat().st_size < 200_000:
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.02)
    # Requests sent from now on take 2 s: the run cannot finish before the Ctrl-C, and
    # the requests in flight, which it lets finish, do soon.
    dashscope_emulator.configure(latency=2)
    try:
        worker.send_signal(signal.SIGINT)  # Ctrl-C
        stderr = _finish(worker)
    finally:
        worker.kill()  # never left running to send into the next test's emulator
    dashscope_emulator.configure(latency=0.05)
    assert worker.returncode == 130 and "rerun to resume" in stderr
    saved = len(read_jsonl(out))
    assert 0 < saved < 3000

    dashscope_emulator.reset()
    done = run_cli(dashscope_emulator, "embed", str(source), "--out", str(out))
    assert done.returncode == 0 and f"Resuming: {saved} of 3000" in done.stderr
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(3000))
    resent = {
        t
        for r in dashscope_emulator.requests("text-embedding")
        for t in r["json"]["input"]["texts"]
    }
    assert resent.isdisjoint(corpus[:saved])  # nothing already saved was paid for again
    again = run_cli(dashscope_emulator, "embed", str(source), "--out", str(out))
    assert "already holds all 3000" in again.stderr


def test_batch_mode_in_chunks_and_resume(dashscope_emulator: Emulator, tmp_path: Path) -> None:
    dashscope_emulator.configure(task_delay=0.05)
    corpus = texts(2500)
    source = write_corpus(tmp_path, corpus)
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(tmp_path / "b.jsonl"),
        "--mode",
        "batch",
        "--batch-lines",
        "1000",
        "--dimension",
        "64",
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "b.jsonl")
    assert [r["index"] for r in rows] == list(range(2500))
    assert dashscope_emulator.stats()["by_endpoint"]["POST /compatible-mode/v1/batches"] == 3

    partial = tmp_path / "p.jsonl"  # an earlier run saved the first job, then died
    partial.write_text("\n".join(json.dumps(r) for r in rows[:1000]) + "\n")
    dashscope_emulator.reset()
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(partial),
        "--mode",
        "batch",
        "--batch-lines",
        "1000",
        "--dimension",
        "64",
    )
    assert done.returncode == 0, done.stderr
    assert read_jsonl(partial) == rows
    assert dashscope_emulator.stats()["by_endpoint"]["POST /compatible-mode/v1/batches"] == 2


def test_parquet_output_with_resume(dashscope_emulator: Emulator, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    corpus = texts(2200)
    source = write_corpus(tmp_path, corpus)
    out = tmp_path / "v.parquet"
    # An earlier run saved one whole part file, then died.
    first = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(tmp_path / "w.parquet"),
        "--output-type",
        "dense&sparse",
        "--dimension",
        "64",
    )
    assert first.returncode == 0, first.stderr
    whole = pq.read_table(tmp_path / "w.parquet").to_pylist()
    assert [r["index"] for r in whole] == list(range(2200))
    assert len(whole[5]["embedding"]) == 64 and whole[5]["sparse_indices"]
    parts = tmp_path / "v.parquet.parts"
    parts.mkdir()
    pq.write_table(
        pq.read_table(tmp_path / "w.parquet").slice(0, 1000), parts / "part-000000000000.parquet"
    )
    dashscope_emulator.reset()
    done = run_cli(
        dashscope_emulator,
        "embed",
        str(source),
        "--out",
        str(out),
        "--output-type",
        "dense&sparse",
        "--dimension",
        "64",
    )
    assert done.returncode == 0 and "Resuming: 1000 of 2200" in done.stderr
    assert pq.read_table(out).to_pylist() == whole
    assert dashscope_emulator.stats()["texts_delivered"] == 1200 and not parts.exists()


def test_batch_jobs_larger_than_the_service_takes_are_refused_up_front(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path, texts(5))
    out = tmp_path / "x.jsonl"
    refused = run_cli(
        dashscope_emulator, "embed", str(source), "--out", str(out), "--batch-lines", "60000"
    )
    assert refused.returncode != 0
    assert "--batch-lines must be 1..50,000" in refused.stderr
    assert dashscope_emulator.stats()["requests"] == 0 and not out.exists()


def _requests_sent(emu: Emulator) -> int:
    return int(emu.stats()["by_endpoint"].get(f"POST /api/v1{EMBED_PATH}", 0))


EMBED_PATH = "/services/embeddings/text-embedding/text-embedding"


def test_a_finished_npy_run_is_not_paid_for_again(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path, texts(500))
    out = tmp_path / "v.npy"
    first = run_cli(dashscope_emulator, "embed", str(source), "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    dashscope_emulator.reset()
    again = run_cli(dashscope_emulator, "embed", str(source), "--out", str(out), "--quiet")
    assert again.returncode == 0 and "already holds all 500" in again.stderr
    assert _requests_sent(dashscope_emulator) == 0 and out.read_bytes() == before


def test_resuming_with_other_settings_is_refused_before_anything_is_sent(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path, texts(300))
    for suffix in ("npy", "jsonl", "parquet"):
        out = tmp_path / f"v.{suffix}"
        first = run_cli(
            dashscope_emulator, "embed", str(source), "--out", str(out), "--dimension", "256"
        )
        assert first.returncode == 0, first.stderr
        (tmp_path / f"v.{suffix}.run.json").write_text(
            (tmp_path / f"v.{suffix}.run.json")
            .read_text()
            .replace('"complete": true', '"complete": false')
        )  # as if the first run had been interrupted
        dashscope_emulator.reset()
        other = run_cli(
            dashscope_emulator, "embed", str(source), "--out", str(out), "--dimension", "512"
        )
        assert other.returncode != 0, suffix
        assert "dimension: 256 then, 512 now" in other.stderr and "Traceback" not in other.stderr
        assert _requests_sent(dashscope_emulator) == 0
        role = run_cli(
            dashscope_emulator, "embed", str(source), "--out", str(out), "--dimension", "256",
            "--text-type", "query",
        )  # fmt: skip
        assert role.returncode != 0 and "text_type: 'document' then, 'query' now" in role.stderr


def _finish(worker: subprocess.Popen[str]) -> str:
    """The stopped worker's stderr; if it has not exited within a minute, fail with
    every thread's stack (faulthandler, on SIGABRT) to show where it hangs."""
    try:
        return worker.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGABRT)
        stacks = worker.communicate(timeout=10)[1]
        pytest.fail(f"the worker did not exit a minute after the signal:\n{stacks}")


def _wait_idle(emu: Emulator) -> None:
    deadline = time.monotonic() + 30
    while emu.stats()["in_flight"] > 0:
        assert time.monotonic() < deadline, "requests still in flight after 30 s"
        time.sleep(0.05)


def _interrupt(emu: Emulator, tmp_path: Path, out: Path, how: signal.Signals) -> str:
    """Start a run, stop it with ``how`` once some vectors are saved; its stderr."""
    env = {**os.environ, "DASHSCOPE_API_KEY": emu.api_key, "DASHSCOPE_BASE_URL": emu.base_url}
    env["PYTHONFAULTHANDLER"] = "1"  # stacks on SIGABRT, should it hang
    worker = subprocess.Popen(
        [sys.executable, "-m", "dashscope_embed.cli", "embed", str(tmp_path / "corpus.txt"),
         "--out", str(out), "--max-concurrency", "4", "--quiet"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while emu.stats()["texts_delivered"] < 600:
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.01)
    # Requests sent from now on take 2 s, so the run cannot finish before the signal
    # however slowly a loaded machine ran the loop above (and after a Ctrl-C the
    # requests in flight, which it lets finish, do soon).
    latency = emu.settings.latency
    emu.configure(latency=2)
    try:
        worker.send_signal(how)
        stderr = _finish(worker)
    finally:
        worker.kill()  # never left running to send into the next test's emulator
    emu.configure(latency=latency)
    return stderr


def test_a_killed_run_resumes_paying_again_at_most_for_requests_in_flight(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    # Results arrive out of order (jitter); each is kept the moment it arrives.
    dashscope_emulator.configure(latency=0.05, latency_jitter=0.1)
    corpus = texts(3000)
    write_corpus(tmp_path, corpus)
    for suffix in ("jsonl", "npy", "parquet"):
        dashscope_emulator.reset()
        out = tmp_path / f"k.{suffix}"
        _interrupt(dashscope_emulator, tmp_path, out, signal.SIGKILL)
        _wait_idle(dashscope_emulator)  # the dead run's last requests are paid for too
        paid_before = dashscope_emulator.stats()["texts_embedded"]
        done = run_cli(dashscope_emulator, "embed", str(tmp_path / "corpus.txt"), "--out", str(out))
        assert done.returncode == 0, done.stderr
        said = re.search(
            r"Resuming: (\d+) of 3000 already in \S+(?: \(and (\d+) more kept)?", done.stderr
        )
        assert said, done.stderr
        kept = int(said.group(1)) + int(said.group(2) or 0)
        # Everything the dead run kept is used as it is: the resume pays for the rest
        # only, not one text more.
        paid_after = dashscope_emulator.stats()["texts_embedded"] - paid_before
        assert paid_after == 3000 - kept, (suffix, paid_after, kept)
        # What the kill lost: the 4 requests in flight (10 texts each), and replies
        # already received but not yet written (a loaded machine runs the threads that
        # write them late). A few requests, never the saved work.
        assert paid_before - kept <= 100, (suffix, paid_before, kept)
        assert not list(tmp_path.glob(f"k.{suffix}.pending*"))
    rows = read_jsonl(tmp_path / "k.jsonl")
    assert [r["index"] for r in rows] == list(range(3000))
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )
    expected = client.embed(corpus, text_type="document").require_dense()
    assert [r["embedding"] for r in rows] == expected
    # The arrays kept in the journal (float32, base64) and those written directly are
    # the vectors of the service, every one at its place.
    want = np.asarray(expected, dtype=np.float32)
    assert np.array_equal(np.load(tmp_path / "k.npy"), want)
    import pyarrow.parquet as pq

    column = pq.read_table(tmp_path / "k.parquet").column("embedding").to_pylist()
    assert np.array_equal(np.asarray(column, dtype=np.float32), want)


def test_journaled_arrays_read_back_bit_for_bit_and_a_cut_line_is_ignored(
    tmp_path: Path,
) -> None:
    from dashscope_embed.cli import Journal
    from dashscope_embed.stream import EmbeddingChunk
    from dashscope_embed.types import EmbeddingResult, Usage

    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(2)]
    arrays[0][1, 2] = np.float32(1e-45)  # a subnormal survives too
    journal = Journal(tmp_path / "v.npy")
    for start, array in zip((10, 0), arrays, strict=True):
        result = EmbeddingResult(
            None, None, Usage(3), ("r",), "text-embedding-v4", 8, 3, dense_in_chunk_array=True
        )
        journal.add(list(range(start, start + 3)), EmbeddingChunk(start, result, array))
    journal.close(finished=False)
    segment = next(tmp_path.glob("v.npy.pending.*"))
    whole = segment.read_bytes()
    segment.write_bytes(whole[: len(whole) - 40])  # a kill while the last line was written

    again = Journal(tmp_path / "v.npy")
    again.load(saved=0, total=100)
    assert sorted(again.rows) == [10, 11, 12]  # the cut record is not guessed at
    for offset in range(3):
        row = again.rows[10 + offset][0]
        assert row.dtype == np.float32 and np.array_equal(row, arrays[0][offset])


def test_the_npy_progress_count_is_whole_whenever_a_kill_could_read_it(tmp_path: Path) -> None:
    """A kill lands at any moment, also while the count of saved rows is rewritten. Read
    back then, an empty count meant "nothing saved": the next run paid again for every
    row (440 rows in one CI run). Here a reader looks while the count is rewritten."""
    from dashscope_embed.cli import Output

    output = Output(tmp_path / "v.npy", total=100_000, dimension=4, resumable=True)
    progress = tmp_path / "v.npy.progress"
    seen: set[str] = set()
    writer = threading.Thread(target=lambda: [output.sync() for _ in range(3000)])
    writer.start()
    while writer.is_alive():
        seen.add(progress.read_text())
    writer.join()
    assert seen == {"0"}
    for damaged in ("", "12x", "100001"):
        progress.write_text(damaged)
        with pytest.raises(SystemExit, match=r"v\.npy\.progress is damaged"):
            Output(tmp_path / "v.npy", total=100_000, dimension=4, resumable=True)


def test_ctrl_c_reports_exactly_what_the_next_run_finds_and_pays_nothing_twice(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    dashscope_emulator.configure(latency=0.05, latency_jitter=0.1)
    write_corpus(tmp_path, texts(3000))
    for suffix in ("jsonl", "npy"):
        dashscope_emulator.reset()
        out = tmp_path / f"c.{suffix}"
        stderr = _interrupt(dashscope_emulator, tmp_path, out, signal.SIGINT)
        said = re.search(
            r"Interrupted: (\d+) of 3000 saved in [^\s,]+(?:, and (\d+) more kept)?", stderr
        )
        assert said, stderr
        in_order, ahead = int(said.group(1)), int(said.group(2) or 0)
        if suffix == "jsonl":
            assert len(read_jsonl(out)) == in_order
        done = run_cli(dashscope_emulator, "embed", str(tmp_path / "corpus.txt"), "--out", str(out))
        assert done.returncode == 0, done.stderr
        kept = f" (and {ahead} more kept from the last run)" if ahead else ""
        assert f"Resuming: {in_order} of 3000 already in {out}{kept}." in done.stderr
        assert dashscope_emulator.stats()["duplicate_embeddings"] == 0
