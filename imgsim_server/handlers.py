"""Rebuilding a gRPC method handler around a new behaviour, for server interceptors."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def with_behaviour(handler: grpc.RpcMethodHandler, behaviour: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers as `handler` that runs `behaviour`."""
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(behaviour, handler.request_deserializer, handler.response_serializer)


def behaviour_of(handler: grpc.RpcMethodHandler) -> Callable:
    """The function that serves calls of `handler`, whatever its kind."""
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
