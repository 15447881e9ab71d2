"""`make export`: build the cached ONNX graphs ahead of time (else they are built at first use).

python -m imgsim_server.export [--model efficientnet-lite0] [--precision fp32,int8]
"""

from __future__ import annotations

import argparse
import time

from imgsim_server.embedders import EmbedderOptions, create, list_models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model",
        action="append",
        help="model to export (repeatable; default: every CNN whose weights exist)",
    )
    ap.add_argument("--precision", default="fp32,int8", help="comma-separated: fp32,int8")
    args = ap.parse_args(argv)
    models = args.model or [
        m.name for m in list_models() if m.kind == "cnn" and m.weights_available(EmbedderOptions())
    ]
    for model in models:
        for precision in args.precision.split(","):
            started = time.perf_counter()
            emb = create(model, EmbedderOptions(backend="onnx", precision=precision))
            print(f"{model} {precision}: {emb.graph} ({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
