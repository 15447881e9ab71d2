"""`make soak`, attack phase: the attacks of the reliability review, at once, on loopback.

Against one `imgsim-server --http-port 0 --memory-budget-mb B` child under `ulimit -n 1024`,
with the default `--models`, while a client scores a CSV over gRPC:
- 5,000 slow HTTP connections that send their headers a byte at a time (reopened when cut);
- the memory attack: 4 gRPC streams each defining 10 images of 50 MB (valid PNGs under
  --max-pixels), twice, and 30 parallel HTTP compares of 62 MB bodies;
- the model-loading loop: a compare with every registered model name (alone first, for its
  RSS, then again during the burst).
Measured: every pair of the CSV scored, gRPC Health latency (p50/p99), /livez answers, server
RSS (warm idle, peak, 30 s and 60 s after the burst), what was refused and how. Bounded in count
and time; loopback only.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import resource
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from imgsim_client.client import ImgsimClient, ImgsimError, PairRequest
from imgsim_client.scoring import score_pairs
from imgsim_lab.bench import photo_pool
from imgsim_lab.servers import ServerProcess
from imgsim_server.embedders import list_models
from imgsim_server.memory import rss_bytes

MiB = 1024 * 1024


class RssSampler(threading.Thread):
    """Samples a process's RSS every `period_s` until stopped."""

    def __init__(self, pid: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period_s):
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))

    def peak_mb(self) -> float:
        return max((r for _, r in self.samples), default=0) / MiB


def probe(grpc_port: int, http_port: int, stop, out) -> None:
    """gRPC Health every 0.1 s and /livez every 0.5 s until `stop` is set; puts the
    latencies and failures on `out`. Runs in a process of its own, so that the attackers'
    threads (and their GIL) never delay a probe: the latency is the server's."""
    import httpx

    got: dict = {"health_ms": [], "health_failed": Counter(), "healthz_ms": [],
                 "healthz_failed": Counter()}  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = health_pb2_grpc.HealthStub(channel)
    tick = 0
    with httpx.Client(timeout=5) as http:
        while not stop.wait(0.1):
            started = time.perf_counter()
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                got["health_ms"].append(1000 * (time.perf_counter() - started))
            except grpc.RpcError as err:
                got["health_failed"][err.code().name] += 1
            tick += 1
            if tick % 5:
                continue
            started = time.perf_counter()
            try:
                http.get(f"http://127.0.0.1:{http_port}/livez").raise_for_status()
                got["healthz_ms"].append(1000 * (time.perf_counter() - started))
            except Exception as exc:  # the figure is how often it fails, and how
                got["healthz_failed"][type(exc).__name__] += 1
    channel.close()
    out.put({k: dict(v) if isinstance(v, Counter) else v for k, v in got.items()})


class Prober:
    """`probe` in a spawned process."""

    def __init__(self, grpc_port: int, http_port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=probe, args=(grpc_port, http_port, self._stop, self._out))

    def start(self) -> None:
        self._proc.start()

    def finish(self) -> dict:
        self._stop.set()
        got = self._out.get(timeout=60)
        self._proc.join(10)
        return got


def slow_http(port: int, count: int, seconds: float) -> dict:
    """Keep `count` connections open that send their headers a byte every 2 s, reopening any
    the server closes, for `seconds`. Returns how the server treated them."""
    out = Counter()
    socks: list[socket.socket | None] = [None] * count
    header = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: "
    end = time.monotonic() + seconds
    last_trickle = 0.0
    while time.monotonic() < end:
        for i in range(count):
            if socks[i] is None:
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=1)
                    s.setblocking(False)
                    s.send(header)
                    socks[i] = s
                    out["opened"] += 1
                except OSError:
                    out["connect_failed"] += 1
        trickle = time.monotonic() - last_trickle >= 2.0
        if trickle:
            last_trickle = time.monotonic()
        for i, s in enumerate(socks):
            if s is None:
                continue
            try:
                data = s.recv(4096)
                if data.startswith(b"HTTP/1.1 408"):
                    out["cut_with_408"] += 1
                else:
                    out["closed_at_once" if not data else "answered"] += 1
                s.close()
                socks[i] = None
                continue
            except BlockingIOError:
                pass
            except OSError:
                out["reset"] += 1
                s.close()
                socks[i] = None
                continue
            if trickle:
                try:
                    s.send(b"x")
                except OSError:
                    s.close()
                    socks[i] = None
        time.sleep(0.05)
    for s in socks:
        if s is not None:
            s.close()
    return dict(out)


def big_pngs(n: int, side: int, seed: int) -> list[bytes]:
    """n distinct noise PNGs of side x side (incompressible: ~3 bytes a pixel)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, "PNG", compress_level=0)
        out.append(buf.getvalue())
    return out


def memory_streams(address: str, images: list[bytes], streams: int) -> Counter:
    """`streams` streams at once, each defining every image once (with an id)."""

    def one(k: int) -> Counter:
        got: Counter = Counter()
        reqs = [
            PairRequest(f"{k}-{i}", data, None, id_a=f"#{i}", ref_b=f"#{i}")
            for i, data in enumerate(images)
        ]
        try:
            with ImgsimClient(address, timeout=120) as c:
                for res in c.compare_stream(reqs, idle_timeout=120):
                    got["OK" if res.ok else res.error_code.name] += 1
        except ImgsimError as exc:
            got[f"stream {exc.code.name}"] += 1
        return got

    total: Counter = Counter()
    with ThreadPoolExecutor(streams) as pool:
        for c in pool.map(one, range(streams)):
            total.update(c)
    return total


def memory_http(port: int, image: bytes, parallel: int) -> Counter:
    import httpx

    def one(_i: int) -> str:
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/compare",
                files={"image_a": image, "image_b": image},
                timeout=120,
            )
            return str(r.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(parallel) as pool:
        return Counter(pool.map(one, range(parallel)))


def model_loop(address: str, image: bytes) -> Counter:
    got: Counter = Counter()
    with ImgsimClient(address, timeout=60) as c:
        for m in list_models():
            try:
                c.compare(image, image, model=m.name)
                got["OK"] += 1
            except ImgsimError as exc:
                got[exc.code.name] += 1
    return got


def run(work: Path, budget_mb: int = 1024, pairs: int = 2000, slow: int = 5000) -> dict:
    """The attack phase; returns its figures (`passed` says whether every target held)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 5,000 sockets on our side
    files, pool_desc = photo_pool(1000, work)
    csv_path = work / "attack_pairs.csv"
    rng = np.random.default_rng(1)
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_a", "image_b"])
        for _ in range(pairs):
            a, b = rng.choice(len(files), 2, replace=False)
            w.writerow([files[a].resolve(), files[b].resolve()])
    streams_imgs = big_pngs(10, 4096, 0)  # 50 MB each
    http_img = big_pngs(1, 3200, 1)[0]  # 31 MB: a 62 MB body with both parts
    flags = ("--http-port", "0", "--memory-budget-mb", str(budget_mb), "--models", "")
    report: dict = {"budget_mb": budget_mb, "nofile": 1024, "pool": pool_desc}
    with ServerProcess(*flags, nofile=1024) as srv:
        with ImgsimClient(srv.address, timeout=60) as c:
            c.wait_ready(120)
            c.compare(files[0].read_bytes(), files[1].read_bytes())
        time.sleep(3)
        idle = rss_bytes(srv.proc.pid) / MiB
        # The model-loading loop first, on its own, so that its RSS is its own.
        models_got = dict(model_loop(srv.address, files[2].read_bytes()))
        models_rss = round(rss_bytes(srv.proc.pid) / MiB)
        sampler, prober = RssSampler(srv.proc.pid), Prober(srv.port, srv.http_port)
        sampler.start()
        prober.start()
        results: dict = {}

        def score() -> None:
            started = time.perf_counter()
            with ImgsimClient(srv.address, timeout=120) as c:
                s = score_pairs(c, csv_path, work / "attack_scores.csv", progress=False)
            results["csv"] = {
                "pairs": s.pairs,
                "scored": s.scored,
                "failed": s.failed,
                "seconds": round(time.perf_counter() - started, 1),
            }

        def mem_grpc() -> None:
            results["grpc_memory_runs"] = [
                dict(memory_streams(srv.address, streams_imgs, 4)) for _ in range(2)
            ]

        def mem_http() -> None:
            results["http_memory"] = dict(memory_http(srv.http_port, http_img, 30))

        def models() -> None:  # and again during the burst
            results["model_loop"] = models_got
            results["model_loop_during_burst"] = dict(
                model_loop(srv.address, files[2].read_bytes())
            )
            results["rss_after_model_loop_mb"] = models_rss

        def slow_conns() -> None:
            results["slow_http"] = slow_http(srv.http_port, slow, 45.0)

        started = time.monotonic()
        threads = [
            threading.Thread(target=f) for f in (slow_conns, score, mem_grpc, mem_http, models)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        burst_s = time.monotonic() - started
        burst_end = time.monotonic()
        after = {}
        for wait in (30, 60):
            time.sleep(max(0.0, burst_end + wait - time.monotonic()))
            after[wait] = round(rss_bytes(srv.proc.pid) / MiB)
        probed = prober.finish()
        sampler.halt.set()
        peak = max(sampler.peak_mb(), srv.peak_rss_mb())
        alive = srv.proc.poll() is None
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    h = sorted(probed["health_ms"])
    healthz = probed["healthz_ms"]
    report.update(results)
    report.update(
        {
            "burst_seconds": round(burst_s, 1),
            "rss_mb": {
                "warm_idle": round(idle),
                "peak": round(peak),
                "after_30s": after[30],
                "after_60s": after[60],
            },
            "health": {
                "checks": len(h),
                "failed": probed["health_failed"],
                "p50_ms": round(statistics.median(h), 1) if h else None,
                "p99_ms": round(h[int(0.99 * (len(h) - 1))], 1) if h else None,
            },
            "healthz": {
                "answered": len(healthz),
                "failed": probed["healthz_failed"],
                "max_ms": round(max(healthz), 1) if healthz else None,
            },
            "server_alive": alive,
        }
    )
    csv_ok = report["csv"]["scored"] == report["csv"]["pairs"]
    report["checks"] = {
        "every CSV pair scored": csv_ok,
        "gRPC Health p99 < 100 ms": bool(h)
        and report["health"]["p99_ms"] < 100
        and not probed["health_failed"],
        "/livez answers": bool(healthz) and not probed["healthz_failed"],
        "peak RSS < budget + warm idle": peak < budget_mb + idle,
        "RSS within 300 MB of idle 30 s after": after[30] - idle < 300,
        "RSS after the model loop < 1 GB": report["rss_after_model_loop_mb"] < 1024,
        "server alive": alive,
    }
    report["passed"] = all(report["checks"].values())
    return report


TITLE = "## Attacks (the reliability review's, at once)"


def render(r: dict) -> str:
    rss, h, hz = r["rss_mb"], r["health"], r["healthz"]
    lines = [
        TITLE,
        f"\nOne `imgsim-server --http-port 0 --memory-budget-mb {r['budget_mb']}` under "
        f"`ulimit -n {r['nofile']}`, default `--models`, for {r['burst_seconds']} s: 5,000 slow "
        "HTTP connections (headers a byte every 2 s, reopened when cut), 4 gRPC streams each "
        "defining 10 images of 50 MB (twice), 30 parallel HTTP compares of 62 MB bodies, and a "
        "compare with every registered model; meanwhile a client scores a CSV of "
        f"{r['csv']['pairs']} pairs ({r['pool']}) over gRPC. Verdict: "
        f"**{'PASS' if r['passed'] else 'FAIL'}**.",
        "",
        "| check | held |",
        "|---|---|",
        *[f"| {k} | {'yes' if v else '**no**'} |" for k, v in r["checks"].items()],
        "",
        "| figure | value |",
        "|---|---|",
        f"| CSV client | {r['csv']['scored']}/{r['csv']['pairs']} scored, {r['csv']['failed']} "
        f"failed, {r['csv']['seconds']} s |",
        f"| gRPC Health | {h['checks']} checks, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, "
        f"failed {h['failed'] or 0} |",
        f"| /livez | {hz['answered']} answered (max {hz['max_ms']} ms), failed "
        f"{hz['failed'] or 0} |",
        f"| slow HTTP connections | {r['slow_http']} |",
        f"| gRPC memory streams (per run) | {r['grpc_memory_runs']} |",
        f"| HTTP 62 MB compares (status) | {r['http_memory']} |",
        f"| model loop (status), alone | {r['model_loop']}; RSS after "
        f"{r['rss_after_model_loop_mb']} MiB |",
        f"| model loop (status), during the burst | {r['model_loop_during_burst']} |",
        f"| server RSS: warm idle / peak | {rss['warm_idle']} / {rss['peak']} MiB |",
        f"| server RSS 30 s / 60 s after the burst | {rss['after_30s']} / {rss['after_60s']} MiB |",
        "",
    ]
    return "\n".join(lines)
