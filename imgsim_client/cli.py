"""`imgsim-client`: score a CSV of pairs, compare two images, evaluate scores, list models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imgsim_client.client import ImgsimClient, ImgsimError
from imgsim_client.evaluate import EvaluationError
from imgsim_client.scoring import PairsFileError

COMMANDS = ("score", "compare", "evaluate", "models", "stats")

EPILOG = """\
examples:
  imgsim-client pairs.csv -o scores.csv          score a CSV (shorthand for 'score')
  imgsim-client compare cat.jpg cat_small.jpg    print the score of one pair
  imgsim-client evaluate scores.csv --out m/     AUC, EER, TPR@FPR, best-F1 threshold, plots
  imgsim-client models                           the server's models

The pairs CSV has columns image_a,image_b and optionally pair_id and label; other columns are
kept. Paths are absolute or relative to the CSV's folder. The server address comes from
--server or $IMGSIM_SERVER (default 127.0.0.1:50051).
"""


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("IMGSIM_SERVER", "127.0.0.1:50051"),
        help="server address HOST:PORT",
    )
    p.add_argument("--model", default="", help="registry model name (default: the server's)")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds allowed for connecting, for each unary call, and (streams) for the "
        "wait for each next result",
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "score",
        help="score a CSV of pairs over a stream (the default command)",
        description="Stream every pair of a CSV to the server and write the rows, "
        "in input order, with 'score' and 'error' columns added. A row whose "
        "image cannot be read or decoded fails alone.",
    )
    s.add_argument("pairs", type=Path, help="CSV with columns image_a,image_b[,label,pair_id]")
    s.add_argument("-o", "--output", type=Path, help="scored CSV (default: PAIRS.scored.csv)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.add_argument(
        "--no-send-once",
        action="store_true",
        help="send a file's bytes with every pair instead of once per stream",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="keep the scored rows of an existing OUTPUT (from an interrupted run) and score "
        "only the rest",
    )
    s.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="give up on the whole run after this long (default: no limit); the server stops "
        "working on it, and the partial result is written",
    )
    s.add_argument(
        "--retries",
        type=int,
        default=5,
        help="reconnects (with exponential backoff from 0.5 s to 10 s) when the server is "
        "UNAVAILABLE; answered pairs are never sent again",
    )
    _add_connection(s)

    c = sub.add_parser(
        "compare",
        help="print the similarity of two image files",
        description="Score one pair with the unary Compare call.",
    )
    c.add_argument("image_a", type=Path)
    c.add_argument("image_b", type=Path)
    _add_connection(c)

    e = sub.add_parser(
        "evaluate",
        help="ROC AUC, EER, TPR at low FPR and best-F1 threshold of a scored CSV",
        description="Metrics of a scored CSV with a label column (1 same, 0 different). Rows "
        "without a score (errors) are left out and counted. With --out, writes metrics.json, "
        "roc.png and score_hist.png.",
    )
    e.add_argument("scores", type=Path, help="CSV with 'score' and 'label' columns")
    e.add_argument("--out", type=Path, help="folder for metrics.json and the plots")
    e.add_argument("--group-by", metavar="COLUMN", help="also report metrics per value of COLUMN")
    e.add_argument("--label-column", default="label")

    m = sub.add_parser("models", help="list the server's models and whether they can load")
    _add_connection(m)
    st = sub.add_parser("stats", help="show the server's batching and cache counters")
    _add_connection(st)
    return p


def _normalise_argv(argv: list[str]) -> list[str]:
    """`imgsim-client pairs.csv ...` means `imgsim-client score pairs.csv ...`."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and not {"-h", "--help"} & set(argv[:1]):
        return ["score", *argv]
    return argv


def _connect(args: argparse.Namespace) -> ImgsimClient:
    client = ImgsimClient(
        args.server,
        timeout=args.timeout,
        auth_token=args.auth_token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    client.wait_ready()
    return client


def _cmd_score(args: argparse.Namespace) -> int:
    from imgsim_client.scoring import RetryPolicy, score_pairs

    out = args.output or args.pairs.with_suffix(".scored.csv")
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
    return 0 if summary.scored else 1


def _cmd_compare(args: argparse.Namespace) -> int:
    data = []
    for path in (args.image_a, args.image_b):
        try:
            data.append(path.read_bytes())
        except OSError as exc:
            raise PairsFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with _connect(args) as client:
        print(f"{client.compare(data[0], data[1], model=args.model):.4f}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from imgsim_client.evaluate import evaluate_file, format_result

    result = evaluate_file(args.scores, args.out, args.label_column, args.group_by)
    print(format_result(result))
    if args.out:
        print(f"wrote {args.out}/metrics.json, roc.png, score_hist.png")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        resp = client.list_models()
    print(f"{'name':<24}{'kind':<11}{'dim':>6}{'input':>7}  {'similarity':<10} {'weights':<10}")
    for m in resp.models:
        default = " (default)" if m.name == resp.default_model else ""
        weights = "n/a" if not m.weights_source else ("ok" if m.weights_available else "MISSING")
        print(
            f"{m.name:<24}{m.kind:<11}{m.embedding_dim:>6}{m.input_size:>7}  "
            f"{m.similarity:<10} {weights:<10}{default}"
        )
        if m.weights_source and not m.weights_available:
            print(f"    looked for {m.weights_source}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with _connect(args) as client:
        print(client.stats())
    return 0


HANDLERS = {
    "score": _cmd_score,
    "compare": _cmd_compare,
    "evaluate": _cmd_evaluate,
    "models": _cmd_models,
    "stats": _cmd_stats,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return HANDLERS[args.command](args)
    except (ImgsimError, PairsFileError, EvaluationError) as exc:
        print(f"imgsim-client: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("imgsim-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
