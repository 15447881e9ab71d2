"""imgsim client: a Python API (`ImgsimClient`) and the `imgsim-client` CLI.

    from imgsim_client import ImgsimClient, PairRequest

    with ImgsimClient("127.0.0.1:50051") as client:
        score = client.compare(open("a.jpg", "rb").read(), open("b.jpg", "rb").read())

Collections ([index] extra): `find_duplicates(vectors, min_similarity=...)`, `search(index,
queries, matrix, k)`, `match_against`, `verify_duplicates`, returning typed records
(`DuplicatePair`, `Match`), with `read_parquet`/`VectorIndex` for the vectors and the index.

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
# Collections: FAISS and numpy load only when one of these is used.
_COLLECTION = {
    "find_duplicates": "imgsim_client.collection",
    "match_against": "imgsim_client.collection",
    "search": "imgsim_client.collection",
    "verify_duplicates": "imgsim_client.collection",
    "DuplicatePair": "imgsim_client.collection",
    "Duplicates": "imgsim_client.collection",
    "Match": "imgsim_client.collection",
    "VectorIndex": "imgsim_client.index",
    "Vectors": "imgsim_client.index",
    "read_parquet": "imgsim_client.index",
}
__all__ += list(_COLLECTION)

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
    if name in _COLLECTION:
        import importlib

        return getattr(importlib.import_module(_COLLECTION[name]), name)
    if name in __all__:
        from imgsim_client import client

        return getattr(client, name)
    raise AttributeError(f"module 'imgsim_client' has no attribute {name!r}")
