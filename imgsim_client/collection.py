"""Collections: embed folders of images, search them, find their near-duplicates.

    imgsim-client embed photos/ -o vectors.parquet          # every image once, via the server
    imgsim-client index vectors.parquet -o photos.index/    # exact below 50k vectors, else IVF
    imgsim-client search photos.index/ query.jpg -k 10 -o hits.csv
    imgsim-client dedup photos/ -o duplicates.csv           # every pair >= the threshold, groups

Embedding goes through the server's Embed stream (dynamic batching, cache); the index is FAISS
(`index.py`). Needs the `[index]` extra.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from imgsim_client.client import ImageRequest, ImageResult, ImgsimClient, ImgsimError
from imgsim_client.scoring import PairsFileError, RetryPolicy

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

# Default dedup thresholds (cosine or hamming similarity), per model: the F1-maximising
# threshold on near-duplicate edits of real photos, measured by `make bench-collections`
# (results/collections.md). Other models use the server's calibrated near-duplicate threshold
# at 0.1% FPR (ListModels), which for efficientnet-lite0 is close to its F1-best 0.80.
DEDUP_THRESHOLDS = {
    "efficientnet-lite0": 0.80,  # P 0.85, R 0.79, F1 0.82
    "efficientnet-lite0-gem": 0.80,  # P 0.93, R 0.85, F1 0.89
    "phash": 0.76,  # P 0.91, R 0.55, F1 0.68
    "color-hist": 0.96,  # P 0.86, R 0.57, F1 0.68
    "pixels": 0.71,  # P 0.79, R 0.55, F1 0.65
}


def calibrated_threshold(listing, model: str, task: str, fpr: float) -> float | None:
    """The server's calibrated threshold (a ListModelsResponse) for model, task and FPR."""
    for m in listing.models:
        if m.name == model:
            for t in m.thresholds:
                if t.task == task and abs(t.fpr - fpr) < 1e-9:
                    return float(t.score)
    return None


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


def embed_paths(
    client: ImgsimClient,
    paths: list[str],
    model: str = "",
    progress: bool = True,
    retry: RetryPolicy | None = None,
    done: dict[str, ImageResult] | None = None,
    checkpoint: Callable[[dict[str, ImageResult]], None] | None = None,
    checkpoint_s: float = 30.0,
) -> dict[str, ImageResult]:
    """Every path's embedding (or error), each image sent once; on UNAVAILABLE, once a server
    has answered, a new stream carries only the images not answered yet. `done` holds results
    of an earlier run to keep (resume). `checkpoint(results)` is called every `checkpoint_s`
    seconds and, before the exception propagates, when the run fails or is interrupted
    (Ctrl-C), so that what is done is kept for a resume."""
    from tqdm import tqdm

    retry = retry or RetryPolicy()
    results: dict[str, ImageResult] = dict(done or {})
    last = [time.monotonic()]

    def answered(path: str, res: ImageResult) -> None:
        results[path] = res
        bar.update(1)
        if checkpoint is not None and time.monotonic() - last[0] >= checkpoint_s:
            checkpoint(results)
            last[0] = time.monotonic()

    with tqdm(total=len(paths), initial=len(results), unit="img", disable=not progress) as bar:
        try:
            return _embed_all(client, paths, model, retry, results, answered, bar)
        except BaseException:
            if checkpoint is not None:
                checkpoint(results)
            raise


def _embed_all(client, paths, model, retry, results, answered, bar) -> dict[str, ImageResult]:
    """The streams of `embed_paths`: reopened with what is left after a lost server."""
    reconnects = 0
    while True:
        todo = [p for p in paths if p not in results]
        if not todo:
            return results

        def requests(todo=todo):
            for i, path in enumerate(todo):
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    answered(path, ImageResult(
                        path, None, model, "", grpc.StatusCode.NOT_FOUND,
                        f"cannot read image: {exc.strerror or exc}",
                    ))  # fmt: skip
                    continue
                yield ImageRequest(str(i), data, model=model)

        try:
            for res in client.embed_stream(requests(), idle_timeout=client.timeout):
                answered(todo[int(res.image_id)], res)
            return results
        except ImgsimError as err:
            if not retry.should_reconnect(err, client, reconnects):
                raise
            reconnects += 1
            bar.write(f"imgsim-client: {err.message}; reconnecting (retry {reconnects})")
            time.sleep(retry.backoff(reconnects))


def to_vectors(results: dict[str, ImageResult], order: list[str]):
    """The results as index.Vectors (ok rows) plus errors, in `order`."""
    import numpy as np

    from imgsim_client.index import Vectors

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
    return {
        key: ImageResult(key, row.tolist(), vectors.model, vectors.similarity)
        for key, row in zip(vectors.keys, vectors.matrix, strict=True)
    }
