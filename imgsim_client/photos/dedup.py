"""Dedup: near-duplicate pairs and their groups, from a threshold (every pair above it: an exact
range search, or k-NN past `exact_below`), optionally against a reference, then verified
geometrically (`imgsim_verify`) by the rule `make bench-quality` measured."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from imgsim_client.photos.files import pillow
from imgsim_client.photos.vectors import Vectors

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
class DuplicatePair:
    """Two images at or above the threshold, and the group (connected component) they are in."""

    image_a: str
    image_b: str
    score: float
    group: int
    inliers: int | None = None  # geometric verification's, where it ran (`verify_duplicates`)
    # How it was kept: "sure score" (no check needed), "yes" (verified), "cannot tell" (too few
    # features to judge: the descriptor decided); "" when not verified (--no-verify)
    verification: str = ""


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
    vectors,
    min_similarity: float,
    k: int = 50,
    exact_below: int | None = None,
    versions=None,
) -> Duplicates:
    """Every pair of `vectors` (index.Vectors) scoring at least `min_similarity`, with groups:
    by exact range search below `exact_below` vectors, else by the k-NN self-join
    (`index.self_knn`: exact scores within the probed lists, no index to build). `versions`
    (R, n, d): each image's turned versions, so that a turned copy scores as upright (a pair
    scores its best version; past `exact_below`, an approximate index is queried with them)."""
    from imgsim_client.photos.index import EXACT_BELOW, VectorIndex, groups, knn_pairs, self_knn

    _check_similarity(vectors, min_similarity)
    n = len(vectors.keys)
    exact = n < (exact_below or EXACT_BELOW) or vectors.similarity == "hamming"
    if exact:
        index = VectorIndex.build(vectors, exact_below=exact_below or EXACT_BELOW)
        found, capped = index.self_pairs(vectors.matrix, min_similarity, versions=versions)
    elif versions is not None:
        index = VectorIndex.build(vectors, exact_below=exact_below or EXACT_BELOW)
        sims, ids = index.query([vectors.matrix, *versions], k, qe_k=0)
        found, capped = knn_pairs(sims, ids, min_similarity, k < n)
    else:
        sims, ids = self_knn(vectors.matrix, k)
        found, capped = knn_pairs(sims, ids, min_similarity, k < n)
    label = groups(n, found)
    pairs = [
        DuplicatePair(vectors.keys[a], vectors.keys[b], float(s), label[a]) for a, b, s in found
    ]
    return Duplicates(pairs, min_similarity, exact, k, capped)


def match_against(
    vectors,
    reference,
    min_similarity: float,
    k: int = 50,
    exact_below: int | None = None,
    versions=None,
) -> Duplicates:
    """Each of `vectors`' images with the `reference` images (index.Vectors, same model)
    scoring at least `min_similarity` (up to `k` per image), as pairs (new image, reference
    image); the reference is never compared with itself. A group is one new image's matches.
    `versions` (R, n, d): the new images' turned versions (a pair scores its best)."""
    from imgsim_client.photos.index import EXACT_BELOW, VectorIndex

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
    if versions is None:
        sims, ids = index.search(vectors.matrix, k)
    else:
        sims, ids = index.query([vectors.matrix, *versions], k, qe_k=0)
    for i, (srow, irow) in enumerate(zip(sims, ids, strict=True)):
        hit = (srow >= min_similarity) & (irow >= 0)
        capped += bool(hit.all() and k < len(index))
        pairs += [DuplicatePair(vectors.keys[i], index.keys[j], float(sc), i)
                  for sc, j in zip(srow[hit], irow[hit], strict=True)]  # fmt: skip
    return Duplicates(pairs, min_similarity, index.params.kind == "exact", k, capped)


@dataclass(frozen=True)
class VerifyRule:
    """How `dedup` decides its candidates (pairs at or above `floor`): accepted at once from
    `sure`, else by geometric verification (`imgsim_verify`): kept with at least `min_inliers`
    inliers spanning at least `min_coverage` of one of the two images; when either image has
    fewer than `min_features` features verification cannot tell, and the descriptor decides
    alone: kept from `unsure`."""

    floor: float
    sure: float
    min_inliers: int
    min_coverage: float = 0.0
    min_features: int = 0
    unsure: float = 1.01  # a cosine no pair reaches: a cannot-tell pair is never kept


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
    from imgsim_client.photos.defaults import DEDUP_VERIFY

    rule = DEDUP_VERIFY.get(model)
    return VerifyRule(*rule) if rule is not None else None


def rule_at(measured: VerifyRule | None, floor: float, min_inliers: int | None) -> VerifyRule:
    """The rule dedup applies at candidate `floor`: the model's measured one, else (a model
    without one) every candidate verified with the collection model's inlier count."""
    from dataclasses import replace

    from imgsim_client.photos.defaults import DEDUP_MIN_COVERAGE, DEDUP_MIN_INLIERS

    base = measured or VerifyRule(floor, VERIFY_ALL, DEDUP_MIN_INLIERS, DEDUP_MIN_COVERAGE)
    # (a model without a measured rule never keeps a pair verification cannot judge)
    return replace(base, floor=floor, min_inliers=min_inliers or base.min_inliers)


VERIFY_ALL = 1.01  # a sure score no cosine reaches: every candidate is verified


def verification_available() -> bool:
    """Whether OpenCV (the [verify] extra) is installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec("cv2") is not None


def _features(path: str):
    from PIL import ImageOps

    import imgsim_verify

    with pillow().open(path) as img:
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
    from imgsim_client.photos.index import groups

    started = time.perf_counter()
    todo = [p for p in found.pairs if p.score < rule.sure]
    by_group: dict[int, list[DuplicatePair]] = {}
    for p in todo:
        by_group.setdefault(p.group, []).append(p)
    checks: dict[tuple[str, str], imgsim_verify.Verification] = {}
    unreadable: list[str] = []
    images = 0
    bar = tqdm(total=len(todo), unit="pair", desc="verifying", disable=not progress)

    def read(key: str):
        try:
            return _features(files[key])
        except Exception:  # an unreadable file fails its pairs' verification, not the run
            return None

    def match(feats: dict, p: DuplicatePair) -> imgsim_verify.Verification:
        a, b = feats[p.image_a], feats[p.image_b]
        if not (a and b):
            return imgsim_verify.Verification(0, 0, False)  # unreadable: no, not cannot tell
        return imgsim_verify.match(
            a, b, min_inliers=rule.min_inliers, min_coverage=rule.min_coverage,
            min_features=rule.min_features,
        )  # fmt: skip

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for pairs in by_group.values():
            keys = sorted({k for p in pairs for k in (p.image_a, p.image_b)})
            images += len(keys)
            feats = dict(zip(keys, pool.map(read, keys), strict=True))
            unreadable += [k for k in keys if feats[k] is None]
            for p, v in zip(pairs, pool.map(partial(match, feats), pairs), strict=True):
                checks[p.image_a, p.image_b] = v
            bar.update(len(pairs))
    bar.close()

    def how(p: DuplicatePair) -> str:
        """How `p` is kept ("" when it is not)."""
        if p.score >= rule.sure:
            return "sure score"
        answer = checks[p.image_a, p.image_b].answer
        if answer == imgsim_verify.YES:
            return answer
        if answer == imgsim_verify.CANNOT_TELL and p.score >= rule.unsure:
            return answer
        return ""

    kept = [(p, h) for p in found.pairs if (h := how(p))]
    keys = sorted({k for p, _ in kept for k in (p.image_a, p.image_b)})
    at = {k: i for i, k in enumerate(keys)}
    label = groups(len(keys), [(at[p.image_a], at[p.image_b], p.score) for p, _ in kept])
    pairs = []
    for p, h in kept:
        check = checks.get((p.image_a, p.image_b))
        inliers = check.inliers if check is not None else None
        pairs.append(DuplicatePair(p.image_a, p.image_b, p.score, label[at[p.image_a]], inliers, h))
    done = Verification(rule, len(todo), len(kept), images, time.perf_counter() - started,
                        tuple(unreadable))  # fmt: skip
    return Duplicates(pairs, found.threshold, found.exact, found.k, found.capped, done)


class DedupError(ValueError):
    """A dedup that cannot run as asked (no threshold known for the model, a missing
    reference); the message says what to give."""


@dataclass(frozen=True)
class DedupResult:
    """What `dedup` found: the pairs and groups (`found`), the images embedded (`vectors`, with
    the ones that failed in `errors`), the threshold used, the reference when there was one,
    each key's file (for verification and acting) and the time it took."""

    found: Duplicates
    vectors: Vectors
    threshold: float
    reference: Vectors | None
    files: dict[str, str]
    seconds: float


def reference_vectors(client, against: Path, model: str, progress: bool):
    """(vectors, key -> file) of a dedup reference: an index folder's stored vectors, a
    vectors .parquet, or images embedded now with `model`."""
    from imgsim_client.photos.embed import embed_paths
    from imgsim_client.photos.files import display_path, list_images
    from imgsim_client.photos.index import stored_vectors
    from imgsim_client.photos.vectors import read_parquet, to_vectors

    if against.is_dir() and (against / "index.json").is_file():
        ref = read_parquet(stored_vectors(against))
    elif against.suffix == ".parquet":
        ref = read_parquet(against)
    else:
        paths = list_images([against])
        ref = to_vectors(embed_paths(client, paths, model, progress), paths)
        return ref, {display_path(p): p for p in paths}
    return ref, {k: k for k in ref.keys}


def _embed_versions(client, paths: list[str], model: str, rotations: int, progress: bool):
    """(vectors of the upright images, their other versions as (R-1, n, d) or None)."""
    import numpy as np

    from imgsim_client.photos.embed import VERSIONS, embed_paths, embed_rotations
    from imgsim_client.photos.vectors import to_vectors

    if rotations <= 1:
        return to_vectors(embed_paths(client, paths, model, progress), paths), None
    if rotations not in VERSIONS:
        raise DedupError(f"rotations must be one of {sorted(VERSIONS)}, not {rotations}")
    per = embed_rotations(client, paths, model, VERSIONS[rotations], progress)
    vectors = to_vectors({p: per[p][0] for p in paths}, paths)
    ok = [p for p in paths if per[p][0].ok]  # the rows of `vectors`, in order
    versions = np.array(
        [
            [per[p][r].vector if per[p][r].ok else per[p][0].vector for p in ok]
            for r in range(1, len(VERSIONS[rotations]))
        ],
        dtype=np.float32,
    )
    return vectors, versions


def dedup(
    paths: list[str | Path],
    client=None,
    *,
    model: str = "",
    threshold: float | None = None,
    verify: bool = True,
    min_inliers: int | None = None,
    against: Path | None = None,
    k: int = 50,
    exact_below: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    rotations: int | None = None,
) -> DedupResult:
    """Near-duplicate pairs and groups of the images in `paths` (files, folders, lists), the
    whole pipeline of `imgsim-client dedup`: embed (with the server's collection descriptor
    unless `model` says otherwise), every pair at or above the candidate `threshold` (default:
    the model's measured floor), against the images of `against` if given, then geometric
    verification by the measured rule (unless `verify` is False). `rotations` (1, 4 or 8;
    default defaults.DEDUP_ROTATIONS): candidates score the best of each image's turned (and
    mirrored) versions, so that a turned copy is found as upright; each version is embedded.

    `client`: an ImgsimClient, an address, or None for a private local server for the call.
    DedupError when it cannot run as asked.
    """
    from imgsim_client.local import connected
    from imgsim_client.photos.defaults import DEDUP_ROTATIONS
    from imgsim_client.photos.files import display_path, list_images

    found_paths = list_images([Path(p) for p in paths])
    rotations = rotations or DEDUP_ROTATIONS
    started = time.perf_counter()
    reference, ref_files = None, {}
    with connected(client) as c:
        listing = c.list_models()
        model = model or listing.collection_model or ""
        if against is not None:
            try:
                reference, ref_files = reference_vectors(c, against, model, progress)
            except FileNotFoundError as exc:
                raise DedupError(str(exc)) from None
            model = reference.model or model  # the new images as the reference
        vectors, versions = _embed_versions(c, found_paths, model, rotations, progress)
    measured = verify_rule(vectors.model) if verify else None
    if threshold is None:
        threshold = (
            measured.floor if measured is not None else default_threshold(vectors.model, listing)
        )
    if threshold is None:
        raise DedupError(f"no default threshold for {vectors.model}; give --threshold")
    rule = rule_at(measured, threshold, min_inliers) if verify else None
    if reference is not None:
        found = match_against(vectors, reference, threshold, k, exact_below, versions)
    else:
        found = find_duplicates(vectors, threshold, k, exact_below, versions)
    files = {**ref_files, **{display_path(p): p for p in found_paths}}
    if rule is not None:
        found = verify_duplicates(found, files, rule, workers, progress)
    return DedupResult(found, vectors, threshold, reference, files, time.perf_counter() - started)
