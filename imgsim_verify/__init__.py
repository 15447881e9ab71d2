"""Geometric verification of a pair (the `[verify]` extra, OpenCV): local features matched
between the two images and a similarity transform fitted with RANSAC; the number of matches
that agree with it (inliers) says whether one image is an edited copy of the other, which a
global descriptor cannot always decide (a crop, an overlay, a photo of the same place).

SIFT (scale- and rotation-invariant) on grey images whose longer side is at most
`VERIFY_SIDE`, Lowe's ratio test, `cv2.estimateAffinePartial2D` (rotation, scale, shift);
mirrored copies are tried too. A pair is verified from `MIN_INLIERS` inliers spanning
`MIN_COVERAGE` of one of the images: the rule `dedup` applies to the collection descriptor's
candidates, chosen on the strong near-duplicate set (results/neardup.md).

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
MIN_INLIERS = 22
MIN_COVERAGE = 0.2


@dataclass(frozen=True)
class Verification:
    inliers: int  # matches consistent with one similarity transform (best of plain, mirrored)
    matches: int  # matches that passed the ratio test
    verified: bool
    # The share of an image that the inliers span (convex hull area over image area), the
    # larger of the two images': a logo or emoji shared by two unrelated photos matches in a
    # small patch of both, a copy over most of at least one of them.
    coverage: float = 0.0


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
    return Features(*_detect(cv2, sift, grey), *mirrored, area=float(grey.size))


def _hull(cv2, points: np.ndarray) -> float:
    return float(cv2.contourArea(cv2.convexHull(points))) if len(points) >= 3 else 0.0


def _inliers(cv2, pa, da, pb, db, area_a, area_b) -> tuple[int, int, float]:
    if da is None or db is None or len(pa) < 2 or len(pb) < 2:
        return 0, 0, 0.0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < RATIO * n.distance]
    if len(good) < 3:
        return 0, len(good), 0.0
    src = pa[[m.queryIdx for m in good]]
    dst = pb[[m.trainIdx for m in good]]
    _, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX, maxIters=2000
    )
    if mask is None:
        return 0, len(good), 0.0
    keep = mask.ravel().astype(bool)
    coverage = max(_hull(cv2, src[keep]) / area_a, _hull(cv2, dst[keep]) / area_b)
    return int(keep.sum()), len(good), coverage


def match(a: Features, b: Features) -> Verification:
    """Inliers of the best similarity transform from image `a` to image `b` or its mirror
    (`b` needs its mirror's features)."""
    cv2 = _cv2()
    plain = _inliers(cv2, a.points, a.descriptors, b.points, b.descriptors, a.area, b.area)
    mirrored = _inliers(
        cv2, a.points, a.descriptors, b.mirror_points, b.mirror_descriptors, a.area, b.area
    )
    inliers, matches, coverage = max(plain, mirrored)
    verified = inliers >= MIN_INLIERS and coverage >= MIN_COVERAGE
    return Verification(inliers, matches, verified, coverage)


def verify(img_a: Image.Image, img_b: Image.Image) -> Verification:
    """Inliers of the best similarity transform from `img_a` to `img_b` or its mirror."""
    return match(features(img_a, mirror=False), features(img_b))
