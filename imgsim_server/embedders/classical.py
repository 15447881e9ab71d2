"""Classical baselines, no learned weights. Each runs fully in `preprocess` (on the decode pool);
`embed` only stacks.

- `pixels`: the image squashed to 32x32 RGB, mean-subtracted and L2-normalised; the cosine is
  then the normalised cross-correlation of the thumbnails, in [-1, 1].
- `color-hist`: joint RGB histogram with 8 bins per channel (512 bins), L1-normalised, then
  square-rooted; the cosine of those vectors is the Bhattacharyya coefficient of the two colour
  distributions, in [0, 1].
- `phash`: imagehash's 64-bit perceptual hash (DCT of a 32x32 grayscale); the score is
  1 - Hamming distance / 64, in [0, 1] (random images sit near 0.5).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgsim_server.embedders._cfg import Embedder, EmbedderOptions, ModelCfg
from imgsim_server.embedders._registry import register


class _StackEmbedder(Embedder):
    def embed(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1).astype(np.float32, copy=False)


class PixelsEmbedder(_StackEmbedder):
    def preprocess(self, img: Image.Image) -> np.ndarray:
        side = self.cfg.input_size
        x = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
        x = x.ravel() - x.mean()
        return x / max(float(np.linalg.norm(x)), 1e-6)


class ColorHistEmbedder(_StackEmbedder):
    BINS = 8

    def preprocess(self, img: Image.Image) -> np.ndarray:
        side = self.cfg.input_size
        small = np.asarray(img.resize((side, side), Image.Resampling.BILINEAR))
        idx = (small // (256 // self.BINS)).reshape(-1, 3).astype(np.int32)
        flat = (idx[:, 0] * self.BINS + idx[:, 1]) * self.BINS + idx[:, 2]
        hist = np.bincount(flat, minlength=self.BINS**3).astype(np.float32)
        return np.sqrt(hist / hist.sum())


class PHashEmbedder(_StackEmbedder):
    def __init__(self, cfg: ModelCfg, opts: EmbedderOptions) -> None:
        super().__init__(cfg, opts)
        import imagehash  # loads scipy: only when the model is used

        self._phash = imagehash.phash

    def preprocess(self, img: Image.Image) -> np.ndarray:
        bits = self._phash(img, hash_size=8).hash
        return bits.astype(np.float32).ravel()


register(
    ModelCfg(
        "pixels",
        "classical",
        32 * 32 * 3,
        32,
        description="32x32 RGB thumbnail, zero-mean, cosine = normalised correlation",
    ),
    PixelsEmbedder,
)
register(
    ModelCfg(
        "color-hist",
        "classical",
        512,
        128,
        description="8x8x8 RGB histogram, sqrt-normalised, cosine = Bhattacharyya",
    ),
    ColorHistEmbedder,
)
register(
    ModelCfg(
        "phash",
        "classical",
        64,
        32,
        similarity="hamming",
        description="64-bit DCT perceptual hash, score = 1 - Hamming/64",
    ),
    PHashEmbedder,
)
