"""The dataplane: embeds images and scores pairs. Knows nothing of gRPC.

Flow of one image: content digest -> embedding cache -> (in-flight dedup) -> admission (bounded)
-> decode + preprocess on the decode pool -> the model's dynamic batcher -> cache.
A pair's score future resolves as soon as both of its embeddings exist.

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
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from imgsim_server.batcher import BatchPolicy, BatchStats, DynamicBatcher
from imgsim_server.cache import EmbeddingCache
from imgsim_server.config import CoreConfig
from imgsim_server.embedders import (
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    ModelCfg,
    create,
    get_cfg,
    list_models,
)
from imgsim_server.embedders import _calibration as calibration
from imgsim_server.errors import (
    CancelledError,
    CoreError,
    ModelNotFoundError,
    OverloadedError,
)
from imgsim_server.images import decode_image
from imgsim_server.memory import Charge, MemoryBudget, MiB, Trimmer

# Bytes charged to the memory budget per decoded pixel: the RGB(A) image and one converted copy.
DECODE_BYTES_PER_PIXEL = 8

log = logging.getLogger(__name__)


# Longest part of a request (a model name, an image id) that an error message repeats.
ECHO_LIMIT = 80
# Images at least this large are handed to the core off the event loop: hashing 50 MB takes
# long enough to delay every other call on the loop (health checks included).
OFFLOAD_BYTES = 1 << 20


async def submit_off_loop_if_large(call: Callable[[], Future], size: int, executor=None) -> Future:
    """`call()` (one of the core's *_async submissions) run on `executor` when its images
    total `size` >= OFFLOAD_BYTES, else on the event loop at once."""
    if size >= OFFLOAD_BYTES:
        return await asyncio.get_running_loop().run_in_executor(executor, call)
    return call()


def bounded_name(value: str, limit: int = ECHO_LIMIT) -> str:
    """`value` as an error message may repeat it: at most `limit` characters."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def clip(score: float, similarity: str) -> float:
    """A score within its similarity's range: rounding must not give 1.0000001."""
    low = 0.0 if similarity == "hamming" else -1.0
    return min(1.0, max(low, score))


def served_models(cfg: CoreConfig) -> frozenset[str] | None:
    """The models a server with `cfg` serves (None: every registered one): its default, the
    classical ones and those named."""
    if "all" in cfg.models:
        return None
    names = {cfg.default_model, *cfg.models}
    names |= {m.name for m in list_models() if m.kind == "classical"}
    for name in names:
        get_cfg(name)  # fail fast on a misspelt name
    return frozenset(names)


def reportable(exc: BaseException) -> BaseException:
    """`exc` ready to be kept in a future: a CoreError (reported to the caller, never logged
    with its traceback) loses its traceback, whose frames would hold the request's image bytes
    in a reference cycle until the cyclic collector happens to run."""
    if isinstance(exc, CoreError):
        exc.__traceback__ = None
        exc.__context__ = None
    return exc


def _named(exc: BaseException | None, which: str) -> BaseException | None:
    """`exc` with the image it concerns named first (`image_b: corrupt or truncated ...`), as
    the same type so that its status code stays."""
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

BatchListener = Callable[[str, int, list[float], float], None]
"""Called after each model batch with (model, batch size, queue waits in s, inference s)."""


@dataclass(frozen=True)
class ModelStatus:
    """A registered model as ListModels reports it."""

    cfg: ModelCfg
    weights_path: Path | None  # the file it serves from: an exported graph, else its weights
    weights_available: bool
    loaded: bool
    source: str = ""  # where that file comes from, in words

    def info(self) -> dict:
        """The ModelInfo fields (proto names), calibrated thresholds as dicts: what ListModels
        and HTTP /v1/models report."""
        return {
            "name": self.cfg.name,
            "kind": self.cfg.kind,
            "embedding_dim": self.cfg.embedding_dim,
            "input_size": self.cfg.input_size,
            "weights_source": f"{self.weights_path} ({self.source})" if self.weights_path else "",
            "weights_available": self.weights_available,
            "loaded": self.loaded,
            "similarity": self.cfg.similarity,
            "description": self.cfg.description,
            "thresholds": [asdict(t) for t in calibration.thresholds(self.cfg.name)],
        }


class Engine:
    """A loaded embedder with its batcher: what a request's model name resolves to."""

    def __init__(self, embedder: Embedder, cfg: CoreConfig, on_batch: BatchListener) -> None:
        self.embedder = embedder
        self.cfg = embedder.cfg
        self.similarity = SIMILARITIES[self.cfg.similarity]
        self.policy = BatchPolicy.choose(
            cfg.max_batch_size,
            cfg.preferred_batch_size,
            embedder.preferred_batch_size(),
            cfg.max_delay_ms / 1000.0,
        )
        self.batcher = DynamicBatcher(
            self.cfg.name, embedder.embed, self.policy, embedder.concurrency(), on_batch
        )
        self.last_used = time.monotonic()  # for least-recently-used unloading


class SimilarityCore:
    """Embeds and compares images with any registry model, batching across all callers."""

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        get_cfg(cfg.default_model)  # fail fast on an unknown default
        self.served = served_models(cfg)  # None: every registered model
        self.budget = MemoryBudget(cfg.memory_budget_mb * MiB)
        self._trimmer = Trimmer(self.budget)
        self.models_unloaded = 0
        self.cache = EmbeddingCache(int(cfg.cache_mb * 1024 * 1024))
        self._engines: dict[str, Engine] = {}  # by model name
        self._by_request: dict[str, Engine] = {}  # by the name requests use ('' = default)
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

    def options_for(self, name: str, export: bool = False) -> EmbedderOptions:
        """Runtime options for a model; `export` lets a missing graph be exported (start-up
        only: a request never exports)."""
        weights = dict(self.cfg.weights).get(name)
        return EmbedderOptions(
            device=self.cfg.device,
            weights_file=weights,
            backend=self.cfg.backend,
            precision=self.cfg.precision,
            onnx_dir=self.cfg.onnx_dir,
            export_missing=export,
        )

    def models(self) -> list[ModelStatus]:
        """Every registered model: where it loads from, whether it can load, whether it has."""
        out = []
        for mcfg in list_models():
            if self.served is not None and mcfg.name not in self.served:
                continue
            opts = self.options_for(mcfg.name)
            loaded = mcfg.name in self._engines
            if (graph := mcfg.artifact(opts)) is not None:  # served from it, weights or not
                out.append(ModelStatus(mcfg, graph, True, loaded, "exported ONNX graph"))
                continue
            path, available = mcfg.weights_path(opts), mcfg.weights_available(opts)
            out.append(ModelStatus(mcfg, path, available, loaded, mcfg.weights_source))
        return out

    def warm_up(self, name: str) -> Engine:
        """Load a model (exporting its graph first where that is possible and needed) and run
        one image through it (the first run of a runtime is slow), so that a server reports
        ready only when its first call will be quick."""
        eng = self.engine(name, export=True)
        side = eng.cfg.input_size
        ramp = np.linspace(0, 255, side * side * 3, dtype=np.float32).reshape(side, side, 3)
        from PIL import Image

        x = eng.embedder.preprocess(Image.fromarray(ramp.astype(np.uint8)))
        eng.embedder.embed(x[None])
        return eng

    async def engine_async(self, name: str) -> Engine:
        """`engine` for an event loop: a loaded model costs a dict lookup; loading one runs on
        the loop's default executor, never on the loop."""
        eng = self._by_request.get(name)
        if eng is None:
            eng = await asyncio.get_running_loop().run_in_executor(None, self.engine, name)
        return eng

    def prepare_graphs(self) -> None:
        """Start-up: export the graphs missing for the models `--models` names (where torch
        is installed), so that requests for them never need to."""
        for name in self.cfg.models:
            if name == "all" or get_cfg(name).kind != "cnn" or name == self.cfg.default_model:
                continue
            try:
                create(name, self.options_for(name, export=True))
            except CoreError as exc:  # served all the same: its requests say what is missing
                log.warning("model %s cannot load: %s", name, exc)

    def engine(self, name: str, export: bool = False) -> Engine:
        """The engine a request's model name ('' = the default) resolves to, loaded on first
        use and kept while it is among the `max_loaded_models` most recently used. After the
        first call a name costs one dict lookup."""
        eng = self._by_request.get(name)
        if eng is not None:
            eng.last_used = time.monotonic()
            return eng
        mcfg = get_cfg(bounded_name(name) if name else self.cfg.default_model)
        if self.served is not None and mcfg.name not in self.served:
            raise ModelNotFoundError(
                f"model {mcfg.name!r} is not served here (start the server with --models "
                f"{mcfg.name}, or --models all); served: {', '.join(sorted(self.served))}"
            )
        with self._load_lock:
            eng = self._engines.get(mcfg.name)
            if eng is None:
                started = time.perf_counter()
                embedder = create(mcfg.name, self.options_for(mcfg.name, export))
                eng = Engine(embedder, self.cfg, self._on_batch)
                self._unload_beyond(self.cfg.max_loaded_models - 1)
                self._engines[mcfg.name] = eng
                log.info(
                    "loaded model %s in %.1fs: %s; batch policy: %s",
                    mcfg.name,
                    time.perf_counter() - started,
                    embedder.describe(),
                    eng.policy.describe(),
                )
            self._by_request[name] = eng
        eng.last_used = time.monotonic()
        return eng

    def _unload_beyond(self, keep: int) -> None:
        """Unload the least recently used models (never the default) until at most `keep`
        remain (caller holds _load_lock). Work already queued for one still finishes."""
        while len(self._engines) > max(keep, 0):
            victims = [e for n, e in self._engines.items() if n != self.cfg.default_model]
            if not victims:
                return
            old = min(victims, key=lambda e: e.last_used)
            del self._engines[old.cfg.name]
            for key in [k for k, e in self._by_request.items() if e is old]:
                del self._by_request[key]
            self.models_unloaded += 1
            log.info("unloaded model %s (least recently used of %d)", old.cfg.name, keep + 1)
            threading.Thread(target=old.batcher.close, name="unload", daemon=True).start()

    # ---- embedding --------------------------------------------------------------------------

    def embed_async(
        self,
        eng: Engine,
        data: bytes,
        block: bool = True,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> Future:
        """Future of one image's embedding: from the cache, joined to the same image in flight,
        or admitted to the queue. When the queue is full it waits for room (`block`, at most
        `timeout`) or raises OverloadedError, in both cases having changed nothing."""
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
            if not block or not self._admission.acquire(timeout=timeout):
                raise OverloadedError(f"server queue is full ({self.cfg.queue_size} images)")
            admitted = True
        pending.future.add_done_callback(lambda _f: self._done(pending))
        if token is not None and token.cancelled:  # it went away while waiting for admission
            self._settle(pending, CancelledError(_GONE))
        else:
            self._decode_pool.submit(self._prepare, eng, data, pending)
        return pending.future

    def embed_vector_async(
        self,
        eng: Engine,
        data: bytes,
        block: bool = True,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> Future:
        """Future of one image's published vector: L2-normalised float32 when the model's
        similarity is cosine (so that inner products are scores), else as embedded."""
        raw = self.embed_async(eng, data, block, timeout, token)
        out: Future = Future()

        def done(f: Future) -> None:
            if f.exception() is not None:
                out.set_exception(f.exception())
                return
            v = np.asarray(f.result(), dtype=np.float32)
            if eng.cfg.similarity == "cosine":
                v = v / max(float(np.linalg.norm(v)), 1e-12)
            out.set_result(v)

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

    def _on_batch(self, model: str, size: int, waits: list[float], inference_s: float) -> None:
        for listener in self.batch_listeners:
            listener(model, size, waits, inference_s)

    # ---- pairs ------------------------------------------------------------------------------

    def compare_async(
        self,
        eng: Engine,
        a: bytes,
        b: bytes,
        block: bool = True,
        timeout: float | None = None,
        token: CallToken | None = None,
    ) -> Future:
        """Future of the pair's score under `eng`'s model; it resolves when both embeddings
        exist."""
        fa = self.embed_async(eng, a, block, timeout, token)
        fb = self.embed_async(eng, b, block, timeout, token)
        out: Future = Future()
        remaining = [2]
        lock = threading.Lock()

        def one_done(_f: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            exc = _named(fa.exception(), "image_a") or _named(fb.exception(), "image_b")
            if exc is not None:
                self._count(failed=True)
                out.set_exception(exc)
            else:
                self._count(failed=False)
                out.set_result(clip(eng.similarity(fa.result(), fb.result()), eng.cfg.similarity))

        fa.add_done_callback(one_done)
        fb.add_done_callback(one_done)
        return out

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
        self._trimmer.stop()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        for eng in self._engines.values():
            eng.batcher.close()
