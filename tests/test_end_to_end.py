"""Binary, multi-class and multi-label end to end on small real subsets, with the tiny random model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from bertclf import BertclfError, TextClassifier, backends
from bertclf.data import imbalance, label_counts
from bertclf.estimator import default_epochs, derived_class_weight
from bertclf.metrics import THRESHOLD_GRID
from bertclf.cli import main
from bertclf.train import WeightAverage, label_loss

from .conftest import FAST, dataset, subset

def test_artifact_layout_and_record(sst_binary):
    clf, path, dev = sst_binary
    assert {"config.json", "model.safetensors", "tokenizer.json", "bertclf.json"} <= set(os.listdir(path))
    record = json.load(open(os.path.join(path, "bertclf.json")))
    assert record["task"] == "binary" and record["classes"] == ["negative", "positive"]
    assert len(record["history"]) == 2 and 1 <= record["best_epoch"] <= 2
    assert record["data"]["train"]["rows"] == 240 and len(record["data"]["train"]["sha256"]) == 64
    assert record["metrics"]["dev"]["rows"] == 80 and "accuracy" in record["metrics"]["dev"]
    assert record["versions"]["torch"] == torch.__version__
    config = json.load(open(os.path.join(path, "config.json")))
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["problem_type"] == "single_label_classification"
    assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp-" in p]


def test_proba_columns_follow_classes_and_id2label(sst_binary):
    clf, path, dev = sst_binary
    probs = clf.predict_proba(dev.text.tolist())
    assert probs.shape == (80, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [clf.model_.config.id2label[i] for i in range(2)] == clf.classes_
    predicted = clf.predict(dev.text.tolist())
    assert predicted == [clf.classes_[i] for i in probs.argmax(axis=1)]


def test_pipeline_loads_the_artifact_with_real_label_names(sst_binary):
    from transformers import pipeline

    clf, path, dev = sst_binary
    texts = dev.text.tolist()[:20]
    out = pipeline("text-classification", model=path, top_k=None)(texts)
    ours = clf.predict_proba(texts)
    for row, scores in zip(ours, out):
        by_name = {s["label"]: s["score"] for s in scores}
        assert set(by_name) == {"negative", "positive"}
        assert np.allclose([by_name[c] for c in clf.classes_], row, atol=1e-4)


def test_predictions_come_back_in_input_order(sst_binary):
    clf, _, dev = sst_binary
    texts = dev.text.tolist()
    permutation = np.random.default_rng(3).permutation(len(texts))
    shuffled = clf.predict_proba([texts[i] for i in permutation])
    assert np.allclose(shuffled, clf.predict_proba(texts)[permutation], atol=1e-5)


def test_load_round_trip_gives_identical_probabilities(sst_binary):
    clf, path, dev = sst_binary
    loaded = TextClassifier.load(path)
    assert loaded.classes_ == clf.classes_ and loaded.get_params()["lr"] == FAST["lr"]
    assert loaded.backend_ == clf.backend_ == backends.as_trained(clf.precision_)
    assert np.allclose(loaded.predict_proba(dev.text.tolist()), clf.predict_proba(dev.text.tolist()), atol=1e-6)


def test_same_seed_same_metrics(tiny_model_dir):
    train = subset("sst2_sentences", "train", 160, seed=5)
    runs = [
        TextClassifier(model=tiny_model_dir, seed=11, **FAST).fit(train.text.tolist(), train.label.tolist())
        for _ in range(2)
    ]
    assert runs[0].history_[-1]["train_loss"] == runs[1].history_[-1]["train_loss"]
    assert runs[0].metrics_["dev"] == runs[1].metrics_["dev"]
    other = TextClassifier(model=tiny_model_dir, seed=12, **FAST).fit(train.text.tolist(), train.label.tolist())
    assert other.history_[-1]["train_loss"] != runs[0].history_[-1]["train_loss"]


def test_multiclass_cli_train_evaluate_predict_info(tmp_path, write, tiny_model_dir, capsys):
    train = write("train.csv", subset("trec", "train", 300))
    test_frame = subset("trec", "test", 60, seed=1)
    test = write("test.csv", test_frame)
    model = tmp_path / "trec-model"
    config = write("c.yaml", "epochs: 2\nlr: 1e-3\nbatch-size: 8\nmax_length: 48\n")
    assert main(["train", train, "--test", test, "-o", str(model), "--model", tiny_model_dir,
                 "--config", config, "--batch-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "saved model to" in out and f"test ({len(test_frame)} texts, backend " in out
    record = json.load(open(model / "bertclf.json"))
    assert record["data"]["test"]["backend"] == backends.as_trained(record["precision"])  # as evaluate's auto below
    assert record["task"] == "multiclass" and record["classes"] == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert record["params"]["batch_size"] == 16 and record["params"]["lr"] == 1e-3  # flag beats config
    assert record["params"]["max_length"] == 48 and "split" in record["data"]["dev"]  # seeded split, no --dev
    assert record["metrics"]["test"]["rows"] == len(test_frame)

    assert main(["evaluate", str(model), test, "--output-dir", str(tmp_path / "ev")]) == 0
    metrics = json.load(open(tmp_path / "ev" / "metrics.json"))
    assert metrics["accuracy"] == pytest.approx(record["metrics"]["test"]["accuracy"])
    assert len(metrics["confusion_matrix"]) == 6 and set(metrics["per_class"]) == set(record["classes"])
    assert os.path.getsize(tmp_path / "ev" / "confusion_matrix.png") > 1000

    for suffix in ("csv", "jsonl", "parquet"):
        out_path = tmp_path / f"pred.{suffix}"
        assert main(["predict", str(model), test, "-o", str(out_path), "--top-k", "2"]) == 0
        frame = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[suffix](out_path)
        assert frame["text"].tolist() == test_frame["text"].tolist()  # input order and columns kept
        probs = frame[[f"prob_{c}" for c in record["classes"]]].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        assert (frame["predicted"] == [record["classes"][i] for i in probs.argmax(axis=1)]).all()
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    info = capsys.readouterr().out
    assert "multiclass (6 classes)" in info and "ABBR (" in info and "DESC (" in info and "sha256" in info


def test_predict_stdin_to_stdout_jsonl(sst_binary, capsys, monkeypatch):
    import io

    _, path, _ = sst_binary
    monkeypatch.setattr("sys.stdin", io.StringIO("a wonderful film\n\nterrible\n"))
    assert main(["predict", path, "-"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["text"] for r in rows] == ["a wonderful film", "", "terrible"]
    assert all(r["predicted"] in ("negative", "positive") for r in rows)
    assert "1 empty text(s)" in captured.err


def test_multilabel_end_to_end(tmp_path, write, tiny_model_dir, capsys):
    frame = subset("goemotions", "train", 400, label_column="labels")
    dev = subset("goemotions", "dev", 100, label_column="labels")
    train_path, dev_path = write("train.csv", frame), write("dev.jsonl", dev.assign(labels=dev["labels"].str.split("|")))
    model = tmp_path / "ge"
    assert main(["train", train_path, "--dev", dev_path, "-o", str(model), "--model", tiny_model_dir,
                 "--epochs", "1", "--lr", "1e-3", "--max-length", "48", "--quiet"]) == 0
    record = json.load(open(model / "bertclf.json"))
    assert record["task"] == "multilabel" and len(record["thresholds"]) == len(record["classes"])
    assert {"micro_f1", "macro_f1", "subset_accuracy"} <= set(record["metrics"]["dev"])
    # thresholds tuned per label on dev: never worse there than 0.5 for every label, and not all 0.5
    assert record["metrics"]["dev"]["macro_f1"] >= record["metrics"]["dev"]["at_0.5"]["macro_f1"]
    assert set(record["thresholds"]) != {0.5} and "per-label thresholds tuned on dev" in capsys.readouterr().out
    config = json.load(open(model / "config.json"))
    assert config["problem_type"] == "multi_label_classification"
    # trained with label smoothing 0.3 (targets 0.15 and 0.85), the cuts come from the grid mapped into that range
    smoothed = tmp_path / "ge-smoothed"
    assert main(["train", train_path, "--dev", dev_path, "-o", str(smoothed), "--model", tiny_model_dir, "--epochs", "1",
                 "--lr", "1e-3", "--max-length", "48", "--label-smoothing", "0.3", "--quiet"]) == 0
    cuts = set(json.load(open(smoothed / "bertclf.json"))["thresholds"])
    assert cuts <= set(np.round(THRESHOLD_GRID * 0.7 + 0.15, 4)) and cuts != {0.5}

    clf = TextClassifier.load(str(model))
    probs = clf.predict_proba(dev.text.tolist())
    assert probs.shape == (100, len(clf.classes_)) and not np.allclose(probs.sum(axis=1), 1)  # sigmoid per label
    predicted = clf.predict(dev.text.tolist())
    assert all(set(p) == {c for c, q, cut in zip(clf.classes_, row, clf.thresholds_) if q >= cut} for p, row in zip(predicted, probs))

    out = tmp_path / "pred.jsonl"
    assert main(["predict", str(model), dev_path, "-o", str(out)]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert all(isinstance(r["predicted"], list) for r in rows)
    assert main(["evaluate", str(model), dev_path, "--output-dir", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "per_label_f1.png").exists()
    assert main(["train", train_path, "--dev", dev_path, "-o", str(tmp_path / "fixed"), "--model", tiny_model_dir,
                 "--epochs", "1", "--max-length", "48", "--quiet", "--no-tune-thresholds"]) == 0
    fixed = json.load(open(tmp_path / "fixed" / "bertclf.json"))
    assert set(fixed["thresholds"]) == {0.5} and "at_0.5" not in fixed["metrics"]["dev"]


def test_api_refuses_empty_texts_and_unfitted_use(tiny_model_dir):
    with pytest.raises(BertclfError, match="not fitted"):
        TextClassifier().predict(["hello"])
    with pytest.raises(BertclfError, match=r"positions \[1\]"):
        TextClassifier(model=tiny_model_dir).fit(["good", "  ", "bad"], ["p", "n", "n"])


def test_a_second_fit_in_one_process_can_change_precision_and_accumulation(tiny_model_dir):
    train = subset("sst2_sentences", "train", 64, seed=2)
    texts, labels = train.text.tolist(), train.label.tolist()
    TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1}).fit(texts, labels)
    clf = TextClassifier(model=tiny_model_dir, precision="fp32", grad_accum=2, **{**FAST, "epochs": 1}).fit(texts, labels)
    assert clf.precision_ == "fp32"


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_predict_streams_in_chunks_with_the_same_result(sst_binary, tmp_path, write, suffix):
    _, path, dev = sst_binary
    source = write(f"in.{suffix}", dev.assign(id=range(len(dev))))
    outputs = {}
    for chunk in (7, 8192):
        out = tmp_path / f"out-{chunk}.{suffix}"
        assert main(["predict", path, source, "-o", str(out), "--chunk-rows", str(chunk), "--backend", "torch"]) == 0
        outputs[chunk] = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[suffix](out)
    pd.testing.assert_frame_equal(outputs[7], outputs[8192])
    assert outputs[7]["id"].tolist() == list(range(len(dev)))
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_balanced_class_weights_follow_inverse_frequency(tiny_model_dir):
    train = subset("sst2_sentences", "train", 200, seed=4)
    negative, positive = train[train.label == "negative"].head(60), train[train.label == "positive"].head(20)
    texts, labels = pd.concat([negative, positive]).text.tolist(), ["negative"] * 60 + ["positive"] * 20
    clf = TextClassifier(model=tiny_model_dir, class_weight="balanced", val_fraction=0, **{**FAST, "epochs": 1})
    clf.fit(texts, labels)
    assert clf._class_weights(labels).tolist() == pytest.approx([80 / (2 * 60), 80 / (2 * 20)])
    assert clf.set_params(class_weight="none").fit(texts, labels)._class_weights(labels) is None
    # auto: 60 against 20 is 3x, so balanced; the artifact records what training used
    auto = TextClassifier(model=tiny_model_dir, val_fraction=0, **{**FAST, "epochs": 1}).fit(texts, labels)
    assert (auto.class_weight, auto.class_weight_, auto.training_["class_weight"]) == ("auto", "balanced", "balanced")
    assert auto._class_weights(labels).tolist() == pytest.approx([80 / (2 * 60), 80 / (2 * 20)])


def test_label_smoothing_moves_the_loss_minimum_to_the_smoothed_targets():
    # Single-label: the gradient vanishes where the softmax is (1 - e) on the label plus e / K on every class.
    target, smoothing = torch.tensor([2]), 0.3
    optimum = torch.log(torch.tensor([[0.1, 0.1, 0.8]])).requires_grad_()  # 0.3 / 3 = 0.1 each, 0.7 + 0.1 on the label
    label_loss(False, None, smoothing)(optimum, target).backward()
    assert torch.allclose(optimum.grad, torch.zeros(1, 3), atol=1e-6)
    assert label_loss(False, None, 0.0)(optimum.detach(), target) == F.cross_entropy(optimum.detach(), target)
    # Multi-label: each target moves toward 0.5, a 1 to 0.85 and a 0 to 0.15, with the positives' weight kept.
    targets, weights = torch.tensor([[1.0, 0.0]]), torch.tensor([3.0, 0.5])
    optimum = torch.logit(torch.tensor([[0.85, 0.15]])).requires_grad_()
    label_loss(True, None, smoothing)(optimum, targets).backward()
    assert torch.allclose(optimum.grad, torch.zeros(1, 2), atol=1e-6)
    assert label_loss(True, weights, smoothing)(optimum.detach(), targets) == F.binary_cross_entropy_with_logits(
        optimum.detach(), torch.tensor([[0.85, 0.15]]), pos_weight=weights)


def test_label_smoothing_reaches_training_and_is_recorded(tiny_model_dir, tmp_path, write):
    data = subset("trec", "train", 96, seed=2)
    train, probe = write("train.csv", data), data.text.tolist()
    runs = {}
    for smoothing in (None, "0", "0.3"):
        out = tmp_path / f"smoothing-{smoothing}"
        flags = ["--label-smoothing", smoothing] if smoothing else []
        assert main(["train", train, "-o", str(out), "--model", tiny_model_dir, "--epochs", "2", "--lr", "1e-3",
                     "--max-length", "32", "--val-fraction", "0", "--quiet", *flags]) == 0
        runs[smoothing] = TextClassifier.load(str(out)).predict_proba(probe)
        assert json.load(open(out / "bertclf.json"))["params"]["label_smoothing"] == float(smoothing or 0)
    assert np.allclose(runs[None], runs["0"], atol=1e-6)  # off by default
    assert not np.allclose(runs["0.3"], runs["0"], atol=1e-4)
    with pytest.raises(BertclfError, match="--label-smoothing 1.0 is out of range"):
        TextClassifier(model=tiny_model_dir, label_smoothing=1.0, **FAST).fit(["a", "b"], ["x", "y"])


def test_weight_average_follows_the_ema_with_warm_up_and_swaps_back():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    average, expected = WeightAverage(layer, decay=0.9), 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        decay = min(0.9, (1 + step) / (10 + step))  # 0.18, 0.25, 0.31, 0.36: the warm-up caps it early on
        expected = decay * expected + (1 - decay) * value
    assert torch.allclose(average.average[0], torch.full((1, 2), expected))
    with average.swapped_in():
        assert torch.allclose(layer.weight, torch.full((1, 2), expected))
    assert torch.equal(layer.weight, torch.full((1, 2), 8.0)), "the model's own weights are back after scoring"
    restored = WeightAverage(layer, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 4 and torch.equal(restored.average[0], average.average[0])


def test_ema_decay_is_what_dev_scores_and_what_the_artifact_keeps(tiny_model_dir, tmp_path, write):
    data = subset("trec", "train", 144, seed=2)
    train, dev = data.iloc[:96], data.iloc[96:]
    probes = {}
    for decay in (None, "0.9"):
        out = tmp_path / f"ema-{decay}"
        flags = ["--ema-decay", decay] if decay else []
        assert main(["train", write("train.csv", train), "--dev", write("dev.csv", dev), "-o", str(out),
                     "--model", tiny_model_dir, "--epochs", "3", "--lr", "1e-3", "--max-length", "32",
                     "--patience", "0", "--metric", "accuracy", "--quiet", *flags]) == 0
        clf = TextClassifier.load(str(out))
        assert json.load(open(out / "bertclf.json"))["params"]["ema_decay"] == float(decay or 0)
        # the saved model is the one dev chose: its dev accuracy is the best epoch's in the history
        chosen = clf.history_[clf.best_epoch_ - 1]["dev"]["accuracy"]
        assert clf.evaluate(dev.text.tolist(), dev.label.tolist())["accuracy"] == pytest.approx(chosen, abs=1e-9)
        probes[decay] = clf.predict_proba(dev.text.tolist())
    assert not np.allclose(probes[None], probes["0.9"], atol=1e-4)
    with pytest.raises(BertclfError, match="--ema-decay 1.0 is out of range"):
        TextClassifier(model=tiny_model_dir, ema_decay=1.0, **FAST).fit(["a", "b"], ["x", "y"])


def test_auto_class_weight_balances_only_clearly_imbalanced_single_label_data():
    emotion = label_counts(pd.read_csv(dataset("emotion", "train"), dtype=str).label.tolist(), multilabel=False)
    assert round(imbalance(emotion), 1) == 9.4 and derived_class_weight("auto", emotion, False) == "balanced"
    sst2 = label_counts(pd.read_csv(dataset("sst2", "train"), dtype=str).label.tolist(), multilabel=False)
    assert imbalance(sst2) < 1.5 and derived_class_weight("auto", sst2, False) == "none"
    assert derived_class_weight("auto", {"a": 299, "b": 100}, False) == "none"
    assert derived_class_weight("auto", {"a": 300, "b": 100}, False) == "balanced"
    assert derived_class_weight("auto", {"a": 900, "b": 10}, True) == "none"  # multi-label: pos_weight hurt GoEmotions
    assert derived_class_weight("none", emotion, False) == "none"
    assert derived_class_weight("balanced", sst2, False) == "balanced"


def test_chunked_long_texts_train_on_windows_and_score_each_text_once(tiny_model_dir, tmp_path):
    from bertclf.predict import predict_logits, probabilities

    train, test = subset("imdb", "train", 40, seed=1), subset("imdb", "test", 12, seed=1)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "model"
    assert main(["train", str(tmp_path / "train.csv"), "-o", str(out), "--model", tiny_model_dir, "--epochs", "1",
                 "--max-length", "64", "--long-texts", "chunks", "--val-fraction", "0.25", "--quiet"]) == 0
    clf = TextClassifier.load(str(out))
    assert clf.long_texts == "chunks" and clf.truncated_["train"] > 20  # IMDB reviews run far past 64 tokens
    texts = test.text.tolist()
    encoded = clf._encode(texts)
    assert len(encoded.input_ids) > 2 * len(texts)
    windows = predict_logits(clf.model_, encoded, clf.tokenizer_.pad_token_id)
    probs = clf.predict_proba(texts)
    assert probs.shape == (12, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    expected = np.stack([windows[encoded.text_of == i].mean(axis=0) for i in range(12)])
    assert np.allclose(probs, probabilities(expected, False), atol=1e-5)
    assert main(["predict", str(out), str(tmp_path / "test.csv"), "-o", str(tmp_path / "p.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "p.csv")) == 12


def test_head_tail_long_texts_are_kept_by_the_artifact(tiny_model_dir, tmp_path):
    train = subset("imdb", "train", 24, seed=1)
    train.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "model"
    assert main(["train", str(tmp_path / "train.csv"), "-o", str(out), "--model", tiny_model_dir, "--epochs", "1",
                 "--max-length", "64", "--long-texts", "head-tail", "--val-fraction", "0.25", "--quiet"]) == 0
    clf = TextClassifier.load(str(out))
    assert clf.long_texts == "head-tail" and clf.truncated_["train"] > 10
    review = train.text.iloc[0] + " In the end: awful."
    ids = clf._encode([review]).input_ids[0]
    ending = clf.tokenizer_(" In the end: awful.", add_special_tokens=False)["input_ids"]
    assert len(ids) == 64 and ids[-1 - len(ending):-1] == ending  # prediction sees the review's last words
    assert clf.predict_proba([review]).shape == (1, 2)


def test_max_length_defaults_to_the_models_limit_and_a_tokenizer_without_one_needs_the_flag(tiny_model_dir, tmp_path):
    """Without --max-length a review is read up to the model's 512 tokens, not cut at a fixed shorter length; the
    artifact's tokenizer (and so a transformers pipeline) truncates there too."""
    train = subset("imdb", "train", 16, seed=3)
    texts, labels = train.text.tolist(), train.label.tolist()
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(tiny_model_dir)(texts)["input_ids"]]
    assert sum(n > 256 for n in lengths) >= 4 and max(lengths) > 512  # reviews past the old fixed 256 and past 512
    clf = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1, "max_length": None, "val_fraction": 0}).fit(texts, labels)
    assert clf.max_length_ == 512 and clf.training_["max_length"] == 512
    assert clf.truncated_["train"] == sum(n > 512 for n in lengths)
    assert max(len(ids) for ids in clf._encode(texts).input_ids) == 512
    clf.save(str(tmp_path / "model"))
    loaded = TextClassifier.load(str(tmp_path / "model"))
    assert loaded.max_length is None and loaded.max_length_ == 512
    assert np.allclose(loaded.predict_proba(texts[:4]), clf.predict_proba(texts[:4]), atol=1e-5)

    unlimited = tmp_path / "no-limit"
    shutil.copytree(tiny_model_dir, unlimited)
    config = json.loads((unlimited / "tokenizer_config.json").read_text())
    config.pop("model_max_length")
    (unlimited / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(BertclfError, match="its tokenizer states no maximum length; pass --max-length"):
        TextClassifier(model=str(unlimited), **{**FAST, "max_length": None}).fit(texts, labels)
    assert TextClassifier(model=str(unlimited), **{**FAST, "epochs": 1, "max_length": 128}).fit(texts, labels).max_length_ == 128


def test_token_budget_training_is_recorded_and_checked(tiny_model_dir, tmp_path):
    train = subset("sst2_sentences", "train", 64, seed=2)
    texts, labels = train.text.tolist(), train.label.tolist()
    clf = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 2, "max_length": 64, "batch_tokens": 256}).fit(texts, labels)
    assert len(clf.history_) == 2
    clf.save(str(tmp_path / "model"))
    assert TextClassifier.load(str(tmp_path / "model")).batch_tokens == 256
    assert clf.training_["batch_tokens"] == 256
    default = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1, "max_length": 64, "val_fraction": 0}).fit(texts, labels)
    lengths = [len(ids) for ids in default.tokenizer_(texts, truncation=True, max_length=64)["input_ids"]]
    assert default.training_["batch_tokens"] == max(int(1.25 * default.batch_size * np.mean(lengths)), max(lengths))
    uncapped = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1, "max_length": 64, "batch_tokens": 0}).fit(texts, labels)
    assert uncapped.training_["batch_tokens"] is None
    with pytest.raises(BertclfError, match="--batch-tokens 16 is out of range"):
        TextClassifier(model=tiny_model_dir, **{**FAST, "max_length": 64, "batch_tokens": 16}).fit(texts, labels)


def test_default_epochs_follow_the_data_size(tiny_model_dir):
    assert default_epochs(67_349, 32) == 3  # GLUE SST-2: 2,105 steps an epoch already
    assert default_epochs(8_002, 32) == 8  # Banking77 after the 20% dev split: 251 steps an epoch
    assert default_epochs(8_002, 16) == 4 and default_epochs(100, 32) == 10
    assert default_epochs(43_410, 32, multilabel=True) == 5 and default_epochs(100, 32, multilabel=True) == 10
    train = subset("sst2_sentences", "train", 40, seed=3)
    params = {**FAST, "epochs": None, "batch_size": 16, "val_fraction": 0, "patience": 0}
    clf = TextClassifier(model=tiny_model_dir, **params).fit(train.text.tolist(), train.label.tolist())
    assert clf.training_["epochs"] == 10 and len(clf.history_) == 10  # 3 steps an epoch: the cap
    explicit = TextClassifier(model=tiny_model_dir, **{**params, "epochs": 2}).fit(train.text.tolist(), train.label.tolist())
    assert explicit.training_["epochs"] == 2 and len(explicit.history_) == 2


def test_refit_trains_again_on_train_plus_dev_for_the_best_epoch_count(tiny_model_dir):
    train, dev = subset("trec", "train", 160, seed=4), subset("trec", "train", 48, seed=9)
    texts, labels = train.text.tolist(), train.label.tolist()
    eval_set = (dev.text.tolist(), dev.label.tolist())
    params = {**FAST, "epochs": 3, "patience": 0}
    selected = TextClassifier(model=tiny_model_dir, **params).fit(texts, labels, eval_set=eval_set)
    refit = TextClassifier(model=tiny_model_dir, refit=True, **params).fit(texts, labels, eval_set=eval_set)
    # The selection run is the same run; its dev scores stay the record (dev texts became training data).
    scores = [[(r["train_loss"], r["dev"]) for r in clf.history_] for clf in (refit, selected)]
    assert scores[0] == scores[1] and refit.best_epoch_ == selected.best_epoch_
    assert refit.metrics_["dev"] == selected.metrics_["dev"]
    rows = len(train) + len(dev)
    assert refit.refit_["rows"] == rows and refit.refit_["epochs"] == selected.best_epoch_
    assert len(refit.refit_["history"]) == selected.best_epoch_ and refit.data_["train"]["rows_used"] == rows
    # The saved model is a plain run on train + dev for that many epochs, not the selected one.
    plain = TextClassifier(model=tiny_model_dir, **{**params, "epochs": selected.best_epoch_, "val_fraction": 0})
    plain.fit(texts + eval_set[0], labels + eval_set[1])
    probe = subset("trec", "test", 30).text.tolist()
    assert np.allclose(refit.predict_proba(probe), plain.predict_proba(probe), atol=1e-6)
    assert not np.allclose(refit.predict_proba(probe), selected.predict_proba(probe), atol=1e-3)


def test_refit_needs_a_dev_set_and_is_recorded_by_the_cli(tmp_path, write, tiny_model_dir, capsys):
    small = subset("trec", "train", 40)
    with pytest.raises(BertclfError, match="--refit needs a dev set"):
        TextClassifier(model=tiny_model_dir, refit=True, val_fraction=0, **FAST).fit(small.text.tolist(), small.label.tolist())
    frame = subset("trec", "train", 200)
    train = write("train.csv", frame)
    test_frame = subset("trec", "test", 40, seed=1)
    test = write("test.csv", test_frame)
    model = tmp_path / "refit-model"
    assert main(["train", train, "--test", test, "-o", str(model), "--model", tiny_model_dir, "--epochs", "2",
                 "--lr", "1e-3", "--max-length", "48", "--refit", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"refit on {len(frame)} train + dev texts for" in out
    record = json.load(open(model / "bertclf.json"))
    assert record["params"]["refit"] is True and record["refit"]["rows"] == len(frame)
    assert record["data"]["train"]["rows_used"] == len(frame) and record["data"]["dev"]["rows"] == round(0.2 * len(frame))
    loaded = TextClassifier.load(str(model))
    assert loaded.refit_ == record["refit"]
    capsys.readouterr()
    assert main(["info", str(model)]) == 0 and f"refit       on {len(frame)} train + dev texts" in capsys.readouterr().out
    assert loaded.evaluate(test_frame.text.tolist(), test_frame.label.tolist())["accuracy"] \
        == pytest.approx(record["metrics"]["test"]["accuracy"])
