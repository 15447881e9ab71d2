"""Where the lab reads and writes: the checkout it runs from, and the shared datasets beside it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout (the lab runs from a source tree)
RESULTS = ROOT / "results"
# Read in place, never copied in; every user skips cleanly when it is absent.
SHARED = Path(os.environ.get("IMGSIM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def lab_parser(doc: str, shared: bool = False):
    """A lab command's parser: its docstring as help, `--out` (results/) and, for those that
    read the shared sets, `--shared`."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    if shared:
        ap.add_argument("--shared", type=Path, default=SHARED, help="the shared datasets")
    return ap
