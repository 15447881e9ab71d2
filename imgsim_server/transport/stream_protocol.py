"""The stream protocol: images sent once per stream with an `id`, referred to by `ref` later.

This is transport state, not the core's: the core receives image bytes and returns scores.
A `StreamSession` lives as long as one stream; its table is bounded in bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgsim_server.errors import InvalidRequestError, OverloadedError


@dataclass(frozen=True)
class ImageSpec:
    """An image as a request names it: bytes, or a reference to bytes sent earlier."""

    data: bytes | None = None
    ref: str = ""
    id: str = ""


class StreamSession:
    """Per-stream state: the table of images sent with an `id`, for later `ref`s."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._images: dict[str, bytes] = {}
        self._bytes = 0

    def resolve(self, spec: ImageSpec, which: str) -> bytes:
        """The bytes a spec stands for; records specs that carry an id."""
        if spec.ref:
            try:
                return self._images[spec.ref]
            except KeyError:
                raise InvalidRequestError(
                    f"{which}: reference {spec.ref!r} names no image sent earlier in this stream"
                ) from None
        if spec.data is None:
            raise InvalidRequestError(f"{which}: no image given (set data or ref)")
        if spec.id and spec.id not in self._images:
            if self._bytes + len(spec.data) > self.max_bytes:
                raise OverloadedError(
                    f"{which}: this stream's image table is full ({self.max_bytes} bytes)"
                )
            self._images[spec.id] = spec.data
            self._bytes += len(spec.data)
        return spec.data
