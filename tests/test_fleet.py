"""A fleet on loopback: several replicas behind gRPC's round_robin, K streams, failover."""

from __future__ import annotations

import threading
import time

import pandas as pd

from imgsim_client import ImgsimClient
from imgsim_client.cli import main
from imgsim_client.client import target_addresses
from tests.test_client_robustness import _pairs_csv


def _target(servers) -> str:
    return "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)


def _scores(path) -> pd.Series:
    df = pd.read_csv(path, dtype={"pair_id": str}, keep_default_na=False)
    assert (df["error"] == "").all(), df["error"].unique()
    return df.set_index("pair_id")["score"].astype(float)


def _reference(csv, address, tmp_path) -> pd.Series:
    out = tmp_path / "single.csv"
    assert main([str(csv), "-o", str(out), "--server", address, "--no-progress"]) == 0
    return _scores(out)


def test_target_addresses():
    assert target_addresses("ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1:3") == 3
    assert target_addresses("127.0.0.1:50051") == 1
    assert target_addresses("unix:/tmp/imgsim.sock") == 1


def test_two_replicas_share_the_work_and_agree_with_one_server(replicas, address, photos, tmp_path):
    servers = replicas(2)
    csv = _pairs_csv(tmp_path, photos, 120, salt=40)
    out = tmp_path / "fleet.csv"
    argv = [str(csv), "-o", str(out), "--server", _target(servers), "--streams", "4"]
    assert main([*argv, "--no-progress"]) == 0
    embedded = [
        sum(s.images_embedded for s in r.core.engines.batch_stats().values()) for r in servers
    ]
    assert min(embedded) >= 0.25 * sum(embedded), embedded
    fleet, single = _scores(out), _reference(csv, address, tmp_path)
    assert list(fleet.index) == list(single.index)  # input order, every pair once
    assert (fleet - single).abs().max() <= 1e-5


def test_a_replica_dying_mid_run_loses_nothing(replicas, address, photos, tmp_path, capsys):
    servers = replicas(3)
    victim = servers[2]
    csv = _pairs_csv(tmp_path, photos, 150, salt=41)
    out = tmp_path / "fleet.csv"

    def kill_when_busy():
        deadline = time.monotonic() + 30
        while victim.core.pairs_scored < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        victim.stop(0)  # its stream is cut mid-run: UNAVAILABLE on the client

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    code = main([str(csv), "-o", str(out), "--server", _target(servers), "--no-progress"])
    killer.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert "reconnect" in err  # the victim's stream was cut mid-run and reopened on a survivor
    fleet, single = _scores(out), _reference(csv, address, tmp_path)
    assert list(fleet.index) == list(single.index)
    assert (fleet - single).abs().max() <= 1e-5


def test_unary_compare_over_a_multi_address_target(replicas, photos):
    servers = replicas(2)
    data = photos["chelsea"].read_bytes()
    with ImgsimClient(_target(servers), timeout=30) as client:
        client.warm_up()
        for _ in range(4):
            assert client.compare(data, data) >= 0.999
    assert all(r.core.pairs_scored >= 1 for r in servers)  # calls rotate over the replicas


def test_dask_local_cluster_matches_the_plain_client(replicas, address, photos, tmp_path, capsys):
    """2 Dask workers (LocalCluster) against 2 replicas: same scores as the plain client,
    every pair once, in input order, and both replicas receive work."""
    servers = replicas(2)
    csv = _pairs_csv(tmp_path, photos, 300, salt=42)
    out = tmp_path / "dask.csv"
    argv = [str(csv), "-o", str(out), "--server", _target(servers), "--dask", "local:2"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "on 2 Dask worker(s) in 8 partitions" in capsys.readouterr().err
    dask_scores, single = _scores(out), _reference(csv, address, tmp_path)
    assert list(dask_scores.index) == list(single.index)
    assert (dask_scores - single).abs().max() <= 1e-5
    assert all(r.core.pairs_scored > 0 for r in servers), [r.core.pairs_scored for r in servers]


def test_perf_sweeps_concurrency_levels(address, photos, tmp_path, capsys):
    import json

    out = tmp_path / "perf.json"
    images = [str(photos[n]) for n in ("chelsea", "coffee", "astronaut", "rocket")]
    argv = ["perf", *images, "--server", address, "--concurrency", "1,3", "--pairs", "12"]
    assert main([*argv, "--duration", "20", "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert "pairs/s" in table and "p99 ms" in table
    levels = json.loads(out.read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 3]
    for lv in levels:
        assert lv["pairs"] == 12 and lv["errors"] == 0
        assert lv["images_embedded"] == 24  # unique bytes: every image really embedded
        assert lv["p50_ms"] <= lv["p90_ms"] <= lv["p99_ms"] and lv["mean_batch"] >= 1


def test_max_connection_age_reconnects_without_losing_pairs(extra_servers, photos, tmp_path):
    """--max-connection-age: the server closes connections (GOAWAY) after that age; unary
    calls carry on over a new connection, and a stream cut after the grace is resumed, more
    often than `retries` (which counts reconnects without progress in between). With a
    near-zero grace, calls in flight are cut: Compare is retried by gRPC's retry policy, which
    needs the request kept for the retry (two 240 KB photos are more than gRPC keeps by
    default: the old client failed ~50 of ~900 calls here)."""
    from imgsim_client.scoring import RetryPolicy, score_pairs

    running = extra_servers(max_connection_age_s=0.1, max_connection_age_grace_s=0.001)
    target = f"127.0.0.1:{running.port}"
    data = photos["chelsea"].read_bytes()
    assert len(data) > 200_000
    failures: list[str] = []
    with ImgsimClient(target, timeout=10) as client:
        client.wait_ready(10)

        def calls() -> None:
            deadline = time.monotonic() + 1.5  # outlives many connection ages
            while time.monotonic() < deadline:
                try:
                    assert client.compare(data, data) >= 0.999
                except Exception as err:  # every failure is the finding
                    failures.append(repr(err))

        threads = [threading.Thread(target=calls) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        csv = _pairs_csv(tmp_path, photos, 60, salt=43)
        retry = RetryPolicy(3, 0.05, 0.2)
        summary = score_pairs(client, csv, tmp_path / "out.csv", progress=False, retry=retry)
    assert summary.failed == 0 and summary.scored == 60
    assert (_scores(tmp_path / "out.csv").index == [str(i) for i in range(60)]).all()
