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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from imgsim_client._csv import PairsFileError
from imgsim_client._resume import RetryPolicy, resumable
from imgsim_client.client import ImageRequest, ImageResult, ImgsimClient, ImgsimError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif",
              ".avif"}  # fmt: skip


def _pillow():
    """PIL.Image, able to open HEIC/HEIF where pillow-heif is installed (the [index] extra):
    the client turns queries and verifies files itself."""
    from PIL import Image

    try:
        import pillow_heif
    except ModuleNotFoundError:
        return Image
    pillow_heif.register_heif_opener()
    return Image


# dedup thresholds without verification (`--no-verify`), cosine or hamming similarity, per
# model: for the CNNs the F1-best threshold on the strong near-duplicate set (make
# bench-quality, results/neardup.md), for the classical ones on the mild edits of make
# bench-collections. Other models use the server's calibrated near-duplicate threshold at 0.1%
# FPR (ListModels). With verification, the rules in defaults.DEDUP_VERIFY apply.
DEDUP_THRESHOLDS = {
    "efficientnet-lite2-260": 0.72,
    "efficientnet-lite0": 0.7,
    "efficientnet-lite0-gem": 0.73,
    "efficientnet-lite0-rmac-full384-ms": 0.78,
    "phash": 0.76,
    "color-hist": 0.96,
    "pixels": 0.71,
}


@dataclass(frozen=True)
class Match:
    """One hit of a search: the query, its rank (1 = nearest), the indexed path, the score."""

    query: str
    rank: int
    path: str
    score: float


@dataclass(frozen=True)
class DuplicatePair:
    """Two images at or above the threshold, and the group (connected component) they are in."""

    image_a: str
    image_b: str
    score: float
    group: int
    inliers: int | None = None  # geometric verification's, where it ran (`verify_duplicates`)


@dataclass(frozen=True)
class Duplicates:
    """What `find_duplicates` found, and how: `exact` (range search: every pair) or k-NN,
    where `capped` images reached k (their groups may be larger than found)."""

    pairs: list[DuplicatePair]
    threshold: float
    exact: bool
    k: int
    capped: int
    verification: Verification | None = None

    @property
    def groups(self) -> int:
        return len({p.group for p in self.pairs})


def default_threshold(model: str, listing=None) -> float | None:
    """The dedup threshold of `model`: its measured F1-best one, else the server's calibrated
    near-duplicate threshold at 0.1% FPR (`listing`, a ModelList), else None."""
    if model in DEDUP_THRESHOLDS:
        return DEDUP_THRESHOLDS[model]
    info = listing.get(model) if listing is not None else None
    return info.threshold("near-duplicate", 0.001) if info is not None else None


def _check_similarity(vectors, min_similarity: float) -> None:
    low = -1.0 if vectors.similarity == "cosine" else 0.0
    if not low <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity {min_similarity} is outside [{low:g}, 1]")


def find_duplicates(
    vectors, min_similarity: float, k: int = 50, exact_below: int | None = None
) -> Duplicates:
    """Every pair of `vectors` (index.Vectors) scoring at least `min_similarity`, with groups:
    by exact range search below `exact_below` vectors, else by the k-NN self-join
    (`index.self_knn`: exact scores within the probed lists, no index to build)."""
    from imgsim_client.index import EXACT_BELOW, VectorIndex, groups, knn_pairs, self_knn

    _check_similarity(vectors, min_similarity)
    n = len(vectors.keys)
    exact = n < (exact_below or EXACT_BELOW) or vectors.similarity == "hamming"
    if exact:
        index = VectorIndex.build(vectors, exact_below=exact_below or EXACT_BELOW)
        found, capped = index.self_pairs(vectors.matrix, min_similarity)
    else:
        sims, ids = self_knn(vectors.matrix, k)
        found, capped = knn_pairs(sims, ids, min_similarity, k < n)
    label = groups(n, found)
    pairs = [
        DuplicatePair(vectors.keys[a], vectors.keys[b], float(s), label[a]) for a, b, s in found
    ]
    return Duplicates(pairs, min_similarity, exact, k, capped)


def match_against(
    vectors, reference, min_similarity: float, k: int = 50, exact_below: int | None = None
) -> Duplicates:
    """Each of `vectors`' images with the `reference` images (index.Vectors, same model)
    scoring at least `min_similarity` (up to `k` per image), as pairs (new image, reference
    image); the reference is never compared with itself. A group is one new image's matches."""
    from imgsim_client.index import EXACT_BELOW, VectorIndex

    _check_similarity(vectors, min_similarity)
    if not reference.keys or not vectors.keys:  # nothing to match (an empty reference)
        return Duplicates([], min_similarity, True, k, 0)
    if reference.model != vectors.model:
        raise ValueError(
            f"the reference holds vectors of {reference.model}, the images were embedded "
            f"with {vectors.model}"
        )
    index = VectorIndex.build(reference, exact_below=exact_below or EXACT_BELOW)
    pairs, capped = [], 0
    sims, ids = index.search(vectors.matrix, k)
    for i, (srow, irow) in enumerate(zip(sims, ids, strict=True)):
        hit = (srow >= min_similarity) & (irow >= 0)
        capped += bool(hit.all() and k < len(index))
        pairs += [DuplicatePair(vectors.keys[i], index.keys[j], float(sc), i)
                  for sc, j in zip(srow[hit], irow[hit], strict=True)]  # fmt: skip
    return Duplicates(pairs, min_similarity, index.params.kind == "exact", k, capped)


@dataclass(frozen=True)
class VerifyRule:
    """How `dedup` decides its candidates (pairs at or above `floor`): accepted at once from
    `sure`, else only with at least `min_inliers` geometric inliers (`imgsim_verify`) that span
    at least `min_coverage` of one of the two images."""

    floor: float
    sure: float
    min_inliers: int
    min_coverage: float = 0.0


@dataclass(frozen=True)
class Verification:
    """What verification did: candidates it checked, pairs it kept, images it read, seconds."""

    rule: VerifyRule
    checked: int
    kept: int
    images: int
    seconds: float
    unreadable: tuple[str, ...] = ()  # images whose files could not be read: their pairs fail


def verify_rule(model: str) -> VerifyRule | None:
    """`model`'s measured rule (defaults.DEDUP_VERIFY), or None where none was measured."""
    from imgsim_client.defaults import DEDUP_VERIFY

    rule = DEDUP_VERIFY.get(model)
    return VerifyRule(*rule) if rule is not None else None


def rule_at(measured: VerifyRule | None, floor: float, min_inliers: int | None) -> VerifyRule:
    """The rule dedup applies at candidate `floor`: the model's measured one, else (a model
    without one) every candidate verified with the collection model's inlier count."""
    from dataclasses import replace

    from imgsim_client.defaults import DEDUP_MIN_COVERAGE, DEDUP_MIN_INLIERS

    base = measured or VerifyRule(floor, VERIFY_ALL, DEDUP_MIN_INLIERS, DEDUP_MIN_COVERAGE)
    return replace(base, floor=floor, min_inliers=min_inliers or base.min_inliers)


VERIFY_ALL = 1.01  # a sure score no cosine reaches: every candidate is verified


def verification_available() -> bool:
    """Whether OpenCV (the [verify] extra) is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("cv2") is not None


def _features(path: str):
    from PIL import ImageOps

    import imgsim_verify

    with _pillow().open(path) as img:
        return imgsim_verify.features(ImageOps.exif_transpose(img).convert("RGB"))


def verify_duplicates(
    found: Duplicates,
    files: dict[str, str],
    rule: VerifyRule,
    workers: int | None = None,
    progress: bool = False,
) -> Duplicates:
    """`found` (at `rule.floor` or above) with the pairs below `rule.sure` kept only when
    geometric verification finds `rule.min_inliers`; groups are formed again from what is kept.
    `files`: each key's file. Features are computed once per image, a group at a time (so that
    memory follows the largest group, not the collection), on `workers` threads (OpenCV
    releases the GIL). An image that cannot be read fails its pairs' verification."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    import imgsim_verify
    from imgsim_client.index import groups

    started = time.perf_counter()
    todo = [p for p in found.pairs if p.score < rule.sure]
    by_group: dict[int, list[DuplicatePair]] = {}
    for p in todo:
        by_group.setdefault(p.group, []).append(p)
    inliers: dict[tuple[str, str], int] = {}
    coverage: dict[tuple[str, str], float] = {}
    unreadable: list[str] = []
    images = 0
    bar = tqdm(total=len(todo), unit="pair", desc="verifying", disable=not progress)

    def read(key: str):
        try:
            return _features(files[key])
        except Exception:  # an unreadable file fails its pairs' verification, not the run
            return None

    def match(feats: dict, p: DuplicatePair) -> tuple[int, float]:
        a, b = feats[p.image_a], feats[p.image_b]
        if not (a and b):
            return 0, 0.0
        v = imgsim_verify.match(a, b)
        return v.inliers, v.coverage

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for pairs in by_group.values():
            keys = sorted({k for p in pairs for k in (p.image_a, p.image_b)})
            images += len(keys)
            feats = dict(zip(keys, pool.map(read, keys), strict=True))
            unreadable += [k for k in keys if feats[k] is None]
            for p, (n, c) in zip(pairs, pool.map(partial(match, feats), pairs), strict=True):
                inliers[p.image_a, p.image_b], coverage[p.image_a, p.image_b] = n, c
            bar.update(len(pairs))
    bar.close()
    kept = [
        p
        for p in found.pairs
        if p.score >= rule.sure
        or (
            inliers[p.image_a, p.image_b] >= rule.min_inliers
            and coverage[p.image_a, p.image_b] >= rule.min_coverage
        )
    ]
    keys = sorted({k for p in kept for k in (p.image_a, p.image_b)})
    at = {k: i for i, k in enumerate(keys)}
    label = groups(len(keys), [(at[p.image_a], at[p.image_b], p.score) for p in kept])
    pairs = [
        DuplicatePair(
            p.image_a, p.image_b, p.score, label[at[p.image_a]], inliers.get((p.image_a, p.image_b))
        )
        for p in kept
    ]
    done = Verification(rule, len(todo), len(kept), images, time.perf_counter() - started,
                        tuple(unreadable))  # fmt: skip
    return Duplicates(pairs, found.threshold, found.exact, found.k, found.capped, done)


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


# Versions of a query: (degrees counter-clockwise, mirrored first). 4: the rotations; 8: and
# those of the mirror image.
ROTATIONS = ((0, False), (90, False), (180, False), (270, False))
VERSIONS = {1: ROTATIONS[:1], 4: ROTATIONS, 8: ROTATIONS + tuple((d, True) for d, _ in ROTATIONS)}


def rotated(data: bytes, degrees: int, mirror: bool = False) -> bytes:
    """The image (after its EXIF orientation) mirrored if asked, then turned by `degrees`
    counter-clockwise, as PNG (lossless)."""
    import io

    from PIL import ImageOps

    with _pillow().open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
        turned = (ImageOps.mirror(upright) if mirror else upright).rotate(degrees, expand=True)
    out = io.BytesIO()
    turned.save(out, "PNG", compress_level=1)
    return out.getvalue()


def embed_rotations(
    client: ImgsimClient,
    paths: list[str],
    model: str = "",
    versions: tuple[tuple[int, bool], ...] = ROTATIONS,
    progress: bool = True,
) -> dict[str, list[ImageResult]]:
    """Each path's embedding in each version (degrees, mirrored), in their order; versions
    other than the upright original are made on the client (needs Pillow)."""
    sep = "\x00"

    def key(path: str, version: tuple[int, bool]) -> str:
        return f"{path}{sep}{version[0]}{sep}{int(version[1])}"

    def read(k: str) -> bytes:
        path, degrees, mirror = k.split(sep)
        data = Path(path).read_bytes()
        if degrees == "0" and mirror == "0":
            return data
        return rotated(data, int(degrees), mirror == "1")

    keys = [key(p, v) for p in paths for v in versions]
    results = embed_paths(client, keys, model, progress, read=read)
    return {p: [results[key(p, v)] for v in versions] for p in paths}


def embed_paths(
    client: ImgsimClient,
    paths: list[str],
    model: str = "",
    progress: bool = True,
    retry: RetryPolicy | None = None,
    done: dict[str, ImageResult] | None = None,
    checkpoint: Callable[[dict[str, ImageResult]], None] | None = None,
    checkpoint_s: float = 30.0,
    read: Callable[[str], bytes] | None = None,
) -> dict[str, ImageResult]:
    """Every path's embedding (or error), each image sent once; on UNAVAILABLE, once a server
    has answered, a new stream carries only the images not answered yet. `done` holds results
    of an earlier run to keep (resume). `checkpoint(results)` is called every `checkpoint_s`
    seconds and, before the exception propagates, when the run fails or is interrupted
    (Ctrl-C), so that what is done is kept for a resume. `read(path)` gives the bytes to send
    (default: the file's)."""
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
            read = read or (lambda path: Path(path).read_bytes())
            return _embed_all(client, paths, model, retry, results, answered, bar, read)
        except BaseException:
            if checkpoint is not None:
                checkpoint(results)
            raise


def _embed_all(client, paths, model, retry, results, answered, bar, read):
    """The streams of `embed_paths`: reopened with what is left after a lost server."""

    def pending() -> list[str]:
        return [p for p in paths if p not in results]

    def open_stream(todo: list[str]):
        def requests():
            for i, path in enumerate(todo):
                try:
                    data = read(path)
                except Exception as exc:  # unreadable, or (rotations) not an image Pillow reads
                    answered(path, ImageResult(
                        path, None, model, "", grpc.StatusCode.NOT_FOUND,
                        f"cannot read image: {getattr(exc, 'strerror', None) or exc}",
                    ))  # fmt: skip
                    continue
                yield ImageRequest(str(i), data, model=model)

        for res in client.embed_stream(requests()):
            yield todo[int(res.image_id)], res

    def reconnecting(err: ImgsimError, attempt: int, wait: float, todo: list) -> None:
        bar.write(f"imgsim-client: {err.message}; reconnecting in {wait:.1f}s (retry {attempt})")

    resumable(client, pending, open_stream, lambda pr: answered(*pr), retry, None, reconnecting)
    return results


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
