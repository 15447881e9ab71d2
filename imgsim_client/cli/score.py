"""`imgsim-client score`: a CSV of pairs over streams, or on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsim_client.cli import _common as common


def run_score(args: argparse.Namespace) -> int:
    from imgsim_client.client import ImgsimError, target_addresses
    from imgsim_client.scoring import RetryPolicy, read_pairs, score_pairs

    if args.dask:
        return _score_with_dask(args)
    out = Path(args.output) if args.output else args.pairs.with_suffix(".scored.csv")
    if not len(read_pairs(args.pairs)):  # check the CSV before connecting
        print(f"imgsim-client: {args.pairs} has no pairs; nothing to score", file=sys.stderr)
        return common.OK
    with common.connect(args) as client:
        try:
            summary = score_pairs(
                client,
                args.pairs,
                out,
                model=args.model,
                progress=not args.no_progress,
                send_once=not args.no_send_once,
                deadline_s=args.deadline,
                idle_timeout_s=args.timeout,
                retry=RetryPolicy(retries=args.retries),
                resume=args.resume,
                checkpoint_s=args.checkpoint_every,
                streams=args.streams or target_addresses(client.target),
            )
        except (ImgsimError, KeyboardInterrupt):
            if out.exists():
                print(
                    f"imgsim-client: partial results written to {out}; "
                    "rerun with --resume to finish",
                    file=sys.stderr,
                )
            raise
    extra = "".join(
        [
            f", {summary.resumed} kept from {out}" if summary.resumed else "",
            f", {summary.reconnects} reconnect(s)" if summary.reconnects else "",
        ]
    )
    return common.finish(
        f"scored {summary.scored}/{summary.pairs} pairs ({summary.failed} failed{extra}) in "
        f"{summary.seconds:.1f}s, {summary.pairs_per_s:.1f} pairs/s -> {out}",
        summary.failed,
    )


def _score_with_dask(args: argparse.Namespace) -> int:

    from imgsim_client.dask_driver import score_with_dask

    if args.resume:
        print("imgsim-client: error: --resume does not apply to --dask runs", file=sys.stderr)
        return common.USAGE
    source = str(args.pairs)
    output = args.output or f"{Path(source).stem}.scored.csv"  # a str: may end with '/'

    conn = common.client_config(args)
    started = time.perf_counter()
    summary = score_with_dask(
        source,
        output,
        conn,
        args.dask,
        model=args.model,
        partitions=args.partitions,
        streams=args.streams or 1,
        send_once=not args.no_send_once,
        retries=args.retries,
    )
    seconds = time.perf_counter() - started
    return common.finish(
        f"scored {summary.pairs - summary.failed}/{summary.pairs} pairs ({summary.failed} "
        f"failed) on {summary.workers} Dask worker(s) in {summary.partitions} partitions, "
        f"{seconds:.1f}s, {summary.pairs / seconds:.1f} pairs/s -> {summary.output}",
        summary.failed,
    )
