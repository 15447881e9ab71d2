"""The asyncio client against a real server, and every client call's timeout against a real
gRPC server that never answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from imgsim.v1 import similarity_pb2 as pb
from imgsim.v1 import similarity_pb2_grpc as pb_grpc

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_client.aio import AsyncImgsimClient
from imgsim_client.types import ImageRequest
from tests.conftest import distinct_jpegs


def test_the_asyncio_client_imports_nothing_heavy():
    probe = (
        "import sys, imgsim_client.aio\n"
        "bad = {'numpy', 'PIL', 'imgsim_server', 'imgsim_lab', 'torch', 'tqdm'}\n"
        "print(sorted(bad & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_asyncio_client_matches_the_sync_client(address, client, photos):
    images = distinct_jpegs(photos, 12, salt=20100)
    pairs = [PairRequest(str(i), images[i], images[(i + 1) % 12]) for i in range(12)]
    sync = {r.pair_id: r for r in client.compare_stream(pairs)}

    async def run():
        async with AsyncImgsimClient(address, timeout=120) as c:
            await c.wait_ready(10)
            streamed = {r.pair_id: r async for r in c.compare_stream(pairs)}
            unary = await c.compare_pair(images[0], images[1])
            vectors = [r async for r in c.embed_stream([ImageRequest("x", images[0])])]
            return streamed, unary, vectors, await c.list_models(), await c.stats()

    streamed, unary, vectors, listing, stats = asyncio.run(run())
    assert streamed.keys() == sync.keys()
    for key, res in streamed.items():
        assert res.ok and abs(res.score - sync[key].score) < 1e-6
        assert res.verdict == sync[key].verdict and res.model == sync[key].model
    assert abs(unary.score - sync["0"].score) < 1e-6
    assert len(vectors[0].vector) == 1280
    assert listing == client.list_models()
    assert stats.pairs_scored >= 12


class _Silent(pb_grpc.ImageSimilarityServicer):
    """A real gRPC server that reads every request and never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Compare(self, request, context):
        self.release.wait(30)
        return pb.CompareResponse()

    def CompareStream(self, request_iterator, context):
        for _ in request_iterator:
            pass
        self.release.wait(30)
        return iter(())

    def ListModels(self, request, context):
        self.release.wait(30)
        return pb.ListModelsResponse()

    def GetStats(self, request, context):
        self.release.wait(30)
        return pb.GetStatsResponse()


@pytest.fixture()
def silent_server():
    servicer = _Silent()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    pb_grpc.add_ImageSimilarityServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    servicer.release.set()
    server.stop(0)


PAIRS = [PairRequest(str(i), b"a", b"b") for i in range(3)]


@pytest.mark.parametrize("call", ["stream", "compare", "models", "stats"])
def test_every_sync_call_ends_within_its_timeout(silent_server, call):
    with ImgsimClient(silent_server, timeout=1.0) as c:
        run = {
            "stream": lambda: list(c.compare_stream(PAIRS)),
            "compare": lambda: c.compare(b"a", b"b"),
            "models": lambda: c.list_models(),
            "stats": lambda: c.stats(),
        }[call]
        started = time.monotonic()
        with pytest.raises(ImgsimError) as err:
            run()
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0


def test_every_async_call_ends_within_its_timeout(silent_server):
    async def run():
        async with AsyncImgsimClient(silent_server, timeout=1.0) as c:
            for call in (
                lambda: c.compare(b"a", b"b"),
                lambda: c.list_models(),
                lambda: _drain(c.compare_stream(PAIRS)),
            ):
                started = time.monotonic()
                with pytest.raises(ImgsimError) as err:
                    await call()
                assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started < 3.0

    asyncio.run(run())


async def _drain(stream) -> list:
    return [r async for r in stream]
