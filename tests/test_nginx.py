"""A real nginx (grpc_pass) in front of two loopback replicas, configured by deploy/nginx.conf.

Skips where nginx is not installed (`.ci/run` installs it: apt-get install -y nginx).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from imgsim_client.cli import main
from tests.test_client_robustness import _pairs_csv
from tests.test_fleet import _reference, _scores

NGINX = shutil.which("nginx")
CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def nginx(tmp_path):
    """Starts nginx from deploy/nginx.conf with the upstream pointed at the given ports."""
    procs = []

    def start(ports: list[int]) -> int:
        port = _free_port()
        conf = CONF.read_text()
        upstream = "".join(f"        server 127.0.0.1:{p};\n" for p in ports)
        conf, n = re.subn(
            r"(upstream imgsim \{\n)(?:.*\n)*?(?=        keepalive)", rf"\g<1>{upstream}", conf
        )
        assert n == 1
        conf = conf.replace("listen 8080 http2;", f"listen 127.0.0.1:{port} http2;")
        conf = conf.replace("pid /tmp/imgsim-nginx.pid;", f"pid {tmp_path}/nginx.pid;")
        conf = conf.replace("worker_processes auto;", "worker_processes 1;\nuser root;")
        (tmp_path / "nginx.conf").write_text(conf)
        proc = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stderr.read()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return port
            time.sleep(0.05)
        pytest.fail("nginx did not listen")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_scoring_through_nginx_spreads_streams_over_replicas(
    nginx,
    replicas,
    address,
    photos,
    tmp_path,
):
    servers = replicas(2)
    port = nginx([s.port for s in servers])
    csv = _pairs_csv(tmp_path, photos, 80, salt=50)
    out = tmp_path / "via_nginx.csv"
    argv = [str(csv), "-o", str(out), "--server", f"127.0.0.1:{port}", "--streams", "4"]
    assert main([*argv, "--no-progress"]) == 0
    fleet, single = _scores(out), _reference(csv, address, tmp_path)
    assert list(fleet.index) == list(single.index)
    assert (fleet - single).abs().max() <= 1e-5
    # nginx balances per stream: four streams land on both replicas.
    assert all(r.core.pairs_scored > 0 for r in servers), [r.core.pairs_scored for r in servers]
