"""Where weights files are: one locator per `WeightSource.kind`. Nothing is downloaded."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from imgsim_server.embedders._cfg import EmbedderOptions, ModelCfg
from imgsim_server.errors import WeightsUnavailableError


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else ~/.cache/torch/hub."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub"


def _imported(ref: str):
    """The attribute a `module:name` reference names, or None when the package is absent."""
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


def _absent(ref: str) -> Path:
    module = ref.partition(":")[0]
    return Path(f"<package {module.replace('_', '-')} not installed>")


def _package_file(ref: str) -> Path:
    """The file that a weights package's class `module:Class` names."""
    files = _imported(ref)
    return Path(files.get_model_file_path()) if files is not None else _absent(ref)


def _hub_file(ref: str) -> Path:
    return torch_hub_dir() / "checkpoints" / ref


def _function_file(ref: str) -> Path:
    """The file that a package's function `module:function` returns the path of."""
    where = _imported(ref)
    return Path(where()) if where is not None else _absent(ref)


LOCATORS: dict[str, Callable[[str], Path]] = {
    "package": _package_file,
    "torch_hub": _hub_file,
    "function": _function_file,
}


def weights_path(cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
    """The weights file this model would load (`--weights` first), or None if it needs none."""
    if cfg.weights is None:
        return None
    if opts.weights_file is not None:
        return Path(opts.weights_file)
    return LOCATORS[cfg.weights.kind](cfg.weights.ref)


def weights_available(cfg: ModelCfg, opts: EmbedderOptions) -> bool:
    path = weights_path(cfg, opts)
    return path is None or path.is_file()


def require_weights(cfg: ModelCfg, opts: EmbedderOptions) -> Path:
    """The weights file, or WeightsUnavailableError naming where it was looked for."""
    path = weights_path(cfg, opts)
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"weights for model {cfg.name!r} not found: looked for {path} "
            f"({cfg.weights_source}). Put the file there or pass --weights {cfg.name}=FILE."
        )
    return path
