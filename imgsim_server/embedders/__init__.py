"""Embedders: CNN backbones and classical baselines behind one registry."""

from imgsim_server.embedders.registry import (
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    ModelCfg,
    create,
    get_cfg,
    list_models,
    register,
)

__all__ = [
    "SIMILARITIES",
    "Embedder",
    "EmbedderOptions",
    "ModelCfg",
    "create",
    "get_cfg",
    "list_models",
    "register",
]
