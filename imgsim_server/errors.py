"""Errors of the dataplane. Each carries a `kind`, the one word the transports map to their
status codes (`transport/grpc_interceptors.GRPC_CODES`, `transport/http_server.HTTP_STATUS`);
nothing here knows gRPC or HTTP."""

from __future__ import annotations

import asyncio
import concurrent.futures

MAX_MESSAGE = 2000  # characters of an error message sent to a caller

# Every kind a transport must map (a test checks both tables against it).
KINDS = (
    "invalid_argument",
    "too_large",
    "no_face",
    "not_found",
    "failed_precondition",
    "resource_exhausted",
    "unavailable",
    "deadline_exceeded",
    "cancelled",
    "unauthenticated",
    "internal",
)


def bounded_message(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message short enough for any client's metadata limit (8 KiB by default)."""
    return message if len(message) <= limit else message[: limit - 3] + "..."


class CoreError(Exception):
    """Base class for errors the service reports to callers; a subclass names its `kind`."""

    kind = "internal"

    def __init_subclass__(cls, kind: str = "", **kw: object) -> None:
        super().__init_subclass__(**kw)
        if kind:
            cls.kind = kind


class InvalidImageError(CoreError, kind="invalid_argument"):
    """The bytes are not a decodable, allowed image."""


class ImageTooLargeError(InvalidImageError, kind="too_large"):
    """The image is over a size limit (bytes or pixels); HTTP answers 413."""


class NoFaceError(CoreError, kind="no_face"):
    """The face model found no face in the image: that pair or image fails, nothing is
    scored (gRPC FAILED_PRECONDITION, HTTP 422)."""


class InvalidRequestError(CoreError, kind="invalid_argument"):
    """The request is malformed (missing image, bad reference, ...)."""


class ModelNotFoundError(CoreError, kind="not_found"):
    """No model of that name in the registry."""


class WeightsUnavailableError(CoreError, kind="failed_precondition"):
    """The model is registered but its weights file is absent."""


class ConfigurationError(CoreError, kind="failed_precondition"):
    """The server's settings cannot serve this model (e.g. int8 on a torch backend)."""


class OverloadedError(CoreError, kind="resource_exhausted"):
    """A bounded queue or limit is full; retry later."""


class ModelFailedError(ConfigurationError):
    """The preparation of a served model failed (its export or load); the message says why."""


class UnavailableError(CoreError, kind="unavailable"):
    """Not now, but later: a served model still being prepared past the server's wait bound."""


class CancelledError(CoreError, kind="cancelled"):
    """The caller went away or its deadline passed before the work ran."""


class GraphUnavailableError(WeightsUnavailableError):
    """A torch-less server has no exported ONNX graph for the model."""


class DeadlineExceededError(CancelledError, kind="deadline_exceeded"):
    """The call's deadline passed before its result was ready."""


class UnauthenticatedError(CoreError, kind="unauthenticated"):
    """The call carries no bearer token, or the wrong one."""


def kind_of(exc: BaseException) -> str:
    """The kind of any exception a call can end with: a CoreError's own, cancellation and
    timeouts of the futures it awaited, else "internal" (a bug: logged, never echoed)."""
    if isinstance(exc, CoreError):
        return exc.kind
    if isinstance(exc, (asyncio.TimeoutError, concurrent.futures.TimeoutError)):
        return "deadline_exceeded"
    if isinstance(exc, (asyncio.CancelledError, concurrent.futures.CancelledError)):
        return "cancelled"
    return "internal"


INTERNAL_MESSAGE = "internal error (the server's log has the details)"


def public_message(exc: BaseException) -> str:
    """What a caller is told of `exc`: its bounded message, or a generic one for an internal
    error, whose text and traceback stay in the server's log."""
    kind = kind_of(exc)
    if kind == "internal":
        return INTERNAL_MESSAGE
    return bounded_message(str(exc) or kind.replace("_", " "))
