"""`AsyncImgsimClient`: the asyncio twin of `ImgsimClient` (after tritonclient's `grpc.aio`),
with the same constructor arguments, methods and typed results, awaited; `async with` closes
the channel. Every call has a timeout: unary calls `timeout`, streams an idle timeout (nothing
sent or received for that long) on top of an optional whole-stream deadline.

    async with AsyncImgsimClient("127.0.0.1:50051") as client:
        score = await client.compare(a_bytes, b_bytes)
        async for result in client.compare_stream(pairs):
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable

import grpc
from imgsim.v1 import similarity_pb2 as pb

from imgsim_client import _convert, types
from imgsim_client._channel import (
    HEALTH_REQUEST,
    READY_POLL_S,
    ClientBase,
    ImgsimError,
    failed_to_prepare,
    health_answer,
    idle_error,
    is_serving,
    not_ready,
    still_not_ready,
)
from imgsim_client._channel import target_addresses as backends

__all__ = ["AsyncImgsimClient", "ImgsimError"]


class AsyncImgsimClient(ClientBase):
    """Client for an imgsim server on an asyncio event loop (`grpc.aio`); the constructor's
    arguments are ImgsimClient's (`_channel.ClientBase`)."""

    _channels = (grpc.aio.insecure_channel, grpc.aio.secure_channel)

    async def __aenter__(self) -> AsyncImgsimClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the channel connects, ready or not (see ImgsimClient.wait_connected)."""
        timeout = timeout or self.connect_timeout
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise not_ready(self.target, timeout, self._secure) from None
        self.server_answered = True

    async def wait_ready(
        self, timeout: float | None = None, on_status: Callable[[str], None] | None = None
    ) -> None:
        """Wait until the server is ready: connected, then gRPC Health SERVING (see
        ImgsimClient.wait_ready, same bounds and errors)."""
        connect_s, ready_s = self._ready_bounds(timeout)
        started = time.monotonic()
        await self.wait_connected(connect_s)
        said = ""
        while True:
            try:
                resp = await self._health.Check(
                    HEALTH_REQUEST, timeout=self.timeout, metadata=self._metadata
                )
            except grpc.RpcError as err:
                resp = health_answer(err)
            if is_serving(resp):
                return
            reason, final = (await self.list_models()).not_ready_reason()
            if final:
                raise failed_to_prepare(self.target, reason)
            if time.monotonic() - started >= ready_s:
                raise still_not_ready(self.target, ready_s, reason)
            if on_status is not None and reason != said:
                on_status(reason)
                said = reason
            await asyncio.sleep(READY_POLL_S)

    async def warm_up(self, timeout: float | None = None) -> None:
        """Connect, then one cheap call per backend (see ImgsimClient.warm_up)."""
        await self.wait_ready(timeout)
        for _ in range(backends(self.target)):
            await self.list_models()

    async def _unary(self, method, request, timeout: float | None):
        try:
            resp = await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None
        self.server_answered = True
        return resp

    async def compare(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> float:
        """Score one pair with the unary Compare call."""
        return (await self.compare_pair(image_a, image_b, model, timeout)).score

    async def compare_pair(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> types.CompareResult:
        """(score, model, verdict) of one pair, as ImgsimClient.compare_pair."""
        req = _convert.pair_request(types.PairRequest("", image_a, image_b, model=model))
        return _convert.compare_result(await self._unary(self._stub.Compare, req, timeout))

    async def compare_faces(
        self, image_a: bytes, image_b: bytes, model: str = "face", timeout: float | None = None
    ) -> types.FaceMatch:
        """See ImgsimClient.compare_faces."""
        req = _convert.pair_request(types.PairRequest("", image_a, image_b, model=model))
        return _convert.face_match(await self._unary(self._stub.Compare, req, timeout))

    async def compare_verified(
        self, image_a: bytes, image_b: bytes, model: str = "", timeout: float | None = None
    ) -> types.Verified:
        """ImgsimClient.compare_verified, awaited."""
        req = _convert.pair_request(types.PairRequest("", image_a, image_b, model=model))
        req.verify = True
        return _convert.verified(await self._unary(self._stub.Compare, req, timeout))

    async def compare_stream(
        self,
        pairs: Iterable[types.PairRequest] | AsyncIterable[types.PairRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[types.PairResult]:
        """Stream pairs (an iterable or an async iterable); yields one result per pair as the
        server computes them, with ImgsimClient.compare_stream's timeouts. Leaving the loop
        early (or cancelling the task) cancels the call."""
        call = self._stub.CompareStream
        async for resp in self._stream(call, pairs, _convert.pair_request, timeout, idle_timeout):
            yield _convert.pair_result(resp)

    async def embed_stream(
        self,
        images: Iterable[types.ImageRequest] | AsyncIterable[types.ImageRequest],
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[types.ImageResult]:
        """Stream images to Embed; yields one result per image, as compare_stream."""
        call = self._stub.Embed
        async for resp in self._stream(call, images, _convert.image_request, timeout, idle_timeout):
            yield _convert.image_result(resp)

    async def _stream(self, method, items, to_proto, timeout, idle_timeout) -> AsyncIterator:
        idle_s = idle_timeout or self.timeout
        last = [time.monotonic()]

        async def requests():
            if isinstance(items, AsyncIterable):
                async for item in items:
                    last[0] = time.monotonic()
                    yield to_proto(item)
            else:
                for item in items:
                    last[0] = time.monotonic()
                    yield to_proto(item)

        call = method(requests(), timeout=timeout, metadata=self._metadata)
        reading: asyncio.Future | None = None
        try:
            while True:
                # One read at a time, waited for in slices: cancelling a read cancels the call,
                # so a slice that ends with nothing read leaves the read running.
                reading = reading or asyncio.ensure_future(call.read())
                wait = last[0] + idle_s - time.monotonic()
                done, _ = await asyncio.wait({reading}, timeout=max(wait, 0.0))
                if not done:
                    if time.monotonic() - last[0] < idle_s:  # a request went out meanwhile
                        continue
                    raise idle_error(self.target, idle_s)
                resp, reading = reading.result(), None
                if resp is grpc.aio.EOF:
                    return
                last[0] = time.monotonic()
                self.server_answered = True
                yield resp
        except grpc.RpcError as err:
            raise ImgsimError.from_rpc(err) from None
        finally:
            call.cancel()  # no-op once the call has ended
            if reading is not None:
                reading.cancel()

    async def resolve_model(self, model: str, timeout: float | None = None) -> str:
        """The model a request naming `model` is served by ('' = the server's default)."""
        return model or (await self.list_models(timeout)).default_model

    async def list_models(self, timeout: float | None = None) -> types.ModelList:
        """The server's models, its default, and whether each can load."""
        resp = await self._unary(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return _convert.model_list(resp)

    async def stats(self, timeout: float | None = None) -> types.Stats:
        """Batching, cache and pair counters since the server started."""
        resp = await self._unary(self._stub.GetStats, pb.GetStatsRequest(), timeout)
        return _convert.stats(resp)
