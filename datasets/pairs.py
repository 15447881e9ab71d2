"""Build labelled pair CSVs for imgsim.

    python -m imgsim_datasets.pairs near-dup --out datasets/demo          # demo set
    python -m imgsim_datasets.pairs near-dup --src PHOTOS --out DIR       # any folder of photos
    python -m imgsim_datasets.pairs groups ../shared/data/caltech101_subset --out pairs.csv
    python -m imgsim_datasets.pairs groups ../shared/data/ukbench_sample --rule ukbench --out p.csv

`near-dup` writes DIR/images/* and DIR/pairs.csv with columns
pair_id,image_a,image_b,label,transform: one positive per (photo, transform), where image_b is a
seeded, deterministic edited copy of image_a, and as many negatives, each pairing an edited copy
with a different photo.

`groups` pairs images that share a group (all positive pairs) plus seeded, sampled negative pairs
(`--neg-ratio` per positive), with no self-pairs and no duplicates (a,b)/(b,a).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from imgsim_datasets.photos import shipped_photos

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

# ---- the transform catalogue (each: image, rng -> image) -------------------------------------


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    frac = rng.uniform(0.05, 0.20)  # fraction of each side removed, split at random
    dw, dh = int(w * frac), int(h * frac)
    left, top = rng.randint(0, dw), rng.randint(0, dh)
    return img.crop((left, top, left + w - dw, top + h - dh))


def _pad(img: Image.Image, rng: random.Random) -> Image.Image:
    border = int(min(img.size) * rng.uniform(0.05, 0.15))
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    return ImageOps.expand(img, border=border, fill=colour)


def _rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.uniform(4, 15) * rng.choice((-1, 1))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def _jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(30, 95))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _blur(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(1.0, 3.0)))


def _noise(img: Image.Image, rng: random.Random) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, rng.uniform(5, 20), arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def _gamma(img: Image.Image, rng: random.Random) -> Image.Image:
    gamma, gain = rng.uniform(0.6, 1.6), rng.uniform(0.8, 1.2)
    lut = [min(255, int(255 * gain * (i / 255) ** gamma)) for i in range(256)]
    return img.point(lut * 3)


def _grayscale(img: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(img).convert("RGB")


def _hflip(img: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(img)


def _overlay(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    w, h = out.size
    size = max(12, h // 10)
    text = rng.choice(("SAMPLE", "© imgsim", "watermark", "CONFIDENTIAL"))
    x, y = rng.randint(0, w // 3), rng.randint(0, h - size - 1)
    draw.text((x, y), text, fill=(255, 255, 255, 170), font_size=size)
    return out


def _resize_half(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR)


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "crop": _crop,
    "pad": _pad,
    "rotate": _rotate,
    "jpeg": _jpeg,
    "blur": _blur,
    "noise": _noise,
    "gamma": _gamma,
    "grayscale": _grayscale,
    "hflip": _hflip,
    "overlay": _overlay,
    "resize_half": _resize_half,
}


def build_near_dup(
    sources: list[Path], out_dir: Path, transforms: list[str], seed: int = 0, max_side: int = 640
) -> Path:
    """Write images and pairs.csv for near-duplicate detection; returns the CSV path."""
    if len(sources) < 2:
        raise SystemExit(f"need at least 2 photos, found {len(sources)}")
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    originals: list[str] = []
    rows: list[dict[str, object]] = []
    edited: list[tuple[int, str, str]] = []  # (source index, edited file, transform)
    for i, src in enumerate(sources):
        img = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
        img.thumbnail((max_side, max_side))
        name = f"{i:03d}_{src.stem}.jpg"
        img.save(img_dir / name, "JPEG", quality=95)
        originals.append(f"images/{name}")
        for t in transforms:
            copy = TRANSFORMS[t](img, random.Random(f"{seed}-{i}-{t}"))
            copy_name = f"{i:03d}_{src.stem}__{t}.jpg"
            copy.save(img_dir / copy_name, "JPEG", quality=95)
            edited.append((i, f"images/{copy_name}", t))
    for i, path, t in edited:
        rows.append({"image_a": originals[i], "image_b": path, "label": 1, "transform": t})
        other = rng.choice([j for j in range(len(originals)) if j != i])
        rows.append({"image_a": originals[other], "image_b": path, "label": 0, "transform": t})
    csv_path = out_dir / "pairs.csv"
    _write_rows(csv_path, rows)
    return csv_path


# ---- pairs from labelled groups --------------------------------------------------------------


def ukbench_group(path: Path) -> str:
    """UKBench's rule: ukbench{n:05d}.jpg belongs to object n // 4."""
    match = re.search(r"(\d+)", path.stem)
    if not match:
        raise ValueError(f"no image number in {path.name}")
    return str(int(match.group(1)) // 4)


def labelled_images(root: Path, rule: str) -> list[tuple[Path, str]]:
    """(image, group) for every image under root, by folder name or by the UKBench rule."""
    if rule == "folder":
        items = [
            (p, p.parent.name) for p in sorted(root.glob("*/*")) if p.suffix.lower() in IMAGE_EXTS
        ]
    else:
        items = [
            (p, ukbench_group(p)) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_EXTS
        ]
    if not items:
        raise SystemExit(f"no images found under {root} (rule {rule})")
    return items


def build_group_pairs(
    items: list[tuple[Path, str]],
    neg_ratio: float = 1.0,
    seed: int = 0,
    max_pos_per_group: int | None = None,
) -> list[dict[str, object]]:
    """All positive pairs within groups (optionally capped per group, seeded), plus
    round(neg_ratio * positives) distinct negative pairs sampled with the seed."""
    rng = random.Random(seed)
    by_group: dict[str, list[Path]] = {}
    for path, group in items:
        by_group.setdefault(group, []).append(path)
    positives: list[tuple[Path, Path]] = []
    for members in by_group.values():
        pairs = list(itertools.combinations(members, 2))
        if max_pos_per_group is not None and len(pairs) > max_pos_per_group:
            pairs = rng.sample(pairs, max_pos_per_group)
        positives += pairs
    group_of = {path: group for path, group in items}
    paths = [p for p, _ in items]
    n_neg = round(neg_ratio * len(positives))
    max_neg = len(paths) * (len(paths) - 1) // 2 - len(positives)
    if n_neg > max_neg:
        raise SystemExit(f"asked for {n_neg} negatives, only {max_neg} exist")
    negatives: set[tuple[Path, Path]] = set()
    while len(negatives) < n_neg:
        a, b = rng.sample(paths, 2)
        if group_of[a] != group_of[b]:
            negatives.add((a, b) if str(a) < str(b) else (b, a))
    rows = [
        {"image_a": a, "image_b": b, "label": 1, "group_a": group_of[a], "group_b": group_of[b]}
        for a, b in positives
    ]
    rows += [
        {"image_a": a, "image_b": b, "label": 0, "group_a": group_of[a], "group_b": group_of[b]}
        for a, b in sorted(negatives)
    ]
    return rows


def _write_rows(csv_path: Path, rows: list[dict[str, object]]) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["pair_id", *[k for k in rows[0] if k != "pair_id"]]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"pair_id": f"p{i:06d}", **row})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    nd = sub.add_parser("near-dup", help="near-duplicate pairs from a folder of photos")
    nd.add_argument(
        "--src", type=Path, help="folder of photos (default: photos shipped by installed packages)"
    )
    nd.add_argument("--out", type=Path, required=True, help="output folder")
    nd.add_argument(
        "--transforms",
        default=",".join(TRANSFORMS),
        help=f"comma-separated subset of: {', '.join(TRANSFORMS)}",
    )
    nd.add_argument("--seed", type=int, default=0)
    nd.add_argument("--max-side", type=int, default=640, help="longest side of the originals")
    gr = sub.add_parser("groups", help="pairs from labelled images")
    gr.add_argument("root", type=Path, help="folder of group subfolders, or of UKBench files")
    gr.add_argument(
        "--rule",
        choices=["folder", "ukbench"],
        default="folder",
        help="folder: subfolder name is the group; ukbench: number // 4",
    )
    gr.add_argument("--out", type=Path, required=True, help="output CSV")
    gr.add_argument("--neg-ratio", type=float, default=1.0, help="negatives per positive")
    gr.add_argument("--max-pos-per-group", type=int, help="cap positives sampled per group")
    gr.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "near-dup":
        names = [t.strip() for t in args.transforms.split(",") if t.strip()]
        unknown = set(names) - set(TRANSFORMS)
        if unknown:
            parser.error(f"unknown transform(s): {', '.join(sorted(unknown))}")
        sources = (
            sorted(p for p in args.src.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            if args.src
            else shipped_photos()
        )
        csv_path = build_near_dup(sources, args.out, names, args.seed, args.max_side)
        print(f"wrote {csv_path} ({len(sources)} photos x {len(names)} transforms)")
    else:
        root = args.root.resolve()
        if not root.is_dir():
            print(f"skipped: {root} not found", file=sys.stderr)
            return 0
        rows = build_group_pairs(
            labelled_images(root, args.rule), args.neg_ratio, args.seed, args.max_pos_per_group
        )
        for row in rows:
            row["image_a"], row["image_b"] = str(row["image_a"]), str(row["image_b"])
        _write_rows(args.out, rows)
        n_pos = sum(r["label"] == 1 for r in rows)
        print(f"wrote {args.out}: {n_pos} positive, {len(rows) - n_pos} negative pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
