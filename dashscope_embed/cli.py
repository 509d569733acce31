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
import csv
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dashscope_embed.client import DashScopeClient
from dashscope_embed.errors import DashScopeError
from dashscope_embed.models import resolve_model
from dashscope_embed.types import EmbeddingResult


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


class Output:
    """Where vectors go; knows how many inputs it already holds (for resuming)."""

    def __init__(self, path: Path, total: int, dimension: int | None) -> None:
        self.path = path
        self.total = total
        self.dimension = dimension
        self.done = 0
        self._handle: Any = None
        self._matrix: Any = None
        suffix = path.suffix.lower()
        self._parts: Path | None = None
        self._buffer: list[dict[str, Any]] = []
        if suffix == ".jsonl":
            self._open_jsonl()
        elif suffix == ".npy":
            self._open_npy()
        elif suffix == ".parquet":
            self._open_parquet()
        else:
            raise SystemExit(f"--out must end in .jsonl, .npy or .parquet, got {path.name}")

    PART_ROWS = 1000  # Parquet rows buffered per part file

    def _open_parquet(self) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("Parquet output needs pyarrow: pip install pyarrow") from None
        self._parts = self.path.with_name(self.path.name + ".parts")
        self._parts.mkdir(exist_ok=True)
        self.done = sum(pq.ParquetFile(p).metadata.num_rows for p in self._parts.glob("*.parquet"))

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer or self._parts is None:
            return
        start = self._buffer[0]["index"]
        table = pa.Table.from_pylist(self._buffer)
        tmp = self._parts / f"part-{start:012d}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(self._parts / f"part-{start:012d}.parquet")  # whole parts only
        self._buffer = []

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
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        self.done = good
        self._handle = self.path.open("a", encoding="utf-8")

    def _open_npy(self) -> None:
        import numpy as np

        progress = self.path.with_suffix(".npy.progress")
        if self.path.exists() and progress.exists():
            self._matrix = np.load(self.path, mmap_mode="r+")
            self.done = int(progress.read_text() or 0)
        else:
            if self.dimension is None:
                raise SystemExit(".npy output needs dense vectors (--output-type dense)")
            self._matrix = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float32, shape=(self.total, self.dimension)
            )
            progress.write_text("0")
        self._progress = progress

    def write(self, result: EmbeddingResult) -> None:
        if self._parts is not None:
            for i in range(len(result)):
                row: dict[str, Any] = {"index": self.done + i}
                if result.dense is not None:
                    row["embedding"] = result.dense[i]
                if result.sparse is not None:
                    row["sparse_indices"] = result.sparse[i].indices
                    row["sparse_values"] = result.sparse[i].values
                self._buffer.append(row)
            if len(self._buffer) >= self.PART_ROWS:
                self._flush_parquet()
        elif self._handle is not None:
            for i in range(len(result)):
                line: dict[str, Any] = {"index": self.done + i}
                if result.dense is not None:
                    line["embedding"] = result.dense[i]
                if result.sparse is not None:
                    line["sparse"] = result.sparse[i].as_dict()
                self._handle.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._handle.flush()
        else:
            self._matrix[self.done : self.done + len(result)] = result.require_dense()
            self._matrix.flush()
            self._progress.write_text(str(self.done + len(result)))
        self.done += len(result)

    def close(self) -> None:
        if self._parts is not None:
            self._flush_parquet()  # also on Ctrl-C: buffered vectors are kept
            if self.done == self.total:
                self._finish_parquet()
        elif self._handle is not None:
            self._handle.close()
        elif self._matrix is not None:
            self._matrix.flush()
            if self.done == self.total:
                self._progress.unlink(missing_ok=True)


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
    embed.add_argument("--max-concurrency", type=int, default=8)
    embed.add_argument("--long-text", choices=["error", "truncate", "chunk"], default="error")
    embed.add_argument("--base-url", help="default: DASHSCOPE_BASE_URL or the region's host")
    embed.add_argument("--region")
    embed.add_argument("--workspace")
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
    client = DashScopeClient(
        base_url=args.base_url,
        region=args.region,
        workspace=args.workspace,
        max_concurrency=args.max_concurrency,
    )
    spec = resolve_model(args.model)
    dense = args.output_type != "sparse"
    dimension = (args.dimension or spec.default_dimension) if dense else None
    total = count_texts(args.input, args.field)
    output = Output(args.out, total, dimension)
    if output.done >= total:
        print(f"{args.out} already holds all {total} vectors.", file=sys.stderr)
        return 0
    if output.done:
        print(f"Resuming: {output.done} of {total} already in {args.out}.", file=sys.stderr)
    remaining = itertools.islice(read_texts(args.input, args.field), output.done, None)
    try:
        if args.mode == "sync":
            chunks = client.embed_stream(
                remaining,
                model=spec,
                text_type=args.text_type,
                dimension=args.dimension,
                instruct=args.instruct if args.text_type == "query" else None,
                output_type=args.output_type,
                long_text=args.long_text,
            )
            for chunk in chunks:
                output.write(chunk.result)
                _progress(args, output)
        else:
            if args.output_type != "dense" or args.text_type != "document":
                raise SystemExit(
                    "batch mode embeds dense document vectors only "
                    "(the Batch API carries no text_type or sparse output)"
                )
            from dashscope_embed.jobs import BatchAPIJobs

            jobs = BatchAPIJobs(client)
            while True:
                batch = list(itertools.islice(remaining, args.batch_lines))
                if not batch:
                    break
                state = args.out.with_name(f"{args.out.name}.batch-{output.done}.json")
                output.write(
                    jobs.run(
                        batch,
                        model=spec,
                        dimension=args.dimension,
                        state_file=state,
                        on_poll=_poll_printer(args, output.done, total),
                    )
                )
                state.unlink(missing_ok=True)
                _progress(args, output)
    except KeyboardInterrupt:
        print(f"\nInterrupted: {output.done} of {total} saved; rerun to resume.", file=sys.stderr)
        return 130
    except DashScopeError as exc:
        print(f"\nStopped at {output.done} of {total} ({exc}); rerun to resume.", file=sys.stderr)
        return 1
    finally:
        output.close()
    if not args.quiet:
        print(file=sys.stderr)
    print(f"Wrote {total} vectors to {args.out}.", file=sys.stderr)
    return 0


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
