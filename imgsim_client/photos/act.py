"""Acting on duplicate groups: which file of a group to keep (`--keep`), the plan of kept and
other files, moving the others aside with a manifest, and undoing that move."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from imgsim_client._csv import write_text_atomic


def keeper(paths: list[str], policy: str) -> str:
    """The one image of a group to keep: `largest` (pixels, then bytes), `oldest` (file
    modification time), `first` (sorted path), `shortest-path`; ties go to the sorted path."""
    if policy == "largest":
        return min(paths, key=lambda p: (-_pixels(p), -os.path.getsize(p), p))
    if policy == "oldest":
        return min(paths, key=lambda p: (os.path.getmtime(p), p))
    if policy == "shortest-path":
        return min(paths, key=lambda p: (len(p), p))
    if policy == "first":
        return min(paths)
    from imgsim_client.photos.defaults import KEEP_POLICIES

    raise ValueError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, not {policy!r}")


def _pixels(path: str) -> int:
    from imgsim_client.photos.files import pillow

    try:
        with pillow().open(path) as img:
            return img.width * img.height
    except Exception:  # unreadable: it is never the one kept
        return -1


def plan(
    found, files: dict[str, str], policy: str, against: bool = False
) -> dict[int, tuple[str, list[str]]]:
    """Per group of `found` (photos.Duplicates): (the file kept, the others' files), by
    `policy`; against a reference (pairs of new image, reference image), the reference image
    is kept and the new images that match it are the others. `files`: each key's file."""
    members: dict[int, set[str]] = {}  # against a reference: the new images only
    reference: dict[int, str] = {}  # against a reference: its first match, the one kept
    for p in found.pairs:
        a, b = files[p.image_a], files[p.image_b]
        if against:
            reference.setdefault(p.group, b)
            members.setdefault(p.group, set()).add(a)
        else:
            members.setdefault(p.group, set()).update((a, b))
    out = {}
    for g, group in members.items():
        keep = reference[g] if against else keeper(sorted(group), policy)
        out[g] = (keep, sorted(group - {keep}))
    return out


MANIFEST = "imgsim-moved.json"


def move_to(paths: list[str], dest: Path, root: Path | None = None) -> Path:
    """Move `paths` under `dest`, keeping their path relative to `root` (their common folder by
    default), never overwriting anything; `dest/imgsim-moved.json` records every move (from,
    to) as it happens, so `undo_move(dest)` puts them back. Nothing is deleted."""
    if not paths:
        return dest / MANIFEST
    absolute = [Path(p).resolve() for p in paths]
    root = (root or Path(os.path.commonpath([str(p.parent) for p in absolute]))).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    manifest = dest / MANIFEST
    moves = json.loads(manifest.read_text())["moves"] if manifest.is_file() else []
    targets = [dest / src.relative_to(root) for src in absolute]
    taken = [str(t) for t in targets if t.exists()]
    if taken:  # checked for every file before any moves
        raise FileExistsError(f"imgsim never overwrites; nothing moved: {', '.join(taken[:3])}")
    for src, target in zip(absolute, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(target))
        moves.append({"from": str(src), "to": str(target)})
        _write_json(manifest, {"moves": moves})
    return manifest


def undo_move(dest: Path) -> tuple[int, int]:
    """Put back every file the manifest in `dest` records, never overwriting; returns (how many
    were restored, how many could not be: the manifest keeps those)."""
    manifest = dest / MANIFEST
    moves = json.loads(manifest.read_text())["moves"]
    left = []
    for m in reversed(moves):
        src, target = Path(m["from"]), Path(m["to"])
        if src.exists() or not target.exists():
            left.append(m)
            continue
        src.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), str(src))
    _write_json(manifest, {"moves": list(reversed(left))})
    return len(moves) - len(left), len(left)


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
