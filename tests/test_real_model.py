"""The real default model (all-MiniLM-L6-v2) must learn SST-2 from a few hundred real sentences."""

from __future__ import annotations

import pytest

from bertclf import TextClassifier

from .conftest import subset


@pytest.mark.slow
def test_default_model_learns_sst2_from_a_few_hundred_sentences(tmp_path):
    train = subset("sst2_sentences", "train", 500, seed=0)
    dev = subset("sst2_sentences", "dev", 300, seed=0)
    clf = TextClassifier(epochs=3, batch_size=16, lr=1e-4, max_length=64, verbose=False, seed=0)
    clf.fit(train.text.tolist(), train.label.tolist(), eval_set=(dev.text.tolist(), dev.label.tolist()))
    accuracy = clf.metrics_["dev"]["accuracy"]
    assert accuracy > 0.75, f"dev accuracy {accuracy:.3f} after fine-tuning on 500 SST-2 sentences"
    # The saved artifact scores the same texts identically after a reload.
    clf.save(str(tmp_path / "m"))
    reloaded = TextClassifier.load(str(tmp_path / "m"))
    assert reloaded.evaluate(dev.text.tolist(), dev.label.tolist())["accuracy"] == accuracy
