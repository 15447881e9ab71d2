"""Score a CSV of image pairs through CompareStream, sending each distinct file once.

Robust to a lost server: on UNAVAILABLE the client reconnects with exponential backoff and
opens a new stream with only the pairs not yet answered, so the output has each pair exactly
once. The output is written atomically; an interrupted run leaves a valid partial file (unscored
rows say so) that `resume=True` (`--resume`) completes without re-scoring what is done.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pandas as pd
from tqdm import tqdm

from imgsim_client.client import ImgsimClient, ImgsimError, PairRequest, PairResult

log = logging.getLogger(__name__)

NOT_SCORED = "not scored: the run was interrupted (rerun with --resume to finish it)"


class PairsFileError(ValueError):
    """The pairs CSV cannot be used (missing columns, duplicate ids, ...)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to reconnect after the server becomes UNAVAILABLE."""

    retries: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))


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


def read_pairs(csv_path: Path) -> pd.DataFrame:
    """Load a pairs CSV as strings, checking its columns and pair ids."""
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PairsFileError(f"pairs file not found: {csv_path}") from None
    except pd.errors.EmptyDataError:
        raise PairsFileError(f"pairs file is empty: {csv_path}") from None
    missing = [c for c in ("image_a", "image_b") if c not in df.columns]
    if missing:
        raise PairsFileError(
            f"{csv_path} lacks column(s) {', '.join(missing)}; it has: {', '.join(df.columns)}"
        )
    if "pair_id" not in df.columns:
        df.insert(0, "pair_id", [str(i) for i in range(len(df))])
    dupes = df["pair_id"][df["pair_id"].duplicated()].unique()
    if len(dupes):
        raise PairsFileError(f"duplicate pair_id values, e.g. {', '.join(dupes[:5])}")
    return df


def write_csv_atomic(df: pd.DataFrame, out_path: Path) -> None:
    """Write to a temporary file beside `out_path`, then rename: never a half-written file."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            df.to_csv(fh, index=False, float_format="%.6f")
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Requests:
    """Builds the request stream: reads each file when first needed and gives every file that
    several pairs use an id, so its bytes cross the wire once per stream and later pairs ref it."""

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

    def _side(self, path: str) -> tuple[bytes | None, str, str]:
        """(data, ref, id) for one image path; raises OSError if it cannot be read."""
        if path in self.ids:
            return None, self.ids[path], ""
        full = Path(path) if os.path.isabs(path) else self.base / path
        data = full.read_bytes()
        self.bytes_sent += len(data)
        if self.uses[path] > 1:
            self.ids[path] = f"#{len(self.ids)}"
            return data, "", self.ids[path]
        return data, "", ""

    def __iter__(self) -> Iterator[PairRequest]:
        for pair_id, path_a, path_b in self.rows:
            try:
                if not path_a or not path_b:
                    raise OSError("empty image path")
                da, ra, ia = self._side(path_a)
                db, rb, ib = self._side(path_b)
            except OSError as exc:
                self.local_errors[pair_id] = f"cannot read image: {exc}"
                continue
            yield PairRequest(pair_id, da, db, ra, rb, ia, ib, self.model)


def load_partial(out_path: Path, df: pd.DataFrame) -> dict[str, PairResult]:
    """The scored rows of an earlier (partial) output whose pair ids are in `df`."""
    if not out_path.exists():
        log.warning("nothing to resume: %s does not exist; scoring every pair", out_path)
        return {}
    try:
        old = pd.read_csv(out_path, dtype={"pair_id": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise PairsFileError(f"cannot resume from {out_path}: {exc}") from None
    if not {"pair_id", "score"} <= set(old.columns):
        raise PairsFileError(f"cannot resume from {out_path}: it has no pair_id and score columns")
    scores = pd.to_numeric(old["score"], errors="coerce")
    wanted = set(df["pair_id"])
    return {
        pid: PairResult(pid, float(score))
        for pid, score in zip(old["pair_id"], scores, strict=True)
        if pid in wanted and pd.notna(score)
    }


def _write_results(
    df: pd.DataFrame,
    results: dict[str, PairResult],
    local_errors: dict[str, str],
    out_path: Path,
    missing: str,
) -> int:
    """Write `df` with score and error columns, in input order; returns the failed count."""
    scores, errors = [], []
    for pair_id in df["pair_id"]:
        res = results.get(pair_id)
        if res is not None and res.ok:
            scores.append(res.score)
            errors.append("")
        elif pair_id in local_errors:
            scores.append(None)
            errors.append(local_errors[pair_id])
        else:
            scores.append(None)
            errors.append(f"{res.error_code.name}: {res.error}" if res is not None else missing)
    out = df.copy()
    out["score"] = pd.array(scores, dtype="Float64")
    out["error"] = errors
    write_csv_atomic(out, out_path)
    return sum(1 for e in errors if e)


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
    checkpoint_s: float = 60.0,
) -> ScoreSummary:
    """Score every row of `csv_path` and write it, in input order, with score and error.

    `deadline_s` bounds the whole run, `idle_timeout_s` the wait for each result. On a lost
    server it reconnects per `retry`. Every `checkpoint_s` seconds, and when interrupted or
    failing, it writes the partial result, which `resume=True` completes.
    """
    retry = retry or RetryPolicy()
    df = read_pairs(csv_path)
    rows = list(zip(df["pair_id"], df["image_a"], df["image_b"], strict=True))
    results: dict[str, PairResult] = load_partial(out_path, df) if resume else {}
    resumed = len(results)
    local_errors: dict[str, str] = {}
    bytes_sent = reconnects = 0
    started = time.perf_counter()
    last_checkpoint = time.monotonic()
    with tqdm(
        total=len(df), initial=resumed, unit="pair", disable=not progress, dynamic_ncols=True
    ) as bar:
        try:
            while True:
                todo = [r for r in rows if r[0] not in results and r[0] not in local_errors]
                if not todo:
                    break
                requests = _Requests(todo, csv_path.parent, model, send_once)
                remaining = (
                    None if deadline_s is None else deadline_s - (time.perf_counter() - started)
                )
                try:
                    if remaining is not None and remaining <= 0:
                        raise ImgsimError(
                            grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline of {deadline_s:g}s passed"
                        )
                    for res in client.compare_stream(requests, remaining, idle_timeout_s):
                        results[res.pair_id] = res
                        bar.update(1)
                        if time.monotonic() - last_checkpoint > checkpoint_s:
                            _write_results(df, results, local_errors, out_path, NOT_SCORED)
                            last_checkpoint = time.monotonic()
                    break
                except ImgsimError as err:
                    if err.code != grpc.StatusCode.UNAVAILABLE or reconnects >= retry.retries:
                        raise
                    reconnects += 1
                    wait = retry.backoff(reconnects)
                    bar.write(
                        f"imgsim-client: {err.message or err.code.name}; reconnecting in "
                        f"{wait:.1f}s (retry {reconnects}/{retry.retries}), "
                        f"{len(todo) - sum(1 for r in todo if r[0] in results)} pairs to go"
                    )
                    time.sleep(wait)
                finally:
                    local_errors.update(requests.local_errors)
                    bar.update(len(requests.local_errors))
                    bytes_sent += requests.bytes_sent
        except BaseException:
            # Interrupted (Ctrl-C) or failed for good: keep what is done, ready for --resume.
            _write_results(df, results, local_errors, out_path, NOT_SCORED)
            raise
    elapsed = time.perf_counter() - started
    failed = _write_results(df, results, local_errors, out_path, "no response from server")
    return ScoreSummary(len(df), len(df) - failed, failed, elapsed, bytes_sent, reconnects, resumed)
