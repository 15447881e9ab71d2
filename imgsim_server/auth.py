"""Bearer-token authentication as a server interceptor.

Every call must carry `authorization: Bearer TOKEN` metadata, except the health service, which
stays open so that load balancers and orchestrators can probe without the secret (it reveals
only SERVING / NOT_SERVING).
"""

from __future__ import annotations

import hmac

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(_request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        abort, handler.request_deserializer, handler.response_serializer
    )


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without the right bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if not given:
            return _deny(handler, "missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(given.encode(), self._expected):
            return _deny(handler, "invalid bearer token")
        return handler
