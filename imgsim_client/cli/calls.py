"""`compare`, `models`, `stats` and `perf`: one call or a load sweep against a server."""

from __future__ import annotations

import argparse
import sys

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
        print(f"{result.score:.4f} {result.verdict} {result.inliers} inliers: {seen}".strip())
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
    resp = _fetch(args, "list_models")
    if args.json:
        return _print_json(resp)
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
    return common.OK


def _fetch(args: argparse.Namespace, call: str):
    """One unary call's typed result (`list_models` or `stats`)."""
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
