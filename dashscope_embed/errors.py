"""Typed errors. Every error the service can send maps to one class here.

Hierarchy::

    DashScopeError
    ├── ConfigurationError            bad client settings (missing key, bad URL, ...)
    │   └── MissingApiKeyError
    ├── InvalidInputError (ValueError) bad texts or parameters, raised before any request
    │   └── UnknownModelError
    ├── APIError                      the service (or the path to it) failed a request
    │   ├── AuthenticationError       401
    │   ├── PermissionDeniedError     403, and Arrearage (overdue account)
    │   ├── BadRequestError           400
    │   │   └── ContentFilterError    DataInspectionFailed
    │   ├── NotFoundError             404, unknown model
    │   ├── RateLimitError            429
    │   ├── ServerError               5xx
    │   ├── BadResponseError          a response that is not what the protocol promises
    │   └── APIConnectionError        no response at all
    │       └── APITimeoutError
    ├── PartialEmbeddingError         some requests failed for good; finished work attached
    └── PartialRerankError            the same, for a ranking

Whether an error is worth retrying is decided in one place, :func:`is_retryable`.
No error ever contains the API key: messages are built from the service's reply and the
request's position, never from headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dashscope_embed.types import PartialResult

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class DashScopeError(Exception):
    """Base class of every error this package raises."""


class ConfigurationError(DashScopeError, ValueError):
    """The client's settings cannot work (bad URL, bad region, insecure transport...)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))


class MissingApiKeyError(ConfigurationError):
    """No API key was given and ``DASHSCOPE_API_KEY`` is not set.

    Attributes:
        unpickled: the object was pickled (sent to a worker process, say) holding a key
            given in code. Keys never travel in pickles; the message says how to give
            the workers one.
    """

    def __init__(self, unpickled: bool = False) -> None:
        self.unpickled = unpickled
        message = (
            "No DashScope API key: pass api_key=... or set the DASHSCOPE_API_KEY environment "
            "variable (keys are created in the Model Studio console and are bound to a region)."
        )
        if unpickled:
            message = (
                "No DashScope API key in this process: this object was given api_key=... in "
                "code and then pickled (to a worker process: LlamaIndex "
                "IngestionPipeline(num_workers=...), multiprocessing, Ray), and keys never "
                "travel in pickles. Set DASHSCOPE_API_KEY in the workers' environment (for "
                "processes started from this one: in os.environ before they start)."
            )
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.unpickled,))


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with one input: its position in the caller's list and why.

    ``subject`` names the caller's list in the message (``texts`` for embeddings,
    ``documents`` for rerank), so the position reads as the caller wrote it.
    """

    index: int | None
    reason: str
    subject: str = "texts"

    def __str__(self) -> str:
        if self.index is None:
            return self.reason
        return f"{self.subject}[{self.index}]: {self.reason}"


class InvalidInputError(DashScopeError, ValueError):
    """Input or parameters the service would reject; raised before anything is sent.

    Attributes:
        problems: every problem found, each with the offending position (``None`` for a
            parameter rather than a text).
    """

    _SHOWN = 10

    def __init__(self, problems: Sequence[InputProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [InputProblem(None, problems)]
        self.problems: tuple[InputProblem, ...] = tuple(problems)
        shown = "; ".join(str(p) for p in self.problems[: self._SHOWN])
        more = len(self.problems) - self._SHOWN
        if more > 0:
            shown += f"; and {more} more"
        super().__init__(shown)

    @property
    def positions(self) -> list[int]:
        """The positions of the offending texts, in order."""
        return [p.index for p in self.problems if p.index is not None]

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class UnknownModelError(InvalidInputError):
    """The model name is not in the table and no :class:`ModelSpec` describes it."""

    def __init__(
        self, model: str, known: Sequence[str] = (), spec_class: str = "ModelSpec"
    ) -> None:
        self.model = model
        self.known = tuple(known)
        self.spec_class = spec_class
        fields = (
            "max_rows=..., max_tokens_per_row=..., dimensions=(...), default_dimension=..."
            if spec_class == "ModelSpec"
            else "family=..., max_documents=..., max_tokens_per_document=..., "
            "max_tokens_per_request=..."
        )
        super().__init__(
            f"unknown model {model!r}: the client does not know its limits. Pass "
            f"model={spec_class}(name={model!r}, {fields}) to use it"
            + (f"; known models: {', '.join(self.known)}" if self.known else "")
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model, self.known, self.spec_class))


class APIError(DashScopeError):
    """A request failed. Carries what the service said and the id to quote to support.

    Attributes:
        message: the service's message (or a description of the transport failure).
        status_code: HTTP status, ``None`` when no response arrived.
        code: the service's error code, e.g. ``"InvalidParameter"``.
        request_id: the service's request id, when it sent one.
        retry_after: seconds the service asked us to wait (``Retry-After``), if any.
        attempts: how many times the request was sent before it failed for good (1 plus
            its retries); the message says so when it is more than one.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after
        self.should_retry = should_retry
        self.attempts = attempts
        super().__init__(self._render())

    def _render(self) -> str:
        head = []
        if self.status_code is not None:
            head.append(str(self.status_code))
        if self.code:
            head.append(self.code)
        text = f"[{' '.join(head)}] {self.message}" if head else self.message
        if self.request_id:
            text += f" (request_id={self.request_id})"
        if self.attempts > 1:
            text += f"; sent {self.attempts} times"
        return text

    def gave_up_after(self, attempts: int) -> None:
        """Record that this error ended the last of ``attempts`` tries of its request."""
        self.attempts = attempts
        self.args = (self._render(),)

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed. See :func:`is_retryable`."""
        return is_retryable(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_api_error, (type(self), self.message, self._fields()))

    def _fields(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "code": self.code,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
            "should_retry": self.should_retry,
            "attempts": self.attempts,
        }


def _rebuild_api_error(cls: type[APIError], message: str, fields: dict[str, Any]) -> APIError:
    return cls(message, **fields)


class AuthenticationError(APIError):
    """401: the key is wrong, revoked, or belongs to another region's host."""


class PermissionDeniedError(APIError):
    """403 or ``Arrearage``: the account may not use this model or is overdue."""


class BadRequestError(APIError):
    """400: the service rejected the request's content or parameters."""


class ContentFilterError(BadRequestError):
    """The service's content inspection rejected an input (``DataInspectionFailed``)."""


class NotFoundError(APIError):
    """404 or an unknown-model reply: the model is not served here (check the region)."""


class RateLimitError(APIError):
    """429: requests or tokens per minute exceeded, or the free quota is used up."""


class ServerError(APIError):
    """5xx: the service failed; usually transient."""


class BadResponseError(APIError):
    """The reply does not keep the protocol's promise (bad JSON, missing or extra rows)."""


class APIConnectionError(APIError):
    """No complete response arrived: refused or dropped connection, TLS or DNS failure."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


# Codes whose meaning overrides the HTTP status (the service is not always consistent
# about the status it pairs with a code, and OpenAI-compatible mode uses other spellings).
_CODE_CLASSES: Mapping[str, type[APIError]] = {
    "InvalidApiKey": AuthenticationError,
    "invalid_api_key": AuthenticationError,
    "AccessDenied": PermissionDeniedError,
    "AccessDenied.Unpurchased": PermissionDeniedError,
    "Arrearage": PermissionDeniedError,
    "Model.NotExist": NotFoundError,
    "ModelNotFound": NotFoundError,
    "model_not_found": NotFoundError,
    "DataInspectionFailed": ContentFilterError,
    "data_inspection_failed": ContentFilterError,
    "InvalidParameter": BadRequestError,
    # Server-side failures, by name: they may come with a 2xx status (the v2 SDK's
    # "two-layer" errors), and must still be retried.
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
    "GatewayTimeout": ServerError,
    "RequestTimeOut": ServerError,
}

_STATUS_CLASSES: Mapping[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: APITimeoutError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
}


def error_class_for(status_code: int, code: str | None, message: str = "") -> type[APIError]:
    """Pick the error class for a failed reply from its status, code and message."""
    if "model not exist" in message.lower():
        return NotFoundError
    if code and code in _CODE_CLASSES:
        return _CODE_CLASSES[code]
    if code and code.startswith("Throttling"):
        return RateLimitError
    if status_code in _STATUS_CLASSES:
        return _STATUS_CLASSES[status_code]
    if status_code >= 500:
        return ServerError
    return APIError


# The free-tier exhaustion message shares its code with transient TPM throttling; only
# the message tells them apart, and waiting does not help the former.
_PERMANENT_THROTTLE_MARKERS = ("free allocated quota exceeded", "free tier")


def is_retryable(error: BaseException) -> bool:
    """The one place that decides whether a failed request is worth sending again.

    Retryable: timeouts and dropped connections, replies that broke the protocol, and the
    statuses 408, 409, 429 and 5xx — except a 429 that means the free quota is used up.
    A service ``x-should-retry`` header overrides the status rule. Everything else (400,
    401, 403, 404, bad input) fails the same way every time.
    """
    if not isinstance(error, APIError):
        return False
    if error.should_retry is not None:
        return error.should_retry
    if isinstance(error, (APIConnectionError, BadResponseError, ServerError)):
        return True
    if isinstance(error, RateLimitError):
        return not any(marker in error.message.lower() for marker in _PERMANENT_THROTTLE_MARKERS)
    if error.status_code is None:
        return False
    return error.status_code in RETRYABLE_STATUS or error.status_code >= 500


class PartialEmbeddingError(DashScopeError):
    """Some requests failed for good; everything that did succeed is kept, not re-billed.

    Attributes:
        partial: the finished work: ``partial.dense[i]`` / ``partial.sparse[i]`` hold the
            vector of input ``i`` if it was embedded and ``None`` if not.
        failed_positions: input positions that have no vector, in order.
        errors: the final error of each failed request.
        unsent_requests: requests never sent because a failure stopped the call (a
            request that fails for good, other than for its own input, stops the rest).

    To finish the job, send only what is missing and merge::

        try:
            result = client.embed(texts)
        except PartialEmbeddingError as exc:
            rest = client.embed([texts[i] for i in exc.failed_positions])
            result = exc.partial.complete_with(rest)
    """

    def __init__(
        self,
        partial: PartialResult,
        failed_positions: Sequence[int],
        errors: Sequence[BaseException],
        unsent_requests: int = 0,
    ) -> None:
        self.partial = partial
        self.failed_positions = list(failed_positions)
        self.errors = list(errors)
        self.unsent_requests = unsent_requests
        total = len(partial)
        done = total - len(self.failed_positions)
        first = self.errors[0] if self.errors else None
        preview = _positions_preview(self.failed_positions)
        super().__init__(
            f"{done} of {total} inputs embedded; {len(self.failed_positions)} failed "
            f"(positions {preview}) after {len(self.errors)} failed request(s)"
            f"{_unsent(unsent_requests)}; first error: {first}"
        )

    @property
    def completed_positions(self) -> list[int]:
        """Input positions that were embedded."""
        failed = set(self.failed_positions)
        return [i for i in range(len(self.partial)) if i not in failed]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.partial, self.failed_positions, self.errors, self.unsent_requests),
        )


def _unsent(requests: int) -> str:
    if not requests:
        return ""
    return f", which stopped the call: {requests} request(s) were never sent"


def _positions_preview(positions: Sequence[int], shown: int = 10) -> str:
    preview = ", ".join(str(i) for i in positions[:shown])
    return preview + (", ..." if len(positions) > shown else "")


class PartialRerankError(DashScopeError):
    """Some of a ranking's requests failed for good; the rest is ranked and attached.

    Attributes:
        partial: the documents that were scored, ranked (scores from one model and one
            query compare across requests, so this ranking is sound for them).
        failed_positions: the documents that were not scored, by position.
        errors: the final error of each failed request.
        unsent_requests: requests never sent because a failure stopped the call.
    """

    def __init__(
        self,
        partial: Any,
        failed_positions: Sequence[int],
        errors: Sequence[BaseException],
        unsent_requests: int = 0,
    ) -> None:
        self.partial = partial
        self.failed_positions = list(failed_positions)
        self.errors = list(errors)
        self.unsent_requests = unsent_requests
        first = self.errors[0] if self.errors else None
        preview = _positions_preview(self.failed_positions)
        super().__init__(
            f"{len(self.failed_positions)} documents not scored (positions {preview}) after "
            f"{len(self.errors)} failed request(s){_unsent(unsent_requests)}; the others are "
            f"ranked and attached; first error: {first}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.partial, self.failed_positions, self.errors, self.unsent_requests),
        )
