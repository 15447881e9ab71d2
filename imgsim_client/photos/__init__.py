"""Collections of photos: embed a folder, index it, search it, find and act on its duplicates
(the `[index]` extra). One module per job, in the order a collection goes through them:

    files.py    which files a collection is (folders, lists), paths as shown, turned copies
    embed.py    embedding them through the server's Embed stream, resumed and checkpointed
    vectors.py  the vectors (one row per image, or per face) and their Parquet file
    index.py    the FAISS index, and an index folder that grows (`index add`)
    search.py   the nearest indexed photos of each query
    dedup.py    duplicate pairs and groups, against a reference too, verified geometrically;
                `dedup()` is the whole pipeline `imgsim-client dedup` runs
    act.py      which file of a group to keep, moving the others aside, undoing a move
    gallery.py  the HTML page to review groups before acting
    defaults.py the defaults `make bench-quality` chose (light: the CLI's parser reads it)

The names below load lazily (PEP 562), so that `imgsim_client.photos.defaults` stays light.
The functions named like their modules (`embed`, `search`, `dedup`) are `imgsim_client.embed`,
`imgsim_client.search` and `imgsim_client.dedup`, or imported from their module.
"""

from __future__ import annotations

import importlib

# fmt: off
_NAMES = {
    "files": ("IMAGE_EXTS", "list_images", "display_path", "rotated", "Digests", "file_digest"),
    "embed": ("ROTATIONS", "VERSIONS", "embed_paths", "embed_rotations"),
    "vectors": ("Vectors", "read_parquet", "write_parquet", "to_vectors", "from_vectors"),
    "index": ("VectorIndex", "IndexParams", "add_to_index", "stored_vectors", "Added",
              "ModelMismatchError", "EXACT_BELOW", "RAW_VECTORS"),
    "search": ("Match", "search_faces", "search_paths"),
    "dedup": ("DuplicatePair", "Duplicates", "find_duplicates", "match_against", "VerifyRule",
              "Verification", "verify_rule", "rule_at", "verify_duplicates",
              "verification_available", "default_threshold", "DedupResult", "DedupError"),
    "act": ("keeper", "plan", "move_to", "undo_move", "MANIFEST"),
}
# fmt: on
_WHERE = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"imgsim_client.photos.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'imgsim_client.photos' has no attribute {name!r}")
