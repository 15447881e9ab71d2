"""The gRPC servicer: converts protobuf to and from the core's types, nothing more."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import grpc
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_server.core import CallToken, ImageSpec, SimilarityCore, StreamSession
from imgsim_server.errors import InvalidRequestError
from imgsim_server.status import status_for

log = logging.getLogger(__name__)


def _spec(image: pb.Image) -> ImageSpec:
    source = image.WhichOneof("source")
    return ImageSpec(
        data=image.data if source == "data" else None,
        ref=image.ref if source == "ref" else "",
        id=image.id,
    )


def _token(context: grpc.ServicerContext) -> CallToken:
    """A token that is cancelled when the call ends or is cancelled, or its deadline passes."""
    remaining = context.time_remaining()
    token = CallToken(remaining if remaining is not None and remaining < 1e7 else None)
    context.add_callback(token.cancel)
    return token


class ImageSimilarityServicer(pb_grpc.ImageSimilarityServicer):
    """Thin adapter over SimilarityCore."""

    def __init__(
        self,
        core: SimilarityCore,
        max_stream_inflight: int = 256,
        on_pair: Callable[[grpc.StatusCode], None] | None = None,
    ) -> None:
        """`on_pair` sees the status of every pair answered inside a stream (for metrics)."""
        self.core = core
        self.max_stream_inflight = max_stream_inflight
        self.on_pair = on_pair

    def Compare(self, request: pb.CompareRequest, context: grpc.ServicerContext):
        eng = self.core.engine(request.model)
        a, b = _spec(request.image_a), _spec(request.image_b)
        if a.ref or b.ref:
            raise InvalidRequestError("image references (ref) work only inside CompareStream")
        data = StreamSession()
        token = _token(context)
        score = self.core.compare(
            eng,
            data.resolve(a, "image_a"),
            data.resolve(b, "image_b"),
            timeout=context.time_remaining(),
            token=token,
        )
        return pb.CompareResponse(pair_id=request.pair_id, score=score, model=eng.cfg.name)

    def CompareStream(
        self, request_iterator: Iterator[pb.CompareRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CompareResponse]:
        out: queue.Queue = queue.Queue()
        session = StreamSession()
        token = _token(context)
        # At most this many pairs of this stream are read but not yet answered to gRPC; past
        # that the reader stops reading, and gRPC flow control pushes back on the client.
        window = threading.BoundedSemaphore(self.max_stream_inflight)
        done_reading = object()
        submitted = [0]

        def reply(pair_id: str, model: str, fut: Future) -> None:
            exc = fut.exception()
            if exc is not None:
                code, message = status_for(exc)
                resp = pb.CompareResponse(
                    pair_id=pair_id,
                    model=model,
                    error=pb.PairError(code=code.value[0], message=message),
                )
            else:
                resp = pb.CompareResponse(pair_id=pair_id, score=fut.result(), model=model)
                code = grpc.StatusCode.OK
            if self.on_pair is not None:
                self.on_pair(code)
            out.put(resp)

        def read() -> None:
            try:
                for req in request_iterator:
                    while not window.acquire(timeout=0.5):
                        if token.cancelled:
                            return
                    if token.cancelled:  # the client went away: read no more
                        window.release()
                        return
                    submitted[0] += 1
                    model = req.model
                    try:
                        # Images first: their ids must be recorded even if this pair fails.
                        a = session.resolve(_spec(req.image_a), "image_a")
                        b = session.resolve(_spec(req.image_b), "image_b")
                        eng = self.core.engine(req.model)  # a dict lookup once loaded
                        model = eng.cfg.name
                        fut = self.core.compare_async(eng, a, b, block=True, token=token)
                    except Exception as exc:
                        fut = Future()
                        fut.set_exception(exc)
                    fut.add_done_callback(lambda f, p=req.pair_id, m=model: reply(p, m, f))
            except Exception as exc:  # the client went away or sent garbage
                if context.is_active():
                    log.warning("stream reader stopped: %s", exc)
            finally:
                out.put(done_reading)

        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        sent, reading = 0, True
        while reading or sent < submitted[0]:
            try:
                item = out.get(timeout=0.5)
            except queue.Empty:
                if not context.is_active():  # cancelled or expired: stop; queued work is dropped
                    token.cancel()
                    return
                continue
            if item is done_reading:
                reading = False
                continue
            sent += 1
            yield item
            # Only now, with the answer handed to gRPC, may another pair be read: a client that
            # stops reading stops the server reading it, so nothing piles up in memory.
            window.release()

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext):
        models = [
            pb.ModelInfo(
                name=m.cfg.name,
                kind=m.cfg.kind,
                embedding_dim=m.cfg.embedding_dim,
                input_size=m.cfg.input_size,
                weights_source=(f"{m.weights_path} ({m.source})" if m.weights_path else ""),
                weights_available=m.weights_available,
                loaded=m.loaded,
                similarity=m.cfg.similarity,
                description=m.cfg.description,
            )
            for m in self.core.models()
        ]
        return pb.ListModelsResponse(models=models, default_model=self.core.cfg.default_model)

    def GetStats(self, request: pb.GetStatsRequest, context: grpc.ServicerContext):
        models = [
            pb.ModelStats(
                model=name,
                batches=s.batches,
                images_embedded=s.items,
                mean_batch_size=s.mean_batch_size,
                max_batch_size_seen=s.max_batch_seen,
                mean_queue_ms=1000 * s.queue_s / s.items if s.items else 0.0,
                mean_inference_ms=1000 * s.inference_s / s.batches if s.batches else 0.0,
            )
            for name, s in self.core.batch_stats().items()
        ]
        cache = self.core.cache
        hits, misses = self.core.cache_counts()
        return pb.GetStatsResponse(
            models=models,
            cache_hits=hits,
            cache_misses=misses,
            cache_entries=len(cache),
            cache_bytes=cache.nbytes,
            pairs_scored=self.core.pairs_scored,
            pairs_failed=self.core.pairs_failed,
            queue_depth=self.core.queue_depth(),
            images_cancelled=self.core.images_cancelled,
        )
