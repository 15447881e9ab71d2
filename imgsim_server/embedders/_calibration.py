"""Calibrated thresholds per model and task, and the verdict they give a score.

`make study` (imgsim_lab.model_study) measures, on labelled sets, the score that 1% and 0.1%
of unrelated pairs reach for each task, and writes them to `thresholds.json` beside this module
(package data). ListModels reports them; Compare names the verdict of its score.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.json")
VERDICT_FPR = 0.01  # verdicts use the thresholds that 1% of unrelated pairs reach
DIFFERENT = "different"


@dataclass(frozen=True)
class Threshold:
    """The score that a fraction `fpr` of a set's negative pairs reach, for one task."""

    task: str  # "near-duplicate", "same object" or "same category"
    dataset: str
    fpr: float
    score: float
    low: float  # 95% interval of `score`
    high: float
    tpr: float  # fraction of the set's positive pairs above `score`


@functools.cache
def _table() -> dict[str, tuple[Threshold, ...]]:
    if not THRESHOLDS_FILE.is_file():
        return {}
    raw = json.loads(THRESHOLDS_FILE.read_text())
    fields = Threshold.__dataclass_fields__
    return {
        model: tuple(Threshold(**{k: v for k, v in t.items() if k in fields}) for t in rows)
        for model, rows in raw.items()
    }


def thresholds(model: str) -> tuple[Threshold, ...]:
    """The model's calibrated thresholds (empty if it was not calibrated)."""
    return _table().get(model, ())


@functools.cache
def _levels(model: str) -> tuple[Threshold, ...]:
    return tuple(
        sorted((t for t in thresholds(model) if t.fpr == VERDICT_FPR), key=lambda t: -t.score)
    )


def verdict(model: str, score: float) -> str:
    """The task of the highest 1%-FPR threshold the score reaches (for the CNNs: near-duplicate
    above same object above same category), "different" below all; "" without calibration."""
    levels = _levels(model)  # once per model: verdicts are given per pair
    if not levels:
        return ""
    return next((t.task for t in levels if score >= t.score), DIFFERENT)
