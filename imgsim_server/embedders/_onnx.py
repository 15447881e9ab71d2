"""The ONNX Runtime side of the CNN embedders: sessions, and the folder of exported graphs.

An exported graph is `DIR/<model>-<precision>.onnx` with a manifest `DIR/<model>-<precision>.json`
beside it (written by `imgsim-server export`): the model's name, embedding size, preprocessing,
pooling, weights file and the versions that produced it. A server checks the manifest against
the registry before it serves the graph, so a graph exported for other preprocessing is refused,
not silently used. DIR is `--onnx-dir`, else the cache `$IMGSIM_CACHE_DIR/onnx`
(default `~/.cache/imgsim/onnx`), where a server with torch installed exports on first use.

onnxruntime is imported only when a session is opened, so `import imgsim_server.embedders`
stays light.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


def _ort():
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":  # a deeper breakage surfaces unchanged
            raise
        raise ModuleNotFoundError(f'{e}\n\n  python -m pip install "imgsim[server]"') from e
    return ort


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cache_dir() -> Path:
    return Path(os.environ.get("IMGSIM_CACHE_DIR", Path.home() / ".cache" / "imgsim")) / "onnx"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def graph_files(folder: Path, model: str, precision: str, tag: str = "") -> tuple[Path, Path]:
    """(graph, manifest) paths of one model and precision in an ONNX folder; `tag` tells apart
    graphs of other weights kept in the same folder (the cache)."""
    stem = f"{model}-{precision}" + (f"-{tag}" if tag else "")
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def find_graph(graph: Path, expected: dict, check_weights: bool) -> tuple[Path | None, str]:
    """`graph` if it exists and its manifest matches `expected`, else (None, why not).

    `expected` holds model, precision, embedding_dim, input_size, preprocessing, pooling and
    weights; `weights` is compared only when `check_weights` (it is known and matters).
    """
    manifest = graph.with_suffix(".json")
    folder = graph.parent
    if not graph.is_file() or not manifest.is_file():
        return None, f"no exported graph {graph.name} (with {manifest.name}) in {folder}"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest {manifest}: {exc}"
    keys = [k for k in expected if k != "weights" or check_weights]
    diff = [k for k in keys if meta.get(k) != expected[k]]
    if diff:
        detail = "; ".join(f"{k}: graph {meta.get(k)!r}, expected {expected[k]!r}" for k in diff)
        return None, f"graph {graph} does not match the registry ({detail})"
    return graph, ""


def write_manifest(graph: Path, expected: dict) -> Path:
    """Record beside `graph` what a server needs to check it (with the producing versions)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return ""

    meta = {
        "format": MANIFEST_FORMAT,
        **expected,
        "graph": graph.name,
        "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC"},
        "output": {"name": "embedding", "dtype": "float32", "l2_normalised": True},
        "versions": {p: v(p) for p in ("imgsim", "torch", "onnx", "onnxruntime")},
    }
    manifest = graph.with_suffix(".json")
    manifest.write_text(json.dumps(meta, indent=2) + "\n")
    return manifest


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
    ort = _ort()
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
    return _ort().InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )
