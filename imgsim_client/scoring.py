"""Score a CSV of image pairs through CompareStream, sending each distinct file once."""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from imgsim_client.client import ImgsimClient, PairRequest, PairResult


class PairsFileError(ValueError):
    """The pairs CSV cannot be used (missing columns, duplicate ids, ...)."""


@dataclass(frozen=True)
class ScoreSummary:
    pairs: int
    scored: int
    failed: int
    seconds: float
    bytes_sent: int

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


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

    def __init__(self, df: pd.DataFrame, base: Path, model: str, send_once: bool) -> None:
        self.rows = list(zip(df["pair_id"], df["image_a"], df["image_b"], strict=True))
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


def score_pairs(
    client: ImgsimClient,
    csv_path: Path,
    out_path: Path,
    model: str = "",
    progress: bool = True,
    send_once: bool = True,
) -> ScoreSummary:
    """Score every row of `csv_path` and write it, in input order, with score and error."""
    df = read_pairs(csv_path)
    requests = _Requests(df, csv_path.parent, model, send_once)
    results: dict[str, PairResult] = {}
    started = time.perf_counter()
    with tqdm(total=len(df), unit="pair", disable=not progress, dynamic_ncols=True) as bar:
        for res in client.compare_stream(requests):
            results[res.pair_id] = res
            bar.update(1)
        bar.update(len(requests.local_errors))
    elapsed = time.perf_counter() - started

    scores, errors = [], []
    for pair_id in df["pair_id"]:
        res = results.get(pair_id)
        if res is not None and res.ok:
            scores.append(res.score)
            errors.append("")
        else:
            scores.append(None)
            errors.append(
                requests.local_errors.get(pair_id)
                or (
                    f"{res.error_code.name}: {res.error}"
                    if res is not None
                    else "no response from server"
                )
            )
    df["score"] = pd.array(scores, dtype="Float64")
    df["error"] = errors
    write_csv_atomic(df, out_path)
    failed = sum(1 for e in errors if e)
    return ScoreSummary(len(df), len(df) - failed, failed, elapsed, requests.bytes_sent)
