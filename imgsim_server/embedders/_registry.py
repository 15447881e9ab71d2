"""The embedder registry: `register`, `create`, `get_cfg`, `list_models` (after timm's _registry).

A leaf module: it imports the cfg types and the errors, never a family. Families register
themselves on import, and the package `__init__` imports them, so the registry is complete as
soon as `imgsim_server.embedders` is imported. Callers never branch on model names.
"""

from __future__ import annotations

from collections.abc import Callable

from imgsim_server.embedders._cfg import SIMILARITIES, Embedder, EmbedderOptions, ModelCfg
from imgsim_server.errors import ModelNotFoundError

Builder = Callable[[ModelCfg, EmbedderOptions], Embedder]

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


def list_models() -> list[ModelCfg]:
    """All registered models, in registration order."""
    return [cfg for cfg, _ in _REGISTRY.values()]
