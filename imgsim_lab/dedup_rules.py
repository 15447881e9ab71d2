"""dedup's defaults chosen on every development set at once, by the worst of them
(`make bench-quality`; never Holidays) -> results/dedup_rules.md, dedup_rules.json.

The sets, of three kinds: the strong DISC21-style copies of photos (`neardup.py`), the mild set
of `make bench-collections` (light edits), and low-texture graphics (`graphics.py`: logos,
icons, drawings, charts, screenshots; thumbnails, squashed, turned and mirrored copies).

**The rule, written before the results.** A dedup rule is (candidate floor, sure score,
inliers, coverage, fewest features, cannot-tell score): candidates score at least the floor
(the collection descriptor's cosine); from the sure score they are kept at once; below it they
are verified geometrically (`imgsim_verify`), which answers yes (inliers and coverage reached),
no, or cannot tell when either image has fewer SIFT features than the fewest it needs to judge,
in which case the descriptor decides alone at the cannot-tell score. The shipped rule is the one
whose lowest F1 over the sets is highest; among rules within RULE_F1_SLACK of it, the one that
verifies the fewest candidates. It is chosen separately for each verification transform
(similarity: rotation, one scale, shift; affine: two scales and a shear, kept plausible by
bounds) and each way of scoring candidates (upright; the best over the 4 rotations of one
image); a transform or scoring way is shipped only if it raises the
lowest F1 by at least MIN_GAIN at a precision no lower, and the scoring way only if dedup stays
within MAX_COST times today's time. The `--no-verify` threshold is chosen by the same worst-set
F1. Today's rule is measured beside them, with imagededup's PHash.

**Amended after the results, and said so.** Two requirements of the issue this serves override
the selection above where they conflict with it: (1) verification must fit a change of aspect
ratio, so the transform is the affine one (bounded by the images' shapes) whatever its F1 gain
(measured: within 0.005 of the similarity transform on the worst set, and better on graphics);
(2) no default may lose more than NO_LOSS F1 against today's on any set, so the `--no-verify`
threshold is the best worst-set one among those that keep that bound (today's qualifies).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgsim_lab._paths import lab_parser
from imgsim_lab.collections_bench import truth_pairs

MODEL = "efficientnet-lite0-rmac-full384-ms"
TODAY = {"floor": 0.65, "sure": 0.95, "min_inliers": 22, "min_coverage": 0.2,
         "min_features": 0, "unsure": 1.01, "transform": "similarity",
         "scoring": "upright"}  # fmt: skip
TODAY_NO_VERIFY = 0.78
FLOORS = (0.6, 0.65, 0.7, 0.75)
SURES = (0.9, 0.95, 0.98, 1.01)
INLIERS = (8, 10, 12, 15, 18, 22, 26, 30, 40)
COVERAGES = (0.0, 0.1, 0.2)
MIN_FEATURES = (0, 40, 80, 120, 160, 240)
UNSURE = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01)  # 1.01: a cannot-tell pair is never kept
RULE_F1_SLACK = 0.002
MIN_GAIN = 0.01
NO_LOSS = 0.01
MAX_COST = 2.5
VERSIONS = ((0, False), (90, False), (180, False), (270, False))


def build_sets(root: Path, shared: Path) -> dict[str, dict]:
    from imgsim_lab import graphics, neardup
    from imgsim_lab.collections_bench import build_near_dup

    sets = {}
    group = neardup.build(root / "strong", shared)
    true, ignored = neardup.truth(group)
    sets["strong"] = {"folder": root / "strong", "names": sorted(group), "true": true,
                      "ignored": ignored}  # fmt: skip
    (root / "mild").mkdir(parents=True, exist_ok=True)
    group_of = build_near_dup(root / "mild", shared=shared)
    sets["mild"] = {"folder": root / "mild", "names": sorted(group_of),
                    "true": truth_pairs(group_of), "ignored": set()}  # fmt: skip
    group = graphics.build(root / "graphics")
    true, ignored = neardup.truth(group)
    sets["graphics"] = {"folder": root / "graphics", "names": sorted(group), "true": true,
                        "ignored": ignored}  # fmt: skip
    return sets


def _version(img: Image.Image, degrees: int, mirror: bool) -> Image.Image:
    out = ImageOps.mirror(img) if mirror else img
    return out.rotate(degrees, expand=True) if degrees else out


def embed_views(folder: Path, names: list[str]) -> tuple[np.ndarray, list[float]]:
    """(8, n, d) vectors of every image in each version, and seconds per version; kept in the
    lab's cache under a digest of the images, so that a rerun measures only verification."""
    import hashlib

    from imgsim_lab.quality import embed
    from imgsim_server.embedders._onnx import cache_dir

    digest = hashlib.sha256(MODEL.encode())
    for n in names:
        digest.update(n.encode() + (folder / n).read_bytes())
    cached = cache_dir().parent / "lab" / f"views-{digest.hexdigest()[:16]}.npz"
    if cached.is_file():
        kept = np.load(cached)
        return kept["views"], kept["seconds"].tolist()
    images = [Image.open(folder / n).convert("RGB") for n in names]
    out, seconds = [], []
    for degrees, mirror in VERSIONS:
        started = time.perf_counter()
        vecs, _ = embed(MODEL, [_version(img, degrees, mirror) for img in images])
        seconds.append(time.perf_counter() - started)
        out.append(vecs)
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, views=np.stack(out), seconds=np.array(seconds))
    return np.stack(out), seconds


def measure_set(s: dict) -> dict:
    """Every pair's upright and best-over-versions cosine, and each candidate's verification
    under both transforms, with the two images' feature counts."""
    import imgsim_verify as verify

    names = s["names"]
    views, seconds = embed_views(s["folder"], names)
    upright = views[0] @ views[0].T
    best4 = np.max(views[:4] @ views[0].T, axis=0)
    iu = np.triu_indices(len(names), 1)
    scores = {"upright": upright[iu], "rotations": np.maximum(best4, best4.T)[iu]}
    cand = np.flatnonzero(np.max(np.stack(list(scores.values())), axis=0) >= min(FLOORS))
    started = time.perf_counter()
    feats = {}
    for k in cand:
        for i in (iu[0][k], iu[1][k]):
            if i not in feats:
                feats[i] = verify.features(Image.open(s["folder"] / names[i]).convert("RGB"))
    feature_s = time.perf_counter() - started
    out = {t: {"inliers": np.zeros(len(cand)), "coverage": np.zeros(len(cand))}
           for t in ("similarity", "affine")}  # fmt: skip
    match_s = {}
    for t in out:
        started = time.perf_counter()
        for j, k in enumerate(cand):
            v = verify.match(feats[iu[0][k]], feats[iu[1][k]], transform=t)
            out[t]["inliers"][j], out[t]["coverage"][j] = v.inliers, v.coverage
        match_s[t] = time.perf_counter() - started
    fewest = np.array([min(len(feats[iu[0][k]].points), len(feats[iu[1][k]].points))
                       for k in cand])  # fmt: skip
    pairs = [frozenset((names[a], names[b])) for a, b in zip(*iu, strict=True)]
    is_true = np.array([p in s["true"] for p in pairs])
    counts = np.array([p not in s["ignored"] for p in pairs])
    return {"names": names, "scores": scores, "cand": cand, "verify": out, "fewest": fewest,
            "is_true": is_true, "counts": counts, "n_true": len(s["true"]),
            "seconds": {"embed_per_version": seconds, "features": feature_s,
                        "match": match_s, "images": len(names)}}  # fmt: skip


def evaluate(m: dict, rule: dict) -> dict:
    """P/R/F1 of a rule on one measured set."""
    scores = m["scores"][rule["scoring"]]
    found = scores >= (rule["sure"] if rule.get("no_verify") is None else rule["no_verify"])
    if rule.get("no_verify") is None:
        v = m["verify"][rule["transform"]]
        c = scores[m["cand"]]
        few = m["fewest"] < rule["min_features"]
        ok = (v["inliers"] >= rule["min_inliers"]) & (v["coverage"] >= rule["min_coverage"])
        keep = (c >= rule["floor"]) & ((c >= rule["sure"]) | np.where(few, c >= rule["unsure"], ok))
        found = found & (scores >= rule["floor"])
        found[m["cand"]] |= keep
    found &= m["counts"]
    tp = int((found & m["is_true"]).sum())
    n = int(found.sum())
    p = tp / n if n else 0.0
    r = tp / m["n_true"] if m["n_true"] else 0.0
    checked = int(((scores[m["cand"]] >= rule.get("floor", 1)) &
                   (scores[m["cand"]] < rule.get("sure", 0))).sum())  # fmt: skip
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "pairs": n, "checked": checked}  # fmt: skip


def choose(measured: dict, transform: str, scoring: str) -> tuple[dict, dict]:
    """The rule of the module's docstring for one transform and scoring way, and its results."""
    tried = []
    for floor, sure, n, cover, few, unsure in itertools.product(
        FLOORS, SURES, INLIERS, COVERAGES, MIN_FEATURES, UNSURE
    ):
        if few == 0 and unsure != UNSURE[-1]:
            continue  # no pair is cannot-tell: one cannot-tell score stands for all
        rule = {"floor": floor, "sure": sure, "min_inliers": n, "min_coverage": cover,
                "min_features": few, "unsure": unsure, "transform": transform,
                "scoring": scoring}  # fmt: skip
        res = {name: evaluate(m, rule) for name, m in measured.items()}
        worst = min(r["f1"] for r in res.values())
        tried.append((worst, sum(r["checked"] for r in res.values()), rule, res))
    top = max(t[0] for t in tried)
    _, _, rule, res = min((t for t in tried if t[0] >= top - RULE_F1_SLACK), key=lambda t: t[1])
    return rule, res


def main(argv: list[str] | None = None) -> int:
    ap = lab_parser(__doc__, shared=True)
    args = ap.parse_args(argv)
    from imgsim_lab.neardup import phash

    with tempfile.TemporaryDirectory(prefix="imgsim-rules-") as tmp:
        sets = build_sets(Path(tmp), args.shared)
        measured = {}
        phashed = {}
        for name, s in sets.items():
            measured[name] = measure_set(s)
            phashed[name] = phash(s["folder"], s["names"], s["true"], s["ignored"])
            print(name, len(s["names"]), "images", len(s["true"]), "true pairs", flush=True)
    result = summarise(measured, phashed)
    result["shipped"] = shipped(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dedup_rules.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "dedup_rules.md").write_text(render(result))
    print(render(result))
    return 0


def summarise(measured: dict, phashed: dict) -> dict:
    rows = {"today": (TODAY, {n: evaluate(m, TODAY) for n, m in measured.items()})}
    for transform in ("similarity", "affine"):
        for scoring in ("upright", "rotations"):
            rows[f"{transform}, {scoring}"] = choose(measured, transform, scoring)
    no_verify = {}
    sweep = {}
    for scoring in ("upright", "rotations"):
        best = None
        for t in np.arange(0.6, 0.96, 0.01):
            rule = {"no_verify": float(round(t, 2)), "scoring": scoring}
            res = {n: evaluate(m, rule) for n, m in measured.items()}
            if scoring == "upright":
                sweep[f"{t:.2f}"] = res
            worst = min(r["f1"] for r in res.values())
            if best is None or worst > best[2]:
                best = (rule, res, worst)
        no_verify[scoring] = best[:2]
    today_nv = {"no_verify": TODAY_NO_VERIFY, "scoring": "upright"}
    no_verify["today"] = (today_nv, {n: evaluate(m, today_nv) for n, m in measured.items()})
    cost = {}
    for name, m in measured.items():
        s = m["seconds"]
        per = 1000 / s["images"]
        up = s["embed_per_version"][0] * per
        cost[name] = {
            "embed_upright_s_per_1000": up,
            "embed_4_rotations_s_per_1000": sum(s["embed_per_version"][:4]) * per,
            "features_s_per_1000": s["features"] * per,
            "match_s_per_1000": {t: v * per for t, v in s["match"].items()},
        }
    return {"model": MODEL, "rules": {k: {"rule": r, "sets": res} for k, (r, res) in rows.items()},
            "no_verify": {k: {"rule": r, "sets": res} for k, (r, res) in no_verify.items()},
            "phash": {n: p.get("default") for n, p in phashed.items()}, "cost": cost,
            "no_verify_sweep": sweep,
            "sets": {n: {"images": len(m["names"]), "true_pairs": m["n_true"]}
                     for n, m in measured.items()}}  # fmt: skip


def _worst(x: dict, key: str) -> float:
    return min(s[key] for s in x["sets"].values())


def shipped(r: dict) -> dict:
    """What the docstring's rule ships: the transform, then the scoring way, each only for a
    gain of MIN_GAIN in the worst-set F1 at a worst-set precision no lower (and the scoring way
    within MAX_COST of today's dedup time), and the --no-verify threshold."""
    rules = r["rules"]

    def better(new: dict, old: dict) -> bool:
        return (_worst(new, "f1") >= _worst(old, "f1") + MIN_GAIN
                and _worst(new, "precision") >= _worst(old, "precision") - 0.005)  # fmt: skip

    transform = "affine"  # required (the docstring's amendment); its gain is in the table
    scoring, cost = "upright", {}
    for way in ("rotations",):
        # dedup's time per 1,000 images: embedding every version, then SIFT and matching
        today = sum(c["embed_upright_s_per_1000"] + c["features_s_per_1000"]
                    + c["match_s_per_1000"]["similarity"] for c in r["cost"].values())  # fmt: skip
        key = "embed_4_rotations_s_per_1000"
        new = sum(c[key] + c["features_s_per_1000"] + c["match_s_per_1000"][transform]
                  for c in r["cost"].values())  # fmt: skip
        cost[way] = new / today
        if cost[way] <= MAX_COST and better(rules[f"{transform}, {way}"],
                                            rules[f"{transform}, {scoring}"]):  # fmt: skip
            scoring = way
    today = r["no_verify"]["today"]["sets"]
    nv = {"upright": {"rule": {"no_verify": TODAY_NO_VERIFY}}}
    best = min(today[n]["f1"] for n in today)
    for t, res in r.get("no_verify_sweep", {}).items():
        worst = min(res[n]["f1"] for n in res)
        if all(res[n]["f1"] >= today[n]["f1"] - NO_LOSS for n in res) and worst > best:
            nv, best = {"upright": {"rule": {"no_verify": float(t)}}}, worst
    return {"rule": f"{transform}, {scoring}", "rotations": {"upright": 1, "rotations": 4}[scoring],
            "cost_vs_today": cost,
            "no_verify": nv["upright"]["rule"]["no_verify"]}  # fmt: skip


def render(r: dict) -> str:
    sets = list(r["sets"])
    lines = [
        "# dedup's rule on every development set (worst-set F1)",
        "",
        __doc__.split("\n\n", 1)[1],
        "",
    ]
    lines += ["| set | images | true pairs |", "|---|---:|---:|"]
    lines += [f"| {n} | {s['images']} | {s['true_pairs']} |" for n, s in r["sets"].items()]
    head = " | ".join(f"{n} P / R / F1" for n in sets)
    lines += ["", f"| rule | {head} | worst F1 |", "|---" * (len(sets) + 2) + "|"]
    for name, x in r["rules"].items():
        res = x["sets"]
        cells = " | ".join(f"{res[n]['precision']:.3f} / {res[n]['recall']:.3f} / "
                           f"{res[n]['f1']:.3f}" for n in sets)  # fmt: skip
        ru = x["rule"]
        desc = (f"{name}: floor {ru['floor']:g}, sure {ru['sure']:g}, {ru['min_inliers']} inliers, "
                f"coverage {ru['min_coverage']:g}, cannot tell below {ru['min_features']} features "
                f"-> {ru['unsure']:g}")  # fmt: skip
        lines.append(f"| {desc} | {cells} | {min(res[n]['f1'] for n in sets):.3f} |")
    for name, x in r["no_verify"].items():
        res = x["sets"]
        cells = " | ".join(f"{res[n]['precision']:.3f} / {res[n]['recall']:.3f} / "
                           f"{res[n]['f1']:.3f}" for n in sets)  # fmt: skip
        lines.append(f"| --no-verify {name}: {x['rule']['no_verify']:g} | {cells} | "
                     f"{min(res[n]['f1'] for n in sets):.3f} |")  # fmt: skip
    ph = r["phash"]
    cells = " | ".join(f"{ph[n]['precision']:.3f} / {ph[n]['recall']:.3f} / {ph[n]['f1']:.3f}"
                       if ph.get(n) else "-" for n in sets)  # fmt: skip
    lines.append(f"| imagededup PHash, default | {cells} | |")
    sh = r.get("shipped")
    if sh:
        costs = ", ".join(f"{k} {v:.1f}x" for k, v in sh["cost_vs_today"].items())
        lines += ["", f"**Shipped** (the rule above): `{sh['rule']}` "
                  f"(rotations {sh['rotations']}); `--no-verify` threshold {sh['no_verify']:g}. "
                  f"dedup's time against today's per 1,000 images: {costs}."]  # fmt: skip
    lines += ["", "Cost, seconds per 1,000 images on this machine (one process):", "",
              "| set | embed upright | embed 4 rotations | SIFT features | "
              "match (similarity / affine) |", "|---|---:|---:|---:|---|"]  # fmt: skip
    for n, c in r["cost"].items():
        lines.append(f"| {n} | {c['embed_upright_s_per_1000']:.0f} | "
                     f"{c['embed_4_rotations_s_per_1000']:.0f} | {c['features_s_per_1000']:.0f} | "
                     f"{c['match_s_per_1000']['similarity']:.0f} / "
                     f"{c['match_s_per_1000']['affine']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
