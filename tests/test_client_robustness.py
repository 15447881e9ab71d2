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

    def compare_stream(self, pairs, timeout=None, idle_timeout=None, stop=None):
        sent, answered = [], []
        self.sent.append(sent)
        self.answered.append(answered)

        def tap():
            for p in pairs:
                sent.append(p.pair_id)
                yield p

        for res in super().compare_stream(tap(), timeout, idle_timeout, stop):
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


def test_a_server_that_never_answered_is_not_retried(tmp_path, photos):
    csv = _pairs_csv(tmp_path, photos, 3, salt=34)
    started = time.monotonic()
    # Nothing listens on port 1: reconnect backoff is for servers that answered once.
    with ImgsimClient("127.0.0.1:1", timeout=2) as client, pytest.raises(ImgsimError) as err:
        score_pairs(
            client,
            csv,
            tmp_path / "out.csv",
            progress=False,
            retry=RetryPolicy(retries=5, initial_backoff_s=2),
        )
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2


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


def test_an_unreadable_file_fails_only_its_row(tmp_path, photos, address):
    """With send-once, a pair that fails on the client registers no id: later pairs that use
    its readable image still send the bytes and are scored."""
    for name in ("astronaut", "chelsea", "coffee"):
        (tmp_path / photos[name].name).write_bytes(photos[name].read_bytes())
    a, c, k = photos["astronaut"].name, photos["chelsea"].name, photos["coffee"].name
    rows = [(a, "missing.jpg"), (a, c), ("missing.jpg", k), (k, a), (c, k)]
    pd.DataFrame(rows, columns=["image_a", "image_b"]).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "out.csv"
    code = main([str(tmp_path / "p.csv"), "-o", str(out), "--server", address, "--no-progress"])
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert code == 3  # finished, some pairs failed
    assert list(df["error"] != "") == [True, False, True, False, False], list(df["error"])
    assert df.loc[0, "error"].startswith("cannot read image")
    assert df.loc[[1, 3, 4], "score"].astype(float).between(-1, 1).all()


def test_resume_against_another_input_is_refused(tmp_path, photos, address, capsys):
    csv_a = _pairs_csv(tmp_path, photos, 6, salt=36)
    out = tmp_path / "out.csv"
    assert main([str(csv_a), "-o", str(out), "--server", address, "--no-progress"]) == 0
    before = out.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    csv_b = _pairs_csv(other, photos, 3, salt=37)
    code = main([str(csv_b), "-o", str(out), "--server", address, "--no-progress", "--resume"])
    assert code == 1
    assert "was written for another input" in capsys.readouterr().err
    assert out.read_bytes() == before  # untouched
    # The same input resumes (nothing left to do), and keeps every row.
    assert main([str(csv_a), "-o", str(out), "--server", address, "--no-progress", "--resume"]) == 0
    _assert_complete(out, 6)


@pytest.mark.parametrize("command", ["score", "compare"])
def test_first_connection_failure_is_quick_and_named(tmp_path, photos, command, capsys):
    from imgsim_client.cli import build_parser

    assert build_parser().parse_args(["compare", "a", "b"]).connect_timeout == 10.0  # < 15 s
    csv = _pairs_csv(tmp_path, photos, 3, salt=38)
    image = str(tmp_path / "0.jpg")
    args = [str(csv)] if command == "score" else ["compare", image, image]
    started = time.monotonic()
    code = main(
        [*args, "--server", "127.0.0.1:1", "--connect-timeout", "0.3", "--no-progress"][
            : None if command == "score" else -1
        ]
    )
    assert code == 1 and time.monotonic() - started < 5  # no reconnect backoff before a server
    err = capsys.readouterr().err
    assert "no imgsim server answered at 127.0.0.1:1 within 0.3s" in err
    assert "--server or $IMGSIM_SERVER" in err


def test_unary_calls_are_retried_by_grpc_on_unavailable(server, photos):
    """gRPC's retryPolicy (service config) carries a unary call over a server that comes up
    a moment later; without it the call fails at once with UNAVAILABLE."""
    probe = start_server(ServerConfig(host="127.0.0.1", port=0), core=server.core)
    port = probe.port
    probe.stop(0)
    later = []
    timer = threading.Timer(
        0.3,
        lambda: later.append(
            start_server(ServerConfig(host="127.0.0.1", port=port), core=server.core)
        ),
    )
    a, b = distinct_jpegs(photos, 2, salt=39)
    try:
        with ImgsimClient(f"127.0.0.1:{port}", timeout=15) as client:
            timer.start()
            assert -1 <= client.compare(a, b) <= 1
    finally:
        timer.join()
        for running in later:
            running.stop(0)


def test_exit_codes_and_stats_table(tmp_path, address, capsys):
    import json

    header_only = tmp_path / "empty.csv"
    header_only.write_text("image_a,image_b\n")
    assert main([str(header_only), "--server", address, "--no-progress"]) == 0
    assert "nothing to score" in capsys.readouterr().err
    assert main(["stats", "--server", address]) == 0
    table = capsys.readouterr().out
    assert "efficientnet-lite0" in table and "pairs scored" in table and "{" not in table
    assert main(["stats", "--server", address, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pairs_scored"] >= 1
    assert stats["cache_hits"] + stats["cache_misses"] >= 2 * stats["pairs_scored"] > 0
    assert {m["model"] for m in stats["models"]} >= {"efficientnet-lite0"}


def test_help_shows_real_defaults_and_exit_codes(monkeypatch):
    from imgsim_client.cli import build_parser

    monkeypatch.delenv("IMGSIM_SERVER", raising=False)
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # every subcommand's parser
    for name, p in sub.items():
        text = " ".join(p.format_help().split())  # unwrap
        assert "(default: )" not in text and "(default: None)" not in text, name
        assert "default: default" not in text and ") (default:" not in text, name
    score = " ".join(sub["score"].format_help().split())
    assert "unix:PATH (default: 127.0.0.1:50051, or set $IMGSIM_SERVER; when neither" in score
    assert "a private local server is started for the command)" in score
    assert "each next result (default: 60.0)" in score
    assert "answered pairs are never sent again (default: 5)" in score
    assert "3 finished, but some pairs failed" in score
    top = " ".join(parser.format_help().split())
    assert "exit codes: 0 done" in top and "130 interrupted" in top
    monkeypatch.setenv("IMGSIM_SERVER", "10.0.0.7:6000")
    again = " ".join(build_parser()._subparsers._group_actions[0].choices["compare"]
                     .format_help().split())  # fmt: skip
    assert "(default: $IMGSIM_SERVER = 10.0.0.7:6000)" in again
