"""Data checks beyond "is it readable": duplicates, train/dev/test leakage, imbalance, token lengths.

``bertclf validate`` prints all of it before any model is loaded; ``bertclf train`` prints the warnings.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .data import LabeledData, imbalance, label_counts

_SPACES = re.compile(r"\s+")


def normalized(text: str) -> str:
    """Case and whitespace folded: near-identical texts count as the same for leakage and duplicates."""
    return _SPACES.sub(" ", text).strip().lower()


def duplicates(data: LabeledData) -> dict:
    """Repeated texts, and repeated texts that carry different labels (a labelling error or an ambiguous text)."""
    labels_by_text: dict[str, list] = defaultdict(list)
    for text, label in zip(data.texts, data.labels):
        labels_by_text[normalized(text)].append(tuple(label) if isinstance(label, list) else label)
    repeated = {t: ls for t, ls in labels_by_text.items() if len(ls) > 1}
    conflicting = sorted(t for t, ls in repeated.items() if len(set(ls)) > 1)
    return {
        "duplicate_rows": sum(len(ls) - 1 for ls in repeated.values()),
        "conflicting_texts": len(conflicting),
        "conflicting_examples": conflicting[:5],
    }


def leakage(train: LabeledData, other: LabeledData) -> dict:
    """Rows of ``other`` whose text also occurs in train: their scores overstate generalisation."""
    seen = {normalized(t) for t in train.texts}
    leaked = [t for t in other.texts if normalized(t) in seen]
    return {"rows": len(leaked), "share": len(leaked) / max(len(other.texts), 1), "examples": leaked[:5]}


def unlabeled_warnings(unlabeled: LabeledData, splits: dict[str, LabeledData]) -> list[str]:
    """Unlabeled (transfer) texts that are also dev or test texts: the teacher's predictions on them train the
    model, so those scores overstate it as train leakage would."""
    lines = []
    for name in ("dev", "test"):
        leaked = leakage(unlabeled, splits[name]) if name in splits else {"rows": 0}
        if leaked["rows"]:
            lines.append(f"{name}: {leaked['rows']} rows ({leaked['share']:.1%}) also occur in the unlabeled texts, whose "
                         "teacher predictions train the model, so its scores overstate how well it generalises")
    return lines


def distribution(data: LabeledData, multilabel: bool) -> dict:
    counts = label_counts(data.labels, multilabel)
    return {"counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])), "imbalance": imbalance(counts)}


def token_lengths(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """Length in tokens (special tokens included) and how many texts ``max_length`` would cut."""
    lengths = np.asarray([len(ids) for ids in tokenizer(list(texts), truncation=False)["input_ids"]])
    return {
        "p50": int(np.percentile(lengths, 50)),
        "p90": int(np.percentile(lengths, 90)),
        "p99": int(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "max_length": max_length,
        "truncated": int((lengths > max_length).sum()),
    }


def report(splits: dict[str, LabeledData], multilabel: bool) -> dict:
    """Everything but token lengths (those need a tokenizer): per split and train-vs-others leakage."""
    train = splits["train"]
    result = {name: {"rows": len(d.texts), **duplicates(d), "labels": distribution(d, multilabel)} for name, d in splits.items()}
    for name, data in splits.items():
        if name != "train":
            result[name]["leaked_from_train"] = leakage(train, data)
    return result


def warnings(result: dict) -> list[str]:
    """The findings a user should act on, one line each."""
    lines = []
    for name, split in result.items():
        if split["conflicting_texts"]:
            lines.append(f"{name}: {split['conflicting_texts']} texts occur with different labels, "
                         f"e.g. {split['conflicting_examples'][0]!r}")
        leaked = split.get("leaked_from_train")
        if leaked and leaked["rows"]:
            lines.append(f"{name}: {leaked['rows']} rows ({leaked['share']:.1%}) also occur in train, "
                         "so its scores overstate how well the model generalises")
    train_imbalance = result["train"]["labels"]["imbalance"]
    if train_imbalance >= 10:
        lines.append(f"train: the largest class is {train_imbalance:.0f}x the smallest; watch macro-F1, not accuracy")
    return lines
