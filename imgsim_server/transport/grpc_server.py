"""Server lifecycle on `grpc.aio`: build, start, serve, graceful stop; health and reflection.

`serve` runs the server on `asyncio.run` until SIGTERM/SIGINT. `start_server` runs one on an
event loop of its own thread and returns a handle with a blocking `stop`, for tests and for
embedding the server in a program that is not asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_server.auth import BearerTokenInterceptor
from imgsim_server.config import ServerConfig
from imgsim_server.core import SimilarityCore
from imgsim_server.errors import CoreError
from imgsim_server.handlers import with_behaviour
from imgsim_server.metrics import MetricsInterceptor, ServerMetrics
from imgsim_server.transport.grpc_servicer import RAW_STREAM_METHODS, ImageSimilarityServicer
from imgsim_server.transport.grpc_status import ExceptionToStatusInterceptor

if TYPE_CHECKING:
    from imgsim_server.transport.http_app import HttpServer

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageSimilarity"].full_name


class RawStreamRequests(grpc.aio.ServerInterceptor):
    """Hands the requests of `methods` to the servicer as raw bytes (it sizes, then parses)."""

    def __init__(self, methods: tuple[str, ...]) -> None:
        self.methods = frozenset(methods)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in self.methods:
            return handler
        return with_behaviour(handler, handler.stream_stream, request_deserializer=None)


@dataclass
class AsyncServer:
    """A started aio server and what a caller may need (tests use `core` and `port`)."""

    server: grpc.aio.Server
    core: SimilarityCore
    health: health.aio.HealthServicer
    servicer: ImageSimilarityServicer
    port: int
    owns_core: bool = True
    metrics: ServerMetrics | None = None
    metrics_port: int | None = None
    http: HttpServer | None = None
    serving: bool = False  # the health state, also /readyz

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health goes NOT_SERVING first, new calls are refused, in-flight calls (streams
        included) get `grace` seconds to drain."""
        self.serving = False
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        ending = loop.call_later(max(0.0, (grace or 0.0) - 0.5), self.servicer.stopping)
        await self.server.stop(grace)
        ending.cancel()
        if self.http is not None:
            await self.http.stop()
        self.servicer.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.owns_core:
            self.core.close()


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


async def build_server(
    cfg: ServerConfig,
    core: SimilarityCore | None = None,
    owns_core: bool | None = None,
    serving: bool = True,
) -> AsyncServer:
    """Create and start a server on cfg.host:cfg.port (port 0 picks a free one). Health says
    SERVING at once if `serving`, else NOT_SERVING until the caller sets it."""
    owns_core = core is None if owns_core is None else owns_core
    core = core or SimilarityCore(cfg.core)
    metrics = ServerMetrics(core) if cfg.metrics_port is not None else None
    server = grpc.aio.server(
        interceptors=[
            RawStreamRequests(RAW_STREAM_METHODS),
            *([MetricsInterceptor(metrics.on_call)] if metrics else []),
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
        on_pair=metrics.on_pair if metrics else None,
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
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not (cfg.tls_cert or cfg.auth_token):
        log.warning(
            "listening on %s without TLS or auth: anyone who can reach it can use it "
            "(see --tls-cert/--tls-key and --auth-token)",
            cfg.address,
        )
    if port == 0:
        raise RuntimeError(f"could not bind {cfg.address}")
    metrics_port = metrics.serve(cfg.host, cfg.metrics_port) if metrics else None
    await server.start()
    running = AsyncServer(
        server, core, health_servicer, servicer, port, owns_core, metrics, metrics_port
    )
    await running.set_serving(serving)
    if cfg.http_port is not None:
        running.http = await _start_http(cfg, running)
    return running


async def _start_http(cfg: ServerConfig, running: AsyncServer) -> HttpServer:
    """HTTP/JSON on the same loop and core (the [http] extra)."""
    from imgsim_server.transport import http_app
    from imgsim_server.transport.http_limits import HttpLimits

    metrics_text = None
    if running.metrics is not None:
        from prometheus_client import generate_latest

        registry = running.metrics.registry
        metrics_text = lambda: generate_latest(registry)  # noqa: E731
    settings = http_app.HttpSettings(
        max_body_bytes=cfg.max_message_mb * 1024 * 1024,
        auth_token=cfg.auth_token,
        ready=lambda: running.serving,
        on_call=running.metrics.on_http if running.metrics else None,
        metrics_text=metrics_text,
    )
    tls = (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
    limits = HttpLimits(
        cfg.http_request_timeout_s, cfg.http_min_body_rate, cfg.http_max_connections
    )
    app = http_app.build_app(running.core, settings)
    return await http_app.start_http(app, cfg.host, cfg.http_port, tls, limits)


@dataclass
class RunningServer:
    """A server on its own event-loop thread, with blocking controls."""

    aio: AsyncServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    _stopped: bool = field(default=False, repr=False)

    @property
    def core(self) -> SimilarityCore:
        return self.aio.core

    @property
    def port(self) -> int:
        return self.aio.port

    @property
    def metrics_port(self) -> int | None:
        return self.aio.metrics_port

    @property
    def http_port(self) -> int | None:
        return self.aio.http_port

    @property
    def servicer(self) -> ImageSimilarityServicer:
        return self.aio.servicer

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (see AsyncServer.stop), then the loop thread ends."""
        if self._stopped:
            return
        self._stopped = True
        asyncio.run_coroutine_threadsafe(self.aio.stop(grace), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(
    cfg: ServerConfig, core: SimilarityCore | None = None, owns_core: bool | None = None
) -> RunningServer:
    """Start a server on an event loop in a new thread; returns once it listens.

    A server closes the core it made; a given `core` is the caller's unless `owns_core`.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="imgsim-grpc", daemon=True)
    thread.start()
    try:
        aio = asyncio.run_coroutine_threadsafe(build_server(cfg, core, owns_core), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    return RunningServer(aio, loop, thread)


async def _serve(cfg: ServerConfig, core: SimilarityCore) -> int:
    # Listen at once (so that liveness probes pass), but NOT_SERVING until the default model is
    # loaded and has run once: readiness means the first call will be quick.
    running = await build_server(cfg, core, owns_core=True, serving=False)
    host = cfg.host
    print(
        f"imgsim-server listening on {host}:{running.port} "
        f"(default model {cfg.core.default_model}, device {cfg.core.device})"
        + (f"; metrics at http://{host}:{running.metrics_port}/metrics" if running.metrics else ""),
        flush=True,
    )
    if running.http is not None:
        scheme = "https" if cfg.tls_cert else "http"
        print(
            f"imgsim-server HTTP/JSON and the web page at {scheme}://{host}:{running.http_port}/ "
            f"(API docs at /docs)",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await loop.run_in_executor(None, core.prepare_graphs)
        await loop.run_in_executor(None, core.warm_up, cfg.core.default_model)
    except CoreError as exc:
        # A server that cannot serve its default model fails at start, not on every call.
        print(f"imgsim-server: error: default model not loaded: {exc}", file=sys.stderr)
        await running.stop(0)
        return 1
    await running.set_serving(True)
    log.info("ready: default model %s loaded and warmed", cfg.core.default_model)
    await stop.wait()
    log.info("shutting down (grace %.1fs)", cfg.grace_s)
    await running.stop(cfg.grace_s)
    log.info("stopped")
    return 0


def serve(cfg: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully: health NOT_SERVING first, then
    in-flight calls (streams included) get `--grace` seconds to drain.

    Returns the exit status: 1 when the default model cannot load (the message says why and
    what to do), else 0.
    """
    return asyncio.run(_serve(cfg, SimilarityCore(cfg.core)))
