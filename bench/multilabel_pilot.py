"""Short GoEmotions pilots of multi-label training choices, each against the defaults on the same data.

Each variant fine-tunes the default model on the same seeded sample of the GoEmotions train file (seed 0) for a
fixed number of epochs, without early stopping, and reports the dev macro-F1 at 0.5 per epoch and with per-label
thresholds tuned on dev (the artifact's thresholds; scored on the rows they were tuned on, so optimistic, but the
same for every variant). Variants:

- ``defaults``: the head's label biases start at the training labels' log-odds (bertclf.modeling.init_label_priors);
- ``zero biases``: the same, skipping that initialisation (the biases stay as transformers made them: zeros);
- ``class-weight balanced``: BCE ``pos_weight`` = negatives / positives per label (``--class-weight balanced``);
- ``class-weight sqrt``: a milder ``pos_weight``, the square root of that (not a bertclf option; patched in here);
- ``lr 2e-4`` and ``batch 16``: one hyperparameter changed from the defaults.

Run: python bench/multilabel_pilot.py [--rows 12000] [--epochs 2] [--variants "defaults,zero biases"]
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

VARIANTS = {
    "defaults": {},
    "zero biases": {},  # fit's init_label_priors is patched out below
    "class-weight balanced": {"class_weight": "balanced"},
    "class-weight sqrt": {"class_weight": "balanced"},  # its weights are square-rooted by the patch below
    "lr 2e-4": {"lr": 2e-4},
    "batch 16": {"batch_size": 16},
}


def read(split: str) -> pd.DataFrame:
    return pd.read_csv(DATASETS / "goemotions" / f"{split}.csv", dtype=str, keep_default_na=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=12000, help="training rows sampled (seed 0)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--variants", default="defaults,zero biases", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
    train, dev = read("train").sample(args.rows, random_state=0), read("dev")
    labels = lambda frame: [names.split("|") for names in frame["labels"]]  # noqa: E731
    balanced_weights = TextClassifier._class_weights
    patches = {
        "zero biases": mock.patch.object(bertclf.estimator, "init_label_priors", lambda model, targets: True),
        "class-weight sqrt": mock.patch.object(TextClassifier, "_class_weights",
                                               lambda self, names: balanced_weights(self, names).sqrt()),
    }
    for variant in variants:
        started = time.perf_counter()
        with patches.get(variant, contextlib.nullcontext()):
            clf = TextClassifier(epochs=args.epochs, patience=0, verbose=False, **VARIANTS[variant])
            clf.fit(train["text"].tolist(), labels(train), eval_set=(dev["text"].tolist(), labels(dev)))
        print(json.dumps({
            "variant": variant, "rows": args.rows, "epochs": args.epochs, "seconds": round(time.perf_counter() - started),
            "train_loss_by_epoch": [round(h["train_loss"], 4) for h in clf.history_],
            "dev_macro_f1_at_0.5_by_epoch": [round(h["dev"]["macro_f1"], 4) for h in clf.history_],
            "dev_macro_f1_tuned": round(clf.metrics_["dev"]["macro_f1"], 4),
        }), flush=True)


if __name__ == "__main__":
    main()
