"""Per-call parameters, declared once: the fields, and their checks against the model table.

:class:`TextEmbeddingOptions` (and :class:`MultimodalEmbeddingOptions`) are what a call
may set: :meth:`DashScopeClient.embed` validates its keyword arguments with them, and
the LlamaIndex and LangChain classes inherit them as their defaults. :func:`text_params`
checks them against the model once, before anything is sent, and the result travels to
the endpoint codec unchanged. A new parameter is a field here, its check here, and a line
in the codec that puts it on the wire.

``extra_parameters`` is merged last into what is sent (the native ``parameters``
object; the OpenAI-compatible body), for what the service adds before this package does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.config import JsonDict

from dashscope_embed.errors import InputProblem, InvalidInputError
from dashscope_embed.models import (
    OUTPUT_TYPES,
    TEXT_TYPES,
    ModelSpec,
    OutputType,
    RerankSpec,
    TextType,
)
from dashscope_embed.tasks import resolve_instruct

QUERIES_ONLY: JsonDict = {"queries_only": True}
"""Mark an option as one that applies to queries only (a task instruction): framework
classes send it with queries and leave it out of documents."""


class CallOptions(BaseModel):
    """Base of the per-call options models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extra_parameters: dict[str, Any] | None = Field(
        default=None,
        description="Sent as given, merged last into the request's parameters, for what "
        "the service takes that this package does not know yet.",
    )

    @classmethod
    def from_call(cls, given: Mapping[str, Any]) -> Any:
        """Validate a call's keyword arguments; an unknown one names the nearest field."""
        unknown = [key for key in given if key not in cls.model_fields]
        if unknown:
            import difflib

            problems = []
            for key in unknown:
                near = difflib.get_close_matches(key, list(cls.model_fields), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                problems.append(InputProblem(None, f"unknown parameter {key!r}{hint}"))
            raise InvalidInputError(problems)
        try:
            return cls(**given)
        except ValidationError as exc:
            problems = [_problem(err) for err in exc.errors(include_url=False)]
        raise InvalidInputError(problems)

    @classmethod
    def for_role(cls, holder: Any, role: str) -> dict[str, Any]:
        """This class's options as held by ``holder`` (a framework object inheriting
        them), as keyword arguments for one call: options marked
        :data:`QUERIES_ONLY` are left out (``None``) unless ``role`` is ``"query"``."""
        options = {}
        for name, info in cls.model_fields.items():
            queries_only = (info.json_schema_extra or {}) == QUERIES_ONLY
            options[name] = None if queries_only and role != "query" else getattr(holder, name)
        return options


def _problem(error: Any) -> InputProblem:
    where = ".".join(str(p) for p in error["loc"])
    given = f", got {error.get('input')!r:.60}"
    if error["type"] == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return InputProblem(None, f"{where} must be one of {allowed}{given}")
    return InputProblem(None, f"{where}: {error['msg']}{given}")


class TextEmbeddingOptions(CallOptions):
    """What a text embedding call may set besides the model and the role."""

    dimension: int | None = Field(
        default=None,
        strict=True,  # "512" or True is a mistake to point out, not to guess at
        description="Vector length; one of the model's allowed sizes.",
    )
    output_type: OutputType = Field(
        default="dense",
        description="'dense', 'sparse' or 'dense&sparse' (one request feeds a hybrid index).",
    )
    instruct: str | None = Field(
        default=None,
        json_schema_extra=QUERIES_ONLY,
        description="Task instruction sent with queries (wins over task).",
    )
    task: str | None = Field(
        default=None,
        json_schema_extra=QUERIES_ONLY,
        description="Named instruction preset for queries: web_search, question_answering, "
        "code_search, code_to_code, text_to_sql, ... (see dashscope_embed.tasks.TASKS).",
    )

    @property
    def query_instruct(self) -> str | None:
        """The instruction: ``instruct``, else the ``task`` preset's."""
        return resolve_instruct(self.instruct, self.task)


class MultimodalEmbeddingOptions(CallOptions):
    """What a multimodal embedding call may set besides the model."""

    dimension: int | None = Field(
        default=None, strict=True, description="Vector length; one of the model's allowed sizes."
    )
    instruct: str | None = Field(
        default=None,
        json_schema_extra=QUERIES_ONLY,
        description="Task instruction for queries (qwen3-vl-embedding), e.g. 'Find the "
        "product photo that matches the description'.",
    )
    fps: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of a video's frames the service samples, in [0, 1] (default 1).",
    )
    res_level: int | None = Field(
        default=None,
        ge=0,
        le=3,
        strict=True,
        description="Image resolution tier 0-3 (the dated tongyi-embedding-vision snapshots).",
    )
    max_video_frames: int | None = Field(
        default=None,
        ge=1,
        le=64,
        strict=True,
        description="Most frames read from a video, up to 64 (the dated snapshots).",
    )


@dataclass(frozen=True, slots=True)
class TextParams:
    """One text embedding call's parameters, checked against its model: the value the
    planner, the engine and the codec share (sync and async alike)."""

    spec: ModelSpec
    text_type: TextType | None
    options: TextEmbeddingOptions
    instruct: str | None  # the options' instruction, resolved from task

    @property
    def dimension(self) -> int | None:
        """The dimension to send (``None`` for fixed-size models or the default)."""
        dimension = self.options.dimension
        return dimension if self.spec.configurable_dimension else None

    @property
    def output_type(self) -> OutputType:
        return self.options.output_type

    @property
    def extra_parameters(self) -> dict[str, Any] | None:
        return self.options.extra_parameters

    @property
    def expected_dimension(self) -> int:
        """Length every dense vector in the reply must have."""
        dimension = self.options.dimension
        return dimension if dimension is not None else self.spec.default_dimension

    @property
    def wants_dense(self) -> bool:
        return self.output_type != "sparse"

    @property
    def wants_sparse(self) -> bool:
        return self.output_type != "dense"

    def without_roles(self) -> TextParams:
        """The same call with no role or instruction (what the OpenAI-compatible
        protocol can carry)."""
        options = self.options.model_copy(update={"instruct": None, "task": None})
        return TextParams(self.spec, None, options, None)


def text_params(
    spec: ModelSpec, text_type: str | None, options: TextEmbeddingOptions
) -> TextParams:
    """Check a call's parameters against the model table; all problems reported at once."""
    problems: list[InputProblem] = []
    if spec.kind != "text":
        problems.append(
            InputProblem(
                None,
                f"model {spec.name!r} is a {spec.kind} model and cannot embed texts synchronously"
                + (" (use the batch jobs API)" if spec.kind == "async-batch" else ""),
            )
        )
    if text_type is not None and text_type not in TEXT_TYPES:
        problems.append(
            InputProblem(None, f"text_type must be 'query' or 'document', got {text_type!r}")
        )
    if options.output_type not in spec.output_types:
        problems.append(
            InputProblem(
                None,
                f"output_type={options.output_type!r}: the open Qwen3-Embedding has no sparse "
                "output; use DashScope's text-embedding-v4 for sparse vectors"
                if spec.hosting == "self-hosted"
                else f"output_type={options.output_type!r} is not supported by {spec.name} "
                f"(supported: {list(spec.output_types)})",
            )
        )
    problems += _dimension_problems(spec, options.dimension)
    instruct: str | None = None
    try:
        instruct = options.query_instruct
    except InvalidInputError as exc:
        problems += exc.problems
    if instruct is not None:
        if not instruct.strip():
            problems.append(
                InputProblem(None, f"instruct must be a non-empty string, got {instruct!r}")
            )
        elif not spec.supports_instruct:
            problems.append(
                InputProblem(
                    None,
                    f"{spec.name} does not take an instruct; models that do: "
                    "text-embedding-v4 and the qwen3.7 text models",
                )
            )
    if problems:
        raise InvalidInputError(problems)
    return TextParams(spec, text_type, options, instruct)  # type: ignore[arg-type]


def _dimension_problems(spec: ModelSpec, dimension: int | None) -> list[InputProblem]:
    if dimension is None or dimension in spec.dimensions:
        return []
    allowed = sorted(spec.dimensions, reverse=True)
    contiguous = len(allowed) > 12 and allowed[0] - allowed[-1] == len(allowed) - 1
    shown = f"{allowed[-1]} to {allowed[0]}" if contiguous else str(allowed)
    return [
        InputProblem(
            None, f"dimension={dimension} is not allowed for {spec.name}; allowed: {shown}"
        )
    ]


@dataclass(frozen=True, slots=True)
class MultimodalParams:
    """One multimodal embedding call's parameters, checked against its model."""

    spec: ModelSpec
    options: MultimodalEmbeddingOptions

    @property
    def dimension(self) -> int | None:
        return self.options.dimension if self.spec.configurable_dimension else None

    @property
    def expected_dimension(self) -> int:
        return self.options.dimension or self.spec.default_dimension

    @property
    def extra_parameters(self) -> dict[str, Any] | None:
        return self.options.extra_parameters

    wants_dense = True
    wants_sparse = False


def multimodal_params(spec: ModelSpec, options: MultimodalEmbeddingOptions) -> MultimodalParams:
    problems: list[InputProblem] = []
    if spec.kind != "multimodal":
        problems.append(InputProblem(None, f"{spec.name} is not a multimodal model"))
    problems += _dimension_problems(spec, options.dimension)
    if options.instruct is not None and (
        not options.instruct.strip() or not spec.supports_instruct
    ):
        problems.append(
            InputProblem(None, f"{spec.name} does not take an instruct (qwen3-vl-embedding does)")
            if options.instruct.strip()
            else InputProblem(None, "instruct must be a non-empty string")
        )
    taken = spec.media.parameters if spec.media is not None else frozenset()
    for name in ("fps", "res_level", "max_video_frames"):
        if getattr(options, name) is not None and name not in taken:
            problems.append(
                InputProblem(
                    None,
                    f"{spec.name} does not take {name}"
                    + (f"; it takes {', '.join(sorted(taken))}" if taken else ""),
                )
            )
    if problems:
        raise InvalidInputError(problems)
    return MultimodalParams(spec, options)


class RerankOptions(CallOptions):
    """What a rerank call may set besides the model."""

    top_n: int | None = Field(
        default=None, ge=1, strict=True, description="Keep the n most relevant; all by default."
    )
    instruct: str | None = Field(
        default=None,
        description="Task instruction (qwen3-rerank, qwen3-vl-rerank); wins over task.",
    )
    task: str | None = Field(
        default=None,
        description="Named instruction preset: web_search, question_answering, code_search, "
        "... (see dashscope_embed.tasks.TASKS).",
    )
    return_documents: bool = Field(
        default=True,
        strict=True,
        description="Whether each hit carries its document (taken from your list, never "
        "sent back over the wire); False leaves RerankHit.document None.",
    )


@dataclass(frozen=True, slots=True)
class RerankParams:
    """One rerank call's parameters, checked against its model."""

    spec: RerankSpec
    query: str
    options: RerankOptions
    instruct: str | None

    @property
    def extra_parameters(self) -> dict[str, Any] | None:
        return self.options.extra_parameters


def rerank_params(spec: RerankSpec, query: Any, options: RerankOptions) -> RerankParams:
    """Check a rerank call's query and options against the model; all problems at once."""
    problems: list[InputProblem] = []
    if not isinstance(query, str):
        problems.append(InputProblem(None, f"query must be a str, got {type(query).__name__}"))
    elif not query.strip():
        problems.append(InputProblem(None, "query is empty"))
    instruct: str | None = None
    try:
        instruct = resolve_instruct(options.instruct, options.task)
    except InvalidInputError as exc:
        problems += exc.problems
    if instruct is not None:
        if not instruct.strip():
            problems.append(InputProblem(None, "instruct must be a non-empty string"))
        elif not spec.supports_instruct:
            problems.append(
                InputProblem(
                    None,
                    f"{spec.name} does not take an instruct (qwen3-rerank and qwen3-vl-rerank do)",
                )
            )
    if problems:
        raise InvalidInputError(problems)
    return RerankParams(spec, query, options, instruct)


__all__ = [
    "OUTPUT_TYPES",
    "QUERIES_ONLY",
    "CallOptions",
    "MultimodalEmbeddingOptions",
    "MultimodalParams",
    "RerankOptions",
    "RerankParams",
    "TextEmbeddingOptions",
    "TextParams",
    "multimodal_params",
    "rerank_params",
    "text_params",
]
