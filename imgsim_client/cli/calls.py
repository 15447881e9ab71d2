"""`compare`, `models`, `stats` and `perf`: one call or a load sweep against a server."""

from __future__ import annotations

import argparse
import sys
import textwrap

from imgsim_client.cli import _common as common


def run_compare(args: argparse.Namespace) -> int:
    from imgsim_client.scoring import PairsFileError

    data = []
    for path in (args.image_a, args.image_b):
        try:
            data.append(path.read_bytes())
        except OSError as exc:
            raise PairsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with common.connect(args) as client:
        info = client.list_models().get(args.model) if args.model else None
        if info is not None and info.kind == "face":
            return _print_faces(client.compare_faces(data[0], data[1], args.model), args.json)
        if args.verify:
            result = client.compare_verified(data[0], data[1], model=args.model)
        else:
            result = client.compare_pair(data[0], data[1], model=args.model)._asdict()
    if args.json:
        import dataclasses
        import json

        fields = result if isinstance(result, dict) else dataclasses.asdict(result)
        print(json.dumps(fields))
    elif isinstance(result, dict):
        print(f"{result['score']:.4f} {result['verdict']}".rstrip())
    else:
        seen = "verified" if result.verified else "not verified"
        if result.verification == "cannot tell":
            seen = "cannot tell (too few local features to judge)"
        print(f"{result.score:.4f} {result.verdict} {result.inliers} inliers: {seen}".strip())
    return common.OK


def _print_faces(match, as_json: bool) -> int:
    """A face-model pair: score, verdict and the boxes of the faces that matched."""
    import dataclasses

    if as_json:
        import json

        print(json.dumps(dataclasses.asdict(match)))
        return common.OK

    def box(b) -> str:
        return f"({b.left},{b.top})-({b.right},{b.bottom})"

    print(f"{match.score:.4f} {match.verdict} faces {box(match.face_a)} {box(match.face_b)}")
    return common.OK


def run_perf(args: argparse.Namespace) -> int:
    from imgsim_client import perf

    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        images = perf.load_images(args.images)
    except ValueError as exc:
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return common.USAGE
    with common.connect(args) as client:
        result = perf.sweep(
            client,
            images,
            levels,
            args.duration,
            args.pairs,
            args.unary,
            args.cache_hits,
            args.model,
            args.inflight,
        )
    print(perf.format_table(result))
    if args.output:
        perf.write(result, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return common.SOME_PAIRS_FAILED if any(lv.errors for lv in result) else common.OK


def run_models(args: argparse.Namespace) -> int:
    with common.connect(args, ready=False) as client:  # a table of states, ready or not
        resp = client.list_models()
    if args.json:
        return _print_json(resp)
    print(models_table(resp))
    return common.OK


TASKS = ("near-duplicate", "same object", "same category")


def models_table(resp) -> str:
    """The `models` table, each column as wide as its longest entry; below a model, why it
    is not ready or where its missing weights were looked for; then what the marks mean."""
    rows = [("name", "kind", "dim", "input", "similarity", "weights", "state", "verdicts @1% FPR")]
    notes: dict[int, str] = {}
    for m in resp.models:
        mark = (
            " *"
            if m.name == resp.default_model
            else " +"
            if m.name == resp.collection_model
            else ""
        )
        weights = "n/a" if not m.weights_source else ("ok" if m.weights_available else "MISSING")
        at_1pct = {t.task: t.score for t in m.thresholds if abs(t.fpr - 0.01) < 1e-9}
        thr = "/".join(f"{at_1pct[t]:.3f}" if t in at_1pct else "-" for t in TASKS)
        if not at_1pct:
            thr = "none (dedup rule)" if m.name == resp.collection_model else "none"
        rows.append(
            (m.name + mark, m.kind, str(m.embedding_dim), str(m.input_size), m.similarity,
             weights, m.state or "?", thr)
        )  # fmt: skip
        if m.state in ("preparing", "failed") and m.state_detail:
            notes[len(rows) - 1] = f"    {m.state}: {m.state_detail}"
        elif m.weights_source and not m.weights_available:
            notes[len(rows) - 1] = f"    looked for {m.weights_source}"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3}  # numbers
    lines = []
    for i, row in enumerate(rows):
        cells = [
            c.rjust(w) if j in right else c.ljust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i in notes:
            lines.append(notes[i])
    legend = (
        "verdicts: the near-duplicate/same object/same category thresholds a compare's verdict "
        "uses (make study). The collection model has none: its decisions are dedup's rule "
        "(candidate floor, geometric verification), measured in results/neardup.md"
    )
    lines += [
        "",
        "* default model (pair scoring); + collection model (embed, index, search, dedup)",
        textwrap.fill(legend, 100),
    ]
    return "\n".join(lines)


def _fetch(args: argparse.Namespace, call: str):
    """One unary call's typed result (`stats`)."""
    with common.connect(args) as client:
        return getattr(client, call)()


def _print_json(result) -> int:
    """A typed result as JSON, with the proto's field names."""
    import dataclasses
    import json

    print(json.dumps(dataclasses.asdict(result), indent=2))
    return common.OK


def run_stats(args: argparse.Namespace) -> int:
    resp = _fetch(args, "stats")
    if args.json:
        return _print_json(resp)
    print(
        f"{'model':<24}{'batches':>9}{'images':>9}{'mean batch':>12}{'max':>6}"
        f"{'queue ms':>10}{'model ms':>10}"
    )
    for m in resp.models:
        print(
            f"{m.model:<24}{m.batches:>9}{m.images_embedded:>9}{m.mean_batch_size:>12.2f}"
            f"{m.max_batch_size_seen:>6}{m.mean_queue_ms:>10.2f}{m.mean_inference_ms:>10.2f}"
        )
    if not resp.models:
        print("(no model has embedded an image yet)")
    lookups = resp.cache_hits + resp.cache_misses
    rate = f" ({resp.cache_hits / lookups:.1%} hits)" if lookups else ""
    print()
    print(f"pairs scored      {resp.pairs_scored}")
    print(f"pairs failed      {resp.pairs_failed}")
    print(f"cache hits        {resp.cache_hits}{rate}")
    print(f"cache misses      {resp.cache_misses}")
    print(f"cache entries     {resp.cache_entries} ({resp.cache_bytes / 2**20:.1f} MiB)")
    print(f"queue depth       {resp.queue_depth}")
    print(f"images cancelled  {resp.images_cancelled}")
    return common.OK
