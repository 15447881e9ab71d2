"""gRPC's side of errors, auth, metrics and raw stream requests, as asyncio server
interceptors (as KServe's are). `GRPC_CODES` is the one map from an error's kind to a status."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from imgsim_server import errors
from imgsim_server.auth import check_bearer

log = logging.getLogger(__name__)

GRPC_CODES: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.INVALID_ARGUMENT,
    "no_face": grpc.StatusCode.FAILED_PRECONDITION,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "internal": grpc.StatusCode.INTERNAL,
}

# The health service stays open, so that load balancers and orchestrators can probe without
# the secret (it reveals only SERVING / NOT_SERVING).
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)

_SAME = object()


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message that report `exc` to a caller; an internal error is logged
    with its traceback and reported without its text."""
    kind = errors.kind_of(exc)
    if kind == "internal":
        log.error("internal error", exc_info=exc)
    return GRPC_CODES[kind], errors.public_message(exc)


def with_behaviour(
    handler: grpc.RpcMethodHandler, behaviour: Callable, request_deserializer=_SAME
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers as `handler` that runs `behaviour`
    (with another request deserializer if given; None passes the raw bytes)."""
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    same = request_deserializer is _SAME
    deserializer = handler.request_deserializer if same else request_deserializer
    return make(behaviour, deserializer, handler.response_serializer)


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable:
    """The function that serves calls of `handler`, whatever its kind."""
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


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


def _deny(handler: grpc.RpcMethodHandler, exc: errors.CoreError) -> grpc.RpcMethodHandler:
    code, message = status_for(exc)

    async def abort(_request_or_iterator, context):
        await context.abort(code, message)

    async def abort_stream(_request_or_iterator, context):
        await context.abort(code, message)
        yield  # never reached: makes this an async generator, as streaming handlers are

    return with_behaviour(handler, abort_stream if handler.response_streaming else abort)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right `authorization: Bearer TOKEN` metadata
    (`auth.check_bearer`: UNAUTHENTICATED, as over HTTP)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            check_bearer(metadata.get("authorization", ""), self._token)
        except errors.UnauthenticatedError as exc:
            return _deny(handler, exc)
        return handler


class RawStreamRequests(grpc.aio.ServerInterceptor):
    """Hands the requests of `methods` to the servicer as raw bytes (it sizes, then parses)."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        self.methods = frozenset(methods)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.methods:
            return handler
        return with_behaviour(handler, handler.stream_stream, request_deserializer=None)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and final status, unary and streaming alike."""

    def __init__(self, on_call: Callable[[str, str], None]) -> None:
        self.on_call = on_call  # (method, status code name)

    @staticmethod
    def _code(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        if exc is None:
            return "OK"
        if isinstance(exc, Exception):
            return GRPC_CODES[errors.kind_of(exc)].name
        return "CANCELLED"  # asyncio.CancelledError, GeneratorExit: the client left

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        behaviour = behaviour_of(handler)

        async def unary_response(request, context):
            try:
                response = await behaviour(request, context)
            except BaseException as exc:
                self.on_call(method, self._code(context, exc))
                raise
            self.on_call(method, self._code(context, None))
            return response

        async def stream_response(request, context):
            try:
                async for item in behaviour(request, context):
                    yield item
            except BaseException as exc:
                self.on_call(method, self._code(context, exc))
                raise
            self.on_call(method, self._code(context, None))

        return with_behaviour(
            handler, stream_response if handler.response_streaming else unary_response
        )
