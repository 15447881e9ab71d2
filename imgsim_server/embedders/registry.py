"""Embedder registry: `register`, `create`, `list_models` (in the style of timm's _registry).

Each entry carries a frozen ModelCfg (its own preprocessing, embedding size, similarity) and a
factory. Callers never branch on model names.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_server.errors import ModelNotFoundError


@dataclass(frozen=True)
class EmbedderOptions:
    """Runtime options common to all embedders."""

    device: str = "cpu"  # "cpu" or "cuda"
    weights_file: Path | None = None  # overrides the registry's weights location
    backend: str = "auto"  # "torch", "onnx", or "auto": onnx on CPU when installed, else torch
    precision: str = "fp32"  # "fp32" or "int8" (onnx only)

    def resolved_backend(self) -> str:
        """The backend CNNs run on: 'auto' picks onnx on CPU when onnxruntime is installed."""
        if self.backend != "auto":
            return self.backend
        from imgsim_server.embedders import onnx_backend

        return "onnx" if self.device == "cpu" and onnx_backend.available() else "torch"


@dataclass(frozen=True)
class ModelCfg:
    """What a model is: static facts the server can report without loading it."""

    name: str
    kind: str  # "cnn" or "classical"
    embedding_dim: int
    input_size: int
    similarity: str = "cosine"  # a key of SIMILARITIES
    description: str = ""
    # Where the weights are, given the options; None for methods without weights.
    weights_locator: Callable[[EmbedderOptions], Path | None] | None = field(
        default=None, compare=False
    )
    weights_source: str = ""  # human description of where the weights come from
    extra: tuple[tuple[str, object], ...] = ()  # model-specific settings (pooling, ...)

    def weights_path(self, opts: EmbedderOptions) -> Path | None:
        """The weights file this model would load, or None if it needs none."""
        if self.weights_locator is None:
            return None
        if opts.weights_file is not None:
            return Path(opts.weights_file)
        return self.weights_locator(opts)

    def weights_available(self, opts: EmbedderOptions) -> bool:
        path = self.weights_path(opts)
        return path is None or path.is_file()

    def option(self, key: str, default: object = None) -> object:
        return dict(self.extra).get(key, default)


class Embedder(abc.ABC):
    """Turns images into vectors in two steps, so that they can run on different threads.

    `preprocess` runs per image on the decode pool; `embed` runs on a stacked batch in the
    batcher's worker. Outputs of `embed` are what `SIMILARITIES[cfg.similarity]` compares.
    """

    def __init__(self, cfg: ModelCfg, opts: EmbedderOptions) -> None:
        self.cfg = cfg
        self.opts = opts

    @abc.abstractmethod
    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One RGB image to one array of the model's input shape."""

    @abc.abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch of preprocessed arrays to an (N, embedding_dim) float32 array."""

    def concurrency(self) -> int:
        """How many batches may run at once (one batcher worker each)."""
        return 1

    def draft_size(self) -> int | None:
        """Smallest side the decoder may reduce a large JPEG to (None: decode at full size)."""
        return None

    def preferred_batch_size(self) -> int | None:
        """The batch size this runtime is fastest at per image (Triton's preferred_batch_size):
        the batcher closes a batch there instead of filling up to --max-batch-size."""
        return None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity in [-1, 1]."""
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom > 0 else 0.0


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 - (differing bits / bits), in [0, 1], for 0/1 bit vectors."""
    return 1.0 - float(np.count_nonzero(a != b)) / a.size


SIMILARITIES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "cosine": cosine,
    "hamming": hamming_similarity,
}

_REGISTRY: dict[str, tuple[ModelCfg, Callable[[ModelCfg, EmbedderOptions], Embedder]]] = {}


def register(cfg: ModelCfg, factory: Callable[[ModelCfg, EmbedderOptions], Embedder]) -> None:
    """Add a model to the registry."""
    if cfg.name in _REGISTRY:
        raise ValueError(f"model {cfg.name!r} is already registered")
    if cfg.similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {cfg.similarity!r} for {cfg.name!r}")
    _REGISTRY[cfg.name] = (cfg, factory)


def get_cfg(name: str) -> ModelCfg:
    """The config of a registered model; ModelNotFoundError if there is none."""
    _ensure_builtin()
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create(name: str, opts: EmbedderOptions | None = None) -> Embedder:
    """Build (and load) the named embedder."""
    cfg = get_cfg(name)
    return _REGISTRY[name][1](cfg, opts or EmbedderOptions())


def list_models() -> list[ModelCfg]:
    """All registered models, in registration order."""
    _ensure_builtin()
    return [cfg for cfg, _ in _REGISTRY.values()]


def _ensure_builtin() -> None:
    # Importing the modules registers their models once.
    from imgsim_server.embedders import classical, cnn  # noqa: F401
