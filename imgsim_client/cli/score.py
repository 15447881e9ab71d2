"""`imgsim-client score`: a CSV of pairs over streams, or on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgsim_client.cli._common import (
    EXIT_CODES,
    OK,
    SOME_PAIRS_FAILED,
    USAGE,
    Formatter,
    add_checkpoint,
    add_connection,
    client_config,
    connect,
)


def add_score(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "score",
        help="score a CSV of pairs over a stream (the default command)",
        description="Stream every pair of a CSV to the server and write the rows, "
        "in input order, with 'score' and 'error' columns added. A row whose "
        "image cannot be read or decoded fails alone.",
        epilog=EXIT_CODES,
        formatter_class=Formatter,
    )
    s.add_argument("pairs", type=Path, help="CSV with columns image_a,image_b[,label,pair_id]")
    s.add_argument(
        "-o",
        "--output",
        help="scored CSV (default: PAIRS.scored.csv); with --dask, a folder ending in '/' "
        "gets a Parquet dataset",
    )
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.add_argument(
        "--no-send-once",
        action="store_true",
        help="send a file's bytes with every pair instead of once per stream",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="keep the scored rows of an existing OUTPUT of the same pairs file (from an "
        "interrupted run) and score only the rest; an OUTPUT of other pairs is refused",
    )
    s.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="give up on the whole run after this long (default: no limit); the server stops "
        "working on it, and the partial result is written",
    )
    s.add_argument(
        "--streams",
        type=int,
        metavar="K",
        help="split the pairs over K concurrent streams on one channel; round robin spreads "
        "them over the target's addresses, and a stream whose backend dies is reopened on the "
        "others (default: the number of addresses --server resolves to)",
    )
    s.add_argument(
        "--dask",
        metavar="CLUSTER",
        help="score on a Dask cluster: local:N starts a LocalCluster of N worker processes, "
        "tcp://HOST:PORT joins a running scheduler. PAIRS may then be a glob of CSVs or "
        "Parquet, and OUTPUT ending in '/' is written as a Parquet dataset. Needs the [dask] "
        "extra",
    )
    s.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="with --dask: how many tasks the pairs are split into (default: 4 per worker)",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=5,
        help="reconnects, with exponential backoff from 0.5 s to 10 s, when a server that "
        "answered becomes UNAVAILABLE; answered pairs are never sent again",
    )
    add_checkpoint(s)
    add_connection(s)


def run_score(args: argparse.Namespace) -> int:
    from imgsim_client.client import ImgsimError, target_addresses
    from imgsim_client.scoring import RetryPolicy, read_pairs, score_pairs

    if args.dask:
        return _score_with_dask(args)
    out = Path(args.output) if args.output else args.pairs.with_suffix(".scored.csv")
    if not len(read_pairs(args.pairs)):  # check the CSV before connecting
        print(f"imgsim-client: {args.pairs} has no pairs; nothing to score", file=sys.stderr)
        return OK
    with connect(args) as client:
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
                streams=args.streams or target_addresses(args.server),
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
    print(
        f"scored {summary.scored}/{summary.pairs} pairs ({summary.failed} failed{extra}) in "
        f"{summary.seconds:.1f}s, {summary.pairs_per_s:.1f} pairs/s -> {out}",
        file=sys.stderr,
    )
    return SOME_PAIRS_FAILED if summary.failed else OK


def _score_with_dask(args: argparse.Namespace) -> int:

    from imgsim_client.dask_driver import score_with_dask

    if args.resume:
        print("imgsim-client: error: --resume does not apply to --dask runs", file=sys.stderr)
        return USAGE
    source = str(args.pairs)
    output = args.output or f"{Path(source).stem}.scored.csv"  # a str: may end with '/'

    conn = client_config(args)
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
    print(
        f"scored {summary.pairs - summary.failed}/{summary.pairs} pairs ({summary.failed} "
        f"failed) on {summary.workers} Dask worker(s) in {summary.partitions} partitions, "
        f"{seconds:.1f}s, {summary.pairs / seconds:.1f} pairs/s -> {summary.output}",
        file=sys.stderr,
    )
    return SOME_PAIRS_FAILED if summary.failed else OK
