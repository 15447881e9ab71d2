"""Deadlines and cancellation: no model work for callers that have gone, resources freed."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_client._convert import pair_request
from tests.conftest import distinct_jpegs

N_PAIRS = 200


def _counts(client: ImgsimClient) -> tuple[int, int]:
    """(images embedded by the default model, images dropped as cancelled) so far."""
    stats = client.stats()
    model = next(m for m in stats.models if m.model == "efficientnet-lite0")
    return model.images_embedded, stats.images_cancelled


def _settled(client: ImgsimClient, timeout: float = 20.0) -> tuple[int, int]:
    """The counts once the server has nothing queued and they stop moving."""
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _counts(client)
        if now == last and client.stats().queue_depth == 0:
            return now
        last = now
        time.sleep(0.3)
    pytest.fail("the server's counters never settled")


def _pairs(images: list[bytes]) -> list[PairRequest]:
    return [PairRequest(str(i), images[2 * i], images[2 * i + 1]) for i in range(len(images) // 2)]


def test_cancelled_stream_spends_no_more_model_work(client, address, photos, server):
    # What may still run after the cancel: the batches already in the model, and those that
    # started while the cancel crossed the wire: two rounds of every batcher worker, however
    # many cores (workers) this machine has.
    engine = server.core.engines.get("")
    in_model = engine.embedder.concurrency() * engine.policy.close_at
    assert 2 * in_model < N_PAIRS, "too few pairs to tell dropped work from done work here"
    images = distinct_jpegs(photos, 2 * N_PAIRS, salt=10)
    embedded0, cancelled0 = _settled(client)
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.ImageSimilarityStub(channel).CompareStream(
            iter([pair_request(p) for p in _pairs(images)]), timeout=60
        )
        first = next(call)
        assert first.pair_id and not first.HasField("error")
        time.sleep(0.1)  # let the client push more pairs than the server can embed meanwhile
        call.cancel()
        at_cancel, _ = _counts(client)
    embedded, cancelled = _settled(client)
    # Only batches already in the model ran afterwards; everything queued was dropped unembedded.
    assert embedded - at_cancel <= 2 * in_model, (at_cancel, embedded, in_model)
    assert cancelled - cancelled0 >= 20, (embedded - embedded0, cancelled - cancelled0)
    assert (embedded - embedded0) + (cancelled - cancelled0) <= 2 * N_PAIRS
    # Resources were freed: a stream as large as the admission queue still runs to the end.
    again = distinct_jpegs(photos, 2 * 150, salt=11)
    results = list(client.compare_stream(_pairs(again), timeout=120))
    assert len(results) == 150 and all(r.ok for r in results)


def test_stream_deadline_stops_the_work(client, photos):
    images = distinct_jpegs(photos, 2 * N_PAIRS, salt=12)
    embedded0, cancelled0 = _settled(client)
    with pytest.raises(ImgsimError) as err:
        list(client.compare_stream(_pairs(images), timeout=0.4))
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    embedded, cancelled = _settled(client)
    assert cancelled - cancelled0 >= 10, (embedded - embedded0, cancelled - cancelled0)
    assert (embedded - embedded0) + (cancelled - cancelled0) <= 2 * N_PAIRS


def test_unary_deadline_is_deadline_exceeded(client, photos):
    a, b = distinct_jpegs(photos, 2, salt=13)
    with pytest.raises(ImgsimError) as err:
        client.compare(a, b, timeout=0.001)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.compare(a, b) < 1.0  # and the server answers the next call


def test_client_that_stops_reading_stops_the_server_reading(client, address, photos):
    """Backpressure end to end: a client that reads no answers (and whose transport window
    stays small, as on a congested link) soon stops being read, so nothing piles up."""
    a, b = distinct_jpegs(photos, 2, salt=14)
    n = 10_000
    first = pair_request(PairRequest("0", a, b, id_a="a", id_b="b"))
    refs = (pair_request(PairRequest(str(i), ref_a="a", ref_b="b")) for i in range(1, n))
    scored0 = client.stats().pairs_scored
    with grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = pb_grpc.ImageSimilarityStub(channel).CompareStream(
            itertools.chain([first], refs), timeout=120
        )
        plateau = []
        for _ in range(20):
            time.sleep(0.25)
            plateau.append(client.stats().pairs_scored - scored0)
            if len(plateau) >= 4 and plateau[-1] == plateau[-4]:
                break
        assert plateau[-1] == plateau[-4], plateau  # the server stopped reading
        # It stops near 2,100 pairs: the 256-pair window plus what the transports buffer.
        assert plateau[-1] < n // 3, plateau
        assert len({r.pair_id for r in call}) == n  # reading again: every pair answered
