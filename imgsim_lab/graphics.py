"""Low-texture near-duplicates: logos, icons, line drawings, charts and screenshots, a development
set for dedup (never Holidays), edited the DISC21 way.

Originals: the graphics installed packages ship (scikit-image's logo, horse, text and page;
matplotlib's toolbar icons and its clip-art sample), and graphics drawn here, seeded: logos
(shapes and a word in two or three flat colours), line drawings, charts (matplotlib) and
screenshots (a window of text lines). Each gets COPIES copies with 1-3 edits of the kinds real
libraries hold: thumbnails, squashed to a square, turned by 90/180/270 degrees, mirrored,
recoloured, greyscale, padded, cropped a little, re-encoded as a low-quality JPEG, a caption
added. Distractors are look-alikes that are not copies: drawn logos, charts and screenshots of
the same kinds with other words, data and text.

As in DISC21, the original-copy pairs are the ones to find; copy-copy pairs count neither way.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

COPIES = 3
WORDS = ("acme", "nova", "orbit", "delta", "pixel", "atlas", "lumen", "terra", "vega", "quill",
         "ember", "fjord", "gamma", "helix", "ionic", "jolt", "kiwi", "lotus")  # fmt: skip
PALETTES = (("#1d3557", "#e63946", "#f1faee"), ("#2a9d8f", "#e9c46a", "#ffffff"),
            ("#000000", "#ffb703", "#ffffff"), ("#6a4c93", "#8ac926", "#f8f9fa"),
            ("#003049", "#d62828", "#fcbf49"), ("#264653", "#f4a261", "#ffffff"))  # fmt: skip


def _font(size: int) -> ImageFont.ImageFont:
    from imgsim_datasets.photos import package_data

    ttf = package_data("matplotlib", "mpl-data", "fonts", "ttf")
    path = ttf / "DejaVuSans-Bold.ttf" if ttf else None
    return (
        ImageFont.truetype(str(path), size) if path and path.is_file() else ImageFont.load_default()
    )


def shipped_graphics() -> list[Image.Image]:
    """The graphics installed packages ship, on a white background, at least 192 px."""
    from imgsim_datasets.photos import matplotlib_sample_data, package_data, skimage_data

    paths: list[Path] = []
    if data := skimage_data():
        paths += [data / n for n in ("logo.png", "horse.png", "text.png", "page.png")]
    if icons := package_data("matplotlib", "mpl-data", "images"):
        paths += sorted(icons.glob("*_large.png"))
    if sample := matplotlib_sample_data():
        paths.append(sample / "Minduka_Present_Blue_Pack.png")
    out = []
    for p in paths:
        if not p.is_file():
            continue
        img = Image.open(p)
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            back = Image.new("RGBA", img.size, "white")
            img = Image.alpha_composite(back, img)
        img = img.convert("RGB")
        if max(img.size) < 192:
            scale = 192 / max(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        out.append(img)
    return out


def logo(rng: random.Random, word: str) -> Image.Image:
    fg, accent, bg = rng.choice(PALETTES)
    img = Image.new("RGB", (320, 200), bg)
    d = ImageDraw.Draw(img)
    shape = rng.choice(("circle", "square", "triangle", "diamond"))
    x, y, s = 30, 50, 100
    if shape == "circle":
        d.ellipse((x, y, x + s, y + s), fill=accent)
    elif shape == "square":
        d.rounded_rectangle((x, y, x + s, y + s), 18, fill=accent)
    elif shape == "triangle":
        d.polygon([(x + s / 2, y), (x, y + s), (x + s, y + s)], fill=accent)
    else:
        d.polygon([(x + s / 2, y), (x + s, y + s / 2), (x + s / 2, y + s), (x, y + s / 2)],
                  fill=accent)  # fmt: skip
    d.text((x + s / 2, y + s / 2), word[0].upper(), font=_font(56), fill=bg, anchor="mm")
    d.text((150, 100), word.upper(), font=_font(34), fill=fg, anchor="lm")
    return img


def drawing(rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (300, 300), "white")
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(6, 12)):
        kind = rng.choice(("line", "circle", "rect"))
        pts = [rng.randint(20, 280) for _ in range(4)]
        box = (min(pts[0], pts[2]), min(pts[1], pts[3]), max(pts[0], pts[2]), max(pts[1], pts[3]))
        if kind == "line":
            d.line(pts, fill="black", width=rng.randint(2, 5))
        elif kind == "circle":
            d.ellipse(box, outline="black", width=3)
        else:
            d.rectangle(box, outline="black", width=3)
    return img


def chart(rng: random.Random) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    n = rng.randint(4, 8)
    values = [rng.uniform(1, 10) for _ in range(n)]
    if rng.random() < 0.5:
        ax.bar(range(n), values, color=rng.choice(PALETTES)[1])
    else:
        ax.plot(range(n), values, marker="o", color=rng.choice(PALETTES)[0])
    ax.set_title(rng.choice(WORDS).title() + " " + str(rng.randint(2010, 2026)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(buf).convert("RGB")


def screenshot(rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (400, 280), "#f3f3f3")
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, 400, 28), fill=rng.choice(PALETTES)[0])
    d.text((10, 14), rng.choice(WORDS).title() + " settings", font=_font(14), fill="white",
           anchor="lm")  # fmt: skip
    font = _font(12)
    for i in range(rng.randint(6, 10)):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
        d.text((16, 44 + 22 * i), words, font=font, fill="#222222")
        if rng.random() < 0.4:
            d.rounded_rectangle((300, 38 + 22 * i, 380, 56 + 22 * i), 6, outline="#888888")
    return img


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _caption(img: Image.Image, rng: random.Random) -> Image.Image:
    out = img.copy()
    ImageDraw.Draw(out).text((6, out.height - 18), rng.choice(WORDS), font=_font(13),
                             fill=rng.choice(("#cc0000", "#0044cc", "#000000")))  # fmt: skip
    return out


def _crop(img: Image.Image, rng: random.Random) -> Image.Image:
    f = rng.uniform(0.8, 0.92)
    w, h = round(img.width * f), round(img.height * f)
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    return img.crop((x, y, x + w, y + h))


EDITS = {
    "thumb": lambda img, rng: img.resize((max(24, img.width * 2 // 5), max(24, img.height * 2 // 5))),  # noqa: E501
    "square": lambda img, rng: img.resize((s := rng.choice((128, 256)), s)),
    "turn": lambda img, rng: img.rotate(rng.choice((90, 180, 270)), expand=True),
    "mirror": lambda img, rng: ImageOps.mirror(img),
    "recolour": lambda img, rng: ImageOps.invert(img) if rng.random() < 0.3 else Image.merge(
        "RGB", [img.split()[i] for i in rng.sample(range(3), 3)]),
    "grey": lambda img, rng: ImageOps.grayscale(img).convert("RGB"),
    "pad": lambda img, rng: ImageOps.expand(img, rng.randint(10, 40), fill=rng.choice(
        ("white", "black", "#dddddd"))),
    "crop": _crop,
    "jpeg": lambda img, rng: _jpeg(img, rng.randint(15, 40)),
    "caption": _caption,
}  # fmt: skip


def build(folder: Path, seed: int = 0) -> dict[str, str]:
    """Write the set into `folder`; returns file name -> copy group ('' for distractors)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = list(WORDS)
    rng.shuffle(words)
    originals = shipped_graphics()
    originals += [logo(rng, w) for w in words[:10]]
    originals += [drawing(rng) for _ in range(8)]
    originals += [chart(rng) for _ in range(6)]
    originals += [screenshot(rng) for _ in range(6)]
    distractors = [logo(rng, w) for w in words[10:]]
    distractors += [chart(rng) for _ in range(6)] + [screenshot(rng) for _ in range(6)]
    distractors += [drawing(rng) for _ in range(6)]
    group: dict[str, str] = {}
    for i, img in enumerate(originals):
        name = f"g{i:03d}.png"
        img.save(folder / name)
        group[name] = str(i)
        for c in range(COPIES):
            edits = rng.sample(sorted(EDITS), rng.randint(1, 3))
            out = img
            for e in edits:
                out = EDITS[e](out.convert("RGB"), rng)
            copy = f"g{i:03d}_c{c}_{'+'.join(edits)}.jpg"
            out.convert("RGB").save(folder / copy, quality=90)
            group[copy] = str(i)
    for j, img in enumerate(distractors):
        name = f"x{j:03d}.png"
        img.save(folder / name)
        group[name] = ""
    return group
