"""Pair builders: expected counts, no self-pairs, no duplicates; and the report from a fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from imgsim_datasets import pairs as imgsim_pairs


def _no_self_or_dupes(df: pd.DataFrame) -> None:
    assert (df["image_a"] != df["image_b"]).all()
    keys = {tuple(sorted(p)) for p in zip(df["image_a"], df["image_b"], strict=True)}
    assert len(keys) == len(df)


def test_groups_from_folders(tmp_path, photos):
    # 3 groups of sizes 3, 2, 4 -> positives 3 + 1 + 6 = 10
    sizes = {"cats": 3, "cups": 2, "rockets": 4}
    src = list(photos.values())
    k = 0
    for group, n in sizes.items():
        (tmp_path / group).mkdir()
        for i in range(n):
            shutil.copy(src[k], tmp_path / group / f"{i}{src[k].suffix}")
            k += 1
    out = tmp_path / "pairs.csv"
    assert imgsim_pairs.main(["groups", str(tmp_path), "--out", str(out), "--neg-ratio", "2"]) == 0
    df = pd.read_csv(out)
    assert (df["label"] == 1).sum() == 10
    assert (df["label"] == 0).sum() == 20
    _no_self_or_dupes(df)
    pos = df[df["label"] == 1]
    assert (pos["group_a"] == pos["group_b"]).all()
    neg = df[df["label"] == 0]
    assert (neg["group_a"] != neg["group_b"]).all()
    # seeded: the same call gives the same file
    out2 = tmp_path / "pairs2.csv"
    imgsim_pairs.main(["groups", str(tmp_path), "--out", str(out2), "--neg-ratio", "2"])
    assert out.read_text() == out2.read_text()


def test_groups_ukbench_rule(tmp_path):
    for n in range(12):  # objects 0, 1, 2 with 4 views each
        Image.new("RGB", (8, 8), (n * 20, 0, 0)).save(tmp_path / f"ukbench{n:05d}.jpg")
    items = imgsim_pairs.labelled_images(tmp_path, "ukbench")
    assert [g for _, g in items] == ["0"] * 4 + ["1"] * 4 + ["2"] * 4
    rows = pd.DataFrame(imgsim_pairs.build_group_pairs(items, neg_ratio=1.0))
    assert (rows["label"] == 1).sum() == 18 and (rows["label"] == 0).sum() == 18
    _no_self_or_dupes(rows)


def test_near_dup_catalogue(tmp_path, photos):
    src = [photos[n] for n in ("chelsea", "coffee", "rocket")]
    csv = imgsim_pairs.build_near_dup(src, tmp_path, list(imgsim_pairs.TRANSFORMS))
    df = pd.read_csv(csv)
    n_t = len(imgsim_pairs.TRANSFORMS)
    assert len(df) == 2 * 3 * n_t
    assert set(df["transform"]) == set(imgsim_pairs.TRANSFORMS)
    assert (df.groupby("transform")["label"].agg(["sum", "count"]).values == [3, 6]).all()
    _no_self_or_dupes(df)
    for p in set(df["image_a"]) | set(df["image_b"]):
        assert (tmp_path / p).is_file()
    # deterministic
    again = imgsim_pairs.build_near_dup(src, tmp_path / "again", list(imgsim_pairs.TRANSFORMS))
    assert csv.read_text() == again.read_text()


def test_report_builds_from_a_small_fixture(tmp_path):
    from imgsim_client.evaluate import plot_roc
    from imgsim_lab.report import build_report

    metrics = {
        "auc": 0.99,
        "eer": 0.02,
        "eer_threshold": 0.5,
        "tpr_at_fpr_1pct": 0.9,
        "tpr_at_fpr_0_1pct": 0.8,
        "best_f1": 0.97,
        "best_f1_threshold": 0.55,
        "images_per_s": 200.0,
        "n": 4,
        "positives": 2,
        "negatives": 2,
    }
    plot_roc({"a": ([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3])}, tmp_path / "roc_x.png", "x")
    study = {
        "notes": ["caltech skipped"],
        "approaches": [],
        "datasets": {
            "x": {
                "task": "near-duplicate",
                "pairs": 4,
                "roc": "roc_x.png",
                "metrics": {
                    "efficientnet-lite0": {**metrics, "groups": {"crop": 1.0}},
                    "phash": {**metrics, "auc": 0.7, "groups": {"crop": 0.6}},
                },
            }
        },
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    pdf = build_report(tmp_path, tmp_path / "report.pdf")
    data = Path(pdf).read_bytes()
    assert data.startswith(b"%PDF")
    assert 1 <= data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") <= 4
    # A font with accents is embedded (the sources cite Radenović; Helvetica has no "ć").
    assert b"DejaVuSans" in data


def test_report_has_the_real_photo_section_from_the_results():
    """The report's quality section reads results/quality.json and neardup.json (Holidays
    table, the strong near-duplicate table and its precision/recall figure)."""
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Image, Table

    from imgsim_lab.report import _quality_section

    results = Path(__file__).resolve().parents[1] / "results"
    if not (results / "quality.json").is_file() or not (results / "neardup.json").is_file():
        pytest.skip("results/quality.json or neardup.json not written yet")
    styles = getSampleStyleSheet()
    parts = _quality_section(
        json.loads((results / "quality.json").read_text()),
        json.loads((results / "neardup.json").read_text()),
        results,
        styles["Heading2"],
        styles["BodyText"],
    )
    assert sum(isinstance(p, Table) for p in parts) == 2
    assert any(isinstance(p, Image) for p in parts) == (results / "neardup_pr.png").is_file()
    assert _quality_section(None, None, results, styles["Heading2"], styles["BodyText"]) == []
