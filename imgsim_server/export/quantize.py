"""int8 ONNX graphs: ONNX Runtime static quantisation (QDQ), calibrated on shipped photos.

Static rather than dynamic: dynamic quantisation only covers MatMul/Gemm-style ops well, while
this model is almost all convolutions, whose activations need calibrated scales. EfficientNet-Lite
was designed for int8 (ReLU6, no squeeze-excite), so per-channel weights with MinMax-calibrated
activations keep its embeddings close to fp32. The calibration set is the real photos shipped by
installed packages (scikit-image, scikit-learn, matplotlib) and their mirror images.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from imgsim_server.embedders._preprocess import Preset

log = logging.getLogger(__name__)


def package_photos() -> list[Path]:
    """The photos scikit-image and scikit-learn ship (found without importing either)."""
    paths: list[Path] = []
    for package, parts, patterns in (
        ("skimage", ("data",), ("*.png", "*.jpg")),
        ("sklearn", ("datasets", "images"), ("*.jpg",)),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
        paths += [p for pattern in patterns for p in sorted(folder.glob(pattern))]
    return paths


def calibration_batches(preset: Preset, photos: list[Path] | None = None) -> list[np.ndarray]:
    """uint8 NHWC batches of real photos (default: `package_photos()`) and their mirror
    images, preprocessed like the model's own preset."""
    from PIL import Image, ImageOps

    paths = package_photos() if photos is None else photos
    if not paths:
        raise ModuleNotFoundError(
            "int8 calibration uses the photos that scikit-image and scikit-learn ship; "
            'install them: python -m pip install "imgsim[torch]"'
        )
    xs = []
    for p in paths:
        try:
            img = Image.open(p).convert("RGB")
        except Exception:  # some skimage files are not photos Pillow reads
            continue
        if min(img.size) < 64:
            continue
        xs += [preset.apply(img), preset.apply(ImageOps.mirror(img))]
    return [np.stack(xs[i : i + 8]) for i in range(0, len(xs), 8)]


def quantize(fp32: Path, out: Path, preset: Preset) -> None:
    """Write a statically quantised (QDQ, int8, per-channel) copy of the fp32 graph."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches = calibration_batches(preset)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"pixels": batch}

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(staged),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        os.chmod(staged, 0o644)
        os.replace(staged, out)
    log.info("quantised %s -> %s with %d calibration batches", fp32.name, out.name, len(batches))
