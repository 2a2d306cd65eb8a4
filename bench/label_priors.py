"""Multi-label head biases at zero vs at the labels' log-odds (bertclf.modeling.init_label_priors), on GoEmotions.

Each variant fine-tunes the default model on the same seeded sample of the GoEmotions train file (seed 0) for a
fixed number of epochs, without early stopping, and reports the dev macro-F1 at 0.5 per epoch and with per-label
thresholds tuned on dev (the artifact's thresholds; scored on the rows they were tuned on, so optimistic, but the
same for both variants). Run: python bench/label_priors.py [--rows 12000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from unittest import mock

import pandas as pd

import bertclf.estimator
from bertclf import TextClassifier
from common import DATASETS


def read(split: str) -> pd.DataFrame:
    return pd.read_csv(DATASETS / "goemotions" / f"{split}.csv", dtype=str, keep_default_na=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12000, help="training rows sampled (seed 0)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    train, dev = read("train").sample(args.rows, random_state=0), read("dev")
    labels = lambda frame: [names.split("|") for names in frame["labels"]]  # noqa: E731
    for variant in ("label priors", "zero biases"):
        # "zero biases": fit skips the initialisation (the new head's biases stay as transformers made them: zeros)
        skip = mock.patch.object(bertclf.estimator, "init_label_priors", lambda model, targets: True)
        started = time.perf_counter()
        with skip if variant == "zero biases" else contextlib.nullcontext():
            clf = TextClassifier(epochs=args.epochs, patience=0, verbose=False)
            clf.fit(train["text"].tolist(), labels(train), eval_set=(dev["text"].tolist(), labels(dev)))
        print(json.dumps({
            "variant": variant, "rows": args.rows, "epochs": args.epochs, "seconds": round(time.perf_counter() - started),
            "train_loss_by_epoch": [round(h["train_loss"], 4) for h in clf.history_],
            "dev_macro_f1_at_0.5_by_epoch": [round(h["dev"]["macro_f1"], 4) for h in clf.history_],
            "dev_macro_f1_tuned": round(clf.metrics_["dev"]["macro_f1"], 4),
        }), flush=True)


if __name__ == "__main__":
    main()
