"""What every command shares: the connection flags, the help formatter, exit codes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:50051"
READY_TIMEOUT = 600.0  # _channel.READY_TIMEOUT, without importing grpc for --help

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


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgsim")
    except PackageNotFoundError:
        return "unknown"


class Formatter(argparse.RawDescriptionHelpFormatter):
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


def add_connection(p: argparse.ArgumentParser, model: bool = True) -> None:
    env_server = os.environ.get("IMGSIM_SERVER")
    p.add_argument(
        "--server",
        default=env_server or None,
        metavar="TARGET",
        help="any gRPC target: HOST:PORT, ipv4:H1:P1,H2:P2 or dns:///NAME:PORT (several "
        "addresses are balanced round robin), unix:PATH (default: "
        + (
            f"$IMGSIM_SERVER = {env_server}"
            if env_server
            else f"{DEFAULT_SERVER}, or set $IMGSIM_SERVER; when neither is given and nothing "
            "answers there, a private local server is started for the command"
        )
        + ")",
    )
    p.add_argument(
        "--no-local-server",
        action="store_true",
        help="never start a private local server: with no --server and nothing at "
        f"{DEFAULT_SERVER}, fail instead",
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
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT,
        metavar="SECONDS",
        help="once connected, longest wait for the server to be ready (gRPC Health SERVING): "
        "a server on a new machine first prepares its default model (exports its graph); "
        "a status line names it meanwhile",
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


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="write the partial OUTPUT (atomically) this often, so that a killed run loses at "
        "most this much work; it is also written on Ctrl-C and on failure, for --resume",
    )


def client_config(args: argparse.Namespace):
    """How to reach the server, from the connection flags."""
    import dataclasses

    from imgsim_client.client import ClientConfig

    fields = {f.name for f in dataclasses.fields(ClientConfig)} - {"target"}
    target = args.server or DEFAULT_SERVER
    return ClientConfig(target, **{name: getattr(args, name) for name in fields})


def connect(args: argparse.Namespace, ready: bool = True):
    """A client of a ready server, with one status line on stderr per reason it waits for
    (ImgsimError when none answers in time, or it does not get ready); with `ready` False,
    of a connected one (for commands that report the server's state)."""
    import sys

    from imgsim_client import local

    config = client_config(args)

    def status(reason: str) -> None:
        print(f"waiting for the server at {config.target} to be ready: {reason}", file=sys.stderr)

    if args.server is None and not args.no_local_server and not local.answers(config.target):
        print(
            f"imgsim-client: nothing answers at {config.target}; starting a private local "
            "imgsim-server for this command (a unix socket; stopped when the command ends). "
            f"To share one between commands: imgsim-server --port {config.target.split(':')[-1]}"
            " in another terminal, or pass --server",
            file=sys.stderr,
        )

        def local_status(reason: str) -> None:
            print(f"waiting for the local server to be ready: {reason}", file=sys.stderr)

        return local.start(config, on_status=local_status)
    return config.connect(on_status=status, ready=ready)


def finish(summary: str, failed: int) -> int:
    """Print a run's summary line to stderr; the exit code says whether some items failed."""
    import sys

    print(summary, file=sys.stderr)
    return SOME_PAIRS_FAILED if failed else OK
