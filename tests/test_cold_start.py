"""A server started as a new user starts it: `imgsim-server` on an empty model cache, so that it
must export its graphs first. Everything else in the suite runs warm (conftest's `graphs`); this
module is the cold path, and each probe starts the moment the port opens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_server.config import DEFAULT_MODEL, CoreConfig, ServerConfig
from imgsim_server.server import start_server
from tests.conftest import TEST_MODEL, distinct_jpegs

SERVING = health_pb2.HealthCheckResponse.SERVING


class ColdServer:
    """An `imgsim-server` process on an empty IMGSIM_CACHE_DIR, its ports read from its output."""

    def __init__(self, cache: Path, *flags: str) -> None:
        assert not any(cache.rglob("*.onnx")), "the cache must start empty"
        self.cache = cache
        env = {**os.environ, "IMGSIM_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imgsim_server", "--port", "0", "--http-port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.port = self.http_port = 0
        self.log: list[str] = []
        deadline = time.monotonic() + 60
        while not (self.port and self.http_port) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            if m := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.search(r"web page at http://127\.0\.0\.1:(\d+)/", line):
                self.http_port = int(m.group(1))
        assert self.port and self.http_port, "".join(self.log)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.log.append(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _probe(cold: ColdServer, until: float) -> list[tuple[int, int, int]]:
    """(HTTP /readyz, gRPC Health, HTTP /healthz) sampled in that order every 0.1 s."""
    samples = []
    with grpc.insecure_channel(cold.address) as ch, httpx.Client(timeout=5) as http:
        health = health_pb2_grpc.HealthStub(ch)
        url = f"http://127.0.0.1:{cold.http_port}"
        while time.monotonic() < until:
            before = http.get(url + "/readyz").status_code
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            after = http.get(url + "/healthz").status_code
            samples.append((before, status, after))
            if before == after == 200 and len(samples) > 3 and samples[-3][0] == 200:
                break
            time.sleep(0.1)
    return samples


@pytest.fixture(scope="module")
def cold(tmp_path_factory, photos):
    """One cold default server, and what each probe saw; all probes start when the port opens."""
    server = ColdServer(tmp_path_factory.mktemp("empty-cache"))
    images = distinct_jpegs(photos, 16, salt=9101)
    seen: dict = {}

    def compare_at_once() -> None:
        with ImgsimClient(server.address, timeout=120) as c:  # no wait_ready: sent at once
            seen["compare"] = c.compare(images[0], images[1])

    def stream_at_once() -> None:
        pairs = [PairRequest(f"p{i}", images[i], images[i + 1]) for i in range(12)]
        with ImgsimClient(server.address, timeout=120) as c:
            seen["stream"] = list(c.compare_stream(pairs))

    def unserved_at_once() -> None:
        started = time.monotonic()
        with ImgsimClient(server.address, timeout=120) as c:
            try:
                c.compare(images[0], images[1], model="efficientnet-lite1")
            except ImgsimError as exc:
                seen["unserved"] = (exc.code, time.monotonic() - started)

    def wait_ready() -> None:
        statuses: list[str] = []
        with ImgsimClient(server.address, timeout=30) as c:
            c.wait_ready(120, on_status=statuses.append)
        with grpc.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            seen["health_after_wait"] = health.Check(health_pb2.HealthCheckRequest()).status
        seen["statuses"] = statuses

    def probe() -> None:
        seen["samples"] = _probe(server, time.monotonic() + 120)

    threads = [
        threading.Thread(target=f)
        for f in (compare_at_once, stream_at_once, unserved_at_once, wait_ready, probe)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    yield server, seen
    server.stop()


def test_a_cold_server_answers_a_compare_sent_the_moment_its_port_opens(cold):
    server, seen = cold
    assert 0.0 < seen["compare"] <= 1.0
    assert any(s[0] == 503 for s in seen["samples"]), "the server was never seen preparing"
    assert any(p.name.startswith(DEFAULT_MODEL) for p in server.cache.rglob("*.onnx"))


def test_readyz_matches_grpc_health_at_every_moment_of_a_cold_start(cold):
    _, seen = cold
    samples = seen["samples"]
    assert samples[0][0] == 503 and samples[-1] == (200, SERVING, 200)
    for before, status, after in samples:  # readiness only ever goes up during a start
        assert not (before == 200 and status != SERVING), samples
        assert not (status == SERVING and after != 200), samples


def test_wait_ready_returns_only_after_serving_and_names_the_model(cold):
    _, seen = cold
    assert seen["health_after_wait"] == SERVING
    assert seen["statuses"] and DEFAULT_MODEL in seen["statuses"][0]


def test_a_stream_opened_during_preparation_scores_every_pair(cold):
    _, seen = cold
    results = seen["stream"]
    assert len(results) == 12 and all(r.ok for r in results), [r.error for r in results]


def test_an_unserved_model_is_not_found_at_once_and_never_exported(cold):
    server, seen = cold
    code, took = seen["unserved"]
    assert code == grpc.StatusCode.NOT_FOUND and took < 5
    assert not list(server.cache.rglob("efficientnet-lite1-*"))


def test_models_all_answers_an_immediate_compare_with_a_non_default_model(tmp_path, photos):
    server = ColdServer(tmp_path / "cache", "--models", "all")
    try:
        a, b = (str(photos[n]) for n in sorted(photos)[:2])
        out = subprocess.run(
            [sys.executable, "-m", "imgsim_client", "compare", a, b, "--model",
             "efficientnet-lite1", "--server", server.address, "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + "".join(server.log)
        assert '"model": "efficientnet-lite1"' in out.stdout
        assert "to be ready: preparing " + DEFAULT_MODEL in out.stderr  # its status line
    finally:
        server.stop()


def test_a_model_whose_preparation_failed_fails_at_once_with_its_reason(tmp_path, photos):
    missing = tmp_path / "missing-weights.pth"
    core = CoreConfig(
        default_model=TEST_MODEL,
        models=("efficientnet-lite1",),
        weights=(("efficientnet-lite1", missing),),
    )
    running = start_server(ServerConfig(host="127.0.0.1", port=0, core=core))
    a, b = distinct_jpegs(photos, 2, salt=9102)
    try:
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            for _ in range(2):  # the first waits for the preparation, the second not at all
                started = time.monotonic()
                with pytest.raises(ImgsimError) as err:
                    c.compare(a, b, model="efficientnet-lite1")
                assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
                assert str(missing) in err.value.message
            assert time.monotonic() - started < 1.0
            info = c.list_models().get("efficientnet-lite1")
            assert info.state == "failed" and str(missing) in info.state_detail
            assert c.compare(a, b) > 0  # the default is unaffected
    finally:
        running.stop(0.5)
