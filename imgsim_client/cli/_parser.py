"""The parser of every command, in one place (the commands' modules only run them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgsim_client.cli._common import (
    EXIT_CODES,
    Formatter,
    add_checkpoint,
    add_connection,
    version,
)
from imgsim_client.photos import defaults


def build_parser(epilog: str) -> argparse.ArgumentParser:
    """Every command's parser (argparse only: --help imports nothing else)."""
    p = argparse.ArgumentParser(
        prog="imgsim-client",
        description="Client for the imgsim image-similarity server.",
        epilog=epilog,
        formatter_class=Formatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
        help="reconnects in a row, with exponential backoff from 0.5 s to 10 s, when a server "
        "that answered becomes UNAVAILABLE (a stream that answered anything starts the count "
        "again); answered pairs are never sent again",
    )
    add_checkpoint(s)
    add_connection(s)

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
    c.add_argument(
        "--verify",
        action="store_true",
        help="also verify the pair geometrically on the server (local features + RANSAC; the "
        "server's [verify] extra) and print the inliers and whether they make it a copy",
    )
    add_connection(c)

    e = sub.add_parser(
        "evaluate",
        help="ROC AUC, EER, TPR at low FPR and best-F1 threshold of a scored CSV",
        description="Metrics of a scored CSV with a label column (1 same, 0 different). Rows "
        "without a score (errors) are left out and counted. With --out, writes metrics.json, "
        "roc.png, score_hist.png and report.html (plots, metrics, and the 24 hardest "
        "negatives and positives as thumbnails, errors marked). Needs the [eval] extra: "
        'pip install "imgsim[eval]".',
        formatter_class=Formatter,
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

    em = sub.add_parser(
        "embed",
        help="embed images (files, folders, lists) into a vectors Parquet file",
        description="Embed every image once through the server's Embed stream and write "
        "path, model, vector (float32, L2-normalised for cosine models) and error columns. "
        "Without --model, the server's collection descriptor (ListModels.collection_model, a "
        "retrieval descriptor chosen by make bench-quality) rather than its pair model. "
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
    add_retrieval(ix)

    ia = sub.add_parser(
        "index-add",
        help="(index add) embed the images not in an index yet and add them",
        description="imgsim-client index add INDEX PATH...: embeds only the images that are "
        "not in the index (by path) or whose file changed (by sha256), with the index's "
        "model, then rebuilds the index from its stored vectors with the parameters it "
        "recorded (exact or approximate by size, DBA, QE). The new vectors are checkpointed "
        "into INDEX/vectors.parquet, so an interrupted add loses nothing: run it again.",
        formatter_class=Formatter,
    )
    ia.add_argument("index", type=Path, help="an index folder written by 'imgsim-client index'")
    ia.add_argument("paths", type=Path, nargs="+", help="image files, folders, .csv or .txt lists")
    ia.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="write the vectors embedded so far into INDEX/vectors.parquet (atomically) this "
        "often, and on Ctrl-C or failure; running the same add again embeds only the rest",
    )
    ia.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_connection(ia)

    ii = sub.add_parser(
        "index-info",
        help="(index info) an index's model, size, kind and parameters",
        description="imgsim-client index info INDEX: prints index.json and the stored count.",
        formatter_class=Formatter,
    )
    ii.add_argument("index", type=Path, help="an index folder")
    ii.add_argument("--json", action="store_true", help="print JSON instead of lines")

    um = sub.add_parser(
        "undo-move",
        help="put back the files 'dedup --move-to DIR' moved",
        description="Reads DIR/imgsim-moved.json and moves each file back where it was, "
        "never overwriting; what cannot go back stays in the manifest.",
        formatter_class=Formatter,
    )
    um.add_argument("folder", type=Path, help="the --move-to folder")

    se = sub.add_parser(
        "search",
        help="the k nearest indexed images of each query image",
        description="Queries are embedded through the server with the index's model, in "
        "--rotations rotations (an indexed image scores its best one), then expanded as the "
        "index records (query expansion). Writes query,rank,path,score.",
        formatter_class=Formatter,
    )
    se.add_argument("index", type=Path, help="a saved index folder or a vectors .parquet file")
    se.add_argument("queries", type=Path, nargs="+", help="query images (files or folders)")
    se.add_argument("-k", "--k", type=int, default=10, help="neighbours per query")
    se.add_argument(
        "--rotations",
        type=int,
        choices=(1, 4, 8),
        default=defaults.SEARCH_ROTATIONS,
        help="embed each query upright only (1), in its 4 rotations (4: a photo stored turned "
        "by 90 degrees still matches), or also mirrored (8); one embedding per version",
    )
    se.add_argument(
        "--qe-k", type=int, help="query expansion neighbours (default: what the index records)"
    )
    se.add_argument("-o", "--output", type=Path, help="hits CSV (default: standard output)")
    se.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_connection(se)

    de = sub.add_parser(
        "dedup",
        help="every pair of near-duplicate images in a collection, with groups",
        description="Embeds the images (with the server's collection descriptor unless --model "
        "says otherwise), finds every pair scoring at or above the candidate threshold with "
        "the index's range search (exact index) or k-NN (approximate index, -k neighbours "
        "each: it says how many images reached k, whose groups may be larger), then verifies "
        "the candidates geometrically on this machine (SIFT + RANSAC on the files, the "
        "[verify] extra): a candidate scoring below the model's sure score is kept only with "
        "enough inliers. The rule of each model is measured by make bench-quality on the "
        "strong near-duplicate set. Writes image_a,image_b,score,inliers,group; group is the "
        "connected component of the pairs kept.",
        formatter_class=Formatter,
    )
    de.add_argument("paths", type=Path, nargs="+", help="image files, folders, .csv or .txt lists")
    de.add_argument("-o", "--output", type=Path, required=True, help="duplicates CSV")
    de.add_argument(
        "--threshold",
        type=float,
        help="lowest score of a candidate (default: the model's measured candidate floor when "
        "verifying, else its F1-best threshold alone; else the server's calibrated "
        "near-duplicate threshold at 0.1%% FPR from ListModels)",
    )
    de.add_argument(
        "--no-verify",
        action="store_true",
        help="keep every pair at or above the threshold, without geometric verification",
    )
    de.add_argument(
        "--rotations",
        type=int,
        choices=(1, 4, 8),
        default=defaults.DEDUP_ROTATIONS,
        help="versions of each image embedded: upright only (1), its 4 turns (4), and their "
        "mirrors (8); a pair scores its best, so that a turned copy is found as upright; "
        "each version costs one more embedding",
    )
    de.add_argument(
        "--min-inliers",
        type=int,
        help="inliers that verify a candidate (default: the model's measured rule)",
    )
    de.add_argument("--workers", type=int, help="threads for verification (default: one per core)")
    de.add_argument(
        "--against",
        type=Path,
        help="a reference: an index folder, a vectors .parquet, or images (a folder, a list); "
        "then each new image's matches in it are written (image,match,score,inliers), and "
        "the reference is never compared with itself",
    )
    de.add_argument(
        "--html", type=Path, help="also write a gallery of the groups for review: DIR/index.html"
    )
    de.add_argument(
        "--keep",
        choices=defaults.KEEP_POLICIES,
        default="largest",
        help="which image of a group is kept (largest: most pixels, then bytes; oldest: file "
        "time; first: sorted path); against a reference, the reference image",
    )
    de.add_argument(
        "--to-remove", type=Path, help="write the paths of every image not kept, one per line"
    )
    de.add_argument(
        "--move-to",
        type=Path,
        help="move every image not kept under this folder (relative paths kept, nothing "
        "overwritten; DIR/imgsim-moved.json undoes it: imgsim-client undo-move DIR). "
        "Nothing is ever deleted",
    )
    de.add_argument(
        "-k", "--k", type=int, default=50, help="neighbours per image, with an approximate index"
    )
    de.add_argument("--exact-below", type=int, default=50_000, help="vectors for an exact index")
    de.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_connection(de)

    m = sub.add_parser(
        "models",
        help="list the server's models and whether they can load",
        formatter_class=Formatter,
    )
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection(m, model=False)
    st = sub.add_parser(
        "stats", help="show the server's batching and cache counters", formatter_class=Formatter
    )
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_connection(st, model=False)
    return p


def add_retrieval(p: argparse.ArgumentParser) -> None:
    """The index's augmentation options (recorded in index.json)."""
    p.add_argument(
        "--dba-k",
        type=int,
        default=defaults.DBA_K,
        help="database-side augmentation: each vector becomes the weighted sum of itself and "
        "its K nearest neighbours; 0 turns it off",
    )
    p.add_argument(
        "--dba-alpha", type=float, default=defaults.DBA_ALPHA, help="weight = similarity**ALPHA"
    )
    p.add_argument(
        "--qe-k",
        type=int,
        default=defaults.QE_K,
        help="query expansion that 'search' applies: the query plus its K first hits, "
        "searched again; 0 turns it off",
    )
    p.add_argument(
        "--qe-alpha", type=float, default=defaults.QE_ALPHA, help="weight = similarity**ALPHA"
    )
