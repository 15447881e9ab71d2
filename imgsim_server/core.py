"""The dataplane: embeds images and scores pairs. Knows nothing of gRPC.

Flow of one image: content digest -> embedding cache -> (in-flight dedup) -> admission (bounded)
-> decode + preprocess on the decode pool -> the model's dynamic batcher -> cache.
A pair's score future resolves as soon as both of its embeddings exist.

Every call carries a `CallToken`. An image whose callers have all gone away (cancelled, or past
their deadline) is dropped before decoding and again before the model, and counted in
`images_cancelled`: no model work is spent on abandoned calls.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from imgsim_server.batcher import BatchStats, DynamicBatcher
from imgsim_server.cache import EmbeddingCache
from imgsim_server.embedders import SIMILARITIES, Embedder, EmbedderOptions, ModelCfg
from imgsim_server.embedders import registry as reg
from imgsim_server.errors import CancelledError, InvalidRequestError, OverloadedError
from imgsim_server.images import DecodeLimits, decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreConfig:
    """Settings of the dataplane (built from the server's flags)."""

    default_model: str = "efficientnet-lite0"
    device: str = "cpu"
    backend: str = "auto"  # torch | onnx | auto (onnx on CPU when installed)
    precision: str = "fp32"  # fp32 | int8 (onnx)
    weights: tuple[tuple[str, Path], ...] = ()  # (model, file) overrides
    max_batch_size: int = 32
    preferred_batch_size: int = 0  # 0: the model's own preference (or max_batch_size)
    max_delay_ms: float = 5.0
    queue_size: int = 256  # images admitted at once: decoding, queued or in the model
    cache_mb: float = 256.0
    decode_workers: int = 2
    limits: DecodeLimits = field(default_factory=DecodeLimits)


@dataclass(frozen=True)
class ImageSpec:
    """An image as a request names it: bytes, or a reference to bytes sent earlier."""

    data: bytes | None = None
    ref: str = ""
    id: str = ""


class CallToken:
    """The liveness of one call: cancelled when its caller goes away or its deadline passes."""

    __slots__ = ("_cancelled", "deadline")

    def __init__(self, timeout: float | None = None) -> None:
        self._cancelled = False
        self.deadline = time.monotonic() + timeout if timeout is not None else None

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            self._cancelled = True
        return self._cancelled


class _Pending:
    """One image being embedded, and the calls waiting for it (several, after dedup)."""

    __slots__ = ("future", "key", "tokens")

    def __init__(self, key: tuple[str, bytes], token: CallToken | None) -> None:
        self.key = key
        self.future: Future = Future()
        self.tokens: list[CallToken | None] = [token]

    def wanted(self) -> bool:
        return any(t is None or not t.cancelled for t in self.tokens)


_GONE = "the call was cancelled or its deadline passed"

BatchListener = Callable[[str, int, list[float], float], None]
"""Called after each model batch with (model, batch size, queue waits in s, inference s)."""


@dataclass(frozen=True)
class ModelStatus:
    cfg: ModelCfg
    weights_path: Path | None
    weights_available: bool
    loaded: bool


class _Engine:
    """A loaded embedder with its batcher."""

    def __init__(self, embedder: Embedder, cfg: CoreConfig, on_batch: BatchListener) -> None:
        self.embedder = embedder
        preferred = cfg.preferred_batch_size or embedder.preferred_batch_size()
        self.batch_size = min(cfg.max_batch_size, preferred or cfg.max_batch_size)
        self.batcher = DynamicBatcher(
            embedder.cfg.name,
            embedder.embed,
            self.batch_size,
            cfg.max_delay_ms / 1000.0,
            workers=embedder.concurrency(),
            on_batch=on_batch,
        )


class SimilarityCore:
    """Embeds and compares images with any registry model, batching across all callers."""

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        reg.get_cfg(cfg.default_model)  # fail fast on an unknown default
        self.cache = EmbeddingCache(int(cfg.cache_mb * 1024 * 1024))
        self._engines: dict[str, _Engine] = {}
        self._load_lock = threading.Lock()
        self._inflight: dict[tuple[str, bytes], _Pending] = {}
        self._inflight_lock = threading.Lock()
        self._admission = threading.BoundedSemaphore(cfg.queue_size)
        self._decode_pool = ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="decode")
        self.pairs_scored = 0
        self.pairs_failed = 0
        self.dedup_hits = 0
        self.images_cancelled = 0  # dropped before the model because every caller had gone
        self._counter_lock = threading.Lock()
        self.batch_listeners: list[BatchListener] = []

    # ---- models -----------------------------------------------------------------------------

    def options_for(self, name: str) -> EmbedderOptions:
        weights = dict(self.cfg.weights).get(name)
        return EmbedderOptions(
            device=self.cfg.device,
            weights_file=weights,
            backend=self.cfg.backend,
            precision=self.cfg.precision,
        )

    def resolve(self, name: str) -> ModelCfg:
        """The config for a request's model name ('' means the default)."""
        return reg.get_cfg(name or self.cfg.default_model)

    def models(self) -> list[ModelStatus]:
        out = []
        for mcfg in reg.list_models():
            opts = self.options_for(mcfg.name)
            out.append(
                ModelStatus(
                    mcfg,
                    mcfg.weights_path(opts),
                    mcfg.weights_available(opts),
                    mcfg.name in self._engines,
                )
            )
        return out

    def engine(self, name: str) -> _Engine:
        """The loaded engine for a model, loading it on first use and keeping it."""
        mcfg = self.resolve(name)
        eng = self._engines.get(mcfg.name)
        if eng is not None:
            return eng
        with self._load_lock:
            eng = self._engines.get(mcfg.name)
            if eng is None:
                started = time.perf_counter()
                embedder = reg.create(mcfg.name, self.options_for(mcfg.name))
                eng = _Engine(embedder, self.cfg, self._on_batch)
                self._engines[mcfg.name] = eng
                log.info(
                    "loaded model %s on %s in %.1fs; batches of up to %d",
                    mcfg.name,
                    self.cfg.device,
                    time.perf_counter() - started,
                    eng.batch_size,
                )
        return eng

    # ---- embedding --------------------------------------------------------------------------

    def embed_async(
        self,
        model: str,
        data: bytes,
        block: bool = True,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> Future:
        """Future of one image's embedding. Raises OverloadedError if admission times out."""
        eng = self.engine(model)
        name = eng.embedder.cfg.name
        key = (name, hashlib.blake2b(data, digest_size=16).digest())
        cached = self.cache.get(key)
        if cached is not None:
            fut: Future = Future()
            fut.set_result(cached)
            return fut
        with self._inflight_lock:
            existing = self._inflight.get(key)
            if existing is not None:
                self.dedup_hits += 1
                existing.tokens.append(token)
                return existing.future
            pending = _Pending(key, token)
            self._inflight[key] = pending
        if not self._admission.acquire(blocking=block, timeout=timeout if block else None):
            err = OverloadedError(f"server queue is full ({self.cfg.queue_size} images)")
            self._settle(pending, err)
            raise err
        pending.future.add_done_callback(lambda _f: self._admission.release())
        if token is not None and token.cancelled:  # it went away while waiting for admission
            self._settle(pending, CancelledError(_GONE))
        else:
            self._decode_pool.submit(self._prepare, eng, data, pending)
        return pending.future

    def _forget(self, pending: _Pending) -> None:
        """Take `pending` out of the in-flight table (caller holds _inflight_lock)."""
        if self._inflight.get(pending.key) is pending:
            del self._inflight[pending.key]

    def _settle(self, pending: _Pending, exc: BaseException) -> None:
        with self._inflight_lock:
            self._forget(pending)
        pending.future.set_exception(exc)

    def _still_wanted(self, pending: _Pending) -> bool:
        """False (and the image leaves the in-flight table) once every caller has gone."""
        if pending.wanted():
            return True
        with self._inflight_lock:
            if pending.wanted():  # a new caller joined meanwhile
                return True
            self._forget(pending)
        with self._counter_lock:
            self.images_cancelled += 1
        pending.future.set_exception(CancelledError(_GONE))
        return False

    def _prepare(self, eng: _Engine, data: bytes, pending: _Pending) -> None:
        if not self._still_wanted(pending):
            return
        try:
            img = decode_image(data, self.cfg.limits, eng.embedder.draft_size())
            x = eng.embedder.preprocess(img)
        except Exception as exc:
            self._settle(pending, exc)
            return
        eng.batcher.submit(
            x, partial(self._embedded, pending), partial(self._still_wanted, pending)
        )

    def _embedded(
        self, pending: _Pending, row: np.ndarray | None, exc: BaseException | None
    ) -> None:
        if exc is not None:
            self._settle(pending, exc)
            return
        value = np.array(row)  # a copy: a view would keep the whole batch's output alive
        self.cache.put(pending.key, value)
        with self._inflight_lock:
            self._forget(pending)
        pending.future.set_result(value)

    def _on_batch(self, model: str, size: int, waits: list[float], inference_s: float) -> None:
        for listener in self.batch_listeners:
            listener(model, size, waits, inference_s)

    # ---- pairs ------------------------------------------------------------------------------

    def compare_async(
        self,
        model: str,
        a: bytes,
        b: bytes,
        block: bool = True,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> Future:
        """Future of the pair's score; it resolves when both embeddings exist."""
        mcfg = self.resolve(model)
        similarity = SIMILARITIES[mcfg.similarity]
        fa = self.embed_async(mcfg.name, a, block, timeout, token)
        fb = self.embed_async(mcfg.name, b, block, timeout, token)
        out: Future = Future()
        remaining = [2]
        lock = threading.Lock()

        def one_done(_f: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            exc = fa.exception() or fb.exception()
            if exc is not None:
                self._count(failed=True)
                out.set_exception(exc)
            else:
                self._count(failed=False)
                out.set_result(similarity(fa.result(), fb.result()))

        fa.add_done_callback(one_done)
        fb.add_done_callback(one_done)
        return out

    def compare(
        self,
        model: str,
        a: bytes,
        b: bytes,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> float:
        """Score one pair, refusing (OverloadedError) rather than waiting when the queue is full."""
        token = token or CallToken(timeout)
        try:
            return self.compare_async(model, a, b, block=False, token=token).result(timeout)
        finally:
            token.cancel()  # whatever is still queued for this call is no longer wanted

    def _count(self, failed: bool) -> None:
        with self._counter_lock:
            if failed:
                self.pairs_failed += 1
            else:
                self.pairs_scored += 1

    # ---- introspection and lifecycle --------------------------------------------------------

    def batch_stats(self) -> dict[str, BatchStats]:
        return {name: eng.batcher.stats for name, eng in self._engines.items()}

    def cache_counts(self) -> tuple[int, int]:
        """(hits, misses): images served from the cache or joined to one in flight, and
        images that had to be embedded."""
        return self.cache.hits + self.dedup_hits, self.cache.misses - self.dedup_hits

    def queue_depth(self) -> int:
        return sum(eng.batcher.qsize() for eng in self._engines.values())

    def close(self) -> None:
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        for eng in self._engines.values():
            eng.batcher.close()


class StreamSession:
    """Per-stream state: the table of images sent with an `id`, for later `ref`s."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._images: dict[str, bytes] = {}
        self._bytes = 0

    def resolve(self, spec: ImageSpec, which: str) -> bytes:
        """The bytes a spec stands for; records specs that carry an id."""
        if spec.ref:
            try:
                return self._images[spec.ref]
            except KeyError:
                raise InvalidRequestError(
                    f"{which}: reference {spec.ref!r} names no image sent earlier in this stream"
                ) from None
        if spec.data is None:
            raise InvalidRequestError(f"{which}: no image given (set data or ref)")
        if spec.id and spec.id not in self._images:
            if self._bytes + len(spec.data) > self.max_bytes:
                raise OverloadedError(
                    f"{which}: this stream's image table is full ({self.max_bytes} bytes)"
                )
            self._images[spec.id] = spec.data
            self._bytes += len(spec.data)
        return spec.data
