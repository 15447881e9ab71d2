"""Dynamic batching in the style of Triton: one queue, one worker that forms batches.

Items from every caller (unary and streams alike) go into one queue. The worker takes what is
there, waits at most `max_delay_s` for the batch to reach `max_batch_size`, runs the model once,
and resolves each item's future.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@dataclass
class _Job:
    x: np.ndarray
    future: Future
    enqueued: float


_STOP = object()


class DynamicBatcher:
    """Collects single inputs into batches for `embed_fn` on dedicated worker threads."""

    def __init__(
        self,
        name: str,
        embed_fn: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        max_delay_s: float = 0.005,
        workers: int = 1,
    ) -> None:
        self.name = name
        self.embed_fn = embed_fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._stats_lock = threading.Lock()
        # Several workers run batches concurrently when the embedder supports it (ONNX Runtime
        # sessions with one thread each): a stalled worker then delays only its own batch.
        self._threads = [
            threading.Thread(target=self._run, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, x: np.ndarray) -> Future:
        """Queue one preprocessed input; the future resolves to its embedding row."""
        fut: Future = Future()
        self._queue.put(_Job(x, fut, time.perf_counter()))
        return fut

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = 5.0) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=remaining)
                )
            except queue.Empty:
                break
            if item is _STOP:
                return jobs, True
            jobs.append(item)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._collect(first)
            # Skip inputs whose callers already gave up (cancelled futures).
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                out = self.embed_fn(np.stack([j.x for j in jobs]))
            except Exception as exc:  # the model failed: every item of the batch fails
                log.exception("model %s failed on a batch of %d", self.name, len(jobs))
                for j in jobs:
                    j.future.set_exception(exc)
                continue
            finished = time.perf_counter()
            with self._stats_lock:
                s = self.stats
                s.batches += 1
                s.items += len(jobs)
                s.max_batch_seen = max(s.max_batch_seen, len(jobs))
                s.inference_s += finished - started
                s.queue_s += sum(started - j.enqueued for j in jobs)
                s.histogram[len(jobs)] = s.histogram.get(len(jobs), 0) + 1
            for j, row in zip(jobs, out, strict=True):
                j.future.set_result(row)
