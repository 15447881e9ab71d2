"""`imgsim-server export`: write a model's ONNX graph and manifest, where torch is installed.

    imgsim-server export --model efficientnet-lite0 --output-dir DIR [--precision fp32,int8]

A `[server]` install (no torch) then serves it: `imgsim-server --onnx-dir DIR`. The manifest
beside each graph records the model name, preprocessing, embedding size, weights and versions;
the server checks it against its registry before serving. Needs the `[torch]` extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from imgsim_server.config import CoreConfig
from imgsim_server.embedders import (
    Embedder,
    EmbedderOptions,
    ModelCfg,
    _graphs,
    _onnx,
    create,
    get_cfg,
    list_models,
    weights_available,
)
from imgsim_server.embedders._weights import require_weights
from imgsim_server.errors import ModelFailedError

log = logging.getLogger(__name__)


def export_graph(cfg: ModelCfg, opts: EmbedderOptions) -> Path:
    """Export (fp32) or quantise (int8) `cfg`'s graph, with its manifest, where the server
    looks for it: `opts.onnx_dir`, else the cache."""
    from imgsim_server.embedders import _torch

    fp32, _ = _graphs.find_graph(cfg, opts, "fp32")
    if fp32 is None:
        fp32, _ = _graphs.graph_location(cfg, opts, "fp32")
        _torch.export_onnx(_torch.build_net(cfg, opts), cfg.input_size, fp32)
        _onnx.write_manifest(fp32, _graphs.expected_manifest(cfg, opts, "fp32"))
    if opts.precision == "fp32":
        return fp32
    from imgsim_server.export.quantize import quantize

    out, _ = _graphs.graph_location(cfg, opts, opts.precision)
    quantize(fp32, out, cfg.preset)
    _onnx.write_manifest(out, _graphs.expected_manifest(cfg, opts, opts.precision))
    return out


def ensure_graph(cfg: ModelCfg, opts: EmbedderOptions) -> Path | None:
    """Export `cfg`'s graph here if it will be served from one under `opts` and none is
    usable yet, where torch is installed (`missing_graph` decides). Returns the graph it
    exported, None when none was needed or this install cannot export (loading the model then
    says what is missing)."""
    why = missing_graph(cfg, opts)
    if not why:
        return None
    log.info("exporting %s (%s) to ONNX: %s", cfg.name, opts.precision, why)
    return export_graph(cfg, opts)


def missing_graph(cfg: ModelCfg, opts: EmbedderOptions) -> str:
    """Why `cfg` must be exported before it can be served under `opts` ("" when it need not,
    or this install cannot export: loading it then says what is missing). Imports no torch."""
    if cfg.kind != "cnn" or _graphs.resolved_backend(opts) != "onnx":
        return ""
    graph, why = _graphs.find_graph(cfg, opts, opts.precision)
    if graph is not None or not _graphs.can_export():
        return ""
    require_weights(cfg, opts)  # a missing weights file is reported as such, not as a crash
    return why


def export_in_child(cfg: ModelCfg, opts: EmbedderOptions, timeout: float = 1800.0) -> None:
    """Export `cfg`'s graph for `opts` with `imgsim-server export` in a child process, so that
    torch and the export's memory never enter the calling (serving) process. ModelFailedError
    with the child's last output lines when it fails.

    The child is spawned without Python code between fork and exec (no `preexec_fn`: forking a
    process that runs gRPC threads runs gRPC's fork handlers, which broke exports), and it
    stops when its standard input closes (`--exit-with-stdin`): this process holds the other
    end until the export is done, so an export never outlives a server that was stopped."""
    import subprocess
    import tempfile

    cmd = [sys.executable, "-m", "imgsim_server", "export", "--model", cfg.name]
    cmd += ["--precision", opts.precision, "--exit-with-stdin"]
    if opts.onnx_dir is not None:
        cmd += ["--output-dir", str(opts.onnx_dir)]
    if opts.weights_file is not None:
        cmd += ["--weights", str(opts.weights_file)]
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ModelFailedError(f"exporting {cfg.name} took over {timeout:g}s") from None
        finally:
            proc.stdin.close()
        log.seek(0)
        output = log.read()
    if code != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        raise ModelFailedError(f"exporting {cfg.name} failed ({' '.join(cmd[1:])}): {tail}")


def load(name: str, opts: EmbedderOptions | None = None) -> Embedder:
    """The named embedder, its graph exported first where needed: for programs that load
    models directly (the lab, tests), as a server's start-up does."""
    opts = opts or EmbedderOptions()
    ensure_graph(get_cfg(name), opts)
    return create(name, opts)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="imgsim-server export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--model",
        action="append",
        help="model to export; repeatable (default: the server's default model)",
    )
    ap.add_argument(
        "--all",
        action="store_true",
        help="export every CNN whose weights are installed (every preprocessing variant)",
    )
    ap.add_argument(
        "--output-dir",
        type=Path,
        help=f"folder for MODEL-PRECISION.onnx and .json (default: the cache, {_onnx.cache_dir()})",
    )
    ap.add_argument(
        "--precision", default="fp32,int8", help="comma-separated list of fp32 and int8"
    )
    ap.add_argument(
        "--weights", type=Path, help="weights file (with a single --model) instead of the default"
    )
    ap.add_argument(
        "--force", action="store_true", help="export again even if a matching graph exists"
    )
    ap.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when standard input closes (a server exporting in a child process holds it)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    """Export the chosen models; prints one line per graph."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.exit_with_stdin:  # the server that wanted the graph has gone: so has the need
        import os

        from imgsim_server.parent import when_stdin_closes

        when_stdin_closes(lambda: os._exit(1))
    if not _graphs.can_export():
        ap.error('export needs torch and onnx: python -m pip install "imgsim[torch]"')
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if bad := set(precisions) - {"fp32", "int8"}:
        ap.error(f"unknown precision(s): {', '.join(sorted(bad))}")
    if args.weights and len(args.model or []) != 1:
        ap.error("--weights needs exactly one --model")
    if args.all:
        names = [
            m.name
            for m in list_models()
            if m.kind == "cnn" and weights_available(m, EmbedderOptions())
        ]
    else:
        names = args.model or [CoreConfig().default_model]
    for name in names:
        cfg = get_cfg(name)
        if cfg.kind != "cnn":
            ap.error(f"{name} is a {cfg.kind} method: it has no graph to export")
        for precision in precisions:
            started = time.perf_counter()
            opts = EmbedderOptions(
                backend="onnx",
                precision=precision,
                onnx_dir=args.output_dir,
                weights_file=args.weights,
            )
            require_weights(cfg, opts)
            graph, _ = _graphs.find_graph(cfg, opts, precision)
            if graph is None or args.force:
                if args.force:
                    for p in _graphs.graph_location(cfg, opts, precision):
                        p.unlink(missing_ok=True)
                graph = export_graph(cfg, opts)
                what = "exported"
            else:
                what = "up to date"
            elapsed = time.perf_counter() - started
            print(f"{name} {precision}: {graph} ({what}, {elapsed:.1f}s)", flush=True)
    return 0
