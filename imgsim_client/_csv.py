"""CSV tables with the standard library's csv module: read with clear errors, write atomically
(and any other text output the client writes: `atomic_text`)."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


class PairsFileError(ValueError):
    """The pairs CSV (or an output to resume) cannot be used."""


@dataclass
class PairsTable:
    """A pairs CSV in memory: its columns and rows as strings, every row with a pair_id."""

    columns: list[str]
    rows: list[dict[str, str]]

    def __len__(self) -> int:
        return len(self.rows)


def read_table(path: Path, what: str = "pairs file") -> PairsTable:
    """A CSV's header and rows (strings), with clear errors for a missing or empty file."""
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            rows = []
            for row in reader:
                if None in row:  # more fields than the header names: a misquoted value?
                    header = list(reader.fieldnames or ())
                    raise PairsFileError(
                        f"{what} {path}, line {reader.line_num}: {len(header) + len(row[None])} "
                        f"fields but the header has {len(header)} ({', '.join(header)}); quote "
                        "values that contain commas"
                    )
                rows.append(row)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise PairsFileError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PairsFileError(f"cannot read {what} {path}: {exc}") from None
    if not columns:
        raise PairsFileError(f"{what} is empty: {path}")
    return PairsTable(columns, [{k: v or "" for k, v in r.items()} for r in rows])


def refuse_other_model(path: Path, found: set[str], wanted: str, what: str) -> None:
    """`--resume` keeps only results of this run's model: PairsFileError (the file left
    untouched) when `path` holds `what` (scores, vectors) of another."""
    found = found - {""}
    if wanted and found and found != {wanted}:
        raise PairsFileError(
            f"cannot resume: {path} holds {what} of {', '.join(sorted(found))}, and this run "
            f"uses {wanted}; {what} of two models do not compare. It was left untouched: "
            "choose another -o, or the file's --model"
        )


@contextlib.contextmanager
def atomic_text(out_path: Path) -> Iterator[TextIO]:
    """A text file handle on a temporary file beside `out_path`, renamed over it when the block
    ends without error (else removed): never a half-written file. Text is UTF-8, and a file
    name that is not valid UTF-8 (surrogate escapes) is written back as its bytes."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            yield fh
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(out_path: Path, text: str) -> None:
    """`text` into `out_path`, whole or not at all (`atomic_text`)."""
    with atomic_text(out_path) as fh:
        fh.write(text)


def write_csv_atomic(columns: list[str], rows: list[dict], out_path: Path) -> None:
    """Write to a temporary file beside `out_path`, then rename: never a half-written file."""
    with atomic_text(out_path) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
