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


# Real photos that installed packages ship (scikit-image, scikit-learn, matplotlib).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    "moon.png",
    "page.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "text.png",
)


def shipped_photos() -> list[Path]:
    """Paths of the real photos shipped by installed packages (those found)."""
    paths: list[Path] = []
    if data := skimage_data():
        paths += [data / n for n in SKIMAGE_PHOTOS if (data / n).is_file()]
    if images := sklearn_images():
        paths += sorted(images.glob("*.jpg"))
    if (sample := matplotlib_sample_data()) and (sample / "grace_hopper.jpg").is_file():
        paths.append(sample / "grace_hopper.jpg")
    return paths
