"""Embedding a collection through the server's Embed stream: every image once, resumed on
UNAVAILABLE with only the unanswered images, checkpointed; turned versions for queries."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc

from imgsim_client._resume import RetryPolicy, resumable
from imgsim_client.client import ImageRequest, ImageResult, ImgsimClient, ImgsimError
from imgsim_client.photos.files import rotated

# Versions of a query: (degrees counter-clockwise, mirrored first). 4: the rotations; 8: and
# those of the mirror image.
ROTATIONS = ((0, False), (90, False), (180, False), (270, False))


VERSIONS = {1: ROTATIONS[:1], 4: ROTATIONS, 8: ROTATIONS + tuple((d, True) for d, _ in ROTATIONS)}


def embed_rotations(
    client: ImgsimClient,
    paths: list[str],
    model: str = "",
    versions: tuple[tuple[int, bool], ...] = ROTATIONS,
    progress: bool = True,
) -> dict[str, list[ImageResult]]:
    """Each path's embedding in each version (degrees, mirrored), in their order; versions
    other than the upright original are made on the client (needs Pillow)."""
    sep = "\x00"

    def key(path: str, version: tuple[int, bool]) -> str:
        return f"{path}{sep}{version[0]}{sep}{int(version[1])}"

    def read(k: str) -> bytes:
        path, degrees, mirror = k.split(sep)
        data = Path(path).read_bytes()
        if degrees == "0" and mirror == "0":
            return data
        return rotated(data, int(degrees), mirror == "1")

    keys = [key(p, v) for p in paths for v in versions]
    results = embed_paths(client, keys, model, progress, read=read)
    return {p: [results[key(p, v)] for v in versions] for p in paths}


def embed_paths(
    client: ImgsimClient,
    paths: list[str],
    model: str = "",
    progress: bool = True,
    retry: RetryPolicy | None = None,
    done: dict[str, ImageResult] | None = None,
    checkpoint: Callable[[dict[str, ImageResult]], None] | None = None,
    checkpoint_s: float = 30.0,
    read: Callable[[str], bytes] | None = None,
) -> dict[str, ImageResult]:
    """Every path's embedding (or error), each image sent once; on UNAVAILABLE, once a server
    has answered, a new stream carries only the images not answered yet. `done` holds results
    of an earlier run to keep (resume). `checkpoint(results)` is called every `checkpoint_s`
    seconds and, before the exception propagates, when the run fails or is interrupted
    (Ctrl-C), so that what is done is kept for a resume. `read(path)` gives the bytes to send
    (default: the file's)."""
    from tqdm import tqdm

    retry = retry or RetryPolicy()
    results: dict[str, ImageResult] = dict(done or {})
    last = [time.monotonic()]

    def answered(path: str, res: ImageResult) -> None:
        results[path] = res
        bar.update(1)
        if checkpoint is not None and time.monotonic() - last[0] >= checkpoint_s:
            checkpoint(results)
            last[0] = time.monotonic()

    with tqdm(total=len(paths), initial=len(results), unit="img", disable=not progress) as bar:
        try:
            read = read or (lambda path: Path(path).read_bytes())
            return _embed_all(client, paths, model, retry, results, answered, bar, read)
        except BaseException:
            if checkpoint is not None:
                checkpoint(results)
            raise


def _embed_all(client, paths, model, retry, results, answered, bar, read):
    """The streams of `embed_paths`: reopened with what is left after a lost server."""

    def pending() -> list[str]:
        return [p for p in paths if p not in results]

    def open_stream(todo: list[str]):
        def requests():
            for i, path in enumerate(todo):
                try:
                    data = read(path)
                except Exception as exc:  # unreadable, or (rotations) not an image Pillow reads
                    answered(path, ImageResult(
                        path, None, model, "", grpc.StatusCode.NOT_FOUND,
                        f"cannot read image: {getattr(exc, 'strerror', None) or exc}",
                    ))  # fmt: skip
                    continue
                yield ImageRequest(str(i), data, model=model)

        for res in client.embed_stream(requests()):
            yield todo[int(res.image_id)], res

    def reconnecting(err: ImgsimError, attempt: int, wait: float, todo: list) -> None:
        bar.write(f"imgsim-client: {err.message}; reconnecting in {wait:.1f}s (retry {attempt})")

    resumable(client, pending, open_stream, lambda pr: answered(*pr), retry, None, reconnecting)
    return results


def embed(paths: list[str | Path], client=None, model: str = "", progress: bool = False):
    """The vectors (photos.vectors.Vectors; failures in `errors`) of the images in `paths`
    (files, folders, lists), each sent once, with the server's collection descriptor unless
    `model` says otherwise. `client`: an ImgsimClient, an address, or None for a private
    local server for the call."""
    from imgsim_client.local import connected
    from imgsim_client.photos.files import list_images
    from imgsim_client.photos.vectors import to_vectors

    found = list_images([Path(p) for p in paths])
    with connected(client) as c:
        model = model or c.list_models().collection_model or ""
        return to_vectors(embed_paths(c, found, model, progress), found)
