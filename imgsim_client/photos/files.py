"""Which files a collection is, and how they are read: folders and lists of images, the
paths shown to users, turned copies for rotation-invariant queries, and content digests."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from imgsim_client._csv import PairsFileError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif",
              ".avif"}  # fmt: skip


def pillow():
    """PIL.Image, able to open HEIC/HEIF where pillow-heif is installed (the [index] extra):
    the client turns queries and verifies files itself."""
    from PIL import Image

    try:
        import pillow_heif
    except ModuleNotFoundError:
        return Image
    pillow_heif.register_heif_opener()
    return Image


def list_images(paths: list[Path]) -> list[str]:
    """Image paths from files, folders (recursive, by extension) and lists (a .csv with a
    `path` column or one path per line in a .txt), each once, in the order given."""
    out: list[str] = []
    for p in paths:
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        elif p.suffix.lower() == ".csv":
            with p.open(newline="") as fh:
                reader = csv.DictReader(fh)
                col = "path" if "path" in (reader.fieldnames or []) else reader.fieldnames[0]
                out += [_relative_to(p, row[col]) for row in reader if row[col]]
        elif p.suffix.lower() == ".txt":
            out += [
                _relative_to(p, line.strip()) for line in p.read_text().splitlines() if line.strip()
            ]
        elif p.is_file():
            out.append(str(p))
        else:
            raise PairsFileError(f"no such file or folder: {p}")
    return list(dict.fromkeys(out))


def display_path(path: str) -> str:
    """A path as text any file format can hold: a name that is not valid UTF-8 (Python keeps
    its bytes as surrogate escapes) gets backslash escapes instead, e.g. `caf\\xe9.jpg`."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _relative_to(listing: Path, path: str) -> str:
    return path if os.path.isabs(path) else str(listing.parent / path)


def rotated(data: bytes, degrees: int, mirror: bool = False) -> bytes:
    """The image (after its EXIF orientation) mirrored if asked, then turned by `degrees`
    counter-clockwise, as PNG (lossless)."""
    import io

    from PIL import ImageOps

    with pillow().open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
        turned = (ImageOps.mirror(upright) if mirror else upright).rotate(degrees, expand=True)
    out = io.BytesIO()
    turned.save(out, "PNG", compress_level=1)
    return out.getvalue()


class Digests:
    """A `read` for `photos.embed_paths` that keeps the sha256 of every file it reads, so
    that the digests cost no second read."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}

    def __call__(self, path: str) -> bytes:
        data = Path(path).read_bytes()
        self.of[path] = hashlib.sha256(data).hexdigest()
        return data


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
