"""`make bench-quality`: similarity on real photos -> results/quality.md, results/quality.json

Sets (read in place from ../shared/data; each skips cleanly when absent):
- INRIA Holidays (`holidays300/`): **evaluation only**. Its `queries.csv` is the official
  protocol; mAP by the official formula (`average_precision`). Nothing is fitted on it.
- UKBench (`ukbench_sample/`, development): every image queries the other 999; mAP and N-S.
- UKBench-rot (development): the same images, every fourth stored rotated by 90 degrees and
  every fourth + 2 by 270 degrees, as Holidays stores some photos; the rotation lever is chosen
  here.

The rule, written before the results: among the registered descriptors, the collection
default is the one with the best development mAP (UKBench, UKBench-rot averaged) at 15 img/s
or more, if its gain over the old default's is larger than the bootstrap 95% interval of the
paired difference over the development queries; the rotation option is on by default only if
it raises UKBench-rot mAP beyond its interval without lowering UKBench's beyond its interval;
then DBA and query expansion take the (k, alpha) with the best mean development mAP, kept only
if they beat rotations alone beyond that interval. Holidays is then reported for every row,
and for the defaults through the real CLI (`imgsim-client embed`, `index`, `search`).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_lab._paths import SHARED, lab_parser

OLD_DEFAULT = "efficientnet-lite2-260"
MIN_IMAGES_PER_S = 15.0
BOOTSTRAP = 1000


# ---- sets ----------------------------------------------------------------------------------


@dataclass
class RetrievalSet:
    """Images, and for each query the indices of its relevant images (never itself)."""

    name: str
    paths: list[Path]
    queries: list[int]
    relevant: list[set[int]]
    rotate: dict[int, int]  # image index -> degrees it is stored rotated by (dev sets)

    def image(self, i: int) -> Image.Image:
        from imgsim_server.core.images import decode_image

        img = decode_image(self.paths[i].read_bytes())
        return img.rotate(self.rotate[i], expand=True) if i in self.rotate else img


def holidays(root: Path = SHARED / "holidays300") -> RetrievalSet | None:
    """The official queries and relevant images, as `queries.csv` lists them."""
    if not (root / "queries.csv").is_file():
        return None
    with (root / "groups.csv").open(newline="") as fh:
        names = [row["path"] for row in csv.DictReader(fh)]
    pos = {n: i for i, n in enumerate(names)}
    rel: dict[int, set[int]] = {}
    with (root / "queries.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            rel.setdefault(pos[row["query"]], set()).add(pos[row["relevant"]])
    queries = sorted(rel)
    return RetrievalSet(
        "Holidays", [root / n for n in names], queries, [rel[q] for q in queries], {}
    )


def ukbench(rotated: bool = False, root: Path = SHARED / "ukbench_sample") -> RetrievalSet | None:
    from imgsim_datasets.pairs import labelled_images

    if not root.is_dir():
        return None
    items = labelled_images(root, "ukbench")
    groups = np.array([g for _, g in items])
    rel = [set(np.flatnonzero(groups == g)) - {i} for i, g in enumerate(groups)]
    rotate = {i: 90 if i % 4 == 1 else 270 for i in range(len(items)) if i % 4 in (1, 3)}
    name = "UKBench-rot" if rotated else "UKBench"
    return RetrievalSet(
        name, [p for p, _ in items], list(range(len(items))), rel, rotate if rotated else {}
    )


# ---- metrics -------------------------------------------------------------------------------


def average_precision(ranks: list[int], n_relevant: int) -> float:
    """AP from the 0-based ranks of the relevant images (query excluded), by the trapezoid
    rule of the Holidays evaluation script (`score_ap_from_ranks_1`)."""
    ap, step = 0.0, 1.0 / n_relevant
    for ntp, rank in enumerate(sorted(ranks)):
        p0 = 1.0 if rank == 0 else ntp / rank
        p1 = (ntp + 1) / (rank + 1)
        ap += (p0 + p1) * step / 2.0
    return ap


def aps(order: np.ndarray, s: RetrievalSet) -> np.ndarray:
    """Per-query AP from each query's ranking of every image (`order`: (q, n) indices)."""
    out = []
    for row, q in enumerate(s.queries):
        ranked = [i for i in order[row] if i != q]
        where = {i: r for r, i in enumerate(ranked)}
        out.append(average_precision([where[i] for i in s.relevant[row]], len(s.relevant[row])))
    return np.array(out)


def interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean over queries."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def ns_score(order: np.ndarray) -> float:
    """UKBench N-S: of each image's top 4 (itself included), how many share its group."""
    groups = np.arange(order.shape[1]) // 4
    return float((groups[order[:, :4]] == groups[:, None]).sum(1).mean())


# ---- embedding -----------------------------------------------------------------------------


def embed(model: str, images: list[Image.Image]) -> tuple[np.ndarray, float]:
    """(L2-normalised vectors, images/s) of the registered model, in-process on its exported
    graph: the server's own embedder, decode excluded."""
    from imgsim_lab.model_study import embed_arrays
    from imgsim_server.export import load

    emb = load(model)
    vecs, secs = embed_arrays(emb, [emb.preprocess(im) for im in images], batch=16)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return vecs.astype(np.float32), len(images) / secs


ROTATIONS = (0, 90, 180, 270)


def rankings(db: np.ndarray, versions: np.ndarray, s: RetrievalSet, lever: dict) -> np.ndarray:
    """Each query's ranking of every image through the product's index (`index.py`): the
    levers DBA (`dba_k`, `alpha`) and QE (`qe_k`, `alpha`) as `imgsim-client index` and
    `search` apply them; `versions`: (R, q, d) query vectors (R rotations, or 1)."""
    from imgsim_client.photos.index import VectorIndex
    from imgsim_client.photos.vectors import Vectors

    vectors = Vectors(list(range(len(db))), db, "", "cosine")
    index = VectorIndex.build(
        vectors,
        dba_k=lever.get("dba_k", 0),
        dba_alpha=lever.get("alpha", 3.0),
        qe_k=lever.get("qe_k", 0),
        qe_alpha=lever.get("alpha", 3.0),
    )
    _, ids = index.query(versions, len(db))
    return ids


def evaluate(db: np.ndarray, rot: np.ndarray | None, s: RetrievalSet, lever: dict) -> dict:
    versions = (
        rot if (lever.get("rotations") and rot is not None) else db[np.array(s.queries)][None]
    )
    order = rankings(db, versions, s, lever)
    per_query = aps(order, s)
    out = {"map": float(per_query.mean()), "ci": interval(per_query), "aps": per_query}
    if s.name == "UKBench":
        out["ns"] = ns_score(order)
    return out


def embed_set(model: str, s: RetrievalSet, rotations: bool, cache: Path | None = None) -> dict:
    """The set's vectors (and its queries' rotations), kept in `cache` between runs."""
    path = cache / f"{model}-{s.name}.npz" if cache else None
    if path is not None and path.is_file():
        z = np.load(path)
        if not rotations or "rot" in z:
            return {"db": z["db"], "rot": z["rot"] if rotations else None,
                    "images_per_s": float(z["rate"])}  # fmt: skip
    images = [s.image(i) for i in range(len(s.paths))]
    db, rate = embed(model, images)
    rot = None
    if rotations:
        qs = [images[q] for q in s.queries]
        rot = np.stack(
            [db[np.array(s.queries)]]
            + [embed(model, [im.rotate(r, expand=True) for im in qs])[0] for r in ROTATIONS[1:]]
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"rot": rot} if rot is not None else {}
        np.savez(path, db=db, rate=rate, **extra)
    return {"db": db, "rot": rot, "images_per_s": rate}


# ---- the run ----------------------------------------------------------------------------


def candidates() -> list[str]:
    from imgsim_server.embedders import list_models

    names = [OLD_DEFAULT, "efficientnet-lite0", "efficientnet-lite0-rmac-full384-ms"]
    names += [m.name for m in list_models(pattern="efficientnet-lite2-*-full384*")]
    return names


DEV = ("UKBench", "UKBench-rot")
LEVERS: list[dict] = [
    {},
    {"rotations": 1},
    *({"rotations": 1, "dba_k": k, "alpha": a} for k in (1, 2, 3) for a in (1.0, 3.0)),
    *({"rotations": 1, "qe_k": k, "alpha": 3.0} for k in (2, 3)),
    *({"rotations": 1, "dba_k": k, "qe_k": k, "alpha": 3.0} for k in (2, 3)),
]


def lever_name(lever: dict) -> str:
    if not lever:
        return "none"
    parts = ["rotations" if lever.get("rotations") else ""]
    if lever.get("dba_k"):
        parts.append(f"DBA k={lever['dba_k']}")
    if lever.get("qe_k"):
        parts.append(f"QE k={lever['qe_k']}")
    if lever.get("dba_k") or lever.get("qe_k"):
        parts.append(f"alpha={lever['alpha']:g}")
    return ", ".join(p for p in parts if p)


def dev_map(row: dict) -> float:
    return float(np.mean([row[s]["map"] for s in DEV if s in row]))


def gain_beyond_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of a - b over queries and its bootstrap 95% interval (paired)."""
    d = a - b
    low, high = interval(d)
    return float(d.mean()), low, high


def main(argv: list[str] | None = None) -> int:
    ap = lab_parser(__doc__)
    ap.add_argument("--models", help="comma-separated descriptors (default: every candidate)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the end-to-end CLI run")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "imgsim-quality",
        help="folder that keeps embeddings between runs (delete it after changing a graph)",
    )
    args = ap.parse_args(argv)
    sets = {s.name: s for s in (ukbench(), ukbench(rotated=True), holidays()) if s is not None}
    if not sets:
        print("bench-quality: no set found under", SHARED, file=sys.stderr)
        return 0
    names = args.models.split(",") if args.models else candidates()
    emb = {(n, s): embed_set(n, sets[s], s != "UKBench", args.cache) for n in names for s in sets}
    # 1. Descriptors, no lever.
    rows: dict[str, dict] = {}
    aps_of: dict[tuple[str, str, str], np.ndarray] = {}
    for n in names:
        rows[n] = {"images_per_s": float(np.mean([emb[(n, s)]["images_per_s"] for s in sets]))}
        for s in sets:
            r = evaluate(emb[(n, s)]["db"], emb[(n, s)]["rot"], sets[s], {})
            rows[n][s] = {"map": r["map"], "ci": r["ci"], "ns": r.get("ns")}
            aps_of[(n, s, "none")] = r["aps"]
        print(n, {s: round(rows[n][s]["map"], 4) for s in sets}, flush=True)
    fast = [n for n in names if rows[n]["images_per_s"] >= MIN_IMAGES_PER_S]
    best = max(fast, key=lambda n: dev_map(rows[n]))
    dev = [s for s in DEV if s in sets]

    def dev_gain(a: tuple[str, str], b: tuple[str, str]) -> tuple[float, float, float]:
        """(model, lever) a against b over the development queries of both sets, paired."""
        x = np.concatenate([aps_of[(a[0], s, a[1])] for s in dev])
        y = np.concatenate([aps_of[(b[0], s, b[1])] for s in dev])
        return gain_beyond_interval(x, y)

    checks = {}
    if best != OLD_DEFAULT and OLD_DEFAULT in names and dev:
        checks["development"] = dev_gain((best, "none"), (OLD_DEFAULT, "none"))
    chosen = best if checks and checks["development"][1] > 0 else OLD_DEFAULT
    # 2. Levers on the chosen descriptor.
    levers: dict[str, dict] = {}
    for lever in LEVERS:
        key = lever_name(lever)
        levers[key] = {"lever": lever}
        for s in sets:
            e = emb[(chosen, s)]
            r = evaluate(e["db"], e["rot"], sets[s], lever)
            levers[key][s] = {"map": r["map"], "ci": r["ci"], "ns": r.get("ns")}
            aps_of[(chosen, s, key)] = r["aps"]
        print(chosen, key, {s: round(levers[key][s]["map"], 4) for s in sets}, flush=True)
    rot = "rotations"
    upright = "UKBench"
    rot_gain = gain_beyond_interval(
        aps_of[(chosen, "UKBench-rot", rot)], aps_of[(chosen, "UKBench-rot", "none")]
    )
    rot_loss = gain_beyond_interval(
        aps_of[(chosen, upright, rot)], aps_of[(chosen, upright, "none")]
    )
    use_rot = rot_gain[1] > 0 and rot_loss[2] >= 0  # up beyond its interval; not lowered beyond
    base_key = rot if use_rot else "none"
    aug = [k for k in levers if k.startswith(rot + ", ")] if use_rot else []
    best_aug = max(aug, key=lambda k: dev_map(levers[k])) if aug else base_key
    aug_check = dev_gain((chosen, best_aug), (chosen, base_key)) if aug else (0.0, 0.0, 0.0)
    use_aug = bool(aug) and aug_check[1] > 0
    default_lever = best_aug if use_aug else base_key
    result = {
        "descriptors": rows,
        "rule": {"best_fast": best, "checks": checks, "chosen": chosen},
        "levers": {k: {kk: vv for kk, vv in v.items()} for k, v in levers.items()},
        "rotation": {"gain_rot": rot_gain, "change_upright": rot_loss, "on": use_rot},
        "augmentation": {"best": best_aug, "check": aug_check, "on": use_aug},
        "default_lever": default_lever,
        "transfer": {
            n: transfer(n, emb[(n, "Holidays")]["db"], sets["Holidays"])
            for n in names
            if "Holidays" in sets
        },
        "cli": None if args.skip_cli else cli_run(chosen, levers[default_lever]["lever"], sets),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (args.out / "quality.md").write_text(render(result, sets))
    print(f"wrote {args.out / 'quality.md'}")
    return 0


def transfer(model: str, db: np.ndarray, s: RetrievalSet) -> list[dict]:
    """How `model`'s calibrated verdict thresholds (measured on the sets thresholds.json
    names) transfer to `s`: TPR over the pairs of one scene (a query and its relevant images,
    every pair among them) and FPR over every other pair, at each threshold."""
    from imgsim_server.embedders._calibration import thresholds

    group = np.full(len(s.paths), -1)
    for g, (q, rel) in enumerate(zip(s.queries, s.relevant, strict=True)):
        group[[q, *rel]] = g
    iu = np.triu_indices(len(s.paths), 1)
    sims = (db @ db.T)[iu]
    same = (group[iu[0]] == group[iu[1]]) & (group[iu[0]] >= 0)
    out = []
    for t in thresholds(model):
        above = sims >= t.score
        out.append({"task": t.task, "dataset": t.dataset, "fpr_measured": t.fpr,
                    "tpr_measured": t.tpr, "score": t.score, "tpr": float(above[same].mean()),
                    "fpr": float(above[~same].mean())})  # fmt: skip
    return out


def cli_run(model: str, lever: dict, sets: dict[str, RetrievalSet]) -> dict | None:
    """Holidays through the real commands with their defaults: `imgsim-client embed`, `index`
    and `search` against an `imgsim-server` serving `model`."""
    from imgsim_lab.servers import ServerProcess

    s = sets.get("Holidays")
    if s is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="imgsim-quality-"))
    cli = [sys.executable, "-m", "imgsim_client.cli"]
    with ServerProcess("--models", "") as srv:  # the server's defaults
        conn = ["--server", srv.address, "--timeout", "300", "--no-progress"]
        started = time.perf_counter()
        folder = s.paths[0].parent
        subprocess.run(
            [*cli, "embed", str(folder), "-o", str(work / "v.parquet"), *conn], check=True
        )
        subprocess.run(
            [*cli, "index", str(work / "v.parquet"), "-o", str(work / "idx")], check=True
        )
        queries = [str(s.paths[q]) for q in s.queries]
        subprocess.run(
            [
                *cli,
                "search",
                str(work / "idx"),
                *queries,
                "-k",
                str(len(s.paths)),
                "-o",
                str(work / "hits.csv"),
                *conn,
            ],
            check=True,
        )
        seconds = time.perf_counter() - started
    pos = {str(p): i for i, p in enumerate(s.paths)}
    ranked: dict[int, list[int]] = {}
    with (work / "hits.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            ranked.setdefault(pos[row["query"]], []).append(pos[row["path"]])
    order = np.array([ranked[q] for q in s.queries])
    per_query = aps(order, s)
    params = json.loads((work / "idx" / "index.json").read_text())
    return {
        "model": params["model"],  # what embed chose by default
        "expected_model": model,  # what the rule chose
        "map": float(per_query.mean()),
        "ci": interval(per_query),
        "seconds": seconds,
        "index": {k: params[k] for k in ("dba_k", "dba_alpha", "qe_k", "qe_alpha")},
        "expected_lever": lever_name(lever),
    }


PUBLISHED = (
    ("MAC (off the shelf, VGG16)", 0.716),
    ("SPoC (off the shelf)", 0.802),
    ("CroW (off the shelf)", 0.851),
    ("Gordo et al. 2017 (fine-tuned R-MAC)", 0.903),
    ("Gordo et al. 2017, rotated photos fixed", 0.948),
)


def _rule_text() -> str:
    text = __doc__.split("The rule, written before the results: ")[1].strip()
    return text[0].upper() + text[1:]


def _fmt(r: dict) -> str:
    return f"{r['map']:.4f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def render(r: dict, sets: dict[str, RetrievalSet]) -> str:
    names = list(sets)
    lines = [
        "# Similarity on real photos (make bench-quality)",
        "",
        "Sets: "
        + ", ".join(
            f"{n} ({len(sets[n].paths)} images, {len(sets[n].queries)} queries)" for n in names
        )
        + ". Holidays is evaluation only; UKBench and UKBench-rot (every 4th image stored turned "
        "by 90 degrees, every 4th + 2 by 270) are the development sets. mAP by the Holidays "
        "evaluation script's formula, with a bootstrap 95% interval over queries "
        "(1,000 resamples).",
        "",
        "## The rule (written before the results)",
        "",
        _rule_text(),
        "",
        "## Descriptors (no lever)",
        "",
        "| descriptor | img/s (2 cores, ONNX Runtime) | "
        + " | ".join(f"{n} mAP" for n in names)
        + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for n, row in r["descriptors"].items():
        mark = " **(chosen)**" if n == r["rule"]["chosen"] else ""
        lines.append(
            f"| {n}{mark} | {row['images_per_s']:.0f} | "
            + " | ".join(_fmt(row[s]) for s in names)
            + " |"
        )
    checks = r["rule"]["checks"]
    lines += [
        "",
        f"Best development mAP at >= {MIN_IMAGES_PER_S:g} img/s: `{r['rule']['best_fast']}`; "
        f"its gain over `{OLD_DEFAULT}` (paired, per query): "
        + "; ".join(f"{s} {g:+.4f} [{lo:+.4f}, {hi:+.4f}]" for s, (g, lo, hi) in checks.items())
        + f". Collection descriptor: **`{r['rule']['chosen']}`**.",
        "",
        f"## Levers on `{r['rule']['chosen']}`",
        "",
        "| lever | " + " | ".join(f"{n} mAP" for n in names) + " | UKBench N-S |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for k, row in r["levers"].items():
        mark = " **(default)**" if k == r["default_lever"] else ""
        ns = row.get("UKBench", {}).get("ns")
        cells = " | ".join(_fmt(row[s]) for s in names)
        lines.append(f"| {k}{mark} | {cells} | {ns:.3f} |" if ns else f"| {k}{mark} | {cells} | |")
    g, lo, hi = r["rotation"]["gain_rot"]
    g2, lo2, hi2 = r["rotation"]["change_upright"]
    lines += [
        "",
        f"Rotations (4 versions of each query): UKBench-rot {g:+.4f} [{lo:+.4f}, {hi:+.4f}], "
        f"UKBench {g2:+.4f} [{lo2:+.4f}, {hi2:+.4f}]: "
        f"{'on' if r['rotation']['on'] else 'off'} by default. "
        f"Best augmentation on top: {r['augmentation']['best']}: development "
        + "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r["augmentation"]["check"])
        + f" over rotations alone: {'on' if r['augmentation']['on'] else 'off'} by default.",
        "",
        "## Holidays through the commands, with their defaults",
        "",
    ]
    cli = r["cli"]
    if cli:
        lines += [
            f"`imgsim-client embed` + `index` + `search`, every option at its default (embed "
            f"used the server's collection descriptor, `{cli['model']}`; search embedded each "
            f"query in its 4 rotations): mAP **{_fmt(cli)}**, {cli['seconds']:.0f} s for the "
            f"three commands; index.json records {cli['index']}.",
            "",
        ]
    lines += ["| published (full Holidays, 1,491 images at full resolution) | mAP |", "|---|---|"]
    lines += [f"| {n} | {m:.3f} |" for n, m in PUBLISHED]
    rows = [(n, t) for n, ts in r.get("transfer", {}).items() for t in ts]
    if rows:
        lines += [
            "",
            "## Calibrated verdict thresholds on Holidays",
            "",
            "Each model's verdict thresholds (thresholds.json: the task, the set they were "
            "measured on and their FPR there) applied to Holidays pairs: TPR over pairs of one "
            "scene, FPR over every other pair. Nothing here was fitted on Holidays.",
            "",
            "| model | task | measured on | score | FPR / TPR there | FPR / TPR on Holidays |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {t['task']} | {t['dataset']} | {t['score']:.3f} | "
            f"{t['fpr_measured']:g} / {t['tpr_measured']:.3f} | {t['fpr']:.4f} / {t['tpr']:.3f} |"
            for n, t in rows
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
