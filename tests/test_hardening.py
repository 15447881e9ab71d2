"""Bad input, limits, auth, TLS, health and reflection, over loopback."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_lab.faults import bad_inputs, encode
from tests.conftest import QUICK_RETRY, jpeg_bytes


@pytest.fixture(scope="module")
def cat(photos) -> Image.Image:
    return Image.open(photos["chelsea"]).convert("RGB")


def test_bad_images_fail_only_their_pair(client, cat):
    good = jpeg_bytes(cat)
    cases = bad_inputs(cat)
    pairs = [PairRequest("good-0", good, good)]
    pairs += [PairRequest(name, good, data) for name, (data, _) in cases.items()]
    pairs += [PairRequest("good-1", good, good)]
    got = {r.pair_id: r for r in client.compare_stream(pairs)}
    assert len(got) == len(pairs)
    assert got["good-0"].ok and got["good-1"].ok
    for name, (_, message) in cases.items():
        assert got[name].error_code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in got[name].error, (name, got[name].error)


@pytest.mark.parametrize("case", ["random", "truncated jpeg", "bomb", "pdf"])
def test_bad_image_unary_is_invalid_argument(client, cat, case):
    data, message = bad_inputs(cat)[case]
    started = time.perf_counter()
    with pytest.raises(ImgsimError) as err:
        client.compare(jpeg_bytes(cat), data)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.message
    if case == "bomb":
        assert time.perf_counter() - started < 1.0  # refused from the header


def test_unusual_modes_are_scored(client, cat):
    upright = jpeg_bytes(cat, 95)
    gray16 = Image.fromarray(np.asarray(cat.convert("L"), dtype=np.uint16) * 257)
    rgba = cat.convert("RGBA")
    frames = [cat, cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    cases = {
        "16-bit gray png": encode(gray16, "PNG"),
        "cmyk jpeg": encode(cat.convert("CMYK"), "JPEG", quality=95),
        # transparency on the one palette index the image does not use
        "palette+transparency png": encode(
            cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=255), "PNG", transparency=255
        ),
        "rgba png": encode(rgba, "PNG"),
        "animated gif (first frame)": encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:]
        ),
        "webp": encode(cat, "WEBP", quality=90),
    }
    for name, data in cases.items():
        score = client.compare(upright, data)
        floor = 0.85 if "gray" in name else 0.95  # grayscale loses colour, not content
        assert score >= floor, (name, score)


def test_oversized_message_is_resource_exhausted(extra_server, cat):
    address = extra_server(max_message_mb=1)
    with ImgsimClient(address, timeout=30) as c:
        big = np.random.default_rng(1).bytes(2 * 1024 * 1024)
        with pytest.raises(ImgsimError) as err:
            c.compare(big, big)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        good = jpeg_bytes(cat)
        assert c.compare(good, good) >= 0.999  # still healthy


def test_bearer_token(extra_server, cat):
    address = extra_server(auth_token="s3cret")
    good = jpeg_bytes(cat)
    for token in ("", "wrong"):
        with ImgsimClient(address, timeout=10, auth_token=token) as c:
            with pytest.raises(ImgsimError) as err:
                c.compare(good, good)
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(ImgsimError) as err:
                list(c.compare_stream([PairRequest("p", good, good)]))
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with ImgsimClient(address, timeout=10, auth_token="s3cret") as c:
        assert c.compare(good, good) >= 0.999
    with grpc.insecure_channel(address) as ch:  # health stays open, by design
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_and_mtls(extra_server, tls_files, cat):
    f = tls_files
    good = jpeg_bytes(cat)
    tls = extra_server(tls_cert=f["server.pem"], tls_key=f["server.key"])
    with ImgsimClient(tls, timeout=10, tls_ca=f["ca.pem"]) as c:
        assert c.compare(good, good) >= 0.999
    with ImgsimClient(tls, timeout=3, retry=QUICK_RETRY) as c:  # plaintext client, TLS server
        with pytest.raises(ImgsimError) as err:
            c.compare(good, good)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE

    mtls = extra_server(
        tls_cert=f["server.pem"], tls_key=f["server.key"], tls_client_ca=f["ca.pem"]
    )
    with ImgsimClient(
        mtls, timeout=10, tls_ca=f["ca.pem"], tls_cert=f["client.pem"], tls_key=f["client.key"]
    ) as c:
        assert c.compare(good, good) >= 0.999
    # no client certificate
    with ImgsimClient(mtls, timeout=3, tls_ca=f["ca.pem"], retry=QUICK_RETRY) as c:
        with pytest.raises(ImgsimError) as err:
            c.compare(good, good)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection(address):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="imgsim.v1.ImageSimilarity"), timeout=5
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([req]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert "imgsim.v1.ImageSimilarity" in names


def test_stream_limit_refuses_streams_only(extra_server, cat):
    """Past --max-concurrent-streams a new stream gets RESOURCE_EXHAUSTED; unary calls and
    control calls still answer; once the stream ends, its slot is free again."""
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    address = extra_server(max_concurrent_streams=1)
    good = jpeg_bytes(cat)
    release = threading.Event()
    first_sent = threading.Event()

    def slow_requests():
        yield PairRequest("held", good, good)
        first_sent.set()
        release.wait(10)  # keep the stream (and the only stream slot) open

    with ImgsimClient(address, timeout=10) as holder, ImgsimClient(address, timeout=10) as c:
        results = []
        t = threading.Thread(target=lambda: results.extend(holder.compare_stream(slow_requests())))
        t.start()
        assert first_sent.wait(10)
        time.sleep(0.2)
        with pytest.raises(ImgsimError) as err:
            list(c.compare_stream([PairRequest("refused", good, good)]))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-streams" in err.value.message
        assert c.compare(good, good) >= 0.999  # unary calls take no stream slot
        with grpc.insecure_channel(address) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        release.set()
        t.join(10)
        assert [r.pair_id for r in results] == ["held"] and results[0].ok
        assert [r.ok for r in c.compare_stream([PairRequest("again", good, good)])] == [True]


def test_sigterm_finishes_in_flight_pairs(cat):
    import signal

    from imgsim_lab.servers import ServerProcess

    images = [
        jpeg_bytes(cat.crop((k, k, cat.width - k, cat.height - k)), 85) for k in range(3, 123)
    ]
    pairs = [PairRequest(str(i), images[2 * i], images[2 * i + 1]) for i in range(60)]
    with (
        ServerProcess("--grace", "20") as srv,
        ImgsimClient(srv.address, timeout=30, retry=QUICK_RETRY) as c,
    ):
        c.wait_ready(30)
        results = []
        for res in c.compare_stream(pairs):
            if not results:
                srv.proc.send_signal(signal.SIGTERM)
            results.append(res)
        assert sorted(int(r.pair_id) for r in results) == list(range(60))
        assert all(r.ok for r in results)
        assert srv.proc.wait(30) == 0
        with pytest.raises(ImgsimError) as err:
            c.compare(images[0], images[1], timeout=3)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_control_calls_answer_with_every_stream_slot_idle(extra_servers, cat):
    """64 idle streams (the default limit) hold no threads: health and ListModels answer in
    under a second, a 65th stream is refused, and a client scores once a slot frees."""
    import threading

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from imgsim.v1 import similarity_pb2 as pb
    from imgsim.v1 import similarity_pb2_grpc as pb_grpc

    running = extra_servers()
    limit = running.servicer.slots.limit
    assert limit == 64
    address = f"127.0.0.1:{running.port}"
    release = threading.Event()

    def silent():
        release.wait(30)
        yield from ()

    good = jpeg_bytes(cat)
    with grpc.insecure_channel(address) as channel, ImgsimClient(address, timeout=10) as c:
        stub = pb_grpc.ImageSimilarityStub(channel)
        idle = [stub.CompareStream(silent(), timeout=30) for _ in range(limit)]
        deadline = time.monotonic() + 10
        while running.servicer.slots.active < limit and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.servicer.slots.active == limit
        started = time.perf_counter()
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=1
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert stub.ListModels(pb.ListModelsRequest(), timeout=1).default_model
        assert time.perf_counter() - started < 1.0
        with pytest.raises(ImgsimError) as err:
            list(c.compare_stream([PairRequest("one-too-many", good, good)]))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        idle[0].cancel()  # a slot frees
        deadline = time.monotonic() + 10
        while running.servicer.slots.active >= limit and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.ok for r in c.compare_stream([PairRequest("now", good, good)])] == [True]
        release.set()
        for call in idle:
            call.cancel()


def test_idle_stream_is_closed_after_the_timeout(extra_servers, cat):
    import threading

    running = extra_servers(stream_idle_timeout_s=0.5)
    good = jpeg_bytes(cat)
    release = threading.Event()

    def one_then_silence():
        yield PairRequest("only", good, good)
        release.wait(20)

    started = time.monotonic()
    results = []
    with (
        ImgsimClient(f"127.0.0.1:{running.port}", timeout=10) as c,
        pytest.raises(ImgsimError) as err,
    ):
        for res in c.compare_stream(one_then_silence()):
            results.append(res)
    release.set()
    assert [r.pair_id for r in results] == ["only"]  # answered first, then closed as idle
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--stream-idle-timeout" in err.value.message
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 2  # the handler's cleanup may finish just after the status
    while running.servicer.slots.active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.servicer.slots.active == 0  # its slot is free again
