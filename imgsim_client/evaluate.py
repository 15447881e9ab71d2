"""Metrics of a scored pairs CSV with labels (sklearn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


class EvaluationError(ValueError):
    """The scored CSV cannot be evaluated (no labels, one class only, ...)."""


def load_scored(
    csv_path: Path, label_col: str = "label"
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows with a score, their 0/1 labels and scores. Clear errors for unusable input."""
    try:
        df = pd.read_csv(csv_path, keep_default_na=False, dtype={"error": str})
    except FileNotFoundError:
        raise EvaluationError(f"scored file not found: {csv_path}") from None
    for col in (label_col, "score"):
        if col not in df.columns:
            raise EvaluationError(
                f"{csv_path} has no {col!r} column; it has: {', '.join(map(str, df.columns))}"
            )
    scores = pd.to_numeric(df["score"], errors="coerce")
    df = df[scores.notna()].copy()
    df["score"] = scores[scores.notna()].astype(float)
    labels = _parse_labels(df[label_col], label_col)
    if len(np.unique(labels)) < 2:
        raise EvaluationError(
            f"labels are all {int(labels[0]) if len(labels) else 'missing'}: ROC needs both "
            "positive (1) and negative (0) pairs"
        )
    return df, labels, df["score"].to_numpy(dtype=float)


def _parse_labels(col: pd.Series, name: str) -> np.ndarray:
    mapping = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "1.0": 1, "0.0": 0}
    text = col.astype(str).str.strip().str.lower()
    bad = text[~text.isin(list(mapping))]
    if len(bad):
        raise EvaluationError(
            f"column {name!r} has {len(bad)} unparsable label(s), e.g. {bad.iloc[0]!r}; "
            "use 1/0 (or true/false)"
        )
    return text.map(mapping).to_numpy(dtype=int)


def roc_auc(csv_path: Path, label_col: str = "label") -> float:
    """ROC AUC of the scored rows."""
    _, labels, scores = load_scored(csv_path, label_col)
    return float(roc_auc_score(labels, scores))
