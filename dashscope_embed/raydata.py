"""Ray Data: embed a text column on an actor pool, one account's quota shared by all.

``pip install dashscope-embed[ray]``::

    import ray
    from dashscope_embed.raydata import DashScopeEmbedder

    ray.init(runtime_env={"env_vars": {"DASHSCOPE_API_KEY": key}})
    ds = ray.data.read_parquet("chunks/")
    ds = ds.map_batches(
        DashScopeEmbedder,
        fn_constructor_kwargs={"text_column": "text", "dimension": 512,
                               "checkpoint_dir": "/shared/embed-checkpoints"},
        compute=ray.data.ActorPoolStrategy(size=4), num_cpus=0.25,
        batch_size=2000, batch_format="pyarrow",
    )
    ds.write_parquet("vectors/")

Each actor runs the core client's concurrent engine on its batches. The actors mostly
wait on HTTP: give them a fraction of a CPU (``num_cpus=0.25``), or whole-CPU actors can
starve the tasks that read and chunk the data (a deadlock on a small cluster). Every actor's request
starts come from one named Ray actor, the quota keeper (:mod:`dashscope_embed.cluster`),
so the cluster as a whole keeps to the account's quota (told, or learned from
``Throttling.RateQuota`` refusals) and uses nearly all of it. Start times are leased in
blocks, not one round trip per request; if the keeper is restarting, actors pace
themselves and go back to it when it is up.

The key is read from each worker's ``DASHSCOPE_API_KEY`` (Ray's ``runtime_env``), never
passed as an argument: constructor arguments are pickled into Ray's object store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dashscope_embed._extras import needs_extra
from dashscope_embed.client import DashScopeClient
from dashscope_embed.cluster import Lease, LeasedPace, LeaseRequest, QuotaKeeper, split_quota
from dashscope_embed.errors import (
    ConfigurationError,
    InvalidInputError,
    PartialEmbeddingError,
)
from dashscope_embed.models import DEFAULT_MODEL, resolve_model
from dashscope_embed.stream import EmbedStreamError
from dashscope_embed.types import SparseEmbedding

with needs_extra("dashscope_embed.raydata", "ray"):
    import numpy as np
    import pyarrow as pa
    import ray

KEEPER_NAMESPACE = "dashscope_embed"
OnError = Literal["raise", "column"]


def quota_keeper(
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> Any:
    """The named keeper actor for ``name``, created by whichever caller comes first.

    It is detached: it outlives the actor that created it (Ray Data starts and stops
    map workers as it scales) and serves the next job on the cluster with what it has
    learned; :func:`stop_quota_keeper` removes it. Ray restarts it if its process dies
    (``max_restarts=-1``); it then starts from the told quotas again and relearns an
    untold cap."""
    actor_class = ray.remote(num_cpus=0, max_restarts=-1)(_KeeperActor)
    return actor_class.options(
        name=name,
        namespace=KEEPER_NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        max_concurrency=64,  # threaded: a lease never queues behind another
    ).remote(requests_per_minute, tokens_per_minute)


def stop_quota_keeper(name: str) -> bool:
    """Remove the keeper named ``name``; whether there was one."""
    try:
        actor = ray.get_actor(name, namespace=KEEPER_NAMESPACE)
    except ValueError:
        return False
    ray.kill(actor)
    return True


def keeper_name(base_url: str, model: str, rpm: int | None, tpm: int | None) -> str:
    """One keeper per host, model and told quota (a new quota is a new keeper)."""
    return f"quota/{base_url}/{model}/rpm={rpm}/tpm={tpm}"


class _KeeperActor:
    """:class:`QuotaKeeper` as a Ray actor (threaded, so a lease never waits for another)."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.keeper = QuotaKeeper(requests_per_minute, tokens_per_minute)

    def lease(self, request: LeaseRequest) -> Lease:
        return self.keeper.lease(request)

    def stats(self) -> dict[str, Any]:
        return self.keeper.stats()


class DashScopeEmbedder:
    """A callable class for ``Dataset.map_batches``: embeds ``text_column`` and returns the
    batch with vector columns added, rows in order.

    Args:
        text_column: the column of texts.
        id_column: a column naming rows in errors (default: the row's position in the
            batch).
        model, text_type, output_type, dimension, instruct, task: as for
            :meth:`DashScopeClient.embed`.
        output_column: the dense vectors' column (fixed-size float32 lists); sparse
            vectors go in ``{output_column}_sparse_indices`` / ``_sparse_values``.
        on_error: ``"raise"`` (default): a row whose request failed for good fails the
            task, naming the rows, so Ray retries it; ``"column"``: such rows get no
            vector and their error in ``{output_column}_error``.
        checkpoint_dir: a directory every worker can reach. Each finished request's
            vectors are saved there as they arrive, so a retried task (a killed actor)
            re-embeds nothing a previous attempt received.
        shared_quota: pace every actor's requests from one keeper (default); ``False``
            paces each actor on its own.
        quota_name: the keeper's name (default: one per model and host).
        requests_per_minute, tokens_per_minute: the account's told quota, shared.
        workers: how many actors share the quota, for each one's share while the keeper
            is unreachable (default 1: the whole told quota each, the safe side is the
            service's 429s).
        **settings: client settings (``base_url``, ``region``, ``max_concurrency``, ...);
            not ``api_key``.
    """

    def __init__(
        self,
        *,
        text_column: str = "text",
        id_column: str | None = None,
        model: str = DEFAULT_MODEL,
        text_type: str | None = "document",
        output_type: str = "dense",
        dimension: int | None = None,
        instruct: str | None = None,
        task: str | None = None,
        output_column: str = "embedding",
        on_error: OnError = "raise",
        checkpoint_dir: str | os.PathLike[str] | None = None,
        shared_quota: bool = True,
        quota_name: str | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        workers: int = 1,
        **settings: Any,
    ) -> None:
        if "api_key" in settings or "dashscope_api_key" in settings:
            raise ConfigurationError(
                "DashScopeEmbedder takes no api_key: Ray pickles constructor arguments into "
                "its object store. Set DASHSCOPE_API_KEY in the workers' environment "
                "(ray.init(runtime_env={'env_vars': {'DASHSCOPE_API_KEY': ...}}))"
            )
        if on_error not in ("raise", "column"):
            raise ConfigurationError(f"on_error must be 'raise' or 'column', got {on_error!r}")
        self.text_column = text_column
        self.id_column = id_column
        self.output_column = output_column
        self.on_error = on_error
        self.options: dict[str, Any] = {"model": model, "text_type": text_type}
        for name, value in (
            ("output_type", output_type),
            ("dimension", dimension),
            ("instruct", instruct),
            ("task", task),
        ):
            if value is not None:
                self.options[name] = value
        if not shared_quota:
            settings.update(
                requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute
            )
        self.client = DashScopeClient(**settings)
        # Bad options fail here, in the actor's constructor, before any batch.
        self.client.check_texts(["x"], **self.options)
        self.spec = resolve_model(model)
        self.dimension = dimension or self.spec.default_dimension
        self.checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.checkpoint is not None:
            self.checkpoint.mkdir(parents=True, exist_ok=True)
        self.leased: LeasedPace | None = None
        if shared_quota:
            name = quota_name or keeper_name(
                self.client.settings.root_url,
                self.spec.name,
                requests_per_minute,
                tokens_per_minute,
            )
            self.quota_name = name
            keeper = quota_keeper(name, requests_per_minute, tokens_per_minute)
            self.leased = LeasedPace(
                lambda request: ray.get(keeper.lease.remote(request), timeout=10),
                fallback_rpm=split_quota(requests_per_minute, workers),
                fallback_tpm=split_quota(tokens_per_minute, workers),
            )
            self.leased.tokens_per_minute = tokens_per_minute
            self.client.share_rate(self.leased)

    # -------------------------------------------------------------- the call
    def __call__(self, batch: Any) -> Any:
        columns, kind = _columns(batch)
        if self.text_column not in columns:
            raise KeyError(
                f"DashScopeEmbedder: no column {self.text_column!r} in the batch; columns: "
                f"{', '.join(map(str, columns))}"
            )
        texts = _as_list(columns[self.text_column])
        ids = _as_list(columns[self.id_column]) if self.id_column else list(range(len(texts)))
        self._check(texts, ids)
        dense, sparse, errors = self._embed(texts, ids)
        added = self._columns_out(dense, sparse, errors)
        return _with_columns(batch, kind, added)

    @property
    def _wants_dense(self) -> bool:
        return bool(self.options.get("output_type", "dense") != "sparse")

    def _check(self, texts: list[Any], ids: list[Any]) -> None:
        """Bad rows named by id before any request for this batch."""
        try:
            self.client.check_texts(texts, **self.options)
        except InvalidInputError as exc:
            named = "; ".join(
                f"row {ids[p.index]!r}: {p.reason}" if p.index is not None else p.reason
                for p in exc.problems
            )
            raise InvalidInputError(f"column {self.text_column!r}: {named}") from None

    def _embed(
        self, texts: list[str], ids: list[Any]
    ) -> tuple[list[Any], list[Any] | None, list[str | None]]:
        wants_sparse = self.options.get("output_type", "dense") != "dense"
        count = len(texts)
        dense: list[Any] = [None] * count
        sparse: list[Any] | None = [None] * count if wants_sparse else None
        errors: list[str | None] = [None] * count
        journal = _Journal(self.checkpoint, self._block_key(texts)) if self.checkpoint else None
        if journal is not None:
            _restore(journal, dense, sparse)
        missing = [i for i in range(count) if not self._done(i, dense, sparse)]
        if missing and journal is not None:
            missing = self._stream(texts, missing, journal, dense, sparse)
        if missing:
            self._embed_plain(texts, ids, missing, dense, sparse, errors, journal)
        return dense, sparse, errors

    def _done(self, i: int, dense: list[Any], sparse: list[Any] | None) -> bool:
        dense_done = dense[i] is not None or not self._wants_dense
        return dense_done and (sparse is None or sparse[i] is not None)

    def _stream(
        self,
        texts: list[str],
        missing: list[int],
        journal: _Journal,
        dense: list[Any],
        sparse: list[Any] | None,
    ) -> list[int]:
        """Embed ``missing`` rows, saving each request's vectors as it arrives; return
        the rows still without vectors (after a request failed for good)."""

        def save(chunk: Any) -> None:
            positions = missing[chunk.start : chunk.stop]
            journal.save(positions, chunk.array, chunk.result.sparse)

        try:
            for chunk in self.client.embed_stream(
                [texts[i] for i in missing],
                on_complete=save,
                as_numpy=self._wants_dense,  # arrays hold dense vectors only
                **self.options,
            ):
                for offset, position in enumerate(missing[chunk.start : chunk.stop]):
                    if chunk.array is not None:
                        dense[position] = chunk.array[offset]
                    if sparse is not None and chunk.result.sparse is not None:
                        sparse[position] = chunk.result.sparse[offset]
        except EmbedStreamError:
            _restore(journal, dense, sparse)  # every request that finished was saved
        return [i for i in missing if not self._done(i, dense, sparse)]

    def _embed_plain(
        self,
        texts: list[str],
        ids: list[Any],
        missing: list[int],
        dense: list[Any],
        sparse: list[Any] | None,
        errors: list[str | None],
        journal: _Journal | None,
    ) -> None:
        got_dense: Sequence[Any] | None
        got_sparse: Sequence[Any] | None
        try:
            # Dense rows as float32 arrays straight from the replies: the column is float32.
            result = self.client._embed_float32([texts[i] for i in missing], **self.options)
            got_dense, got_sparse, failed = result.dense, result.sparse, []
            reasons: list[str] = []
        except PartialEmbeddingError as exc:
            got_dense, got_sparse = exc.partial.dense, exc.partial.sparse
            failed = exc.failed_positions
            reasons = [str(e) for e in exc.errors]
        for offset, position in enumerate(missing):
            if got_dense is not None and got_dense[offset] is not None:
                dense[position] = got_dense[offset]
            if sparse is not None and got_sparse is not None and got_sparse[offset] is not None:
                sparse[position] = got_sparse[offset]
        if journal is not None:
            failed_set = set(failed)
            done = [p for k, p in enumerate(missing) if k not in failed_set]
            journal.save_rows(done, dense, sparse)
        if failed:
            failed_ids = [ids[missing[k]] for k in failed]
            reason = reasons[0] if reasons else "the request failed"
            if self.on_error == "raise":
                raise RuntimeError(
                    f"DashScopeEmbedder: {len(failed_ids)} rows have no vector after retries "
                    f"(ids {failed_ids[:20]}{' ...' if len(failed_ids) > 20 else ''}): {reason}"
                )
            for k in failed:
                errors[missing[k]] = reason

    def _block_key(self, texts: list[str]) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps(self.options, sort_keys=True).encode())
        digest.update(self.client.settings.root_url.encode())
        for text in texts:
            digest.update(len(text).to_bytes(8, "little"))
            digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.hexdigest()[:32]

    def _columns_out(
        self, dense: list[Any], sparse: list[Any] | None, errors: list[str | None]
    ) -> dict[str, pa.Array]:
        out: dict[str, pa.Array] = {}
        if self._wants_dense:
            out[self.output_column] = _fixed_size_vectors(dense, self.dimension)
        if sparse is not None:
            out[f"{self.output_column}_sparse_indices"] = pa.array(
                [None if s is None else list(s.indices) for s in sparse], pa.list_(pa.int32())
            )
            out[f"{self.output_column}_sparse_values"] = pa.array(
                [None if s is None else list(s.values) for s in sparse], pa.list_(pa.float32())
            )
        if self.on_error == "column":
            out[f"{self.output_column}_error"] = pa.array(errors, pa.string())
        return out


# ---------------------------------------------------------------------- batches
def _columns(batch: Any) -> tuple[Mapping[str, Any], str]:
    if isinstance(batch, pa.Table):
        return {name: batch.column(name) for name in batch.column_names}, "pyarrow"
    if isinstance(batch, Mapping):
        return batch, "numpy"
    if hasattr(batch, "columns") and hasattr(batch, "assign"):  # pandas
        return {name: batch[name] for name in batch.columns}, "pandas"
    raise TypeError(
        f"DashScopeEmbedder takes pyarrow, numpy or pandas batches, got {type(batch).__name__}"
    )


def _as_list(column: Any) -> list[Any]:
    if isinstance(column, (pa.ChunkedArray, pa.Array)):
        return list(column.to_pylist())
    if isinstance(column, np.ndarray):
        return list(column.tolist())
    return list(column)


def _fixed_size_vectors(rows: Sequence[Any], dimension: int) -> pa.Array:
    matrix = np.zeros((len(rows), dimension), dtype=np.float32)
    valid = np.ones(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        if row is None:
            valid[i] = False
        else:
            matrix[i] = row
    values = pa.array(matrix.reshape(-1), pa.float32())
    array = pa.FixedSizeListArray.from_arrays(values, dimension)
    if valid.all():
        return array
    mask = pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, dimension, mask=mask)


def _with_columns(batch: Any, kind: str, added: dict[str, pa.Array]) -> Any:
    if kind == "pyarrow":
        table = batch
        for name, array in added.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, array)
        return table
    if kind == "numpy":
        out = dict(batch)
        for name, array in added.items():
            if pa.types.is_fixed_size_list(array.type):
                # The float32 values as they are (no Python lists); a row without a
                # vector (on_error="column") is NaN.
                size = array.type.list_size
                values = array.values.slice(array.offset * size, len(array) * size)
                matrix = values.to_numpy(zero_copy_only=False).reshape(-1, size).copy()
                matrix[array.is_null().to_numpy(zero_copy_only=False)] = np.nan
                out[name] = matrix
            else:
                out[name] = np.array(array.to_pylist(), dtype=object)
        return out
    frame = batch.copy()
    for name, array in added.items():
        frame[name] = array.to_pylist()
    return frame


# ---------------------------------------------------------------------- checkpoints
class _Journal:
    """Vectors of one block, appended as each request finishes (JSON lines; a line cut
    short by a crash is ignored)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.path = directory / f"{key}.jsonl"

    def save(self, positions: Sequence[int], dense: Any, sparse: Any) -> None:
        self.save_rows(positions, dense, sparse, relative=True)

    def save_rows(
        self,
        positions: Sequence[int],
        dense: Sequence[Any] | None,
        sparse: Sequence[Any] | None,
        *,
        relative: bool = False,
    ) -> None:
        if not positions:
            return
        lines = []
        for k, position in enumerate(positions):
            index = k if relative else position
            row: dict[str, Any] = {"p": position}
            if dense is not None and dense[index] is not None:
                # float32 as base64: the column's own values, without JSON floats' cost.
                vector = np.asarray(dense[index], dtype="<f4")
                row["f"] = base64.b64encode(vector.tobytes()).decode()
            if sparse is not None and sparse[index] is not None:
                row["i"] = list(sparse[index].indices)
                row["v"] = list(sparse[index].values)
            lines.append(json.dumps(row, separators=(",", ":")))
        with self.path.open("a", encoding="utf-8") as file:
            file.write("\n".join(lines) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def load_rows(self) -> list[tuple[int, Any, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a killed writer
            sparse = SparseEmbedding(indices=row["i"], values=row["v"]) if "i" in row else None
            vector = row.get("d")  # JSON floats, as journals before 2026-12 kept them
            if "f" in row:
                vector = np.frombuffer(base64.b64decode(row["f"]), dtype="<f4").astype(np.float32)
            rows.append((int(row["p"]), vector, sparse))
        return rows


def _restore(journal: _Journal, dense: list[Any], sparse: list[Any] | None) -> None:
    """Put a block's saved vectors back at their rows."""
    for position, row_dense, row_sparse in journal.load_rows():
        if row_dense is not None:
            dense[position] = row_dense
        if sparse is not None and row_sparse is not None:
            sparse[position] = row_sparse
