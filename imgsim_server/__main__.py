"""`imgsim-server` / `python -m imgsim_server`; `imgsim-server export ...` writes ONNX graphs.

The one serving module that imports `imgsim_server.export`: at start-up, where torch is
installed, it exports the graphs missing for the default model and those `--models` names, so
that no request ever needs to.
"""

from __future__ import annotations

import logging
import sys

from imgsim_server.config import CoreConfig

log = logging.getLogger("imgsim_server")


def export_missing_graphs(cfg: CoreConfig) -> None:
    """Export the graphs missing for the default model, the collection descriptor and those
    `--models` names (where torch is installed; elsewhere loading a model says what to
    export)."""
    from imgsim_server.core.engines import embedder_options
    from imgsim_server.embedders import get_cfg
    from imgsim_server.errors import CoreError
    from imgsim_server.export import ensure_graph

    for name in dict.fromkeys((cfg.default_model, cfg.collection_model, *cfg.models)):
        if name == "all":
            continue
        try:
            ensure_graph(get_cfg(name), embedder_options(cfg, name))
        except CoreError as exc:  # served all the same: loading it says what is missing
            log.warning("model %s cannot load: %s", name, exc)


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
    return serve(cfg, prepare=lambda: export_missing_graphs(cfg.core))


if __name__ == "__main__":
    sys.exit(main())
