"""Preprocessing and pooling variants as registry names, the study's statistics, and the
calibrated thresholds that ListModels reports and `compare` turns into a verdict."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgsim_server.core.images import decode_image
from imgsim_server.embedders import _calibration as calibration
from imgsim_server.embedders import get_cfg, list_models
from imgsim_server.embedders._preprocess import LITE0, LITE2
from imgsim_server.export import load as create


def test_variant_names_keep_the_old_names_meaning():
    """`efficientnet-lite0` is still 256 -> 224 centre crop, average pooling, no flip; every
    combination of pooling x resize policy x flip has its own name."""
    cfg = get_cfg("efficientnet-lite0")
    assert cfg.preset == LITE0 and cfg.pooling == "avg"
    assert not cfg.hflip
    lite = list_models(pattern="efficientnet-lite*")
    grid = [m for m in lite if "-full3" not in m.name]  # full320/full384: retrieval presets
    assert len(grid) == 3 * 2 * 3 * 2 and len(lite) - len(grid) == 2 * 2 * 2 * 2
    tight = get_cfg("efficientnet-lite2-260").preset
    assert (tight.resize, tight.crop, tight.fit) == (260, 260, "crop")
    full = get_cfg("efficientnet-lite0-gem-full-flip").preset
    assert (full.crop, full.fit) == (224, "full")
    assert get_cfg("efficientnet-lite0-gem-full-flip").pooling == "gem"
    assert get_cfg("efficientnet-lite2-260-flip").graph_name == "efficientnet-lite2-260"
    assert get_cfg("efficientnet-lite2").preset == LITE2


def test_resize_policies_differ_where_they_should():
    """Tight crop drops the long side's margins; full keeps the whole image, squashed."""
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 40, 200))  # a red band at the left edge
    crop = get_cfg("efficientnet-lite0-224").preset.apply(img)
    full = get_cfg("efficientnet-lite0-full").preset.apply(img)
    assert crop.shape == full.shape == (224, 224, 3)
    assert crop[:, 0, 0].max() < 50  # cropped away
    assert full[:, 0, 0].min() > 200 and full[:, -1, 2].min() > 200  # both edges kept


def test_flip_variant_is_mirror_invariant_and_the_mean_of_its_base(photos):
    """What the study assumes: a -flip vector is the normalised mean of the base variant's
    vectors of the image and its mirror."""
    imgs = [decode_image(photos[n].read_bytes()) for n in ("chelsea", "astronaut", "coffee")]
    flip, base = create("efficientnet-lite0-224-flip"), create("efficientnet-lite0-224")
    x = np.stack([flip.preprocess(i) for i in imgs])
    xm = np.stack([flip.preprocess(ImageOps.mirror(i)) for i in imgs])
    v, vm = flip.embed(x), flip.embed(xm)
    assert np.abs(v - vm).max() < 1e-5
    mean = base.embed(x) + base.embed(xm)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    assert np.abs(v - mean).max() < 1e-5
    assert (v[0] @ v[1]) < 0.9  # still discriminative


def test_bootstrap_auc_matches_sklearn_and_brackets_it():
    from sklearn.metrics import roc_auc_score

    from imgsim_lab.model_study import bootstrap_auc, weighted_aucs

    rng = np.random.default_rng(1)
    y = np.r_[np.ones(300), np.zeros(500)].astype(int)
    s = np.round(np.r_[rng.normal(1, 1, 300), rng.normal(0, 1, 500)], 1)  # many ties
    counts = rng.integers(0, 3, size=(3, len(y)))
    for row, auc in zip(counts, weighted_aucs(y, s, counts), strict=True):
        assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=row), abs=1e-12)
    lo, hi = bootstrap_auc(y, s, n=400)
    assert lo < roc_auc_score(y, s) < hi and 0.02 < hi - lo < 0.12


def test_quantile_interval_covers_the_true_quantile():
    from imgsim_lab.model_study import quantile_interval

    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(200):
        v = rng.normal(size=5000)
        _, lo, hi = quantile_interval(v, 0.99)
        hits += lo <= 2.3263 <= hi  # the normal's 99th percentile
    assert 0.90 <= hits / 200 <= 0.99


def test_list_models_reports_thresholds_and_compare_a_verdict(
    client, photos, address, capsys, tmp_path
):
    from imgsim_client.cli import main

    info = {m.name: m for m in client.list_models().models}
    default = info[client.list_models().default_model]
    tasks = {t.task for t in default.thresholds}
    assert tasks == {"near-duplicate", "same object", "same category"}
    for t in default.thresholds:
        assert t.low <= t.score <= t.high and 0 < t.tpr <= 1 and t.fpr in (0.01, 0.001)
    assert not info["pixels"].thresholds or info["pixels"].thresholds[0].dataset

    small = tmp_path / "chelsea_small.jpg"
    img = decode_image(photos["chelsea"].read_bytes())
    img.resize((img.width // 2, img.height // 2)).save(small, quality=80)
    assert main(["compare", str(photos["chelsea"]), str(small), "--server", address]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"\d\.\d{4} near-duplicate", line), line
    assert (
        main(["compare", str(photos["chelsea"]), str(photos["rocket"]), "--server", address]) == 0
    )
    score, verdict = capsys.readouterr().out.strip().split(" ", 1)
    assert verdict == calibration.verdict(default.name, float(score)) == "different"


def test_verdict_takes_the_highest_threshold_reached():
    name = "efficientnet-lite0"
    levels = {t.task: t.score for t in calibration.thresholds(name) if t.fpr == 0.01}
    assert len(levels) == 3, "thresholds.json (make study) must calibrate the default model"
    for task, thr in levels.items():
        above = [s for s in levels.values() if s > thr]
        if not above:
            assert calibration.verdict(name, thr + 1e-6) == task
    assert calibration.verdict(name, min(levels.values()) - 1e-3) == "different"
    assert calibration.verdict("no-such-model", 0.5) == ""


def test_list_models_filters_like_timms():
    from imgsim_server.embedders import EmbedderOptions, weights_available

    lite0 = list_models(pattern="efficientnet-lite0*", kind="cnn")
    assert lite0 and all(m.name.startswith("efficientnet-lite0") for m in lite0)
    assert {m.name for m in list_models(kind="classical")} == {"pixels", "color-hist", "phash"}
    opts = EmbedderOptions(backend="torch")  # served from weights, not graphs
    available = {m.name for m in list_models(available=True, opts=opts)}
    assert available == {m.name for m in list_models() if weights_available(m, opts)}
    assert "efficientnet-lite0" in available


def test_model_configs_are_pure_data():
    """No callables, nothing mutable: a config can be compared, hashed, pickled and printed."""
    import dataclasses
    import pickle

    for cfg in list_models():
        for f in dataclasses.fields(cfg):
            assert not callable(getattr(cfg, f.name)), (cfg.name, f.name)
        assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(cfg) == hash(get_cfg(cfg.name))


def test_collection_defaults_are_what_bench_quality_chose():
    """The shipped collection descriptor and index/search defaults are the ones the rule in
    results/quality.md picked (rerun `make bench-quality` after changing either)."""
    import json
    from pathlib import Path

    from imgsim_client.photos import defaults
    from imgsim_server.config import COLLECTION_MODEL

    measured = Path(__file__).resolve().parents[1] / "results" / "quality.json"
    if not measured.is_file():
        pytest.skip("results/quality.json not written yet")
    r = json.loads(measured.read_text())
    assert r["rule"]["chosen"] == COLLECTION_MODEL
    lever = r["levers"][r["default_lever"]]["lever"]
    assert bool(lever.get("rotations")) == (defaults.SEARCH_ROTATIONS > 1)
    assert lever.get("dba_k", 0) == defaults.DBA_K and lever.get("qe_k", 0) == defaults.QE_K
    if lever.get("dba_k") or lever.get("qe_k"):
        assert lever["alpha"] == defaults.DBA_ALPHA


def test_dedup_rules_are_what_bench_quality_chose():
    """dedup's shipped rule for the collection descriptor, its --no-verify threshold, its
    rotations and the verification transform are the ones results/dedup_rules.md chose by the
    worst F1 over the development sets; the other models' rules and thresholds the ones
    results/neardup.md measured on the strong set (rerun make bench-quality after changing
    either)."""
    import json
    from pathlib import Path

    import imgsim_verify
    from imgsim_client.photos import defaults
    from imgsim_client.photos.dedup import DEDUP_THRESHOLDS
    from imgsim_server.config import COLLECTION_MODEL

    results = Path(__file__).resolve().parents[1] / "results"
    if not (results / "dedup_rules.json").is_file() or not (results / "neardup.json").is_file():
        pytest.skip("results/dedup_rules.json or neardup.json not written yet")
    chosen = json.loads((results / "dedup_rules.json").read_text())
    shipped = chosen["shipped"]
    rule = chosen["rules"][shipped["rule"]]["rule"]
    keys = ("floor", "sure", "min_inliers", "min_coverage", "min_features", "unsure")
    assert defaults.DEDUP_VERIFY[COLLECTION_MODEL] == tuple(rule[k] for k in keys)
    assert rule["transform"] == imgsim_verify.TRANSFORM
    assert shipped["rotations"] == defaults.DEDUP_ROTATIONS
    assert DEDUP_THRESHOLDS[COLLECTION_MODEL] == shipped["no_verify"]
    r = json.loads((results / "neardup.json").read_text())
    for model, v in r["verified"].items():
        if model != COLLECTION_MODEL:
            want = tuple(v["rule"][k] for k in keys[:4])
            assert defaults.DEDUP_VERIFY.get(model) == want, model
    for model, m in r["methods"].items():
        if model in DEDUP_THRESHOLDS and "images_per_s" in m and model != COLLECTION_MODEL:
            assert DEDUP_THRESHOLDS[model] == round(m["best_threshold"], 2), model
    # compare --verify's answer, and dedup's rule for other models, are the collection one's
    inliers, coverage, few = rule["min_inliers"], rule["min_coverage"], rule["min_features"]
    assert (inliers, coverage, few) == (
        imgsim_verify.MIN_INLIERS,
        imgsim_verify.MIN_COVERAGE,
        imgsim_verify.MIN_FEATURES,
    )
    assert (inliers, coverage) == (defaults.DEDUP_MIN_INLIERS, defaults.DEDUP_MIN_COVERAGE)
