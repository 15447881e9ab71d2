"""Shared fixtures: one real server on 127.0.0.1:0 per session, real model, real photos."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from imgsim_client import ImgsimClient
from imgsim_datasets.photos import shipped_photos
from imgsim_server.config import CoreConfig, ServerConfig
from imgsim_server.transport.grpc_server import start_server

# gRPC's unary retry (the client's service config) kept short, for tests that expect a call to
# end UNAVAILABLE rather than be retried until its deadline.
QUICK_RETRY = {
    "maxAttempts": 2,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.05s",
    "backoffMultiplier": 1,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def jpeg_bytes(img: Image.Image, quality: int = 90, comment: str = "") -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, comment=comment)
    return buf.getvalue()


def distinct_jpegs(photos: dict[str, Path], n: int, salt: int) -> list[bytes]:
    """n real photos (the shipped ones, 256 px) whose bytes no call with another salt makes:
    a JPEG comment holds (salt, index), so none is a cache hit for another test."""
    srcs = []
    for path in sorted(photos.values())[:8]:
        img = Image.open(path).convert("RGB")
        img.thumbnail((256, 256))
        srcs.append(img)
    out = []
    for i in range(n):
        out.append(jpeg_bytes(srcs[i % len(srcs)], 85, comment=f"imgsim test {salt}/{i}"))
    assert len(set(out)) == n
    return out


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Real photos shipped by installed packages, by stem."""
    found = {p.stem: p for p in shipped_photos()}
    assert len(found) >= 10, "expected the photos of scikit-image, scikit-learn and matplotlib"
    return found


@pytest.fixture(scope="session")
def server():
    """A real server with the default model, on a free loopback port."""
    cfg = ServerConfig(
        host="127.0.0.1", port=0, core=CoreConfig(max_batch_size=32, max_delay_ms=20.0)
    )
    running = start_server(cfg)
    running.core.engine(cfg.core.default_model)  # load once for the session
    yield running
    running.stop(grace=1.0)


@pytest.fixture()
def extra_servers(server):
    """Starts more servers sharing the session's core (and model), each with its own settings."""
    started = []

    def make(**kw):
        running = start_server(ServerConfig(host="127.0.0.1", port=0, **kw), core=server.core)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop(0.5)


@pytest.fixture()
def extra_server(extra_servers):
    """Like extra_servers, but gives the new server's address."""
    return lambda **kw: f"127.0.0.1:{extra_servers(**kw).port}"


@pytest.fixture(scope="session")
def address(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def client(address):
    with ImgsimClient(address, timeout=120) as c:
        c.wait_ready(10)
        yield c


@pytest.fixture()
def replicas():
    """Starts replicas, each with its own core (own batcher, cache and counters)."""
    started = []

    def make(n: int):
        for _ in range(n):
            running = start_server(ServerConfig(host="127.0.0.1", port=0, core=CoreConfig()))
            running.core.engine("")  # loaded, as a deployed replica is before it is ready
            started.append(running)
        return started[-n:]

    yield make
    for running in started:
        running.stop(0)
