"""What the dataplane's verbs return: typed results that transports convert to their wire
formats (protobuf, JSON) without computing anything themselves."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from imgsim_server.core.batcher import BatchStats
from imgsim_server.embedders._calibration import Threshold


@dataclass(frozen=True)
class FaceBox:
    """A face's box in an image's pixels (as decoded, EXIF orientation applied)."""

    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def of(cls, row) -> FaceBox:
        """From the last four values of a face row (see embedders.face)."""
        return cls(*(round(float(v)) for v in row[-4:]))


@dataclass(frozen=True)
class Face:
    """One face of an image: its box and its descriptor (L2-normalised)."""

    box: FaceBox
    vector: np.ndarray


@dataclass(frozen=True)
class PairScore:
    """One scored pair: the score, the model that scored it, and the verdict of that model's
    calibrated thresholds ("" for an uncalibrated model)."""

    score: float
    model: str
    verdict: str = ""
    # Geometric verification, when asked for (`compare(..., verify=True)`): the inliers of the
    # best similarity transform between the images, and whether they reach the minimum.
    inliers: int | None = None
    verified: bool | None = None
    verification: str = ""  # "yes", "no" or "cannot tell" (too few features to judge)
    # A model that matches several faces per image (`face`): the pair of faces that scored.
    face_a: FaceBox | None = None
    face_b: FaceBox | None = None


@dataclass(frozen=True)
class Embedding:
    """One image's published vector (L2-normalised for cosine models) and how to compare it."""

    vector: np.ndarray
    model: str
    similarity: str
    faces: tuple[Face, ...] = ()  # `face`: every face found, largest first (vector: the first)

    @property
    def dimension(self) -> int:
        return len(self.vector)


@dataclass(frozen=True)
class ModelInfo:
    """A served model as ListModels and /v1/models report it (the proto's field names)."""

    name: str
    kind: str
    embedding_dim: int
    input_size: int
    weights_source: str  # the file it serves from, and where that comes from, in words
    weights_available: bool
    loaded: bool
    similarity: str
    description: str
    thresholds: tuple[Threshold, ...] = ()
    # ready (loaded and run once), preparing (state_detail: what it is doing), failed
    # (state_detail: why), idle (served; prepared on its first request)
    state: str = ""
    state_detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self) | {"thresholds": [asdict(t) for t in self.thresholds]}


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelInfo, ...]
    default_model: str
    collection_model: str = ""


@dataclass(frozen=True)
class CacheCounts:
    """The embedding cache: images served from it (or joined to one in flight), images that
    had to be embedded, and what it holds."""

    hits: int
    misses: int
    entries: int
    bytes: int


@dataclass(frozen=True)
class Stats:
    """The server's counters since start-up (GetStats)."""

    batching: dict[str, BatchStats]  # per loaded model, a copy
    cache: CacheCounts
    pairs_scored: int
    pairs_failed: int
    images_cancelled: int  # dropped before the model because every caller had gone
    queue_depth: int
