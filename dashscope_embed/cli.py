"""``dashscope-embed embed INPUT --out OUTPUT``: embed a file of any size, resumably.

Input: ``.jsonl`` (a field, default ``text``), ``.csv`` (a column, default ``text``) or
plain text (one text per line). Output: ``.jsonl`` (``{"index", "embedding",
"sparse"}`` per line), ``.npy`` (float32 matrix) or ``.parquet`` (with pyarrow). Modes:

* ``sync`` (default): the concurrent engine, streaming with bounded memory;
* ``batch``: OpenAI-compatible Batch API jobs (half price, slower), in chunks.

Interrupted runs (Ctrl-C, a crash, a kill) resume where the output ends: rerun the same
command and only the missing inputs are embedded again.
"""

from __future__ import annotations

import argparse
import base64
import csv
import itertools
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dashscope_embed._extras import MissingExtraError, needs_extra
from dashscope_embed.client import DashScopeClient
from dashscope_embed.errors import DashScopeError
from dashscope_embed.jobs import write_whole
from dashscope_embed.models import resolve_model
from dashscope_embed.protocol.common import encode_json
from dashscope_embed.stream import EmbeddingChunk


def read_texts(path: Path, field: str) -> Iterator[str]:
    """Texts from a JSONL, CSV or plain-text file, lazily, in order."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if field not in row:
                    raise SystemExit(f"{path}:{number}: no field {field!r} (use --field)")
                yield str(row[field])
        elif suffix == ".csv":
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or field not in reader.fieldnames:
                raise SystemExit(f"{path}: no column {field!r} (columns: {reader.fieldnames})")
            for row in reader:
                yield row[field]
        else:
            for line in handle:
                yield line.rstrip("\r\n")


def count_texts(path: Path, field: str) -> int:
    return sum(1 for _ in read_texts(path, field))


MANIFEST_VERSION = 1


def _read_progress(progress: Path, total: int) -> int:
    """How many rows of the ``.npy`` matrix an earlier run saved."""
    text = progress.read_text(encoding="utf-8").strip()
    if not text.isdigit() or int(text) > total:
        raise SystemExit(
            f"{progress} is damaged ({text!r}); delete it and the .npy file to start over"
        )
    return int(text)


class RunRecord:
    """``{out}.run.json``: the settings an output was made with, and whether it is whole.

    A rerun with other settings (model, dimension, role, ...) would mix vectors from
    two spaces in one file; it is refused, naming the settings, before anything is
    sent. A rerun of a finished output sends nothing.
    """

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path = out.with_name(out.name + ".run.json")
        self.settings = settings
        self.complete = False
        self.existed = self.path.exists()
        if self.existed:
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                raise SystemExit(
                    f"{self.path} is damaged; delete it and {out} to start over"
                ) from None
            differ = sorted(
                key
                for key in {*settings, *saved.get("settings", {})}
                if saved.get("settings", {}).get(key) != settings.get(key)
            )
            if differ:
                was = saved.get("settings", {})
                changes = "; ".join(
                    f"{k}: {was.get(k)!r} then, {settings.get(k)!r} now" for k in differ
                )
                raise SystemExit(
                    f"{out} was started with other settings: {changes}. Vectors made with "
                    "different settings cannot share a file: rerun "
                    f"with the earlier settings, or use another --out (or delete {out} and "
                    f"{self.path})"
                )
            self.complete = bool(saved.get("complete"))

    def save(self, *, complete: bool = False) -> None:
        self.complete = complete
        payload = {"version": MANIFEST_VERSION, "settings": self.settings, "complete": complete}
        write_whole(self.path, json.dumps(payload, indent=1))


class Journal:
    """``{out}.pending.N`` files: results that arrived ahead of the ordered writer.

    Requests finish in any order; the output is written in input order. Each result is
    appended here the moment it arrives (flushed to the operating system), so a kill,
    a crash or Ctrl-C loses nothing already delivered: the next run reads it back and
    does not pay for it again. The journal is a series of segment files, never
    rewritten: a full segment is closed and a new one started, and a segment is deleted
    once the output holds every position in it. (Rewriting would hold up the workers
    that deliver results, and whatever they hold is lost if the process dies then.)
    """

    SEGMENT_BYTES = 4 * 1024 * 1024

    def __init__(self, out: Path) -> None:
        self.folder = out.parent
        self.prefix = out.name + ".pending."
        self._lock = threading.Lock()
        self.rows: dict[int, tuple[Any, Any]] = {}
        self._handle: Any = None
        self._segment: Path | None = None
        self._segment_bytes = 0
        self._last_position: dict[Path, int] = {}  # highest position in each segment
        self._next = 0

    @property
    def path(self) -> Path:
        """The journal's name pattern, for messages."""
        return self.folder / (self.prefix + "*")

    def _segments(self) -> list[Path]:
        found = [p for p in self.folder.glob(self.prefix + "*") if p.suffix[1:].isdigit()]
        return sorted(found, key=lambda p: int(p.suffix[1:]))

    def load(self, saved: int, total: int) -> None:
        """Read back what earlier runs kept (a line cut short by a kill is ignored)."""
        for segment in self._segments():
            self._next = max(self._next, int(segment.suffix[1:]) + 1)
            highest = -1
            for line in segment.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the line being written when the process died
                vectors = _journal_dense(entry["dense"])
                for i, position in enumerate(entry["positions"]):
                    highest = max(highest, position)
                    if saved <= position < total:
                        dense = vectors[i] if vectors is not None else None
                        sparse = entry["sparse"][i] if entry["sparse"] is not None else None
                        self.rows[position] = (dense, sparse)
            self._last_position[segment] = highest

    def add(self, positions: list[int], chunk: EmbeddingChunk) -> None:
        """Keep one request's vectors (called from the worker that received them)."""
        result = chunk.result
        sparse = (
            [{"indices": v.indices, "values": v.values} for v in result.sparse]
            if result.sparse is not None
            else None
        )
        dense: Any = result.dense
        if chunk.array is not None:
            # float32 as base64: 0.02 ms per 10 vectors, where JSON floats took 7 ms.
            dense = {
                "float32": base64.b64encode(chunk.array.astype("<f4").tobytes()).decode(),
                "shape": list(chunk.array.shape),
            }
        line = encode_json({"positions": positions, "dense": dense, "sparse": sparse}).decode()
        with self._lock:
            if self._handle is None or self._segment_bytes > self.SEGMENT_BYTES:
                self._start_segment()
            assert self._segment is not None
            self._handle.write(line + "\n")
            self._handle.flush()
            self._segment_bytes += len(line) + 1
            self._last_position[self._segment] = max(
                self._last_position.get(self._segment, -1), *positions
            )
            vectors = chunk.array if chunk.array is not None else result.dense
            for i, position in enumerate(positions):
                self.rows[position] = (
                    vectors[i] if vectors is not None else None,
                    sparse[i] if sparse is not None else None,
                )

    def _start_segment(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._segment = self.folder / f"{self.prefix}{self._next}"
        self._next += 1
        self._handle = self._segment.open("a", encoding="utf-8")
        self._segment_bytes = 0

    def get(self, position: int) -> tuple[Any, Any] | None:
        with self._lock:
            return self.rows.get(position)

    def forget_before(self, saved: int) -> None:
        """Drop what the output now holds, and every closed segment it covers."""
        with self._lock:
            for position in [p for p in self.rows if p < saved]:
                del self.rows[position]
            done = [
                segment
                for segment, highest in self._last_position.items()
                if highest < saved and segment != self._segment
            ]
            for segment in done:
                segment.unlink(missing_ok=True)
                del self._last_position[segment]

    def close(self, *, finished: bool) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if finished:
                for segment in self._segments():
                    segment.unlink(missing_ok=True)


class Output:
    """Where vectors go, in input order; knows how many inputs it already holds.

    ``done`` counts rows handed to it; ``saved`` counts rows that would survive the
    process dying now (Parquet rows wait in a buffer until a part file is written).
    """

    def __init__(self, path: Path, total: int, dimension: int | None, *, resumable: bool) -> None:
        self.path = path
        self.total = total
        self.dimension = dimension
        self.done = 0
        self.saved = 0
        self._handle: Any = None
        self._matrix: Any = None
        suffix = path.suffix.lower()
        self._parts: Path | None = None
        self._buffer: list[dict[str, Any]] = []
        self._closed = False
        _check_output_modules(suffix)
        if suffix == ".jsonl":
            self._open_jsonl()
        elif suffix == ".npy":
            self._open_npy(resumable)
        elif suffix == ".parquet":
            self._open_parquet()
        else:
            raise SystemExit(f"--out must end in .jsonl, .npy or .parquet, got {path.name}")
        self.saved = self.done

    @property
    def takes_arrays(self) -> bool:
        """Whether vectors can come as float32 arrays (.npy and .parquet hold float32)."""
        return self._matrix is not None or self._parts is not None

    PART_ROWS = 1000  # Parquet rows buffered per part file

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq

        self._parts = self.path.with_name(self.path.name + ".parts")
        self._parts.mkdir(exist_ok=True)
        self.done = sum(pq.ParquetFile(p).metadata.num_rows for p in self._parts.glob("*.parquet"))

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer or self._parts is None:
            return
        start = self._buffer[0]["index"]
        table = pa.table(_parquet_columns(self._buffer))
        tmp = self._parts / f"part-{start:012d}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(self._parts / f"part-{start:012d}.parquet")  # whole parts only
        self._buffer = []
        self.saved = self.done

    def _finish_parquet(self) -> None:
        import shutil

        import pyarrow.parquet as pq

        assert self._parts is not None
        parts = sorted(self._parts.glob("*.parquet"))
        writer = None
        for part in parts:  # one part in memory at a time
            table = pq.read_table(part)
            if writer is None:
                writer = pq.ParquetWriter(self.path, table.schema)
            writer.write_table(table)
        if writer is not None:
            writer.close()
        shutil.rmtree(self._parts)

    def _open_jsonl(self) -> None:
        good = 0
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1  # a line cut by an interruption is dropped
            good = data[:end].count(b"\n")
            last = data[:end].splitlines()[-1] if good else b""
            if last and self.dimension is not None:
                width = len(json.loads(last).get("embedding") or [])
                if width and width != self.dimension:
                    raise SystemExit(
                        f"{self.path} holds {width}-dimension vectors; this run asks for "
                        f"{self.dimension}: use another --out, or the earlier --dimension"
                    )
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        self.done = good
        self._handle = self.path.open("a", encoding="utf-8")

    def _open_npy(self, resumable: bool) -> None:
        import numpy as np

        progress = self.path.with_suffix(".npy.progress")
        if self.path.exists() and progress.exists() and resumable:
            self._matrix = np.load(self.path, mmap_mode="r+")
            if self._matrix.shape != (self.total, self.dimension):
                raise SystemExit(
                    f"{self.path} is a {self._matrix.shape} matrix; this run makes "
                    f"({self.total}, {self.dimension}): use another --out"
                )
            self.done = _read_progress(progress, self.total)
        elif self.path.exists():
            raise SystemExit(
                f"{self.path} exists and there is no record of the run that made it; "
                "delete it or use another --out (nothing was sent)"
            )
        else:
            if self.dimension is None:
                raise SystemExit(".npy output needs dense vectors (--output-type dense)")
            self._matrix = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float32, shape=(self.total, self.dimension)
            )
            write_whole(progress, "0")
        self._progress = progress

    def write_row(self, dense: Any, sparse: Any) -> None:
        """Append the next input's vectors (sparse as ``{"indices", "values"}``)."""
        index = self.done
        if self._parts is not None:
            row: dict[str, Any] = {"index": index}
            if dense is not None:
                row["embedding"] = dense
            if sparse is not None:
                row["sparse_indices"] = sparse["indices"]
                row["sparse_values"] = sparse["values"]
            self._buffer.append(row)
            self.done += 1
            if len(self._buffer) >= self.PART_ROWS:
                self._flush_parquet()
            return
        if self._handle is not None:
            line: dict[str, Any] = {"index": index}
            if dense is not None:
                line["embedding"] = dense
            if sparse is not None:
                line["sparse"] = dict(zip(sparse["indices"], sparse["values"], strict=True))
            self._handle.write(encode_json(line).decode() + "\n")
        else:
            if dense is None:
                raise SystemExit(".npy output needs dense vectors (--output-type dense)")
            self._matrix[index] = dense
        self.done += 1

    def sync(self) -> None:
        """Make what was written so far survive the process (not Parquet's buffer)."""
        if self._handle is not None:
            self._handle.flush()
            self.saved = self.done
        elif self._matrix is not None:
            self._matrix.flush()
            write_whole(self._progress, str(self.done))
            self.saved = self.done

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._parts is not None:
            self._flush_parquet()  # also on Ctrl-C: buffered vectors are kept
            if self.done == self.total:
                self._finish_parquet()
        elif self._handle is not None:
            self._handle.close()
            if self.done != self.total:
                # Ctrl-C can land between writing a line and counting it: report what
                # the file holds, which is what the next run will find.
                with self.path.open("rb") as handle:
                    self.done = sum(
                        chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")
                    )
        elif self._matrix is not None:
            self.sync()
            if self.done == self.total:
                self._progress.unlink(missing_ok=True)
        self.saved = self.done


def _journal_dense(saved: Any) -> Any:
    """A journal entry's dense vectors: JSON floats, or float32 rows saved as base64."""
    if not isinstance(saved, dict):
        return saved
    import numpy as np

    raw = base64.b64decode(saved["float32"])
    return np.frombuffer(raw, dtype="<f4").reshape(saved["shape"]).astype(np.float32)


def _check_output_modules(suffix: str) -> None:
    """Before anything is sent: .npy and .parquet output need the ``bulk`` extra."""
    try:
        if suffix == ".npy":
            with needs_extra("--out *.npy", "bulk"):
                import numpy
        elif suffix == ".parquet":
            with needs_extra("--out *.parquet", "bulk"):
                import numpy  # noqa: F401
                import pyarrow.parquet  # noqa: F401
    except MissingExtraError as error:
        raise SystemExit(str(error)) from None


def _parquet_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Arrow columns: ``embedding`` as fixed-size float32 lists (built through NumPy: a
    tenth of the time of converting Python lists, time in which no reply is kept)."""
    import numpy as np
    import pyarrow as pa

    columns: dict[str, Any] = {"index": pa.array([r["index"] for r in rows], type=pa.int64())}
    if "embedding" in rows[0]:
        matrix = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1)), matrix.shape[1]
        )
    if "sparse_indices" in rows[0]:
        columns["sparse_indices"] = pa.array(
            [r["sparse_indices"] for r in rows], type=pa.list_(pa.int64())
        )
        columns["sparse_values"] = pa.array(
            [r["sparse_values"] for r in rows], type=pa.list_(pa.float32())
        )
    return columns


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dashscope-embed", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser("embed", help="embed a JSONL, CSV or text file")
    embed.add_argument("input", type=Path)
    embed.add_argument(
        "--out", type=Path, required=True, help="output .jsonl, .npy or .parquet (needs pyarrow)"
    )
    embed.add_argument("--field", default="text", help="JSONL field / CSV column (text)")
    embed.add_argument("--model", default="text-embedding-v4")
    embed.add_argument("--dimension", type=int)
    embed.add_argument("--text-type", choices=["document", "query"], default="document")
    embed.add_argument("--instruct", help="task instruction (queries)")
    embed.add_argument(
        "--output-type", choices=["dense", "sparse", "dense&sparse"], default="dense"
    )
    embed.add_argument("--mode", choices=["sync", "batch"], default="sync")
    embed.add_argument(
        "--batch-lines", type=int, default=20_000, help="texts per Batch API job in batch mode"
    )
    embed.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="a ceiling on requests in flight (default: found from the service, up to 64)",
    )
    embed.add_argument("--long-text", choices=["error", "truncate", "chunk"], default="error")
    embed.add_argument("--base-url", help="default: DASHSCOPE_BASE_URL or the region's host")
    embed.add_argument("--region")
    embed.add_argument("--workspace")
    embed.add_argument(
        "--server",
        choices=["vllm", "sglang", "tei", "ollama", "infinity"],
        help="a self-hosted Qwen3-Embedding server at --base-url (sync mode only); its "
        "token, if it needs one, from DASHSCOPE_SERVER_TOKEN",
    )
    embed.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def run_embed(args: argparse.Namespace) -> int:
    from dashscope_embed.jobs import BATCH_API_MAX_REQUESTS

    if not args.input.exists():
        raise SystemExit(f"no such input file: {args.input}")
    if not 1 <= args.batch_lines <= BATCH_API_MAX_REQUESTS:
        raise SystemExit(
            f"--batch-lines must be 1..{BATCH_API_MAX_REQUESTS:,} (requests per Batch API job), "
            f"got {args.batch_lines}"
        )
    if args.server is not None and args.mode != "sync":
        raise SystemExit("--server works in --mode sync (a self-hosted server has no batch jobs)")
    client = DashScopeClient(
        base_url=args.base_url,
        region=args.region,
        workspace=args.workspace,
        max_concurrency=args.max_concurrency,
        server=args.server,
        api_key=os.environ.get("DASHSCOPE_SERVER_TOKEN") if args.server else None,
    )
    spec = resolve_model(args.model)
    dense = args.output_type != "sparse"
    dimension = (args.dimension or spec.default_dimension) if dense else None
    total = count_texts(args.input, args.field)
    record = RunRecord(args.out, _run_settings(args, spec.name, dimension, total))
    if record.complete:
        print(f"{args.out} already holds all {total} vectors.", file=sys.stderr)
        return 0
    output = Output(args.out, total, dimension, resumable=record.existed)
    if output.done >= total:
        record.save(complete=True)
        print(f"{args.out} already holds all {total} vectors.", file=sys.stderr)
        return 0
    record.save()
    journal = Journal(args.out)
    journal.load(output.done, total)
    if output.done or journal.rows:
        kept = f" (and {len(journal.rows)} more kept from the last run)" if journal.rows else ""
        print(f"Resuming: {output.done} of {total} already in {args.out}{kept}.", file=sys.stderr)
    stopped: str | None = None
    code = 0
    try:
        if args.mode == "sync":
            _embed_sync(args, client, spec, output, journal)
        else:
            _embed_batch(args, client, spec, output)
    except KeyboardInterrupt:
        stopped, code = "Interrupted: {saved}; rerun to resume.", 130
    except DashScopeError as exc:
        stopped, code = f"Stopped: {{saved}} ({exc}); rerun to resume.", 1
    finally:
        output.close()
        journal.close(finished=output.done == total)
    if stopped is not None:
        # Counted after closing, from what the next run will find.
        print("\n" + stopped.format(saved=_saved(output, journal)), file=sys.stderr)
        return code
    record.save(complete=True)
    if not args.quiet:
        print(file=sys.stderr)
    print(f"Wrote {total} vectors to {args.out}.", file=sys.stderr)
    return 0


def _run_settings(
    args: argparse.Namespace, model: str, dimension: int | None, total: int
) -> dict[str, Any]:
    """Everything that changes which vectors end up in the output."""
    query = args.text_type == "query"
    return {
        "input": str(args.input.resolve()),
        "field": args.field,
        "texts": total,
        "model": model,
        "dimension": dimension,
        "text_type": args.text_type,
        "instruct": args.instruct if query else None,
        "output_type": args.output_type,
        "long_text": args.long_text,
    }


def _saved(output: Output, journal: Journal) -> str:
    """What survives this process, as the next run will find it."""
    ahead = sum(1 for position in journal.rows if position >= output.saved)
    kept = f", and {ahead} more kept in {journal.path.name}" if ahead else ""
    return f"{output.saved} of {output.total} saved in {output.path.name}{kept}"


def _embed_sync(
    args: argparse.Namespace,
    client: DashScopeClient,
    spec: Any,
    output: Output,
    journal: Journal,
) -> None:
    """Stream the texts not yet held; every finished request goes to the journal at
    once, and the output is written in order from the journal."""
    fed: list[int] = []  # input position of each text fed to the stream, in order
    lock = threading.Lock()

    def unsaved_texts() -> Iterator[str]:
        texts = itertools.islice(read_texts(args.input, args.field), output.done, None)
        for position, text in enumerate(texts, start=output.done):
            if position not in journal.rows:
                with lock:
                    fed.append(position)
                yield text

    def keep(chunk: EmbeddingChunk) -> None:
        with lock:
            where = fed[chunk.start : chunk.stop]
        journal.add(where, chunk)

    chunks = client.embed_stream(
        unsaved_texts(),
        model=spec,
        text_type=args.text_type,
        dimension=args.dimension,
        instruct=args.instruct if args.text_type == "query" else None,
        output_type=args.output_type,
        long_text=args.long_text,
        as_numpy=output.takes_arrays and args.output_type != "sparse",
        on_complete=keep,
    )
    try:
        for _chunk in itertools.chain(chunks, [None]):
            while (row := journal.get(output.done)) is not None:
                output.write_row(*row)
            output.sync()
            journal.forget_before(output.saved)
            _progress(args, output)
    finally:
        # Settle before reporting: requests under way finish into the journal, queued
        # ones are not sent (the stream's own cleanup, run now rather than at exit).
        chunks.close()  # type: ignore[attr-defined]


def _embed_batch(
    args: argparse.Namespace, client: DashScopeClient, spec: Any, output: Output
) -> None:
    if args.output_type != "dense" or args.text_type != "document":
        raise SystemExit(
            "batch mode embeds dense document vectors only "
            "(the Batch API carries no text_type or sparse output)"
        )
    from dashscope_embed.jobs import BatchAPIJobs

    jobs = BatchAPIJobs(client)
    remaining = itertools.islice(read_texts(args.input, args.field), output.done, None)
    while True:
        batch = list(itertools.islice(remaining, args.batch_lines))
        if not batch:
            break
        state = args.out.with_name(f"{args.out.name}.batch-{output.done}.json")
        result = jobs.run(
            batch,
            model=spec,
            dimension=args.dimension,
            state_file=state,
            on_poll=_poll_printer(args, output.done, output.total),
        )
        for vector in result.require_dense():
            output.write_row(vector, None)
        output.sync()
        state.unlink(missing_ok=True)
        _progress(args, output)


def _poll_printer(args: argparse.Namespace, start: int, total: int) -> Any:
    """Progress while a batch job runs on the service."""

    def show(status: Any) -> None:
        if not args.quiet:
            print(
                f"\r{start}/{total} embedded; batch job {status.status} "
                f"{status.completed}/{status.total}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )

    return show


def _progress(args: argparse.Namespace, output: Output) -> None:
    if not args.quiet:
        print(f"\r{output.done}/{output.total} embedded", end="", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(run_embed(args))


if __name__ == "__main__":
    main()
