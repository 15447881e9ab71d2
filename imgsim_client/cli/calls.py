"""`compare`, `models`, `stats` and `perf`: one call or a load sweep against a server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgsim_client.cli._common import (
    OK,
    SOME_PAIRS_FAILED,
    USAGE,
    Formatter,
    add_connection,
    connect,
)


def add_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compare",
        help="print the similarity of two image files",
        description="Score one pair with the unary Compare call and print the score, then, "
        "for a model with calibrated thresholds, the verdict on the same line "
        "(`0.9412 near-duplicate`; also `same object`, `same category`, `different`: the "
        "most specific task whose 1%-false-positive threshold the score reaches, see "
        "`imgsim-client models`).",
        formatter_class=Formatter,
    )
    c.add_argument("image_a", type=Path)
    c.add_argument("image_b", type=Path)
    c.add_argument("--json", action="store_true", help="print score, model and verdict as JSON")
    add_connection(c)


def add_perf(sub: argparse._SubParsersAction) -> None:
    pf = sub.add_parser(
        "perf",
        help="load a target at several concurrency levels: pairs/s, latency, batching",
        description="Sweep concurrency against any target (after Triton's perf_analyzer): at "
        "each level, C streams (or C unary callers) keep sending pairs of the given images "
        "for --duration seconds. Prints pairs/s, p50/p90/p99 latency, and the server's mean "
        "batch and queue time from GetStats. Every image is really embedded (unique bytes) "
        "unless --cache-hits.",
        formatter_class=Formatter,
    )
    pf.add_argument("images", type=Path, nargs="+", help="image files or folders (recursive)")
    pf.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels to measure")
    pf.add_argument("--duration", type=float, default=10.0, metavar="SECONDS", help="per level")
    pf.add_argument("--pairs", type=int, metavar="N", help="stop a level after N pairs")
    pf.add_argument("--unary", action="store_true", help="unary Compare calls, not streams")
    pf.add_argument(
        "--inflight", type=int, default=4, help="most unanswered pairs per stream: a closed loop"
    )
    pf.add_argument("--cache-hits", action="store_true", help="send images unchanged (hits)")
    pf.add_argument("-o", "--output", type=Path, help="write the levels as JSON (or .csv)")
    add_connection(pf)


def add_models(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser(
        "models",
        help="list the server's models and whether they can load",
        formatter_class=Formatter,
    )
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection(m, model=False)


def add_stats(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser(
        "stats", help="show the server's batching and cache counters", formatter_class=Formatter
    )
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection(st, model=False)


def run_compare(args: argparse.Namespace) -> int:
    from imgsim_client.scoring import PairsFileError

    data = []
    for path in (args.image_a, args.image_b):
        try:
            data.append(path.read_bytes())
        except OSError as exc:
            raise PairsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with connect(args) as client:
        score, model, verdict = client.compare_pair(data[0], data[1], model=args.model)
    if args.json:
        import json

        print(json.dumps({"score": score, "model": model, "verdict": verdict}))
    else:
        print(f"{score:.4f} {verdict}".rstrip())
    return OK


def run_perf(args: argparse.Namespace) -> int:
    from imgsim_client import perf

    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        images = perf.load_images(args.images)
    except ValueError as exc:
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return USAGE
    with connect(args) as client:
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
    return SOME_PAIRS_FAILED if any(lv.errors for lv in result) else OK


def run_models(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.list_models()
    if args.json:
        import json

        print(json.dumps(_plain(resp), indent=2))
        return OK
    tasks = ("near-duplicate", "same object", "same category")
    print(
        f"{'name':<34}{'kind':<10}{'dim':>5}{'input':>6}  {'similarity':<10} {'weights':<8}"
        f"{'dup/object/category @1% FPR':<28}"
    )
    for m in resp.models:
        default = " (default)" if m.name == resp.default_model else ""
        weights = "n/a" if not m.weights_source else ("ok" if m.weights_available else "MISSING")
        at_1pct = {t.task: t.score for t in m.thresholds if abs(t.fpr - 0.01) < 1e-9}
        thr = "/".join(f"{at_1pct[t]:.3f}" if t in at_1pct else "-" for t in tasks)
        print(
            f"{m.name:<34}{m.kind:<10}{m.embedding_dim:>5}{m.input_size:>6}  "
            f"{m.similarity:<10} {weights:<8}{thr:<28}{default}"
        )
        if m.weights_source and not m.weights_available:
            print(f"    looked for {m.weights_source}")
    return OK


def _plain(result) -> dict:
    """A typed result as JSON-ready data, with the proto's field names."""
    import dataclasses

    return dataclasses.asdict(result)


def run_stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.stats()
    if args.json:
        import json

        print(json.dumps(_plain(resp), indent=2))
        return OK
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
    return OK
