"""Property-based tests: readers round-trip any unicode; predict never crashes and keeps order and count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertclf import BertclfError, TextClassifier
from bertclf.data import read_labeled

from .conftest import subset

# Any unicode except surrogates (not encodable) and lone carriage returns (CSV normalises line ends).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\x00"), min_size=1, max_size=200)
NON_BLANK = TEXT.filter(lambda t: t.strip())
LABEL = st.sampled_from(["pos", "neg", "neutral", "ünïcødé", "with,comma", 'with "quote"'])
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(rows=st.lists(st.tuples(NON_BLANK, LABEL), min_size=2, max_size=30),
       suffix=st.sampled_from(["csv", "tsv", "jsonl", "parquet"]))
def test_readers_round_trip_any_text(tmp_path_factory, rows, suffix):
    texts, labels = zip(*rows)
    path = tmp_path_factory.mktemp("prop") / f"data.{suffix}"
    frame = pd.DataFrame({"text": texts, "label": labels})
    if suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="," if suffix == "csv" else "\t")
    data, _ = read_labeled(path, task="multiclass")
    assert data.texts == list(texts) and data.labels == list(labels)


@SETTINGS
@given(texts=st.lists(NON_BLANK, min_size=3, max_size=20), blanks=st.sets(st.integers(0, 19), min_size=1, max_size=3))
def test_blank_texts_are_named_by_row_never_dropped_silently(tmp_path_factory, texts, blanks):
    blanks = sorted(b for b in blanks if b < len(texts))
    if not blanks:
        return
    texts = [" " if i in blanks else t for i, t in enumerate(texts)]
    path = tmp_path_factory.mktemp("prop") / "data.jsonl"
    pd.DataFrame({"text": texts, "label": ["a", "b"] * (len(texts) // 2) + ["a"] * (len(texts) % 2)}).to_json(
        path, orient="records", lines=True, force_ascii=False)
    with pytest.raises(BertclfError) as err:
        read_labeled(path)
    assert f"line{'s' if len(blanks) > 1 else ''} {', '.join(str(b + 1) for b in blanks)}" in str(err.value)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir):
    train = subset("sst2_sentences", "train", 40, seed=9)
    return TextClassifier(model=tiny_model_dir, epochs=1, max_length=32, verbose=False).fit(
        train.text.tolist(), train.label.tolist())


@SETTINGS
@given(texts=st.lists(st.one_of(TEXT, st.just(""), st.text(min_size=300, max_size=2000)), min_size=1, max_size=40))
def test_predict_one_output_per_input_in_order(fitted, texts):
    probs = fitted.predict_proba(texts)
    assert probs.shape == (len(texts), 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(fitted.predict_proba(texts[::-1])[::-1], probs, atol=1e-5)
    assert fitted.predict(texts) == [fitted.classes_[i] for i in probs.argmax(axis=1)]


def test_invalid_unicode_is_a_clear_error(fitted):
    with pytest.raises(BertclfError, match=r"positions \[1\] are not valid Unicode"):
        fitted.predict(["fine", "bad \ud800 text"])
