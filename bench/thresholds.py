"""Multi-label decision thresholds: per label (bertclf's), one global cut, or per label only where dev has enough
positives, compared on saved GoEmotions models.

Per-label thresholds are fitted on the dev set; for labels with a handful of dev positives (grief 13, pride 15,
relief 18) that fit is noisy. Each strategy is scored two ways: 5-fold cross-validation on dev (fitted on four
folds, scored on the fifth, the predictions pooled; a choice made on this number never sees test) and on test
with thresholds fitted on all of dev. Scoring a model's 10,853 dev and test texts took about a minute on 2 cores.

Run: python bench/thresholds.py runs/accuracy/goemotions-seed42 [more model dirs]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import MultiLabelBinarizer

from bertclf import TextClassifier
from bertclf.metrics import THRESHOLD_GRID, tune_thresholds
from common import DATASETS


def macro_f1(y: np.ndarray, decided: np.ndarray) -> float:
    return float(f1_score(y, decided, average="macro", zero_division=0))


def global_cut(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The one grid threshold, shared by all labels, with the best macro-F1."""
    scores = [macro_f1(y, probs >= t) for t in THRESHOLD_GRID]
    return np.full(y.shape[1], THRESHOLD_GRID[int(np.argmax(scores))])


def per_label_above(min_positives: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Per-label cuts for labels with at least ``min_positives`` positives in the fitting rows, the global cut else."""
    def fit(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
        own, shared = np.array(tune_thresholds(probs, y)), global_cut(probs, y)
        return np.where(y.sum(axis=0) >= min_positives, own, shared)
    return fit


STRATEGIES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "0.5": lambda probs, y: np.full(y.shape[1], 0.5),
    "per label (bertclf)": lambda probs, y: np.array(tune_thresholds(probs, y)),
    "global": global_cut,
    "per label, global below 20 positives": per_label_above(20),
    "per label, global below 50 positives": per_label_above(50),
}


def read(split: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    frame = pd.read_csv(DATASETS / "goemotions" / f"{split}.csv", dtype=str, keep_default_na=False)
    return frame["text"].tolist(), MultiLabelBinarizer(classes=classes).fit_transform(frame["labels"].str.split("|"))


def dev_cross_validated(fit: Callable, probs: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    decided = np.zeros_like(y, dtype=bool)
    for fit_rows, score_rows in KFold(folds, shuffle=True, random_state=0).split(probs):
        decided[score_rows] = probs[score_rows] >= fit(probs[fit_rows], y[fit_rows])
    return macro_f1(y, decided)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="saved GoEmotions model directories (bertclf train --output)")
    args = parser.parse_args()
    for path in args.models:
        clf = TextClassifier.load(path)
        (dev_texts, y_dev), (test_texts, y_test) = read("dev", clf.classes_), read("test", clf.classes_)
        # a model trained with --label-smoothing E learned the targets E/2 and 1 - E/2: back on the 0-1 scale the
        # strategies' grids are for (bertclf maps its grid the other way, the same cuts)
        smoothing = clf.label_smoothing
        p_dev, p_test = ((clf.predict_proba(texts) - smoothing / 2) / (1 - smoothing) for texts in (dev_texts, test_texts))
        result = {}
        for name, fit in STRATEGIES.items():
            result[name] = {"dev_5fold": round(dev_cross_validated(fit, p_dev, y_dev), 4),
                            "test": round(macro_f1(y_test, p_test >= fit(p_dev, y_dev)), 4)}
        print(json.dumps({"model": path, "macro_f1": result}), flush=True)


if __name__ == "__main__":
    main()
