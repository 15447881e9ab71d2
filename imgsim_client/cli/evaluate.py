"""`imgsim-client evaluate`: metrics and an HTML report of a scored CSV (the [eval] extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgsim_client.cli._common import (
    OK,
    Formatter,
)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
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


def run_evaluate(args: argparse.Namespace) -> int:
    from imgsim_client.evaluate import evaluate_file, format_result

    result = evaluate_file(
        args.scores, args.out, args.label_column, args.group_by, args.threshold, args.images_root
    )
    print(format_result(result))
    if args.out:
        print(f"wrote {args.out}/metrics.json, roc.png, score_hist.png, report.html")
    return OK
