"""Start-up time as a figure: `imgsim-server` from start to ready (gRPC Health SERVING) on a cold
model cache (a new empty IMGSIM_CACHE_DIR: the default's graph is exported first) and on a warm
one, for the default `--models` and for `--models all`, and the time to the first answer from a
served non-default model (efficientnet-lite1: exported on its first request under `all`).

    python -m imgsim_lab.startup     # make bench-startup -> results/startup.md, startup.json
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsim_client import ImgsimClient
from imgsim_datasets.photos import shipped_photos

RESULTS = Path(__file__).resolve().parents[1] / "results"
OTHER = "efficientnet-lite1"


def _start(cache: Path, *flags: str) -> tuple[subprocess.Popen, str, float]:
    """A server process, its address, and when it was started (monotonic)."""
    env = {**os.environ, "IMGSIM_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsim_server", "--port", "0", "--log-level", "WARNING", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    for line in proc.stdout:
        if m := re.search(r"listening on (127\.0\.0\.1:\d+)", line):
            return proc, m.group(1), started
    raise RuntimeError("imgsim-server exited before it listened")


def _until_serving(address: str) -> None:
    with grpc.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)


def one_start(cache: Path, models: str, pair: tuple[bytes, bytes]) -> dict:
    """Seconds to listen, to ready, and (from ready) to the first answer of OTHER if served."""
    flags = ("--models", models) if models else ()
    proc, address, started = _start(cache, *flags)
    try:
        listening = time.monotonic() - started
        _until_serving(address)
        ready = time.monotonic() - started
        out = {"listening_s": round(listening, 2), "ready_s": round(ready, 2)}
        if models:
            with ImgsimClient(address, timeout=600) as c:
                t = time.monotonic()
                c.compare(*pair, model=OTHER)
                out["first_other_answer_s"] = round(time.monotonic() - t, 2)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        out["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) // 1024
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    photos = sorted(shipped_photos())[:2]
    pair = (photos[0].read_bytes(), photos[1].read_bytes())
    rows = []
    for models in ("", "all"):
        with tempfile.TemporaryDirectory(prefix="imgsim-startup-") as tmp:
            cache = Path(tmp)
            for cache_state in ("cold", "warm"):  # the same folder: the second start finds it
                r = one_start(cache, models, pair)
                rows.append({"models": models or "(default)", "cache": cache_state, **r})
                print(rows[-1], flush=True)
    meta = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "other_model": OTHER}
    (RESULTS / "startup.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    lines = [
        "# Start-up time",
        "",
        "`make bench-startup` (`imgsim_lab/startup.py`): `imgsim-server` processes started one "
        f"after another on this machine ({meta['cpus']} CPUs), each timed from the start of the "
        "process. *Ready* is gRPC Health SERVING (and /readyz 200): the default model's graph "
        "exported if missing, loaded and run once. A cold cache is a new empty "
        "`IMGSIM_CACHE_DIR`; the warm start reuses the folder the cold one filled. With "
        f"`--models all`, *first {OTHER}* is the time from ready to the answer of a first "
        f"compare with `--model {OTHER}`: its graph is exported on that first request (cold) or "
        "only loaded (warm); under `all` it queues behind the collection model's background "
        "export (one export at a time). Requests that arrive before ready wait for the model; "
        "none fails. Peak RSS is the server process's high-water mark (VmHWM): graphs are "
        "exported in a child process, so torch never enters it.",
        "",
        f"| --models | cache | listening (s) | ready (s) | first {OTHER} after ready (s) "
        "| peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        other = r.get("first_other_answer_s", "")
        lines.append(
            f"| {r['models']} | {r['cache']} | {r['listening_s']} | {r['ready_s']} | {other} "
            f"| {r['peak_rss_mb']} |"
        )
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'startup.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
