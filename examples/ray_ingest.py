"""Ingestion past one machine: JSONL -> chunks -> DashScope vectors -> Parquet and Qdrant,
on Ray Data, one account's quota shared by every actor.

Run it with ``python examples/ray_ingest.py [corpus.jsonl] [out_dir]`` inside the
project's environment (``pip install 'dashscope-embed[ray]'``). It starts a local Ray
(``ray.init(num_cpus=2)``); on a cluster, connect with ``ray.init(address="auto")``
instead and nothing else changes. With ``DASHSCOPE_API_KEY`` set it uses the real
service; without it, the bundled emulator.

Steps:

1. read the corpus (one JSON object per line with ``id`` and ``text``);
2. chunk each text (paragraphs, then windows of about 120 words);
3. embed the chunks with ``DashScopeEmbedder`` on an actor pool: each actor runs the
   client's concurrent engine, every actor's requests are paced by one named quota
   keeper, and a checkpoint directory means a retried task pays for nothing twice;
4. write Parquet (vectors as fixed-size float32 lists) and upsert into Qdrant.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from qdrant_client import QdrantClient, models

from dashscope_embed.emulator import service_or_emulator
from dashscope_embed.raydata import DashScopeEmbedder

CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
WORDS_PER_CHUNK = 120
DIMENSION = 512


def chunk(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Paragraphs, split further into windows of about ``WORDS_PER_CHUNK`` words."""
    chunks = []
    for paragraph in str(row["text"]).split("\n\n"):
        words = paragraph.split()
        for start in range(0, len(words), WORDS_PER_CHUNK):
            piece = " ".join(words[start : start + WORDS_PER_CHUNK])
            if piece:
                chunks.append(
                    {
                        "doc_id": str(row["id"]),
                        "chunk_id": f"{row['id']}#{len(chunks)}",
                        "text": piece,
                    }
                )
    return chunks


def main(corpus: Path, out_dir: Path) -> None:
    with service_or_emulator() as connection:
        key_env = {"DASHSCOPE_API_KEY": connection["api_key"]} if connection else {}
        # The key reaches the actors through the runtime environment, never as an argument.
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": key_env},
        )
        try:
            chunks = ray.data.read_json(str(corpus)).flat_map(chunk)
            vectors = chunks.map_batches(
                DashScopeEmbedder,
                fn_constructor_kwargs={
                    "text_column": "text",
                    "id_column": "chunk_id",
                    "dimension": DIMENSION,
                    "checkpoint_dir": str(out_dir / "checkpoints"),
                    **({"base_url": connection["base_url"]} if connection else {}),
                },
                compute=ray.data.ActorPoolStrategy(size=2),
                # The actors wait on HTTP: a fraction of a CPU each leaves the rest to
                # reading and chunking (whole CPUs for both would starve those).
                num_cpus=0.25,
                batch_size=200,
                batch_format="pyarrow",
                max_restarts=2,
                max_task_retries=2,
            )
            table = pa.concat_tables(ray.get(vectors.to_arrow_refs()))
        finally:
            ray.shutdown()
    parquet = out_dir / "vectors.parquet"
    pq.write_table(table, parquet)
    print(
        f"Embedded {table.num_rows} chunks of {len(set(table['doc_id'].to_pylist()))} "
        f"documents; wrote {parquet.name} ({table.schema.field('embedding').type})."
    )

    qdrant = QdrantClient(path=str(out_dir / "qdrant"))
    qdrant.create_collection(
        "chunks",
        vectors_config=models.VectorParams(size=DIMENSION, distance=models.Distance.COSINE),
    )
    rows = table.to_pylist()
    qdrant.upsert(
        "chunks",
        points=[
            models.PointStruct(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, row["chunk_id"])),
                vector=row["embedding"],
                payload={"chunk_id": row["chunk_id"], "text": row["text"]},
            )
            for row in rows
        ],
    )
    print(f"Upserted {qdrant.count('chunks').count} points into Qdrant.")
    qdrant.close()


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="ingest-"))
    target.mkdir(parents=True, exist_ok=True)
    main(source, target)
    print(json.dumps({"out": str(target)}))
