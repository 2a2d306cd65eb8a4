"""Knowledge distillation (--teacher): the loss, the teacher's cached logits, and the checks on the teacher."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

import bertclf.train
from bertclf import BertclfError, TextClassifier
from bertclf.cli import main
from bertclf.train import distillation_loss, train

from .conftest import FAST, subset


def test_distillation_loss_is_zero_or_flat_where_the_student_matches_the_teacher():
    teacher = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert distillation_loss(teacher.clone(), teacher, 2.0, False).item() == pytest.approx(0, abs=1e-6)
    far = torch.zeros_like(teacher)
    assert distillation_loss(far, teacher, 1.0, False).item() > 0.1
    # Multi-label: BCE against the teacher's sigmoids, whose gradient vanishes at the teacher's logits.
    student = teacher.clone().requires_grad_()
    distillation_loss(student, teacher, 3.0, True).backward()
    assert torch.allclose(student.grad, torch.zeros_like(teacher), atol=1e-7)
    # The squared temperature keeps the gradient's size: at T the softened gradient is (p_s - p_t) * T / batch.
    for temperature in (1.0, 4.0):
        student = far.clone().requires_grad_()
        distillation_loss(student, teacher, temperature, False).backward()
        soft = torch.softmax(far / temperature, -1) - torch.softmax(teacher / temperature, -1)
        assert torch.allclose(student.grad, soft * temperature / len(teacher), atol=1e-6)


def _fit(tiny_model_dir, texts, labels, **params):
    return TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 2, "val_fraction": 0, **params}).fit(texts, labels)


def test_the_student_learns_from_the_teacher_by_the_given_weight(sst_binary, tiny_model_dir, token_cache):
    _, teacher_dir, _ = sst_binary
    train = subset("sst2_sentences", "train", 96, seed=5)
    texts, labels = train.text.tolist(), train.label.tolist()
    probe = subset("sst2_sentences", "test", 20, seed=5).text.tolist()
    plain = _fit(tiny_model_dir, texts, labels)
    # Weight 0: the teacher is scored (and cached) but the loss, so the model, is the plain run's.
    ignored = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, distill_weight=0.0)
    assert np.allclose(ignored.predict_proba(probe), plain.predict_proba(probe), atol=1e-6)
    cached = [np.load(path)["logits"] for path in (token_cache / "teacher").glob("*.npz")]
    assert [logits.shape for logits in cached].count((96, 2)) == 1
    # Weight 1: only the teacher teaches; labels flipped at random change nothing.
    flipped = [("positive" if y == "negative" else "negative") if i % 3 else y for i, y in enumerate(labels)]
    taught = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, distill_weight=1.0)
    taught_flipped = _fit(tiny_model_dir, texts, flipped, teacher=teacher_dir, distill_weight=1.0)
    assert np.allclose(taught.predict_proba(probe), taught_flipped.predict_proba(probe), atol=1e-6)
    assert not np.allclose(taught.predict_proba(probe), plain.predict_proba(probe), atol=1e-3)
    assert taught.training_["teacher"] == teacher_dir and taught.distill_weight == 1.0


def test_cached_teacher_logits_are_read_back_without_loading_the_teacher(sst_binary, tiny_model_dir, monkeypatch):
    _, teacher_dir, _ = sst_binary
    train = subset("sst2_sentences", "train", 48, seed=6)
    texts, labels = train.text.tolist(), train.label.tolist()
    first = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, epochs=1)

    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr(TextClassifier, "load", no_loading)
    second = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, epochs=1)
    assert second.history_[0]["train_loss"] == first.history_[0]["train_loss"]


def test_a_teacher_with_other_labels_or_task_is_refused(sst_binary, tiny_model_dir):
    _, teacher_dir, _ = sst_binary
    trec = subset("trec", "train", 40)
    with pytest.raises(BertclfError, match="the teacher predicts binary .*distil from a model trained on the same labels"):
        _fit(tiny_model_dir, trec.text.tolist(), trec.label.tolist(), teacher=teacher_dir)
    with pytest.raises(BertclfError, match="no such model directory"):
        _fit(tiny_model_dir, trec.text.tolist(), trec.label.tolist(), teacher=teacher_dir + "-missing")
    with pytest.raises(BertclfError, match="--distill-weight 1.5 is out of range"):
        _fit(tiny_model_dir, trec.text.tolist(), trec.label.tolist(), teacher=teacher_dir, distill_weight=1.5)


def test_cli_distils_with_refit_and_records_the_teacher(sst_binary, tiny_model_dir, tmp_path, write):
    _, teacher_dir, _ = sst_binary
    train = write("train.csv", subset("sst2_sentences", "train", 80, seed=7))
    out = tmp_path / "student"
    assert main(["train", train, "-o", str(out), "--model", tiny_model_dir, "--epochs", "1", "--max-length", "48",
                 "--teacher", teacher_dir, "--distill-weight", "0.7", "--distill-temperature", "3", "--refit",
                 "--quiet"]) == 0
    record = json.load(open(out / "bertclf.json"))
    assert record["params"]["teacher"] == teacher_dir
    assert (record["params"]["distill_weight"], record["params"]["distill_temperature"]) == (0.7, 3.0)
    assert record["training"]["teacher"] == record["refit"]["teacher"] == teacher_dir
    assert os.path.isfile(out / "model.safetensors") and TextClassifier.load(str(out)).predict(["fine"])[0] in ("negative", "positive")


def test_unlabeled_texts_learn_from_the_teacher_alone(sst_binary, tiny_model_dir):
    _, teacher_dir, _ = sst_binary
    train = subset("sst2_sentences", "train", 32, seed=8)
    texts, labels = train.text.tolist(), train.label.tolist()
    unlabeled = subset("sst2_sentences", "train", 200, seed=9).text.tolist()[-64:]
    probe = subset("sst2_sentences", "test", 20, seed=8).text.tolist()
    params = dict(teacher=teacher_dir, distill_weight=0.5, batch_size=8)
    student = _fit(tiny_model_dir, texts, labels, **params)
    widened = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 2, "val_fraction": 0, **params}).fit(
        texts, labels, unlabeled_texts=unlabeled)
    assert widened.data_["unlabeled"]["rows"] == 64 and widened.data_["train"]["rows_used"] == 32
    assert not np.allclose(widened.predict_proba(probe), student.predict_proba(probe), atol=1e-3)
    # Their placeholder targets stay out of the label loss: not the run that labels them all with the first class.
    first_class = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 2, "val_fraction": 0, **params}).fit(
        texts + unlabeled, labels + [widened.classes_[0]] * len(unlabeled))
    assert not np.allclose(widened.predict_proba(probe), first_class.predict_proba(probe), atol=1e-3)
    assert widened.history_[-1]["train_loss"] < first_class.history_[-1]["train_loss"]
    with pytest.raises(BertclfError, match="unlabeled texts learn only from a teacher's predictions; pass --teacher"):
        _fit(tiny_model_dir, texts, labels).fit(texts, labels, unlabeled_texts=unlabeled)
    with pytest.raises(BertclfError, match="with a --distill-weight above 0"):
        TextClassifier(model=tiny_model_dir, teacher=teacher_dir, distill_weight=0.0).fit(texts, labels, unlabeled_texts=unlabeled)


def test_unlabeled_texts_join_the_refit_and_split_into_windows_like_the_labelled(sst_binary, tiny_model_dir, monkeypatch):
    """With --long-texts chunks every window of an unlabeled text stays unlabeled (the mask follows the windows),
    and the refit trains on train + dev + the unlabeled texts."""
    _, teacher_dir, _ = sst_binary
    labelled = subset("sst2_sentences", "train", 40, seed=12)
    unlabeled = subset("sst2_sentences", "train", 300, seed=13).text.tolist()[-24:]
    masks = []  # (which text each window is from, the labelled mask) for the selection run and the refit

    def recording_train(model, train_encoded, *args, **kwargs):
        masks.append((train_encoded.text_of, kwargs["labelled"].numpy()))
        return train(model, train_encoded, *args, **kwargs)

    monkeypatch.setattr(bertclf.train, "train", recording_train)  # the estimator imports it when it trains
    clf = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1, "max_length": 16, "batch_size": 8}, teacher=teacher_dir,
                         long_texts="chunks", val_fraction=0.25, refit=True)
    clf.fit(labelled.text.tolist(), labelled.label.tolist(), unlabeled_texts=unlabeled)
    for (text_of, mask), labelled_texts in zip(masks, (30, 40), strict=True):  # selection: 30 train texts, refit: 40
        assert len(mask) == len(text_of) > labelled_texts + 24  # some texts split into several windows
        np.testing.assert_array_equal(mask, text_of < labelled_texts)
        assert set(text_of[~mask]) == set(range(labelled_texts, labelled_texts + 24))
    assert clf.truncated_["train"] > 0 and clf.refit_["rows"] == 40 and clf.data_["unlabeled"]["rows"] == 24
    assert clf.data_["train"]["rows_used"] == 40 and np.isfinite(clf.refit_["history"][0]["train_loss"])


def test_cli_trains_on_unlabeled_texts_and_warns_where_they_hold_test_texts(sst_binary, tiny_model_dir, tmp_path, write,
                                                                           capsys):
    _, teacher_dir, _ = sst_binary
    train = write("train.csv", subset("sst2_sentences", "train", 48, seed=10))
    test = subset("sst2_sentences", "test", 30, seed=10)
    extra = subset("sst2_sentences", "train", 300, seed=11).tail(40)[["text"]]
    unlabeled = write("unlabeled.csv", pd.concat([extra, test.head(3)[["text"]]]))
    out = tmp_path / "student"
    assert main(["train", train, "--test", write("test.csv", test), "-o", str(out), "--model", tiny_model_dir,
                 "--epochs", "1", "--max-length", "48", "--teacher", teacher_dir, "--unlabeled", unlabeled]) == 0
    assert "warning: test: 3 rows (10.0%) also occur in the unlabeled texts" in capsys.readouterr().err
    record = json.load(open(out / "bertclf.json"))
    assert record["data"]["unlabeled"]["rows"] == 43 and record["data"]["unlabeled"]["path"] == unlabeled
    assert main(["train", train, "-o", str(tmp_path / "no-teacher"), "--model", tiny_model_dir, "--unlabeled", unlabeled]) == 2
    assert "unlabeled texts learn only from a teacher's predictions" in capsys.readouterr().err


def test_a_teacher_predictions_file_teaches_as_the_teacher_itself(sst_binary, tiny_model_dir, tmp_path, write):
    """What `bertclf predict` writes is a teacher: its log-probabilities differ from the teacher's logits by one
    constant per text, which the softened comparison ignores, so the student is the one the model directory trains."""
    _, teacher_dir, _ = sst_binary
    train = subset("sst2_sentences", "train", 48, seed=14)
    texts, labels = train.text.tolist(), train.label.tolist()
    probe = subset("sst2_sentences", "test", 20, seed=14).text.tolist()
    scored = tmp_path / "teacher-predictions.csv"
    assert main(["predict", teacher_dir, write("texts.csv", train[["text"]]), "-o", str(scored), "--backend", "torch"]) == 0
    params = dict(distill_weight=1.0, precision="fp32")
    from_dir = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, **params)
    from_file = _fit(tiny_model_dir, texts, labels, teacher=str(scored), **params)
    assert np.allclose(from_file.predict_proba(probe), from_dir.predict_proba(probe), atol=1e-4)
    assert from_file.training_["teacher"] == str(scored)
    # Scored in shards (on two machines, say) and joined by merge-predictions: the same teacher.
    shards = [str(tmp_path / f"shard{i}.jsonl") for i in range(2)]
    for i, shard in enumerate(shards):
        assert main(["predict", teacher_dir, str(tmp_path / "texts.csv"), "-o", shard, "--backend", "torch", "--shard", f"{i}/2"]) == 0
    assert main(["merge-predictions", *shards, "--output", str(tmp_path / "merged.csv")]) == 0
    from_shards = _fit(tiny_model_dir, texts, labels, teacher=str(tmp_path / "merged.csv"), **params)
    assert np.allclose(from_shards.predict_proba(probe), from_file.predict_proba(probe), atol=1e-6)
    # A text listed twice takes the mean of its rows; a text not listed, another label set or a bad number is refused.
    frame = pd.read_csv(scored, keep_default_na=False)
    twice = pd.concat([frame, frame.head(1).assign(prob_negative=0.5, prob_positive=0.5)])
    halves = frame.head(1).assign(prob_negative=(frame.prob_negative[0] + 0.5) / 2, prob_positive=(frame.prob_positive[0] + 0.5) / 2)
    averaged = [_fit(tiny_model_dir, texts, labels, teacher=write(name, table), **params).predict_proba(probe)
                for name, table in (("twice.csv", twice), ("halves.csv", pd.concat([halves, frame.iloc[1:]])))]
    assert np.allclose(averaged[0], averaged[1], atol=1e-4)
    with pytest.raises(BertclfError, match=r"no prediction for 1 of the 48 train texts \(first: .*\); score every training text"):
        _fit(tiny_model_dir, texts, labels, teacher=write("short.csv", frame.iloc[1:]), **params)
    with pytest.raises(BertclfError, match=r"the teacher's columns \['prob_negative'\] do not match .*one prob_<class> column per class"):
        _fit(tiny_model_dir, texts, labels, teacher=write("one.csv", frame.drop(columns="prob_positive")), **params)
    with pytest.raises(BertclfError, match=r"row 3 \(the header is row 1\): a probability is missing or outside 0..1"):
        _fit(tiny_model_dir, texts, labels, teacher=write("bad.csv", frame.assign(prob_positive=[0.5, 1.5, *[0.5] * 46])), **params)


def test_a_multilabel_teacher_predictions_file_teaches_as_the_teacher_itself(tiny_model_dir, tmp_path, write):
    """Multi-label, `bertclf predict` writes each label's sigmoid; their log-odds are the teacher's logits again, so
    the student trained from the file is the one the model directory trains."""
    train = subset("goemotions", "train", 120, seed=3, label_column="labels")
    texts, labels = train.text.tolist(), train["labels"].str.split("|").tolist()
    probe = subset("goemotions", "test", 20, seed=3, label_column="labels").text.tolist()
    teacher = TextClassifier(model=tiny_model_dir, **{**FAST, "epochs": 1}, precision="fp32").fit(texts, labels)
    teacher_dir = str(tmp_path / "teacher")
    teacher.save(teacher_dir)
    scored = tmp_path / "teacher-predictions.csv"
    assert main(["predict", teacher_dir, write("texts.csv", train[["text"]]), "-o", str(scored), "--backend", "torch"]) == 0
    probabilities = pd.read_csv(scored, keep_default_na=False)[[f"prob_{name}" for name in teacher.classes_]]
    assert np.allclose(probabilities.to_numpy(), teacher.predict_proba(texts), atol=1e-6)
    params = dict(distill_weight=1.0, precision="fp32")
    from_dir = _fit(tiny_model_dir, texts, labels, teacher=teacher_dir, **params)
    from_file = _fit(tiny_model_dir, texts, labels, teacher=str(scored), **params)
    assert from_file.task_ == "multilabel"
    assert np.allclose(from_file.predict_proba(probe), from_dir.predict_proba(probe), atol=1e-4)
    # The file's numbers are what teach: the same probabilities normalised to sum to 1 train another student.
    normalised = probabilities.div(probabilities.sum(axis=1), axis=0)
    other = _fit(tiny_model_dir, texts, labels, teacher=write("normalised.csv", normalised.assign(text=train.text.to_numpy())), **params)
    assert not np.allclose(other.predict_proba(probe), from_dir.predict_proba(probe), atol=1e-3)
