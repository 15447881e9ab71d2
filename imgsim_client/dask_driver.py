"""Score pair sets beyond one client with Dask: partitions of pairs, one stream each.

    imgsim-client pairs.csv -o scores.csv --server dns:///imgsim:50051 --dask local:4
    imgsim-client 'runs/*.csv' -o scores/ --dask tcp://scheduler:8786

The input (a CSV, a glob of CSVs, or Parquet) becomes a Dask dataframe, split into enough
partitions to spread the work (by default at least 4 per worker). Each partition is one Dask
task that scores its pairs over one stream (or `streams`) to the service target. Each worker
process keeps one channel with round_robin, so its successive streams rotate over the replicas.
Retries are Dask's: a failed partition is run again as a whole, and its failed attempt leaves
nothing in the output, which therefore has every pair exactly once, in input order.

Image paths are made absolute on the driver (relative paths are relative to their CSV), so the
workers must see the same files (one machine, or shared storage). Needs the `[dask]` extra.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from imgsim_client._extras import missing_extra

try:
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client, LocalCluster
except ModuleNotFoundError as e:
    missing_extra(e, "dask", "--dask", {"dask", "distributed", "pandas", "pyarrow"})

from imgsim_client._csv import PairsFileError, PairsTable
from imgsim_client.client import ClientConfig, ImgsimClient
from imgsim_client.scoring import OUTPUT_COLUMNS, RetryPolicy, score_rows

_CLIENTS: dict[ClientConfig, ImgsimClient] = {}  # one channel per worker process and connection
_CLIENTS_LOCK = threading.Lock()  # workers may run several tasks at once on threads


def _client(conn: ClientConfig) -> ImgsimClient:
    """This worker process's channel for `conn`, opened on first use and kept."""
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(conn)
        if client is None:
            client = _CLIENTS[conn] = conn.connect()
        return client


def score_partition(
    part: pd.DataFrame, conn: ClientConfig, model: str, streams: int, send_once: bool
) -> pd.DataFrame:
    """One Dask task: score a partition's pairs over the worker's channel; adds score, error."""
    columns = [c for c in part.columns if c not in OUTPUT_COLUMNS]
    table = PairsTable(columns, part[columns].to_dict("records"))
    client = _client(conn)
    _, rows, _ = score_rows(
        client,
        table,
        Path("/"),
        model=model,
        send_once=send_once,
        idle_timeout_s=conn.timeout,
        retry=RetryPolicy(),
        streams=streams,
    )
    out = pd.DataFrame(rows, columns=[*columns, *OUTPUT_COLUMNS])
    return out.astype({"score": "string", "model": "string", "error": "string"})


def _absolute(df: pd.DataFrame, base: str) -> pd.DataFrame:
    """Image paths relative to their CSV's folder, made absolute for the workers."""
    df = df.copy()
    for col in ("image_a", "image_b"):
        if col in df.columns:
            df[col] = [
                p if not isinstance(p, str) or not p or os.path.isabs(p) else os.path.join(base, p)
                for p in df[col]
            ]
    return df


def read_pairs_frame(source: str) -> dd.DataFrame:
    """A CSV, a glob of CSVs, or Parquet (file or folder) as a Dask dataframe of strings, with
    absolute image paths and a pair_id on every row (numbered as the plain client does)."""
    path = Path(source)
    if source.endswith(".parquet") or path.is_dir():
        base = path.resolve() if path.is_dir() else path.resolve().parent
        ddf = dd.read_parquet(source).astype(str)
        ddf = ddf.map_partitions(_absolute, str(base), meta=ddf._meta)
    else:
        files = sorted(Path().glob(source)) if any(ch in source for ch in "*?[") else [path]
        if not files or not all(f.is_file() for f in files):
            raise PairsFileError(f"no pairs file matches {source}")
        frames = []
        for f in files:
            part = dd.read_csv(str(f), dtype=str, keep_default_na=False, blocksize=None)
            frames.append(part.map_partitions(_absolute, str(f.resolve().parent), meta=part._meta))
        ddf = dd.concat(frames) if len(frames) > 1 else frames[0]
    missing = [c for c in ("image_a", "image_b") if c not in ddf.columns]
    if missing:
        raise PairsFileError(
            f"{source} lacks column(s) {', '.join(missing)}; it has: {', '.join(ddf.columns)}"
        )
    if "pair_id" not in ddf.columns:
        # Number the rows across the whole input, as the plain client numbers one CSV's rows.
        lengths = ddf.map_partitions(len).compute().tolist()
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        ddf = ddf.map_partitions(_numbered, starts, meta=_numbered(ddf._meta, [0]))
    return ddf


def _numbered(df: pd.DataFrame, starts: list[int], partition_info: dict | None = None):
    """`df` with a pair_id column: row numbers across the input (dask passes partition_info)."""
    start = starts[partition_info["number"]] if partition_info else starts[0]
    df = df.copy()
    ids = [str(start + i) for i in range(len(df))]
    df.insert(0, "pair_id", pd.Series(ids, index=df.index, dtype=df["image_a"].dtype))
    return df


def open_cluster(spec: str) -> tuple[Client, LocalCluster | None]:
    """`local:N` starts a LocalCluster of N single-threaded worker processes;
    `tcp://HOST:PORT` (or any scheduler address) joins an existing cluster."""
    if spec.startswith("local"):
        _, _, n = spec.partition(":")
        workers = int(n) if n else os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        return Client(cluster), cluster
    return Client(spec), None


@dataclass(frozen=True)
class DaskSummary:
    pairs: int
    failed: int
    partitions: int
    workers: int
    output: str


def score_with_dask(
    source: str,
    output: str,
    conn: ClientConfig,
    cluster: str,
    model: str = "",
    partitions: int | None = None,
    streams: int = 1,
    send_once: bool = True,
    retries: int = 3,
) -> DaskSummary:
    """Score every pair of `source` on a Dask cluster; writes `output` (a CSV file, or a
    Parquet dataset folder when it ends with '/')."""
    client, local = open_cluster(cluster)
    try:
        workers = max(1, len(client.scheduler_info()["workers"]))
        ddf = read_pairs_frame(source)
        n = int(ddf.map_partitions(len).sum().compute())
        wanted = partitions or max(4 * workers, ddf.npartitions)
        ddf = ddf.repartition(npartitions=max(1, min(wanted, n)))
        meta = ddf._meta.drop(columns=[c for c in OUTPUT_COLUMNS if c in ddf._meta.columns])
        meta = meta.assign(**{c: pd.Series(dtype="string") for c in OUTPUT_COLUMNS})
        scored = ddf.map_partitions(score_partition, conn, model, streams, send_once, meta=meta)
        compute = {"retries": retries}
        if output.endswith("/"):
            scored.to_parquet(output, write_index=False, compute_kwargs=compute)
        else:
            scored.to_csv(output, single_file=True, index=False, compute_kwargs=compute)
        return DaskSummary(n, _count_failed(output), scored.npartitions, workers, output)
    finally:
        client.close()
        if local is not None:
            local.close()


def _count_failed(output: str) -> int:
    """Rows of the written output with an error."""
    if output.endswith("/"):
        return int((pd.read_parquet(output, columns=["error"])["error"].fillna("") != "").sum())
    errors = pd.read_csv(output, usecols=["error"], dtype=str, keep_default_na=False)["error"]
    return int((errors != "").sum())
