"""Dynamic batching in the style of Triton: one queue, workers that form batches.

Items from every caller (unary and streams alike) go into one queue. A worker takes what is
there and waits at most `max_delay_s` for the batch to reach its closing size (the policy's
preferred size, else its maximum), runs the model once, and hands each item its row through
the item's callback. Items nobody wants any more (their callers went away) are dropped before
the model runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgsim_server.errors import ConfigurationError, OverloadedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How batches form (Triton's dynamic_batching: max_batch_size, preferred_batch_size,
    max_queue_delay).

    - `max_batch_size` is the hard cap: no batch is ever larger (it also bounds the runtime's
      memory arena).
    - `preferred_batch_size` is where a batch closes at once, without waiting for more; it may
      not exceed the cap. None: batches fill up to the cap.
    - `max_delay_s` is the longest wait, after the first item, for the batch to fill.
    """

    max_batch_size: int = 32
    preferred_batch_size: int | None = None
    max_delay_s: float = 0.005
    preferred_from: str = ""  # where the preferred size came from, for the log

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigurationError(f"max batch size must be >= 1, not {self.max_batch_size}")
        p = self.preferred_batch_size
        if p is not None and not 1 <= p <= self.max_batch_size:
            raise ConfigurationError(
                f"preferred batch size {p} must be between 1 and the max batch size "
                f"{self.max_batch_size}"
            )

    @property
    def close_at(self) -> int:
        """The size at which a batch stops collecting."""
        return self.preferred_batch_size or self.max_batch_size

    @classmethod
    def choose(
        cls, max_batch_size: int, flag: int, runtime: int | None, max_delay_s: float
    ) -> BatchPolicy:
        """The policy from the flags and the runtime's own preference.

        An explicit preferred size (`flag` > 0) must fit under the cap (else ConfigurationError);
        the runtime's default preference is lowered to the cap when the cap is smaller.
        """
        if flag:
            return cls(max_batch_size, flag, max_delay_s, "--preferred-batch-size")
        if runtime:
            return cls(max_batch_size, min(runtime, max_batch_size), max_delay_s, "runtime default")
        return cls(max_batch_size, None, max_delay_s)

    def describe(self) -> str:
        pref = (
            f"close at {self.preferred_batch_size} ({self.preferred_from})"
            if self.preferred_batch_size
            else "no preferred size, fill to the cap"
        )
        return f"{pref}, cap {self.max_batch_size}, wait up to {self.max_delay_s * 1000:g} ms"


@dataclass
class BatchStats:
    """A model's batching since it loaded (the names are GetStats' ModelStats fields)."""

    batches: int = 0
    images_embedded: int = 0
    max_batch_size_seen: int = 0
    queue_s: float = 0.0
    inference_s: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.images_embedded / self.batches if self.batches else 0.0

    @property
    def mean_queue_ms(self) -> float:
        """Mean wait of an image in the queue."""
        return 1000 * self.queue_s / self.images_embedded if self.images_embedded else 0.0

    @property
    def mean_inference_ms(self) -> float:
        """Mean model time of a batch."""
        return 1000 * self.inference_s / self.batches if self.batches else 0.0


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
        policy: BatchPolicy | None = None,
        workers: int = 1,
        on_batch: Callable[[str, int, list[float], float], None] | None = None,
        collate: Callable[[list], object] = np.stack,
    ) -> None:
        self.name = name
        self.embed_fn = embed_fn
        self.collate = collate  # the batch embed_fn takes, from the queued inputs
        self.policy = policy or BatchPolicy()
        self.stats = BatchStats()
        self.on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
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
        (the caller's `wanted` is expected to settle the item itself). Once the batcher is
        closed (its model unloaded), `done` gets OverloadedError at once: retry loads it again.
        """
        with self._close_lock:
            if not self._closed:
                self._queue.put(_Job(x, done, wanted, time.perf_counter()))
                return
        done(None, OverloadedError(f"model {self.name} was just unloaded; retry"))

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the work queued so far (every queued item is still answered)."""
        with self._close_lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs = [first]
        deadline = time.perf_counter() + self.policy.max_delay_s
        while len(jobs) < self.policy.close_at:
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
                out = self.embed_fn(self.collate([j.x for j in jobs]))
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
                s.images_embedded += len(jobs)
                s.max_batch_size_seen = max(s.max_batch_size_seen, len(jobs))
                s.inference_s += finished - started
                s.queue_s += sum(waits)
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
