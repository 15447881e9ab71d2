"""The dataplane: embeds images and scores pairs for every transport. Knows nothing of gRPC
or HTTP: its verbs are coroutines that return typed results (`core/types.py`) or raise errors
with a `kind` (`errors.py`).

Flow of one image: content digest -> embedding cache -> (in-flight dedup) -> admission (bounded)
-> decode + preprocess on the decode pool -> the model's dynamic batcher -> cache.
A pair's result resolves as soon as both of its embeddings exist.

Every call carries a `CallToken`. An image whose callers have all gone away (cancelled, or past
their deadline) is dropped before decoding and again before the model, and counted in
`images_cancelled`: no model work is spent on abandoned calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import replace
from functools import partial

import numpy as np

from imgsim_server.config import CoreConfig
from imgsim_server.core.cache import EmbeddingCache
from imgsim_server.core.engines import READY, Engine, Engines, Preparer
from imgsim_server.core.images import decode_image
from imgsim_server.core.types import (
    CacheCounts,
    Embedding,
    Face,
    FaceBox,
    ModelList,
    PairScore,
    Stats,
)
from imgsim_server.embedders import _calibration as calibration
from imgsim_server.embedders._cfg import MATCHES
from imgsim_server.errors import (
    CancelledError,
    ConfigurationError,
    CoreError,
    DeadlineExceededError,
    OverloadedError,
)
from imgsim_server.memory import Charge, MemoryBudget, MiB, Trimmer

log = logging.getLogger(__name__)

# Bytes charged to the memory budget per decoded pixel: the RGB(A) image and one converted copy.
DECODE_BYTES_PER_PIXEL = 8
# Images at least this large are handed to the pipeline off the event loop: hashing 50 MB
# takes long enough to delay every other call on the loop (health checks included).
OFFLOAD_BYTES = 1 << 20
# Threads that wait for room in a full admission queue (one per waiting stream), so that no
# event loop ever blocks; idle while the queue has room.
ADMISSION_WAITERS = 64


def clip(score: float, similarity: str) -> float:
    """A score within its similarity's range: rounding must not give 1.0000001."""
    low = 0.0 if similarity == "hamming" else -1.0
    return min(1.0, max(low, score))


def reportable(exc: BaseException) -> BaseException:
    """`exc` ready to be kept in a future: a CoreError (reported to the caller, never logged
    with its traceback) loses its traceback, whose frames would hold the request's image bytes
    in a reference cycle until the cyclic collector happens to run."""
    if isinstance(exc, CoreError):
        exc.__traceback__ = None
        exc.__context__ = None
    return exc


def failed(exc: BaseException) -> Future:
    """A future that already holds `exc` (a request refused before it reached the pipeline)."""
    fut: Future = Future()
    fut.set_exception(reportable(exc))
    return fut


def _resolve(fut: Future, value: object = None, exc: BaseException | None = None) -> None:
    """Resolve `fut` with `value` (or `exc`), unless its caller has already given up on it: a
    call past its deadline or cut by its connection cancels the future it awaits, while the
    embeddings it waited for still arrive."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except InvalidStateError:
        pass


def _named(exc: BaseException | None, which: str) -> BaseException | None:
    """`exc` with the image it concerns named first (`image_b: corrupt or truncated ...`), as
    the same type so that its kind stays."""
    if exc is None or not isinstance(exc, CoreError) or isinstance(exc, CancelledError):
        return exc
    named = type(exc)(f"{which}: {exc}")
    named.__cause__ = exc.__cause__
    return named


class CallToken:
    """The liveness of one call: cancelled when its caller goes away or its deadline passes.

    `expired` tells the two apart, so that a call whose deadline passed ends with
    DEADLINE_EXCEEDED and one whose caller cancelled ends with CANCELLED.
    """

    __slots__ = ("_cancelled", "deadline")

    def __init__(self, timeout: float | None = None) -> None:
        self._cancelled = False
        self.deadline = time.monotonic() + timeout if timeout is not None else None

    def cancel(self) -> None:
        self._cancelled = True

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 once passed), or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (whatever else happened)."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        if self.expired:
            self._cancelled = True
        return self._cancelled


class _Pending:
    """One image being embedded, and the calls waiting for it (several, after dedup)."""

    __slots__ = ("charge", "future", "key", "tokens")

    def __init__(self, key: tuple[str, bytes], token: CallToken | None, charge: Charge) -> None:
        self.key = key
        self.future: Future = Future()
        self.tokens: list[CallToken | None] = [token]
        self.charge = charge  # decoded pixels, then the preprocessed input

    def wanted(self) -> bool:
        return any(t is None or not t.cancelled for t in self.tokens)


_GONE = "the call was cancelled or its deadline passed"


class Dataplane:
    """Embeds and compares images with any served model, batching across all callers and
    transports. The async verbs (`compare`, `embed`, `admit_pair`, `admit_image`,
    `list_models`, `stats`) may be awaited on any event loop."""

    def __init__(self, cfg: CoreConfig, preparer: Preparer | None = None) -> None:
        """`preparer` makes a served model loadable before it loads (the CLI's exports its
        graph; see Engines)."""
        self.cfg = cfg
        self.batch_listeners: list = []
        self.engines = Engines(cfg, self._on_batch, preparer)
        self.budget = MemoryBudget(cfg.memory_budget_mb * MiB)
        self._trimmer = Trimmer(self.budget)
        self.cache = EmbeddingCache(int(cfg.cache_mb * 1024 * 1024))
        self._inflight: dict[tuple[str, bytes], _Pending] = {}
        self._inflight_lock = threading.Lock()
        self._admission = threading.BoundedSemaphore(cfg.queue_size)
        self._decode_pool = ThreadPoolExecutor(cfg.decode_workers, thread_name_prefix="decode")
        self._waiters = ThreadPoolExecutor(ADMISSION_WAITERS, thread_name_prefix="admission")
        self._model_list: tuple[int, ModelList] | None = None
        self.pairs_scored = 0
        self.pairs_failed = 0
        self.dedup_hits = 0
        self.images_cancelled = 0  # dropped before the model because every caller had gone
        self._counter_lock = threading.Lock()

    # ---- the verbs --------------------------------------------------------------------------

    async def compare(
        self,
        a: bytes,
        b: bytes,
        model: str = "",
        timeout: float | None = None,
        verify: bool = False,
    ) -> PairScore:
        """Score one pair, and with `verify` check it geometrically (`imgsim_verify`, on the
        decode pool). A full queue refuses at once (OverloadedError); past `timeout`,
        DeadlineExceededError, and the pair's queued work is dropped."""
        token = CallToken(timeout)
        try:
            fut = await self.admit_pair(a, b, model, token, wait=False)
            pair = await self.result(fut, token)
            if verify:
                loop = asyncio.get_running_loop()
                check = loop.run_in_executor(self._decode_pool, self._verify, a, b)
                try:
                    v = await asyncio.wait_for(check, token.remaining())
                except asyncio.TimeoutError:
                    raise DeadlineExceededError("deadline passed while verifying") from None
                pair = replace(pair, inliers=v.inliers, verified=v.verified, verification=v.answer)
            return pair
        finally:
            token.cancel()  # whatever is still queued for this call is no longer wanted

    def _verify(self, a: bytes, b: bytes):
        import imgsim_verify as verify

        if not verify.available():
            raise ConfigurationError(
                "geometric verification needs OpenCV on the server: "
                'python -m pip install "imgsim[verify]"'
            )
        charge = Charge(self.budget)

        def reserve(width: int, height: int) -> None:
            charge.add(width * height * DECODE_BYTES_PER_PIXEL, "verifying an image")

        try:
            limits, side = self.cfg.limits, verify.VERIFY_SIDE
            return verify.verify(
                decode_image(a, limits, side, reserve), decode_image(b, limits, side, reserve)
            )
        finally:
            charge.release()

    async def embed(self, data: bytes, model: str = "", timeout: float | None = None) -> Embedding:
        """One image's published vector, with `compare`'s admission and deadline."""
        token = CallToken(timeout)
        try:
            fut = await self.admit_image(data, model, token, wait=False)
            return await self.result(fut, token)
        finally:
            token.cancel()

    async def admit_pair(
        self, a: bytes, b: bytes, model: str = "", token: CallToken | None = None, wait: bool = True
    ) -> Future:
        """Hand a pair to the pipeline and return the future of its PairScore, once admitted:
        with `wait`, after waiting (off the loop) for room in a full queue, which is how a
        stream is slowed down; else OverloadedError at once."""
        eng = await self.engines.get_async(model, token.remaining() if token else None)
        return await self._admit(self._pair_future, eng, a, b, token=token, wait=wait)

    async def admit_image(
        self, data: bytes, model: str = "", token: CallToken | None = None, wait: bool = True
    ) -> Future:
        """`admit_pair` for one image: the future of its Embedding."""
        eng = await self.engines.get_async(model, token.remaining() if token else None)
        return await self._admit(self._vector_future, eng, data, token=token, wait=wait)

    @staticmethod
    async def result(fut: Future, token: CallToken):
        """The result of an admitted future, awaited until the token's deadline."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), token.remaining())
        except (asyncio.TimeoutError, CancelledError) as exc:
            if token.expired or isinstance(exc, asyncio.TimeoutError):
                raise DeadlineExceededError("deadline passed before the result was ready") from None
            raise

    async def list_models(self) -> ModelList:
        """The served models, built off the loop (it reads graph manifests and imports weight
        packages) and kept until a model is loaded or unloaded."""
        version = self.engines.version
        if self._model_list is None or self._model_list[0] != version:
            infos = await asyncio.get_running_loop().run_in_executor(None, self.engines.infos)
            self._model_list = (
                version,
                ModelList(tuple(infos), self.cfg.default_model, self.cfg.collection_model),
            )
        return self._model_list[1]

    async def stats(self) -> Stats:
        """The counters since start-up (cheap: no lock is held long)."""
        return self.snapshot()

    def snapshot(self) -> Stats:
        hits, misses = self.cache_counts()
        return Stats(
            batching={name: replace(s) for name, s in self.engines.batch_stats().items()},
            cache=CacheCounts(hits, misses, len(self.cache), self.cache.nbytes),
            pairs_scored=self.pairs_scored,
            pairs_failed=self.pairs_failed,
            images_cancelled=self.images_cancelled,
            queue_depth=self.engines.queue_depth(),
        )

    def warm_up(self, name: str) -> Engine:
        """The model prepared (loaded and run once: see Engines), waiting for it: for a caller
        that must not report ready before its first call will be quick."""
        return self.engines.get(name)

    def readiness(self) -> tuple[bool, str]:
        """Whether the default model is ready (loaded and run once), and if not, why: the one
        readiness truth that gRPC Health, /readyz and the web page show."""
        model = self.cfg.default_model
        state, detail = self.engines.state(model)
        if state == READY:
            return True, f"{model} ready"
        if state == "failed":
            return False, f"{model} failed: {detail}"
        return False, f"preparing {model}: {detail or 'not started'}"

    async def _admit(self, fn, eng: Engine, *images: bytes, token, wait: bool) -> Future:
        """The one admission path: large images are hashed off the loop; a full queue waits
        for room on a waiter thread (`wait`) or refuses."""
        loop = asyncio.get_running_loop()
        if sum(len(i) for i in images) >= OFFLOAD_BYTES:
            return await loop.run_in_executor(
                self._waiters, partial(fn, eng, *images, block=wait, token=token)
            )
        try:
            return fn(eng, *images, block=False, token=token)
        except OverloadedError:
            if not wait:
                raise
            return await loop.run_in_executor(
                self._waiters, partial(fn, eng, *images, block=True, token=token)
            )

    # ---- embedding --------------------------------------------------------------------------

    def _embed_future(
        self, eng: Engine, data: bytes, block: bool, token: CallToken | None
    ) -> Future:
        """Future of one image's embedding: from the cache, joined to the same image in flight,
        or admitted to the queue. When the queue is full it waits for room (`block`) or raises
        OverloadedError, in both cases having changed nothing."""
        key = (eng.cfg.name, hashlib.blake2b(data, digest_size=16).digest())
        cached = self.cache.get(key)
        if cached is not None:
            fut: Future = Future()
            fut.set_result(cached)
            return fut
        admitted = False
        while True:
            with self._inflight_lock:
                existing = self._inflight.get(key)
                if existing is not None:
                    if admitted:  # it arrived while we waited for room: join it instead
                        self._admission.release()
                    self.dedup_hits += 1
                    existing.tokens.append(token)
                    return existing.future
                if admitted or self._admission.acquire(blocking=False):
                    pending = _Pending(key, token, Charge(self.budget))
                    self._inflight[key] = pending
                    break
            if not block or not self._admission.acquire():
                raise OverloadedError(f"server queue is full ({self.cfg.queue_size} images)")
            admitted = True
        pending.future.add_done_callback(lambda _f: self._done(pending))
        if token is not None and token.cancelled:  # it went away while waiting for admission
            self._settle(pending, CancelledError(_GONE))
        else:
            self._decode_pool.submit(self._prepare, eng, data, pending)
        return pending.future

    def _vector_future(
        self, eng: Engine, data: bytes, block: bool, token: CallToken | None
    ) -> Future:
        """Future of one image's Embedding: L2-normalised float32 when the model's similarity
        is cosine (so that inner products are scores), else as embedded."""
        raw = self._embed_future(eng, data, block, token)
        out: Future = Future()

        def done(f: Future) -> None:
            if f.exception() is not None:
                _resolve(out, exc=f.exception())
                return
            v = np.asarray(f.result(), dtype=np.float32)
            faces: tuple[Face, ...] = ()
            if v.ndim == 2:  # one row per face: descriptor, then box
                dim = eng.cfg.embedding_dim
                faces = tuple(Face(FaceBox.of(row), row[:dim].copy()) for row in v)
                v = faces[0].vector
            elif eng.cfg.similarity == "cosine":
                v = v / max(float(np.linalg.norm(v)), 1e-12)
            _resolve(out, Embedding(v, eng.cfg.name, eng.cfg.similarity, faces))

        raw.add_done_callback(done)
        return out

    def _done(self, pending: _Pending) -> None:
        pending.charge.release()
        self._admission.release()

    def _forget(self, pending: _Pending) -> None:
        """Take `pending` out of the in-flight table (caller holds _inflight_lock)."""
        if self._inflight.get(pending.key) is pending:
            del self._inflight[pending.key]

    def _settle(self, pending: _Pending, exc: BaseException) -> None:
        with self._inflight_lock:
            self._forget(pending)
        pending.future.set_exception(reportable(exc))

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

    def _prepare(self, eng: Engine, data: bytes, pending: _Pending) -> None:
        if not self._still_wanted(pending):
            return

        def reserve(width: int, height: int) -> None:
            pending.charge.add(
                width * height * DECODE_BYTES_PER_PIXEL, f"decoding a {width}x{height} image"
            )

        try:
            img = decode_image(data, self.cfg.limits, eng.embedder.draft_size(), reserve)
            x = eng.embedder.preprocess(img)
            del img
            pending.charge.release()
            pending.charge.add(x.nbytes, "a preprocessed image")
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

    # ---- pairs ------------------------------------------------------------------------------

    def _pair_future(
        self, eng: Engine, a: bytes, b: bytes, block: bool, token: CallToken | None
    ) -> Future:
        """Future of the pair's PairScore under `eng`'s model; it resolves when both
        embeddings exist."""
        fa = self._embed_future(eng, a, block, token)
        fb = self._embed_future(eng, b, block, token)
        out: Future = Future()
        remaining = [2]
        lock = threading.Lock()
        name, similarity = eng.cfg.name, eng.cfg.similarity
        match = MATCHES.get(similarity)

        def one_done(_f: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            exc = _named(fa.exception(), "image_a") or _named(fb.exception(), "image_b")
            if exc is not None:
                self._count(failed=True)
                _resolve(out, exc=exc)
            else:
                self._count(failed=False)
                a, b = fa.result(), fb.result()
                if match is None:
                    score = clip(eng.similarity(a, b), similarity)
                    _resolve(out, PairScore(score, name, calibration.verdict(name, score)))
                    return
                score, i, j = match(a, b)
                verdict = calibration.verdict(name, score)
                faces = {"face_a": FaceBox.of(a[i]), "face_b": FaceBox.of(b[j])}
                _resolve(out, PairScore(score, name, verdict, **faces))

        fa.add_done_callback(one_done)
        fb.add_done_callback(one_done)
        return out

    def _count(self, failed: bool) -> None:
        with self._counter_lock:
            if failed:
                self.pairs_failed += 1
            else:
                self.pairs_scored += 1

    def _on_batch(self, model: str, size: int, waits: list[float], inference_s: float) -> None:
        for listener in self.batch_listeners:
            listener(model, size, waits, inference_s)

    # ---- introspection and lifecycle --------------------------------------------------------

    def cache_counts(self) -> tuple[int, int]:
        """(hits, misses): images served from the cache or joined to one in flight, and
        images that had to be embedded."""
        return self.cache.hits + self.dedup_hits, self.cache.misses - self.dedup_hits

    def close(self) -> None:
        self._trimmer.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._waiters.shutdown(wait=False, cancel_futures=True)
        self.engines.close()
