"""Image decoding with Pillow: allowlisted formats, pixel limits, EXIF orientation, RGB output."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from imgsim_server.errors import ImageTooLargeError, InvalidImageError


def _phone_formats() -> tuple[str, ...]:
    """AVIF where this Pillow has it (its wheels do), HEIC/HEIF where pillow-heif is installed
    (the [server] extra): the formats of phone cameras."""
    from PIL import features

    out = ("AVIF",) if features.check("avif") else ()
    try:
        import pillow_heif
    except ModuleNotFoundError:
        return out
    pillow_heif.register_heif_opener()
    return (*out, "HEIF")


# Formats Pillow may parse. Everything else (EPS, PDF, FITS, ...) is refused before decoding.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", *_phone_formats())


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds applied before any pixel is decoded."""

    max_pixels: int = 64_000_000
    min_side: int = 2


def decode_image(
    data: bytes,
    limits: DecodeLimits = DecodeLimits(),
    draft_size: int | None = None,
    reserve: Callable[[int, int], None] | None = None,
) -> Image.Image:
    """Decode encoded bytes into an RGB image with EXIF orientation applied.

    The size is checked from the header, before any pixel is decoded. Multi-frame files
    (animated GIF/WebP, multi-page TIFF) give their first frame.

    `draft_size` lets JPEG decode at a reduced scale (Pillow draft mode) when the file is much
    larger than the model input. `reserve(width, height)` is called with the size about to be
    decoded, before any pixel is, and may refuse by raising (the memory budget does). Raises
    InvalidImageError with a message naming the problem.
    """
    if not data:
        raise InvalidImageError("empty image bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"not a decodable image in an allowed format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Exception as exc:  # Pillow raises several types on malformed headers
        raise InvalidImageError(f"unreadable image header: {exc}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError(f"image is {width}x{height}, smaller than {limits.min_side} pixels")
    try:
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
    except Exception as exc:
        raise InvalidImageError(f"corrupt or truncated {img.format} image: {exc}") from None
    if reserve is not None:
        reserve(*img.size)
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy when upright
        return to_rgb(img)
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError(f"corrupt or truncated {img.format} image: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white, 16-bit is rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the image's own range.
        lo, hi = img.getextrema()
        scale = 255.0 / max(1, hi - lo)
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")
