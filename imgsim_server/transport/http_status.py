"""The one place that maps core exceptions to HTTP statuses, as `grpc_status` does for gRPC.

The JSON error body names the same code as gRPC would (`INVALID_ARGUMENT`, `NOT_FOUND`, ...), so
a client sees one vocabulary whichever protocol it speaks; the HTTP status follows grpc-gateway,
with 413 for an image over a size limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from imgsim_server import errors

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.ImageTooLargeError, 413, "INVALID_ARGUMENT"),
    (errors.InvalidImageError, 400, "INVALID_ARGUMENT"),
    (errors.InvalidRequestError, 400, "INVALID_ARGUMENT"),
    (errors.ModelNotFoundError, 404, "NOT_FOUND"),
    (errors.WeightsUnavailableError, 400, "FAILED_PRECONDITION"),
    (errors.ConfigurationError, 400, "FAILED_PRECONDITION"),
    (errors.OverloadedError, 429, "RESOURCE_EXHAUSTED"),
    (errors.DeadlineExceededError, 504, "DEADLINE_EXCEEDED"),
    (errors.CancelledError, 499, "CANCELLED"),
    (concurrent.futures.TimeoutError, 504, "DEADLINE_EXCEEDED"),
    (asyncio.TimeoutError, 504, "DEADLINE_EXCEEDED"),
)


class HttpError(Exception):
    """A request that is wrong as HTTP (auth, body size, content type), with its status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def http_status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, code name, message) that report `exc` to a caller."""
    if isinstance(exc, HttpError):
        return exc.status, exc.code, str(exc)
    for exc_type, status, code in _STATUS:
        if isinstance(exc, exc_type):
            return status, code, errors.bounded_message(str(exc) or exc_type.__name__)
    log.error("internal error", exc_info=exc)
    return 500, "INTERNAL", "internal error (the server's log has the details)"
