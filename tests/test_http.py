"""HTTP/JSON beside gRPC: same core, same scores, same limits, auth, TLS and error mapping."""

from __future__ import annotations

import asyncio
import base64
import ssl

import numpy as np
import pytest
from imgsim.v1 import similarity_pb2 as pb

from imgsim_client import ImageRequest
from imgsim_server import errors
from tests.conftest import TEST_MODEL, distinct_jpegs

httpx = pytest.importorskip("httpx")
http_app = pytest.importorskip(
    "imgsim_server.transport.http_server", reason="the [http] extra is not installed"
)


@pytest.fixture(scope="module")
def http(server):
    """An HTTP+gRPC server sharing the session's core (and so its model and cache)."""
    from imgsim_server.config import ServerConfig
    from imgsim_server.server import start_server

    running = start_server(ServerConfig(port=0, http_port=0), core=server.core)
    yield running
    running.stop(0.5)


def url(running, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{running.http_port}{path}"


def test_compare_equals_grpc_and_shares_the_cache(http, client, photos):
    a, b = distinct_jpegs(photos, 2, salt=9100)
    before = client.stats()
    r = httpx.post(url(http, "/v1/compare"), files={"image_a": a, "image_b": b}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) <= {f.name for f in pb.CompareResponse.DESCRIPTOR.fields}
    score, model, verdict = client.compare_pair(a, b)
    assert body["model"] == model and body["verdict"] == verdict
    assert abs(body["score"] - score) < 1e-6
    after = client.stats()
    # two new images embedded once (by HTTP); gRPC's call found both in the cache
    assert after.cache_misses - before.cache_misses == 2
    assert after.cache_hits - before.cache_hits >= 2

    as_json = {"image_a": base64.b64encode(a).decode(), "image_b": base64.b64encode(b).decode()}
    r = httpx.post(url(http, "/v1/compare"), json={**as_json, "model": ""}, timeout=60)
    assert r.status_code == 200 and abs(r.json()["score"] - score) < 1e-6


def test_embed_equals_grpc(http, client, photos):
    (img,) = distinct_jpegs(photos, 1, salt=9200)
    r = httpx.post(url(http, "/v1/embed"), files={"image": img}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    (res,) = list(client.embed_stream([ImageRequest("x", img)]))
    assert body["dimension"] == len(res.vector) == 1280 and body["similarity"] == "cosine"
    assert np.abs(np.asarray(body["vector"]) - res.vector).max() < 1e-6


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        ({"image_a": b"not an image", "image_b": "GOOD"}, {}, 400, "INVALID_ARGUMENT"),
        ({"image_a": "GOOD", "image_b": "GOOD"}, {"model": "no-such"}, 404, "NOT_FOUND"),
        ({"image_a": "GOOD"}, {}, 400, "INVALID_ARGUMENT"),
    ],
)
def test_errors_are_json_with_the_mapped_status(http, photos, files, data, status, code):
    (good,) = distinct_jpegs(photos, 1, salt=9300)
    files = {k: good if v == "GOOD" else v for k, v in files.items()}
    r = httpx.post(url(http, "/v1/compare"), files=files, data=data, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_wrong_content_type_and_bad_base64(http):
    r = httpx.post(url(http, "/v1/compare"), content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart" in r.json()["error"]["message"]
    r = httpx.post(url(http, "/v1/compare"), json={"image_a": "@@", "image_b": "@@"})
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]


def test_every_error_kind_has_a_status_on_both_transports():
    """One kind -> code table per transport, each covering every kind the core has."""
    from imgsim_server.transport.grpc_interceptors import GRPC_CODES

    assert set(http_app.HTTP_STATUS) == set(errors.KINDS) == set(GRPC_CODES)
    for _status, code in http_app.HTTP_STATUS.values():
        assert code in {c.name for c in GRPC_CODES.values()}, code


def test_an_internal_error_says_nothing_of_its_text(caplog):
    with caplog.at_level("ERROR"):
        response = http_app.error_response(RuntimeError("secret path /etc/x"))
    assert response.status_code == 500 and b"secret" not in response.body
    assert "secret path /etc/x" in caplog.text  # the log keeps it, with the traceback


def test_each_core_error_has_its_http_status():
    """The HTTP status follows the error's kind."""
    cases = {
        errors.InvalidImageError("x"): 400,
        errors.ImageTooLargeError("x"): 413,
        errors.ModelNotFoundError("x"): 404,
        errors.OverloadedError("x"): 429,
        errors.WeightsUnavailableError("x"): 400,
        errors.DeadlineExceededError("x"): 504,
        RuntimeError("boom"): 500,
    }
    for exc, status in cases.items():
        assert http_app.error_response(exc).status_code == status, exc


def test_body_over_the_limit_is_413(extra_servers, photos):
    running = extra_servers(http_port=0, max_message_mb=1)
    big = b"\xff" * (1024 * 1024 + 10)
    r = httpx.post(url(running, "/v1/compare"), files={"image_a": big, "image_b": big})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]


def test_a_body_without_length_is_refused(http):
    def chunks():
        yield b'{"image_a": "", '
        yield b'"image_b": ""}'

    r = httpx.post(
        url(http, "/v1/compare"), content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]["message"]


def test_bearer_token_and_open_probes(extra_servers, photos):
    running = extra_servers(http_port=0, auth_token="s3cret")
    (img,) = distinct_jpegs(photos, 1, salt=9400)
    files = {"image_a": img, "image_b": img}
    assert httpx.post(url(running, "/v1/compare"), files=files).status_code == 401
    wrong = {"authorization": "Bearer nope"}
    r = httpx.post(url(running, "/v1/compare"), files=files, headers=wrong)
    # The same rule as gRPC's (auth.check_bearer): a wrong token is UNAUTHENTICATED too.
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
    lower = {"authorization": "bearer s3cret"}  # the scheme is case-insensitive (RFC 7235)
    r = httpx.post(url(running, "/v1/compare"), files=files, headers=lower, timeout=60)
    assert r.status_code == 200
    right = {"authorization": "Bearer s3cret"}
    r = httpx.post(url(running, "/v1/compare"), files=files, headers=right, timeout=60)
    assert r.status_code == 200 and r.json()["score"] > 0.999
    for path in ("/livez", "/healthz", "/readyz", "/"):
        assert httpx.get(url(running, path)).status_code == 200


def test_tls_and_mtls(extra_servers, tls_files):
    f = tls_files
    running = extra_servers(http_port=0, tls_cert=f["server.pem"], tls_key=f["server.key"])
    trust = ssl.create_default_context(cafile=f["ca.pem"])
    r = httpx.get(url(running, "/v1/models", "https"), verify=trust)
    assert r.status_code == 200 and r.json()["default_model"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(url(running, "/v1/models", "http"), timeout=3)

    mtls = extra_servers(
        http_port=0, tls_cert=f["server.pem"], tls_key=f["server.key"], tls_client_ca=f["ca.pem"]
    )
    with pytest.raises(httpx.HTTPError):  # no client certificate
        httpx.get(url(mtls, "/v1/models", "https"), verify=trust, timeout=3)
    trust.load_cert_chain(f["client.pem"], f["client.key"])
    assert httpx.get(url(mtls, "/v1/models", "https"), verify=trust).status_code == 200


def test_readyz_follows_the_health_state(extra_servers):
    running = extra_servers(http_port=0)
    assert httpx.get(url(running, "/readyz")).json()["status"] == "SERVING"
    asyncio.run_coroutine_threadsafe(running.aio.set_serving(False), running.loop).result()
    for path in ("/readyz", "/healthz"):  # /healthz is readiness too, kept for old probes
        r = httpx.get(url(running, path))
        assert r.status_code == 503 and r.json()["status"] == "NOT_SERVING"
        assert TEST_MODEL in r.json()["reason"]  # the dataplane's reason: the default model
    assert httpx.get(url(running, "/livez")).status_code == 200


def test_models_docs_and_metrics(extra_servers, photos):
    running = extra_servers(http_port=0, metrics_port=0)
    models = httpx.get(url(running, "/v1/models")).json()
    names = {m["name"] for m in models["models"]}
    assert models["default_model"] in names and "efficientnet-lite0" in names
    fields = {f.name for f in pb.ModelInfo.DESCRIPTOR.fields}
    assert all(set(m) == fields for m in models["models"])
    spec = httpx.get(url(running, "/openapi.json")).json()
    assert {"/v1/compare", "/v1/embed", "/v1/models"} <= set(spec["paths"])
    assert httpx.get(url(running, "/docs")).status_code == 200
    (img,) = distinct_jpegs(photos, 1, salt=9500)
    httpx.post(url(running, "/v1/compare"), files={"image_a": img, "image_b": img}, timeout=60)
    r = httpx.get(url(running, "/metrics"))  # no redirect to /metrics/
    assert r.status_code == 200 and not r.history
    assert 'imgsim_requests_total{code="OK",method="HTTP POST /v1/compare"}' in r.text


def test_unmatched_paths_share_one_metrics_label(extra_servers):
    """Before: every /v1/<anything> was a new Prometheus series (20,000 paths: 13 MB)."""
    running = extra_servers(http_port=0, metrics_port=0, auth_token="s3cret")
    with httpx.Client() as h:
        for i in range(200):
            h.get(url(running, f"/v1/no-such-{i}"))  # 401: before routing
            h.post(url(running, f"/v1/other-{i}"), headers={"authorization": "Bearer s3cret"})
        text = h.get(url(running, "/metrics")).text
    series = [line for line in text.splitlines() if line.startswith("imgsim_requests_total{")]
    assert not any("no-such" in line or "other-" in line for line in series)
    assert len(series) <= 4, series
    assert 'method="HTTP GET unmatched"' in text


def test_keep_alive_requests_do_not_wait_for_delayed_acks(http):
    """TCP_NODELAY on the HTTP socket: before, every request after the first on a keep-alive
    connection took 40+ ms (Nagle waiting for the client's delayed ACK)."""
    import statistics
    import time

    with httpx.Client() as h:
        h.get(url(http, "/healthz"))
        times = []
        for _ in range(10):
            started = time.perf_counter()
            h.get(url(http, "/healthz")).raise_for_status()
            times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02, times
