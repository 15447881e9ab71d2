"""`imgsim-client`: score a CSV of pairs, compare two images, evaluate scores, list models.

Only argparse is imported up front, so `--help` is quick; each subcommand imports what it needs
(grpc for the calls, scikit-learn and matplotlib for `evaluate`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

COMMANDS = (
    "score",
    "compare",
    "evaluate",
    "models",
    "stats",
    "perf",
    "embed",
    "index",
    "search",
    "dedup",
)
DEFAULT_SERVER = "127.0.0.1:50051"

# Exit codes, documented in --help and the README.
OK, FAILED, USAGE, SOME_PAIRS_FAILED, INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """\
exit codes:
  0    done: every pair scored (also for a CSV with no rows)
  1    error: nothing (more) could be done, e.g. no server at --server, a bad CSV, a
       deadline passed, retries used up; a partial output is kept for --resume
  2    usage error (bad flags)
  3    finished, but some pairs failed: their rows have an 'error' column
  130  interrupted (Ctrl-C); a partial output is kept for --resume
"""

EPILOG = f"""\
examples:
  imgsim-client pairs.csv -o scores.csv          score a CSV (shorthand for 'score')
  imgsim-client compare cat.jpg cat_small.jpg    print the score of one pair
  imgsim-client evaluate scores.csv --out m/     AUC, EER, TPR@FPR, best-F1 threshold, plots
  imgsim-client models                           the server's models
  imgsim-client stats --json                     the server's batching and cache counters
  imgsim-client perf photos/ --concurrency 1,4,16   load sweep: pairs/s, latency, batching

The pairs CSV has columns image_a,image_b and optionally pair_id and label; other columns are
kept. Paths are absolute or relative to the CSV's folder. The server address comes from
--server or $IMGSIM_SERVER (default {DEFAULT_SERVER}). 'evaluate' needs the [eval] extra
(python -m pip install "imgsim[eval]").

{EXIT_CODES}"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgsim")
    except PackageNotFoundError:
        return "unknown"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps laid-out text (the epilogs) as written and wraps plain paragraphs; appends real
    defaults: none for empty or unset values, none where the help text states its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, "", False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _add_connection(p: argparse.ArgumentParser, model: bool = True) -> None:
    env_server = os.environ.get("IMGSIM_SERVER")
    p.add_argument(
        "--server",
        default=env_server or DEFAULT_SERVER,
        metavar="TARGET",
        help="any gRPC target: HOST:PORT, ipv4:H1:P1,H2:P2 or dns:///NAME:PORT (several "
        "addresses are balanced round robin), unix:PATH (default: "
        + (f"$IMGSIM_SERVER = {env_server}" if env_server else f"{DEFAULT_SERVER}; or set ")
        + ("" if env_server else "$IMGSIM_SERVER")
        + ")",
    )
    if model:
        p.add_argument(
            "--model", default="", help="registry model name (default: the server's default model)"
        )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait for the first connection; a server that never answers is an "
        "error after this long",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for each unary call and, in streams, for each next result",
    )
    p.add_argument(
        "--auth-token",
        default=os.environ.get("IMGSIM_AUTH_TOKEN", ""),
        help="bearer token for a server started with --auth-token (default: $IMGSIM_AUTH_TOKEN)",
    )
    p.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server cert (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgsim-client",
        description="Client for the imgsim image-similarity server.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "score",
        help="score a CSV of pairs over a stream (the default command)",
        description="Stream every pair of a CSV to the server and write the rows, "
        "in input order, with 'score' and 'error' columns added. A row whose "
        "image cannot be read or decoded fails alone.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
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
    _add_checkpoint(s)
    _add_connection(s)

    c = sub.add_parser(
        "compare",
        help="print the similarity of two image files",
        description="Score one pair with the unary Compare call and print the score, then, "
        "for a model with calibrated thresholds, the verdict on the same line "
        "(`0.9412 near-duplicate`; also `same object`, `same category`, `different`: the "
        "most specific task whose 1%-false-positive threshold the score reaches, see "
        "`imgsim-client models`).",
        formatter_class=_Formatter,
    )
    c.add_argument("image_a", type=Path)
    c.add_argument("image_b", type=Path)
    c.add_argument("--json", action="store_true", help="print score, model and verdict as JSON")
    _add_connection(c)

    e = sub.add_parser(
        "evaluate",
        help="ROC AUC, EER, TPR at low FPR and best-F1 threshold of a scored CSV",
        description="Metrics of a scored CSV with a label column (1 same, 0 different). Rows "
        "without a score (errors) are left out and counted. With --out, writes metrics.json, "
        "roc.png, score_hist.png and report.html (plots, metrics, and the 24 hardest "
        "negatives and positives as thumbnails, errors marked). Needs the [eval] extra: "
        'pip install "imgsim[eval]".',
        formatter_class=_Formatter,
    )
    e.add_argument("scores", type=Path, help="CSV with 'score' and 'label' columns")
    e.add_argument("--out", type=Path, help="folder for metrics.json, the plots and report.html")
    e.add_argument(
        "--threshold",
        type=float,
        help="score at or above which a pair counts as the same, for the report's errors "
        "(default: the best-F1 threshold)",
    )
    e.add_argument(
        "--images-root",
        type=Path,
        metavar="DIR",
        help="folder that relative image paths in the CSV are relative to, for the report's "
        "thumbnails (default: the scored CSV's folder; use the pairs CSV's folder when "
        "the scores were written elsewhere)",
    )
    e.add_argument("--group-by", metavar="COLUMN", help="also report metrics per value of COLUMN")
    e.add_argument("--label-column", default="label", help="column of 1/0 labels")

    pf = sub.add_parser(
        "perf",
        help="load a target at several concurrency levels: pairs/s, latency, batching",
        description="Sweep concurrency against any target (after Triton's perf_analyzer): at "
        "each level, C streams (or C unary callers) keep sending pairs of the given images "
        "for --duration seconds. Prints pairs/s, p50/p90/p99 latency, and the server's mean "
        "batch and queue time from GetStats. Every image is really embedded (unique bytes) "
        "unless --cache-hits.",
        formatter_class=_Formatter,
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
    _add_connection(pf)

    em = sub.add_parser(
        "embed",
        help="embed images (files, folders, lists) into a vectors Parquet file",
        description="Embed every image once through the server's Embed stream and write "
        "path, model, vector (float32, L2-normalised for cosine models) and error columns. "
        'Needs the [index] extra: pip install "imgsim[index]".',
        formatter_class=_Formatter,
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
    _add_checkpoint(em)
    _add_connection(em)

    ix = sub.add_parser(
        "index",
        help="build and save a vector index from a vectors Parquet file",
        description="Exact (flat inner product) below --exact-below vectors, approximate "
        "(PCA + IVF, with exact re-ranking) above; the parameters are saved in index.json.",
        formatter_class=_Formatter,
    )
    ix.add_argument("vectors", type=Path, help="Parquet written by 'imgsim-client embed'")
    ix.add_argument("-o", "--output", type=Path, required=True, help="folder for the index")
    ix.add_argument("--exact-below", type=int, default=50_000, help="vectors for an exact index")

    se = sub.add_parser(
        "search",
        help="the k nearest indexed images of each query image",
        description="Queries are embedded through the server with the index's model. Writes "
        "query,rank,path,score.",
        formatter_class=_Formatter,
    )
    se.add_argument("index", type=Path, help="a saved index folder or a vectors .parquet file")
    se.add_argument("queries", type=Path, nargs="+", help="query images (files or folders)")
    se.add_argument("-k", "--k", type=int, default=10, help="neighbours per query")
    se.add_argument("-o", "--output", type=Path, help="hits CSV (default: standard output)")
    se.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_connection(se)

    de = sub.add_parser(
        "dedup",
        help="every pair of near-duplicate images in a collection, with groups",
        description="Embeds the images, then finds every pair scoring at or above the "
        "threshold with the index's range search (exact index) or k-NN (approximate index, "
        "-k neighbours each: it says how many images reached k, whose groups may be larger). "
        "Writes image_a,image_b,score,group; group is the connected component.",
        formatter_class=_Formatter,
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
    _add_connection(de)

    m = sub.add_parser(
        "models",
        help="list the server's models and whether they can load",
        formatter_class=_Formatter,
    )
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_connection(m, model=False)
    st = sub.add_parser(
        "stats", help="show the server's batching and cache counters", formatter_class=_Formatter
    )
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_connection(st, model=False)
    return p


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="write the partial OUTPUT (atomically) this often, so that a killed run loses at "
        "most this much work; it is also written on Ctrl-C and on failure, for --resume",
    )


def _normalise_argv(argv: list[str]) -> list[str]:
    """`imgsim-client pairs.csv ...` means `imgsim-client score pairs.csv ...`."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and not {"-h", "--help"} & set(argv[:1]):
        return ["score", *argv]
    return argv


def _client_config(args: argparse.Namespace):
    from imgsim_client.client import ClientConfig

    return ClientConfig(
        args.server,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        auth_token=args.auth_token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _connect(args: argparse.Namespace):
    return _client_config(args).connect()


def _cmd_score(args: argparse.Namespace) -> int:
    from imgsim_client.client import ImgsimError, target_addresses
    from imgsim_client.scoring import RetryPolicy, read_pairs, score_pairs

    if args.dask:
        return _score_with_dask(args)
    out = Path(args.output) if args.output else args.pairs.with_suffix(".scored.csv")
    if not len(read_pairs(args.pairs)):  # check the CSV before connecting
        print(f"imgsim-client: {args.pairs} has no pairs; nothing to score", file=sys.stderr)
        return OK
    with _connect(args) as client:
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
    import time

    from imgsim_client.dask_driver import score_with_dask

    if args.resume:
        print("imgsim-client: error: --resume does not apply to --dask runs", file=sys.stderr)
        return USAGE
    source = str(args.pairs)
    output = args.output or f"{Path(source).stem}.scored.csv"  # a str: may end with '/'

    conn = _client_config(args)
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from imgsim_client.scoring import PairsFileError

    data = []
    for path in (args.image_a, args.image_b):
        try:
            data.append(path.read_bytes())
        except OSError as exc:
            raise PairsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with _connect(args) as client:
        score, model, verdict = client.compare_pair(data[0], data[1], model=args.model)
    if args.json:
        import json

        print(json.dumps({"score": score, "model": model, "verdict": verdict}))
    else:
        print(f"{score:.4f} {verdict}".rstrip())
    return OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgsim_client.evaluate import evaluate_file, format_result

    result = evaluate_file(
        args.scores, args.out, args.label_column, args.group_by, args.threshold, args.images_root
    )
    print(format_result(result))
    if args.out:
        print(f"wrote {args.out}/metrics.json, roc.png, score_hist.png, report.html")
    return OK


def _cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as client:
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


def _plain(msg) -> dict:
    """A message as a dict with the proto's field names and numbers as numbers (protobuf's
    JSON mapping writes 64-bit integers as strings)."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.message_type is not None:
            value = [_plain(v) for v in value] if f.is_repeated else _plain(value)
        elif f.is_repeated:
            value = list(value)
        out[f.name] = value
    return out


def _cmd_stats(args: argparse.Namespace) -> int:
    with _connect(args) as client:
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


def _cmd_perf(args: argparse.Namespace) -> int:
    from imgsim_client import perf

    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        images = perf.load_images(args.images)
    except ValueError as exc:
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return USAGE
    with _connect(args) as client:
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


def _cmd_embed(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import refuse_other_model
    from imgsim_client.client import ImgsimError
    from imgsim_client.index import read_parquet, write_parquet

    paths = collection.list_images(args.paths)
    with _connect(args) as client:
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


def _cmd_index(args: argparse.Namespace) -> int:
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


def _cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic

    index = _load_index(args.index)
    queries = collection.list_images(args.queries)
    with _connect(args) as client:
        results = collection.embed_paths(
            client, queries, args.model or index.params.model, not args.no_progress
        )
    ok = [q for q in queries if results[q].ok]
    rows = []
    if ok:
        sims, ids = index.search(np.array([results[q].vector for q in ok], np.float32), args.k)
        for q, srow, irow in zip(ok, sims, ids, strict=True):
            rank = 0
            for s, i in zip(srow, irow, strict=True):
                if i >= 0:
                    rank += 1
                    rows.append(
                        {"query": q, "rank": rank, "path": index.keys[i], "score": f"{s:.6f}"}
                    )
    columns = ["query", "rank", "path", "score"]
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


def _cmd_dedup(args: argparse.Namespace) -> int:
    from imgsim_client import collection
    from imgsim_client._csv import write_csv_atomic
    from imgsim_client.index import VectorIndex, groups

    paths = collection.list_images(args.paths)
    started = time.perf_counter()
    with _connect(args) as client:
        results = collection.embed_paths(client, paths, args.model, not args.no_progress)
        vectors = collection.to_vectors(results, paths)
        threshold = args.threshold
        if threshold is None:
            threshold = collection.DEDUP_THRESHOLDS.get(vectors.model)
        if threshold is None:  # the server's calibration: 0.1% of unrelated pairs reach it
            threshold = collection.calibrated_threshold(
                client.list_models(), vectors.model, "near-duplicate", 0.001
            )
        if threshold is None:
            print(
                f"imgsim-client: error: no default threshold for {vectors.model}; give --threshold",
                file=sys.stderr,
            )
            return USAGE
    index = VectorIndex.build(vectors, exact_below=args.exact_below)
    exact = index.params.kind == "exact"
    pairs, capped = index.self_pairs(vectors.matrix, threshold, None if exact else args.k)
    label = groups(len(vectors.keys), pairs)
    rows = [
        {"image_a": vectors.keys[a], "image_b": vectors.keys[b], "score": f"{s:.6f}",
         "group": label[a]}
        for a, b, s in pairs
    ]  # fmt: skip
    write_csv_atomic(["image_a", "image_b", "score", "group"], rows, args.output)
    n_groups = len({label[a] for a, _, _ in pairs})
    how = "exact range search: every pair" if exact else (
        f"approximate k-NN, k={args.k}: {capped} image(s) reached k, so pairs in groups "
        "larger than k can be missed; raise -k"
    )  # fmt: skip
    print(
        f"{len(pairs)} duplicate pairs in {n_groups} groups among {len(vectors.keys)} images "
        f"(threshold {threshold:g}, {vectors.model}; {how}; {len(vectors.errors)} failed) in "
        f"{time.perf_counter() - started:.1f}s -> {args.output}",
        file=sys.stderr,
    )
    for path, error in vectors.errors.items():
        print(f"imgsim-client: {path}: {error}", file=sys.stderr)
    return SOME_PAIRS_FAILED if vectors.errors else OK


HANDLERS = {
    "score": _cmd_score,
    "compare": _cmd_compare,
    "evaluate": _cmd_evaluate,
    "models": _cmd_models,
    "stats": _cmd_stats,
    "perf": _cmd_perf,
    "embed": _cmd_embed,
    "index": _cmd_index,
    "search": _cmd_search,
    "dedup": _cmd_dedup,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see EXIT_CODES)."""
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return USAGE
    try:
        return HANDLERS[args.command](args)
    except BrokenPipeError:  # `imgsim-client stats | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except KeyboardInterrupt:
        print("imgsim-client: interrupted", file=sys.stderr)
        return INTERRUPTED
    except ModuleNotFoundError as exc:
        if "imgsim[" not in str(exc):  # not a missing extra: a real bug
            raise
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return FAILED
    except Exception as exc:
        from imgsim_client._csv import PairsFileError
        from imgsim_client.client import ImgsimError

        known = (ImgsimError, PairsFileError)
        if args.command == "evaluate":
            from imgsim_client.evaluate import EvaluationError

            known += (EvaluationError,)
        if not isinstance(exc, known):
            raise
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
