"""Token counting and what to do with a text over the model's token limit.

Counting is exact with the Qwen tokenizer that the official ``dashscope`` package ships
(``pip install dashscope-embed[tokenizer]``; the vocabulary is a local file, no network).
Without it, an estimate that errs high is used (see :class:`EstimatingTokenCounter`).

Long-text policies (``long_text=``):

* ``"error"`` (default): raise :class:`InvalidInputError` before any request, naming the
  texts and their token counts.
* ``"truncate"``: keep the first ``max_tokens_per_row`` tokens.
* ``"chunk"``: split into pieces within the limit, embed every piece, and combine them
  by token-weighted average (dense, renormalised) and weighted sum (sparse).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from dashscope_embed.errors import InputProblem, InvalidInputError
from dashscope_embed.types import SparseEmbedding

LongTextPolicy = Literal["error", "truncate", "chunk"]
LONG_TEXT_POLICIES: tuple[LongTextPolicy, ...] = ("error", "truncate", "chunk")


@runtime_checkable
class TokenCounter(Protocol):
    """Counts, truncates and splits text by tokens."""

    exact: bool

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...

    def split(self, text: str, max_tokens: int) -> list[str]: ...


class QwenTokenCounter:
    """Exact counts with the Qwen BPE tokenizer shipped in the ``dashscope`` package."""

    exact = True

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # dashscope 2.x models a field "model_id": on pydantic < 2.10 importing it
            # warns about the "model_" namespace, a warning users can do nothing about.
            warnings.filterwarnings("ignore", "Field .* protected namespace", UserWarning)
            from dashscope.tokenizers import get_tokenizer  # optional dependency

        self._tokenizer: Any = get_tokenizer("qwen-turbo")
        # The SDK's encode also looks for special-token strings in every text, which
        # more than doubles the cost; counting them as ordinary text can only count
        # higher, never lower, so plain BPE (the tiktoken encoding inside) is used when
        # the SDK exposes it.
        encoding = getattr(self._tokenizer, "_tokenizer", None)
        self._plain: Any = getattr(encoding, "encode_ordinary", None)

    def count(self, text: str) -> int:
        if self._plain is None:
            return len(self._tokenizer.encode(text))
        return len(self._plain(unicodedata.normalize("NFC", text)))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._tokenizer.encode(text)
        if len(ids) <= max_tokens:
            return text
        return str(self._tokenizer.decode(ids[:max_tokens]))

    def split(self, text: str, max_tokens: int) -> list[str]:
        ids = self._tokenizer.encode(text)
        return [
            str(self._tokenizer.decode(ids[start : start + max_tokens]))
            for start in range(0, len(ids), max_tokens)
        ]


# Pieces the Qwen pre-tokeniser never merges across: runs of letters, single digits,
# CJK characters, and runs of other symbols.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_PIECE_RE = re.compile(rf"[{_CJK}]|\d|[^\W\d_{_CJK}]+|[^\w\s]+|_+|\s+")


class EstimatingTokenCounter:
    """A conservative estimate for when the tokenizer is not installed.

    Every CJK character, digit and non-ASCII letter counts as one token; a run of ASCII
    letters as one token per 2 characters (English prose averages about 4.5, random
    letters about 2), or per 1.4 when its case is mixed (identifiers, base64); a run of
    symbols as one per character. So the estimate stays above the real count for prose,
    code and data alike, at the price of overestimating prose about twofold.
    """

    exact = False
    MARGIN = 1.15  # headroom for text that tokenises worse than the rules assume

    def _piece_tokens(self, piece: str) -> int:
        if piece.isspace():
            return 0
        if piece[0].isalpha() and len(piece) > 1:
            ascii_letters = sum(1 for c in piece if c.isascii())
            non_ascii = len(piece) - ascii_letters
            # Dictionary words merge into few tokens, but nothing tells them from
            # gibberish here: assume the worst BPE does on lower-case runs (2 letters a
            # token) and on mixed case (identifiers, base64: 1.4).
            plain = piece.islower() or piece.isupper() or piece.istitle()
            per_token = 2.0 if plain else 1.4
            return math.ceil(ascii_letters / per_token) + non_ascii
        return len(piece)

    def count(self, text: str) -> int:
        raw = sum(self._piece_tokens(p) for p in _PIECE_RE.findall(text))
        return max(1, math.ceil(raw * self.MARGIN))

    def _cut_points(self, text: str, max_tokens: int) -> list[int]:
        """Character offsets where each chunk of at most ``max_tokens`` ends."""
        cuts: list[int] = []
        used = 0
        for match in _PIECE_RE.finditer(text):
            piece = match.group()
            cost = math.ceil(self._piece_tokens(piece) * self.MARGIN)
            if used + cost > max_tokens and used > 0:
                cuts.append(match.start())
                used = 0
            offset = match.start()
            while cost > max_tokens:  # one huge piece: cut inside it
                step = max(1, len(piece) * max_tokens // cost)
                offset += step
                cuts.append(offset)
                piece = piece[step:]
                cost = math.ceil(self._piece_tokens(piece) * self.MARGIN)
            used += cost
        return cuts

    def truncate(self, text: str, max_tokens: int) -> str:
        cuts = self._cut_points(text, max_tokens)
        return text[: cuts[0]] if cuts else text

    def split(self, text: str, max_tokens: int) -> list[str]:
        bounds = [0, *self._cut_points(text, max_tokens), len(text)]
        pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
        return [p for p in pieces if p.strip()]


_counter: TokenCounter | None = None
_counter_lock = threading.Lock()


def default_token_counter() -> TokenCounter:
    """The exact Qwen counter when ``dashscope`` (and ``tiktoken``) are installed, else the
    estimate. Built once per process (loading the vocabulary takes a moment)."""
    global _counter
    with _counter_lock:
        if _counter is None:
            try:
                _counter = QwenTokenCounter()
            except Exception:
                _counter = EstimatingTokenCounter()
        return _counter


@dataclass(frozen=True)
class LongTextPlan:
    """How a call's texts map to the rows actually sent after the long-text policy.

    ``rows[k]`` belongs to input ``owner[k]`` and weighs ``weight[k]`` tokens.
    ``token_counts[i]`` is input ``i``'s token count as the counter saw it.
    """

    rows: list[str]
    owner: list[int]
    weight: list[int]
    token_counts: list[int]
    changed: bool = False
    """Whether any text was truncated or chunked (else ``rows`` are the inputs)."""


def apply_long_text_policy(
    texts: Sequence[str],
    max_tokens: int,
    policy: LongTextPolicy,
    counter: TokenCounter,
    *,
    reserved_tokens: int = 0,
) -> LongTextPlan:
    """Count every text and apply ``policy`` to those over ``max_tokens``.

    ``reserved_tokens`` is kept free per text for tokens the service adds (Qwen3-based
    models bill an end-of-text token).
    """
    if policy not in LONG_TEXT_POLICIES:
        raise InvalidInputError(
            f"long_text must be one of {list(LONG_TEXT_POLICIES)}, got {policy!r}"
        )
    limit = max_tokens - reserved_tokens
    counts = [counter.count(t) for t in texts]
    too_long = [i for i, n in enumerate(counts) if n > limit]
    if not too_long:
        return LongTextPlan(list(texts), list(range(len(texts))), counts, counts)
    if policy == "error":
        how = "" if counter.exact else " (estimated; dashscope-embed[tokenizer] counts exactly)"
        raise InvalidInputError(
            [
                InputProblem(
                    i,
                    f"{counts[i]} tokens{how} exceeds the model's limit of {limit} per text; "
                    "pass long_text='truncate' or 'chunk', or shorten it",
                )
                for i in too_long
            ]
        )
    rows: list[str] = []
    owner: list[int] = []
    weight: list[int] = []
    long_set = set(too_long)
    for i, text in enumerate(texts):
        if i not in long_set:
            rows.append(text)
            owner.append(i)
            weight.append(counts[i])
        elif policy == "truncate":
            rows.append(counter.truncate(text, limit))
            owner.append(i)
            weight.append(limit)
        else:
            for piece in counter.split(text, limit):
                rows.append(piece)
                owner.append(i)
                weight.append(max(1, counter.count(piece)))
    return LongTextPlan(rows, owner, weight, counts, changed=True)


def combine_dense(
    vectors: Sequence[list[float]], owner: Sequence[int], weight: Sequence[int], count: int
) -> list[list[float]]:
    """Token-weighted average of each input's piece vectors, renormalised to unit length."""
    rows_of: list[list[int]] = [[] for _ in range(count)]
    for row, who in enumerate(owner):
        rows_of[who].append(row)
    out: list[list[float]] = []
    for rows in rows_of:
        if len(rows) == 1:  # not chunked: the service's vector, untouched
            out.append(vectors[rows[0]])
            continue
        if not isinstance(vectors[rows[0]], list):  # float32 rows, for NumPy callers
            out.append(_combine_arrays([vectors[r] for r in rows], [weight[r] for r in rows]))
            continue
        total = [0.0] * len(vectors[rows[0]])
        for row in rows:
            w = weight[row]
            for k, x in enumerate(vectors[row]):
                total[k] += w * x
        norm = math.sqrt(sum(x * x for x in total)) or 1.0
        out.append([x / norm for x in total])
    return out


def _combine_arrays(rows: list[Any], weights: list[int]) -> Any:
    """:func:`combine_dense` for float32 array rows: summed in float64, as the lists are."""
    import numpy as np

    total = np.zeros(len(rows[0]), dtype=np.float64)
    for row, w in zip(rows, weights, strict=True):
        total += w * row.astype(np.float64)
    norm = float(np.sqrt(total @ total)) or 1.0
    return (total / norm).astype(np.float32)


def combine_sparse(
    vectors: Sequence[SparseEmbedding], owner: Sequence[int], weight: Sequence[int], count: int
) -> list[SparseEmbedding]:
    """Token-weighted average of each input's piece sparse vectors (union of terms)."""
    pieces = [0] * count
    for who in owner:
        pieces[who] += 1
    totals: list[dict[int, float]] = [{} for _ in range(count)]
    tokens: list[dict[int, str]] = [{} for _ in range(count)]
    mass = [0] * count
    for vector, who, w in zip(vectors, owner, weight, strict=True):
        mass[who] += w
        for position, (index, value) in enumerate(zip(vector.indices, vector.values, strict=True)):
            totals[who][index] = totals[who].get(index, 0.0) + w * value
            if vector.tokens:
                tokens[who].setdefault(index, vector.tokens[position])
    out = []
    single = {who: vector for vector, who in zip(vectors, owner, strict=True) if pieces[who] == 1}
    for who in range(count):
        if who in single:  # not chunked: the service's vector, untouched
            out.append(single[who])
            continue
        indices = list(totals[who])
        out.append(
            SparseEmbedding(
                indices=indices,
                values=[totals[who][i] / mass[who] for i in indices],
                tokens=[tokens[who].get(i, "") for i in indices] if tokens[who] else [],
            )
        )
    return out
