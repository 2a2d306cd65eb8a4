"""A cross-fitted teacher: every training text scored by a teacher that never learned it.

A teacher trained on all of a small training set (TREC's 5,452 questions) is sure of every one of them, so its soft
targets there are little more than the labels, smoothed. Here the train file is cut into K stratified folds; fold k's
texts are scored by a teacher trained on the other K-1 folds, with the real CLI (`bertclf train`, then
`bertclf predict`). The K prediction files, joined, are a predictions file `bertclf train --teacher FILE` reads.

    python bench/crossfit_teacher.py ../shared/datasets/trec/train.csv --folds 2 --output runs/teachers/trec-mpnet-crossfit2.csv \
        -- --model models/all-mpnet-base-v2 --epochs 5 --class-weight none --seed 42

Flags after `--` go to every fold's `bertclf train` (it trains on all its folds: `--val-fraction 0` is added).
`--split-seed` picks another fold split. Two such files one after the other are one teacher file: `--teacher FILE`
takes the mean of a text's rows, so the student learns the two cross-fitted teachers' average (on TREC 0.9724 against
0.9708 and 0.9680 from each alone, bench/accuracy.py).
The folds' models and files stay in OUTPUT's stem folder (runs/teachers/trec-mpnet-crossfit2/). Single-label train
files: the folds are stratified by label, and every fold's teacher must see every label.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import StratifiedKFold

from bertclf.artifact import atomic_write_text


def crossfit(train_file: Path, folds: int, output: Path, train_flags: list[str], split_seed: int = 0) -> pd.DataFrame:
    """Train one teacher per fold on the other folds, score the fold with it; return the joined predictions."""
    table = pd.read_csv(train_file, dtype=str, keep_default_na=False)
    work = output.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    parts = []
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=split_seed).split(table, table["label"]))
    for k, (learn, _) in enumerate(splits):  # checked before any fold trains
        if unseen := set(table["label"]) - set(table["label"].iloc[learn]):
            raise SystemExit(f"{train_file}: fold {k}'s teacher would not see the labels {sorted(unseen)}, which have "
                             f"fewer than {folds} rows; use fewer --folds")
    for k, (learn, held_out) in enumerate(splits):
        learn_file, held_out_file = work / f"fold{k}-train.csv", work / f"fold{k}-heldout.csv"
        table.iloc[learn].to_csv(learn_file, index=False)
        table.iloc[held_out][["text"]].to_csv(held_out_file, index=False)
        model, predictions = work / f"fold{k}", work / f"fold{k}-predictions.csv"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bertclf", "train", str(learn_file), "--val-fraction", "0", *train_flags,
                        "--output", str(model), "--overwrite", "--quiet"], check=True)
        subprocess.run([sys.executable, "-m", "bertclf", "predict", str(model), str(held_out_file),
                        "--output", str(predictions)], check=True)
        print(f"fold {k}: trained on {len(learn)}, scored {len(held_out)} in {time.perf_counter() - started:.0f} s", flush=True)
        parts.append(pd.read_csv(predictions, keep_default_na=False))
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_file", type=Path)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--output", type=Path, required=True, help="the joined predictions file (.csv)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold split (the teachers' own is --seed after --)")
    args = parser.parse_args(ours)
    joined = crossfit(args.train_file, args.folds, args.output, train_flags, args.split_seed)
    atomic_write_text(args.output, joined.to_csv(index=False))
    print(f"wrote {args.output}: {len(joined)} texts, each scored by the teacher that did not learn it")


if __name__ == "__main__":
    main()
