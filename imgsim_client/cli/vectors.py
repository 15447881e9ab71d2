"""`embed`, `index`, `search`, `dedup`: collections of images (the [index] extra)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsim_client.cli import _common as common


def run_embed(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import refuse_other_model
    from imgsim_client.client import ImgsimError
    from imgsim_client.index import read_parquet, write_parquet

    paths = collection.list_images(args.paths)
    with common.connect(args) as client:
        # Collections default to the server's retrieval descriptor, not its pair model.
        args.model = args.model or client.list_models().collection_model or ""
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
    return common.finish(
        f"embedded {len(vectors.keys)}/{len(paths)} images ({len(vectors.errors)} failed, "
        f"{len(done)} kept) with {vectors.model} -> {args.output}",
        len(vectors.errors),
    )


def run_index(args: argparse.Namespace) -> int:
    from imgsim_client.index import VectorIndex, read_parquet

    vectors = read_parquet(args.vectors)
    index = VectorIndex.build(
        vectors,
        exact_below=args.exact_below,
        dba_k=args.dba_k,
        dba_alpha=args.dba_alpha,
        qe_k=args.qe_k,
        qe_alpha=args.qe_alpha,
    )
    index.save(args.output)
    p = index.params
    print(
        f"{p.kind} index ({p.factory}) of {p.count} vectors, {p.dimension}-d, DBA k={p.dba_k}, "
        f"QE k={p.qe_k}, built in {p.build_s:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    return common.OK


def _load_index(path: Path):
    from imgsim_client import defaults
    from imgsim_client.index import VectorIndex, read_parquet

    if path.is_dir():
        return VectorIndex.load(path)
    return VectorIndex.build(
        read_parquet(path),
        dba_k=defaults.DBA_K,
        dba_alpha=defaults.DBA_ALPHA,
        qe_k=defaults.QE_K,
        qe_alpha=defaults.QE_ALPHA,
    )


def run_search(args: argparse.Namespace) -> int:
    import numpy as np

    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic

    index = _load_index(args.index)
    queries = collection.list_images(args.queries)
    rotations = collection.VERSIONS[args.rotations]
    with common.connect(args) as client:
        model = args.model or index.params.model
        per = collection.embed_rotations(client, queries, model, rotations, not args.no_progress)
    ok = [q for q in queries if all(r.ok for r in per[q])]
    versions = np.array([[per[q][i].vector for q in ok] for i in range(len(rotations))])
    matches = collection.search(index, ok, versions, args.k, args.qe_k)
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
        failed = next((r for r in per[q] if not r.ok), None)
        if failed is not None:
            print(f"imgsim-client: {q}: {failed.error}", file=sys.stderr)
    return common.SOME_PAIRS_FAILED if len(ok) < len(queries) else common.OK


def run_dedup(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic

    if not args.no_verify and not collection.verification_available():
        print(
            "imgsim-client: error: dedup verifies its candidates with OpenCV: "
            'python -m pip install "imgsim[verify]", or pass --no-verify',
            file=sys.stderr,
        )
        return common.USAGE
    paths = collection.list_images(args.paths)
    started = time.perf_counter()
    with common.connect(args) as client:
        listing = client.list_models()
        # Like embed: collections default to the server's retrieval descriptor.
        args.model = args.model or listing.collection_model or ""
        results = collection.embed_paths(client, paths, args.model, not args.no_progress)
        vectors = collection.to_vectors(results, paths)
    measured = None if args.no_verify else collection.verify_rule(vectors.model)
    threshold = args.threshold
    if threshold is None:
        threshold = (
            measured.floor
            if measured is not None
            else collection.default_threshold(vectors.model, listing)
        )
    if threshold is None:
        print(
            f"imgsim-client: error: no default threshold for {vectors.model}; give --threshold",
            file=sys.stderr,
        )
        return common.USAGE
    rule = None if args.no_verify else collection.rule_at(measured, threshold, args.min_inliers)
    found = collection.find_duplicates(vectors, threshold, args.k, args.exact_below)
    if rule is not None:
        files = {collection.display_path(p): p for p in paths}
        found = collection.verify_duplicates(found, files, rule, args.workers, not args.no_progress)
    rows = [
        {"image_a": p.image_a, "image_b": p.image_b, "score": f"{p.score:.6f}",
         "inliers": "" if p.inliers is None else p.inliers, "group": p.group}
        for p in found.pairs
    ]  # fmt: skip
    write_csv_atomic(["image_a", "image_b", "score", "inliers", "group"], rows, args.output)
    how = "exact range search: every pair" if found.exact else (
        f"approximate k-NN, k={found.k}: {found.capped} image(s) reached k, so pairs in groups "
        "larger than k can be missed; raise -k"
    )  # fmt: skip
    v = found.verification
    checked = (
        "not verified"
        if v is None
        else f"verified {v.checked} candidate(s) below {v.rule.sure:g} on {v.images} image(s) "
        f"in {v.seconds:.1f}s, kept those with >= {v.rule.min_inliers} inliers"
    )
    print(
        f"{len(found.pairs)} duplicate pairs in {found.groups} groups among "
        f"{len(vectors.keys)} images (threshold {threshold:g}, {vectors.model}; {how}; "
        f"{checked}; {len(vectors.errors)} failed) in {time.perf_counter() - started:.1f}s "
        f"-> {args.output}",
        file=sys.stderr,
    )
    for path, error in vectors.errors.items():
        print(f"imgsim-client: {path}: {error}", file=sys.stderr)
    return common.SOME_PAIRS_FAILED if vectors.errors else common.OK
