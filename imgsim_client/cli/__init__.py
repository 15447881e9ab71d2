"""`imgsim-client`: score a CSV of pairs, compare two images, evaluate scores, list models,
embed, index, search and deduplicate collections.

A package of thin commands that parse and print (`score`, `calls`, `evaluate`,
`vectors`); the work is in the library (`scoring`, `collection`, `evaluate`, `index`).
Only argparse is imported up front, so `--help` is quick; each command imports what it needs
(grpc for the calls, scikit-learn and matplotlib for `evaluate`).
"""

from __future__ import annotations

import argparse
import os
import sys

from imgsim_client.cli import calls, evaluate, score, vectors
from imgsim_client.cli._common import (
    DEFAULT_SERVER,
    EXIT_CODES,
    FAILED,
    INTERRUPTED,
    OK,
    USAGE,
)

# What runs each command (their parsers: `_parser.py`).
COMMANDS = {
    "score": score.run_score,
    "compare": calls.run_compare,
    "evaluate": evaluate.run_evaluate,
    "perf": calls.run_perf,
    "embed": vectors.run_embed,
    "index": vectors.run_index,
    "index-add": vectors.run_index_add,
    "index-info": vectors.run_index_info,
    "undo-move": vectors.run_undo_move,
    "search": vectors.run_search,
    "dedup": vectors.run_dedup,
    "models": calls.run_models,
    "stats": calls.run_stats,
}

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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (imports nothing beyond argparse)."""
    from imgsim_client.cli._parser import build_parser as build

    return build(EPILOG)


def _normalise_argv(argv: list[str]) -> list[str]:
    """`imgsim-client pairs.csv ...` means `imgsim-client score pairs.csv ...`; `index add`
    and `index info` are the commands `index-add` and `index-info`."""
    if len(argv) >= 2 and argv[0] == "index" and argv[1] in ("add", "info"):
        return [f"index-{argv[1]}", *argv[2:]]
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in COMMANDS and not {"-h", "--help"} & set(argv[:1]):
        return ["score", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see EXIT_CODES)."""
    parser = build_parser()
    args = parser.parse_args(_normalise_argv(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return USAGE
    try:
        return COMMANDS[args.command](args)
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
        from imgsim_client._channel import ImgsimError
        from imgsim_client._csv import PairsFileError

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
