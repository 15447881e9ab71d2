"""Dynamic batching in the style of Triton: one queue, one worker that forms batches.

Items from every caller (unary and streams alike) go into one queue. The worker takes what is
there, waits at most `max_delay_s` for the batch to reach `max_batch_size`, runs the model once,
and hands each item its row through the item's callback. Items nobody wants any more (their
callers went away) are dropped before the model runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
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


Done = Callable[[np.ndarray | None, BaseException | None], None]
"""Receives (embedding row, None) or (None, the exception that failed the batch)."""


@dataclass
class _Job:
    x: np.ndarray
    done: Done
    wanted: Callable[[], bool]
    enqueued: float


def _always() -> bool:
    return True


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
        on_batch: Callable[[str, int, list[float], float], None] | None = None,
    ) -> None:
        self.name = name
        self.embed_fn = embed_fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.stats = BatchStats()
        self.on_batch = on_batch
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

    def submit(self, x: np.ndarray, done: Done, wanted: Callable[[], bool] = _always) -> None:
        """Queue one preprocessed input; `done` gets its embedding row (on a batcher thread).

        `wanted()` is asked just before the model runs; if False the item is dropped silently
        (the caller's `wanted` is expected to settle the item itself).
        """
        self._queue.put(_Job(x, done, wanted, time.perf_counter()))

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
            # Skip inputs whose callers already gave up (their `wanted` settles and counts them).
            jobs = [j for j in jobs if j.wanted()]
            if not jobs:
                continue
            started = time.perf_counter()
            try:
                out = self.embed_fn(np.stack([j.x for j in jobs]))
            except Exception as exc:  # the model failed: every item of the batch fails
                log.exception("model %s failed on a batch of %d", self.name, len(jobs))
                for j in jobs:
                    j.done(None, exc)
                continue
            finished = time.perf_counter()
            waits = [started - j.enqueued for j in jobs]
            with self._stats_lock:
                s = self.stats
                s.batches += 1
                s.items += len(jobs)
                s.max_batch_seen = max(s.max_batch_seen, len(jobs))
                s.inference_s += finished - started
                s.queue_s += sum(waits)
                s.histogram[len(jobs)] = s.histogram.get(len(jobs), 0) + 1
            # A listener's or caller's bug must not kill the batcher or starve other items.
            if self.on_batch is not None:
                try:
                    self.on_batch(self.name, len(jobs), waits, finished - started)
                except Exception:
                    log.exception("batch listener failed")
            for j, row in zip(jobs, out, strict=True):
                try:
                    j.done(row, None)
                except Exception:
                    log.exception("batch callback failed")
