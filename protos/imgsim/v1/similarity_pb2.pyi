from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Image(_message.Message):
    __slots__ = ("data", "ref", "id")
    DATA_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    ref: str
    id: str
    def __init__(self, data: _Optional[bytes] = ..., ref: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("pair_id", "image_a", "image_b", "model", "verify")
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_A_FIELD_NUMBER: _ClassVar[int]
    IMAGE_B_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    pair_id: str
    image_a: Image
    image_b: Image
    model: str
    verify: bool
    def __init__(self, pair_id: _Optional[str] = ..., image_a: _Optional[_Union[Image, _Mapping]] = ..., image_b: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ..., verify: _Optional[bool] = ...) -> None: ...

class PairError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("pair_id", "score", "model", "error", "verdict", "inliers", "verified", "verification", "face_a", "face_b")
    PAIR_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    INLIERS_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    FACE_A_FIELD_NUMBER: _ClassVar[int]
    FACE_B_FIELD_NUMBER: _ClassVar[int]
    pair_id: str
    score: float
    model: str
    error: PairError
    verdict: str
    inliers: int
    verified: bool
    verification: str
    face_a: FaceBox
    face_b: FaceBox
    def __init__(self, pair_id: _Optional[str] = ..., score: _Optional[float] = ..., model: _Optional[str] = ..., error: _Optional[_Union[PairError, _Mapping]] = ..., verdict: _Optional[str] = ..., inliers: _Optional[int] = ..., verified: _Optional[bool] = ..., verification: _Optional[str] = ..., face_a: _Optional[_Union[FaceBox, _Mapping]] = ..., face_b: _Optional[_Union[FaceBox, _Mapping]] = ...) -> None: ...

class FaceBox(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("box", "vector")
    BOX_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    box: FaceBox
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, box: _Optional[_Union[FaceBox, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("image_id", "image", "model")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    image: Image
    model: str
    def __init__(self, image_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("image_id", "model", "vector", "dimension", "similarity", "error", "faces")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    model: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    dimension: int
    similarity: str
    error: PairError
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    def __init__(self, image_id: _Optional[str] = ..., model: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., dimension: _Optional[int] = ..., similarity: _Optional[str] = ..., error: _Optional[_Union[PairError, _Mapping]] = ..., faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "embedding_dim", "input_size", "weights_source", "weights_available", "loaded", "similarity", "description", "thresholds", "state", "state_detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    embedding_dim: int
    input_size: int
    weights_source: str
    weights_available: bool
    loaded: bool
    similarity: str
    description: str
    thresholds: _containers.RepeatedCompositeFieldContainer[Threshold]
    state: str
    state_detail: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., input_size: _Optional[int] = ..., weights_source: _Optional[str] = ..., weights_available: _Optional[bool] = ..., loaded: _Optional[bool] = ..., similarity: _Optional[str] = ..., description: _Optional[str] = ..., thresholds: _Optional[_Iterable[_Union[Threshold, _Mapping]]] = ..., state: _Optional[str] = ..., state_detail: _Optional[str] = ...) -> None: ...

class Threshold(_message.Message):
    __slots__ = ("task", "dataset", "fpr", "score", "low", "high", "tpr")
    TASK_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FPR_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    TPR_FIELD_NUMBER: _ClassVar[int]
    task: str
    dataset: str
    fpr: float
    score: float
    low: float
    high: float
    tpr: float
    def __init__(self, task: _Optional[str] = ..., dataset: _Optional[str] = ..., fpr: _Optional[float] = ..., score: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., tpr: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model", "collection_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    collection_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ..., collection_model: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model", "batches", "images_embedded", "mean_batch_size", "max_batch_size_seen", "mean_queue_ms", "mean_inference_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_SEEN_FIELD_NUMBER: _ClassVar[int]
    MEAN_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    batches: int
    images_embedded: int
    mean_batch_size: float
    max_batch_size_seen: int
    mean_queue_ms: float
    mean_inference_ms: float
    def __init__(self, model: _Optional[str] = ..., batches: _Optional[int] = ..., images_embedded: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., max_batch_size_seen: _Optional[int] = ..., mean_queue_ms: _Optional[float] = ..., mean_inference_ms: _Optional[float] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("models", "cache_hits", "cache_misses", "cache_entries", "cache_bytes", "pairs_scored", "pairs_failed", "queue_depth", "images_cancelled")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_SCORED_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FAILED_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IMAGES_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    cache_hits: int
    cache_misses: int
    cache_entries: int
    cache_bytes: int
    pairs_scored: int
    pairs_failed: int
    queue_depth: int
    images_cancelled: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., cache_entries: _Optional[int] = ..., cache_bytes: _Optional[int] = ..., pairs_scored: _Optional[int] = ..., pairs_failed: _Optional[int] = ..., queue_depth: _Optional[int] = ..., images_cancelled: _Optional[int] = ...) -> None: ...
