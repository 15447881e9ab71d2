"""Pair builders: expected counts, no self-pairs, no duplicates; and the report from a fixture."""

from __future__ import annotations

import shutil

import pandas as pd
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
