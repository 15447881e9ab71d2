"""`evaluate --out DIR` also writes DIR/report.html: plots, metrics, the threshold, and the
hardest pairs of each kind as thumbnails (FiftyOne-style failure browsing, in one file).

Only the two galleries carry pictures (24 pairs each by default, 160 px JPEG thumbnails made
once per distinct image with Pillow, under DIR/thumbs/), so a report for 100k pairs stays small.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

THUMB_PX = 160
GALLERY_SIZE = 24

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px;
  padding: 0 1rem; color: #1d232b; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
td, th { border-bottom: 1px solid #dde2e8; padding: 0.25rem 0.75rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.plots img { max-width: 48%; margin-right: 1%; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr));
  gap: 0.75rem; }
.pair { border: 1px solid #dde2e8; border-radius: 6px; padding: 0.5rem; font-size: 0.8rem; }
.pair.error { border-color: #b00020; background: #fff3f4; }
.pair .imgs { display: flex; gap: 0.5rem; justify-content: center; min-height: 100px; }
.pair img { max-width: 160px; max-height: 160px; }
.pair .missing { width: 160px; color: #b00020; align-self: center; text-align: center; }
.pair .path { color: #4a5563; overflow-wrap: anywhere; }
.tag { font-weight: 600; color: #b00020; }
"""


def _thumb(src: Path, thumbs: Path, cache: dict[Path, str | None]) -> str | None:
    """DIR-relative path of src's thumbnail (made once), or None if it cannot be read."""
    if src in cache:
        return cache[src]
    name = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:16] + ".jpg"
    try:
        with Image.open(src) as img:
            img.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a reduced scale
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((THUMB_PX, THUMB_PX))
            thumbs.mkdir(parents=True, exist_ok=True)
            small.save(thumbs / name, "JPEG", quality=85)
        cache[src] = f"{thumbs.name}/{name}"
    except (OSError, ValueError, Image.DecompressionBombError):  # unreadable: marked, skipped
        cache[src] = None
    return cache[src]


def _resolve(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _gallery(title, note, rows, idx, scores, labels, errors, base, thumbs, cache) -> str:
    cards = []
    for i in idx:
        row = rows[i]
        imgs = []
        for col in ("image_a", "image_b"):
            value = row.get(col, "")
            rel = _thumb(_resolve(base, value), thumbs, cache) if value else None
            imgs.append(
                f'<img src="{html.escape(rel)}" alt="{html.escape(value)}" loading="eager">'
                if rel
                else f'<div class="missing">cannot read<br>{html.escape(value)}</div>'
            )
        tag = '<span class="tag">error</span> ' if errors[i] else ""
        cards.append(
            f'<div class="pair{" error" if errors[i] else ""}">'
            f'<div class="imgs">{"".join(imgs)}</div>'
            f"<div>{tag}score <b>{scores[i]:.4f}</b>, label {labels[i]}</div>"
            f'<div class="path">{html.escape(row.get("image_a", ""))}<br>'
            f"{html.escape(row.get('image_b', ''))}</div></div>"
        )
    return (
        f"<h2>{html.escape(title)}</h2><p>{note}</p>"
        f'<div class="gallery">{"".join(cards) or "<p>(none)</p>"}</div>'
    )


def _metrics_table(result: dict) -> str:
    m = result["overall"]
    rows = [
        ("pairs", f"{m['n']} ({m['positives']} positive, {m['negatives']} negative)"),
        ("ROC AUC", f"{m['auc']:.4f}"),
        ("EER", f"{m['eer']:.4f} at threshold {m['eer_threshold']:.4f}"),
        ("TPR at FPR 1%", f"{m['tpr_at_fpr_1pct']:.4f}"),
        ("TPR at FPR 0.1%", f"{m['tpr_at_fpr_0_1pct']:.4f}"),
        ("best F1", f"{m['best_f1']:.4f} at threshold {m['best_f1_threshold']:.4f}"),
        ("rows without a score", str(result["skipped_rows_without_score"])),
    ]
    body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _groups_table(result: dict) -> str:
    if "groups" not in result:
        return ""
    g = result["groups"]
    head = "<tr><th>value</th><th>n</th><th>AUC</th><th>EER</th><th>TPR@1%</th><th>F1</th></tr>"
    body = []
    for value, m in g["metrics"].items():
        if "error" in m:
            body.append(f'<tr><td>{html.escape(value)}</td><td colspan="5">{m["error"]}</td></tr>')
        else:
            body.append(
                f"<tr><td>{html.escape(value)}</td><td>{m['n']}</td><td>{m['auc']:.4f}</td>"
                f"<td>{m['eer']:.4f}</td><td>{m['tpr_at_fpr_1pct']:.4f}</td>"
                f"<td>{m['best_f1']:.4f}</td></tr>"
            )
    return f"<h2>By {html.escape(g['column'])}</h2><table>{head}{''.join(body)}</table>"


def write_report(
    csv_path: Path,
    rows: list[dict[str, str]],
    labels: np.ndarray,
    scores: np.ndarray,
    result: dict,
    out_dir: Path,
    threshold: float,
    images_root: Path,
    gallery_size: int = GALLERY_SIZE,
) -> Path:
    """Write out_dir/report.html (the plots roc.png and score_hist.png are already there);
    relative image paths are read from `images_root`."""
    base = images_root
    thumbs = out_dir / "thumbs"
    cache: dict[Path, str | None] = {}
    errors = np.where(labels == 1, scores < threshold, scores >= threshold)
    neg = np.flatnonzero(labels == 0)
    pos = np.flatnonzero(labels == 1)
    hard_neg = neg[np.argsort(-scores[neg], kind="stable")][:gallery_size]
    hard_pos = pos[np.argsort(scores[pos], kind="stable")][:gallery_size]
    n_fp, n_fn = int(errors[neg].sum()), int(errors[pos].sum())

    def gallery(title: str, note: str, idx) -> str:
        return _gallery(title, note, rows, idx, scores, labels, errors, base, thumbs, cache)

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>imgsim evaluation: {html.escape(csv_path.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation of {html.escape(csv_path.name)}</h1>",
        f"<p>Threshold used: <b>{threshold:.4f}</b> (a pair is called the same at or above "
        f"it): {n_fp} false positives among {len(neg)} negatives, {n_fn} false negatives "
        f"among {len(pos)} positives.</p>",
        '<div class="plots"><img src="roc.png" alt="ROC curve">'
        '<img src="score_hist.png" alt="score histograms"></div>',
        "<h2>Metrics</h2>",
        _metrics_table(result),
        _groups_table(result),
        gallery(
            f"Hardest negatives: the {len(hard_neg)} highest-scoring different pairs",
            "Marked <span class='tag'>error</span> where the score reaches the threshold "
            "(false positives).",
            hard_neg,
        ),
        gallery(
            f"Hardest positives: the {len(hard_pos)} lowest-scoring same pairs",
            "Marked <span class='tag'>error</span> where the score is below the threshold "
            "(false negatives).",
            hard_pos,
        ),
        "</body></html>",
    ]
    out = out_dir / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
