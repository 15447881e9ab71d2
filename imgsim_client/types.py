"""The client's typed requests and results: plain dataclasses, no protobuf (`_convert.py` maps
them to and from the wire). The base install has no numpy, so vectors are lists of floats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import grpc


class CompareResult(NamedTuple):
    """One pair scored by unary Compare: the score, the model that scored it, and the verdict
    of that model's calibrated thresholds ("" if it has none). Unpacks as a 3-tuple."""

    score: float
    model: str
    verdict: str


class _Answer:
    """What a streamed result and its error have in common."""

    error_code: grpc.StatusCode | None

    @property
    def ok(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True)
class FaceBox:
    """A face's box in an image's pixels (after EXIF orientation)."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class Face:
    """One face of an embedded image (the face model): its box and 128-D descriptor."""

    box: FaceBox
    vector: list[float]


@dataclass(frozen=True)
class FaceMatch:
    """A pair scored by the face model: the score of its best-matching faces, the verdict
    ("same person" or "different"), and the two faces' boxes."""

    score: float
    model: str
    verdict: str
    face_a: FaceBox
    face_b: FaceBox


@dataclass(frozen=True)
class Verified:
    """One pair scored and verified geometrically (`compare_verified`)."""

    score: float
    model: str
    verdict: str
    inliers: int  # local-feature matches consistent with one plausible affine transform
    verified: bool  # enough of them: one image is an edited copy of the other
    # "yes", "no", or "cannot tell" (too few local features to judge: a logo, a drawing)
    verification: str = ""


@dataclass(frozen=True)
class PairRequest:
    """One pair to score. Each image is bytes, or (in a stream) a ref to an earlier image id.

    `id_a`/`id_b` name bytes so that later pairs can send `ref_a`/`ref_b` instead.
    """

    pair_id: str
    data_a: bytes | None = None
    data_b: bytes | None = None
    ref_a: str = ""
    ref_b: str = ""
    id_a: str = ""
    id_b: str = ""
    model: str = ""


@dataclass(frozen=True)
class PairResult(_Answer):
    """One pair's answer in a stream: its score and verdict, or its error."""

    pair_id: str
    score: float | None
    model: str = ""
    error_code: grpc.StatusCode | None = None
    error: str = ""
    verdict: str = ""
    face_a: FaceBox | None = None  # the face model: the faces that matched
    face_b: FaceBox | None = None


@dataclass(frozen=True)
class ImageRequest:
    """One image to embed: bytes, or (in a stream) a ref to an earlier image's id."""

    image_id: str
    data: bytes | None = None
    ref: str = ""
    id: str = ""
    model: str = ""


@dataclass(frozen=True)
class ImageResult(_Answer):
    """One image's embedding, or its error."""

    image_id: str
    vector: list[float] | None
    model: str = ""
    similarity: str = ""
    error_code: grpc.StatusCode | None = None
    error: str = ""
    faces: tuple[Face, ...] = ()  # the face model: every face, largest first


@dataclass(frozen=True)
class Threshold:
    """A calibrated score: the one a fraction `fpr` of unrelated pairs of `dataset` reach."""

    task: str
    dataset: str
    fpr: float
    score: float
    low: float
    high: float
    tpr: float


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves, and whether it can load."""

    name: str
    kind: str
    embedding_dim: int
    input_size: int
    weights_source: str
    weights_available: bool
    loaded: bool
    similarity: str
    description: str
    thresholds: tuple[Threshold, ...] = ()
    # "ready", "preparing" (state_detail: what it does), "failed" (state_detail: why), or
    # "idle" (prepared on its first request); "" from a server older than the field
    state: str = ""
    state_detail: str = ""

    def threshold(self, task: str, fpr: float) -> float | None:
        """The calibrated threshold for `task` at `fpr`, if measured."""
        for t in self.thresholds:
            if t.task == task and abs(t.fpr - fpr) < 1e-9:
                return t.score
        return None


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelInfo, ...]
    default_model: str  # what pair scoring uses by default
    collection_model: str = ""  # what embed (hence index, search) uses by default

    def get(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)

    def not_ready_reason(self) -> tuple[str, bool]:
        """Why a server whose health is NOT_SERVING is not ready, from its default model's
        state, and whether that is final (its preparation failed)."""
        info = self.get(self.default_model)
        if info is None or info.state in ("", "ready"):
            return "not serving (starting or shutting down)", False
        if info.state == "failed":
            return f"{info.name} failed: {info.state_detail}", True
        return f"preparing {info.name}: {info.state_detail or info.state}", False


@dataclass(frozen=True)
class ModelStats:
    model: str
    batches: int
    images_embedded: int
    mean_batch_size: float
    max_batch_size_seen: int
    mean_queue_ms: float
    mean_inference_ms: float


@dataclass(frozen=True)
class Stats:
    """The server's batching, cache and pair counters since it started."""

    models: tuple[ModelStats, ...]
    cache_hits: int
    cache_misses: int
    cache_entries: int
    cache_bytes: int
    pairs_scored: int
    pairs_failed: int
    queue_depth: int
    images_cancelled: int
