"""DashScope rerank for LlamaIndex: the second stage of retrieval, as a node postprocessor."""

from __future__ import annotations

from typing import Any

from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle
from pydantic import ConfigDict, Field

from dashscope_embed.adapter import RerankAdapter
from dashscope_embed.models import DEFAULT_RERANK_MODEL, RerankSpec
from dashscope_embed.multimodal import Content
from dashscope_embed.types import RerankResult

dispatcher = get_dispatcher(__name__)


class DashScopeRerank(RerankAdapter, BaseNodePostprocessor):
    """Rerank retrieved nodes with DashScope (``qwen3-rerank`` by default).

    Each node is scored against the query from its text as embedded
    (``MetadataMode.EMBED``); the score is written to ``NodeWithScore.score`` and the
    nodes come back most relevant first, ``top_n`` of them if set. Lists past the
    model's limits are split and merged by the core; identical texts are scored once;
    the async path is native. Image nodes are ranked with ``image_model``
    (``qwen3-vl-rerank``), together with the others, so every score compares.

    Example::

        from llama_index_ext import DashScopeRerank
        engine = index.as_query_engine(
            similarity_top_k=50, node_postprocessors=[DashScopeRerank(top_n=5)]
        )
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(default=DEFAULT_RERANK_MODEL, description="DashScope rerank model id.")
    model_spec: RerankSpec | None = Field(
        default=None, description="Limits of a rerank model the table does not know yet."
    )
    image_model: str = Field(
        default="qwen3-vl-rerank", description="The model for lists that include images."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep each node's retrieval score as metadata."
    )

    @classmethod
    def class_name(cls) -> str:
        return "DashScopeRerank"

    def _model_ref(self) -> str | RerankSpec:
        return self.model_spec or self.model

    def _documents(self, nodes: list[NodeWithScore]) -> tuple[list[Any], Any]:
        if any(isinstance(n.node, ImageNode) and n.node.image_url for n in nodes):
            documents = [
                Content.image(n.node.image_url)
                if isinstance(n.node, ImageNode) and n.node.image_url
                else Content.text(n.node.get_content(metadata_mode=MetadataMode.EMBED))
                for n in nodes
            ]
            return documents, self.image_model
        return [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes], None

    def _scored(self, nodes: list[NodeWithScore], result: RerankResult) -> list[NodeWithScore]:
        ranked = []
        for hit in result:
            node = nodes[hit.index]
            if self.keep_retrieval_score:
                node.node.metadata["retrieval_score"] = node.score
            ranked.append(NodeWithScore(node=node.node, score=hit.relevance_score))
        return ranked

    def _query(self, query_bundle: QueryBundle | None) -> str:
        if query_bundle is None:
            raise ValueError("DashScopeRerank needs the query: pass query_bundle or query_str")
        return query_bundle.query_str

    def _events(self, nodes: list[NodeWithScore], query: str) -> dict[Any, Any]:
        dispatcher.event(
            ReRankStartEvent(
                query=query, nodes=nodes, top_n=self.top_n or len(nodes), model_name=self.model
            )
        )
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._query(query_bundle)
        if not nodes:
            return []
        payload = self._events(nodes, query)
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            documents, model = self._documents(nodes)
            ranked = self._scored(nodes, self.rank(query, documents, model))
            event.on_end(payload={EventPayload.NODES: ranked})
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._query(query_bundle)
        if not nodes:
            return []
        payload = self._events(nodes, query)
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            documents, model = self._documents(nodes)
            ranked = self._scored(nodes, await self.arank(query, documents, model))
            event.on_end(payload={EventPayload.NODES: ranked})
        dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked
