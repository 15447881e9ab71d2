"""A context-managed gRPC client for imgsim.v1.ImageSimilarity.

Every call has a timeout; grpc.RpcError becomes ImgsimError with the status code kept. Unary
calls are retried on UNAVAILABLE by gRPC itself (the channel's service config `retryPolicy`);
streams are resumed by `scoring.score_pairs`, which resends only the unanswered pairs.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

_CODES_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}

_SERVICE = "imgsim.v1.ImageSimilarity"
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


def service_config(retry: dict | None = None) -> str:
    """The channel's service-config JSON: round_robin over every address the target resolves
    to (one stream stays on one backend; calls and new streams rotate), and the unary retry
    policy for Compare, ListModels and GetStats."""
    names = [{"service": _SERVICE, "method": m} for m in ("Compare", "ListModels", "GetStats")]
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": names, "retryPolicy": retry or UNARY_RETRY}],
        }
    )


class ImgsimError(Exception):
    """A failed call, with the gRPC status code that the server (or channel) gave."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> ImgsimError:
        return cls(err.code(), err.details() or "")


def _image(data: bytes | None, ref: str, image_id: str) -> pb.Image:
    """An Image message: a ref to an earlier image of the stream, or bytes (with an id)."""
    return pb.Image(ref=ref) if ref else pb.Image(data=data or b"", id=image_id)


def _error(resp) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) of a response's per-item error, or None when it succeeded."""
    if not resp.HasField("error"):
        return None
    return _CODES_BY_VALUE.get(resp.error.code, grpc.StatusCode.UNKNOWN), resp.error.message


@dataclass(frozen=True)
class PairRequest:
    """One pair to score. Each image is bytes, or (in a stream) a ref to an earlier image id.

    `id_a`/`id_b` name bytes so that later pairs can send `ref_a`/`ref_b` instead.
    """

    pair_id: str
    data_a: bytes | None = None
    data_b: bytes | None = None
    ref_a: str = ""
    ref_b: str = ""
    id_a: str = ""
    id_b: str = ""
    model: str = ""

    def to_proto(self) -> pb.CompareRequest:
        return pb.CompareRequest(
            pair_id=self.pair_id,
            model=self.model,
            image_a=_image(self.data_a, self.ref_a, self.id_a),
            image_b=_image(self.data_b, self.ref_b, self.id_b),
        )


@dataclass(frozen=True)
class PairResult:
    pair_id: str
    score: float | None
    model: str = ""
    error_code: grpc.StatusCode | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @classmethod
    def from_proto(cls, resp: pb.CompareResponse) -> PairResult:
        if (error := _error(resp)) is not None:
            return cls(resp.pair_id, None, resp.model, *error)
        return cls(resp.pair_id, resp.score, resp.model)


@dataclass(frozen=True)
class ImageRequest:
    """One image to embed: bytes, or (in a stream) a ref to an earlier image's id."""

    image_id: str
    data: bytes | None = None
    ref: str = ""
    id: str = ""
    model: str = ""

    def to_proto(self) -> pb.EmbedRequest:
        image = _image(self.data, self.ref, self.id)
        return pb.EmbedRequest(image_id=self.image_id, image=image, model=self.model)


@dataclass(frozen=True)
class ImageResult:
    """One image's embedding (a list of floats: the base install has no numpy), or its error."""

    image_id: str
    vector: list[float] | None
    model: str = ""
    similarity: str = ""
    error_code: grpc.StatusCode | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @classmethod
    def from_proto(cls, resp: pb.EmbedResponse) -> ImageResult:
        if (error := _error(resp)) is not None:
            return cls(resp.image_id, None, resp.model, "", *error)
        return cls(resp.image_id, list(resp.vector), resp.model, resp.similarity)


class _Watchdog:
    """Cancels a streaming call when no message arrives for `idle_s` seconds, or when the
    `stop` event is set (another stream of the same run failed, or the run was interrupted)."""

    def __init__(self, call: grpc.Call, idle_s: float | None, stop: threading.Event | None) -> None:
        self.call = call
        self.idle_s = idle_s
        self.stop_event = stop
        self.fired = False
        self._last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="imgsim-watchdog", daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        poll = min(1.0, self.idle_s / 4) if self.idle_s else 0.2
        while not self._done.wait(poll):
            if self.stop_event is not None and self.stop_event.is_set():
                self.call.cancel()
                return
            if self.idle_s and time.monotonic() - self._last > self.idle_s:
                self.fired = True
                self.call.cancel()
                return


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


class ImgsimClient:
    """Client for an imgsim server. Use as a context manager to close the channel."""

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
    ) -> None:
        """`timeout` bounds each unary call, `connect_timeout` the first connection
        (`wait_ready`). `tls_ca` turns on TLS (the CA that signed the server);
        `tls_cert`/`tls_key` add a client certificate for mTLS. `auth_token` is sent as
        `authorization: Bearer ...`. `retry` replaces the unary retry policy (UNARY_RETRY)."""
        self.target = target
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.server_answered = False  # a server has answered on this channel at least once
        self._metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        max_bytes = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", service_config(retry)),
        ]
        if tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls_ca.read_bytes() if tls_ca else None,
                private_key=tls_key.read_bytes() if tls_key else None,
                certificate_chain=tls_cert.read_bytes() if tls_cert else None,
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._secure = bool(tls_ca or tls_cert)
        self._stub = pb_grpc.ImageSimilarityStub(self._channel)

    def __enter__(self) -> ImgsimClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel connects; ImgsimError(UNAVAILABLE) after `timeout`
        (default: `connect_timeout`), naming the address and what was tried."""
        timeout = timeout or self.connect_timeout
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ImgsimError(
                grpc.StatusCode.UNAVAILABLE,
                f"no imgsim server answered at {self.target} within {timeout:g}s "
                f"({'TLS' if self._secure else 'plaintext'} gRPC, connection retried with "
                "backoff meanwhile). Check the address (--server or $IMGSIM_SERVER), that "
                "imgsim-server is running there, and TLS settings",
            ) from None
        self.server_answered = True

    def warm_up(self, timeout: float | None = None) -> None:
        """Connect before streams open, so that round_robin can place them on every backend
        of a multi-address target (streams opened on a cold channel can all land on the first
        backend, grpc issue 20226): wait for the channel, then make one cheap call per
        backend, which gives the other subchannels time to connect."""
        self.wait_ready(timeout)
        for _ in range(target_addresses(self.target)):
            self.list_models()

    def compare(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> float:
        """Score one pair with the unary Compare call."""
        return self.compare_pair(image_a, image_b, model, timeout)[0]

    def compare_pair(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> tuple[float, str, str]:
        """Score one pair with the unary Compare call: (score, the model that scored it, the
        verdict of the model's calibrated thresholds, "" if it has none)."""
        req = PairRequest("", image_a, image_b, model=model).to_proto()
        try:
            resp = self._stub.Compare(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None
        self.server_answered = True
        return resp.score, resp.model, resp.verdict

    def compare_stream(
        self,
        pairs: Iterable[PairRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[PairResult]:
        """Stream pairs; yields one result per pair as the server computes them (any order).

        `timeout` bounds the whole stream (default: none, since streams may be long); the
        server stops working for it when it passes. `idle_timeout` cancels the stream when no
        result arrives for that long. Both end in ImgsimError(DEADLINE_EXCEEDED). Setting `stop`
        cancels the call (ImgsimError(CANCELLED)), as does leaving the loop early.
        """
        call = self._stub.CompareStream
        for resp in self._run_stream(call, pairs, timeout, idle_timeout, stop):
            yield PairResult.from_proto(resp)

    def embed_stream(
        self,
        images: Iterable[ImageRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ImageResult]:
        """Stream images to Embed; yields one result per image as it is computed (any order),
        with the same timeouts and cancellation as `compare_stream`."""
        for resp in self._run_stream(self._stub.Embed, images, timeout, idle_timeout, stop):
            yield ImageResult.from_proto(resp)

    def _run_stream(
        self,
        method,
        items: Iterable,
        timeout: float | None,
        idle_timeout: float | None,
        stop: threading.Event | None,
    ) -> Iterator:
        """Run one bidirectional call over `items` (each with `to_proto`), yielding responses;
        the watchdog, error conversion and cancellation shared by every stream."""
        requests = (item.to_proto() for item in items)
        call = method(requests, timeout=timeout, metadata=self._metadata)
        watchdog = _Watchdog(call, idle_timeout, stop) if idle_timeout or stop else None
        try:
            for resp in call:
                if watchdog:
                    watchdog.touch()
                self.server_answered = True
                yield resp
        except grpc.RpcError as err:
            if watchdog and watchdog.fired:
                raise ImgsimError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no result from {self.target} for {idle_timeout:g}s; stream cancelled",
                ) from None
            raise ImgsimError.from_rpc(err) from None
        finally:
            if watchdog:
                watchdog.stop()
            call.cancel()  # no-op once the call has ended; frees the server if we left early

    def resolve_model(self, model: str) -> str:
        """The model a request naming `model` is served by ('' = the server's default)."""
        return model or self.list_models().default_model

    def list_models(self) -> pb.ListModelsResponse:
        """The server's models, its default, and whether each can load."""
        try:
            return self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None

    def stats(self) -> pb.GetStatsResponse:
        """Batching, cache and pair counters since the server started."""
        try:
            return self._stub.GetStats(
                pb.GetStatsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None


@dataclass(frozen=True)
class ClientConfig:
    """How to reach a server: target, timeouts and credentials. Picklable, so that a Dask
    driver can send it to its workers, which connect with it."""

    target: str = "127.0.0.1:50051"
    timeout: float = 60.0
    connect_timeout: float = 10.0
    auth_token: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def connect(self) -> ImgsimClient:
        """A client whose channel is ready; ImgsimError(UNAVAILABLE) when no server answers
        within `connect_timeout` (the channel is closed then)."""
        client = ImgsimClient(
            self.target,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            auth_token=self.auth_token,
            tls_ca=self.tls_ca,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
        )
        try:
            client.wait_ready()
        except BaseException:
            client.close()
            raise
        return client
