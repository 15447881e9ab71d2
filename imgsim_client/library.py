"""Photo libraries: an index that grows (`index add`), and acting on duplicates (`dedup
--keep/--to-remove/--move-to`, with a manifest that undoes a move). Needs the [index] extra.

An index folder keeps the vectors as embedded (`vectors.parquet`, with each file's sha256)
beside the FAISS index; `add` embeds only what is new or changed, checkpoints those vectors as
it goes, and rebuilds the index from them with the parameters it recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from imgsim_client._csv import write_text_atomic
from imgsim_client.client import ImageResult, ImgsimClient


class Digests:
    """A `read` for `collection.embed_paths` that keeps the sha256 of every file it reads, so
    that the digests cost no second read."""

    def __init__(self) -> None:
        self.of: dict[str, str] = {}

    def __call__(self, path: str) -> bytes:
        data = Path(path).read_bytes()
        self.of[path] = hashlib.sha256(data).hexdigest()
        return data


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Added:
    """What `add_to_index` did."""

    new: int
    changed: int
    unchanged: int
    failed: dict[str, str]
    count: int  # vectors in the index now
    kind: str
    embed_s: float
    build_s: float


class ModelMismatchError(ValueError):
    """The index was made with another model than the one asked for."""


def stored_vectors(folder: Path) -> Path:
    """The vectors an index folder keeps as embedded (`vectors.parquet`), which `index add`
    grows and `dedup --against` reads; FileNotFoundError, saying what to do, where an index
    was built before it kept them."""
    from imgsim_client.index import RAW_VECTORS

    path = folder / RAW_VECTORS
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {RAW_VECTORS} (an index built before `index add` existed): build "
            "it again with `imgsim-client index VECTORS -o DIR`"
        )
    return path


def add_to_index(
    client: ImgsimClient,
    folder: Path,
    paths: list[str],
    model: str = "",
    progress: bool = True,
    checkpoint_s: float = 30.0,
) -> Added:
    """Embed the `paths` not in the index at `folder` (by path and content: a changed file is
    embedded again), append them, and rebuild the index with its recorded parameters. The
    new vectors are written to `vectors.parquet` every `checkpoint_s` seconds and when
    interrupted, so a second run embeds only what is still missing. `model`, if given, must be
    the index's (ModelMismatchError)."""
    import numpy as np

    from imgsim_client import collection
    from imgsim_client.index import IndexParams, VectorIndex, Vectors, read_parquet

    params = IndexParams(**json.loads((folder / "index.json").read_text()))
    if model and client.resolve_model(model) != params.model:
        raise ModelMismatchError(
            f"{folder} holds vectors of {params.model}, not {client.resolve_model(model)}; "
            "an index holds one model's vectors (build another index for that model)"
        )
    raw_path = stored_vectors(folder)
    old = read_parquet(raw_path)
    stored = dict(zip(old.keys, old.matrix, strict=True))
    digests = dict(old.digests)
    keyed = {collection.display_path(p): p for p in paths}
    todo, changed, unchanged = [], 0, 0
    for key, path in keyed.items():
        if key in stored:
            now = file_digest(path)
            if digests.setdefault(key, now) == now:  # no digest recorded: taken as unchanged
                unchanged += 1
                continue
            changed += 1
        todo.append(path)
    reader = Digests()

    def merged(results: dict[str, ImageResult]) -> Vectors:
        """The old vectors, changed ones replaced by the new where embedded."""
        new = collection.to_vectors(results, todo)
        rows = dict(stored)
        rows.update(zip(new.keys, new.matrix, strict=True))
        for key in new.errors:  # a changed file that no longer embeds leaves the index
            rows.pop(key, None)
        digest = {**digests, **{collection.display_path(p): d for p, d in reader.of.items()}}
        keys = list(rows)
        dim = old.matrix.shape[1] if old.keys else (new.matrix.shape[1] if new.keys else 0)
        matrix = np.stack([rows[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        return Vectors(keys, matrix.astype(np.float32), params.model, params.similarity,
                       new.errors, {k: digest[k] for k in keys if k in digest})  # fmt: skip

    def checkpoint(results: dict[str, ImageResult]) -> None:
        from imgsim_client.index import write_parquet

        write_parquet(merged(results), raw_path)

    started = time.perf_counter()
    results = collection.embed_paths(
        client, todo, params.model, progress, checkpoint=checkpoint if todo else None,
        checkpoint_s=checkpoint_s, read=reader,
    )  # fmt: skip
    embed_s = time.perf_counter() - started
    vectors = merged(results)
    built = VectorIndex.build(
        vectors, dba_k=params.dba_k, dba_alpha=params.dba_alpha or 3.0, qe_k=params.qe_k,
        qe_alpha=params.qe_alpha or 3.0,
    )  # fmt: skip
    built.save(folder, replace(vectors, errors={}))
    new_count = len(todo) - changed
    return Added(new_count, changed, unchanged, vectors.errors, len(built), built.params.kind,
                 embed_s, built.params.build_s)  # fmt: skip


# --- acting on duplicate groups -------------------------------------------------------------


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
    from imgsim_client.defaults import KEEP_POLICIES

    raise ValueError(f"--keep must be one of {', '.join(KEEP_POLICIES)}, not {policy!r}")


def _pixels(path: str) -> int:
    from imgsim_client.collection import _pillow

    try:
        with _pillow().open(path) as img:
            return img.width * img.height
    except Exception:  # unreadable: it is never the one kept
        return -1


def plan(
    found, files: dict[str, str], policy: str, against: bool = False
) -> dict[int, tuple[str, list[str]]]:
    """Per group of `found` (collection.Duplicates): (the file kept, the others' files), by
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
