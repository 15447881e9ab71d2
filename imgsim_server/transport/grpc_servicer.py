"""The gRPC servicer (asyncio): converts protobuf to the dataplane's arguments, awaits one of
its verbs, and converts the typed result back. Nothing is computed here.

Streams add transport state only: the send-once image table (`stream_protocol`), a bounded
window of unanswered items, and answers matched to requests by id. An admitted item's future
(the dataplane's threads resolve it) becomes a queue item with `call_soon_threadsafe`; an idle
stream is a suspended coroutine, not a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import asdict
from functools import partial
from operator import attrgetter

import grpc
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_server.core.dataplane import OFFLOAD_BYTES, CallToken, Dataplane, failed
from imgsim_server.core.engines import bounded_name
from imgsim_server.core.types import Embedding, PairScore
from imgsim_server.errors import InvalidRequestError
from imgsim_server.memory import Charge
from imgsim_server.transport.grpc_interceptors import status_for
from imgsim_server.transport.stream_protocol import ImageSpec, StreamSession

log = logging.getLogger(__name__)

_DONE = object()  # the reader has read the last request
_STOPPING = object()  # the server is stopping: end the stream now
# Copies of a request's image bytes in memory while it is handled: gRPC's wire buffer, the
# parsed message and the bytes taken from it. (Not ByteSize(): upb serializes the whole message
# to compute it, on the event loop.)
MESSAGE_COPIES = 3
READ_PAUSE_S = 2.0  # longest wait for memory before the next large message is read anyway


# Streaming methods whose requests reach the servicer as raw bytes (the server's interceptor
# sets their deserializer to None): a message is sized and charged to the memory budget before
# it is parsed, so a large one that does not fit is refused unparsed. Parsing 50 MB with upb,
# and taking the bytes out, holds the GIL on the event loop for tens of milliseconds.
RAW_STREAM_METHODS = (
    "/imgsim.v1.ImageSimilarity/CompareStream",
    "/imgsim.v1.ImageSimilarity/Embed",
)


def first_string_field(raw: bytes) -> str:
    """Field 1 of a serialized message (`pair_id` of CompareRequest, `image_id` of
    EmbedRequest), read from the protobuf wire format without parsing the rest, so that a
    refused request is answered under its id. "" if it has none or the bytes are not a message.
    """
    pos, end = 0, len(raw)
    try:
        while pos < end:
            tag, pos = _varint(raw, pos)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _, pos = _varint(raw, pos)
            elif wire == 2:
                size, pos = _varint(raw, pos)
                if field == 1:
                    return raw[pos : pos + size].decode("utf-8", "replace")
                pos += size
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                return ""
    except IndexError:
        pass
    return ""


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _size(spec: ImageSpec) -> int:
    return len(spec.data) if spec.data is not None else 0


def _spec(image: pb.Image) -> ImageSpec:
    source = image.WhichOneof("source")
    return ImageSpec(
        data=image.data if source == "data" else None,
        ref=image.ref if source == "ref" else "",
        id=image.id,
    )


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left of the call's deadline; None when it has none (gRPC reports a huge value)."""
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e7 else None


def _token(context: grpc.aio.ServicerContext) -> CallToken:
    """A token that is cancelled when the call ends or is cancelled, or its deadline passes."""
    token = CallToken(_timeout(context))
    context.add_done_callback(lambda _call: token.cancel())
    return token


class StreamSlots:
    """The project's own admission for streaming calls: at most `limit` at once. Control calls
    (health, ListModels, GetStats) and unary Compare never take a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # touched only on the event loop

    def try_take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def give_back(self) -> None:
        self.active -= 1


class ImageSimilarityServicer(pb_grpc.ImageSimilarityServicer):
    """Thin asyncio adapter over the Dataplane."""

    def __init__(
        self,
        core: Dataplane,
        max_stream_inflight: int = 256,
        max_streams: int = 64,
        stream_idle_timeout: float | None = 300.0,
        on_pair: Callable[[str], None] | None = None,
    ) -> None:
        """`on_pair` sees the status (code name) of every pair answered inside a stream."""
        self.core = core
        self.max_stream_inflight = max_stream_inflight
        self.slots = StreamSlots(max_streams)
        self.stream_idle_timeout = stream_idle_timeout
        self.on_pair = on_pair
        self._streams: set[asyncio.Queue] = set()  # the answer queues of open streams

    def stopping(self) -> None:
        """The grace period is ending: open streams end with UNAVAILABLE (resumable) now,
        rather than be cancelled by gRPC, which logs a traceback for each (on the loop)."""
        for q in self._streams:
            q.put_nowait(_STOPPING)

    async def Compare(self, request: pb.CompareRequest, context: grpc.aio.ServicerContext):
        a, b = _spec(request.image_a), _spec(request.image_b)
        if a.ref or b.ref:
            raise InvalidRequestError("image references (ref) work only inside CompareStream")
        charge = Charge(self.core.budget)
        charge.add(MESSAGE_COPIES * (_size(a) + _size(b)), "this request")
        session = StreamSession()
        try:
            image_a, image_b = session.resolve(a, "image_a"), session.resolve(b, "image_b")
            pair = await self.core.compare(
                image_a, image_b, request.model, _timeout(context), verify=request.verify
            )
        finally:
            charge.release()
        return _compare_response(request.pair_id, pair)

    async def CompareStream(
        self, request_iterator: AsyncIterator[pb.CompareRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CompareResponse]:
        async def submit(req: pb.CompareRequest, session: StreamSession, token: CallToken):
            # Images first: their ids must be recorded even if this pair fails.
            a = session.resolve(_spec(req.image_a), "image_a")
            b = session.resolve(_spec(req.image_b), "image_b")
            return await self.core.admit_pair(a, b, req.model, token)

        respond, parse = self._pair_response, pb.CompareRequest.FromString
        ident = attrgetter("pair_id")
        async for resp in self._stream(request_iterator, context, submit, respond, ident, parse):
            yield resp

    async def Embed(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        async def submit(req: pb.EmbedRequest, session: StreamSession, token: CallToken):
            data = session.resolve(_spec(req.image), "image")
            return await self.core.admit_image(data, req.model, token)

        respond, parse = self._image_response, pb.EmbedRequest.FromString
        ident = attrgetter("image_id")
        async for resp in self._stream(request_iterator, context, submit, respond, ident, parse):
            yield resp

    async def _stream(
        self, request_iterator, context: grpc.aio.ServicerContext, submit, respond, ident, parse
    ):
        """The stream protocol shared by CompareStream and Embed: a stream slot, a reader task
        that sizes each request (raw bytes: RAW_STREAM_METHODS), charges it to the memory
        budget, parses it (`parse`), resolves send-once images and submits it to the core, and
        answers yielded as they settle (matched by `ident`), with a bounded window of
        unanswered items."""
        if not self.slots.try_take():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this server already serves {self.slots.limit} streams "
                "(--max-concurrent-streams); retry later or use another replica",
            )
        loop = asyncio.get_running_loop()
        token = _token(context)
        session = StreamSession(budget=self.core.budget)
        settled: asyncio.Queue = asyncio.Queue()
        self._streams.add(settled)
        # At most this many items of this stream are read but not yet answered to gRPC; past
        # that the reader stops reading, and gRPC flow control pushes back on the client.
        window = asyncio.Semaphore(self.max_stream_inflight)
        state = {"outstanding": 0, "last_request": time.monotonic()}

        def settle(key: str, model: str, charge: Charge, fut: Future) -> None:
            charge.release()  # the request's bytes are no longer needed, nor kept
            loop.call_soon_threadsafe(settled.put_nowait, (key, model, fut))

        async def feed() -> None:
            try:
                async for req in request_iterator:
                    state["last_request"] = time.monotonic()
                    await window.acquire()
                    state["outstanding"] += 1
                    if not isinstance(req, bytes):  # served without the raw interceptor
                        req = req.SerializeToString()
                    model, key, size = "", first_string_field(req), len(req)
                    charge = Charge(self.core.budget)
                    try:
                        charge.add(MESSAGE_COPIES * size, "this request")
                        req = parse(req)  # only once it fits in the memory budget
                        key, model = ident(req), bounded_name(req.model)
                        fut = await submit(req, session, token)
                    except Exception as exc:
                        fut = failed(exc)
                    # Only the id is kept for the answer: a refused 50 MB request must not
                    # stay in memory until its answer is read.
                    fut.add_done_callback(partial(settle, key, model, charge))
                    # Refused or not: a stream that sends large messages waits for room.
                    large = size >= OFFLOAD_BYTES
                    del req
                    if large:  # its next message may be as large: read it when there is room
                        await self._memory_room()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the client went away or sent garbage
                log.warning("stream reader stopped: %s", exc)
            finally:
                settled.put_nowait(_DONE)

        reader = asyncio.create_task(feed())
        reading = True
        try:
            while reading or state["outstanding"]:
                try:
                    item = await asyncio.wait_for(settled.get(), self._poll_s())
                except asyncio.TimeoutError:
                    if self._idle(state):
                        await context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"stream idle for {self.stream_idle_timeout:g}s "
                            "(--stream-idle-timeout); closed",
                        )
                    continue
                if item is _DONE:
                    reading = False
                    continue
                if item is _STOPPING:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE,
                        "the server is shutting down; resume the unanswered items elsewhere",
                    )
                state["outstanding"] -= 1
                yield respond(*item)
                # Only now, with the answer handed to gRPC, may another item be read: a client
                # that stops reading stops the server reading it.
                window.release()
        finally:
            token.cancel()  # queued work of this stream is no longer wanted
            reader.cancel()
            session.close()
            self._streams.discard(settled)
            self.slots.give_back()

    async def _memory_room(self) -> None:
        """Wait (at most READ_PAUSE_S) until a quarter of the memory budget or more is free.
        gRPC receives a message whole, in buffers the budget cannot see, as soon as it is
        read; not reading is what stops the next large one arriving (flow control)."""
        budget = self.core.budget
        deadline = time.monotonic() + READ_PAUSE_S
        while budget.held > budget.limit // 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _poll_s(self) -> float | None:
        return None if not self.stream_idle_timeout else min(5.0, self.stream_idle_timeout / 2)

    def _idle(self, state: dict) -> bool:
        """Nothing received for the idle timeout and nothing left to answer."""
        quiet = time.monotonic() - state["last_request"]
        return not state["outstanding"] and quiet >= (self.stream_idle_timeout or float("inf"))

    def _pair_response(self, pair_id: str, model: str, fut: Future) -> pb.CompareResponse:
        exc = fut.exception()
        if exc is not None:
            code, message = status_for(exc)
            error = pb.PairError(code=code.value[0], message=message)
            resp = pb.CompareResponse(pair_id=pair_id, model=model, error=error)
        else:
            resp, code = _compare_response(pair_id, fut.result()), grpc.StatusCode.OK
        if self.on_pair is not None:
            self.on_pair(code.name)
        return resp

    @staticmethod
    def _image_response(image_id: str, model: str, fut: Future) -> pb.EmbedResponse:
        exc = fut.exception()
        if exc is not None:
            code, message = status_for(exc)
            error = pb.PairError(code=code.value[0], message=message)
            return pb.EmbedResponse(image_id=image_id, model=model, error=error)
        emb: Embedding = fut.result()
        return pb.EmbedResponse(
            image_id=image_id,
            model=emb.model,
            vector=emb.vector.tolist(),
            dimension=emb.dimension,
            similarity=emb.similarity,
            faces=[
                pb.Face(box=pb.FaceBox(**asdict(f.box)), vector=f.vector.tolist())
                for f in emb.faces
            ],
        )

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext):
        listing = await self.core.list_models()
        models = []
        for info in listing.models:
            fields = info.to_dict()
            fields["thresholds"] = [pb.Threshold(**t) for t in fields["thresholds"]]
            models.append(pb.ModelInfo(**fields))
        return pb.ListModelsResponse(
            models=models,
            default_model=listing.default_model,
            collection_model=listing.collection_model,
        )

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext):
        stats = await self.core.stats()
        models = [
            pb.ModelStats(model=name, **{f: getattr(s, f) for f in MODEL_STATS})
            for name, s in stats.batching.items()
        ]
        cache = {f"cache_{name}": value for name, value in asdict(stats.cache).items()}
        counters = ("pairs_scored", "pairs_failed", "queue_depth", "images_cancelled")
        totals = {name: getattr(stats, name) for name in counters}
        return pb.GetStatsResponse(models=models, **cache, **totals)


# ModelStats' fields, each a BatchStats attribute of the same name.
MODEL_STATS = tuple(f.name for f in pb.ModelStats.DESCRIPTOR.fields if f.name != "model")


def _compare_response(pair_id: str, pair: PairScore) -> pb.CompareResponse:
    resp = pb.CompareResponse(
        pair_id=pair_id, score=pair.score, model=pair.model, verdict=pair.verdict
    )
    if pair.inliers is not None:
        resp.inliers, resp.verified = pair.inliers, bool(pair.verified)
        resp.verification = pair.verification
    if pair.face_a is not None:
        resp.face_a.CopyFrom(pb.FaceBox(**asdict(pair.face_a)))
        resp.face_b.CopyFrom(pb.FaceBox(**asdict(pair.face_b)))
    return resp
