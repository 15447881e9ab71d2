"""Strong near-duplicates in the style of the Image Similarity Challenge (DISC21), a development
set (never Holidays): real photos from the shipped packages and ../shared/data, each copied 4
times with 2-3 strong edits (AugLy's text, emoji and colour jitter; Pillow for the rest, where
AugLy's functions fail on this Pillow/numpy or share one template):
crops to 30-50% of the area, text and emoji overlays, another photo pasted over it, pads,
screenshots with a border, 90 and 5-20 degree turns, perspective, colour jitter, grayscale,
blur, JPEG 10-30, mirror. Distractors: unrelated photos, and near-misses (the other photos of the
same UKBench object, which are not copies).

`make bench-quality` also runs it: dedup precision, recall and F1 at each method's default
threshold and at its best one, CNN descriptors against pHash (imagededup), with wall times.
-> results/neardup.md, results/neardup.json
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from imgsim_lab._paths import SHARED, lab_parser
from imgsim_lab.collections_bench import prf, truth_pairs
from imgsim_verify import RANSAC_PX, VERIFY_SIDE

COPIES = 4


def _crop(img: Image.Image, rng: random.Random, photos) -> Image.Image:
    area = rng.uniform(0.3, 0.5)
    side = area**0.5
    w, h = img.size
    cw, ch = int(w * side), int(h * side)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def _text(img, rng, photos):
    import augly.image as imaugs

    return imaugs.overlay_text(img, opacity=1.0, font_size=rng.uniform(0.1, 0.25), x_pos=0.05,
                               y_pos=rng.uniform(0.1, 0.7))  # fmt: skip


def _emoji(img, rng, photos):
    import augly.image as imaugs

    return imaugs.overlay_emoji(img, emoji_size=rng.uniform(0.2, 0.4), x_pos=rng.uniform(0, 0.5),
                                y_pos=rng.uniform(0, 0.5))  # fmt: skip


def _paste(img, rng, photos):
    other = Image.open(rng.choice(photos)).convert("RGB")
    other.thumbnail((img.width // 2, img.height // 2))
    out = img.copy()
    out.paste(
        other, (rng.randint(0, img.width - other.width), rng.randint(0, img.height - other.height))
    )
    return out


def _pad(img, rng, photos):
    border = int(min(img.size) * rng.uniform(0.1, 0.3))
    return ImageOps.expand(img, border, fill=tuple(rng.randint(0, 255) for _ in range(3)))


def _screenshot(img, rng, photos):
    """The photo in an app's frame: a status bar with text above, a thin border around.
    (AugLy's overlay_onto_screenshot shrinks the photo into one shared template, so that every
    such copy looks like every other and the template, not the photo, is what matches.)"""
    w, h = img.size
    bar, edge = int(h * rng.uniform(0.06, 0.12)), int(min(w, h) * 0.03)
    frame = Image.new("RGB", (w + 2 * edge, h + bar + 2 * edge), (245, 245, 245))
    frame.paste(img, (edge, bar + edge))
    ImageDraw.Draw(frame).text(
        (edge + 4, bar // 3), f"12:{rng.randint(10, 59)}  photo", fill=(0, 0, 0)
    )
    return frame


def _turn90(img, rng, photos):
    return img.rotate(rng.choice((90, 270)), expand=True)


def _turn(img, rng, photos):
    return img.rotate(rng.choice((-1, 1)) * rng.uniform(5, 20), expand=True, fillcolor=(0, 0, 0))


def _perspective(img, rng, photos):
    w, h = img.size
    d = 0.15
    quad = [rng.uniform(0, d) * w, rng.uniform(0, d) * h, rng.uniform(0, d) * w,
            h - rng.uniform(0, d) * h, w - rng.uniform(0, d) * w, h - rng.uniform(0, d) * h,
            w - rng.uniform(0, d) * w, rng.uniform(0, d) * h]  # fmt: skip
    return img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)


def _jitter(img, rng, photos):
    import augly.image as imaugs

    return imaugs.color_jitter(img, brightness_factor=rng.uniform(0.5, 1.5),
                               contrast_factor=rng.uniform(0.5, 1.5),
                               saturation_factor=rng.uniform(0.2, 2.0))  # fmt: skip


def _grey(img, rng, photos):
    return ImageOps.grayscale(img).convert("RGB")


def _blur(img, rng, photos):
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(2, 4)))


def _jpeg(img, rng, photos):
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(10, 30))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _mirror(img, rng, photos):
    return ImageOps.mirror(img)


EDITS = {
    "crop": _crop, "text": _text, "emoji": _emoji, "paste": _paste, "pad": _pad,
    "screenshot": _screenshot, "turn90": _turn90, "turn": _turn, "perspective": _perspective,
    "jitter": _jitter, "grey": _grey, "blur": _blur, "jpeg": _jpeg, "mirror": _mirror,
}  # fmt: skip


def sources(shared: Path = SHARED) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """(originals, unrelated distractors, near-misses, overlays): the photos pasted into copies
    are none of the set's own, as DISC21's overlays come from outside its reference set (a copy
    that holds a distractor whole would be a copy of both)."""
    from imgsim_datasets.photos import shipped_photos

    originals = list(shipped_photos())
    unrelated: list[Path] = []
    near: list[Path] = []
    overlays: list[Path] = []
    uk = sorted((shared / "ukbench_sample").glob("*.jpg"))
    if uk:
        originals += uk[0:160:4]  # objects 0-39, their first photo
        near += [p for i, p in enumerate(uk[0:160]) if i % 4 in (1, 2)]  # same object, not copies
        unrelated += uk[400:1000:6]
        overlays += uk[403:1000:6]
    cal = shared / "caltech101_subset"
    if cal.is_dir():
        for folder in sorted(p for p in cal.iterdir() if p.is_dir() and p.name != "Faces_easy"):
            files = sorted(folder.glob("*.jpg"))
            originals += files[:5]
            unrelated += files[5:15]
            overlays += files[15:20]
    return originals, unrelated, near, overlays


def build(folder: Path, shared: Path = SHARED, seed: int = 0) -> dict[str, str]:
    """Write the set into `folder`; returns file name -> copy group ('' for distractors)."""
    rng = random.Random(seed)
    originals, unrelated, near, overlays = sources(shared)
    folder.mkdir(parents=True, exist_ok=True)
    group: dict[str, str] = {}
    for i, src in enumerate(originals):
        img = Image.open(src).convert("RGB")
        img.thumbnail((640, 640))
        name = f"o{i:03d}.jpg"
        img.save(folder / name, quality=92)
        group[name] = str(i)
        for c in range(COPIES):
            out = img
            edits = rng.sample(sorted(EDITS), rng.randint(2, 3))
            for e in edits:
                out = EDITS[e](out.convert("RGB"), rng, overlays or originals)
            copy = f"o{i:03d}_c{c}_{'+'.join(edits)}.jpg"
            out.convert("RGB").save(folder / copy, quality=90)
            group[copy] = str(i)
    for j, src in enumerate(unrelated + near):
        img = Image.open(src).convert("RGB")
        img.thumbnail((640, 640))
        name = f"d{j:03d}{'_near' if src in near else ''}.jpg"
        img.save(folder / name, quality=92)
        group[name] = ""
    return group


def truth(group: dict[str, str]) -> tuple[set[frozenset], set[frozenset]]:
    """(original-copy pairs: the copies to find, as in DISC21's reference-query protocol;
    copy-copy pairs of one original: counted neither way)."""
    pairs = truth_pairs({name: g for name, g in group.items() if g})
    found = {p for p in pairs if any("_c" not in n for n in p)}
    return found, pairs - found


# Score normalisation (lever 5; ISC 2021, SSCD), fixed before the results: a pair's cosine
# minus NORM_BETA times the mean of its two images' similarity to their NORM_K-th nearest
# neighbour in the collection itself (the background). Kept only if it raises F1 at a fixed
# threshold (the strong set's F1-best) on the strong and the mild set both.
NORM_K = 10
NORM_BETA = 1.0


def cnn_pairs(model: str, folder: Path, names: list[str]):
    """Every pair's cosine under `model` (the server's embedder in-process), the indices,
    images/s, and each image's similarity to its NORM_K-th nearest other image."""
    from imgsim_lab.quality import embed

    images = [Image.open(folder / n).convert("RGB") for n in names]
    vecs, rate = embed(model, images)
    sims = vecs @ vecs.T
    iu = np.triu_indices(len(names), 1)
    kth = np.sort(sims, axis=1)[:, -(NORM_K + 1)]  # the largest is itself
    return sims[iu], iu, rate, kth


def normalised(scores: np.ndarray, iu, kth: np.ndarray) -> np.ndarray:
    return scores - NORM_BETA * (kth[iu[0]] + kth[iu[1]]) / 2


def sweep(scores, iu, names: list[str], true, default: float | None, ignored=frozenset()):
    """P/R/F1 at `default` and at the F1-best threshold (`ignored` pairs count neither way)."""
    pairs = [frozenset((names[a], names[b])) for a, b in zip(*iu, strict=True)]
    keep = np.array([p not in ignored for p in pairs])
    pairs = [p for p, k in zip(pairs, keep, strict=True) if k]
    scores = scores[keep]
    is_true = np.array([p in true for p in pairs])
    order = np.argsort(-scores)
    tp = np.cumsum(is_true[order])
    k = np.arange(1, len(order) + 1)
    f1 = 2 * tp / (k + len(true))
    best = int(np.argmax(f1))
    out = {"best_threshold": float(scores[order][best]), "best": {
        "precision": float(tp[best] / (best + 1)), "recall": float(tp[best] / len(true)),
        "f1": float(f1[best])}}  # fmt: skip
    if default is not None:
        found = {p for p, s in zip(pairs, scores, strict=True) if s >= default}
        out["default_threshold"] = default
        out["default"] = prf(found, true) | {"pairs": len(found)}
    return out


def phash(folder: Path, names: list[str], true: set[frozenset], ignored) -> dict:
    """imagededup's PHash at its default distance (10) and at its best."""
    from imagededup.methods import PHash

    started = time.perf_counter()
    ph = PHash(verbose=False)
    enc = ph.encode_images(image_dir=str(folder))
    bits = {n: np.array([int(c, 16) for c in enc[n]], np.uint8) for n in names if n in enc}
    keep = [n for n in names if n in bits]
    x = np.unpackbits(np.stack([bits[n] for n in keep]).astype(np.uint8)[:, :, None], axis=2)
    x = x[:, :, 4:].reshape(len(keep), -1)  # 16 hex digits -> 64 bits
    dist = (x[:, None, :] != x[None, :, :]).sum(2)
    iu = np.triu_indices(len(keep), 1)
    out = sweep(-dist[iu].astype(float), iu, keep, true, -10.0, ignored)
    out["seconds"] = time.perf_counter() - started
    out["best_threshold"] = -out["best_threshold"]  # as a distance
    out["default_threshold"] = 10
    return out


# The rule of dedup's verification, written before the results: for each model, the
# (candidate floor, sure score, coverage, inliers) with the best F1 on this set; among the rules
# within RULE_F1_SLACK of that F1, the one with the fewest candidate pairs to verify (cost).
FLOORS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
SURES = (0.95, 0.98, 1.01)  # 1.01: every candidate is verified
COVERAGES = (0.0, 0.1, 0.2)  # the least share of an image the inliers must span
RULE_F1_SLACK = 0.005


def features(folder: Path, names: list[str]) -> tuple[list, float]:
    """Every image's verification features (`imgsim_verify`), and ms per image (one core)."""
    import imgsim_verify as verify

    started = time.perf_counter()
    feats = [verify.features(Image.open(folder / n).convert("RGB")) for n in names]
    return feats, 1000 * (time.perf_counter() - started) / len(names)


def verified(names: list[str], true, ignored, model: str, pairs, feats, ms_image) -> dict:
    """`model`'s candidates verified by `imgsim_verify` (SIFT + RANSAC, features once per
    image), every rule of the grid swept, and the rule chosen as written above. `pairs`:
    `model`'s (scores, indices) from `cnn_pairs`."""
    import imgsim_verify as verify

    scores, iu = pairs
    cand = np.flatnonzero(scores >= min(FLOORS))
    started = time.perf_counter()
    inliers = np.full(len(scores), -1.0)
    coverage = np.zeros(len(scores))
    for k in cand:
        v = verify.match(feats[iu[0][k]], feats[iu[1][k]])
        inliers[k], coverage[k] = v.inliers, v.coverage
    ms_pair = 1000 * (time.perf_counter() - started) / max(1, len(cand))

    def key_of(floor: float, sure: float, cover: float) -> np.ndarray:
        """A pair's key: accepted from `sure`; a candidate spanning `cover` by its inliers."""
        ok = (scores >= floor) & (coverage >= cover)
        return np.where(scores >= sure, 1e9, np.where(ok, inliers, -1.0))

    grid = []
    for floor in FLOORS:
        for sure in SURES:
            for cover in COVERAGES:
                r = sweep(key_of(floor, sure, cover), iu, names, true, None, ignored)
                checked = int(((scores >= floor) & (scores < sure)).sum())
                grid.append({"floor": floor, "sure": sure, "min_coverage": cover,
                             "min_inliers": int(r["best_threshold"]), "checked": checked,
                             **r["best"]})  # fmt: skip
    top = max(g["f1"] for g in grid)
    rule = min((g for g in grid if g["f1"] >= top - RULE_F1_SLACK), key=lambda g: g["checked"])
    key = key_of(rule["floor"], rule["sure"], rule["min_coverage"])
    r = sweep(key, iu, names, true, float(rule["min_inliers"]), ignored)
    return {
        "rule": {k: rule[k] for k in ("floor", "sure", "min_inliers", "min_coverage")},
        "default": r["default"],
        "checked": rule["checked"],
        "grid": grid,
        "ms_per_image": ms_image,
        "ms_per_candidate": ms_pair,
        "seconds": (ms_image * len(names) + ms_pair * rule["checked"]) / 1000,
        "curve": curve(key, iu, names, true, ignored),
    }


def curve(scores, iu, names, true, ignored, points: int = 200) -> dict:
    """Precision and recall down the ranking of `scores`, thinned to about `points` points."""
    pairs = [frozenset((names[a], names[b])) for a, b in zip(*iu, strict=True)]
    keep = np.array([p not in ignored for p in pairs])
    is_true = np.array([p in true for p, k in zip(pairs, keep, strict=True) if k])
    order = np.argsort(-scores[keep], kind="stable")
    tp = np.cumsum(is_true[order])
    n = np.arange(1, len(order) + 1)
    last = int(np.searchsorted(tp, tp[-1])) + 1  # past the last true pair, nothing changes
    at = np.unique(np.linspace(0, last - 1, points).astype(int))
    return {"precision": (tp[at] / n[at]).round(4).tolist(),
            "recall": (tp[at] / len(true)).round(4).tolist()}  # fmt: skip


MODELS = (
    "efficientnet-lite2-260,efficientnet-lite0,efficientnet-lite0-gem,"
    "efficientnet-lite0-rmac-full384-ms"
)
VERIFIED = "efficientnet-lite0-rmac-full384-ms,efficientnet-lite0-gem"


def main(argv: list[str] | None = None) -> int:
    ap = lab_parser(__doc__, shared=True)
    ap.add_argument("--models", default=MODELS, help="descriptors, each alone")
    ap.add_argument(
        "--verified", default=VERIFIED, help="descriptors whose candidates are verified"
    )
    ap.add_argument("--skip-mild", action="store_true", help="skip the mild set's check")
    ap.add_argument("--mild-only", action="store_true", help="only the mild set's check")
    args = ap.parse_args(argv)
    import tempfile

    if args.mild_only:
        done = args.out / "neardup.json"
        strong = json.loads(done.read_text())["methods"] if done.is_file() else None
        m = mild([*args.verified.split(","), "efficientnet-lite0"], args.shared, strong)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "neardup_mild.json").write_text(json.dumps(m, indent=2) + "\n")
        (args.out / "neardup_mild.md").write_text(render_mild(m))
        return 0
    with tempfile.TemporaryDirectory(prefix="imgsim-neardup-") as tmp:
        result = run(Path(tmp), args)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result, args.out / "neardup_pr.png")
    (args.out / "neardup.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "neardup.md").write_text(render(result))
    if not args.skip_mild:
        m = mild([*args.verified.split(","), "efficientnet-lite0"], args.shared, result["methods"])
        (args.out / "neardup_mild.json").write_text(json.dumps(m, indent=2) + "\n")
        (args.out / "neardup_mild.md").write_text(render_mild(m))
    return 0


def run(folder: Path, args) -> dict:
    """Build the set in `folder` and measure every method on it."""
    from imgsim_client.photos.dedup import DEDUP_THRESHOLDS
    from imgsim_client.photos.defaults import DEDUP_VERIFY

    group = build(folder, args.shared)
    names = sorted(group)
    true, ignored = truth(group)
    near = sum(n.endswith("_near.jpg") for n in names)
    result = {"images": len(names), "true_pairs": len(true), "near_misses": near,
              "methods": {}, "verified": {}}  # fmt: skip
    scored = {}
    for model in args.models.split(","):
        started = time.perf_counter()
        scores, iu, rate, kth = cnn_pairs(model, folder, names)
        scored[model] = (scores, iu)
        r = sweep(scores, iu, names, true, DEDUP_THRESHOLDS.get(model), ignored)
        r["seconds"] = time.perf_counter() - started
        r["images_per_s"] = rate
        r["curve"] = curve(scores, iu, names, true, ignored)
        result["methods"][model] = r
        print(model, json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
        norm = sweep(normalised(scores, iu, kth), iu, names, true, None, ignored)
        norm["seconds"] = r["seconds"]
        result["methods"][f"{model}, normalised"] = norm
        print(model, "normalised", json.dumps(norm), flush=True)
    result["methods"]["phash (imagededup)"] = phash(folder, names, true, ignored)
    import imgsim_verify

    if imgsim_verify.available():
        feats, ms_image = features(folder, names)
        for model in args.verified.split(","):
            if model not in scored:
                scored[model] = cnn_pairs(model, folder, names)[:2]
            v = verified(names, true, ignored, model, scored[model], feats, ms_image)
            v["shipped_rule"] = DEDUP_VERIFY.get(model)
            result["verified"][model] = v
            print(model, "verified", json.dumps(v["rule"]), json.dumps(v["default"]), flush=True)
    return result


def mild(models: list[str], shared: Path = SHARED, strong: dict | None = None) -> dict:
    """The shipped dedup defaults on the mild set of `make bench-collections` (11 light edits
    of each original, Caltech distractors; every pair within a family counts): each model's
    `--no-verify` threshold, and its verification rule where it has one; and the cosine and the
    normalised score, each at its best here and at the strong set's best (`strong`: the
    strong run's methods)."""
    import tempfile

    import imgsim_verify as verify
    from imgsim_client.photos.dedup import DEDUP_THRESHOLDS
    from imgsim_client.photos.defaults import DEDUP_VERIFY
    from imgsim_lab.collections_bench import build_near_dup

    out: dict = {"models": {}}
    with tempfile.TemporaryDirectory(prefix="imgsim-mild-") as tmp:
        folder = Path(tmp)
        group_of = build_near_dup(folder, shared=shared)
        names = sorted(group_of)
        true = truth_pairs(group_of)
        out.update(images=len(names), true_pairs=len(true))
        feats: dict[int, object] = {}
        for model in models:
            scores, iu, _, kth = cnn_pairs(model, folder, names)
            pairs = [frozenset((names[a], names[b])) for a, b in zip(*iu, strict=True)]
            r: dict = {}
            for name, sc in (
                (model, scores),
                (f"{model}, normalised", normalised(scores, iu, kth)),
            ):
                fixed = (strong or {}).get(name, {}).get("best_threshold")
                sw = sweep(sc, iu, names, true, fixed)
                r[name] = {"best_threshold": sw["best_threshold"], "best": sw["best"],
                           "strong_threshold": fixed, "at_strong": sw.get("default")}  # fmt: skip
            t = DEDUP_THRESHOLDS.get(model)
            if t is not None:
                found = {p for p, sc in zip(pairs, scores, strict=True) if sc >= t}
                r["no_verify"] = {"threshold": t, **prf(found, true)}
            rule = DEDUP_VERIFY.get(model)
            if rule is not None and verify.available():
                floor, sure, n, cover = rule[:4]
                started = time.perf_counter()
                found = set()
                for k in np.flatnonzero(scores >= floor):
                    a, b = int(iu[0][k]), int(iu[1][k])
                    if scores[k] < sure:
                        for i in (a, b):
                            if i not in feats:
                                img = Image.open(folder / names[i]).convert("RGB")
                                feats[i] = verify.features(img)
                        v = verify.match(feats[a], feats[b])
                        if v.inliers < n or v.coverage < cover:
                            continue
                    found.add(pairs[k])
                r["verified"] = {"rule": list(rule), **prf(found, true),
                                 "seconds": time.perf_counter() - started}  # fmt: skip
            out["models"][model] = r
            print("mild", model, json.dumps(r), flush=True)
    return out


def render_mild(m: dict) -> str:
    lines = [
        "# dedup's shipped defaults on the mild near-duplicate set",
        "",
        f"The set of `make bench-collections` ({m['images']} images, {m['true_pairs']} true "
        "pairs: 11 light edits of each original, Caltech distractors). The thresholds and rules "
        "were chosen on the strong set (neardup.md); nothing was chosen here.",
        "",
        "| model | `--no-verify`: threshold, P / R / F1 | verified (default): rule, P / R / F1, "
        "s |",
        "|---|---|---|",
    ]
    lines_norm = [
        "",
        f"Score normalisation (cosine minus {NORM_BETA:g} x the mean similarity of the two images "
        f"to their {NORM_K}th nearest neighbour in the collection), at each score's own best "
        "threshold here and at the strong set's best (a fixed threshold across sets):",
        "",
        "| score | best here: threshold, F1 | at the strong set's best: threshold, F1 |",
        "|---|---|---|",
    ]
    for r in m["models"].values():
        for name, x in r.items():
            if not isinstance(x, dict) or "best" not in x:
                continue
            at = x.get("at_strong")
            fixed = (f"{x['strong_threshold']:.3f}, {at['f1']:.3f}" if at else "-")  # fmt: skip
            lines_norm.append(
                f"| {name} | {x['best_threshold']:.3f}, {x['best']['f1']:.3f} | {fixed} |"
            )
    for model, r in m["models"].items():
        nv, v = r.get("no_verify"), r.get("verified")
        a = (
            f"{nv['threshold']:g}: {nv['precision']:.3f} / {nv['recall']:.3f} / {nv['f1']:.3f}"
            if nv
            else "-"
        )
        b = (f"{tuple(v['rule'])}: {v['precision']:.3f} / {v['recall']:.3f} / **{v['f1']:.3f}**, "
             f"{v['seconds']:.0f}" if v else "-")  # fmt: skip
        lines.append(f"| {model} | {a} | {b} |")
    return "\n".join(lines + lines_norm) + "\n"


def plot(r: dict, path: Path) -> None:
    """Precision/recall curves of every method (the report's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, m in r["methods"].items():
        if "curve" in m:
            ax.plot(m["curve"]["recall"], m["curve"]["precision"], label=f"{name} (cosine)")
    for name, v in r["verified"].items():
        rule = v["rule"]
        ax.plot(v["curve"]["recall"], v["curve"]["precision"], lw=2,
                label=f"{name} >= {rule['floor']:g}, verified (inliers)")  # fmt: skip
        d = v["default"]
        ax.plot([d["recall"]], [d["precision"]], "ko", ms=4)
    ph = r["methods"].get("phash (imagededup)", {}).get("default")
    if ph:
        ax.plot([ph["recall"]], [ph["precision"]], "rs", label="pHash at its default")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Strong near-duplicates: every pair, ranked (dots: dedup's rule)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def render(r: dict) -> str:
    lines = [
        "# Strong near-duplicates (development set; make bench-quality)",
        "",
        f"{r['images']} images: originals with {COPIES} strong copies each ({r['true_pairs']} "
        f"original-copy pairs to find; copy-copy pairs count neither way, as in DISC21's "
        f"reference-query protocol), unrelated photos and {r['near_misses']} near-misses "
        "(other photos of the same UKBench object, not copies); the photos pasted into copies "
        "are not in the set. Every pair above the threshold counts, as `dedup` with an exact "
        "index finds them. Precision/recall curves: neardup_pr.png.",
        "",
        "## Each descriptor alone (`dedup --no-verify`)",
        "",
        "| method | shipped threshold | P / R / F1 at it | F1-best threshold | P / R / F1 at best "
        "| img/s | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in r["methods"].items():
        d = m.get("default")
        at = f"{d['precision']:.3f} / {d['recall']:.3f} / **{d['f1']:.3f}**" if d else "-"
        b = m["best"]
        thr = m.get("default_threshold")
        thr = "-" if thr is None else f"{thr:g}" if isinstance(thr, int) else f"{thr:.3f}"
        rate = f"{m['images_per_s']:.0f}" if "images_per_s" in m else "-"
        lines.append(
            f"| {name} | {thr} | {at} | {m['best_threshold']:.3f} | "
            f"{b['precision']:.3f} / {b['recall']:.3f} / {b['f1']:.3f} | {rate} "
            f"| {m['seconds']:.0f} |"
        )
    if r["verified"]:
        lines += [
            "",
            "## Candidates verified geometrically (`dedup`'s default)",
            "",
            "The rule, written before the results: for each model the (candidate floor, sure "
            "score, coverage, inliers) with the best F1 here; among rules within "
            f"{RULE_F1_SLACK} F1 of it, the one with the fewest candidates to verify. "
            f"Floors {', '.join(f'{f:g}' for f in FLOORS)}; sure scores "
            f"{', '.join(f'{x:g}' for x in SURES)} (1.01: verify every candidate); coverage "
            f"(the share of an image the inliers span) {', '.join(f'{c:g}' for c in COVERAGES)}; "
            f"inliers swept; RANSAC tolerance {RANSAC_PX:g} px at {VERIFY_SIDE} px.",
            "",
            "| candidates from | floor | sure | coverage | inliers | P / R / F1 | pairs verified | "
            "features ms/img | ms/verified pair | s (one core) | shipped rule |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in r["verified"].items():
            rule, d = v["rule"], v["default"]
            shipped = v.get("shipped_rule")
            lines.append(
                f"| {name} | {rule['floor']:g} | {rule['sure']:g} | {rule['min_coverage']:g} | "
                f"{rule['min_inliers']} | "
                f"{d['precision']:.3f} / {d['recall']:.3f} / **{d['f1']:.3f}** | "
                f"{v['checked']} | {v['ms_per_image']:.0f} | {v['ms_per_candidate']:.1f} | "
                f"{v['seconds']:.0f} | {tuple(shipped) if shipped else '-'} |"
            )
        lines += ["", "Best rule per floor (any sure score):", ""]
        for name, v in r["verified"].items():
            best = {}
            for g in v["grid"]:
                if g["f1"] > best.get(g["floor"], {"f1": -1})["f1"]:
                    best[g["floor"]] = g
            cells = ", ".join(
                f"{f:g}: F1 {g['f1']:.3f} (sure {g['sure']:g}, coverage {g['min_coverage']:g}, "
                f"{g['min_inliers']} inliers, {g['checked']} pairs)"
                for f, g in sorted(best.items())
            )
            lines.append(f"- {name}: {cells}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
