"""Search: the nearest indexed images of each query (its best turned version), and for an
index of faces, the photos whose faces best match the query's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgsim_client.client import ImageResult


@dataclass(frozen=True)
class Match:
    """One hit of a search: the query, its rank (1 = nearest), the indexed path, the score."""

    query: str
    rank: int
    path: str
    score: float


def search(index, queries: list[str], matrix, k: int = 10, qe_k: int | None = None) -> list[Match]:
    """The `k` nearest indexed images of each query. `matrix`: their vectors, in order, as
    (n, d), or (R, n, d) for R versions of each (its rotations: an indexed image scores its
    best version). The index's recorded query expansion applies (`VectorIndex.query`), or
    `qe_k` neighbours' if given."""
    if not queries:
        return []
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    out = []
    sims, ids = index.query(matrix, k, qe_k)
    for q, srow, irow in zip(queries, sims, ids, strict=True):
        hits = [(float(s), int(i)) for s, i in zip(srow, irow, strict=True) if i >= 0]
        out += [Match(q, rank, index.keys[i], s) for rank, (s, i) in enumerate(hits, 1)]
    return out


def search_faces(index, results: dict[str, ImageResult], k: int = 10) -> list[Match]:
    """The `k` indexed photos nearest to each query photo's faces, for an index of faces (one
    row per face): each face of a query against every indexed face; a photo scores its best
    face against the query's best. Queries without a face are left out (their results say
    why)."""
    import numpy as np

    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    queries = [q for q, r in results.items() if r.ok and r.faces]
    faces = [(q, f) for q in queries for f in results[q].faces]
    if not faces:
        return []
    matrix = np.array([f.vector for _, f in faces], dtype=np.float32)
    # Enough face hits that k photos remain once the faces of one photo are merged.
    sims, ids = index.query(matrix[None], min(index.params.count, 4 * k))
    best: dict[str, dict[str, float]] = {q: {} for q in queries}
    for (q, _), srow, irow in zip(faces, sims, ids, strict=True):
        for s, i in zip(srow, irow, strict=True):
            if i >= 0:
                path = index.keys[int(i)]
                best[q][path] = max(best[q].get(path, -1.0), float(s))
    out = []
    for q in queries:
        ranked = sorted(best[q].items(), key=lambda kv: -kv[1])[:k]
        out += [Match(q, rank, path, s) for rank, (path, s) in enumerate(ranked, 1)]
    return out


def search_paths(
    index,
    queries: list[str | Path],
    client=None,
    *,
    model: str = "",
    k: int = 10,
    rotations: tuple[tuple[int, bool], ...] | None = None,
    qe_k: int | None = None,
    progress: bool = False,
) -> tuple[list[Match], dict[str, str]]:
    """The `k` nearest indexed photos of each query image (files, folders, lists), embedded
    with the index's model in each of `rotations` (default: the index's search default), or
    for an index of faces, by their faces. Returns the matches and the queries that failed
    (path -> why). `client`: an ImgsimClient, an address, or None for a private local
    server for the call."""
    import numpy as np

    from imgsim_client.local import connected
    from imgsim_client.photos.defaults import SEARCH_ROTATIONS
    from imgsim_client.photos.embed import VERSIONS, embed_paths, embed_rotations
    from imgsim_client.photos.files import list_images

    found = list_images([Path(p) for p in queries])
    faces = index.params.similarity == "face"  # an index of faces: its queries' faces
    rotations = rotations or VERSIONS[SEARCH_ROTATIONS]
    with connected(client) as c:
        model = model or index.params.model
        if faces:
            results = embed_paths(c, found, model, progress)
            per = {q: [results[q]] for q in found}
        else:
            per = embed_rotations(c, found, model, rotations, progress)
    ok = [q for q in found if all(r.ok for r in per[q])]
    failed = {q: next(r.error for r in per[q] if not r.ok) for q in found if q not in ok}
    if faces:
        return search_faces(index, {q: per[q][0] for q in ok}, k), failed
    versions = np.array([[per[q][i].vector for q in ok] for i in range(len(rotations))])
    return search(index, ok, versions, k, qe_k), failed
