"""Bearer-token authentication as a server interceptor.

Every call must carry `authorization: Bearer TOKEN` metadata, except the health service, which
stays open so that load balancers and orchestrators can probe without the secret (it reveals
only SERVING / NOT_SERVING).
"""

from __future__ import annotations

import hmac

import grpc

from imgsim_server.handlers import with_behaviour

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def abort(_request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(_request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # never reached: makes this an async generator, as streaming handlers are

    return with_behaviour(handler, abort_stream if handler.response_streaming else abort)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without the right bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if not given:
            return _deny(handler, "missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(given.encode(), self._expected):
            return _deny(handler, "invalid bearer token")
        return handler
