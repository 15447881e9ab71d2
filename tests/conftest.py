"""Shared fixtures: one real server on 127.0.0.1:0 per session, real model, real photos."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from imgsim_client import ImgsimClient
from imgsim_datasets.photos import shipped_photos
from imgsim_server.config import CoreConfig, ServerConfig
from imgsim_server.server import start_server

# gRPC's unary retry (the client's service config) kept short, for tests that expect a call to
# end UNAVAILABLE rather than be retried until its deadline.
# The serving machinery is tested on the fastest Lite (half the cost of the default); the
# product default (imgsim_server.config.DEFAULT_MODEL) has its own end-to-end test.
TEST_MODEL = "efficientnet-lite0"

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


@pytest.fixture(scope="session", autouse=True)
def graphs():
    """The ONNX graphs of the test model and the product defaults, exported once if missing, as
    `imgsim-server` does at start-up (a server never exports for a request)."""
    from imgsim_server.config import COLLECTION_MODEL, DEFAULT_MODEL
    from imgsim_server.embedders import EmbedderOptions, get_cfg
    from imgsim_server.export import ensure_graph

    for name in (TEST_MODEL, DEFAULT_MODEL, COLLECTION_MODEL):
        ensure_graph(get_cfg(name), EmbedderOptions())


@pytest.fixture(scope="session")
def server():
    """A real server with the default model, on a free loopback port."""
    core = CoreConfig(
        default_model=TEST_MODEL, max_batch_size=32, max_delay_ms=20.0, models=("all",)
    )
    cfg = ServerConfig(host="127.0.0.1", port=0, core=core)
    running = start_server(cfg)
    running.core.warm_up(cfg.core.default_model)  # load once
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
            core = CoreConfig(default_model=TEST_MODEL)
            running = start_server(ServerConfig(host="127.0.0.1", port=0, core=core))
            running.core.warm_up(TEST_MODEL)  # loaded, as a deployed replica is before it is ready
            started.append(running)
        return started[-n:]

    yield make
    for running in started:
        running.stop(0)


@pytest.fixture()
def tls_files(tmp_path) -> dict[str, Path]:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def make(name, issuer_key=None, issuer_name=None, ca=False, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        return key, cert

    def write(stem, key, cert):
        (tmp_path / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (tmp_path / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    import ipaddress

    ca_key, ca_cert = make("imgsim test CA", ca=True)
    write("ca", ca_key, ca_cert)
    srv = make(
        "localhost",
        ca_key,
        ca_cert.subject,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    write("server", *srv)
    write("client", *make("client", ca_key, ca_cert.subject))
    return {
        n: tmp_path / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }
