"""What the sync and asyncio clients share: the channel's options and service config, TLS
credentials, the error type, and how many backends a target names."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

SERVICE = "imgsim.v1.ImageSimilarity"
# gRPC's own retry for unary calls (gRFC A6): UNAVAILABLE is retried with exponential backoff,
# transparently; other codes are final. Streams are not listed: a retried stream would resend
# every pair, so the CSV scorer resumes them itself with only the unanswered pairs.
UNARY_RETRY = {
    "maxAttempts": 5,
    "initialBackoff": "0.5s",
    "maxBackoff": "10s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


# Long enough for a cold start on 2 cores: the server exports its default model's graph first
# (results/startup.md has the measured times).
READY_TIMEOUT = 600.0
READY_POLL_S = 0.5
HEALTH_REQUEST = health_pb2.HealthCheckRequest(service=SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING


class ImgsimError(Exception):
    """A failed call, with the gRPC status code that the server (or channel) gave."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> ImgsimError:
        return cls(err.code(), err.details() or "")


def service_config(retry: dict | None = None) -> str:
    """The channel's service-config JSON: round_robin over every address the target resolves
    to (one stream stays on one backend; calls and new streams rotate), and the unary retry
    policy for Compare, ListModels and GetStats."""
    names = [{"service": SERVICE, "method": m} for m in ("Compare", "ListModels", "GetStats")]
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": names, "retryPolicy": retry or UNARY_RETRY}],
        }
    )


def channel_options(max_message_mb: int, retry: dict | None) -> list[tuple[str, object]]:
    max_bytes = max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.enable_retries", 1),
        # gRPC retries only a call whose request it still holds: 256 KiB by default, less than
        # two photos, so without this a Compare of large images is never retried.
        ("grpc.per_rpc_retry_buffer_size", min(max_bytes + (1 << 20), 2**31 - 1)),
        ("grpc.service_config", service_config(retry)),
    ]


def credentials(
    tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials (`tls_ca`: the CA that signed the server; `tls_cert`/`tls_key`: a client
    certificate for mTLS), or None for plaintext."""
    if not (tls_ca or tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes() if tls_ca else None,
        private_key=tls_key.read_bytes() if tls_key else None,
        certificate_chain=tls_cert.read_bytes() if tls_cert else None,
    )


class ClientBase:
    """The constructor both clients share: one channel (plain or TLS) with the service config,
    the bearer metadata, and the stub. `_channels` is the grpc module's (insecure, secure)
    channel factories: `grpc` for ImgsimClient, `grpc.aio` for AsyncImgsimClient."""

    _channels: tuple = (grpc.insecure_channel, grpc.secure_channel)

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        timeout: float = 60.0,
        max_message_mb: int = 64,
        auth_token: str = "",
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        connect_timeout: float = 10.0,
        retry: dict | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        """`timeout` bounds each unary call and is the default idle timeout of streams;
        `connect_timeout` bounds the first connection and `ready_timeout` the wait after it
        until the server is ready (`wait_ready`). `tls_ca` turns on TLS
        (the CA that signed the server); `tls_cert`/`tls_key` add a client certificate for
        mTLS. `auth_token` is sent as `authorization: Bearer ...`. `retry` replaces the unary
        retry policy (UNARY_RETRY)."""
        self.target = target
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ready_timeout = ready_timeout
        self.server_answered = False  # a server has answered on this channel at least once
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        options = channel_options(max_message_mb, retry)
        creds = credentials(tls_ca, tls_cert, tls_key)
        insecure, secure = type(self)._channels
        if creds is not None:
            self._channel = secure(target, creds, options=options)
        else:
            self._channel = insecure(target, options=options)
        self._secure = creds is not None
        self._stub = pb_grpc.ImageSimilarityStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _ready_bounds(self, timeout: float | None) -> tuple[float, float]:
        """(connect wait, ready wait) of `wait_ready`: `timeout` bounds both together when
        given, else `connect_timeout` and `ready_timeout`."""
        if timeout is None:
            return self.connect_timeout, self.ready_timeout
        return timeout, timeout


def is_serving(resp: health_pb2.HealthCheckResponse | None) -> bool:
    """Whether a health answer says ready (None: no health service; see health_answer)."""
    return resp is None or resp.status == SERVING


def health_answer(err: grpc.RpcError) -> None:
    """The health answer of a server without gRPC Health for imgsim (UNIMPLEMENTED, e.g. a
    proxy that routes only the imgsim service; NOT_FOUND, a service name it does not know):
    None, taken as ready, since nothing better can be known. Other errors are raised."""
    if err.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
        return None
    raise ImgsimError.from_rpc(err) from None


def still_not_ready(target: str, waited: float, reason: str) -> ImgsimError:
    """The error of a server that answers but did not become ready within `waited`."""
    return ImgsimError(
        grpc.StatusCode.UNAVAILABLE,
        f"the imgsim server at {target} answers but was not ready after {waited:g}s "
        f"(--ready-timeout): {reason}",
    )


def failed_to_prepare(target: str, reason: str) -> ImgsimError:
    return ImgsimError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the imgsim server at {target} cannot serve: {reason}",
    )


def not_ready(target: str, timeout: float, secure: bool) -> ImgsimError:
    """The error of a channel that did not connect within `timeout`."""
    return ImgsimError(
        grpc.StatusCode.UNAVAILABLE,
        f"no imgsim server answered at {target} within {timeout:g}s "
        f"({'TLS' if secure else 'plaintext'} gRPC, connection retried with "
        "backoff meanwhile). Check the address (--server or $IMGSIM_SERVER), that "
        "imgsim-server is running there, and TLS settings",
    )


def idle_error(target: str, idle_s: float) -> ImgsimError:
    return ImgsimError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"no result from {target} for {idle_s:g}s; stream cancelled",
    )


def target_addresses(target: str) -> int:
    """How many backends a gRPC target names: the entries of an `ipv4:`/`ipv6:` list, the
    addresses a DNS name resolves to (best effort), else 1."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return max(1, len([a for a in rest.split(",") if a]))
    if (sep and scheme == "unix") or target.startswith("unix"):
        return 1
    host_port = target.split("///", 1)[1] if target.startswith("dns:") else target
    host, _, port = host_port.rpartition(":")
    host = host.strip("[]")
    if not host or host.replace(".", "").isdigit():
        return 1
    try:
        infos = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return 1
    return max(1, len({info[4][0] for info in infos}))
