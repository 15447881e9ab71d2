"""The embedder registry: `register`, `create`, `get_cfg`, `list_models` (after timm's _registry).

A leaf module: it imports the cfg types and the errors, never a family. Families register
themselves on import, and the package `__init__` imports them, so the registry is complete as
soon as `imgsim_server.embedders` is imported. Callers never branch on model names.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from imgsim_server.embedders._cfg import SIMILARITIES, Embedder, EmbedderOptions, ModelCfg
from imgsim_server.embedders._weights import weights_available
from imgsim_server.errors import ModelNotFoundError

Builder = type[Embedder]  # its constructor builds (and loads) one; `artifact` finds its file

_REGISTRY: dict[str, tuple[ModelCfg, Builder]] = {}


def register(cfg: ModelCfg, builder: Builder) -> None:
    """Add a model to the registry."""
    if cfg.name in _REGISTRY:
        raise ValueError(f"model {cfg.name!r} is already registered")
    if cfg.similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {cfg.similarity!r} for {cfg.name!r}")
    _REGISTRY[cfg.name] = (cfg, builder)


def get_cfg(name: str) -> ModelCfg:
    """The config of a registered model; ModelNotFoundError if there is none."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def create(name: str, opts: EmbedderOptions | None = None) -> Embedder:
    """Build (and load) the named embedder; its builder loads the runtime it needs."""
    cfg = get_cfg(name)
    return _REGISTRY[name][1](cfg, opts or EmbedderOptions())


def artifact(cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
    """The ready-to-serve file (an exported graph) that `cfg` would load under `opts`, if any."""
    return _REGISTRY[cfg.name][1].artifact(cfg, opts)


def list_models(
    pattern: str = "", kind: str = "", available: bool = False, opts: EmbedderOptions | None = None
) -> list[ModelCfg]:
    """Registered models in registration order (timm's `list_models`): names matching the
    shell-style `pattern`, of `kind`, and with `available` only those that can load under
    `opts` (their weights or exported graph present)."""
    opts = opts or EmbedderOptions()
    out = []
    for cfg, builder in _REGISTRY.values():
        if pattern and not fnmatch.fnmatchcase(cfg.name, pattern):
            continue
        if kind and cfg.kind != kind:
            continue
        if available and not (
            weights_available(cfg, opts) or builder.artifact(cfg, opts) is not None
        ):
            continue
        out.append(cfg)
    return out
