"""Loaded models: what a request's model name resolves to, loading on first use, warming up,
and unloading the least recently used beyond `--max-loaded-models`. Never exports a graph."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from imgsim_server.config import CoreConfig
from imgsim_server.core.batcher import BatchPolicy, BatchStats, DynamicBatcher
from imgsim_server.core.types import ModelInfo
from imgsim_server.embedders import (
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    artifact,
    create,
    get_cfg,
    list_models,
    weights_available,
    weights_path,
)
from imgsim_server.embedders import _calibration as calibration
from imgsim_server.errors import ModelNotFoundError

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
    collection descriptor, the classical ones and those named."""
    if "all" in cfg.models:
        return None
    names = {cfg.default_model, cfg.collection_model, *cfg.models}
    names |= {m.name for m in list_models(kind="classical")}
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
            self.cfg.name, embedder.embed, self.policy, embedder.concurrency(), on_batch
        )
        self.last_used = time.monotonic()  # for least-recently-used unloading


class Engines:
    """The served models and the loaded ones, by the names requests use."""

    def __init__(self, cfg: CoreConfig, on_batch: BatchListener) -> None:
        self.cfg = cfg
        get_cfg(cfg.default_model)  # fail fast on an unknown default
        self.served = served_models(cfg)  # None: every registered model
        self.on_batch = on_batch
        self.unloaded = 0
        self.version = 0  # changes whenever a model is loaded or unloaded
        self._engines: dict[str, Engine] = {}  # by model name
        self._by_request: dict[str, Engine] = {}  # by the name requests use ('' = default)
        self._lock = threading.Lock()

    def infos(self) -> list[ModelInfo]:
        """Every served model: where it loads from, whether it can load, whether it has."""
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
                )
            )
        return out

    def get(self, name: str) -> Engine:
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
        with self._lock:
            eng = self._engines.get(mcfg.name)
            if eng is None:
                started = time.perf_counter()
                embedder = create(mcfg.name, embedder_options(self.cfg, mcfg.name))
                eng = Engine(embedder, self.cfg, self.on_batch)
                self._unload_beyond(self.cfg.max_loaded_models - 1)
                self._engines[mcfg.name] = eng
                self.version += 1
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

    async def get_async(self, name: str) -> Engine:
        """`get` for an event loop: a loaded model costs a dict lookup; loading one runs on
        the loop's default executor, never on the loop."""
        eng = self._by_request.get(name)
        if eng is None:
            eng = await asyncio.get_running_loop().run_in_executor(None, self.get, name)
        return eng

    def warm_up(self, name: str) -> Engine:
        """Load a model and run one image through it (the first run of a runtime is slow), so
        that a server reports ready only when its first call will be quick."""
        eng = self.get(name)
        side = eng.cfg.input_size
        ramp = np.linspace(0, 255, side * side * 3, dtype=np.float32).reshape(side, side, 3)
        from PIL import Image

        x = eng.embedder.preprocess(Image.fromarray(ramp.astype(np.uint8)))
        eng.embedder.embed(x[None])
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
        for eng in self._engines.values():
            eng.batcher.close()
