"""Embedders: CNN backbones and classical baselines behind one registry.

Importing this package registers every family (cnn, classical, face) and loads no runtime:
torch, ONNX Runtime and dlib are imported by a builder when a model is created.
"""

from imgsim_server.embedders import classical, cnn, face  # noqa: F401  (registers the families)
from imgsim_server.embedders._cfg import (
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    ModelCfg,
    WeightSource,
)
from imgsim_server.embedders._registry import artifact, create, get_cfg, list_models, register
from imgsim_server.embedders._weights import weights_available, weights_path

__all__ = [
    "SIMILARITIES",
    "Embedder",
    "EmbedderOptions",
    "ModelCfg",
    "WeightSource",
    "artifact",
    "create",
    "get_cfg",
    "list_models",
    "register",
    "weights_available",
    "weights_path",
]
