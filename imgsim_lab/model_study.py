"""The model and preprocessing study (issue 14): every registered EfficientNet-Lite variant and
the classical baselines on every labelled set at hand, the default chosen by a rule written
before the results, and calibrated thresholds per task.

Sets (each skipped cleanly when its data is absent):
- near-dup edits: shipped photos and Caltech originals with 11 edits each, plus 200 Caltech
  distractors (`imgsim_lab.collections_bench.build_near_dup`); task "near-duplicate";
- ukbench: 250 objects x 4 views (also the viewpoint/pose set: the views differ in viewpoint and
  lighting); task "same object";
- caltech7: 7 Caltech-101 classes; task "same category".

Pair metrics use the same pair lists as `make study` (all positives, as many sampled negatives):
AUC with a bootstrap 95% interval (pairs resampled), EER, TPR at 1% FPR. Thresholds use every
negative pair of a set (all cross-group pairs), with a distribution-free 95% interval of the
quantile (binomial order statistics).

Vectors come from the registry's embedders in-process (the server runs the same code; tests
check it to 1e-5). A `-flip` variant's vector is the normalised mean of its base variant's
vectors of the image and of its mirror, which is what its embedder computes (tested), so each
network runs twice per image, not four times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import ImageOps
from scipy.stats import binom

from imgsim_client.evaluate import compute_metrics
from imgsim_datasets import pairs as pair_builders
from imgsim_lab import machine
from imgsim_lab._paths import ROOT, lab_parser

THRESHOLDS_FILE = ROOT / "imgsim_server" / "embedders" / "thresholds.json"
OLD_DEFAULT = "efficientnet-lite0"
COST_LIMIT = 2.5  # x the old default's seconds per image
FPRS = (0.01, 0.001)
BOOTSTRAP = 1000

# Written before any result of this study was seen (committed on its own, before the first run).
RULE = f"""\
**Rule (written before the results).** Candidates are the registered EfficientNet-Lite
variants whose ONNX fp32 cost per image on this CPU (embedding only, measured in this run) is
at most {COST_LIMIT}x that of `{OLD_DEFAULT}`. Each candidate is ranked by AUC on each labelled
set present (near-dup edits, ukbench, caltech7; rank 1 is best, ties share the mean rank). The
winner has the best mean rank; ties go to the cheaper one. It becomes the default only if on no
set its AUC is below `{OLD_DEFAULT}`'s by more than `{OLD_DEFAULT}`'s bootstrap 95% half-interval
on that set; otherwise the next candidate by mean rank is tried, and if none passes,
`{OLD_DEFAULT}` stays the default. Model names keep their meaning: the old default stays
selectable by name."""

TASK_OF = {
    "near-dup edits": "near-duplicate",
    "ukbench": "same object",
    "caltech7": "same category",
}


# ---- data --------------------------------------------------------------------------------------


def build_sets(work: Path, shared: Path) -> tuple[dict[str, dict], list[str]]:
    """name -> {items: [(path, group)], task}; plus notes for what was skipped."""
    from imgsim_lab.collections_bench import build_near_dup

    sets: dict[str, dict] = {}
    notes: list[str] = []
    nd = work / "near_dup"
    marker = nd / "groups.json"
    if not marker.is_file():
        nd.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(build_near_dup(nd, shared=shared)))
    groups = json.loads(marker.read_text())
    sets["near-dup edits"] = {"items": [(nd / name, g) for name, g in sorted(groups.items())]}
    uk = shared / "ukbench_sample"
    if uk.is_dir():
        sets["ukbench"] = {"items": pair_builders.labelled_images(uk, "ukbench")}
    else:
        notes.append(f"ukbench skipped: {uk} not found")
    cal = shared / "caltech101_subset"
    if cal.is_dir():
        sets["caltech7"] = {"items": pair_builders.labelled_images(cal, "folder")}
    else:
        notes.append(f"caltech7 skipped: {cal} not found (near-dup edits has no distractors)")
    for name, spec in sets.items():
        spec["task"] = TASK_OF[name]
        cap = 300 if name == "caltech7" else None
        rows = pair_builders.build_group_pairs(
            spec["items"], neg_ratio=1.0, seed=0, max_pos_per_group=cap
        )
        index = {str(p): i for i, (p, _) in enumerate(spec["items"])}
        spec["pairs"] = (
            np.array([index[str(r["image_a"])] for r in rows]),
            np.array([index[str(r["image_b"])] for r in rows]),
            np.array([int(r["label"]) for r in rows]),
        )
    return sets, notes


# ---- statistics --------------------------------------------------------------------------------


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC under each row of `counts` (how often each pair is drawn): Mann-Whitney over tie
    groups, vectorised over rows; equal to sklearn's AUC with those sample weights."""
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], counts[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of equal scores
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1 - y), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives strictly below each tie group
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return wins / np.maximum(pos.sum(axis=1) * neg.sum(axis=1), 1)


def bootstrap_auc(labels: np.ndarray, scores: np.ndarray, n: int = BOOTSTRAP, seed: int = 0):
    """95% percentile interval of ROC AUC with the pairs resampled `n` times (1000 resamples of
    5k pairs take well under a second)."""
    rng = np.random.default_rng(seed)
    m = len(scores)
    draws = rng.integers(0, m, size=(n, m))
    counts = np.bincount((np.arange(n)[:, None] * m + draws).ravel(), minlength=n * m)
    lo, hi = np.percentile(weighted_aucs(labels, scores, counts.reshape(n, m)), [2.5, 97.5])
    return float(lo), float(hi)


def quantile_interval(values: np.ndarray, q: float, level: float = 0.95):
    """The q-quantile of `values` and a distribution-free interval for it: the order statistics
    whose ranks bound a Binomial(n, q) count with probability `level`."""
    v = np.sort(values)
    n = len(v)
    k = int(np.clip(np.ceil(q * n) - 1, 0, n - 1))
    lo_k = int(np.clip(binom.ppf((1 - level) / 2, n, q) - 1, 0, n - 1))
    hi_k = int(np.clip(binom.ppf(1 - (1 - level) / 2, n, q), 0, n - 1))
    return float(v[k]), float(v[lo_k]), float(v[hi_k])


def similarity_matrix(kind: str, emb: np.ndarray) -> np.ndarray:
    """All-pairs similarity with the registry's similarity functions, vectorised."""
    if kind == "cosine":
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return unit @ unit.T
    if kind == "hamming":
        bits = emb.astype(np.float32)
        agree = bits @ bits.T + (1 - bits) @ (1 - bits).T
        return agree / bits.shape[1]
    raise ValueError(kind)


def ns_score(sim: np.ndarray, groups: np.ndarray) -> float:
    """UKBench N-S: for each image, how many of its group's 4 images (itself included) are in
    its top 4 (4.0 is perfect)."""
    sim = sim.copy()
    np.fill_diagonal(sim, np.inf)  # the query itself ranks first
    top4 = np.argsort(-sim, axis=1, kind="stable")[:, :4]
    return float((groups[top4] == groups[:, None]).sum(axis=1).mean())


def evaluate_set(vecs: np.ndarray, similarity: str, spec: dict, calibrate: bool = True) -> dict:
    """Pair metrics with intervals, N-S for ukbench, and (`calibrate`) thresholds at FPRS with
    intervals."""
    a, b, y = spec["pairs"]
    sim = similarity_matrix(similarity, vecs)
    scores = sim[a, b].astype(np.float64)
    m = compute_metrics(y, scores)
    lo, hi = bootstrap_auc(y, scores)
    out = {
        "task": spec["task"],
        "auc": m.auc,
        "auc_low": lo,
        "auc_high": hi,
        "eer": m.eer,
        "tpr_at_fpr_1pct": m.tpr_at_fpr_1pct,
        "pairs": len(y),
    }
    groups = np.array([g for _, g in spec["items"]])
    if spec["task"] == "same object":
        out["ns"] = ns_score(sim, groups)
    if not calibrate:
        return out
    same = groups[:, None] == groups[None, :]
    iu = np.triu_indices(len(groups), 1)
    neg_all, pos_all = sim[iu][~same[iu]], sim[iu][same[iu]]
    out["thresholds"] = []
    for fpr in FPRS:
        thr, t_lo, t_hi = quantile_interval(neg_all, 1 - fpr)
        out["thresholds"].append(
            {
                "fpr": fpr,
                "score": thr,
                "low": t_lo,
                "high": t_hi,
                "tpr": float((pos_all > thr).mean()),
                "negatives": len(neg_all),
            }
        )
    return out


# ---- embedding ---------------------------------------------------------------------------------


def embed_arrays(emb, arrays: list[np.ndarray], batch: int = 32) -> tuple[np.ndarray, float]:
    """Embed preprocessed arrays in batches on the embedder's own worker count; (vectors, s)."""
    chunks = [np.stack(arrays[i : i + batch]) for i in range(0, len(arrays), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(emb.concurrency()) as pool:
        out = list(pool.map(emb.embed, chunks))
    return np.concatenate(out), time.perf_counter() - t0


def grid_models() -> list:
    """Every registered Lite variant (flip variants derived) and every classical method."""
    from imgsim_server.embedders import EmbedderOptions, list_models, weights_available

    opts = EmbedderOptions()
    retrieval = {m.name for m in list_models(pattern="efficientnet-lite*-full3??*")}
    return [
        m
        for m in list_models()
        if (m.kind == "classical" or m.architecture.startswith("efficientnet-lite"))
        and weights_available(m, opts)
        and m.name not in retrieval  # the collection descriptors: make bench-quality
    ]


def embed_grid(images: list, models: list) -> dict[str, dict]:
    """name -> {vectors, seconds_per_image} for every model (flip variants from their base)."""
    from imgsim_server.export import load as create

    mirrored = [ImageOps.mirror(im) for im in images]
    out: dict[str, dict] = {}
    for cfg in models:
        if cfg.hflip:
            continue
        emb = create(cfg.name)
        arrays = [emb.preprocess(im) for im in images]
        vecs, secs = embed_arrays(emb, arrays)
        out[cfg.name] = {"vectors": vecs, "s_per_image": secs / len(images)}
        flips = [m for m in models if m.hflip and m.graph_name == cfg.name]
        if flips:
            mvecs, msecs = embed_arrays(emb, [emb.preprocess(im) for im in mirrored])
            both = vecs + mvecs
            both /= np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
            for f in flips:
                out[f.name] = {"vectors": both, "s_per_image": (secs + msecs) / len(images)}
        print(f"  embedded {cfg.name}: {len(images) / secs:.0f} img/s", flush=True)
    return out


# ---- runtimes, sizes, memory -------------------------------------------------------------------

# VmHWM (peak RSS) of the probe's own address space; ru_maxrss would carry the parent's over exec.
_RSS_PROBE = """
import re, sys, numpy as np
from imgsim_server.embedders import EmbedderOptions
from imgsim_server.export import load as create
e = create(sys.argv[1], EmbedderOptions(backend=sys.argv[2], precision=sys.argv[3]))
x = np.zeros((32, e.cfg.input_size, e.cfg.input_size, 3), np.uint8)
for _ in range(2):
    e.embed(x)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024)
"""


def runtime_costs(images: list, archs: list[str]) -> list[dict]:
    """img/s (embedding, batch 32, the runtime's workers), file size and peak RSS of a fresh
    process, for each base model on ONNX fp32, ONNX int8 and torch."""
    from imgsim_server.embedders import EmbedderOptions, weights_path
    from imgsim_server.export import load as create

    rows = []
    for name in archs:
        for backend, precision in (("onnx", "fp32"), ("onnx", "int8"), ("torch", "fp32")):
            opts = EmbedderOptions(backend=backend, precision=precision)
            emb = create(name, opts)
            arrays = [emb.preprocess(im) for im in images]
            embed_arrays(emb, arrays[:32])  # warm-up
            _, secs = embed_arrays(emb, arrays)
            path = emb.graph if backend == "onnx" else weights_path(emb.cfg, opts)
            rss = subprocess.run(
                [sys.executable, "-c", _RSS_PROBE, name, backend, precision],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            rows.append(
                {
                    "model": name,
                    "runtime": f"{backend} {precision}",
                    "images_per_s": len(arrays) / secs,
                    "file_mb": path.stat().st_size / 1e6,
                    "file": path.name,
                    "peak_rss_mib": float(rss),
                }
            )
            print(f"  {name} {backend} {precision}: {rows[-1]['images_per_s']:.0f} img/s")
    return rows


def int8_check(name: str, sets: dict[str, dict]) -> dict[str, dict]:
    """The model's ONNX int8 graph on every set: AUC with its interval, N-S, img/s."""
    from imgsim_server.core.images import decode_image
    from imgsim_server.embedders import EmbedderOptions
    from imgsim_server.export import load as create

    emb = create(name, EmbedderOptions(precision="int8"))
    out = {}
    for ds, spec in sets.items():
        images = [decode_image(Path(p).read_bytes()) for p, _ in spec["items"]]
        vecs, secs = embed_arrays(emb, [emb.preprocess(im) for im in images])
        r = evaluate_set(vecs, emb.cfg.similarity, spec, calibrate=False)
        out[ds] = {**r, "images_per_s": len(images) / secs}
    return out


# ---- the rule ----------------------------------------------------------------------------------


def mean_ranks(results: dict[str, dict], names: list[str], sets: list[str]) -> dict[str, float]:
    """Mean over sets of each name's AUC rank among `names` (1 best, ties share the mean)."""
    from scipy.stats import rankdata

    ranks = np.zeros(len(names))
    for s in sets:
        aucs = np.array([results[n]["sets"][s]["auc"] for n in names])
        ranks += rankdata(-aucs, method="average")
    return dict(zip(names, ranks / len(sets), strict=True))


def apply_rule(results: dict[str, dict], sets: list[str]) -> dict:
    """The rule above, applied; returns the ranking, every check made, and the winner."""
    base_cost = results[OLD_DEFAULT]["s_per_image"]
    cands = [
        n
        for n, r in results.items()
        if r["kind"] == "cnn" and r["s_per_image"] <= COST_LIMIT * base_cost
    ]
    ranks = mean_ranks(results, cands, sets)
    order = sorted(cands, key=lambda n: (ranks[n], results[n]["s_per_image"]))
    checks = []
    winner = OLD_DEFAULT
    for name in order:
        worse = []
        for s in sets:
            old = results[OLD_DEFAULT]["sets"][s]
            half = (old["auc_high"] - old["auc_low"]) / 2
            if results[name]["sets"][s]["auc"] < old["auc"] - half:
                worse.append(s)
        checks.append({"model": name, "mean_rank": ranks[name], "worse_on": worse})
        if not worse:
            winner = name
            break
    return {
        "candidates": len(cands),
        "excluded_by_cost": sorted(set(results) - set(cands)),
        "order": [{"model": n, "mean_rank": ranks[n]} for n in order],
        "checks": checks,
        "winner": winner,
    }


def plot_choice(r: dict, path: Path) -> None:
    """AUC with its 95% interval against img/s, one panel per set, every Lite variant."""
    from imgsim_client.evaluate import pyplot

    plt = pyplot()
    sets = list(r["sets"])
    winner = (r["choice"] or {}).get("winner", OLD_DEFAULT)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.6), dpi=110)
    colors = {"efficientnet-lite0": "tab:blue", "efficientnet-lite1": "tab:orange",
              "efficientnet-lite2": "tab:green"}  # fmt: skip
    for ax, ds in zip(np.atleast_1d(axes), sets, strict=True):
        for name, m in r["models"].items():
            if m["kind"] != "cnn":
                continue
            s = m["sets"][ds]
            arch = next(a for a in colors if name.startswith(a))
            marker = "*" if name == winner else ("s" if name == OLD_DEFAULT else "o")
            ax.errorbar(
                m["images_per_s"],
                s["auc"],
                yerr=[[s["auc"] - s["auc_low"]], [s["auc_high"] - s["auc"]]],
                fmt=marker,
                color=colors[arch],
                ms=11 if marker == "*" else 5,
                alpha=0.9,
                lw=0.8,
            )
        ax.set_title(f"{ds} ({r['sets'][ds]['task']})", fontsize=9)
        ax.set_xlabel("img/s (ONNX fp32, embedding only)", fontsize=8)
        ax.set_ylabel("ROC AUC (95% CI)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=a) for a, c in colors.items()]
    handles += [
        plt.Line2D([], [], color="k", marker="s", ls="", label=f"{OLD_DEFAULT} (old default)"),
        plt.Line2D([], [], color="k", marker="*", ms=10, ls="", label=f"{winner} (by the rule)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def thresholds_for_server(results: dict[str, dict]) -> dict:
    """model -> [{task, dataset, fpr, score, low, high, tpr}], the ListModels metadata."""
    out = {}
    for name, r in results.items():
        out[name] = [
            {"task": s["task"], "dataset": ds, **t}
            for ds, s in r["sets"].items()
            for t in s["thresholds"]
        ]
    return out


def _ci(m: dict) -> str:
    return f"{m['auc']:.4f} [{m['auc_low']:.4f}, {m['auc_high']:.4f}]"


def render_models(r: dict) -> list[str]:
    """Markdown lines of the model choice: rule, result, grid table, runtimes, thresholds."""
    sets = list(r["sets"])
    choice = r["choice"] or {}
    ranks = {o["model"]: o["mean_rank"] for o in choice.get("order", [])}
    old = r["models"][OLD_DEFAULT]
    lines = ["## Choosing the default model and preprocessing", "", r["rule"], ""]
    if choice:
        excluded = [n for n in choice["excluded_by_cost"] if r["models"][n]["kind"] == "cnn"]
        top = ", ".join(f"`{o['model']}` {o['mean_rank']:.2f}" for o in choice["order"][:5])
        lines += [
            f"**Result.** {choice['candidates']} candidates within {COST_LIMIT}x the cost of "
            f"`{OLD_DEFAULT}` ({old['images_per_s']:.0f} img/s); excluded by cost: "
            f"{', '.join(f'`{n}`' for n in excluded) or 'none'} "
            f"(and the classical baselines, which are not candidates). Best mean AUC ranks: "
            f"{top}.",
            "",
        ]
        for c in choice["checks"]:
            verdict = (
                f"worse than `{OLD_DEFAULT}` beyond its interval on {', '.join(c['worse_on'])}"
                if c["worse_on"]
                else "no set worse than the old default beyond its interval: **chosen**"
            )
            lines.append(f"- `{c['model']}` (mean rank {c['mean_rank']:.2f}): {verdict}.")
        lines += ["", f"**Default by the rule: `{choice['winner']}`.**", ""]
    lines += [
        "Sets: "
        + "; ".join(
            f"{ds} ({s['task']}, {s['images']} images, {s['pairs']} pairs)"
            for ds, s in r["sets"].items()
        )
        + ". AUC with its bootstrap 95% interval (pairs resampled "
        f"{BOOTSTRAP}x); N-S on ukbench (4.0 perfect); img/s of the embedding alone (ONNX fp32, "
        "batch 32, one single-threaded session per core, decode and resize not counted); mean "
        "rank among the candidates (- : not a candidate).",
        "",
        "| model | "
        + " | ".join(f"{ds} AUC [95% CI]" for ds in sets)
        + " | EER ("
        + "/".join(sets)
        + ") | N-S | img/s | mean rank |",
        "|---|" + "---|" * (len(sets) + 4),
    ]
    order = sorted(r["models"], key=lambda n: ranks.get(n, 1e9))
    for name in order:
        m = r["models"][name]
        ns = m["sets"].get("ukbench", {}).get("ns")
        lines.append(
            f"| {name} | "
            + " | ".join(_ci(m["sets"][ds]) for ds in sets)
            + " | "
            + "/".join(f"{m['sets'][ds]['eer']:.3f}" for ds in sets)
            + f" | {'-' if ns is None else f'{ns:.3f}'} | "
            + (f"{m['images_per_s']:.0f} | " if m["kind"] == "cnn" else "- | ")
            + (f"{ranks[name]:.2f}" if name in ranks else "-")
            + " |"
        )
    lines += [
        "",
        "TPR at 1% FPR: "
        + "; ".join(
            f"{ds}: "
            + ", ".join(
                f"{n} {r['models'][n]['sets'][ds]['tpr_at_fpr_1pct']:.3f}"
                for n in dict.fromkeys([*order[:3], OLD_DEFAULT])
            )
            for ds in sets
        )
        + " (all models in models.json).",
        "",
        "### Runtimes, sizes and memory",
        "",
        "Embedding only, batch 32, 256 images of the near-dup set; peak RSS of a fresh process "
        "that loads the model and embeds two batches of 32.",
        "",
        "| model | runtime | img/s | file | MB | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["runtimes"]:
        lines.append(
            f"| {c['model']} | {c['runtime']} | {c['images_per_s']:.0f} | {c['file']} | "
            f"{c['file_mb']:.1f} | {c['peak_rss_mib']:.0f} |"
        )
    winner = choice.get("winner", OLD_DEFAULT)
    int8 = r.get("int8", {}).get("sets", {})
    if int8:
        lines += [
            "",
            f"`{winner}` as an ONNX int8 graph (`--precision int8`), same sets and pairs: "
            + "; ".join(
                f"{ds} AUC {_ci(m)} (fp32 {r['models'][winner]['sets'][ds]['auc']:.4f}), "
                f"{m['images_per_s']:.0f} img/s"
                for ds, m in int8.items()
            )
            + ".",
        ]
    lines += [
        "",
        f"### Calibrated thresholds of `{winner}`",
        "",
        "The score that the given fraction of a set's unrelated pairs (all cross-group pairs) "
        "reaches, with a distribution-free 95% interval; TPR is the fraction of the set's "
        "related pairs above it. Served by ListModels; `compare` names the verdict at 1% FPR.",
        "",
        "| task | set | FPR | threshold [95% CI] | TPR | negatives |",
        "|---|---|---|---|---|---|",
    ]
    for ds in sets:
        s = r["models"][winner]["sets"][ds]
        for t in s["thresholds"]:
            lines.append(
                f"| {s['task']} | {ds} | {t['fpr']:.1%} | {t['score']:.3f} "
                f"[{t['low']:.3f}, {t['high']:.3f}] | {t['tpr']:.3f} | {t['negatives']} |"
            )
    lines += [""] + [f"- {n}" for n in r["notes"]] + [""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = lab_parser(__doc__, shared=True)
    ap.add_argument("--models", help="comma-separated subset (default: every variant present)")
    ap.add_argument(
        "--thresholds-file",
        type=Path,
        default=THRESHOLDS_FILE,
        help="where the server's calibrated thresholds are written",
    )
    args = ap.parse_args(argv)
    from imgsim_server.core.images import decode_image

    work = args.out / "cache" / "models"
    sets, notes = build_sets(work, args.shared)
    for n in notes:
        print(n)
    models = grid_models()
    if args.models:
        models = [m for m in models if m.name in args.models.split(",")]
    results: dict[str, dict] = {}
    for ds, spec in sets.items():
        print(f"{ds}: {len(spec['items'])} images, {len(spec['pairs'][2])} pairs", flush=True)
        images = [decode_image(Path(p).read_bytes()) for p, _ in spec["items"]]
        for name, e in embed_grid(images, models).items():
            cfg = next(m for m in models if m.name == name)
            r = results.setdefault(
                name,
                {"kind": cfg.kind, "similarity": cfg.similarity, "seconds": 0.0, "images": 0},
            )
            r["seconds"] += e["s_per_image"] * len(images)
            r["images"] += len(images)
            r.setdefault("sets", {})[ds] = evaluate_set(e["vectors"], cfg.similarity, spec)
    for r in results.values():
        r["s_per_image"] = r["seconds"] / r["images"]
        r["images_per_s"] = 1 / r["s_per_image"]
    set_names = list(sets)
    choice = apply_rule(results, set_names) if OLD_DEFAULT in results else None
    winner = choice["winner"] if choice else OLD_DEFAULT
    int8 = int8_check(winner, sets) if results[winner]["kind"] == "cnn" else {}
    sample = [decode_image(Path(p).read_bytes()) for p, _ in sets["near-dup edits"]["items"][:256]]
    archs = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
    costs = runtime_costs(sample, [a for a in archs if a in results])
    report = {
        "rule": RULE,
        "choice": choice,
        "sets": {
            ds: {"task": s["task"], "images": len(s["items"]), "pairs": len(s["pairs"][2])}
            for ds, s in sets.items()
        },
        "models": results,
        "runtimes": costs,
        "int8": {"model": winner, "sets": int8},
        "notes": notes,
        "machine": machine.describe(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(report, indent=1))
    plot_choice(report, args.out / "models_auc_vs_speed.png")
    if not notes:  # calibrate only from the complete set of tasks
        # Models this study does not measure (the face model: make bench-faces) keep theirs.
        table = {}
        if args.thresholds_file.is_file():
            table = json.loads(args.thresholds_file.read_text())
        table.update(thresholds_for_server(results))
        args.thresholds_file.write_text(json.dumps(table, indent=1))
        print(f"wrote {args.thresholds_file}")
    print(f"wrote {args.out / 'models.json'}; default by the rule: {choice and choice['winner']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
