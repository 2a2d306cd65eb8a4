"""Readers for every format, task inference, config merging, precision choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertclf import BertclfError
from bertclf.config import merge
from bertclf.data import read_labeled
from bertclf.modeling import resolve_precision

from .conftest import dataset

ROWS = pd.DataFrame({"text": ["good", "bad", "NA", "meh"], "label": ["pos", "neg", "pos", "neutral"]})


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet"])
def test_every_format_reads_the_same(write, name):
    data, task = read_labeled(write(name, ROWS))
    assert data.texts == ["good", "bad", "NA", "meh"]  # the text "NA" is a text, not a missing value
    assert data.labels == ["pos", "neg", "pos", "neutral"] and task == "multiclass"
    assert data.source["rows"] == 4 and len(data.source["sha256"]) == 64


def test_multilabel_from_lists_and_from_joined_strings(write):
    listed = pd.DataFrame({"text": ["a", "b"], "labels": [["joy", "love"], ["anger"]]})
    joined = pd.DataFrame({"text": ["a", "b"], "labels": ["love|joy", "anger"]})
    for name, frame in (("l.jsonl", listed), ("l.parquet", listed), ("j.csv", joined)):
        data, task = read_labeled(write(name, frame))
        assert task == "multilabel" and data.labels == [["joy", "love"], ["anger"]], name


def test_numeric_labels_become_names(write):
    data, task = read_labeled(write("n.jsonl", pd.DataFrame({"text": ["a", "b", "c"], "label": [1, 0, 1]})))
    assert task == "binary" and data.labels == ["1", "0", "1"]


def test_real_files_with_quotes_and_embedded_newlines():
    data, task = read_labeled(dataset("banking77", "train"))
    assert task == "multiclass" and len(data.texts) == 10003 and len(set(data.labels)) == 77
    assert any("\n" in t for t in data.texts)  # the one quoted text with a newline survives intact


def test_forced_task_overrides_auto(write):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x|y", "y", "x"]})
    data, task = read_labeled(write("f.csv", frame), task="multiclass")
    assert task == "multiclass" and data.labels == ["x|y", "y", "x"]


def test_config_file_then_flags(write):
    path = write("c.yaml", "lr: 2e-5\nmax-length: 64\nepochs: 5\ndrop_empty: true\n")
    merged = merge(path, {"epochs": 2, "lr": None})
    assert merged["lr"] == 2e-5 and isinstance(merged["lr"], float)  # YAML reads 2e-5 as a string
    assert merged["max_length"] == 64 and merged["epochs"] == 2 and merged["drop_empty"] is True
    with pytest.raises(BertclfError, match="epochs = 'many' is not a valid int"):
        merge(write("bad.yaml", "epochs: many\n"), {})


def test_precision_choice():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(BertclfError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")


def test_tuned_thresholds_maximise_each_labels_f1():
    from bertclf.metrics import tune_thresholds

    rng = np.random.default_rng(0)
    truth = rng.random((400, 3)) < [0.5, 0.05, 0.0]  # a common label, a rare one, one never seen in dev
    probs = np.where(truth, rng.uniform(0.2, 0.4, truth.shape), rng.uniform(0.0, 0.18, truth.shape))
    probs[:, 0] = np.where(truth[:, 0], 0.9, 0.1)
    cuts = tune_thresholds(probs, truth.astype(int))
    assert cuts[0] == 0.5  # separable at any cut in (0.1, 0.9]: the tie goes to 0.5
    assert 0.18 < cuts[1] <= 0.2  # the rare label's scores never reach 0.5; the best cut sits below them
    assert cuts[2] == 0.5


def test_a_label_smoothed_models_thresholds_stay_above_its_negatives_target():
    """Trained with label smoothing 0.1, an unlearned label scores about 0.05 on every row, the negatives' target:
    the plain grid's lowest cut, 0.05, flags half the rows; the mapped grid starts above them and keeps 0.5."""
    from bertclf.metrics import tune_thresholds

    rng = np.random.default_rng(0)
    truth = np.zeros((1000, 2), dtype=int)
    truth[:5, 0] = truth[:100, 1] = 1
    probs = np.stack([rng.normal(0.05, 0.01, 1000),  # label 0 never learned: positives score as negatives do
                      np.where(truth[:, 1] == 1, 0.8, 0.05)], axis=1)  # label 1 learned: 0.05 off, 0.8 on
    assert tune_thresholds(probs, truth)[0] == 0.05  # the degenerate cut that flags about half the rows
    cuts = tune_thresholds(probs, truth, label_smoothing=0.1)
    assert cuts[0] == 0.5 and (probs[:, 0] >= cuts[0]).sum() == 0
    assert cuts[1] == 0.5  # a learned label is separable at any mapped cut up to 0.77: the tie still goes to 0.5
    assert min(tune_thresholds(rng.random((50, 3)), rng.random((50, 3)) < 0.3, label_smoothing=0.1)) >= 0.095
