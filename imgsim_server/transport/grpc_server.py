"""The gRPC server on `grpc.aio`: the servicer, health, reflection, interceptors, TLS and
graceful stop. Knows nothing of HTTP; `imgsim_server.server` runs both side by side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_server.config import ServerConfig
from imgsim_server.core.dataplane import Dataplane
from imgsim_server.transport.grpc_interceptors import (
    BearerTokenInterceptor,
    ExceptionToStatusInterceptor,
    MetricsInterceptor,
    RawStreamRequests,
)
from imgsim_server.transport.grpc_servicer import RAW_STREAM_METHODS, ImageSimilarityServicer

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageSimilarity"].full_name


@dataclass
class GrpcServer:
    """A started aio server, its health service and its servicer."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    servicer: ImageSimilarityServicer
    port: int

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first, new calls are refused, in-flight calls (streams
        included) get `grace` seconds to drain; open streams end with UNAVAILABLE just before
        the grace period ends (see the servicer's `stopping`)."""
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        ending = loop.call_later(max(0.0, (grace or 0.0) - 0.5), self.servicer.stopping)
        await self.server.stop(grace)
        ending.cancel()


def _options(cfg: ServerConfig) -> list[tuple[str, int]]:
    max_bytes = cfg.max_message_mb * 1024 * 1024
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]
    # gRFC A9: connections are closed (GOAWAY) after this age, so that long-lived clients
    # re-resolve and spread over replicas added since; off (unlimited) by default.
    if cfg.max_connection_age_s:
        options.append(("grpc.max_connection_age_ms", int(cfg.max_connection_age_s * 1000)))
        options.append(
            ("grpc.max_connection_age_grace_ms", int(cfg.max_connection_age_grace_s * 1000))
        )
    return options


async def start_grpc(
    cfg: ServerConfig,
    core: Dataplane,
    on_call: Callable[[str, str], None] | None = None,
    on_pair: Callable[[str], None] | None = None,
) -> GrpcServer:
    """Create and start the gRPC server on cfg.host:cfg.port (port 0 picks a free one), health
    NOT_SERVING until the caller says otherwise. `on_call`/`on_pair` feed metrics."""
    server = grpc.aio.server(
        interceptors=[
            RawStreamRequests(RAW_STREAM_METHODS),
            *([MetricsInterceptor(on_call)] if on_call else []),
            *([BearerTokenInterceptor(cfg.auth_token)] if cfg.auth_token else []),
            ExceptionToStatusInterceptor(),
        ],
        options=_options(cfg),
    )
    servicer = ImageSimilarityServicer(
        core,
        cfg.max_stream_inflight,
        cfg.max_concurrent_streams,
        cfg.stream_idle_timeout_s,
        on_pair=on_pair,
    )
    pb_grpc.add_ImageSimilarityServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if cfg.tls_cert:
        if not cfg.tls_key:
            raise ValueError("--tls-cert needs --tls-key")
        creds = grpc.ssl_server_credentials(
            [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
            root_certificates=cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None,
            require_client_auth=cfg.tls_client_ca is not None,
        )
        port = server.add_secure_port(cfg.address, creds)
    else:
        port = server.add_insecure_port(cfg.address)
    local = cfg.unix_socket is not None or cfg.host in ("127.0.0.1", "localhost", "::1")
    if not local and not (cfg.tls_cert or cfg.auth_token):
        log.warning(
            "listening on %s without TLS or auth: anyone who can reach it can use it "
            "(see --tls-cert/--tls-key and --auth-token)",
            cfg.address,
        )
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.address}")
    await server.start()
    running = GrpcServer(server, health_servicer, servicer, port)
    await running.set_serving(False)
    return running
