"""`make study`: every approach whose weights are present, on every dataset that is present,
through a real server and the stream client. Writes results/study.{md,json}, one ROC chart per
dataset, and thumbnails of failing pairs.

Datasets: the demo near-duplicate set (metrics per transform), ../shared/data/ukbench_sample
(same object; plus the N-S retrieval score), ../shared/data/caltech101_subset (same category).
N-S needs all 1000x999 similarities, so it is computed in-process from the same registry
embedders and similarity functions the server uses, not over 500k RPC pairs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from imgsim_client.client import ImgsimClient
from imgsim_client.evaluate import compute_metrics, load_scored, plot_roc, pyplot
from imgsim_client.scoring import score_pairs
from imgsim_datasets import pairs as pair_builders
from imgsim_lab import machine
from imgsim_lab._paths import ROOT, lab_parser
from imgsim_lab.model_study import embed_arrays, ns_score, render_models, similarity_matrix
from imgsim_lab.servers import ServerProcess

DEFAULT_CNN = "efficientnet-lite0"
# The approaches run through the server: the baselines, each Lite size with its own pipeline,
# GeM, and the server's default (added when it is another variant). The full grid of
# preprocessing variants runs in-process in imgsim_lab.model_study.
SERVER_APPROACHES = (
    "pixels",
    "color-hist",
    "phash",
    "efficientnet-lite0",
    "efficientnet-lite0-gem",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
)


def scored_frame(path: Path) -> pd.DataFrame:
    """A scored CSV's rows that have a score, with float `score` and int `_label` columns."""
    scored = load_scored(path)
    df = pd.DataFrame(scored.rows, columns=scored.columns)
    df["score"], df["_label"] = scored.scores, scored.labels
    return df


def build_datasets(work: Path, shared: Path) -> tuple[dict[str, dict], list[str]]:
    """name -> {csv, group_by, task, images}; plus notes for datasets that were skipped."""
    pairs = pair_builders
    out: dict[str, dict] = {}
    notes: list[str] = []
    demo_csv = ROOT / "datasets" / "demo" / "pairs.csv"
    if not demo_csv.is_file():
        pairs.build_near_dup(pairs.shipped_photos(), demo_csv.parent, list(pairs.TRANSFORMS))
    out["demo near-dup"] = {"csv": demo_csv, "group_by": "transform", "task": "near-duplicate"}
    uk = shared / "ukbench_sample"
    if uk.is_dir():
        items = pairs.labelled_images(uk, "ukbench")
        rows = pairs.build_group_pairs(items, neg_ratio=1.0, seed=0)
        csv = work / "ukbench_pairs.csv"
        pd.DataFrame(rows).assign(pair_id=[f"u{i}" for i in range(len(rows))]).to_csv(
            csv, index=False
        )
        out["ukbench"] = {
            "csv": csv,
            "group_by": None,
            "task": "same object",
            "images": [(str(p), g) for p, g in items],
        }
    else:
        notes.append(f"ukbench_sample skipped: {uk} not found")
    cal = shared / "caltech101_subset"
    if cal.is_dir():
        items = pairs.labelled_images(cal, "folder")
        rows = pairs.build_group_pairs(items, neg_ratio=1.0, seed=0, max_pos_per_group=300)
        csv = work / "caltech_pairs.csv"
        pd.DataFrame(rows).assign(pair_id=[f"c{i}" for i in range(len(rows))]).to_csv(
            csv, index=False
        )
        out["caltech101"] = {"csv": csv, "group_by": None, "task": "same category"}
    else:
        notes.append(f"caltech101_subset skipped: {cal} not found")
    return out, notes


def ns_from_images(model: str, images: list[tuple[str, str]], opts: dict | None = None) -> float:
    """UKBench N-S of `model` (registry embedder in-process, same code as the server)."""
    from imgsim_server.core.images import decode_image
    from imgsim_server.embedders import EmbedderOptions, get_cfg
    from imgsim_server.export import load as create

    emb = create(model, EmbedderOptions(**(opts or {})))
    vecs, _ = embed_arrays(
        emb, [emb.preprocess(decode_image(Path(p).read_bytes())) for p, _ in images]
    )
    sim = similarity_matrix(get_cfg(model).similarity, vecs)
    return ns_score(sim, np.array([g for _, g in images]))


def failure_strip(scored: pd.DataFrame, base: Path, path: Path, title: str, k: int = 3) -> None:
    """Thumbnails of the k worst positives (lowest scores) and k worst negatives (highest)."""
    from PIL import Image

    plt = pyplot()

    pos = scored[scored["_label"] == 1].nsmallest(k, "score")
    neg = scored[scored["_label"] == 0].nlargest(k, "score")
    rows = [("missed (positive, low score)", r) for _, r in pos.iterrows()]
    rows += [("false alarm (negative, high score)", r) for _, r in neg.iterrows()]
    fig, axes = plt.subplots(len(rows), 2, figsize=(4.2, 1.9 * len(rows)), dpi=100)
    for (kind, r), ax_pair in zip(rows, np.atleast_2d(axes), strict=True):
        for ax, col in zip(ax_pair, ("image_a", "image_b"), strict=True):
            p = Path(r[col])
            img = Image.open(p if p.is_absolute() else base / p).convert("RGB")
            img.thumbnail((160, 160))
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        extra = f" [{r['transform']}]" if "transform" in r else ""
        ax_pair[0].set_title(f"{kind}{extra}: score {r['score']:.3f}", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# Runtime variants of the default CNN: (label suffix, server flags, embedder options).
VARIANTS = (
    ("", (), {}),
    (" [torch]", ("--backend", "torch"), {"backend": "torch"}),
    (" [onnx-int8]", ("--precision", "int8"), {"precision": "int8"}),
)


def run_approach(
    client, ds: str, spec: dict, model: str, label: str, work: Path, opts: dict
) -> tuple[dict, tuple[np.ndarray, np.ndarray], pd.DataFrame]:
    """Score one dataset with one approach through the server; metrics, ROC data, scored rows."""
    out = work / f"{ds.replace(' ', '_')}__{label.replace(' ', '_')}.csv"
    t0 = time.perf_counter()
    summary = score_pairs(client, spec["csv"], out, model=model, progress=False)
    seconds = time.perf_counter() - t0
    df = scored_frame(out)
    m = asdict(compute_metrics(df["_label"], df["score"]))
    n_images = len(set(df["image_a"]) | set(df["image_b"]))
    m.update(
        images=n_images, seconds=seconds, images_per_s=n_images / seconds, failed=summary.failed
    )
    if spec["group_by"]:
        m["groups"] = {
            str(v): compute_metrics(p["_label"], p["score"]).auc
            for v, p in df.groupby(spec["group_by"])
        }
    if "images" in spec:
        m["ns"] = ns_from_images(model, spec["images"], opts)
    ns = f", N-S {m['ns']:.2f}" if "ns" in m else ""
    print(
        f"{ds:<16} {label:<30} AUC {m['auc']:.4f} EER {m['eer']:.4f} "
        f"TPR@1% {m['tpr_at_fpr_1pct']:.3f}{ns}  {m['images_per_s']:.0f} img/s"
    )
    return m, (df["_label"].to_numpy(), df["score"].to_numpy()), df


def main(argv: list[str] | None = None) -> int:
    ap = lab_parser(__doc__, shared=True)
    ap.add_argument("--models", help="comma-separated subset of approaches (default: all present)")
    ap.add_argument(
        "--no-variants", action="store_true", help="skip the torch and int8 runs of the default CNN"
    )
    args = ap.parse_args(argv)
    work = args.out / "cache" / "study"
    work.mkdir(parents=True, exist_ok=True)
    datasets, notes = build_datasets(work, args.shared)
    for n in notes:
        print(n)
    results: dict = {
        "datasets": {ds: {"task": spec["task"], "metrics": {}} for ds, spec in datasets.items()},
        "notes": notes,
        "machine": machine.describe(),
        "approaches": [],
    }
    curves: dict[str, dict] = {ds: {} for ds in datasets}
    demo_images = sorted((ROOT / "datasets" / "demo" / "images").glob("*.jpg"))[:2]
    warm = [p.read_bytes() for p in demo_images]
    for suffix, flags, opts in VARIANTS[: 1 if args.no_variants else None]:
        with ServerProcess(*flags) as srv, ImgsimClient(srv.address, timeout=600) as client:
            client.wait_ready(60)
            listing = client.list_models()
            models = listing.models
            if suffix:
                approaches = [DEFAULT_CNN]
            else:
                wanted = [*SERVER_APPROACHES, listing.default_model]
                approaches = [m.name for m in models if m.weights_available and m.name in wanted]
                if args.models:
                    approaches = [a for a in approaches if a in args.models.split(",")]
                missing = [m.name for m in models if not m.weights_available and m.name in wanted]
                if missing:
                    results["notes"].append(f"skipped (weights absent): {', '.join(missing)}")
                results["approaches"] = [
                    {
                        "name": m.name,
                        "kind": m.kind,
                        "similarity": m.similarity,
                        "description": m.description,
                    }
                    for m in models
                    if m.name in approaches
                ]
            # Load (and for ONNX, export) every model before timing anything.
            for model in approaches:
                client.compare(warm[0], warm[1], model=model)
            for ds, spec in datasets.items():
                for model in approaches:
                    label = model + suffix
                    m, curve, df = run_approach(client, ds, spec, model, label, work, opts)
                    results["datasets"][ds]["metrics"][label] = m
                    results["datasets"][ds]["pairs"] = len(curve[0])
                    curves[ds][label] = curve
                    if label in (DEFAULT_CNN, "phash"):
                        failure_strip(
                            df,
                            spec["csv"].parent,
                            args.out / f"failures_{ds.split()[0]}_{model}.png",
                            f"{model} on {ds}",
                        )
    for ds, spec in datasets.items():
        roc = args.out / f"roc_{ds.split()[0]}.png"
        plot_roc(curves[ds], roc, f"{ds} ({spec['task']})")
        results["datasets"][ds]["roc"] = roc.name
    (args.out / "study.json").write_text(json.dumps(results, indent=2))
    models_json = args.out / "models.json"
    choice = json.loads(models_json.read_text()) if models_json.is_file() else None
    (args.out / "study.md").write_text(render(results, choice))
    print(f"wrote {args.out / 'study.md'}")
    return 0


def render(r: dict, models: dict | None = None) -> str:
    """study.md: the model choice (from model_study's models.json), then each dataset."""
    lines = [
        "# imgsim comparative study",
        "",
        *(render_models(models) if models else []),
        "## Every approach through the server",
        "",
        "Every approach through the real server and stream client. AUC, EER and TPR at 1% "
        "FPR from sklearn on the pair sets; N-S (UKBench retrieval, 4.0 perfect) from the "
        "same embedders in-process; img/s is the end-to-end rate of the run (distinct "
        "images / wall time, this 2-core CPU).",
        "",
    ]
    for note in r["notes"]:
        lines.append(f"- {note}")
    lines.append("")
    for ds, d in r["datasets"].items():
        lines += [
            f"## {ds} ({d['task']}, {d['pairs']} pairs)",
            "",
            "| approach | AUC | EER | TPR@1%FPR | N-S | img/s |",
            "|---|---|---|---|---|---|",
        ]
        for model, m in sorted(d["metrics"].items(), key=lambda kv: -kv[1]["auc"]):
            ns = f"{m['ns']:.2f}" if "ns" in m else "–"
            lines.append(
                f"| {model} | {m['auc']:.4f} | {m['eer']:.4f} | "
                f"{m['tpr_at_fpr_1pct']:.3f} | {ns} | {m['images_per_s']:.0f} |"
            )
        lines += ["", f"![ROC]({d['roc']})", ""]
        groups = {k: m["groups"] for k, m in d["metrics"].items() if "groups" in m}
        if groups:
            names = sorted(next(iter(groups.values())))
            lines += [
                "AUC per transform:",
                "",
                "| approach | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for model, g in groups.items():
                lines.append(f"| {model} | " + " | ".join(f"{g[n]:.3f}" for n in names) + " |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
