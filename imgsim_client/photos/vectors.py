"""A collection's vectors: `Vectors` (keys, matrix, model, similarity; one row per face for the
face model), the Parquet file `embed` writes, and the conversion from Embed results."""

from __future__ import annotations

from imgsim_client._extras import missing_extra

try:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
except ModuleNotFoundError as e:
    missing_extra(e, "index", "collections (embed, index, search, dedup)", {"numpy", "pyarrow"})

from dataclasses import dataclass, field
from pathlib import Path

from imgsim_client._csv import PairsFileError
from imgsim_client._extras import missing_extra
from imgsim_client.client import ImageResult
from imgsim_client.photos.files import display_path


@dataclass
class Vectors:
    """Embeddings with their keys (paths), model and similarity; rows that failed are kept
    apart in `errors` (key -> message)."""

    keys: list[str]
    matrix: np.ndarray  # (n, d) float32
    model: str
    similarity: str
    errors: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # key -> sha256 of its file's bytes
    # The face model: one row per face, so a key repeats; each row's face box (left, top,
    # right, bottom in the image's pixels). Empty for one-vector-per-image models.
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def write_parquet(vectors: Vectors, path: Path) -> None:
    """Columns path, model, vector (fixed-size list of float32), error, sha256, and for the
    face model box (one row per face); atomically."""
    n_ok, dim = vectors.matrix.shape if vectors.matrix.size else (0, 0)
    keys = vectors.keys + list(vectors.errors)
    flat = np.concatenate(
        [vectors.matrix.reshape(-1), np.zeros(len(vectors.errors) * dim, np.float32)]
    )
    vec = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim or 1)
    if not dim:  # nothing embedded: an all-null column of the right type
        vec = pa.nulls(len(keys), pa.list_(pa.float32(), 1))
    mask = pa.array([i >= n_ok for i in range(len(keys))])
    vec = pa.compute.if_else(mask, pa.scalar(None, vec.type), vec)
    table = pa.table(
        {
            "path": pa.array(keys, pa.string()),
            "model": pa.array([vectors.model] * len(keys), pa.string()),
            "vector": vec,
            "error": pa.array([""] * n_ok + list(vectors.errors.values()), pa.string()),
            "sha256": pa.array([vectors.digests.get(k, "") for k in keys], pa.string()),
        }
    )
    if vectors.boxes:  # the face model: which face of the image each row is
        boxes = [list(b) for b in vectors.boxes] + [None] * len(vectors.errors)
        table = table.append_column("box", pa.array(boxes, pa.list_(pa.int32(), 4)))
    table = table.replace_schema_metadata({"similarity": vectors.similarity})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parquet(path: Path) -> Vectors:
    """The vectors of a Parquet file written by `imgsim-client embed`."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    similarity = meta.get(b"similarity", b"cosine").decode()
    keys = table.column("path").to_pylist()
    errors_col = table.column("error").to_pylist()
    models = {m for m in table.column("model").to_pylist() if m}
    ok = [i for i, e in enumerate(errors_col) if not e]
    vec = table.column("vector").combine_chunks()
    if ok:
        dim = vec.type.list_size
        values = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        # flatten() drops null rows, so the values are the ok rows in order.
        matrix = np.ascontiguousarray(values, dtype=np.float32)
    else:
        matrix = np.zeros((0, 0), np.float32)
    errors = {keys[i]: errors_col[i] for i in range(len(keys)) if errors_col[i]}
    model = models.pop() if models else ""
    digests = {}
    if "sha256" in table.column_names:  # files written before digests have none
        digests = {k: d for k, d in zip(keys, table.column("sha256").to_pylist(), strict=True) if d}
    boxes = []
    if "box" in table.column_names:
        column = table.column("box").to_pylist()
        boxes = [tuple(column[i]) for i in ok]
    return Vectors([keys[i] for i in ok], matrix, model, similarity, errors, digests, boxes)


def to_vectors(results: dict[str, ImageResult], order: list[str]):
    """The results as index.Vectors (ok rows) plus errors, in `order`."""
    import numpy as np

    ok = [p for p in order if p in results and results[p].ok]
    errors = {
        display_path(p): f"{results[p].error_code.name}: {results[p].error}"
        for p in order
        if p in results and not results[p].ok
    }
    first = results[ok[0]] if ok else None
    models = {results[p].model for p in ok}
    if len(models) > 1:
        raise PairsFileError(
            f"the vectors come from several models ({', '.join(sorted(models))}); one file "
            "holds one model's vectors"
        )
    if first is not None and first.faces:  # the face model: one row per face
        rows = [(p, f) for p in ok for f in results[p].faces]
        return Vectors(
            [display_path(p) for p, _ in rows],
            np.array([f.vector for _, f in rows], dtype=np.float32),
            first.model,
            first.similarity,
            errors,
            boxes=[(f.box.left, f.box.top, f.box.right, f.box.bottom) for _, f in rows],
        )
    matrix = np.array([results[p].vector for p in ok], dtype=np.float32)
    return Vectors(
        [display_path(p) for p in ok],
        matrix if ok else np.zeros((0, 0), np.float32),
        first.model if first else "",
        first.similarity if first else "cosine",
        errors,
    )


def from_vectors(vectors) -> dict[str, ImageResult]:
    """Results to keep when resuming from an earlier vectors file."""
    if vectors.boxes:  # the face model: an image's rows are its faces
        from imgsim_client.types import Face, FaceBox

        faces: dict[str, list[Face]] = {}
        for key, row, box in zip(vectors.keys, vectors.matrix, vectors.boxes, strict=True):
            faces.setdefault(key, []).append(Face(FaceBox(*box), row.tolist()))
        return {
            key: ImageResult(key, f[0].vector, vectors.model, vectors.similarity, faces=tuple(f))
            for key, f in faces.items()
        }
    return {
        key: ImageResult(key, row.tolist(), vectors.model, vectors.similarity)
        for key, row in zip(vectors.keys, vectors.matrix, strict=True)
    }
