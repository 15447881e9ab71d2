"""`dedup --html DIR`: a page to review duplicate groups before acting on them: one row per
group, each image as a thumbnail with its path, file size, resolution and best score, the one
`--keep` would keep marked. Plain HTML and CSS (no script), thumbnails in DIR/thumbs/."""

from __future__ import annotations

import html
import os
from pathlib import Path

from imgsim_client._csv import write_text_atomic

THUMB = 180  # longer side of a thumbnail, in pixels


def _thumb(src: str, dest: Path) -> tuple[int, int] | None:
    """Write a JPEG thumbnail of `src` to `dest`; the original's (width, height), or None
    when it cannot be read."""
    from PIL import ImageOps

    from imgsim_client.photos.files import pillow

    try:
        with pillow().open(src) as img:
            upright = ImageOps.exif_transpose(img).convert("RGB")
            size = upright.size
            upright.thumbnail((THUMB, THUMB))
            upright.save(dest, "JPEG", quality=85)
            return size
    except Exception:
        return None


def _size(path: str) -> str:
    try:
        n = os.path.getsize(path)
    except OSError:
        return "?"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


CSS = """
body { font: 13px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 18px; }
.group { border-top: 1px solid #ccc; padding: 0.6em 0; display: flex; flex-wrap: wrap; gap: 10px; }
.group h2 { font-size: 13px; width: 100%; margin: 0; }
figure { margin: 0; width: 190px; padding: 4px; border: 2px solid transparent; }
figure.keep { border-color: #2a8a2a; background: #f0fff0; }
figure img { max-width: 180px; max-height: 180px; display: block; }
figcaption { font-size: 11px; word-break: break-all; }
.badge { font-weight: bold; color: #2a8a2a; }
.remove { color: #a33; }
"""


def write(
    plan: dict[int, tuple[str, list[str]]],
    best_score: dict[str, float],
    folder: Path,
    title: str,
) -> Path:
    """`folder/index.html` for `plan` (group -> (keeper, others)), written whole then renamed."""
    thumbs = folder / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for g, (keep, others) in sorted(plan.items(), key=lambda kv: kv[1][0]):
        cells = []
        for path in [keep, *others]:
            name = f"{n:06d}.jpg"
            n += 1
            size = _thumb(path, thumbs / name)
            res = f"{size[0]}x{size[1]}" if size else "unreadable"
            img = f'<img src="thumbs/{name}" alt="{html.escape(path)}">' if size else ""
            role = ('<span class="badge">kept</span>' if path == keep
                    else '<span class="remove">not kept</span>')  # fmt: skip
            score = best_score.get(path)
            cells.append(
                f'<figure class="{"keep" if path == keep else "other"}">{img}<figcaption>'
                f"{role} {html.escape(path)}<br>{_size(path)}, {res}"
                + (f", score {score:.3f}" if score is not None else "")
                + "</figcaption></figure>"
            )
        rows.append(
            f'<section class="group"><h2>group {g}: {1 + len(others)} images</h2>'
            + "".join(cells)
            + "</section>"
        )
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{len(plan)} groups; the green one of each is kept, "
        "the others are what --to-remove lists and --move-to moves.</p>"
        + "".join(rows)
        + "</body></html>\n"
    )
    out = folder / "index.html"
    write_text_atomic(out, page)
    return out
