"""The one place that maps core exceptions to gRPC status codes (as KServe's interceptors do).

Unary handlers get the mapping through `ExceptionToStatusInterceptor` (an asyncio server
interceptor); stream handlers use `status_for` to fill each failed pair's `PairError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import grpc

from imgsim_server import errors
from imgsim_server.handlers import with_behaviour

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidImageError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.WeightsUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ConfigurationError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (concurrent.futures.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (concurrent.futures.CancelledError, grpc.StatusCode.CANCELLED),
    (asyncio.CancelledError, grpc.StatusCode.CANCELLED),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message that report `exc` to a caller."""
    for exc_type, code in _CODES:
        if isinstance(exc, exc_type):
            return code, errors.bounded_message(str(exc) or exc_type.__name__)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (the server's log has the details)"


class ExceptionToStatusInterceptor(grpc.aio.ServerInterceptor):
    """Turns exceptions escaping unary handlers into statuses with clear messages."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def wrapped(request, context):
            try:
                return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code, message = status_for(exc)
                await context.abort(code, message)

        return with_behaviour(handler, wrapped)
