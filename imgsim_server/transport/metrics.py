"""Prometheus metrics (prometheus_client), served over HTTP with `--metrics-port`.

Transport-neutral: the gRPC interceptor and the HTTP middleware feed it status code names.

Each server has its own registry, so several servers in one process (tests) do not collide.
- `imgsim_requests_total{method,code}`: calls by gRPC method and final status (interceptor);
- `imgsim_pairs_total{code}`: pairs answered inside streams, by per-pair status;
- `imgsim_batch_size`, `imgsim_queue_seconds`, `imgsim_inference_seconds`: histograms fed by
  the dynamic batcher after each model batch;
- cache hits/misses, images cancelled, pairs scored/failed and the queue depth are read from the
  core when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from imgsim_server.core.dataplane import Dataplane

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _CoreCollector(Collector):
    """Counters the core already keeps, read at scrape time."""

    def __init__(self, core: Dataplane) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        core, cache = self.core, self.core.cache
        hits, misses = core.cache_counts()
        yield CounterMetricFamily(
            "imgsim_cache_hits", "Images served from the embedding cache or in-flight", hits
        )
        yield CounterMetricFamily("imgsim_cache_misses", "Images that had to be embedded", misses)
        yield CounterMetricFamily(
            "imgsim_images_cancelled",
            "Images dropped before the model because their callers had gone",
            core.images_cancelled,
        )
        pairs = CounterMetricFamily(
            "imgsim_core_pairs", "Pairs finished by the core", labels=["result"]
        )
        pairs.add_metric(["scored"], core.pairs_scored)
        pairs.add_metric(["failed"], core.pairs_failed)
        yield pairs
        yield GaugeMetricFamily(
            "imgsim_queue_depth", "Images waiting for the model", core.engines.queue_depth()
        )
        yield GaugeMetricFamily(
            "imgsim_cache_bytes", "Bytes held by the embedding cache", cache.nbytes
        )


class ServerMetrics:
    """The server's metrics registry and the hooks that feed it."""

    def __init__(self, core: Dataplane) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgsim_requests",
            "Calls by method (gRPC, or HTTP route) and final status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.pairs = Counter(
            "imgsim_pairs",
            "Pairs answered inside streams, by status",
            ["code"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imgsim_batch_size",
            "Images per model batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "imgsim_queue_seconds",
            "Time an image waited in the batch queue",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "imgsim_inference_seconds",
            "Model time per batch",
            ["model"],
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_CoreCollector(core))
        self.core = core
        core.batch_listeners.append(self.on_batch)
        self._http = None

    def on_batch(self, model: str, size: int, waits: list[float], inference_s: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(inference_s)
        queue = self.queue_seconds.labels(model)
        for w in waits:
            queue.observe(w)

    def on_pair(self, code: str) -> None:
        """A pair answered inside a stream, by status code name (`OK`, `INVALID_ARGUMENT`)."""
        self.pairs.labels(code).inc()

    def on_call(self, method: str, code: str) -> None:
        """A call (`Compare`, or `HTTP POST /v1/compare`) and its outcome (`OK`, `HTTP_400`)."""
        self.requests.labels(method, code).inc()

    def text(self) -> bytes:
        """The Prometheus exposition of this registry (HTTP's /metrics serves it)."""
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on host:port (0 = a free port); returns the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self.on_batch in self.core.batch_listeners:
            self.core.batch_listeners.remove(self.on_batch)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
