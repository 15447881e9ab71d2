"""`imgsim-server` / `python -m imgsim_server`; `imgsim-server export ...` writes ONNX graphs.

The one serving module that imports `imgsim_server.export`: it hands the dataplane a preparer
that exports a served model's missing graph where torch is installed (the default's before the
server is ready, the others' in the background or on first use), so that no user has to.
"""

from __future__ import annotations

import logging
import sys
import threading

from imgsim_server.config import CoreConfig

log = logging.getLogger("imgsim_server")


def graph_preparer(cfg: CoreConfig):
    """The server's preparer (see core.engines.Preparer): exports a served model's missing
    graph where torch is installed, one at a time, in a child process (`imgsim-server export`):
    torch in the serving process would keep about 1 GB of RSS for good. Elsewhere loading the
    model says what to export."""
    from imgsim_server.core.engines import embedder_options
    from imgsim_server.embedders import get_cfg
    from imgsim_server.export import export_in_child, missing_graph

    one_at_a_time = threading.Lock()

    def prepare(name: str, note) -> None:
        mcfg, opts = get_cfg(name), embedder_options(cfg, name)
        if not missing_graph(mcfg, opts):
            return
        with one_at_a_time:
            why = missing_graph(mcfg, opts)  # another preparation may have made it meanwhile
            if why:
                note("exporting its ONNX graph")
                log.info("exporting %s (%s): %s", name, opts.precision, why)
                export_in_child(mcfg, opts)

    return prepare


def main(argv: list[str] | None = None) -> int:
    """Serve (the default), or run `export` (needs the [torch] extra)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        from imgsim_server.export import main as export_main

        return export_main(argv[1:])

    from imgsim_server.config import build_parser, config_from_args

    parser = build_parser()
    parser.epilog = (
        "subcommand: 'imgsim-server export --help' writes ONNX graphs for a server without torch"
    )
    args = parser.parse_args(argv)
    if args.precision == "int8" and args.backend == "torch":
        parser.error("--precision int8 needs --backend onnx (int8 is an ONNX Runtime graph)")
    if args.preferred_batch_size and args.preferred_batch_size > args.max_batch_size:
        parser.error(
            f"--preferred-batch-size {args.preferred_batch_size} exceeds --max-batch-size "
            f"{args.max_batch_size}; a batch closes at the preferred size and never exceeds "
            "the max"
        )
    if args.http_port is not None:
        try:  # its import guard names the missing extra
            import imgsim_server.transport.http_server  # noqa: F401
        except ImportError as exc:
            parser.error(str(exc))
    from imgsim_server import logs, memory

    logs.install(args.log_level)
    memory.tune_malloc()  # so that RSS falls back after a burst of large images
    from imgsim_server.server import serve

    cfg = config_from_args(args)
    return serve(cfg, graph_preparer(cfg.core))


if __name__ == "__main__":
    sys.exit(main())
