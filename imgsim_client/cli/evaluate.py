"""`imgsim-client evaluate`: metrics and an HTML report of a scored CSV (the [eval] extra)."""

from __future__ import annotations

import argparse

from imgsim_client.cli import _common as common


def run_evaluate(args: argparse.Namespace) -> int:
    from imgsim_client.evaluate import evaluate_file, format_result

    result = evaluate_file(
        args.scores, args.out, args.label_column, args.group_by, args.threshold, args.images_root
    )
    print(format_result(result))
    if args.out:
        print(f"wrote {args.out}/metrics.json, roc.png, score_hist.png, report.html")
    return common.OK
