"""Would several trained models teach better together? Accuracy of each model and of their averaged probabilities.

Distillation's gain is bounded by the teacher, and the usual way to a better teacher is an ensemble (Hinton et al.
2015 distil one). Before a student is trained on an average of teachers (about 42 minutes a seed for SST-2 with
the 30,000 IMDB sentences on 2 cores), this checks on dev whether the average beats its best member at all. Each
model scores through its artifact's default backend (torch-bf16 for a model trained in bf16), as predict does.

Run: python bench/ensemble.py runs/teachers/sst2-mpnet-seed42 runs/teachers/sst2_sentences-mpnet-seed42 --dataset sst2
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from bertclf import TextClassifier
from common import DATASETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="bertclf model directories trained on the same single-label classes")
    parser.add_argument("--dataset", required=True, help="a folder of ../shared/datasets with the splits' text,label CSVs")
    parser.add_argument("--splits", default="dev,test", help="comma-separated (default: dev,test)")
    args = parser.parse_args()

    models = [TextClassifier.load(path) for path in args.models]
    classes = sorted(models[0].classes_)
    for path, model in zip(args.models, models):
        model.verbose = False
        if sorted(model.classes_) != classes:
            parser.error(f"{path} predicts {model.classes_}, {args.models[0]} {models[0].classes_}: average models of the same classes")
    for split in args.splits.split(","):
        frame = pd.read_csv(DATASETS / args.dataset / f"{split}.csv", dtype=str, keep_default_na=False)
        truth = frame["label"].to_numpy()
        # each model's probabilities, columns in the shared (sorted) class order
        probs = [model.predict_proba(frame["text"].tolist())[:, [model.classes_.index(c) for c in classes]] for model in models]
        for path, p in zip(args.models, probs):
            print(f"{split} ({len(frame)})  {path}: accuracy {np.mean(np.array(classes)[p.argmax(1)] == truth):.4f}")
        mean = np.mean(probs, axis=0)
        print(f"{split} ({len(frame)})  mean of the {len(models)} models' probabilities: accuracy "
              f"{np.mean(np.array(classes)[mean.argmax(1)] == truth):.4f}")


if __name__ == "__main__":
    main()
