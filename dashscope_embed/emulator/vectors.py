"""Deterministic vectors that behave enough like real embeddings for retrieval tests.

* Words (lower-cased Latin/digit runs) and single CJK characters are tokens; each token
  has a fixed pseudo-random direction derived from SHAKE-256 (stable across platforms
  and library versions).
* A text's dense vector is the weighted sum of its tokens' directions (sub-linear term
  frequency, stop words down-weighted) plus a small whole-text component, so texts that
  share words are closer than texts that do not, and no two different texts coincide.
* Queries get an extra component from their instruction, so query and document vectors
  of one text differ and an ``instruct`` changes query vectors, while rankings among
  documents are kept.
* Matryoshka: every vector is computed at the model's largest size; a smaller
  ``dimension`` is its prefix, renormalised. All vectors have unit L2 norm.
* Sparse vectors are the same token weights with stable vocabulary ids.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

VOCAB_SIZE = 151_643  # the Qwen tokenizer's ordinary vocabulary
DEFAULT_QUERY_TASK = "Given a web search query, retrieve relevant passages that answer the query"

_TOKEN_RE = re.compile(
    r"[a-z0-9_]+|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\sa-z0-9_]",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[a-z0-9_]", re.IGNORECASE)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_STOP_WORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "do",
        "does",
        "did",
        "can",
        "的",
        "了",
        "是",
        "在",
        "和",
        "有",
        "我",
        "你",
        "他",
        "她",
        "它",
        "们",
        "这",
        "那",
        "吗",
        "呢",
        "吧",
        "啊",
        "也",
        "就",
        "都",
        "而",
        "及",
        "与",
        "或",
    }
)
_INSTRUCTION_WEIGHT = 0.35
_TEXT_COMPONENT_WEIGHT = 0.08


def tokenize(text: str) -> list[str]:
    """Tokens as the emulator counts them: words, single CJK characters, punctuation."""
    return [t.lower() for t in _TOKEN_RE.findall(text)]


@lru_cache(maxsize=1)
def _qwen_tokenizer() -> Any:
    """The service's own tokenizer (the Qwen BPE the official SDK ships), if installed."""
    try:
        with warnings.catch_warnings():  # dashscope 2.x on pydantic < 2.10: "model_id"
            warnings.filterwarnings("ignore", "Field .* protected namespace", UserWarning)
            from dashscope.tokenizers import get_tokenizer
    except ImportError:
        return None
    sdk = get_tokenizer("qwen-turbo")
    # Plain BPE, as the service encodes a document's text (special-token strings in
    # it are text, not control tokens); the SDK's own encode scans for them first.
    return getattr(getattr(sdk, "_tokenizer", None), "encode_ordinary", sdk.encode)


def count_tokens(text: str, *, end_of_text: bool = False) -> int:
    """Billed tokens for one text, as the service counts them: the Qwen BPE when the
    ``dashscope`` package is installed; otherwise an estimate that never counts more
    than the BPE would (a word or symbol run is at least one token; Chinese averages
    about 1.7 characters a token, counted here as 2), so the emulator is never stricter
    than the service. Qwen3-based models also bill the appended EOS token."""
    tokenizer = _qwen_tokenizer()
    if tokenizer is not None:
        count = len(tokenizer(unicodedata.normalize("NFC", text)))
    else:
        tokens = tokenize(text)
        cjk = sum(1 for t in tokens if _CJK_RE.match(t))
        count = len(tokens) - cjk + (cjk + 1) // 2
    return count + (1 if end_of_text else 0)


def _is_content(token: str) -> bool:
    return bool(_WORD_RE.match(token) or _CJK_RE.match(token))


def token_weights(text: str) -> dict[str, float]:
    """Lexical weight of each content token: sub-linear tf, stop words light, rounded."""
    counts = Counter(t for t in tokenize(text) if _is_content(t))
    weights: dict[str, float] = {}
    for token, tf in counts.items():
        base = 0.15 if token in _STOP_WORDS else 1.0
        # Longer words carry more information than short ones, as idf would say.
        length_boost = 1.0 + min(len(token), 12) / 24.0 if _WORD_RE.match(token) else 1.0
        weights[token] = round(base * length_boost * (1.0 + math.log(tf)), 4)
    return weights


def token_id(token: str) -> int:
    """Stable vocabulary id in ``[0, VOCAB_SIZE)``."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VOCAB_SIZE


def sparse_vector(text: str) -> list[dict[str, object]]:
    """The service's sparse shape: ``[{"index", "value", "token"}]``, heaviest first."""
    weights = token_weights(text)
    entries = [
        {"index": token_id(token), "value": value, "token": token}
        for token, value in weights.items()
        if value > 0
    ]
    entries.sort(key=lambda e: -float(e["value"]))  # type: ignore[arg-type]
    return entries


@lru_cache(maxsize=16_384)
def direction(namespace: str, key: str, size: int) -> np.ndarray:
    """A fixed pseudo-random unit-scale direction for ``key`` (read-only array)."""
    raw = hashlib.shake_256(f"{namespace}\x1f{key}".encode()).digest(4 * size)
    ints = np.frombuffer(raw, dtype="<u4")
    vector: np.ndarray = ints.astype(np.float32) * np.float32(1.0 / 2**32) - np.float32(0.5)
    vector.setflags(write=False)
    return vector


def _normalise(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        return vector
    result: np.ndarray = vector / np.float32(norm)
    return result


def text_vector(
    model: str,
    text: str,
    size: int,
    *,
    text_type: str | None = None,
    instruct: str | None = None,
    full_size: int | None = None,
) -> np.ndarray:
    """Unit vector of ``size`` floats for ``text`` (prefix of the ``full_size`` vector)."""
    full = full_size or size
    vector = np.zeros(full, dtype=np.float32)
    for token, weight in token_weights(text).items():
        vector += np.float32(weight) * direction(model, "tok:" + token, full)
    vector = _normalise(vector)
    vector = vector + np.float32(_TEXT_COMPONENT_WEIGHT) * _normalise(
        direction(model, "text:" + text, full)
    )
    vector = _normalise(vector)
    if text_type == "query":
        task = instruct or DEFAULT_QUERY_TASK
        vector = vector + np.float32(_INSTRUCTION_WEIGHT) * _normalise(
            direction(model, "instruct:" + task, full)
        )
    return _normalise(vector[:size].astype(np.float32))


def content_vector(model: str, key: str, hint_words: str, size: int) -> np.ndarray:
    """Vector for an image or video: its bytes (``key``) plus words from its name.

    Words in a file name or URL ("red_car.jpg") pull the vector towards texts that use
    them, so text-to-image search in tests returns the picture a person would expect.
    """
    vector = np.zeros(size, dtype=np.float32)
    for token, weight in token_weights(hint_words).items():
        vector += np.float32(weight) * direction(model, "tok:" + token, size)
    vector = _normalise(vector)
    vector = vector + np.float32(0.5) * _normalise(direction(model, "content:" + key, size))
    return _normalise(vector)


def _stem(word: str) -> str:
    """A light English stemmer: matches, matching, matched -> match; keywords ->
    keyword; combine, combined, combining -> combin."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _terms(text: str) -> dict[str, float]:
    """Content terms and their weights: stemmed words (stop words left out), and pairs
    of adjacent CJK characters (a Chinese word is usually two of them)."""
    terms: dict[str, float] = {}
    tokens = tokenize(text)
    for token, weight in token_weights(text).items():
        if _WORD_RE.match(token) and token not in _STOP_WORDS:
            stem = _stem(token)
            terms[stem] = max(terms.get(stem, 0.0), weight)
    for first, second in itertools.pairwise(tokens):
        if _CJK_RE.match(first) and _CJK_RE.match(second):
            pair = first + second
            if first not in _STOP_WORDS and second not in _STOP_WORDS:
                terms[pair] = 1.5
    return terms


@lru_cache(maxsize=8192)
def _rerank_profile(model: str, document: str) -> tuple[frozenset[str], np.ndarray]:
    """A document's terms and vector, kept: a corpus is reranked against many queries."""
    return frozenset(_terms(document)), text_vector(model, document, 256, text_type="document")


def rerank_scores(
    model: str, query: str, documents: Sequence[str], instruct: str | None = None
) -> list[float]:
    """Each document's relevance score in (0, 1), behaving like a cross-encoder's.

    A reranker reads query and document together and rewards a document that answers
    *all* of the question: here, the weighted share of the query's terms the document
    covers (a document that repeats one shared word covers little), with the embedding
    similarity of the two as a smaller second signal. The ``instruct`` conditions the
    query as it does for embeddings (so scores change with it), but its words are not
    terms the documents must cover. Deterministic, so identical inputs score
    identically, in any request.
    """
    wanted = _terms(query)
    total = sum(wanted.values())
    q = text_vector(model, query, 256, text_type="query", instruct=instruct)
    scores = []
    for document in documents:
        offered, d = _rerank_profile(model, document)
        covered = sum(w for term, w in wanted.items() if term in offered)
        coverage = covered / total if total else 0.0
        logit = 6.0 * (coverage - 0.5) + 3.0 * float(q @ d)
        scores.append(round(1.0 / (1.0 + math.exp(-logit)), 6))
    return scores


def rerank_score(model: str, query: str, document: str, instruct: str | None = None) -> float:
    """One document's score from :func:`rerank_scores`."""
    return rerank_scores(model, query, [document], instruct)[0]
