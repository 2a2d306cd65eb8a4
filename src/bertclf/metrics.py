"""Stage 5 — evaluate: scikit-learn metrics, a readable table, a confusion-matrix PNG."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from .errors import BertclfError

SINGLE_LABEL_METRICS = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy")


def selection_metrics(multilabel: bool) -> tuple[str, ...]:
    return MULTI_LABEL_METRICS if multilabel else SINGLE_LABEL_METRICS


def check_metric(metric: str, multilabel: bool) -> None:
    allowed = selection_metrics(multilabel)
    if metric not in allowed:
        kind = "multi-label" if multilabel else "single-label"
        raise BertclfError(f"unknown --metric '{metric}' for a {kind} task; use one of {', '.join(allowed)}")


def compute(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], multilabel: bool) -> dict:
    """All metrics for class-id targets (single-label) or 0/1 indicator matrices (multi-label)."""
    ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, zero_division=0
    )
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    result = {
        "rows": int(len(y_true)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, y_pred, labels=ids, average="micro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
        "per_class": per_class,
    }
    if multilabel:
        result["subset_accuracy"] = float(accuracy_score(y_true, y_pred))
    else:
        result["accuracy"] = float(accuracy_score(y_true, y_pred))
        result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=ids).tolist()
    return result


THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray, label_smoothing: float = 0.0) -> list[float]:
    """Per label, the decision threshold on the grid 0.05-0.95 with the best F1 on these (dev) rows.

    Rare labels rarely reach 0.5 after BCE training, so one global 0.5 leaves their F1 near zero; each
    label gets its own cut instead. Ties go to the threshold nearest 0.5; labels with no positive row keep 0.5.
    A model trained with ``label_smoothing`` E learned the targets E/2 and 1 - E/2, so its sure negatives sit near
    E/2: the grid is mapped into that range (t -> t(1 - E) + E/2), else its lowest cut falls among them and flags
    about half the rows for a label the model never learned (GoEmotions' relief at E 0.1: 54% of dev, 53% of test).
    """
    grid = np.round(THRESHOLD_GRID * (1 - label_smoothing) + label_smoothing / 2, 4)
    cuts = []
    for label in range(y_true.shape[1]):
        truth = y_true[:, label].astype(bool)
        if not truth.any():
            cuts.append(0.5)
            continue
        predicted = probs[:, label][None, :] >= grid[:, None]  # grid × rows
        tp = (predicted & truth).sum(axis=1)
        f1 = 2 * tp / np.maximum(predicted.sum(axis=1) + truth.sum(), 1)
        best = np.flatnonzero(f1 == f1.max())
        cuts.append(float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]]))
    return cuts


def headline(metrics: dict) -> dict[str, float]:
    """The scalar metrics only, for logs and the artifact's per-epoch history."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def render(metrics: dict, classes: Sequence[str], title: str) -> None:
    """Print the headline numbers and the per-class table (rich renders it readably in any terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    summary = Table(title=title, show_header=False)
    for name, value in headline(metrics).items():
        summary.add_row(name, f"{value:.4f}")
    summary.add_row("rows", str(metrics["rows"]))
    console.print(summary)
    per_class = Table(title="per class")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for name in classes:
        row = metrics["per_class"][name]
        per_class.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    console.print(per_class)


def plot(metrics: dict, classes: Sequence[str], path: str) -> None:
    """Confusion matrix (single-label) or per-label F1 bars (multi-label) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    if "confusion_matrix" in metrics:
        matrix = np.asarray(metrics["confusion_matrix"])
        size = min(4 + 0.35 * n, 30)
        fig, ax = plt.subplots(figsize=(size, size))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), classes, rotation=90, fontsize=8 if n > 20 else 10)
        ax.set_yticks(range(n), classes, fontsize=8 if n > 20 else 10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                            color="white" if matrix[i, j] > matrix.max() / 2 else "black")
        ax.set_title(f"confusion matrix (accuracy {metrics['accuracy']:.3f})")
    else:
        f1 = [metrics["per_class"][c]["f1"] for c in classes]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * n), 4))
        ax.bar(range(n), f1)
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_ylabel("F1")
        ax.set_title(f"per-label F1 (macro {metrics['macro_f1']:.3f}, micro {metrics['micro_f1']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
