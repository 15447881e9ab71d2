"""Score a CSV of image pairs through CompareStream, sending each distinct file once.

Robust to a lost server: on UNAVAILABLE, once a server has answered, the client reconnects with
exponential backoff and opens a new stream with only the pairs not yet answered, so the output
has each pair exactly once. The output is written atomically; an interrupted run leaves a valid
partial file (unscored rows say so) that `resume=True` (`--resume`) completes without
re-scoring what is done. CSVs are read and written with the standard library's csv module.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import grpc

from imgsim_client._csv import (
    PairsFileError,
    PairsTable,
    read_table,
    refuse_other_model,
    write_csv_atomic,
)
from imgsim_client._resume import RetryPolicy, resumable
from imgsim_client.client import ImgsimClient, ImgsimError, PairRequest, PairResult

__all__ = ["PairsFileError", "RetryPolicy", "ScoreSummary", "read_pairs", "score_pairs"]

log = logging.getLogger(__name__)

NOT_SCORED = "not scored: the run was interrupted (rerun with --resume to finish it)"
OUTPUT_COLUMNS = ("score", "model", "error")
CHECKPOINT_S = 30.0  # default seconds between checkpoints of a long run


@dataclass(frozen=True)
class ScoreSummary:
    pairs: int
    scored: int
    failed: int
    seconds: float
    bytes_sent: int
    reconnects: int = 0
    resumed: int = 0  # pairs taken from an earlier partial output

    @property
    def pairs_per_s(self) -> float:
        """Pairs scored by this run (not those resumed) per second."""
        return (self.pairs - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def read_pairs(csv_path: Path) -> PairsTable:
    """Load a pairs CSV, checking its columns and pair ids (numbered from 0 when absent)."""
    table = read_table(csv_path)
    missing = [c for c in ("image_a", "image_b") if c not in table.columns]
    if missing:
        raise PairsFileError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; it has: {', '.join(table.columns)}"
        )
    if "pair_id" not in table.columns:
        table.columns.insert(0, "pair_id")
        for i, row in enumerate(table.rows):
            row["pair_id"] = str(i)
    seen = Counter(r["pair_id"] for r in table.rows)
    if dupes := [pid for pid, n in seen.items() if n > 1]:
        raise PairsFileError(f"duplicate pair_id values, e.g. {', '.join(dupes[:5])}")
    return table


class _Requests:
    """Builds the request stream: reads each file when first needed and gives every file that
    several pairs use an id, so its bytes cross the wire once per stream and later pairs ref it.

    Both files of a pair are read before either is given an id, so a pair that fails on the
    client (an unreadable file) registers nothing, and no later pair refers to bytes never sent.
    """

    def __init__(
        self, rows: list[tuple[str, str, str]], base: Path, model: str, send_once: bool
    ) -> None:
        self.rows = rows
        self.base = base
        self.model = model
        self.uses = Counter(p for _, a, b in self.rows for p in (a, b)) if send_once else Counter()
        self.ids: dict[str, str] = {}  # path -> id already sent in this stream
        self.local_errors: dict[str, str] = {}  # pair_id -> error, for pairs never sent
        self.bytes_sent = 0

    def _read(self, path: str) -> bytes | None:
        """The file's bytes, or None if it was sent already; OSError if it cannot be read."""
        if path in self.ids:
            return None
        return (Path(path) if os.path.isabs(path) else self.base / path).read_bytes()

    def _side(self, path: str, data: bytes | None) -> tuple[bytes | None, str, str]:
        """(data, ref, id) for one side of a pair whose files were all read."""
        if path in self.ids:
            return None, self.ids[path], ""
        self.bytes_sent += len(data or b"")
        if self.uses[path] > 1:
            self.ids[path] = f"#{len(self.ids)}"
            return data, "", self.ids[path]
        return data, "", ""

    def __iter__(self) -> Iterator[PairRequest]:
        for pair_id, path_a, path_b in self.rows:
            try:
                if not path_a or not path_b:
                    raise OSError("empty image path")
                data_a = self._read(path_a)
                data_b = data_a if path_b == path_a else self._read(path_b)
            except OSError as exc:
                self.local_errors[pair_id] = f"cannot read image: {exc}"
                continue
            da, ra, ia = self._side(path_a, data_a)
            db, rb, ib = self._side(path_b, data_b)
            yield PairRequest(pair_id, da, db, ra, rb, ia, ib, self.model)


def load_partial(out_path: Path, table: PairsTable, model: str = "") -> dict[str, PairResult]:
    """The scored rows of an earlier (partial) output of the same input and model.

    The output must belong to this input: the same pair ids with the same image paths, and,
    when `model` is given, scores of that model. If it does not, PairsFileError says so and
    the file is left untouched.
    """
    if not out_path.exists():
        log.warning("nothing to resume: %s does not exist; scoring every pair", out_path)
        return {}
    old = read_table(out_path, "output to resume")
    if not {"pair_id", "image_a", "image_b", "score"} <= set(old.columns):
        raise PairsFileError(
            f"cannot resume from {out_path}: it is not an imgsim-client output (it needs "
            f"pair_id, image_a, image_b and score columns; it has {', '.join(old.columns)})"
        )
    want = {r["pair_id"]: (r["image_a"], r["image_b"]) for r in table.rows}
    have = {r["pair_id"]: (r["image_a"], r["image_b"]) for r in old.rows}
    if want != have:
        differ = sorted(set(want) ^ set(have)) or [p for p in want if want[p] != have[p]]
        raise PairsFileError(
            f"cannot resume: {out_path} was written for another input ({len(have)} rows "
            f"against {len(want)} in the pairs file; pair ids or paths differ, e.g. "
            f"{', '.join(map(repr, differ[:3]))}). It was left untouched: choose another "
            "-o, or drop --resume to score every pair again"
        )
    scored_with = {r.get("model", "") for r in old.rows if r["score"].strip()}
    refuse_other_model(out_path, scored_with, model, "scores")
    return {
        row["pair_id"]: PairResult(row["pair_id"], float(row["score"]), row.get("model", ""))
        for row in old.rows
        if row["score"].strip()  # empty: not scored yet, or failed
    }


def scored_rows(
    table: PairsTable,
    results: dict[str, PairResult],
    local_errors: dict[str, str],
    missing: str,
) -> tuple[list[str], list[dict[str, str]], int]:
    """(columns, rows with score and error, failed count), in input order."""
    columns = [c for c in table.columns if c not in OUTPUT_COLUMNS] + list(OUTPUT_COLUMNS)
    out, failed = [], 0
    for row in table.rows:
        pair_id = row["pair_id"]
        res = results.get(pair_id)
        model = res.model if res is not None else ""
        if res is not None and res.ok:
            score, error = f"{res.score:.6f}", ""
        elif pair_id in local_errors:
            score, error = "", local_errors[pair_id]
        else:
            score = ""
            error = f"{res.error_code.name}: {res.error}" if res is not None else missing
        failed += bool(error)
        out.append({**row, "score": score, "model": model, "error": error})
    return columns, out, failed


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="pair", disable=not enabled, dynamic_ncols=True)


@dataclass(frozen=True)
class _StreamOptions:
    """What every stream of one run sends with and how it recovers."""

    base: Path  # relative image paths are relative to this folder
    model: str
    send_once: bool
    deadline: float | None  # time.monotonic() when the whole run must end
    idle_timeout_s: float | None
    retry: RetryPolicy


class _Run:
    """What the streams of one run share: results, client-side errors, progress, checkpoints."""

    def __init__(
        self, table: PairsTable, out_path: Path | None, results: dict, bar, checkpoint_s: float
    ) -> None:
        self.table = table
        self.out_path = out_path
        self.results = results
        self.local_errors: dict[str, str] = {}
        self.bar = bar
        self.checkpoint_s = checkpoint_s
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set when the run fails or is interrupted
        self.bytes_sent = 0
        self.reconnects = 0
        self._last_checkpoint = time.monotonic()

    def answered(self, res: PairResult) -> None:
        with self.lock:
            self.results[res.pair_id] = res
            self.bar.update(1)
            if self.out_path and time.monotonic() - self._last_checkpoint > self.checkpoint_s:
                self.write(NOT_SCORED)
                self._last_checkpoint = time.monotonic()

    def write(self, missing: str) -> int:
        """Write the output (when there is a file) and return how many rows failed."""
        columns, rows, failed = scored_rows(self.table, self.results, self.local_errors, missing)
        if self.out_path is not None:
            write_csv_atomic(columns, rows, self.out_path)
        return failed


def _split(rows: list, parts: int) -> list[list]:
    """`rows` in `parts` contiguous chunks (neighbouring pairs often share images, and an image
    is sent once per stream), as even as possible."""
    parts = max(1, min(parts, len(rows)))
    size, extra = divmod(len(rows), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(rows[start:end])
        start = end
    return out


def _stream_chunk(
    run: _Run, client: ImgsimClient, chunk: list[tuple[str, str, str]], opts: _StreamOptions
) -> None:
    """Score one chunk over one stream, reopened with its unanswered pairs when its backend
    goes away (`_resume.resumable`)."""

    def pending() -> list[tuple[str, str, str]]:
        with run.lock:
            return [r for r in chunk if r[0] not in run.results and r[0] not in run.local_errors]

    def open_stream(todo: list[tuple[str, str, str]]) -> Iterator[PairResult]:
        requests = _Requests(todo, opts.base, opts.model, opts.send_once)
        remaining = None if opts.deadline is None else opts.deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise ImgsimError(grpc.StatusCode.DEADLINE_EXCEEDED, "the run's deadline passed")
            yield from client.compare_stream(requests, remaining, opts.idle_timeout_s, run.stop)
        finally:
            with run.lock:
                run.local_errors.update(requests.local_errors)
                run.bar.update(len(requests.local_errors))
                run.bytes_sent += requests.bytes_sent

    def reconnecting(err: ImgsimError, attempt: int, wait: float, todo: list) -> None:
        with run.lock:
            run.reconnects += 1
            left = sum(1 for r in todo if r[0] not in run.results)
            run.bar.write(
                f"imgsim-client: {err.message or err.code.name}; reconnecting in "
                f"{wait:.1f}s (retry {attempt}/{opts.retry.retries}), {left} pairs of this "
                "stream to go"
            )

    resumable(client, pending, open_stream, run.answered, opts.retry, run.stop, reconnecting)


def _run_streams(
    run: _Run, client: ImgsimClient, chunks: list[list[tuple[str, str, str]]], opts: _StreamOptions
) -> None:
    """Score each chunk over its own stream, concurrently. The first failure (or Ctrl-C) stops
    every stream and writes the partial output before it propagates."""
    if len(chunks) > 1:
        client.warm_up()
    pool = ThreadPoolExecutor(len(chunks), thread_name_prefix="imgsim-stream")
    futures = [pool.submit(_stream_chunk, run, client, chunk, opts) for chunk in chunks]
    try:
        for fut in as_completed(futures):
            fut.result()
    except BaseException:
        # Interrupted (Ctrl-C) or failed for good: stop every stream, keep what is done,
        # ready for --resume.
        run.stop.set()
        pool.shutdown(wait=True)
        with run.lock:
            run.write(NOT_SCORED)
        raise
    pool.shutdown(wait=True)


def score_rows(
    client: ImgsimClient,
    table: PairsTable,
    base: Path,
    model: str = "",
    send_once: bool = True,
    idle_timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
    streams: int = 1,
) -> tuple[list[str], list[dict[str, str]], int]:
    """Score the rows of an in-memory table (paths relative to `base`); returns (columns,
    rows with score and error, failed count). For drivers that hold their own output, such as
    one Dask partition: no file is written and no progress is shown."""
    rows = [(r["pair_id"], r["image_a"], r["image_b"]) for r in table.rows]
    with _progress(len(rows), 0, False) as bar:
        run = _Run(table, None, {}, bar, float("inf"))
        opts = _StreamOptions(base, model, send_once, None, idle_timeout_s, retry or RetryPolicy())
        _run_streams(run, client, _split(rows, streams) or [[]], opts)
    return scored_rows(table, run.results, run.local_errors, "no response from server")


def score_pairs(
    client: ImgsimClient,
    csv_path: Path,
    out_path: Path,
    model: str = "",
    progress: bool = True,
    send_once: bool = True,
    deadline_s: float | None = None,
    idle_timeout_s: float | None = None,
    retry: RetryPolicy | None = None,
    resume: bool = False,
    checkpoint_s: float = CHECKPOINT_S,
    streams: int = 1,
) -> ScoreSummary:
    """Score every row of `csv_path` and write it, in input order, with score and error.

    The rows are split over `streams` concurrent streams on the client's one channel; with a
    multi-address target, round_robin spreads them over the backends (one stream stays on one
    backend). `deadline_s` bounds the whole run, `idle_timeout_s` the wait for each result.
    Once a server has answered, a stream whose backend is lost reopens per `retry` with only
    its unanswered pairs (on the surviving backends); a server that never answered is an error
    at once. Every `checkpoint_s` seconds, and when interrupted or failing, it writes the
    partial result, which `resume=True` completes.
    """
    retry = retry or RetryPolicy()
    table = read_pairs(csv_path)
    rows = [(r["pair_id"], r["image_a"], r["image_b"]) for r in table.rows]
    results: dict[str, PairResult] = {}
    if resume:  # the scores kept must be of the model this run scores with
        results = load_partial(out_path, table, client.resolve_model(model))
    resumed = len(results)
    todo = [r for r in rows if r[0] not in results]
    chunks = _split(todo, streams)
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    if not chunks:
        chunks = [[]]
    started = time.perf_counter()
    with _progress(len(table), resumed, progress) as bar:
        run = _Run(table, out_path, results, bar, checkpoint_s)
        opts = _StreamOptions(csv_path.parent, model, send_once, deadline, idle_timeout_s, retry)
        _run_streams(run, client, chunks, opts)
    elapsed = time.perf_counter() - started
    failed = run.write("no response from server")
    n = len(table)
    return ScoreSummary(n, n - failed, failed, elapsed, run.bytes_sent, run.reconnects, resumed)
