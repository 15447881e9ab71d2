"""The stream protocol: images sent once per stream with an `id`, referred to by `ref` later.

This is transport state, not the core's: the core receives image bytes and returns scores.
A `StreamSession` lives as long as one stream; its table is bounded in bytes, per stream and
by the server-wide memory budget, and given back when the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgsim_server.core.engines import bounded_name
from imgsim_server.errors import InvalidRequestError, OverloadedError
from imgsim_server.memory import Charge, MemoryBudget


@dataclass(frozen=True)
class ImageSpec:
    """An image as a request names it: bytes, or a reference to bytes sent earlier."""

    data: bytes | None = None
    ref: str = ""
    id: str = ""


class StreamSession:
    """Per-stream state: the table of images sent with an `id`, for later `ref`s."""

    def __init__(
        self, max_bytes: int = 512 * 1024 * 1024, budget: MemoryBudget | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self._images: dict[str, bytes] = {}
        self._bytes = 0
        self.charge = Charge(budget)

    def close(self) -> None:
        """Drop the table and give its bytes back to the budget."""
        self._images.clear()
        self.charge.release()

    def resolve(self, spec: ImageSpec, which: str) -> bytes:
        """The bytes a spec stands for; records specs that carry an id. An id already defined
        with other bytes is refused (the first definition stays)."""
        if spec.ref:
            try:
                return self._images[spec.ref]
            except KeyError:
                raise InvalidRequestError(
                    f"{which}: reference {bounded_name(spec.ref)!r} names no image sent earlier "
                    "in this stream"
                ) from None
        if spec.data is None:
            raise InvalidRequestError(f"{which}: no image given (set data or ref)")
        if spec.id:
            known = self._images.get(spec.id)
            if known is not None:
                if known != spec.data:  # a memcmp: cheap even for large images
                    raise InvalidRequestError(
                        f"{which}: image id {bounded_name(spec.id)!r} was already defined in "
                        "this stream with other bytes; ids name one image per stream"
                    )
                return spec.data
            if self._bytes + len(spec.data) > self.max_bytes:
                raise OverloadedError(
                    f"{which}: this stream's image table is full ({self.max_bytes} bytes)"
                )
            self.charge.add(len(spec.data), f"{which}: keeping image {bounded_name(spec.id)!r}")
            self._images[spec.id] = spec.data
            self._bytes += len(spec.data)
        return spec.data
