"""Shared fixtures: real data subsets from ../shared/datasets and a tiny random BERT with the real vocab."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BERTCLF_DATASETS", REPO.parent / "shared" / "datasets"))


def dataset(name: str, split: str) -> Path:
    path = DATASETS / name / f"{split}.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests read the real datasets in ../shared/datasets (or $BERTCLF_DATASETS)")
    return path


def subset(name: str, split: str, rows: int, seed: int = 0, label_column: str = "label") -> pd.DataFrame:
    """A seeded, class-balanced-ish sample of a real split (every class kept where the split allows)."""
    frame = pd.read_csv(dataset(name, split), dtype=str, keep_default_na=False)
    if label_column == "label":
        per_class = max(1, rows // frame[label_column].nunique())
        keep = [
            i for _, group in frame.groupby(label_column)
            for i in group.sample(min(len(group), per_class), random_state=seed).index
        ]
        frame = frame.loc[keep]
    return frame.sample(min(rows, len(frame)), random_state=seed).reset_index(drop=True)


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a process a test starts, read at its start so the session fixtures' settings reach it."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="session", autouse=True)
def token_cache(tmp_path_factory) -> Path:
    """The tokenisation cache of this test run (and of the processes it starts), not the user's."""
    folder = tmp_path_factory.mktemp("bertclf-cache")
    os.environ["BERTCLF_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def child_tmpdir(tmp_path_factory) -> Path:
    """Temporary folder of the processes the tests start: those killed on purpose (SIGKILL runs no cleanup)
    leave their best-epoch weights here, under pytest's own folders, not in /tmp."""
    folder = tmp_path_factory.mktemp("child-tmp")
    os.environ["TMPDIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from bertclf.modeling import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> str:
    """A 2-layer, 32-wide random BERT with the default model's real WordPiece vocab: fast and offline."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def write(tmp_path):
    """Write a DataFrame (or raw text/bytes) to tmp_path/name and return the path as a string."""

    def _write(name: str, content) -> str:
        path = tmp_path / name
        if isinstance(content, pd.DataFrame):
            if name.endswith(".jsonl"):
                content.to_json(path, orient="records", lines=True, force_ascii=False)
            elif name.endswith(".parquet"):
                content.to_parquet(path, index=False)
            else:
                content.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    return _write


FAST = dict(epochs=2, batch_size=16, lr=1e-3, max_length=64, verbose=False)


@pytest.fixture(scope="session")
def sst_binary(tmp_path_factory, tiny_model_dir):
    """One fitted and saved binary classifier (tiny model, real SST-2 subset) shared by the API and server tests.

    Trained in fp32, so that it scores in fp32 everywhere and those tests can compare probabilities to 1e-5 across
    batchings and thread counts (in bf16 the server's and the API's differed by 3e-5); the CLI and real-model tests
    check that a bf16-trained model scores alike in train, after a reload and in evaluate."""
    from bertclf import TextClassifier

    train, dev = subset("sst2_sentences", "train", 240), subset("sst2_sentences", "dev", 80)
    clf = TextClassifier(model=tiny_model_dir, **FAST, precision="fp32")
    clf.fit(train.text.tolist(), train.label.tolist(), eval_set=(dev.text.tolist(), dev.label.tolist()))
    path = tmp_path_factory.mktemp("artifacts") / "sst"
    clf.save(str(path))
    return clf, str(path), dev


def free_port() -> int:
    """A TCP port nobody listens on now (for servers and process-group rendezvous started by tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
