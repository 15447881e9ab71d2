"""imgsim client: a Python API (`ImgsimClient`) and the `imgsim-client` CLI.

    from imgsim_client import ImgsimClient, PairRequest

    with ImgsimClient("127.0.0.1:50051") as client:
        score = client.compare(open("a.jpg", "rb").read(), open("b.jpg", "rb").read())

Collections (`imgsim_client.photos`, the [index] extra): `embed(paths)`, `dedup(paths)`,
`search_paths(index, queries)` take a client or an address, or with neither start a private
local server for the call (`local_server()` keeps one up across calls); `find_duplicates`,
`match_against`, `verify_duplicates` and `search` work on vectors, returning typed records
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
# Collections (imgsim_client.photos): FAISS and numpy load only when one of these is used.
_COLLECTION = {
    "find_duplicates": "imgsim_client.photos.dedup",
    "match_against": "imgsim_client.photos.dedup",
    "verify_duplicates": "imgsim_client.photos.dedup",
    "dedup": "imgsim_client.photos.dedup",
    "DuplicatePair": "imgsim_client.photos.dedup",
    "Duplicates": "imgsim_client.photos.dedup",
    "search": "imgsim_client.photos.search",
    "search_paths": "imgsim_client.photos.search",
    "Match": "imgsim_client.photos.search",
    "embed": "imgsim_client.photos.embed",
    "VectorIndex": "imgsim_client.photos.index",
    "Vectors": "imgsim_client.photos.vectors",
    "read_parquet": "imgsim_client.photos.vectors",
    "local_server": "imgsim_client.local",
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
