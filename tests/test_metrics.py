"""The Prometheus endpoint: requests by status, pairs by status, batching and cache figures."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from tests.conftest import distinct_jpegs


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint(extra_servers, photos):
    running = extra_servers(metrics_port=0)
    assert running.metrics_port
    # The cache counters belong to the core, which this server shares with the session's:
    # count the difference over this test.
    before = _scrape(running.metrics_port)
    images = distinct_jpegs(photos, 11, salt=20)
    pairs = [PairRequest(str(i), images[i], images[i + 1]) for i in range(10)]
    pairs.append(PairRequest("bad", images[0], b"not an image"))
    pairs.append(PairRequest("again", images[0], images[1]))  # both cached by now or in flight
    with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
        results = list(c.compare_stream(pairs))
        with pytest.raises(ImgsimError):
            c.compare(images[0], b"")
        c.compare(images[2], images[3])
    assert len(results) == 12
    m = _scrape(running.metrics_port)

    def value(name: str, **labels) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("imgsim_requests_total", method="CompareStream", code="OK") == 1
    assert value("imgsim_requests_total", method="Compare", code="INVALID_ARGUMENT") == 1
    assert value("imgsim_requests_total", method="Compare", code="OK") == 1
    assert value("imgsim_pairs_total", code="OK") == 11
    assert value("imgsim_pairs_total", code="INVALID_ARGUMENT") == 1
    model = "efficientnet-lite0"
    batches = value("imgsim_batch_size_count", model=model)
    embedded = value("imgsim_batch_size_sum", model=model)
    # 11 distinct images, each embedded once however many pairs use it.
    assert embedded == 11 and 1 <= batches <= 11
    assert value("imgsim_queue_seconds_count", model=model) == embedded
    assert value("imgsim_inference_seconds_count", model=model) == batches
    assert value("imgsim_inference_seconds_sum", model=model) > 0
    # 20 lookups in the ten chained pairs find 11 distinct images: 9 hits. 'bad': image 0 is
    # a hit, the garbage a miss. 'again': 2 hits. Unary: image 0 a hit, b"" a miss; then
    # images 2 and 3 are 2 hits. A hit is a cached image or one joined while in flight.
    hits = value("imgsim_cache_hits_total") - before.get(("imgsim_cache_hits_total", ()), 0)
    misses = value("imgsim_cache_misses_total") - before.get(("imgsim_cache_misses_total", ()), 0)
    assert (hits, misses) == (9 + 1 + 2 + 1 + 2, 11 + 1 + 1)
    assert value("imgsim_queue_depth") == 0
