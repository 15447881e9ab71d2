"""Geometric verification of a pair (the `[verify]` extra, OpenCV): local features matched
between the two images and a similarity transform fitted with RANSAC; the number of matches
that agree with it (inliers) says whether one image is an edited copy of the other, which a
global descriptor cannot always decide (a crop, an overlay, a photo of the same place).

SIFT (scale- and rotation-invariant) on grey images whose longer side is at most
`VERIFY_SIDE`, Lowe's ratio test, and an affine transform fitted with RANSAC
(`cv2.estimateAffine2D`: two scales and a shear, so that a copy squashed to a square fits),
kept plausible by bounds (each scale within SCALES, the two within MAX_ANISOTROPY of each
other; else the similarity transform, `estimateAffinePartial2D`); mirrored copies are tried too.

Three answers: yes (`MIN_INLIERS` inliers spanning `MIN_COVERAGE` of one of the images), no, and
cannot tell, when either image has fewer than `MIN_FEATURES` SIFT features: a logo or a drawing
can never reach the inliers of a photo, so the pair is left to the global descriptor. The
numbers are dedup's rule for the collection descriptor, chosen on every development set by the
worst of them (results/dedup_rules.md).

A room of its own, importing nothing of imgsim: the server runs it for `compare --verify`, the
client's `dedup` on the files it has (features once per image, matched per candidate pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

VERIFY_SIDE = 512  # longer side the images are reduced to before features are found
RATIO = 0.75  # Lowe's ratio test
RANSAC_PX = 2.0  # reprojection error of an inlier, in pixels at VERIFY_SIDE (results/neardup.md)
MIN_INLIERS = 26
MIN_COVERAGE = 0.1
MIN_FEATURES = 40  # fewer SIFT features in either image: cannot tell
SCALES = (1 / 16, 16)  # each scale of a plausible affine fit
MAX_ANISOTROPY = 4.0  # the larger scale over the smaller: a 4:1 image squashed to a square
# An affine fit is plausible only where the two images' shapes call for one: its two scales
# must differ as much as the images' aspect ratios do (upright or turned), within this share.
# Two images of one shape are fitted by a similarity transform only: an affine fit there only
# lets other views of a 3-D object (near-misses, not copies) gain inliers.
ASPECT_TOLERANCE = 0.2
YES, NO, CANNOT_TELL = "yes", "no", "cannot tell"
# The transform fitted: "affine" (where the shapes changed; see ASPECT_TOLERANCE) or
# "similarity"; the one results/dedup_rules.md ships.
TRANSFORM = "affine"


@dataclass(frozen=True)
class Verification:
    inliers: int  # matches consistent with one similarity transform (best of plain, mirrored)
    matches: int  # matches that passed the ratio test
    verified: bool
    # The share of an image that the inliers span (convex hull area over image area), the
    # larger of the two images': a logo or emoji shared by two unrelated photos matches in a
    # small patch of both, a copy over most of at least one of them.
    coverage: float = 0.0
    features: int = 0  # SIFT features of the image that has fewer
    answer: str = NO  # YES, NO or CANNOT_TELL


def _cv2():
    try:
        import cv2
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            'geometric verification needs OpenCV: python -m pip install "imgsim[verify]"'
        ) from exc
    return cv2


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("cv2") is not None


def _grey(img: Image.Image) -> np.ndarray:
    img = img.convert("L")
    img.thumbnail((VERIFY_SIDE, VERIFY_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


@dataclass(frozen=True)
class Features:
    """An image's SIFT keypoints (positions) and descriptors, and its mirror's (when asked):
    computed once per image, matched against any number of others (`match`)."""

    points: np.ndarray
    descriptors: np.ndarray | None
    mirror_points: np.ndarray | None = None
    mirror_descriptors: np.ndarray | None = None
    area: float = 1.0  # pixels of the grey image the points are in
    aspect: float = 1.0  # its width over its height


def _detect(cv2, sift, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    kp, desc = sift.detectAndCompute(grey, None)
    return np.float32([k.pt for k in kp]).reshape(-1, 2), desc


def features(img: Image.Image, mirror: bool = True) -> Features:
    """The features `match` needs; `mirror=False` for an image only ever matched as `a`."""
    cv2 = _cv2()
    cv2.setNumThreads(1)  # callers run it on their own pools (the server's decode pool)
    sift = cv2.SIFT_create(nfeatures=1000)
    grey = _grey(img)
    mirrored = _detect(cv2, sift, np.ascontiguousarray(grey[:, ::-1])) if mirror else (None, None)
    aspect = grey.shape[1] / grey.shape[0]
    return Features(*_detect(cv2, sift, grey), *mirrored, area=float(grey.size), aspect=aspect)


def _hull(cv2, points: np.ndarray) -> float:
    return float(cv2.contourArea(cv2.convexHull(points))) if len(points) >= 3 else 0.0


def squash(a: Features, b: Features) -> tuple[float, ...]:
    """The change of aspect ratio from image `a` to `b`, upright and turned by 90 degrees, as
    larger-over-smaller scale ratios; only those that are a change (past ASPECT_TOLERANCE)."""
    ratios = (a.aspect / b.aspect, a.aspect * b.aspect)
    ratios = tuple(max(r, 1 / r) for r in ratios)
    return tuple(r for r in ratios if r > 1 + ASPECT_TOLERANCE)


def plausible(m: np.ndarray, squashes: tuple[float, ...]) -> bool:
    """Whether an affine fit's 2x2 part is a copy's: each scale within SCALES, and the two as
    far apart as one of the `squashes` the images' shapes show, within ASPECT_TOLERANCE (a
    reflection is allowed: mirrored copies)."""
    if not np.all(np.isfinite(m)):
        return False
    s = np.linalg.svd(m[:, :2], compute_uv=False)
    if not (s[1] > 0 and SCALES[0] <= s[1] and s[0] <= SCALES[1]):
        return False
    anisotropy = s[0] / s[1]
    return anisotropy <= MAX_ANISOTROPY and any(
        abs(anisotropy / r - 1) <= ASPECT_TOLERANCE for r in squashes
    )


def _fit(cv2, src: np.ndarray, dst: np.ndarray, transform: str, squashes: tuple[float, ...]):
    """The RANSAC inlier mask of the `transform` ("affine" or "similarity") fit, or None. The
    affine fit is tried only where the images' shapes changed (`squashes`) and kept only if
    plausible; else the similarity transform."""
    kw = {"method": cv2.RANSAC, "ransacReprojThreshold": RANSAC_PX, "maxIters": 2000}
    if transform == "affine" and squashes:
        m, mask = cv2.estimateAffine2D(src, dst, **kw)
        if m is not None and plausible(m, squashes):
            return mask
    return cv2.estimateAffinePartial2D(src, dst, **kw)[1]


def _inliers(cv2, pa, da, pb, db, area_a, area_b, transform, squashes=()) -> tuple[int, int, float]:
    if da is None or db is None or len(pa) < 2 or len(pb) < 2:
        return 0, 0, 0.0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO * n.distance]
    if len(good) < 3:
        return 0, len(good), 0.0
    src = pa[[m.queryIdx for m in good]]
    dst = pb[[m.trainIdx for m in good]]
    mask = _fit(cv2, src, dst, transform, squashes)
    if mask is None:
        return 0, len(good), 0.0
    keep = mask.ravel().astype(bool)
    coverage = max(_hull(cv2, src[keep]) / area_a, _hull(cv2, dst[keep]) / area_b)
    return int(keep.sum()), len(good), coverage


def match(
    a: Features,
    b: Features,
    transform: str = TRANSFORM,
    min_inliers: int = MIN_INLIERS,
    min_coverage: float = MIN_COVERAGE,
    min_features: int = MIN_FEATURES,
) -> Verification:
    """Inliers of the best plausible `transform` ("affine", or "similarity") from image `a` to
    image `b` or its mirror (`b` needs its mirror's features), and the answer by the rule."""
    cv2 = _cv2()
    squashes = squash(a, b)
    plain = _inliers(
        cv2, a.points, a.descriptors, b.points, b.descriptors, a.area, b.area, transform,
        squashes,
    )  # fmt: skip
    mirrored = _inliers(
        cv2, a.points, a.descriptors, b.mirror_points, b.mirror_descriptors, a.area, b.area,
        transform, squashes,
    )  # fmt: skip
    inliers, matches, coverage = max(plain, mirrored)
    fewest = min(len(a.points), len(b.points))
    if inliers >= min_inliers and coverage >= min_coverage:
        answer = YES
    elif fewest < min_features:
        answer = CANNOT_TELL
    else:
        answer = NO
    return Verification(inliers, matches, answer == YES, coverage, fewest, answer)


def verify(img_a: Image.Image, img_b: Image.Image) -> Verification:
    """Inliers of the best plausible affine transform from `img_a` to `img_b` or its mirror,
    and the answer: yes, no, or cannot tell (too few features to judge)."""
    return match(features(img_a, mirror=False), features(img_b))
