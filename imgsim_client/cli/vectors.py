"""`embed`, `index`, `search`, `dedup`: collections of images (the [index] extra)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from imgsim_client.cli import _common as common


def run_embed(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import refuse_other_model
    from imgsim_client.client import ImgsimError
    from imgsim_client.index import read_parquet, write_parquet
    from imgsim_client.library import Digests

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

        reader = Digests()
        if args.resume and args.output.exists():
            reader.of.update(kept.digests)

        def vectors_of(results):
            v = collection.to_vectors(results, paths)
            keyed = {collection.display_path(p): d for p, d in reader.of.items()}
            return replace(v, digests={k: keyed[k] for k in v.keys if k in keyed})

        def checkpoint(results) -> None:
            write_parquet(vectors_of(results), args.output)

        try:
            results = collection.embed_paths(
                client, paths, args.model, not args.no_progress, done=done,
                checkpoint=checkpoint, checkpoint_s=args.checkpoint_every, read=reader,
            )  # fmt: skip
        except (ImgsimError, KeyboardInterrupt):
            print(
                f"imgsim-client: partial vectors written to {args.output}; rerun with --resume "
                "to finish",
                file=sys.stderr,
            )
            raise
    vectors = vectors_of(results)
    write_parquet(vectors, args.output)
    embedded = len(paths) - len(vectors.errors)
    faces = f" ({len(vectors.keys)} faces, a row each)" if vectors.boxes else ""
    return common.finish(
        f"embedded {embedded}/{len(paths)} images{faces} ({len(vectors.errors)} failed, "
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
    index.save(args.output, replace(vectors, errors={}))  # the vectors too, for `index add`
    p = index.params
    print(
        f"{p.kind} index ({p.factory}) of {p.count} vectors, {p.dimension}-d, DBA k={p.dba_k}, "
        f"QE k={p.qe_k}, built in {p.build_s:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    return common.OK


def run_index_add(args: argparse.Namespace) -> int:
    from imgsim_client import collection, library
    from imgsim_client.client import ImgsimError

    paths = collection.list_images(args.paths)
    try:
        with common.connect(args) as client:
            added = library.add_to_index(
                client, args.index, paths, args.model or "", not args.no_progress,
                args.checkpoint_every,
            )  # fmt: skip
    except (library.ModelMismatchError, FileNotFoundError) as exc:
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return common.USAGE
    except (ImgsimError, KeyboardInterrupt):
        print(
            f"imgsim-client: the vectors embedded so far are in {args.index}/vectors.parquet; "
            "run the same add again to finish",
            file=sys.stderr,
        )
        raise
    for path, error in added.failed.items():
        print(f"imgsim-client: {path}: {error}", file=sys.stderr)
    return common.finish(
        f"added {added.new} new and {added.changed} changed image(s) ({added.unchanged} "
        f"unchanged, {len(added.failed)} failed) in {added.embed_s:.1f}s; {added.kind} index "
        f"of {added.count} vectors rebuilt in {added.build_s:.1f}s -> {args.index}",
        len(added.failed),
    )


def run_index_info(args: argparse.Namespace) -> int:
    import json

    from imgsim_client.index import RAW_VECTORS

    meta = args.index / "index.json"
    if not meta.is_file():
        print(f"imgsim-client: error: no index in {args.index} (index.json)", file=sys.stderr)
        return common.USAGE
    info = json.loads(meta.read_text())
    info["stored_vectors"] = (args.index / RAW_VECTORS).is_file()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return common.OK


def run_undo_move(args: argparse.Namespace) -> int:
    from imgsim_client import library

    if not (args.folder / library.MANIFEST).is_file():
        print(f"imgsim-client: error: no {library.MANIFEST} in {args.folder}", file=sys.stderr)
        return common.USAGE
    restored, left = library.undo_move(args.folder)
    return common.finish(
        f"restored {restored} file(s); {left} could not go back (their place is taken or "
        "they are gone)",
        left,
    )


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
    faces = index.params.similarity == "face"  # an index of faces: its queries' faces
    with common.connect(args) as client:
        model = args.model or index.params.model
        if faces:
            found = collection.embed_paths(client, queries, model, not args.no_progress)
            per = {q: [found[q]] for q in queries}
        else:
            per = collection.embed_rotations(
                client, queries, model, rotations, not args.no_progress
            )
    ok = [q for q in queries if all(r.ok for r in per[q])]
    if faces:
        matches = collection.search_faces(index, {q: per[q][0] for q in ok}, args.k)
    else:
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


def _reference(client, against: Path, model: str, progress: bool):
    """(vectors, key -> file) of a dedup reference: an index folder's stored vectors, a
    vectors .parquet, or images embedded now with `model`."""
    from imgsim_client import collection, library
    from imgsim_client.index import read_parquet

    if against.is_dir() and (against / "index.json").is_file():
        ref = read_parquet(library.stored_vectors(against))
    elif against.suffix == ".parquet":
        ref = read_parquet(against)
    else:
        paths = collection.list_images([against])
        ref = collection.to_vectors(collection.embed_paths(client, paths, model, progress), paths)
        return ref, {collection.display_path(p): p for p in paths}
    return ref, {k: k for k in ref.keys}


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
    progress = not args.no_progress
    reference, ref_files = None, {}
    with common.connect(args) as client:
        listing = client.list_models()
        # Like embed: collections default to the server's retrieval descriptor.
        args.model = args.model or listing.collection_model or ""
        if args.against is not None:
            try:
                reference, ref_files = _reference(client, args.against, args.model, progress)
            except FileNotFoundError as exc:
                print(f"imgsim-client: error: {exc}", file=sys.stderr)
                return common.USAGE
            args.model = reference.model or args.model  # the new images as the reference
        results = collection.embed_paths(client, paths, args.model, progress)
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
    if reference is not None:
        found = collection.match_against(vectors, reference, threshold, args.k, args.exact_below)
    else:
        found = collection.find_duplicates(vectors, threshold, args.k, args.exact_below)
    files = {**ref_files, **{collection.display_path(p): p for p in paths}}
    if rule is not None:
        found = collection.verify_duplicates(found, files, rule, args.workers, progress)
    if reference is not None:
        header = ["image", "match", "score", "inliers"]
        rows = [
            {"image": p.image_a, "match": p.image_b, "score": f"{p.score:.6f}",
             "inliers": "" if p.inliers is None else p.inliers}
            for p in found.pairs
        ]  # fmt: skip
    else:
        header = ["image_a", "image_b", "score", "inliers", "group"]
        rows = [
            {"image_a": p.image_a, "image_b": p.image_b, "score": f"{p.score:.6f}",
             "inliers": "" if p.inliers is None else p.inliers, "group": p.group}
            for p in found.pairs
        ]  # fmt: skip
    write_csv_atomic(header, rows, args.output)
    how = "exact range search: every pair" if found.exact else (
        f"approximate k-NN, k={found.k}: {found.capped} image(s) reached k, so pairs in groups "
        "larger than k can be missed; raise -k"
    )  # fmt: skip
    if reference is not None:
        how = f"against {len(reference.keys)} reference images, up to k={found.k} each"
    v = found.verification
    checked = (
        "not verified"
        if v is None
        else f"verified {v.checked} candidate(s) below {v.rule.sure:g} on {v.images} image(s) "
        f"in {v.seconds:.1f}s, kept those with >= {v.rule.min_inliers} inliers spanning >= "
        f"{v.rule.min_coverage:g} of an image"
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
    for path in v.unreadable if v is not None else ():
        print(f"imgsim-client: {path}: cannot be read for verification; its candidate pairs "
              "were not kept", file=sys.stderr)  # fmt: skip
    if args.html or args.to_remove or args.move_to:
        try:
            _act(args, found, files, reference is not None)
        except FileExistsError as exc:
            print(f"imgsim-client: error: {exc}", file=sys.stderr)
            return common.FAILED
    return common.SOME_PAIRS_FAILED if vectors.errors else common.OK


def _act(args: argparse.Namespace, found, files: dict[str, str], against: bool) -> None:
    """--html, --to-remove, --move-to over the groups found. Against a reference, the
    reference image is the one kept and the new images that match it are the others."""
    from imgsim_client import gallery, library
    from imgsim_client._csv import write_text_atomic

    best: dict[str, float] = {}
    for p in found.pairs:
        for k in (p.image_a, p.image_b):
            best[files[k]] = max(best.get(files[k], -1.0), p.score)
    plan = library.plan(found, files, args.keep, against)
    others = sorted({o for _, rest in plan.values() for o in rest})
    if args.html:
        out = gallery.write(plan, best, args.html, f"imgsim dedup: {args.output.name}")
        print(f"gallery of {len(plan)} groups -> {out}", file=sys.stderr)
    if args.to_remove:
        write_text_atomic(args.to_remove, "".join(f"{p}\n" for p in others))
        print(f"{len(others)} path(s) not kept -> {args.to_remove}", file=sys.stderr)
    if args.move_to:
        manifest = library.move_to(others, args.move_to)
        print(
            f"moved {len(others)} file(s) under {args.move_to}; undo: imgsim-client undo-move "
            f"{args.move_to} ({manifest.name})",
            file=sys.stderr,
        )
