"""One imgsim server: the dataplane with its transports side by side (gRPC always; HTTP/JSON and
Prometheus when configured). No transport knows another; this module wires them to one core.

`serve` runs until SIGTERM/SIGINT (what `imgsim-server` runs). `start_server` runs one on an
event loop of its own thread and returns a handle with a blocking `stop`, for tests and for
embedding the server in a program that is not asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imgsim_server.config import ServerConfig
from imgsim_server.core.dataplane import Dataplane
from imgsim_server.core.engines import Preparer
from imgsim_server.errors import CoreError
from imgsim_server.transport.grpc_server import GrpcServer, start_grpc
from imgsim_server.transport.grpc_servicer import ImageSimilarityServicer

if TYPE_CHECKING:
    from imgsim_server.transport.http_server import HttpServer
    from imgsim_server.transport.metrics import ServerMetrics

log = logging.getLogger(__name__)


@dataclass
class AsyncServer:
    """A started server and what a caller may need (tests use `core` and the ports)."""

    grpc: GrpcServer
    core: Dataplane
    owns_core: bool = True
    metrics: ServerMetrics | None = None
    metrics_port: int | None = None
    http: HttpServer | None = None
    serving: bool = False  # the gRPC health state; /readyz reads it through `readiness`
    stopping: bool = False

    @property
    def port(self) -> int:
        return self.grpc.port

    @property
    def servicer(self) -> ImageSimilarityServicer:
        return self.grpc.servicer

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        await self.grpc.set_serving(serving)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): gRPC Health's state, with the dataplane's reason when not serving."""
        if self.stopping:
            return False, "shutting down"
        if self.serving:
            return True, "serving"
        return False, self.core.readiness()[1]

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first, new calls refused, in-flight calls (streams included)
        given `grace` seconds to drain; then HTTP, metrics and the core close."""
        self.serving, self.stopping = False, True
        await self.grpc.stop(grace)
        if self.http is not None:
            await self.http.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.owns_core:
            self.core.close()


async def build_server(
    cfg: ServerConfig,
    core: Dataplane | None = None,
    owns_core: bool | None = None,
    serving: bool = True,
) -> AsyncServer:
    """Create and start a server on cfg.host:cfg.port (port 0 picks a free one). Health says
    SERVING at once if `serving`, else NOT_SERVING until the caller sets it."""
    owns_core = core is None if owns_core is None else owns_core
    core = core or Dataplane(cfg.core)
    metrics = None
    if cfg.metrics_port is not None:
        from imgsim_server.transport.metrics import ServerMetrics

        metrics = ServerMetrics(core)
    on_call = metrics.on_call if metrics else None
    on_pair = metrics.on_pair if metrics else None
    grpc_server = await start_grpc(cfg, core, on_call, on_pair)
    metrics_port = metrics.serve(cfg.host, cfg.metrics_port) if metrics else None
    running = AsyncServer(grpc_server, core, owns_core, metrics, metrics_port)
    await running.set_serving(serving)
    if cfg.http_port is not None:
        running.http = await _start_http(cfg, running)
    return running


async def _start_http(cfg: ServerConfig, running: AsyncServer) -> HttpServer:
    """HTTP/JSON over the same core, on its own thread's loop (the [http] extra)."""
    from imgsim_server.transport import http_server
    from imgsim_server.transport.http_limits import HttpLimits

    settings = http_server.HttpSettings(
        max_body_bytes=cfg.max_message_mb * 1024 * 1024,
        auth_token=cfg.auth_token,
        ready=running.readiness,
        on_call=running.metrics.on_call if running.metrics else None,
        metrics_text=running.metrics.text if running.metrics else None,
    )
    tls = (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca) if cfg.tls_cert else None
    limits = HttpLimits(
        cfg.http_request_timeout_s, cfg.http_min_body_rate, cfg.http_max_connections
    )
    app = http_server.build_app(running.core, settings)
    return await http_server.start_http(app, cfg.host, cfg.http_port, tls, limits)


@dataclass
class RunningServer:
    """A server on its own event-loop thread, with blocking controls."""

    aio: AsyncServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    _stopped: bool = field(default=False, repr=False)

    def __getattr__(self, name: str):
        """core, port, http_port, metrics_port, servicer: those of the aio server."""
        return getattr(self.aio, name)

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (see AsyncServer.stop), then the loop thread ends."""
        if self._stopped:
            return
        self._stopped = True
        asyncio.run_coroutine_threadsafe(self.aio.stop(grace), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(
    cfg: ServerConfig, core: Dataplane | None = None, owns_core: bool | None = None
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


async def _serve(cfg: ServerConfig, core: Dataplane) -> int:
    # Listen at once (so that liveness probes pass), but NOT_SERVING until the default model is
    # prepared (graph exported, loaded, run once): readiness means the first call will be quick.
    # Requests that arrive meanwhile wait for it (Engines.get_async).
    running = await build_server(cfg, core, owns_core=True, serving=False)
    host = cfg.host
    where = cfg.address if cfg.unix_socket is not None else f"{host}:{running.port}"
    print(
        f"imgsim-server listening on {where} "
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
    if cfg.exit_with_stdin:  # a parent's watchdog pipe (imgsim-client's private server)
        from imgsim_server.parent import when_stdin_closes

        when_stdin_closes(lambda: loop.call_soon_threadsafe(stop.set))
    started = time.perf_counter()
    default = asyncio.wrap_future(core.engines.preparation(cfg.core.default_model))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([default, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not default.done():  # stopped while preparing
            await running.stop(0)
            return 0
        default.result()
    except CoreError as exc:
        # A server that cannot serve its default model fails at start, not on every call.
        print(f"imgsim-server: error: default model not loaded: {exc}", file=sys.stderr)
        await running.stop(0)
        return 1
    await running.set_serving(True)
    log.info(
        "ready in %.1fs: default model %s loaded and run once",
        time.perf_counter() - started,
        cfg.core.default_model,
    )
    core.engines.prepare_in_background(
        [m for m in (cfg.core.collection_model, *cfg.core.models) if m != "all"]
    )
    await stopped
    log.info("shutting down (grace %.1fs)", cfg.grace_s)
    await running.stop(cfg.grace_s)
    log.info("stopped")
    return 0


def serve(cfg: ServerConfig, preparer: Preparer | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully: health NOT_SERVING first, then
    in-flight calls (streams included) get `--grace` seconds to drain. `preparer` makes each
    served model loadable before it loads (the CLI's exports missing graphs; see Engines).

    Returns the exit status: 1 when the default model cannot load (the message says why and
    what to do), else 0.
    """
    code = asyncio.run(_serve(cfg, Dataplane(cfg.core, preparer)))
    # Everything is stopped; what is left are threads that may still wait on an export child
    # (a stop during preparation): end now rather than join them (the child gets SIGTERM).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
