"""`imgsim-server` / `python -m imgsim_server`."""

from __future__ import annotations

import logging
import sys

from imgsim_server.config import build_parser, config_from_args
from imgsim_server.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.precision == "int8" and args.backend == "torch":
        parser.error("--precision int8 needs --backend onnx (int8 is an ONNX Runtime graph)")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = config_from_args(args)
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
