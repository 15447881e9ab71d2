"""The torch side of the CNN embedders: networks, pooling, weight loading, ONNX export.

Imported only when a model runs on torch or its ONNX graph must be exported, so that an ONNX
server never loads torch (about 640 MiB of resident memory). Needs the `[torch]` extra.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from imgsim_server.embedders._cfg import EmbedderOptions, ModelCfg

try:
    import torch
    from torch import nn
except ModuleNotFoundError as e:
    if e.name != "torch":  # a deeper breakage surfaces unchanged
        raise
    raise ModuleNotFoundError(f'{e}\n\n  python -m pip install "imgsim[torch]"') from e


def gem_pool(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over H, W (Radenović et al. 2018): p=1 is average, p→∞ is max."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def avg_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(-2, -1))


def mac_pool(x: torch.Tensor) -> torch.Tensor:
    """Max over H, W (MAC, Tolias et al. 2016)."""
    return x.amax(dim=(-2, -1))


def rmac_regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of R-MAC's square regions on an h x w map (Tolias et al.
    2016): at level l, an l x l grid of squares of side 2*min(h, w)/(l+1), evenly spread, so
    that neighbours overlap (about 40% at level 3 on a square map)."""
    out = []
    for level in range(1, levels + 1):
        side = max(1, round(2 * min(h, w) / (level + 1)))
        tops, lefts = _positions(h, side, level), _positions(w, side, level)
        out += [(t, left, side, side) for t in tops for left in lefts]
    return out


def _positions(length: int, side: int, n: int) -> list[int]:
    if n <= 1 or length <= side:
        return [max(0, (length - side) // 2)]
    step = (length - side) / (n - 1)
    return [round(i * step) for i in range(n)]


def rmac_pool(x: torch.Tensor) -> torch.Tensor:
    """R-MAC: the sum of the L2-normalised MAC of each region (and of the whole map)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed by the graph's input size
    out = nn.functional.normalize(mac_pool(x), dim=1)
    for top, left, rh, rw in rmac_regions(h, w):
        region = x[:, :, top : top + rh, left : left + rw]
        out = out + nn.functional.normalize(mac_pool(region), dim=1)
    return out


POOLINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": avg_pool,
    "gem": gem_pool,
    "mac": mac_pool,
    "rmac": rmac_pool,
}


class EmbedNet(nn.Module):
    """uint8 NHWC pixels -> normalised input -> trunk -> pooled, L2-normalised embedding.

    With several `scales`, the input is also resized by each factor inside the graph, and the
    L2-normalised descriptors of all scales are summed (multi-scale, Radenović et al. 2018)."""

    def __init__(
        self,
        trunk: nn.Module,
        mean: tuple,
        std: tuple,
        pooling: str,
        scales: tuple[float, ...] = (1.0,),
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = POOLINGS[pooling]
        self.scales = tuple(scales)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        out = None
        for scale in self.scales:
            xs = x
            if scale != 1.0:
                xs = nn.functional.interpolate(
                    x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=False
                )
            d = nn.functional.normalize(self.pool(self.trunk(xs)), dim=1)
            out = d if out is None else out + d
        return nn.functional.normalize(out, dim=1)


class TorchRunner:
    """Runs an EmbedNet on CPU (channels_last) or CUDA (fp16 autocast, pinned host memory)."""

    def __init__(self, net: EmbedNet, device: str) -> None:
        self.device = torch.device(device)
        self.net = net.eval().to(self.device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16):
                out = self.net(x)
            return out.float().cpu().numpy()
        return self.net(x).numpy()


class _Lite0Trunk(nn.Module):
    """EfficientNet-Lite's convolutional trunk (stem, blocks, head conv), without pool and FC."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def lite0_trunk(arch: str, weights: Path) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(arch)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # Do not call net.set_swish(): Lite models use ReLU6, which set_swish would replace.
    return _Lite0Trunk(net)


def torchvision_trunk(arch: str, weights: Path) -> nn.Module:
    """A torchvision ImageNet model up to its last feature map (no global pool, no classifier)."""
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if arch.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2])
    return net.features


# How each family's trunk is built: (arch, weights file) -> module up to the last feature map.
TRUNKS: dict[str, Callable[[str, Path], nn.Module]] = {
    "lite0": lite0_trunk,
    "torchvision": torchvision_trunk,
}


def export_onnx(net: nn.Module, input_size: int, path: Path) -> None:
    """Export `net` (uint8 NHWC input, dynamic batch) to `path`, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                net.cpu().eval(),
                (example,),
                tmp,
                input_names=["pixels"],
                output_names=["embedding"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server may run as another user
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_net(cfg: ModelCfg, opts: EmbedderOptions) -> EmbedNet:
    """The torch EmbedNet of a registered CNN (needs its weights file)."""
    from imgsim_server.embedders._weights import require_weights

    path = require_weights(cfg, opts)
    preset = cfg.preset
    trunk = TRUNKS[cfg.trunk](cfg.architecture, path)
    return EmbedNet(trunk, preset.mean, preset.std, cfg.pooling, cfg.scales)
