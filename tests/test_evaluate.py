"""`evaluate` metrics on small scored CSVs whose answers are known."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from imgsim_client.cli import main
from imgsim_client.evaluate import EvaluationError, compute_metrics, evaluate_file


def _csv(tmp_path, labels, scores, **extra):
    path = tmp_path / "scored.csv"
    pd.DataFrame({"label": labels, "score": scores, **extra}).to_csv(path, index=False)
    return path


def test_perfectly_separable_is_one(tmp_path):
    m = evaluate_file(_csv(tmp_path, [1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))
    assert m["overall"]["auc"] == 1.0
    assert m["overall"]["eer"] == 0.0
    assert m["overall"]["best_f1"] == 1.0
    assert m["overall"]["tpr_at_fpr_1pct"] == 1.0


def test_reversed_is_zero(tmp_path):
    m = evaluate_file(_csv(tmp_path, [0, 0, 0, 1, 1, 1], [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]))
    assert m["overall"]["auc"] == 0.0


def test_four_rows_worked_by_hand():
    # positives 0.9, 0.4; negatives 0.8, 0.1. Of the 4 (pos, neg) pairs, 3 are ordered
    # correctly (0.9>0.8, 0.9>0.1, 0.4>0.1), so AUC = 3/4. At threshold 0.4 we flag
    # {0.9, 0.8, 0.4}: TP 2, FP 1, FN 0 -> P 2/3, R 1, F1 0.8 (the best: 0.9 gives 2/3, 0.1
    # gives 2/3). At threshold 0.8: FPR 1/2, FNR 1/2 -> EER 0.5. No threshold has FPR <= 1%
    # with a TP except 0.9 (TPR 1/2).
    m = compute_metrics([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1])
    assert m.auc == pytest.approx(0.75)
    assert m.best_f1 == pytest.approx(0.8)
    assert m.best_f1_threshold == pytest.approx(0.4)
    assert m.eer == pytest.approx(0.5)
    assert m.eer_threshold == pytest.approx(0.8)
    assert m.tpr_at_fpr_1pct == pytest.approx(0.5)


def test_group_by_outputs_and_cli(tmp_path, capsys):
    path = _csv(
        tmp_path,
        [1, 0, 1, 0, 1, 0],
        [0.9, 0.1, 0.2, 0.8, 0.7, 0.3],
        transform=["a", "a", "b", "b", "c", "c"],
    )
    out = tmp_path / "m"
    assert main(["evaluate", str(path), "--out", str(out), "--group-by", "transform"]) == 0
    text = capsys.readouterr().out
    assert "ROC AUC:" in text and "by transform:" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["groups"]["metrics"]["a"]["auc"] == 1.0
    assert metrics["groups"]["metrics"]["b"]["auc"] == 0.0
    assert (out / "roc.png").stat().st_size > 1000
    assert (out / "score_hist.png").stat().st_size > 1000


def test_rows_without_score_are_left_out(tmp_path):
    path = _csv(tmp_path, [1, 0, 1], [0.9, 0.1, None], error=["", "", "INVALID_ARGUMENT: x"])
    m = evaluate_file(path)
    assert m["skipped_rows_without_score"] == 1 and m["overall"]["n"] == 2


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["1", "1"], "all 2 scored pairs are positive"),
        (["0", "0"], "all 2 scored pairs are negative"),
        (["yes", "maybe"], "unparsable label"),
    ],
)
def test_clear_errors(tmp_path, labels, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate_file(_csv(tmp_path, labels, [0.5, 0.6]))


def test_missing_label_column(tmp_path, capsys):
    path = tmp_path / "s.csv"
    pd.DataFrame({"score": [0.1, 0.2]}).to_csv(path, index=False)
    assert main(["evaluate", str(path)]) == 1
    assert "no 'label' column" in capsys.readouterr().err
