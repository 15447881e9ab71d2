"""Server configuration: frozen dataclasses built from command-line flags and the environment.

Imports neither grpc nor torch, so `imgsim-server --help` is quick on any install.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from imgsim_server.core.images import DecodeLimits
from imgsim_server.memory import default_budget_mb

# Chosen by the rule in results/study.md (make study): the best mean AUC rank over the labelled
# sets within 2.5x efficientnet-lite0's cost, no set worse beyond its interval. The old default,
# efficientnet-lite0, stays selectable by name.
DEFAULT_MODEL = "efficientnet-lite2-260"
# The descriptor collections (embed, index, search) use by default, chosen by the rule in
# results/quality.md (make bench-quality) on development data; always served.
COLLECTION_MODEL = "efficientnet-lite0-rmac-full384-ms"


@dataclass(frozen=True)
class CoreConfig:
    """Settings of the dataplane."""

    default_model: str = DEFAULT_MODEL
    collection_model: str = COLLECTION_MODEL
    device: str = "cpu"
    backend: str = "auto"  # torch | onnx | auto (onnx on CPU when installed)
    precision: str = "fp32"  # fp32 | int8 (onnx)
    onnx_dir: Path | None = None  # exported graphs; None: the cache
    weights: tuple[tuple[str, Path], ...] = ()  # (model, file) overrides
    max_batch_size: int = 32  # hard cap on a batch
    preferred_batch_size: int = 0  # close a batch here at once; 0: the runtime's own preference
    max_delay_ms: float = 5.0
    queue_size: int = 256  # images admitted at once: decoding, queued or in the model
    cache_mb: float = 256.0
    decode_workers: int = 2
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    # Served models: the default, the classical ones and these; ("all",) serves every one.
    models: tuple[str, ...] = ()
    max_loaded_models: int = 4  # least recently used models beyond this are unloaded
    # A request without a deadline waits this long at most for its model's preparation.
    prepare_wait_s: float = 300.0
    memory_budget_mb: int = field(default_factory=default_budget_mb)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    grace_s: float = 10.0
    max_message_mb: int = 64
    max_stream_inflight: int = 256
    max_concurrent_streams: int = 64  # streaming calls at once; control calls never count
    stream_idle_timeout_s: float | None = 300.0  # close streams silent this long; None = never
    max_connection_age_s: float | None = None  # GOAWAY after this age (gRFC A9); None = off
    max_connection_age_grace_s: float = 30.0  # then this long for calls in flight
    log_level: str = "INFO"
    auth_token: str = ""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None = off, 0 = a free port
    http_port: int | None = None  # HTTP/JSON API and web page ([http] extra); None = off
    http_request_timeout_s: float = 30.0  # to receive a whole request (headers and body)
    http_min_body_rate: int = 256 * 1024  # bytes/s a body must keep up, on top of that
    http_max_connections: int = 0  # 0: derived from RLIMIT_NOFILE
    unix_socket: Path | None = None  # gRPC on this unix socket instead of host:port
    exit_with_stdin: bool = False  # stop when standard input closes (a parent's watchdog pipe)
    core: CoreConfig = field(default_factory=CoreConfig)

    @property
    def address(self) -> str:
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgsim")
    except PackageNotFoundError:
        return "unknown"


def resolve_device(device: str) -> str:
    """'auto' becomes 'cuda' when a GPU is visible to torch, else 'cpu'."""
    if device != "auto":
        return device
    if not Path("/proc/driver/nvidia").exists() and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return "cpu"  # no NVIDIA driver: decide without importing torch
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _weights(values: list[str], default_model: str) -> tuple[tuple[str, Path], ...]:
    out = []
    for v in values:
        model, sep, path = v.partition("=")
        out.append((model, Path(path)) if sep else (default_model, Path(v)))
    return tuple(out)


class _Formatter(argparse.HelpFormatter):
    """Appends an option's default, except where its help already says it (no doubles)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, "", False, argparse.SUPPRESS, []):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def env_int(name: str) -> int | None:
    """An optional integer setting from the environment (unset: None)."""
    value = os.environ.get(name)
    return int(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="imgsim-server",
        description="Serve image similarity over gRPC (service imgsim.v1.ImageSimilarity). "
        "Images from all calls are embedded in dynamic batches by a pretrained CNN or a "
        "classical baseline; pairs are scored by the model's similarity (cosine by default).",
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "--host",
        default=env("IMGSIM_HOST", "127.0.0.1"),
        help="address to bind; use 0.0.0.0 to accept remote clients",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(env("IMGSIM_PORT", "50051")),
        help="port to bind; 0 picks a free port (printed at start)",
    )
    p.add_argument(
        "--unix-socket",
        type=Path,
        metavar="PATH",
        help="serve gRPC on this unix socket instead of --host/--port (no TCP port opened); "
        "clients use the target unix:PATH",
    )
    p.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop (gracefully) when standard input closes: a parent process that started "
        "this server holds the other end, so the server never outlives it, even if it is "
        "killed (imgsim-client's private local server)",
    )
    p.add_argument(
        "--model",
        default=env("IMGSIM_MODEL", DEFAULT_MODEL),
        help="default model for requests that name none (see imgsim-client models)",
    )
    p.add_argument(
        "--models",
        default=env("IMGSIM_MODELS", ""),
        metavar="NAME[,NAME...]|all",
        help="models this server serves, besides --model and the classical ones (phash, "
        "color-hist, pixels); 'all' serves every registered model. A request for another "
        "model gets NOT_FOUND. Where torch is installed, a served model's missing graph is "
        "exported without a manual step: the default's before the server is ready, those "
        "named here (and the collection model) in the background after it, one at a time, "
        "and with 'all' each on its first request (default: $IMGSIM_MODELS)",
    )
    p.add_argument(
        "--max-loaded-models",
        type=int,
        default=4,
        help="models loaded at once; loading one more unloads the least recently used "
        "(never --model)",
    )
    p.add_argument(
        "--prepare-wait",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a request for a served model that is still being prepared (its graph exported, "
        "loaded) waits for it, until its own deadline or at most this long; then UNAVAILABLE "
        "(HTTP 503). A model whose preparation failed is an error at once, with the reason",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=int,
        default=int(env("IMGSIM_MEMORY_BUDGET_MB", "0")) or None,
        help="bytes held for requests at once, server-wide: request bodies, stream image "
        "tables, decoded pixels, queued inputs. A request that would exceed it gets "
        "RESOURCE_EXHAUSTED (HTTP 429). Default: a quarter of the machine's (or cgroup's) "
        f"memory, 256 to 4096 MiB; here {default_budget_mb()}",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[MODEL=]FILE",
        help="weights file for MODEL (default: --model); repeatable",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where CNNs run; auto uses CUDA when available",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="CNN runtime; auto = ONNX Runtime on CPU when installed, torch on CUDA",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="int8 = ONNX Runtime quantised graph (onnx backend only)",
    )
    p.add_argument(
        "--onnx-dir",
        type=Path,
        default=Path(env("IMGSIM_ONNX_DIR")) if env("IMGSIM_ONNX_DIR") else None,
        help="folder of graphs written by 'imgsim-server export'; a server without torch "
        "serves CNNs only from such graphs (default: $IMGSIM_ONNX_DIR, else the cache "
        "$IMGSIM_CACHE_DIR/onnx, where a server with torch exports the graphs of the models "
        "it serves)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="hard cap: no batch is larger (also bounds the runtime's memory)",
    )
    p.add_argument(
        "--preferred-batch-size",
        type=int,
        default=0,
        help="a batch closes at this size at once, without waiting --max-delay-ms (Triton's "
        "preferred_batch_size); must not exceed --max-batch-size. 0 = the runtime's own "
        "choice: 4 for ONNX Runtime on CPU, where larger batches are slower per image, none "
        "on CUDA (fill to the cap). The policy in effect is logged at start",
    )
    p.add_argument(
        "--max-delay-ms",
        type=float,
        default=5.0,
        help="longest wait for a batch to fill once its first image is ready",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=256,
        help="images admitted at once (decoding, queued, in the model); when full, "
        "streams stop being read and unary calls get RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=256.0,
        help="memory bound of the embedding cache (LRU, keyed by model and content)",
    )
    p.add_argument(
        "--decode-workers",
        type=int,
        default=2,
        help="threads that decode and preprocess images in parallel with the model",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=64_000_000,
        help="refuse images with more pixels than this, from the header",
    )
    p.add_argument(
        "--max-message-mb", type=int, default=64, help="largest gRPC message accepted, in MiB"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT",
    )
    p.add_argument(
        "--log-level",
        default=env("IMGSIM_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity",
    )
    p.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=int(env("IMGSIM_MAX_STREAMS", "64")),
        help="streaming calls (CompareStream) served at once; one more gets "
        "RESOURCE_EXHAUSTED. Unary Compare is bounded by --queue-size instead, and health, "
        "reflection, ListModels and GetStats never count. An idle stream holds no thread",
    )
    p.add_argument(
        "--stream-idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a stream that sent nothing and has nothing left to answer for this long "
        "(DEADLINE_EXCEEDED); 0 = never",
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="close each client connection (GOAWAY) after this age, so that long-lived "
        "clients re-resolve and reach replicas added since (gRFC A9); 0 = off",
    )
    p.add_argument(
        "--max-connection-age-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after --max-connection-age, how long calls in flight may finish before the "
        "connection is cut (a cut stream is a resumable UNAVAILABLE for the client)",
    )
    p.add_argument(
        "--auth-token",
        default=env("IMGSIM_AUTH_TOKEN", ""),
        help="require 'authorization: Bearer TOKEN' on every call except health "
        "(default: $IMGSIM_AUTH_TOKEN; empty = no auth)",
    )
    p.add_argument("--tls-cert", type=Path, help="PEM server certificate (enables TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    p.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA bundle; clients must present a cert (mTLS)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env_int("IMGSIM_METRICS_PORT"),
        help="serve Prometheus metrics at http://HOST:PORT/metrics on --host, unauthenticated "
        "(default: $IMGSIM_METRICS_PORT; unset = off; 0 = a free port)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=env_int("IMGSIM_HTTP_PORT"),
        help="also serve HTTP/JSON (/v1/compare, /v1/embed, /v1/models, /livez, /readyz, "
        "/metrics, docs at /docs) and the two-photo web page at / on --host, from the same "
        "process, core, cache, limits, auth and TLS; needs the [http] extra "
        "(default: $IMGSIM_HTTP_PORT; unset = off; 0 = a free port)",
    )
    p.add_argument(
        "--http-request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an HTTP connection must deliver a whole request's headers within this long "
        "(and its body within this plus its size at --http-min-body-rate), else it is closed "
        "with 408 (nginx's client_header_timeout, whose default is 60)",
    )
    p.add_argument(
        "--http-min-body-rate",
        type=int,
        default=256 * 1024,
        metavar="BYTES_PER_S",
        help="the slowest upload rate a request body may have, beyond --http-request-timeout",
    )
    p.add_argument(
        "--http-max-connections",
        type=int,
        default=0,
        help="open HTTP connections at once; one more is closed at once. 0 = derived from the "
        "process's open-file limit (RLIMIT_NOFILE), leaving room for gRPC and files",
    )
    return p


def parse_models(value: str) -> tuple[str, ...]:
    """`--models a,b` or `all` as the config's tuple."""
    return tuple(m.strip() for m in value.split(",") if m.strip())


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    core = CoreConfig(
        default_model=args.model,
        device=resolve_device(args.device),
        backend=args.backend,
        precision=args.precision,
        onnx_dir=args.onnx_dir,
        weights=_weights(args.weights, args.model),
        max_batch_size=args.max_batch_size,
        preferred_batch_size=args.preferred_batch_size,
        max_delay_ms=args.max_delay_ms,
        queue_size=args.queue_size,
        cache_mb=args.cache_mb,
        decode_workers=args.decode_workers,
        limits=DecodeLimits(max_pixels=args.max_pixels),
        models=parse_models(args.models),
        max_loaded_models=args.max_loaded_models,
        prepare_wait_s=args.prepare_wait,
        memory_budget_mb=args.memory_budget_mb or default_budget_mb(),
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        grace_s=args.grace,
        max_message_mb=args.max_message_mb,
        max_concurrent_streams=args.max_concurrent_streams,
        stream_idle_timeout_s=args.stream_idle_timeout or None,
        max_connection_age_s=args.max_connection_age or None,
        max_connection_age_grace_s=args.max_connection_age_grace,
        log_level=args.log_level,
        auth_token=args.auth_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        http_port=args.http_port,
        http_request_timeout_s=args.http_request_timeout,
        http_min_body_rate=args.http_min_body_rate,
        http_max_connections=args.http_max_connections,
        unix_socket=args.unix_socket,
        exit_with_stdin=args.exit_with_stdin,
        core=core,
    )
