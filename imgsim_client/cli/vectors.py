"""`embed`, `index`, `search`, `dedup`: collections of images (the [index] extra)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsim_client.cli._common import (
    OK,
    SOME_PAIRS_FAILED,
    USAGE,
    Formatter,
    add_checkpoint,
    add_connection,
    connect,
)


def add_embed(sub: argparse._SubParsersAction) -> None:
    em = sub.add_parser(
        "embed",
        help="embed images (files, folders, lists) into a vectors Parquet file",
        description="Embed every image once through the server's Embed stream and write "
        "path, model, vector (float32, L2-normalised for cosine models) and error columns. "
        'Needs the [index] extra: pip install "imgsim[index]".',
        formatter_class=Formatter,
    )
    em.add_argument("paths", type=Path, nargs="+", help="image files, folders, .csv or .txt lists")
    em.add_argument("-o", "--output", type=Path, required=True, help="vectors .parquet file")
    em.add_argument(
        "--resume",
        action="store_true",
        help="keep the vectors OUTPUT already has (from an interrupted run) and embed only "
        "the rest; an OUTPUT of another model is refused",
    )
    em.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_checkpoint(em)
    add_connection(em)


def add_index(sub: argparse._SubParsersAction) -> None:
    ix = sub.add_parser(
        "index",
        help="build and save a vector index from a vectors Parquet file",
        description="Exact (flat inner product) below --exact-below vectors, approximate "
        "(PCA + IVF, with exact re-ranking) above; the parameters are saved in index.json.",
        formatter_class=Formatter,
    )
    ix.add_argument("vectors", type=Path, help="Parquet written by 'imgsim-client embed'")
    ix.add_argument("-o", "--output", type=Path, required=True, help="folder for the index")
    ix.add_argument("--exact-below", type=int, default=50_000, help="vectors for an exact index")


def add_search(sub: argparse._SubParsersAction) -> None:
    se = sub.add_parser(
        "search",
        help="the k nearest indexed images of each query image",
        description="Queries are embedded through the server with the index's model. Writes "
        "query,rank,path,score.",
        formatter_class=Formatter,
    )
    se.add_argument("index", type=Path, help="a saved index folder or a vectors .parquet file")
    se.add_argument("queries", type=Path, nargs="+", help="query images (files or folders)")
    se.add_argument("-k", "--k", type=int, default=10, help="neighbours per query")
    se.add_argument("-o", "--output", type=Path, help="hits CSV (default: standard output)")
    se.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_connection(se)


def add_dedup(sub: argparse._SubParsersAction) -> None:
    de = sub.add_parser(
        "dedup",
        help="every pair of near-duplicate images in a collection, with groups",
        description="Embeds the images, then finds every pair scoring at or above the "
        "threshold with the index's range search (exact index) or k-NN (approximate index, "
        "-k neighbours each: it says how many images reached k, whose groups may be larger). "
        "Writes image_a,image_b,score,group; group is the connected component.",
        formatter_class=Formatter,
    )
    de.add_argument("paths", type=Path, nargs="+", help="image files, folders, .csv or .txt lists")
    de.add_argument("-o", "--output", type=Path, required=True, help="duplicates CSV")
    de.add_argument(
        "--threshold",
        type=float,
        help="lowest score of a duplicate (default: the model's F1-best threshold measured by "
        "make bench-collections, else the server's calibrated near-duplicate threshold at "
        "0.1%% FPR from ListModels)",
    )
    de.add_argument(
        "-k", "--k", type=int, default=50, help="neighbours per image, with an approximate index"
    )
    de.add_argument("--exact-below", type=int, default=50_000, help="vectors for an exact index")
    de.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_connection(de)


def run_embed(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import refuse_other_model
    from imgsim_client.client import ImgsimError
    from imgsim_client.index import read_parquet, write_parquet

    paths = collection.list_images(args.paths)
    with connect(args) as client:
        done = {}
        if args.resume and args.output.exists():
            kept = read_parquet(args.output)
            found = {kept.model} if kept.keys else set()
            refuse_other_model(args.output, found, client.resolve_model(args.model), "vectors")
            by_key = {collection.display_path(p): p for p in paths}
            done = {by_key[k]: v for k, v in collection.from_vectors(kept).items() if k in by_key}

        def checkpoint(results) -> None:
            write_parquet(collection.to_vectors(results, paths), args.output)

        try:
            results = collection.embed_paths(
                client, paths, args.model, not args.no_progress, done=done,
                checkpoint=checkpoint, checkpoint_s=args.checkpoint_every,
            )  # fmt: skip
        except (ImgsimError, KeyboardInterrupt):
            print(
                f"imgsim-client: partial vectors written to {args.output}; rerun with --resume "
                "to finish",
                file=sys.stderr,
            )
            raise
    vectors = collection.to_vectors(results, paths)
    write_parquet(vectors, args.output)
    print(
        f"embedded {len(vectors.keys)}/{len(paths)} images ({len(vectors.errors)} failed, "
        f"{len(done)} kept) with {vectors.model} -> {args.output}",
        file=sys.stderr,
    )
    return SOME_PAIRS_FAILED if vectors.errors else OK


def run_index(args: argparse.Namespace) -> int:
    from imgsim_client.index import VectorIndex, read_parquet

    vectors = read_parquet(args.vectors)
    index = VectorIndex.build(vectors, exact_below=args.exact_below)
    index.save(args.output)
    p = index.params
    print(
        f"{p.kind} index ({p.factory}) of {p.count} vectors, {p.dimension}-d, "
        f"built in {p.build_s:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    return OK


def _load_index(path: Path):
    from imgsim_client.index import VectorIndex, read_parquet

    if path.is_dir():
        return VectorIndex.load(path)
    return VectorIndex.build(read_parquet(path))


def run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic

    index = _load_index(args.index)
    queries = collection.list_images(args.queries)
    with connect(args) as client:
        results = collection.embed_paths(
            client, queries, args.model or index.params.model, not args.no_progress
        )
    ok = [q for q in queries if results[q].ok]
    matrix = np.array([results[q].vector for q in ok], np.float32)
    matches = collection.search(index, ok, matrix, args.k)
    columns = ["query", "rank", "path", "score"]
    rows = [
        {"query": m.query, "rank": m.rank, "path": m.path, "score": f"{m.score:.6f}"}
        for m in matches
    ]
    if args.output:
        write_csv_atomic(columns, rows, Path(args.output))
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**r, "query": collection.display_path(r["query"])} for r in rows)
    for q in queries:
        if not results[q].ok:
            print(f"imgsim-client: {q}: {results[q].error}", file=sys.stderr)
    return SOME_PAIRS_FAILED if len(ok) < len(queries) else OK


def run_dedup(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic

    paths = collection.list_images(args.paths)
    started = time.perf_counter()
    with connect(args) as client:
        results = collection.embed_paths(client, paths, args.model, not args.no_progress)
        vectors = collection.to_vectors(results, paths)
        threshold = args.threshold
        if threshold is None:
            threshold = collection.default_threshold(vectors.model, client.list_models())
    if threshold is None:
        print(
            f"imgsim-client: error: no default threshold for {vectors.model}; give --threshold",
            file=sys.stderr,
        )
        return USAGE
    found = collection.find_duplicates(vectors, threshold, args.k, args.exact_below)
    rows = [
        {"image_a": p.image_a, "image_b": p.image_b, "score": f"{p.score:.6f}", "group": p.group}
        for p in found.pairs
    ]
    write_csv_atomic(["image_a", "image_b", "score", "group"], rows, args.output)
    how = "exact range search: every pair" if found.exact else (
        f"approximate k-NN, k={found.k}: {found.capped} image(s) reached k, so pairs in groups "
        "larger than k can be missed; raise -k"
    )  # fmt: skip
    print(
        f"{len(found.pairs)} duplicate pairs in {found.groups} groups among "
        f"{len(vectors.keys)} images (threshold {threshold:g}, {vectors.model}; {how}; "
        f"{len(vectors.errors)} failed) in {time.perf_counter() - started:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    for path, error in vectors.errors.items():
        print(f"imgsim-client: {path}: {error}", file=sys.stderr)
    return SOME_PAIRS_FAILED if vectors.errors else OK
