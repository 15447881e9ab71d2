"""Rebuilding a gRPC method handler around a new behaviour, for server interceptors."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_SAME = object()


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
