"""Idle streams against a real server process: do control calls still answer, what does each
idle stream cost (threads, memory)?

    python -m imgsim_lab.idle_streams [--streams 64] [server flags...]

Opens N CompareStream calls that send nothing, then times grpc.health.v1 Check and ListModels
(1 s deadline each) and reads the server's thread count and RSS from /proc.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_lab.servers import ServerProcess


def _proc(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        "threads": int(re.search(r"Threads:\s+(\d+)", status).group(1)),
        "rss_mb": int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024,
    }


def _timed(fn) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        fn()
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    return (time.perf_counter() - started) * 1000, code


def measure(address: str, pid: int, n: int) -> dict:
    """Open n idle streams, then time control calls; every stream is cancelled at the end."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.ImageSimilarityStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    grpc.channel_ready_future(channel).result(timeout=10)
    before = _proc(pid)
    release = threading.Event()

    def silent():
        release.wait(120)
        yield from ()

    calls = [stub.CompareStream(silent(), timeout=120) for _ in range(n)]
    time.sleep(1.0)  # let them all reach the server
    out = {"idle_streams": n, "before": before, "with_idle_streams": _proc(pid)}
    out["health_ms"], out["health_code"] = _timed(
        lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    )
    out["list_models_ms"], out["list_models_code"] = _timed(
        lambda: stub.ListModels(pb.ListModelsRequest(), timeout=1.0)
    )
    extra = stub.CompareStream(iter([]), timeout=5)
    try:
        list(extra)
        out["one_more_stream"] = "OK"
    except grpc.RpcError as err:
        out["one_more_stream"] = err.code().name
    release.set()
    for call in calls:
        call.cancel()
    channel.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    args, server_flags = ap.parse_known_args(argv)
    with ServerProcess(*server_flags) as srv:
        result = measure(srv.address, srv.proc.pid, args.streams)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
