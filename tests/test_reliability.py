"""No client can take the server down, and no run loses or mixes data (real server, real model).

One test (or a few) per item of the reliability review: slow HTTP clients, the memory budget,
the model allowlist, bounded error echoes, resume with another model, interrupted embeds,
non-UTF-8 names, malformed CSVs, evaluate on bad rows, redefined stream ids.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_client.cli import main
from imgsim_server.config import COLLECTION_MODEL, CoreConfig, ServerConfig
from imgsim_server.server import start_server
from tests.conftest import TEST_MODEL, distinct_jpegs

httpx = pytest.importorskip("httpx")
pytest.importorskip("imgsim_server.transport.http_server", reason="the [http] extra is missing")


def _health(port: int, timeout: float = 2.0) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `sock` within `seconds`, and what it sent before."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
        return True, got
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


# ---- 1. slow HTTP clients -------------------------------------------------------------------


def test_slow_http_clients_are_cut_and_grpc_keeps_answering(extra_servers):
    running = extra_servers(http_port=0, http_request_timeout_s=1.0, http_max_connections=20)
    limits = running.aio.http.limits
    slow = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", running.http_port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        slow.append(s)
    time.sleep(0.2)
    # At the cap, a new client still gets in: the connection waiting longest for its headers
    # makes room (408), not the newcomer, so slow clients cannot lock everyone out.
    assert httpx.get(f"http://127.0.0.1:{running.http_port}/healthz").status_code == 200
    closed, data = _closed_within(slow.pop(0), 0.5)
    assert closed and data.startswith(b"HTTP/1.1 408") and limits.refused >= 1
    assert _health(running.port) == health_pb2.HealthCheckResponse.SERVING
    # A client that trickles a byte every 0.2 s is cut all the same (before: never).
    trickle = slow[0]
    started = time.monotonic()
    trickle.settimeout(0.05)
    got = b""
    while time.monotonic() - started < 5:
        try:
            trickle.sendall(b"X")
        except OSError:
            break
        try:
            chunk = trickle.recv(4096)
            got += chunk
            if not chunk:
                break
        except TimeoutError:
            pass
        time.sleep(0.2)
    assert time.monotonic() - started < 3, "the trickling client was not cut"
    assert b"408" in got
    for s in slow[1:]:
        closed, data = _closed_within(s, 3)
        assert closed and data.startswith(b"HTTP/1.1 408"), data
        s.close()
    assert limits.timed_out >= 19
    # And the HTTP side serves again.
    assert httpx.get(f"http://127.0.0.1:{running.http_port}/healthz").status_code == 200


def test_a_slow_body_is_cut_after_its_allowance(extra_servers):
    running = extra_servers(http_port=0, http_request_timeout_s=0.5, http_min_body_rate=1000)
    s = socket.create_connection(("127.0.0.1", running.http_port))
    s.sendall(
        b"POST /v1/compare HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )  # allowance: 0.5 s + 1000 B / 1000 B/s
    started = time.monotonic()
    closed, data = _closed_within(s, 5)
    assert closed and 1.2 < time.monotonic() - started < 3.5, data


def test_the_connection_cap_follows_a_low_open_file_limit():
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
        "from imgsim_server.transport.http_limits import connection_cap; print(connection_cap())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cap = int(out.stdout)
    assert 16 <= cap <= 1024 // 2


def test_repeated_log_records_are_rate_limited():
    import logging

    from imgsim_server.logs import RateLimitFilter

    f = RateLimitFilter(burst=5, period_s=60)
    records = [
        logging.LogRecord("asyncio", logging.ERROR, "x", 1, "accept failed: %s", ("EMFILE",), None)
        for _ in range(10_000)
    ]
    assert sum(f.filter(r) for r in records) == 5
    other = logging.LogRecord("x", logging.INFO, "x", 1, "something else", (), None)
    assert f.filter(other)


# ---- 2. memory budget -----------------------------------------------------------------------


def _noise_png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_the_memory_budget_refuses_what_would_exceed_it(photos):
    core = CoreConfig(default_model=TEST_MODEL, memory_budget_mb=16)
    running = start_server(ServerConfig(port=0, http_port=0, core=core))
    try:
        running.core.warm_up(TEST_MODEL)
        big = [_noise_png(1200, seed) for seed in range(6)]  # ~4.3 MB each, 11.5 MB decoded
        (small,) = distinct_jpegs(photos, 1, salt=9700)
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            # Six 4 MB images kept in one stream's table (11 MB each while decoded): over
            # the budget, pairs are refused one by one; the stream and the other pairs go on.
            reqs = [PairRequest("small", small, small)]
            reqs += [PairRequest(f"b{i}", d, None, id_a=f"#{i}", ref_b=f"#{i}") for i, d in
                     enumerate(big)]  # fmt: skip
            got = {r.pair_id: r for r in c.compare_stream(reqs)}
            assert len(got) == 7 and got["small"].ok
            refused = [
                r for r in got.values() if r.error_code == grpc.StatusCode.RESOURCE_EXHAUSTED
            ]
            assert refused and "memory budget" in refused[0].error
            assert all(r.ok or r in refused for r in got.values())
        # The stream's table was given back when it ended.
        assert running.core.budget.held == 0
        # HTTP: a body that cannot fit is refused with 429 before it is read.
        body = json.dumps({"image_a": "x" * 6_000_000, "image_b": "x"})
        r = httpx.post(
            f"http://127.0.0.1:{running.http_port}/v1/compare",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 429 and r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert running.core.budget.held == 0
    finally:
        running.stop(0)


# ---- 3. which models a client may load ------------------------------------------------------


def test_only_the_served_models_load_and_the_oldest_is_unloaded(photos):
    core = CoreConfig(default_model=TEST_MODEL, max_loaded_models=2)
    running = start_server(ServerConfig(port=0, core=core))
    try:
        running.core.warm_up(TEST_MODEL)
        a, b = distinct_jpegs(photos, 2, salt=9710)
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            listed = {m.name for m in c.list_models().models}
            # face: served where its extra is installed (it loads on its first request only)
            face = {"face"} if importlib.util.find_spec("dlib") else set()
            assert listed == {TEST_MODEL, COLLECTION_MODEL, "phash", "color-hist", "pixels", *face}
            with pytest.raises(ImgsimError) as err:
                c.compare(a, b, model="efficientnet-lite2")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert "--models" in err.value.message
            for model in ("phash", "color-hist", "pixels"):
                c.compare(a, b, model=model)
            loaded = set(running.core.engines.batch_stats())
            assert len(loaded) == 2 and TEST_MODEL in loaded and "pixels" in loaded
            assert running.core.engines.unloaded == 2
            assert c.compare(a, b, model="phash") > 0  # loads again on demand
    finally:
        running.stop(0)


def test_a_request_never_exports_a_graph(photos, tmp_path):
    pytest.importorskip("torch")
    core = CoreConfig(default_model="phash", models=("all",), onnx_dir=tmp_path)
    running = start_server(ServerConfig(port=0, core=core))
    try:
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            data = photos["coffee"].read_bytes()
            with pytest.raises(ImgsimError) as err:
                c.compare(data, data, model="efficientnet-lite0")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "imgsim-server export --model efficientnet-lite0" in err.value.message
        assert list(tmp_path.iterdir()) == []  # nothing was exported
    finally:
        running.stop(0)


# ---- 5. what an error repeats ---------------------------------------------------------------


def test_a_huge_model_name_is_not_echoed(client, photos):
    data = photos["coffee"].read_bytes()
    with pytest.raises(ImgsimError) as err:
        client.compare(data, data, model="m" * 100_000)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert len(err.value.message) < 3000
    [res] = client.compare_stream([PairRequest("p", data, data, model="m" * 100_000)])
    assert res.error_code == grpc.StatusCode.NOT_FOUND and len(res.error) < 3000


# ---- 11. stream ids -------------------------------------------------------------------------


def test_a_redefined_image_id_is_refused_per_pair(client, photos):
    a, b = distinct_jpegs(photos, 2, salt=9720)
    got = {
        r.pair_id: r
        for r in client.compare_stream(
            [
                PairRequest("first", a, a, id_a="#x"),
                PairRequest("again", b, b, id_a="#x"),  # other bytes under the same id
                PairRequest("same", a, a, id_a="#x"),  # the same bytes again: fine
                PairRequest("ref", None, a, ref_a="#x"),
            ]
        )
    }
    assert got["first"].ok and got["same"].ok
    assert got["again"].error_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "already defined" in got["again"].error
    assert got["ref"].score == pytest.approx(1.0)  # the first definition stays


def test_identical_images_score_at_most_one(client, photos):
    data = photos["chelsea"].read_bytes()
    assert client.compare(data, data) <= 1.0
    [res] = client.compare_stream([PairRequest("p", data, data)])
    assert res.score <= 1.0 and res.score == pytest.approx(1.0)


def test_errors_name_the_image_that_failed(client, photos):
    good = photos["coffee"].read_bytes()
    with pytest.raises(ImgsimError) as err:
        client.compare(good, b"\xff\xd8\xff not really a jpeg")
    assert err.value.message.startswith("image_b: ")


# ---- 6. resume with another model -----------------------------------------------------------


@pytest.fixture()
def small_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, data in enumerate(distinct_jpegs(photos, 6, salt=9730)):
        (folder / f"{i}.jpg").write_bytes(data)
    return folder


def test_resume_with_another_model_is_refused(small_folder, address, tmp_path):
    pairs = tmp_path / "pairs.csv"
    files = sorted(small_folder.iterdir())
    pd.DataFrame({"image_a": files[:3], "image_b": files[3:]}).to_csv(pairs, index=False)
    out = tmp_path / "scores.csv"
    common = ["--server", address, "--no-progress"]
    assert main([str(pairs), "-o", str(out), *common]) == 0
    assert set(pd.read_csv(out)["model"]) == {TEST_MODEL}
    before = out.read_bytes()
    assert main([str(pairs), "-o", str(out), "--resume", "--model", "phash", *common]) == 1
    assert out.read_bytes() == before
    assert main([str(pairs), "-o", str(out), "--resume", *common]) == 0  # same model: fine

    vectors = tmp_path / "v.parquet"
    assert main(["embed", str(small_folder), "-o", str(vectors), *common]) == 0
    before = vectors.read_bytes()
    args = ["embed", str(small_folder), "-o", str(vectors), "--resume", "--model", "phash"]
    assert main([*args, *common]) == 1
    assert vectors.read_bytes() == before


# ---- 7. interrupted embeds ------------------------------------------------------------------


def _many_photos(folder: Path, photo: Path, tag: str, n: int = 240) -> Path:
    """n distinct 900 px JPEGs (rotations of one photo): enough work to interrupt."""
    folder.mkdir()
    src = Image.open(photo).convert("RGB").resize((900, 900))
    for i in range(n):
        buf = io.BytesIO()
        src.rotate(i * 1.5).save(buf, "JPEG", quality=90, comment=f"{tag} {i}".encode())
        (folder / f"{i:03d}.jpg").write_bytes(buf.getvalue())
    return folder


def test_an_embed_killed_midway_resumes_with_every_image_once(address, photos, tmp_path):
    folder = _many_photos(tmp_path / "many", photos["astronaut"], "kill")
    out = tmp_path / "v.parquet"
    cmd = [sys.executable, "-m", "imgsim_client", "embed", str(folder), "-o", str(out),
           "--server", address, "--no-progress", "--checkpoint-every", "0.2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert out.exists(), "no checkpoint was written"
    kept = pd.read_parquet(out)
    assert 0 < len(kept) <= 240
    resumed = ["embed", str(folder), "-o", str(out), "--resume"]
    assert main([*resumed, "--server", address, "--no-progress"]) == 0
    final = pd.read_parquet(out)
    assert len(final) == 240 and final["path"].is_unique


def test_ctrl_c_writes_the_embed_checkpoint(address, photos, tmp_path):
    folder = _many_photos(tmp_path / "many", photos["coffee"], "int")
    out = tmp_path / "v.parquet"
    cmd = [sys.executable, "-m", "imgsim_client", "embed", str(folder), "-o", str(out),
           "--server", address, "--checkpoint-every", "3600"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    while proc.poll() is None and not re.search(r"\| *[1-9]\d*/240", seen):
        seen += proc.stderr.read(1)  # the progress bar: some images are done
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    err = seen + err
    if proc.returncode == 0:
        pytest.skip("the embed finished before the interrupt")
    assert proc.returncode == 130, err
    assert out.exists() and 0 < len(pd.read_parquet(out)) < 240, err


# ---- 8. names that are not UTF-8 ------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_kept(address, photos, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    a, b = distinct_jpegs(photos, 2, salt=9740)
    odd = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(odd, "wb") as fh:
        fh.write(a)
    (folder / "copy.jpg").write_bytes(a)
    (folder / "other.jpg").write_bytes(b)
    common = ["--server", address, "--no-progress"]
    vectors = tmp_path / "v.parquet"
    assert main(["embed", str(folder), "-o", str(vectors), *common]) == 0
    paths = list(pd.read_parquet(vectors)["path"])
    assert len(paths) == 3 and any(p.endswith("caf\\xe9.jpg") for p in paths)
    dups = tmp_path / "dups.csv"
    assert main(["dedup", str(folder), "-o", str(dups), *common]) == 0
    text = dups.read_bytes()
    assert b"caf\\xe9.jpg" in text and b"copy.jpg" in text  # the pair, its name escaped


# ---- 9. malformed CSVs ----------------------------------------------------------------------


def test_a_row_with_extra_fields_is_refused_with_its_line(tmp_path, address, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_a,image_b\nx.jpg,y.jpg\na.jpg,com,ma.jpg\n")
    assert main([str(pairs), "-o", str(tmp_path / "o.csv"), "--server", address]) == 1
    err = capsys.readouterr().err
    assert "line 3" in err and "3 fields" in err
    assert not (tmp_path / "o.csv").exists()


# ---- 10. evaluate on bad rows ---------------------------------------------------------------


def test_evaluate_reports_bad_rows_and_always_writes_the_report(tmp_path, photos):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 MP: Pillow refuses it as a bomb
    good = photos["coffee"]
    rows = [
        (good, good, 1, "0.99"),
        (bomb, good, 1, "0.90"),
        (good, bomb, 0, "0.20"),
        (good, good, 0, "inf"),
        (good, good, 1, "abc"),
        (good, good, 0, "0.10"),
        (good, good, 1, ""),
    ]
    csv = tmp_path / "scored.csv"
    pd.DataFrame(rows, columns=["image_a", "image_b", "label", "score"]).to_csv(csv, index=False)
    out = tmp_path / "report"
    assert main(["evaluate", str(csv), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["n"] == 4
    assert len(metrics["bad_rows"]) == 2 and "line 5" in metrics["bad_rows"][0]
    assert metrics["skipped_rows_without_score"] == 1
    assert (out / "report.html").stat().st_size > 0


# ---- smaller things -------------------------------------------------------------------------


def test_version_and_json_outputs(address, photos, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "imgsim-client" in capsys.readouterr().out
    assert main(["models", "--json", "--server", address]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["default_model"] == TEST_MODEL
    data = str(photos["coffee"])
    assert main(["compare", data, data, "--json", "--server", address]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["model"] == TEST_MODEL and one["score"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        main(["stats", "--model", "x", "--server", address])  # no ignored flags


def test_stats_into_a_closed_pipe_ends_cleanly(address):
    cmd = f"{sys.executable} -m imgsim_client stats --server {address} | head -1"
    run = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in run.stderr, run.stderr


def test_http_errors_use_the_documented_body(extra_servers):
    running = extra_servers(http_port=0, auth_token="tok")
    base = f"http://127.0.0.1:{running.http_port}"
    r = httpx.get(f"{base}/no/such/path", headers={"authorization": "Bearer tok"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = httpx.get(f"{base}/v1/compare", headers={"authorization": "bearer tok"})
    assert r.status_code == 405 and "error" in r.json()  # the scheme is case-insensitive
    r = httpx.post(
        f"{base}/v1/compare",
        content=b"--x\r\nbroken",
        headers={"authorization": "BEARER tok", "content-type": "multipart/form-data"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ARGUMENT"


def test_help_texts_have_no_doubled_defaults():
    from imgsim_client.cli import build_parser as client_parser
    from imgsim_server.config import build_parser as server_parser

    client = client_parser()
    subs = next(a for a in client._actions if isinstance(a, argparse._SubParsersAction))
    texts = [server_parser().format_help(), client.format_help()]
    texts += [p.format_help() for p in subs.choices.values()]
    for text in texts:
        flat = " ".join(text.split())
        assert "%%" not in flat
        assert not re.search(r"default[^()]*\(default:", flat), flat


def test_sigterm_during_a_stream_logs_no_traceback(photos, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgsim_server", "--port", "0", "--model", "phash"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, "server did not start"
            if m := re.search(r"listening on .*:(\d+)", line):
                port = int(m.group(1))
        data = photos["coffee"].read_bytes()

        def slow_pairs():
            for i in range(1000):
                yield PairRequest(str(i), data, data)
                time.sleep(0.01)

        with ImgsimClient(f"127.0.0.1:{port}", timeout=30) as c:
            c.wait_ready(30)
            stream = c.compare_stream(slow_pairs())
            next(stream)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ImgsimError):
                for _ in stream:
                    pass
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in out, out


def test_the_id_of_a_raw_request_is_read_without_parsing_it():
    from imgsim.v1 import similarity_pb2 as pb

    from imgsim_server.transport.grpc_servicer import first_string_field

    big = b"\x00" * 300_000
    req = pb.CompareRequest(
        pair_id="pair-7",
        image_a=pb.Image(data=big, id="#a"),
        image_b=pb.Image(ref="#a"),
        model="m",
    )
    assert first_string_field(req.SerializeToString()) == "pair-7"
    # Fields in another order, as another encoder may write them.
    other = pb.CompareRequest(image_a=pb.Image(data=big)).SerializeToString()
    other += pb.CompareRequest(pair_id="late").SerializeToString()
    assert first_string_field(other) == "late"
    assert first_string_field(pb.EmbedRequest(image_id="i9").SerializeToString()) == "i9"
    assert first_string_field(b"\xff\xff") == ""


def test_a_refused_large_request_is_answered_under_its_id(photos):
    core = CoreConfig(default_model=TEST_MODEL, memory_budget_mb=4)
    running = start_server(ServerConfig(port=0, core=core))
    try:
        running.core.warm_up(TEST_MODEL)
        big = _noise_png(800, 3)  # 1.9 MB: three copies are over a 4 MiB budget
        (small,) = distinct_jpegs(photos, 1, salt=9750)
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=60) as c:
            reqs = [PairRequest("big-1", big, big), PairRequest("small-1", small, small)]
            got = {r.pair_id: r for r in c.compare_stream(reqs)}
        assert got["big-1"].error_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert got["small-1"].ok
    finally:
        running.stop(0)
