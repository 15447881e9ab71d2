"""Metrics of a scored pairs CSV with labels: ROC AUC, EER, TPR at low FPR, best-F1 threshold.

All metrics come from sklearn (roc_curve, roc_auc_score, precision_recall_curve); plots from
matplotlib. Rows with an error (no score) are left out and counted. Needs the `[eval]` extra;
without it, importing this module says which extra to install.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgsim_client._extras import missing_extra

try:
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve
except ModuleNotFoundError as e:
    missing_extra(e, "eval", "imgsim-client evaluate", {"numpy", "sklearn", "scipy"})

from imgsim_client._csv import PairsFileError, read_table


class EvaluationError(ValueError):
    """The scored CSV cannot be evaluated (no labels, one class only, ...)."""


@dataclass
class Scored:
    """The rows of a scored CSV that have a score, with their labels and scores as arrays."""

    rows: list[dict[str, str]]
    labels: np.ndarray
    scores: np.ndarray
    skipped: int  # rows without a score (errors), left out
    columns: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # rows whose score is not a number, left out

    def groups(self, column: str) -> dict[str, np.ndarray]:
        """Row indices by value of `column`, in sorted order of the values."""
        index: dict[str, list[int]] = {}
        for i, row in enumerate(self.rows):
            index.setdefault(row[column], []).append(i)
        return {k: np.asarray(index[k]) for k in sorted(index)}


@dataclass(frozen=True)
class Metrics:
    n: int
    positives: int
    negatives: int
    auc: float
    eer: float
    eer_threshold: float
    tpr_at_fpr_1pct: float
    tpr_at_fpr_0_1pct: float
    best_f1: float
    best_f1_threshold: float

    def lines(self) -> list[str]:
        return [
            f"pairs: {self.n} ({self.positives} positive, {self.negatives} negative)",
            f"ROC AUC: {self.auc:.4f}",
            f"EER: {self.eer:.4f} at threshold {self.eer_threshold:.4f}",
            f"TPR at FPR 1%: {self.tpr_at_fpr_1pct:.4f}",
            f"TPR at FPR 0.1%: {self.tpr_at_fpr_0_1pct:.4f}",
            f"best F1: {self.best_f1:.4f} at threshold {self.best_f1_threshold:.4f}",
        ]


_LABELS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "1.0": 1, "0.0": 0}


def _parse_labels(values: list[str], name: str) -> np.ndarray:
    text = [v.strip().lower() for v in values]
    bad = [v for v in text if v not in _LABELS]
    if bad:
        raise EvaluationError(
            f"column {name!r} has {len(bad)} unparsable label(s), e.g. {bad[0]!r}; "
            "use 1/0 (or true/false)"
        )
    return np.array([_LABELS[v] for v in text], dtype=int)


def _score(text: str) -> float | None:
    """The score of a row; None for an empty one (the pair failed); ValueError for text that
    is not a finite number."""
    if not text.strip():
        return None
    value = float(text)  # ValueError names the text
    if not math.isfinite(value):
        raise ValueError(f"score {text!r} is not a finite number")
    return value


def load_scored(csv_path: Path, label_col: str = "label") -> Scored:
    """The rows that have a score, their labels and scores, and how many rows had none."""
    try:
        table = read_table(csv_path, "scored file")
    except PairsFileError as exc:
        raise EvaluationError(str(exc)) from None
    for col in (label_col, "score"):
        if col not in table.columns:
            raise EvaluationError(
                f"{csv_path} has no {col!r} column; it has: {', '.join(table.columns)}"
            )
    kept, scores, bad = [], [], []
    for line, row in enumerate(table.rows, start=2):
        try:
            value = _score(row["score"])
        except ValueError as exc:
            bad.append(f"line {line}: {exc}")
            continue
        if value is not None:
            kept.append(row)
            scores.append(value)
    labels = _parse_labels([r[label_col] for r in kept], label_col)
    skipped = len(table.rows) - len(kept) - len(bad)
    return Scored(kept, labels, np.asarray(scores, dtype=float), skipped, table.columns, bad)


def compute_metrics(labels: np.ndarray, scores: np.ndarray) -> Metrics:
    """All metrics of one set of (label, score) pairs; higher score means 'same'."""
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        only = "positive (1)" if n_pos else "negative (0)"
        raise EvaluationError(f"all {len(labels)} scored pairs are {only}: ROC needs both classes")
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    precision, recall, pr_thr = precision_recall_curve(labels, scores)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )[:-1]
    j = int(np.argmax(f1))
    return Metrics(
        n=len(labels),
        positives=n_pos,
        negatives=len(labels) - n_pos,
        auc=float(roc_auc_score(labels, scores)),
        eer=float((fpr[i] + fnr[i]) / 2),
        eer_threshold=float(thr[i]),
        tpr_at_fpr_1pct=float(tpr[fpr <= 0.01].max()),
        tpr_at_fpr_0_1pct=float(tpr[fpr <= 0.001].max()),
        best_f1=float(f1[j]),
        best_f1_threshold=float(pr_thr[j]),
    )


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """One ROC chart with a curve per name (labels, scores)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2), dpi=120)
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})", lw=1.4)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_xlabel("false positive rate (symlog)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_histogram(
    labels: np.ndarray, scores: np.ndarray, path: Path, title: str, threshold: float | None = None
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    bins = np.linspace(min(scores.min(), 0), max(scores.max(), 1), 50)
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="positive (same)", color="tab:green")
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="negative", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("score")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_file(
    csv_path: Path,
    out_dir: Path | None = None,
    label_col: str = "label",
    group_by: str | None = None,
    threshold: float | None = None,
    images_root: Path | None = None,
) -> dict:
    """Metrics (overall and per group). With out_dir: metrics.json, the plots, and report.html
    with the hardest pairs, judged at `threshold` (default: the best-F1 threshold); relative
    image paths are read from `images_root` (default: the CSV's folder)."""
    scored = load_scored(csv_path, label_col)
    labels, scores = scored.labels, scored.scores
    overall = compute_metrics(labels, scores)
    result: dict = {
        "file": str(csv_path),
        "skipped_rows_without_score": scored.skipped,
        "bad_rows": scored.bad,
        "overall": asdict(overall),
    }
    if group_by:
        if group_by not in scored.columns:
            raise EvaluationError(f"no column {group_by!r} to group by")
        groups = {}
        for value, idx in scored.groups(group_by).items():
            try:
                groups[value] = asdict(compute_metrics(labels[idx], scores[idx]))
            except EvaluationError as exc:
                groups[value] = {"error": str(exc)}
        result["groups"] = {"column": group_by, "metrics": groups}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_roc({csv_path.stem: (labels, scores)}, out_dir / "roc.png", f"ROC: {csv_path.name}")
        threshold = overall.best_f1_threshold if threshold is None else threshold
        result["threshold"] = threshold
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        plot_histogram(
            labels, scores, out_dir / "score_hist.png", f"scores: {csv_path.name}", threshold
        )
        from imgsim_client.html_report import write_report

        root = images_root or csv_path.parent
        write_report(csv_path, scored.rows, labels, scores, result, out_dir, threshold, root)
    return result


def format_result(result: dict) -> str:
    lines = Metrics(**result["overall"]).lines()
    if result["skipped_rows_without_score"]:
        lines.append(f"rows without a score (left out): {result['skipped_rows_without_score']}")
    if result.get("bad_rows"):
        lines.append(f"rows with a bad score (left out): {len(result['bad_rows'])}")
        lines += [f"  {b}" for b in result["bad_rows"][:10]]
    if "groups" in result:
        lines += [
            "",
            f"by {result['groups']['column']}:",
            f"  {'value':<16}{'n':>6}{'AUC':>8}{'EER':>8}{'TPR@1%':>8}{'F1':>8}",
        ]
        for value, m in result["groups"]["metrics"].items():
            if "error" in m:
                lines.append(f"  {value:<16} {m['error']}")
            else:
                lines.append(
                    f"  {value:<16}{m['n']:>6}{m['auc']:>8.4f}{m['eer']:>8.4f}"
                    f"{m['tpr_at_fpr_1pct']:>8.4f}{m['best_f1']:>8.4f}"
                )
    return "\n".join(lines)
