"""Where installed packages keep the real sample photos they ship (used for the demo set, tests,
benchmarks and int8 calibration; nothing is downloaded)."""

from __future__ import annotations

import importlib
from pathlib import Path


def package_data(package: str, *parts: str) -> Path | None:
    """The folder `parts` inside an installed package, or None if the package is absent."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(module.__file__).parent.joinpath(*parts)


def skimage_data() -> Path | None:
    return package_data("skimage", "data")


def sklearn_images() -> Path | None:
    return package_data("sklearn", "datasets", "images")


def matplotlib_sample_data() -> Path | None:
    return package_data("matplotlib", "mpl-data", "sample_data")
