"""`embed`, `index`, `search`, `dedup`: collections of images (the [index] extra)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from imgsim_client.cli import _common as common


def run_embed(args: argparse.Namespace) -> int:
    from imgsim_client import photos
    from imgsim_client._csv import refuse_other_model
    from imgsim_client.client import ImgsimError
    from imgsim_client.photos.files import Digests
    from imgsim_client.photos.vectors import read_parquet, write_parquet

    paths = photos.list_images(args.paths)
    with common.connect(args) as client:
        # Collections default to the server's retrieval descriptor, not its pair model.
        args.model = args.model or client.list_models().collection_model or ""
        done = {}
        if args.resume and args.output.exists():
            kept = read_parquet(args.output)
            found = {kept.model} if kept.keys else set()
            refuse_other_model(args.output, found, client.resolve_model(args.model), "vectors")
            by_key = {photos.display_path(p): p for p in paths}
            done = {by_key[k]: v for k, v in photos.from_vectors(kept).items() if k in by_key}

        reader = Digests()
        if args.resume and args.output.exists():
            reader.of.update(kept.digests)

        def vectors_of(results):
            v = photos.to_vectors(results, paths)
            keyed = {photos.display_path(p): d for p, d in reader.of.items()}
            return replace(v, digests={k: keyed[k] for k in v.keys if k in keyed})

        def checkpoint(results) -> None:
            write_parquet(vectors_of(results), args.output)

        try:
            results = photos.embed_paths(
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
    from imgsim_client.photos.index import VectorIndex
    from imgsim_client.photos.vectors import read_parquet

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
    from imgsim_client import photos
    from imgsim_client.client import ImgsimError

    paths = photos.list_images(args.paths)
    try:
        with common.connect(args) as client:
            added = photos.add_to_index(
                client, args.index, paths, args.model or "", not args.no_progress,
                args.checkpoint_every,
            )  # fmt: skip
    except (photos.ModelMismatchError, FileNotFoundError) as exc:
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

    from imgsim_client.photos.index import RAW_VECTORS

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
    from imgsim_client import photos

    if not (args.folder / photos.MANIFEST).is_file():
        print(f"imgsim-client: error: no {photos.MANIFEST} in {args.folder}", file=sys.stderr)
        return common.USAGE
    restored, left = photos.undo_move(args.folder)
    return common.finish(
        f"restored {restored} file(s); {left} could not go back (their place is taken or "
        "they are gone)",
        left,
    )


def _load_index(path: Path):
    from imgsim_client.photos import defaults
    from imgsim_client.photos.index import VectorIndex
    from imgsim_client.photos.vectors import read_parquet

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
    from imgsim_client import photos
    from imgsim_client._csv import write_csv_atomic

    if not args.index.exists():
        print(
            f"imgsim-client: error: no index at {args.index}: give an index folder "
            "(imgsim-client index) or a vectors .parquet (imgsim-client embed)",
            file=sys.stderr,
        )
        return common.USAGE
    index = _load_index(args.index)
    with common.connect(args) as client:
        matches, failed = photos.search_paths(
            index, args.queries, client, model=args.model, k=args.k,
            rotations=photos.VERSIONS[args.rotations], qe_k=args.qe_k,
            progress=not args.no_progress,
        )  # fmt: skip
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
        writer.writerows({**r, "query": photos.display_path(r["query"])} for r in rows)
    for query, error in failed.items():
        print(f"imgsim-client: {query}: {error}", file=sys.stderr)
    return common.SOME_PAIRS_FAILED if failed else common.OK


def run_dedup(args: argparse.Namespace) -> int:
    from imgsim_client import photos
    from imgsim_client._csv import write_csv_atomic
    from imgsim_client.photos.dedup import dedup

    if not args.no_verify and not photos.verification_available():
        print(
            "imgsim-client: error: dedup verifies its candidates with OpenCV: "
            'python -m pip install "imgsim[verify]", or pass --no-verify',
            file=sys.stderr,
        )
        return common.USAGE
    with common.connect(args) as client:
        try:
            result = dedup(
                args.paths, client, model=args.model, threshold=args.threshold,
                verify=not args.no_verify, min_inliers=args.min_inliers, against=args.against,
                k=args.k, exact_below=args.exact_below, workers=args.workers,
                progress=not args.no_progress, rotations=args.rotations,
            )  # fmt: skip
        except photos.DedupError as exc:
            print(f"imgsim-client: error: {exc}", file=sys.stderr)
            return common.USAGE
    found, vectors, reference = result.found, result.vectors, result.reference
    if reference is not None:
        header = ["image", "match", "score", "inliers", "verification"]
        rows = [
            {"image": p.image_a, "match": p.image_b, "score": f"{p.score:.6f}",
             "inliers": "" if p.inliers is None else p.inliers, "verification": p.verification}
            for p in found.pairs
        ]  # fmt: skip
    else:
        header = ["image_a", "image_b", "score", "inliers", "verification", "group"]
        rows = [
            {"image_a": p.image_a, "image_b": p.image_b, "score": f"{p.score:.6f}",
             "inliers": "" if p.inliers is None else p.inliers, "verification": p.verification,
             "group": p.group}
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
        + (
            f", and where an image has under {v.rule.min_features} features (cannot tell) "
            f"those scoring >= {v.rule.unsure:g}"
            if v.rule.min_features and v.rule.unsure <= 1
            else ""
        )
    )
    print(
        f"{len(found.pairs)} duplicate pairs in {found.groups} groups among "
        f"{len(vectors.keys)} images (threshold {result.threshold:g}, {vectors.model}; {how}; "
        f"{checked}; {len(vectors.errors)} failed) in {result.seconds:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    for path, error in vectors.errors.items():
        print(f"imgsim-client: {path}: {error}", file=sys.stderr)
    for path in v.unreadable if v is not None else ():
        print(f"imgsim-client: {path}: cannot be read for verification; its candidate pairs "
              "were not kept", file=sys.stderr)  # fmt: skip
    if args.html or args.to_remove or args.move_to:
        try:
            _act(args, found, result.files, reference is not None)
        except FileExistsError as exc:
            print(f"imgsim-client: error: {exc}", file=sys.stderr)
            return common.FAILED
    return common.SOME_PAIRS_FAILED if vectors.errors else common.OK


def _act(args: argparse.Namespace, found, files: dict[str, str], against: bool) -> None:
    """--html, --to-remove, --move-to over the groups found. Against a reference, the
    reference image is the one kept and the new images that match it are the others."""
    from imgsim_client import photos
    from imgsim_client._csv import write_text_atomic
    from imgsim_client.photos import gallery

    best: dict[str, float] = {}
    for p in found.pairs:
        for k in (p.image_a, p.image_b):
            best[files[k]] = max(best.get(files[k], -1.0), p.score)
    plan = photos.plan(found, files, args.keep, against)
    others = sorted({o for _, rest in plan.values() for o in rest})
    if args.html:
        out = gallery.write(plan, best, args.html, f"imgsim dedup: {args.output.name}")
        print(f"gallery of {len(plan)} groups -> {out}", file=sys.stderr)
    if args.to_remove:
        write_text_atomic(args.to_remove, "".join(f"{p}\n" for p in others))
        print(f"{len(others)} path(s) not kept -> {args.to_remove}", file=sys.stderr)
    if args.move_to:
        manifest = photos.move_to(others, args.move_to)
        print(
            f"moved {len(others)} file(s) under {args.move_to}; undo: imgsim-client undo-move "
            f"{args.move_to} ({manifest.name})",
            file=sys.stderr,
        )
