"""ONNX Runtime backend: export a torch EmbedNet once, cache the graph on disk, run it on CPU.

The graph is exported from the same torch module the torch backend runs (so both give the same
embeddings) and cached under `$IMGSIM_CACHE_DIR` (default `~/.cache/imgsim`) with a key made of
the model, its weights file, pooling, precision and the torch / onnx / onnxruntime versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether onnxruntime (and onnx, for export) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    return Path(os.environ.get("IMGSIM_CACHE_DIR", Path.home() / ".cache" / "imgsim")) / "onnx"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def graph_path(model: str, cache_key: str, precision: str) -> Path:
    """Where the graph for this model, weights, precision and package versions is cached."""
    from importlib.metadata import version

    from imgsim_server import __version__

    versions = [version(p) for p in ("torch", "onnx", "onnxruntime")]
    key = "|".join((model, cache_key, precision, *versions, __version__))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{model}-{precision}-{digest}.onnx"


def export(net, input_size: int, path: Path) -> None:
    """Export `net` (uint8 NHWC input, dynamic batch) to `path`, atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                net.cpu().eval(),
                (example,),
                tmp,
                input_names=["pixels"],
                output_names=["embedding"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def session_options(threads: int | None = None):
    """Session options, each chosen on purpose for a 2-core CPU server.

    - intra_op threads: the server passes 1 and runs one session call per core concurrently
      (see CnnEmbedder): with decode threads sharing the cores, an intra-op barrier would wait on
      whichever worker the OS preempted. Alone, both layouts give the same img/s.
    - intra_op spinning off: idle ORT workers otherwise busy-wait for ~ms after each op and steal
      the cores that decoding needs between batches.
    - inter_op = 1, sequential execution: the graph is a chain; parallel branches do not exist.
    - graph optimisation ALL: conv+BN+activation fusion and NCHWc layout transforms (the 8x over
      torch eager comes mostly from these).
    - CPU memory arena and memory patterns on: buffers are reused across runs, so steady-state
      allocation is zero; the arena grows to the largest batch seen, bounded by --max-batch-size.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def open_session(path: Path | str, threads: int | None = None):
    """An ONNX Runtime CPU session on a graph file, with `session_options`."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )


def ensure_graph(
    build_net, model: str, input_size: int, cache_key: str, precision: str = "fp32"
) -> Path:
    """The cached graph's path, exporting (and quantising) it first if it is not cached.

    `build_net` makes the torch module; it is called only when an export is needed.
    """
    path = graph_path(model, cache_key, precision)
    if not path.is_file():
        fp32 = graph_path(model, cache_key, "fp32")
        if not fp32.is_file():
            log.info("exporting %s to ONNX at %s", model, fp32)
            export(build_net(), input_size, fp32)
        if precision == "int8":
            from imgsim_server.embedders.quantize import quantize

            quantize(fp32, path)
    return path
