"""Named task instructions for query embeddings (``task=`` in both framework classes).

Qwen3-Embedding models (text-embedding-v4, qwen3.7) are trained with a one-line English
task instruction on the query side and none on the document side; the right one is
worth about 1-5 % retrieval quality. The wording below is the one the Qwen team used
for its MTEB evaluation, kept verbatim (slips included) to match training.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dashscope_embed.errors import InvalidInputError

TASKS: Mapping[str, str] = MappingProxyType(
    {
        "web_search": (
            "Given a web search query, retrieve relevant passages that answer the query"
        ),
        "question_answering": ("Given a question, retrieve passages that answer the question"),
        "chinese_web_search": (
            "Given a Chinese search query, retrieve web passages that answer the question"
        ),
        "passage_retrieval": "Retrieval the relevant passage for the given query",
        "code_search": (
            "Given a question about coding, retrieval code or passage that can solve "
            "user's question"
        ),
        "code_to_code": "Given a piece for code, retrieval semantically similar code",
        "code_to_comment": (
            "Given a code snippet, retrieve the comment corresponding to that code."
        ),
        "comment_to_code": (
            "Given a code comment, retrieve the code snippet corresponding to that comment."
        ),
        "text_to_sql": (
            "Given a user's question, retrieve SQL queries that are appropriate responses "
            "to the question"
        ),
        "semantic_similarity": "Retrieve semantically similar text",
        "duplicate_questions": (
            "Given a question, retrieve detailed question descriptions from Stackexchange "
            "that are duplicates to the given question"
        ),
        "bitext_mining": "Retrieve parallel sentences",
    }
)
"""Preset name → English task instruction."""


def resolve_instruct(instruct: str | None, task: str | None) -> str | None:
    """The instruction to send with queries: ``instruct`` wins over the ``task`` preset.

    Raises:
        InvalidInputError: ``task`` is not a preset name (the message lists them).
    """
    if instruct is not None:
        return instruct
    if task is None:
        return None
    try:
        return TASKS[task]
    except KeyError:
        raise InvalidInputError(
            f"unknown task {task!r}; presets: {', '.join(TASKS)} (or pass instruct=...)"
        ) from None
