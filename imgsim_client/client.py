"""A context-managed gRPC client for imgsim.v1.ImageSimilarity (`aio.AsyncImgsimClient` is its
asyncio twin, with the same arguments and methods).

Every call has a timeout: unary calls `timeout` (per call, or the client's), streams an idle
timeout (no result, and nothing sent, for that long) on top of an optional whole-stream
deadline. grpc.RpcError becomes ImgsimError with the status code kept. Unary calls are retried
on UNAVAILABLE by gRPC itself (the channel's service config `retryPolicy`); streams are resumed
by `_resume.resumable`, which resends only the unanswered items. Results are typed
(`types.py`), never protobuf.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from imgsim.v1 import similarity_pb2 as pb

from imgsim_client import _convert
from imgsim_client._channel import (
    HEALTH_REQUEST,
    READY_POLL_S,
    READY_TIMEOUT,
    ClientBase,
    ImgsimError,
    failed_to_prepare,
    health_answer,
    idle_error,
    is_serving,
    not_ready,
    still_not_ready,
    target_addresses,
)
from imgsim_client.types import (
    CompareResult,
    FaceMatch,
    ImageRequest,
    ImageResult,
    ModelList,
    PairRequest,
    PairResult,
    Stats,
    Verified,
)


class _Watch:
    """One stream under the watchdog: when it last made progress, and whether it was cut."""

    __slots__ = ("call", "fired", "idle_s", "last", "stop")

    def __init__(self, call: grpc.Call, idle_s: float, stop: threading.Event | None) -> None:
        self.call, self.idle_s, self.stop = call, idle_s, stop
        self.last = time.monotonic()
        self.fired = False

    def touch(self) -> None:
        self.last = time.monotonic()


class _Watchdog:
    """One thread per client that cancels its streams when they make no progress for their
    idle timeout, or when their `stop` event is set (another stream of the same run failed,
    or the run was interrupted). It runs only while some stream is watched."""

    POLL_S = 0.2

    def __init__(self) -> None:
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, call: grpc.Call, idle_s: float, stop: threading.Event | None) -> _Watch:
        w = _Watch(call, idle_s, stop)
        with self._lock:
            self._watches.add(w)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="imgsim-watchdog", daemon=True
                )
                self._thread.start()
        return w

    def forget(self, w: _Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL_S)
            with self._lock:
                if not self._watches:
                    self._thread = None
                    return
                watches = list(self._watches)
            now = time.monotonic()
            for w in watches:
                if w.stop is not None and w.stop.is_set():
                    w.call.cancel()
                elif now - w.last > w.idle_s:
                    w.fired = True
                    w.call.cancel()


class ImgsimClient(ClientBase):
    """Client for an imgsim server. Use as a context manager to close the channel. The
    constructor's arguments are `_channel.ClientBase`'s: target, timeout, max_message_mb,
    auth_token, tls_ca, tls_cert, tls_key, connect_timeout, retry."""

    @functools.cached_property
    def _watchdog(self) -> _Watchdog:
        return _Watchdog()

    def __enter__(self) -> ImgsimClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until the channel connects, ready or not; ImgsimError(UNAVAILABLE) after
        `timeout` (default: `connect_timeout`), naming the address and what was tried."""
        timeout = timeout or self.connect_timeout
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise not_ready(self.target, timeout, self._secure) from None
        self.server_answered = True

    def wait_ready(
        self, timeout: float | None = None, on_status: Callable[[str], None] | None = None
    ) -> None:
        """Block until the server is ready to answer: the channel connects (within
        `connect_timeout`), then gRPC Health says SERVING (within `ready_timeout`); `timeout`
        bounds both together instead. Meanwhile `on_status` gets each new reason ("preparing
        efficientnet-lite2-260: exporting its ONNX graph").

        ImgsimError: UNAVAILABLE when nothing answers or the server never gets ready (the
        message gives its reason), FAILED_PRECONDITION when its default model failed.
        """
        connect_s, ready_s = self._ready_bounds(timeout)
        started = time.monotonic()
        self.wait_connected(connect_s)
        said = ""
        while True:
            try:
                resp = self._health.Check(
                    HEALTH_REQUEST, timeout=self.timeout, metadata=self._metadata
                )
            except grpc.RpcError as err:
                resp = health_answer(err)
            if is_serving(resp):
                return
            reason, final = self.list_models().not_ready_reason()
            if final:
                raise failed_to_prepare(self.target, reason)
            if time.monotonic() - started >= ready_s:
                raise still_not_ready(self.target, ready_s, reason)
            if on_status is not None and reason != said:
                on_status(reason)
                said = reason
            time.sleep(READY_POLL_S)

    def warm_up(self, timeout: float | None = None) -> None:
        """Connect before streams open, so that round_robin can place them on every backend
        of a multi-address target (streams opened on a cold channel can all land on the first
        backend, grpc issue 20226): wait for the channel, then make one cheap call per
        backend, which gives the other subchannels time to connect."""
        self.wait_ready(timeout)
        for _ in range(target_addresses(self.target)):
            self.list_models()

    def _unary(self, method: Callable, request, timeout: float | None):
        try:
            resp = method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None
        self.server_answered = True
        return resp

    def compare(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> float:
        """Score one pair with the unary Compare call."""
        return self.compare_pair(image_a, image_b, model, timeout).score

    def compare_pair(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> CompareResult:
        """Score one pair with the unary Compare call: (score, the model that scored it, the
        verdict of the model's calibrated thresholds, "" if it has none)."""
        req = _convert.pair_request(PairRequest("", image_a, image_b, model=model))
        return _convert.compare_result(self._unary(self._stub.Compare, req, timeout))

    def compare_faces(
        self, image_a: bytes, image_b: bytes, model: str = "face", timeout: float | None = None
    ) -> FaceMatch:
        """Score one pair with the face model: its best-matching faces' score, the verdict
        and their boxes. ImgsimError(FAILED_PRECONDITION) names an image without a face."""
        req = _convert.pair_request(PairRequest("", image_a, image_b, model=model))
        return _convert.face_match(self._unary(self._stub.Compare, req, timeout))

    def compare_verified(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> Verified:
        """Score one pair and verify it geometrically on the server (local features and
        RANSAC; the server needs the [verify] extra): score, model, verdict, inliers,
        verified."""
        req = _convert.pair_request(PairRequest("", image_a, image_b, model=model))
        req.verify = True
        return _convert.verified(self._unary(self._stub.Compare, req, timeout))

    def compare_stream(
        self,
        pairs: Iterable[PairRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[PairResult]:
        """Stream pairs; yields one result per pair as the server computes them (any order).

        `idle_timeout` (default: the client's `timeout`) cancels the stream when nothing is
        sent or received for that long; `timeout` bounds the whole stream (default: none,
        since streams may be long); the server stops working for it when it passes. Both end
        in ImgsimError(DEADLINE_EXCEEDED). Setting `stop` cancels the call
        (ImgsimError(CANCELLED)), as does leaving the loop early.
        """
        requests = (_convert.pair_request(p) for p in pairs)
        for resp in self._run_stream(
            self._stub.CompareStream, requests, timeout, idle_timeout, stop
        ):
            yield _convert.pair_result(resp)

    def embed_stream(
        self,
        images: Iterable[ImageRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[ImageResult]:
        """Stream images to Embed; yields one result per image as it is computed (any order),
        with the same timeouts and cancellation as `compare_stream`."""
        requests = (_convert.image_request(i) for i in images)
        for resp in self._run_stream(self._stub.Embed, requests, timeout, idle_timeout, stop):
            yield _convert.image_result(resp)

    def _run_stream(
        self,
        method,
        requests: Iterator,
        timeout: float | None,
        idle_timeout: float | None,
        stop: threading.Event | None,
    ) -> Iterator:
        """Run one bidirectional call, yielding responses; the watchdog, error conversion and
        cancellation shared by every stream."""
        idle_s = idle_timeout or self.timeout
        watch: _Watch | None = None

        def sent() -> Iterator:
            for req in requests:
                if watch is not None:
                    watch.touch()  # progress: a slow producer is not an idle server
                yield req

        call = method(sent(), timeout=timeout, metadata=self._metadata)
        watch = self._watchdog.watch(call, idle_s, stop)
        try:
            for resp in call:
                watch.touch()
                self.server_answered = True
                yield resp
        except grpc.RpcError as err:
            if watch.fired:
                raise idle_error(self.target, idle_s) from None
            raise ImgsimError.from_rpc(err) from None
        finally:
            self._watchdog.forget(watch)
            call.cancel()  # no-op once the call has ended; frees the server if we left early

    def resolve_model(self, model: str, timeout: float | None = None) -> str:
        """The model a request naming `model` is served by ('' = the server's default)."""
        return model or self.list_models(timeout).default_model

    def list_models(self, timeout: float | None = None) -> ModelList:
        """The server's models, its default, and whether each can load."""
        resp = self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return _convert.model_list(resp)

    def stats(self, timeout: float | None = None) -> Stats:
        """Batching, cache and pair counters since the server started."""
        return _convert.stats(self._unary(self._stub.GetStats, pb.GetStatsRequest(), timeout))


@dataclass(frozen=True)
class ClientConfig:
    """How to reach a server: target, timeouts and credentials. Picklable, so that a Dask
    driver can send it to its workers, which connect with it."""

    target: str = "127.0.0.1:50051"
    timeout: float = 60.0
    connect_timeout: float = 10.0
    ready_timeout: float = READY_TIMEOUT
    auth_token: str = ""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def connect(
        self, on_status: Callable[[str], None] | None = None, ready: bool = True
    ) -> ImgsimClient:
        """A client of a ready server (see ImgsimClient.wait_ready, which tells `on_status`
        what it waits for), or with `ready` False of a connected one; ImgsimError when none
        answers within `connect_timeout` or it is not ready within `ready_timeout` (the
        channel is closed then)."""
        client = ImgsimClient(**asdict(self))  # the fields are ImgsimClient's arguments
        try:
            if ready:
                client.wait_ready(on_status=on_status)
            else:
                client.wait_connected()
        except BaseException:
            client.close()
            raise
        return client
