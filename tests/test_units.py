"""Unit tests of the core's parts, in-process: batcher, batch policy, cache, stream table, tokens.

The batcher runs a real (numpy) embedding function on real threads; times are kept short.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from imgsim_server.core.batcher import BatchPolicy, DynamicBatcher
from imgsim_server.core.cache import EmbeddingCache
from imgsim_server.core.dataplane import CallToken
from imgsim_server.errors import ConfigurationError, InvalidRequestError, OverloadedError
from imgsim_server.transport.stream_protocol import ImageSpec, StreamSession


class _Recorder:
    """An embed function that records batch sizes; rows are the inputs doubled."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.hold = hold

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.hold is not None:
            self.hold.wait(5)
        self.sizes.append(len(batch))
        return batch * 2.0


def _run(batcher: DynamicBatcher, n: int, wanted=lambda i: True) -> dict[int, object]:
    """Submit n items at once; wait for the wanted ones; returns item -> row or exception."""
    got: dict[int, object] = {}
    done = threading.Event()
    expected = sum(1 for i in range(n) if wanted(i))

    def callback(i: int):
        def cb(row, exc):
            got[i] = row if exc is None else exc
            if len(got) == expected:
                done.set()

        return cb

    for i in range(n):
        batcher.submit(np.full(3, float(i)), callback(i), lambda i=i: wanted(i))
    assert done.wait(5), got
    return got


def _blocked(policy: BatchPolicy) -> tuple[DynamicBatcher, _Recorder, threading.Event]:
    """A batcher whose first batch waits for the event, so that the queue fills meanwhile."""
    hold = threading.Event()
    rec = _Recorder(hold)
    return DynamicBatcher("t", rec, policy), rec, hold


def test_batches_never_exceed_the_max_batch_size():
    batcher, rec, hold = _blocked(BatchPolicy(max_batch_size=8, max_delay_s=0.05))
    try:
        threading.Timer(0.2, hold.set).start()
        got = _run(batcher, 30)
    finally:
        batcher.close()
    assert sorted(got) == list(range(30))
    assert all(np.array_equal(got[i], np.full(3, 2.0 * i)) for i in got)  # each its own row
    assert max(rec.sizes) == 8 and sum(rec.sizes) == 30


def test_preferred_size_closes_batches_below_the_max():
    policy = BatchPolicy(max_batch_size=32, preferred_batch_size=4, max_delay_s=0.05)
    batcher, rec, hold = _blocked(policy)
    try:
        threading.Timer(0.2, hold.set).start()
        _run(batcher, 20)
    finally:
        batcher.close()
    assert max(rec.sizes) == 4 and sum(rec.sizes) == 20


def test_delay_sends_a_partial_batch():
    batcher = DynamicBatcher("t", rec := _Recorder(), BatchPolicy(8, None, 0.05))
    try:
        started = time.perf_counter()
        _run(batcher, 3)
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    assert rec.sizes == [3]  # one batch, sent when the delay ran out, not at 8
    assert 0.04 <= elapsed < 1.0


def test_items_nobody_wants_are_dropped_before_the_model():
    batcher, rec, hold = _blocked(BatchPolicy(max_batch_size=32, max_delay_s=0.05))
    try:
        threading.Timer(0.2, hold.set).start()
        got = _run(batcher, 10, wanted=lambda i: i % 2 == 0)
    finally:
        batcher.close()
    assert sorted(got) == [0, 2, 4, 6, 8]
    assert sum(rec.sizes) == 5  # the five unwanted items never reached the model


def test_a_failing_model_fails_its_batch_only():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch

    batcher = DynamicBatcher("t", flaky, BatchPolicy(1, None, 0.0))
    try:
        got = _run(batcher, 2)
    finally:
        batcher.close()
    assert isinstance(got[0], RuntimeError) and np.array_equal(got[1], np.full(3, 1.0))


def test_batch_policy_meanings_are_independent_and_checked():
    # An explicit preferred size above the cap is an error, not silently lowered.
    with pytest.raises(ConfigurationError, match="must be between 1 and the max batch size 32"):
        BatchPolicy.choose(32, 64, None, 0.005)
    # The flag wins over the runtime; the runtime's default is lowered to a smaller cap.
    assert BatchPolicy.choose(32, 8, 4, 0.005).close_at == 8
    assert BatchPolicy.choose(32, 0, 4, 0.005).close_at == 4
    assert BatchPolicy.choose(2, 0, 4, 0.005).close_at == 2
    # No preference: batches fill to the cap, which stays the cap in every case.
    policy = BatchPolicy.choose(16, 0, None, 0.005)
    assert (policy.close_at, policy.max_batch_size) == (16, 16)
    assert BatchPolicy.choose(32, 0, 4, 0.005).max_batch_size == 32
    assert "close at 4 (runtime default), cap 32, wait up to 5 ms" in (
        BatchPolicy.choose(32, 0, 4, 0.005).describe()
    )


def test_server_refuses_a_preferred_size_above_the_max(capsys):
    from imgsim_server.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--max-batch-size", "8", "--preferred-batch-size", "16"])
    assert exit_.value.code == 2
    assert "--preferred-batch-size 16 exceeds --max-batch-size 8" in capsys.readouterr().err


def test_cache_evicts_least_recently_used_by_bytes():
    row = np.zeros(256, np.float32)  # 1 KiB each
    cache = EmbeddingCache(max_bytes=3 * row.nbytes)
    for k in "abc":
        cache.put(k, row.copy())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", row.copy())  # over the bound: b, the least recent, goes
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}
    assert cache.nbytes == 3 * row.nbytes and len(cache) == 3
    cache.put("huge", np.zeros(4096, np.float32))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.put("a", np.zeros(128, np.float32))  # replacing a key accounts its new size
    assert cache.nbytes == 2 * row.nbytes + 512


def test_stream_session_ids_refs_and_limits():
    session = StreamSession(max_bytes=10)
    assert session.resolve(ImageSpec(data=b"12345", id="x"), "image_a") == b"12345"
    assert session.resolve(ImageSpec(ref="x"), "image_b") == b"12345"
    # Re-sending an id keeps the first bytes and does not count twice.
    assert session.resolve(ImageSpec(data=b"12345", id="x"), "image_a") == b"12345"
    assert session.resolve(ImageSpec(data=b"abcde", id="y"), "image_a") == b"abcde"
    with pytest.raises(OverloadedError, match="image table is full"):
        session.resolve(ImageSpec(data=b"z", id="z"), "image_b")
    # Bytes without an id are not kept, so they never fill the table.
    assert session.resolve(ImageSpec(data=b"no id"), "image_a") == b"no id"
    with pytest.raises(InvalidRequestError, match="reference 'z' names no image"):
        session.resolve(ImageSpec(ref="z"), "image_b")
    with pytest.raises(InvalidRequestError, match="no image given"):
        session.resolve(ImageSpec(), "image_a")


def test_call_token_tells_a_deadline_from_a_cancel():
    expired = CallToken(timeout=0.0)
    time.sleep(0.001)
    assert expired.expired and expired.cancelled
    cancelled = CallToken(timeout=60)
    cancelled.cancel()
    assert cancelled.cancelled and not cancelled.expired
    assert not CallToken().cancelled and not CallToken().expired
