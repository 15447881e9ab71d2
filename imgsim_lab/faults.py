"""Bad inputs that a robust server must refuse per pair, for the tests and `make soak`."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def bomb_png(side: int = 20000) -> bytes:
    """A valid grayscale PNG of side x side zeros: tiny on disk, side^2 bytes when decoded.
    Built once per process (it takes a moment to compress)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """`img` saved in format `fmt` (a Pillow format name), as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def bad_inputs(photo: Image.Image) -> dict[str, tuple[bytes, str]]:
    """Kind -> (bytes, a fragment of the error message the server must give)."""
    jpeg = encode(photo.convert("RGB"), "JPEG", quality=90)
    return {
        "empty": (b"", "empty image bytes"),
        "random": (np.random.default_rng(0).bytes(5000), "not a decodable image"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "truncated"),
        "1x1": (encode(Image.new("RGB", (1, 1)), "PNG"), "smaller than"),
        "bomb": (bomb_png(), "pixels"),  # Pillow's guard or ours, both from the header
        "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a decodable"),
        "pdf": (encode(photo.convert("RGB"), "PDF"), "not a decodable"),
    }
