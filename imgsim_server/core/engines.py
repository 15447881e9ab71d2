"""Served models and their states: what a request's model name resolves to, preparing a model
(one at a time, waited for by its callers), and unloading the least recently used beyond
`--max-loaded-models`. Exports a graph only through the preparer the CLI hands it, and never
for a model the server does not serve."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import numpy as np

from imgsim_server.config import CoreConfig
from imgsim_server.core.batcher import BatchPolicy, BatchStats, DynamicBatcher
from imgsim_server.core.types import ModelInfo
from imgsim_server.embedders import (
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    ModelCfg,
    artifact,
    create,
    get_cfg,
    list_models,
    weights_available,
    weights_path,
)
from imgsim_server.embedders import _calibration as calibration
from imgsim_server.errors import (
    CoreError,
    DeadlineExceededError,
    ModelFailedError,
    ModelNotFoundError,
    NoFaceError,
    UnavailableError,
)

log = logging.getLogger(__name__)

# Longest part of a request (a model name, an image id) that an error message repeats.
ECHO_LIMIT = 80

BatchListener = Callable[[str, int, list[float], float], None]
"""Called after each model batch with (model, batch size, queue waits in s, inference s)."""


def bounded_name(value: str, limit: int = ECHO_LIMIT) -> str:
    """`value` as an error message may repeat it: at most `limit` characters."""
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} characters)"


def served_models(cfg: CoreConfig) -> frozenset[str] | None:
    """The models a server with `cfg` serves (None: every registered one): its default, its
    collection descriptor, the classical ones, the face model where its extra is installed,
    and those named."""
    if "all" in cfg.models:
        return None
    names = {cfg.default_model, cfg.collection_model, *cfg.models}
    names |= {m.name for m in list_models(kind="classical")}
    names |= {m.name for m in list_models(kind="face", available=True)}
    for name in names:
        get_cfg(name)  # fail fast on a misspelt name
    return frozenset(names)


def embedder_options(cfg: CoreConfig, name: str) -> EmbedderOptions:
    """The runtime options a server with `cfg` loads model `name` with."""
    return EmbedderOptions(
        device=cfg.device,
        weights_file=dict(cfg.weights).get(name),
        backend=cfg.backend,
        precision=cfg.precision,
        onnx_dir=cfg.onnx_dir,
    )


def _run_once(eng: Engine) -> None:
    """One image through a loaded model: the first run of a runtime is slow (graph
    optimisation, arena allocation), so it is paid before any request waits on it."""
    from PIL import Image

    side = eng.cfg.input_size
    ramp = np.linspace(0, 255, side * side * 3, dtype=np.float32).reshape(side, side, 3)
    try:
        x = eng.embedder.preprocess(Image.fromarray(ramp.astype(np.uint8)))
    except NoFaceError:
        return  # a face model: its detector has run on the ramp, which has no face
    eng.embedder.embed(eng.embedder.collate([x]))


class Engine:
    """A loaded embedder with its batcher."""

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
            self.cfg.name,
            embedder.embed,
            self.policy,
            embedder.concurrency(),
            on_batch,
            embedder.collate,
        )
        self.last_used = time.monotonic()  # for least-recently-used unloading


Preparer = Callable[[str, Callable[[str], None]], None]
"""Makes a served model loadable (the CLI's: exports its ONNX graph where torch is installed),
telling what it is doing through the callback ("exporting its ONNX graph"). Called from two
threads (a request's preparation, start-up's background exports): it serialises its own work."""

# A model's state, as ListModels and /v1/models report it.
READY, PREPARING, FAILED, IDLE = "ready", "preparing", "failed", "idle"


def _fresh(exc: BaseException) -> BaseException:
    """A new exception of `exc`'s type and message: a preparation failure is reported to every
    later caller, and raising one object again and again would grow its traceback."""
    return type(exc)(str(exc)) if isinstance(exc, CoreError) else exc


class Engines:
    """The served models and the loaded ones, by the names requests use.

    A served model is prepared (its graph exported by the `preparer`, loaded, run once) by one
    thread, one model at a time: the default at start-up, the others on their first request;
    those named at start-up have their graphs exported in the background meanwhile
    (`prepare_in_background`, a lane of its own; the preparer exports one at a time). Callers
    wait for a preparation in progress; a failed one is reported to every later caller with
    its reason.
    """

    def __init__(
        self, cfg: CoreConfig, on_batch: BatchListener, preparer: Preparer | None = None
    ) -> None:
        self.cfg = cfg
        get_cfg(cfg.default_model)  # fail fast on an unknown default
        self.served = served_models(cfg)  # None: every registered model
        self.on_batch = on_batch
        self.preparer = preparer
        self.unloaded = 0
        self.version = 0  # changes whenever a model's state changes
        self._engines: dict[str, Engine] = {}  # by model name
        self._by_request: dict[str, Engine] = {}  # by the name requests use ('' = default)
        # model -> the future of its preparation, while it runs, and after it failed
        self._preparing: dict[str, Future] = {}
        self._background: set[str] = set()  # of those, the graph-only ones of start-up
        self._doing: dict[str, str] = {}  # model -> what its preparation is doing now
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="prepare")
        # Start-up's background exports have a lane of their own, so that a request for a model
        # with nothing to export (a classical one, a graph on disk) never queues behind them;
        # the preparer runs one export at a time across both lanes.
        self._exports = ThreadPoolExecutor(1, thread_name_prefix="export")

    def infos(self) -> list[ModelInfo]:
        """Every served model: where it loads from, whether it can load, its state."""
        out = []
        for mcfg in list_models():
            if self.served is not None and mcfg.name not in self.served:
                continue
            opts = embedder_options(self.cfg, mcfg.name)
            if (graph := artifact(mcfg, opts)) is not None:  # served from it, weights or not
                path, available, source = graph, True, "exported ONNX graph"
            else:
                path, source = weights_path(mcfg, opts), mcfg.weights_source
                available = weights_available(mcfg, opts)
            state, detail = self.state(mcfg.name)
            if state == IDLE:
                detail = (
                    "loads on its first request"
                    if graph is not None or mcfg.kind != "cnn"
                    else "prepared on its first request"
                )
            out.append(
                ModelInfo(
                    name=mcfg.name,
                    kind=mcfg.kind,
                    embedding_dim=mcfg.embedding_dim,
                    input_size=mcfg.input_size,
                    weights_source=f"{path} ({source})" if path else "",
                    weights_available=available,
                    loaded=mcfg.name in self._engines,
                    similarity=mcfg.similarity,
                    description=mcfg.description,
                    thresholds=calibration.thresholds(mcfg.name),
                    state=state,
                    state_detail=detail,
                )
            )
        return out

    def state(self, model: str) -> tuple[str, str]:
        """(state, detail) of a served model: ready (loaded and run once), preparing (what it
        is doing), failed (why), or idle (prepared on its first request)."""
        with self._lock:
            if model in self._engines:
                return READY, ""
            fut = self._preparing.get(model)
            doing = self._doing.get(model, "queued behind another model")
        if fut is None:
            return IDLE, ""
        if fut.done() and fut.exception() is not None:
            return FAILED, str(fut.exception())
        return PREPARING, doing

    def served_cfg(self, name: str) -> ModelCfg:
        """The registry entry a request's model name ('' = the default) resolves to;
        ModelNotFoundError for an unknown or unserved name (never prepares anything)."""
        mcfg = get_cfg(bounded_name(name) if name else self.cfg.default_model)
        if self.served is not None and mcfg.name not in self.served:
            raise ModelNotFoundError(
                f"model {mcfg.name!r} is not served here (start the server with --models "
                f"{mcfg.name}, or --models all); served: {', '.join(sorted(self.served))}"
            )
        return mcfg

    def preparation(self, model: str) -> Future:
        """The future of served `model`'s Engine: done at once when it is loaded, else its
        preparation's (started if none runs; queued behind the one that does)."""
        with self._lock:
            eng = self._engines.get(model)
            if eng is not None:
                fut: Future = Future()
                fut.set_result(eng)
                return fut
            fut = self._preparing.get(model)
            if fut is None or model in self._background:
                self._background.discard(model)
                fut = self._preparing[model] = self._pool.submit(self._prepare, model)
            return fut

    def prepare_in_background(self, models: list[str]) -> None:
        """Export the graphs of `models` one at a time after the default is ready, without
        loading them (loading is quick once a graph exists, and the LRU decides what stays)."""
        with self._lock:
            for model in models:
                if model in self._engines or model in self._preparing:
                    continue
                self._background.add(model)
                self._preparing[model] = self._exports.submit(self._export, model)

    def get(self, name: str) -> Engine:
        """The engine a request's model name ('' = the default) resolves to, prepared on first
        use (this blocks until it is) and kept while it is among the `max_loaded_models` most
        recently used. After the first call a name costs one dict lookup."""
        eng = self._by_request.get(name)
        if eng is None:
            fut = self.preparation(self.served_cfg(name).name)
            try:
                eng = fut.result()
            except CoreError as exc:
                raise _fresh(exc) from None
            self._remember(name, eng)
        eng.last_used = time.monotonic()
        return eng

    async def get_async(self, name: str, timeout: float | None = None) -> Engine:
        """`get` for an event loop: a loaded model costs a dict lookup; a model being prepared
        is awaited, at most `timeout` (the call's deadline) or `cfg.prepare_wait_s`."""
        eng = self._by_request.get(name)
        if eng is None:
            mcfg = self.served_cfg(name)
            fut = self.preparation(mcfg.name)
            wait = self.cfg.prepare_wait_s if timeout is None else timeout
            wait = min(wait, self.cfg.prepare_wait_s)
            try:
                eng = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), wait)
            except asyncio.TimeoutError:
                doing = self.state(mcfg.name)[1]
                if timeout is not None and timeout <= self.cfg.prepare_wait_s:
                    raise DeadlineExceededError(
                        f"deadline passed while model {mcfg.name!r} was being prepared ({doing})"
                    ) from None
                raise UnavailableError(
                    f"model {mcfg.name!r} is still being prepared ({doing}) after "
                    f"{wait:g}s (--prepare-wait); retry later"
                ) from None
            except CoreError as exc:
                raise _fresh(exc) from None
            self._remember(name, eng)
        eng.last_used = time.monotonic()
        return eng

    def _remember(self, name: str, eng: Engine) -> None:
        with self._lock:
            if self._engines.get(eng.cfg.name) is eng:  # not unloaded meanwhile
                self._by_request[name] = eng

    def _note(self, model: str, doing: str) -> None:
        with self._lock:
            self._doing[model] = doing
            self.version += 1
        log.info("preparing %s: %s", model, doing)

    def _failure(self, model: str, exc: BaseException) -> CoreError:
        """`exc` as the CoreError every later caller of `model` gets, logged once."""
        if isinstance(exc, CoreError):  # a reason to report (missing weights, no graph)
            failure = exc
            log.error("model %s failed: %s", model, failure)
        else:  # a bug or a broken install: its traceback is for the log
            failure = ModelFailedError(f"model {model!r} could not be prepared: {exc}")
            log.error("preparing model %s failed", model, exc_info=exc)
        with self._lock:
            self._doing.pop(model, None)
            self.version += 1
        return failure

    def _export(self, model: str) -> None:
        """A background preparation: the graph only (see prepare_in_background)."""
        if self.preparer is None:
            return
        try:
            self.preparer(model, partial(self._note, model))
        except BaseException as exc:
            raise self._failure(model, exc) from None
        with self._lock:
            if model in self._background:  # no request has asked for it meanwhile
                self._background.discard(model)
                del self._preparing[model]
            self._doing.pop(model, None)
            self.version += 1

    def _prepare(self, model: str) -> Engine:
        """Export (through the preparer), load and run once: on the preparation thread."""
        started = time.perf_counter()
        try:
            if self.preparer is not None:
                self.preparer(model, partial(self._note, model))
            self._note(model, "loading")
            embedder = create(model, embedder_options(self.cfg, model))
            eng = Engine(embedder, self.cfg, self.on_batch)
            self._note(model, "running it once")
            _run_once(eng)
        except BaseException as exc:
            raise self._failure(model, exc) from None
        with self._lock:
            self._unload_beyond(self.cfg.max_loaded_models - 1)
            self._engines[model] = eng
            self._preparing.pop(model, None)
            self._doing.pop(model, None)
            self.version += 1
        log.info(
            "loaded model %s in %.1fs: %s; batch policy: %s",
            model,
            time.perf_counter() - started,
            embedder.describe(),
            eng.policy.describe(),
        )
        return eng

    def _unload_beyond(self, keep: int) -> None:
        """Unload the least recently used models (never the default) until at most `keep`
        remain (caller holds _lock). Work already queued for one still finishes."""
        while len(self._engines) > max(keep, 0):
            victims = [e for n, e in self._engines.items() if n != self.cfg.default_model]
            if not victims:
                return
            old = min(victims, key=lambda e: e.last_used)
            del self._engines[old.cfg.name]
            for key in [k for k, e in self._by_request.items() if e is old]:
                del self._by_request[key]
            self.unloaded += 1
            self.version += 1
            log.info("unloaded model %s (least recently used of %d)", old.cfg.name, keep + 1)
            threading.Thread(target=old.batcher.close, name="unload", daemon=True).start()

    def batch_stats(self) -> dict[str, BatchStats]:
        return {name: eng.batcher.stats for name, eng in self._engines.items()}

    def queue_depth(self) -> int:
        return sum(eng.batcher.qsize() for eng in self._engines.values())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._exports.shutdown(wait=False, cancel_futures=True)
        for eng in self._engines.values():
            eng.batcher.close()
