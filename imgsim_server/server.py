"""Server lifecycle: build, start, wait, graceful stop; health and reflection services."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_server.auth import BearerTokenInterceptor
from imgsim_server.config import ServerConfig
from imgsim_server.core import SimilarityCore
from imgsim_server.errors import CoreError
from imgsim_server.metrics import MetricsInterceptor, ServerMetrics
from imgsim_server.servicer import ImageSimilarityServicer
from imgsim_server.status import ExceptionToStatusInterceptor

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageSimilarity"].full_name


@dataclass
class RunningServer:
    """A started server and the objects a caller may need (tests use `core` and `port`)."""

    server: grpc.Server
    core: SimilarityCore
    health: health.HealthServicer
    port: int
    owns_core: bool = True
    metrics: ServerMetrics | None = None
    metrics_port: int | None = None

    def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.close()
        if self.owns_core:
            self.core.close()


def start_server(
    cfg: ServerConfig, core: SimilarityCore | None = None, owns_core: bool | None = None
) -> RunningServer:
    """Create and start a server on cfg.host:cfg.port (port 0 picks a free one).

    A server closes the core it made; a given `core` is the caller's unless `owns_core`.
    """
    owns_core = core is None if owns_core is None else owns_core
    core = core or SimilarityCore(cfg.core)
    max_bytes = cfg.max_message_mb * 1024 * 1024
    metrics = ServerMetrics(core) if cfg.metrics_port is not None else None
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="grpc"),
        interceptors=[
            *([MetricsInterceptor(metrics.on_call)] if metrics else []),
            *([BearerTokenInterceptor(cfg.auth_token)] if cfg.auth_token else []),
            ExceptionToStatusInterceptor(),
        ],
        maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
        ],
    )
    pb_grpc.add_ImageSimilarityServicer_to_server(
        ImageSimilarityServicer(
            core, cfg.max_stream_inflight, on_pair=metrics.on_pair if metrics else None
        ),
        server,
    )
    health_servicer = health.HealthServicer()
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
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.tls_cert or cfg.auth_token):
        log.warning(
            "listening on %s without TLS or auth: anyone who can reach it can use it "
            "(see --tls-cert/--tls-key and --auth-token)",
            cfg.address,
        )
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.address}")
    metrics_port = metrics.serve(cfg.host, cfg.metrics_port) if metrics else None
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, core, health_servicer, port, owns_core, metrics, metrics_port)


def serve(cfg: ServerConfig) -> int:
    """Load the default model, serve until SIGTERM/SIGINT, then shut down gracefully.

    Returns the exit status: 1 when the default model cannot load (the message says why and
    what to do), else 0.
    """
    core = SimilarityCore(cfg.core)
    # Load the default model before binding, so the first call is not slow and a server that
    # cannot serve its default model fails at start instead of on every call.
    try:
        core.engine(cfg.core.default_model)
    except CoreError as exc:
        print(f"imgsim-server: error: default model not loaded: {exc}", file=sys.stderr)
        core.close()
        return 1
    running = start_server(cfg, core, owns_core=True)
    host = cfg.host
    print(
        f"imgsim-server listening on {host}:{running.port} "
        f"(default model {cfg.core.default_model}, device {cfg.core.device})"
        + (f"; metrics at http://{host}:{running.metrics_port}/metrics" if running.metrics else ""),
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info(
            "received %s, shutting down (grace %.1fs)", signal.Signals(signum).name, cfg.grace_s
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    running.stop(cfg.grace_s)
    log.info("stopped")
    return 0
