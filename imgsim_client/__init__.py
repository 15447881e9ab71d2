"""imgsim client: a Python API (`ImgsimClient`) and the `imgsim-client` CLI.

    from imgsim_client import ImgsimClient, PairRequest

    with ImgsimClient("127.0.0.1:50051") as client:
        score = client.compare(open("a.jpg", "rb").read(), open("b.jpg", "rb").read())

The names load lazily (PEP 562), so `imgsim-client --help` does not import grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "ImageRequest",
    "ImageResult",
    "ImgsimClient",
    "ImgsimError",
    "PairRequest",
    "PairResult",
]

if TYPE_CHECKING:
    from imgsim_client.client import (
        ImageRequest,
        ImageResult,
        ImgsimClient,
        ImgsimError,
        PairRequest,
        PairResult,
    )


def __getattr__(name: str):
    if name in __all__:
        from imgsim_client import client

        return getattr(client, name)
    raise AttributeError(f"module 'imgsim_client' has no attribute {name!r}")
