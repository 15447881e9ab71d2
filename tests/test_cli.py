"""The client CLI against the real server: CSV round trip, single pair, evaluate."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from imgsim_client.cli import main


@pytest.fixture()
def pairs_csv(tmp_path, photos):
    names = ["chelsea", "coffee", "astronaut", "rocket", "camera"]
    for n in names:
        shutil.copy(photos[n], tmp_path / photos[n].name)
    f = {n: photos[n].name for n in names}
    rows = [
        (f["chelsea"], f["chelsea"], 1, "red"),
        (f["chelsea"], f["coffee"], 0, "green"),
        ("missing.jpg", f["coffee"], 0, "blue"),
        (str(tmp_path / f["astronaut"]), f["astronaut"], 1, "x"),  # absolute path
        (f["rocket"], f["camera"], 0, "y"),
        (f["coffee"], f["coffee"], 1, "z"),
    ]
    df = pd.DataFrame(rows, columns=["image_a", "image_b", "label", "extra"])
    path = tmp_path / "pairs.csv"
    df.to_csv(path, index=False)
    return path


def test_cli_round_trip_keeps_input_order(pairs_csv, address, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    # exit 3: finished, but one pair (the missing file) failed
    assert main([str(pairs_csv), "-o", str(out), "--server", address, "--no-progress"]) == 3
    df = pd.read_csv(out, keep_default_na=False)
    src = pd.read_csv(pairs_csv)
    assert list(df["image_a"]) == list(src["image_a"])
    assert list(df["extra"]) == list(src["extra"])
    assert list(df["pair_id"]) == [str(i) for i in range(len(src))] or list(df["pair_id"]) == list(
        range(len(src))
    )
    assert df.loc[2, "error"].startswith("cannot read image")
    assert df.loc[2, "score"] == ""
    scored = df.drop(index=2)
    assert (scored["error"] == "").all()
    scores = scored["score"].astype(float)
    assert scores[0] >= 0.999 and scores[3] >= 0.999 and scores[5] >= 0.999
    assert scores[1] < 0.9
    assert "scored 5/6 pairs" in capsys.readouterr().err

    assert main(["evaluate", str(out)]) == 0
    assert "ROC AUC: 1.0000" in capsys.readouterr().out


def test_cli_compare_prints_score(photos, address, capsys):
    code = main(["compare", str(photos["chelsea"]), str(photos["chelsea"]), "--server", address])
    assert code == 0
    score, verdict = capsys.readouterr().out.split()
    assert float(score) >= 0.999 and verdict == "near-duplicate"


def test_cli_reports_bad_csv(tmp_path, address, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main([str(bad), "--server", address, "--no-progress"]) == 1
    assert "lacks column(s) image_a, image_b" in capsys.readouterr().err
