"""Input pipelines (presets) of the registered models, in one place.

A preset resizes the shorter side and centre-crops with Pillow (as torchvision's Resize +
CenterCrop do), or squashes the whole image to the input size (`fit="full"`), and hands uint8
HWC pixels to the runtime; the network itself casts, normalises and transposes, so the
normalisation lives inside the exported ONNX graph.

Resize policies (registry suffixes, see `cnn.py`):
- margin (no suffix, EfficientNet-Lite's own evaluation): shorter side to crop + 32, centre crop;
- tight (`-224`, `-240`, `-260`): shorter side to the input size, centre crop, no margin;
- full (`-full`): the whole image resized to the input size, aspect ratio not kept, no crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite normalises 0..255 pixels as (x - 127) / 128.
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class Preset:
    """A model's own input pipeline: shorter side to `resize`, centre crop `crop`, then
    (x/255 - mean) / std inside the network."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BILINEAR
    fit: str = "crop"  # "crop": shorter side to `resize`, centre crop; "full": squash, no crop

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}; one of {', '.join(FITS)}")

    def apply(self, img: Image.Image) -> np.ndarray:
        """HWC uint8 of the network input. Resize-then-crop done as one resize of the source
        region that becomes the crop (Pillow's `box`): same geometry, a third of the work."""
        if self.fit == "full":
            return np.asarray(img.resize((self.crop, self.crop), self.resample), np.uint8)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        rw, rh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        left, top = round((rw - self.crop) / 2.0), round((rh - self.crop) / 2.0)
        sx, sy = w / rw, h / rh  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        out = img.resize((self.crop, self.crop), self.resample, box=box)
        return np.asarray(out, np.uint8)

    def to_dict(self) -> dict:
        """JSON-ready form, recorded beside an exported graph and checked when it is served
        (`fit` only where it is not the default crop, so older manifests still match)."""
        out = {
            "resize": self.resize,
            "crop": self.crop,
            "mean": [round(v, 6) for v in self.mean],
            "std": [round(v, 6) for v in self.std],
            "resample": self.resample.name.lower(),
        }
        if self.fit != "crop":
            out["fit"] = self.fit
        return out

    def describe(self) -> str:
        """The geometry in words, for model descriptions."""
        if self.fit == "full":
            return f"whole image resized to {self.crop}x{self.crop}, no crop"
        return f"shorter side to {self.resize}, centre crop {self.crop}"

    def with_policy(self, policy: str) -> Preset:
        """This preset under another resize policy (a key of RESIZE_POLICIES)."""
        return RESIZE_POLICIES[policy](self)


FITS = ("crop", "full")


# EfficientNet-Lite's own evaluation pipeline: resize to the input size + 32, centre crop.
LITE0 = Preset(resize=256, crop=224, mean=TF_LITE_MEAN, std=TF_LITE_STD)
LITE1 = Preset(resize=272, crop=240, mean=TF_LITE_MEAN, std=TF_LITE_STD)
LITE2 = Preset(resize=292, crop=260, mean=TF_LITE_MEAN, std=TF_LITE_STD)
RESNET18 = Preset(256, 224, IMAGENET_MEAN, IMAGENET_STD)
RESNET50 = Preset(232, 224, IMAGENET_MEAN, IMAGENET_STD)
EFFICIENTNET_B0 = Preset(256, 224, IMAGENET_MEAN, IMAGENET_STD, Image.Resampling.BICUBIC)


# Resize policy -> how it changes a model's own preset (its name suffix: `cnn.variant_name`).
RESIZE_POLICIES = {
    "margin": lambda p: p,
    "tight": lambda p: replace(p, resize=p.crop),
    "full": lambda p: replace(p, resize=p.crop, fit="full"),
}
