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
    assert value("imgsim_cache_hits_total") >= 3  # 'again' and the second Compare
    assert "imgsim_queue_depth" in {name for name, _ in m}
