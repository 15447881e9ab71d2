"""Exported ONNX graphs of the CNNs: their names, locations and manifests, and which one a
model serves from. Finding a graph never builds one (`imgsim_server.export` does)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imgsim_server.embedders import _onnx
from imgsim_server.embedders._cfg import EmbedderOptions, ModelCfg
from imgsim_server.embedders._weights import weights_path


def resolved_backend(opts: EmbedderOptions) -> str:
    """The runtime CNNs run on: 'auto' picks ONNX Runtime on CPU (when installed), else torch."""
    if opts.backend != "auto":
        return opts.backend
    return "onnx" if opts.device == "cpu" and _onnx.installed("onnxruntime") else "torch"


def can_export() -> bool:
    """Whether this install can export graphs (the `[torch]` extra)."""
    return _onnx.installed("torch") and _onnx.installed("onnx")


def _weights_key(path: Path) -> str:
    return f"{path.name}-{path.stat().st_size}"


def expected_manifest(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> dict:
    """What the manifest of this model's exported graph must say."""
    weights = weights_path(cfg, opts)
    return {
        "model": cfg.graph_name,
        "precision": precision,
        "embedding_dim": cfg.embedding_dim,
        "input_size": cfg.input_size,
        "preprocessing": cfg.preset.to_dict() if cfg.preset else None,
        "pooling": cfg.pooling if cfg.scales == (1.0,) else f"{cfg.pooling} x{list(cfg.scales)}",
        "weights": _weights_key(weights) if weights and weights.is_file() else None,
    }


def graph_location(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> tuple[Path, Path]:
    """(graph, manifest) paths for this model: `--onnx-dir` holds one graph per model and
    precision; the cache keeps graphs of `--weights` files apart from the default weights'."""
    if opts.onnx_dir is not None:
        return _onnx.graph_files(opts.onnx_dir, cfg.graph_name, precision)
    tag = ""
    if opts.weights_file is not None:
        tag = hashlib.sha256(str(Path(opts.weights_file).resolve()).encode()).hexdigest()[:10]
    return _onnx.graph_files(_onnx.cache_dir(), cfg.graph_name, precision, tag)


def find_graph(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> tuple[Path | None, str]:
    """The exported graph this model serves from, or (None, why not)."""
    expected = expected_manifest(cfg, opts, precision)
    # The weights are compared when they are known and either chosen by hand or re-exportable.
    check = expected["weights"] is not None and (can_export() or opts.weights_file is not None)
    return _onnx.find_graph(graph_location(cfg, opts, precision)[0], expected, check)


def served_graph(cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
    """The graph this model would be served from under `opts` (None on torch, or if absent)."""
    if resolved_backend(opts) != "onnx":
        return None
    return find_graph(cfg, opts, opts.precision)[0]
