"""Client robustness: reconnect and resume after a lost server, --resume, --deadline."""

from __future__ import annotations

import threading
import time

import grpc
import pandas as pd
import pytest

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from imgsim_client.cli import main
from imgsim_client.scoring import NOT_SCORED, RetryPolicy, score_pairs
from imgsim_server.config import ServerConfig
from imgsim_server.server import start_server
from tests.conftest import distinct_jpegs


class RecordingClient(ImgsimClient):
    """A real client that records, per stream, the pair ids it sent and got back."""

    def __init__(self, *args, on_result=None, **kw) -> None:
        super().__init__(*args, **kw)
        self.sent: list[list[str]] = []
        self.answered: list[list[str]] = []
        self.on_result = on_result

    def compare_stream(self, pairs, timeout=None, idle_timeout=None):
        sent, answered = [], []
        self.sent.append(sent)
        self.answered.append(answered)

        def tap():
            for p in pairs:
                sent.append(p.pair_id)
                yield p

        for res in super().compare_stream(tap(), timeout, idle_timeout):
            answered.append(res.pair_id)
            yield res
            if self.on_result:
                self.on_result(self, res)


def _pairs_csv(tmp_path, photos, n: int, salt: int):
    images = distinct_jpegs(photos, n + 1, salt)
    for i, data in enumerate(images):
        (tmp_path / f"{i}.jpg").write_bytes(data)
    df = pd.DataFrame({"image_a": [f"{i}.jpg" for i in range(n)]})
    df["image_b"] = [f"{i + 1}.jpg" for i in range(n)]
    path = tmp_path / "pairs.csv"
    df.to_csv(path, index=False)
    return path


def _assert_complete(out, n: int) -> pd.DataFrame:
    df = pd.read_csv(out, dtype={"pair_id": str}, keep_default_na=False)
    assert list(df["pair_id"]) == [str(i) for i in range(n)]  # no gaps, no duplicates, in order
    assert (df["error"] == "").all()
    assert pd.to_numeric(df["score"]).between(-1, 1).all()
    return df


def test_reconnects_and_resumes_after_server_loss(server, photos, tmp_path):
    n = 150
    csv = _pairs_csv(tmp_path, photos, n, salt=30)
    first = start_server(ServerConfig(host="127.0.0.1", port=0), core=server.core)
    port = first.port
    second = []

    def restart():
        first.stop(0)  # in-flight streams are cut: the client sees UNAVAILABLE
        second.append(start_server(ServerConfig(host="127.0.0.1", port=port), core=server.core))

    def kill_after_20(client, _res):
        if len(client.answered) == 1 and len(client.answered[0]) == 20:
            threading.Thread(target=restart).start()

    try:
        with RecordingClient(f"127.0.0.1:{port}", timeout=30, on_result=kill_after_20) as client:
            summary = score_pairs(
                client,
                csv,
                tmp_path / "out.csv",
                progress=False,
                retry=RetryPolicy(retries=8, initial_backoff_s=0.2, max_backoff_s=1.0),
            )
    finally:
        first.stop(0)
        for running in second:
            running.stop(0.5)
    assert summary.reconnects >= 1 and summary.scored == n
    _assert_complete(tmp_path / "out.csv", n)
    answered_first = set(client.answered[0])
    assert len(answered_first) >= 20
    resent = [pid for attempt in client.sent[1:] for pid in attempt]
    assert not answered_first & set(resent), "answered pairs were sent again"
    answered = [pid for attempt in client.answered for pid in attempt]
    assert sorted(answered, key=int) == [str(i) for i in range(n)]  # each exactly once


def test_interrupted_run_leaves_a_partial_file_that_resume_completes(address, photos, tmp_path):
    n = 60
    csv = _pairs_csv(tmp_path, photos, n, salt=31)
    out = tmp_path / "out.csv"

    def interrupt(client, _res):
        if len(client.answered[0]) == 25:
            raise KeyboardInterrupt

    with (
        RecordingClient(address, timeout=30, on_result=interrupt) as client,
        pytest.raises(KeyboardInterrupt),
    ):
        score_pairs(client, csv, out, progress=False)
    partial = pd.read_csv(out, dtype={"pair_id": str}, keep_default_na=False)
    assert len(partial) == n
    done = set(partial.loc[partial["score"] != "", "pair_id"])
    assert len(done) == 25
    assert (partial.loc[partial["score"] == "", "error"] == NOT_SCORED).all()

    with RecordingClient(address, timeout=30) as client:
        summary = score_pairs(client, csv, out, progress=False, resume=True)
    assert summary.resumed == 25 and summary.scored == n
    assert sorted(client.sent[0], key=int) == sorted(set(map(str, range(n))) - done, key=int)
    final = _assert_complete(out, n)
    kept = pd.to_numeric(final.set_index("pair_id").loc[sorted(done), "score"])
    before = pd.to_numeric(partial.set_index("pair_id").loc[sorted(done), "score"])
    assert (kept == before).all()  # resumed rows are kept as they were, not re-scored


def test_cli_deadline_stops_the_run_and_keeps_a_partial_file(address, photos, tmp_path, capsys):
    csv = _pairs_csv(tmp_path, photos, 300, salt=32)
    out = tmp_path / "out.csv"
    code = main(
        [str(csv), "-o", str(out), "--server", address, "--no-progress", "--deadline", "0.3"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "DEADLINE_EXCEEDED" in err and "--resume" in err
    partial = pd.read_csv(out, keep_default_na=False)
    assert len(partial) == 300 and (partial["score"] == "").any()


def test_cli_resume_without_output_scores_everything(address, photos, tmp_path):
    csv = _pairs_csv(tmp_path, photos, 5, salt=33)
    out = tmp_path / "out.csv"
    assert main([str(csv), "-o", str(out), "--server", address, "--no-progress", "--resume"]) == 0
    _assert_complete(out, 5)


def test_unavailable_server_fails_after_retries(tmp_path, photos):
    csv = _pairs_csv(tmp_path, photos, 3, salt=34)
    # Nothing listens on port 1.
    with ImgsimClient("127.0.0.1:1", timeout=2) as client, pytest.raises(ImgsimError) as err:
        score_pairs(
            client,
            csv,
            tmp_path / "out.csv",
            progress=False,
            retry=RetryPolicy(retries=2, initial_backoff_s=0.05),
        )
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_idle_timeout_cancels_a_silent_stream(address, photos):
    """--timeout for streams: no result for that long ends the stream with DEADLINE_EXCEEDED."""
    a, b = distinct_jpegs(photos, 2, salt=35)
    release = threading.Event()

    def requests():
        yield PairRequest("only", a, b)
        release.wait(30)  # then nothing more, and no half-close: the stream goes silent

    results = []
    started = time.monotonic()
    with ImgsimClient(address, timeout=30) as client, pytest.raises(ImgsimError) as err:
        for res in client.compare_stream(requests(), idle_timeout=1.0):
            results.append(res)
    release.set()
    assert [r.pair_id for r in results] == ["only"] and results[0].ok
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no result" in err.value.message
    assert time.monotonic() - started < 10
