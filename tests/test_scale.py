"""Scale-out: 2-process training (torchrun, gloo on loopback) and sharded scoring with merge-predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from safetensors.torch import load_file

from bertclf.checkpoints import directory_for
from bertclf.cli import main

from .conftest import child_env, free_port, subset
from .test_resume import wait_for_step

def torchrun(argv: list, processes: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "bertclf", *map(str, argv)]
    # The CPU (gloo) path on every machine: on a one-GPU machine two ranks would both ask for a GPU of their own.
    return subprocess.Popen(command, env=child_env(CUDA_VISIBLE_DEVICES=""), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, found through /proc, children first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    order, stack = [], [pid]
    while stack:
        current = stack.pop()
        order.append(current)
        stack.extend(children.get(current, []))
    for victim in reversed(order):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def still_model_dir(tmp_path_factory, default_model_dir) -> str:
    """The tiny random BERT without dropout: 1 and 2 processes then differ only by float summation order."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    import torch

    out = tmp_path_factory.mktemp("tiny-bert-still")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def train_args(tmp_path, write, still_model_dir):
    train = write("train.csv", subset("sst2_sentences", "train", 301, seed=5))  # odd: uneven shares on purpose
    dev = write("dev.csv", subset("sst2_sentences", "dev", 101, seed=5))
    return ["train", train, "--dev", dev, "--model", still_model_dir, "--epochs", "3", "--batch-size", "16",
            "--lr", "2e-3", "--max-length", "48", "--patience", "0", "--precision", "fp32", "--quiet"]


def record(path) -> dict:
    return json.load(open(os.path.join(path, "bertclf.json")))


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, train_args):
    single = torchrun([*train_args, "-o", tmp_path / "one"], processes=1)  # a subprocess too: on the CPU everywhere
    _, err = single.communicate(timeout=600)
    assert single.returncode == 0, err[-3000:]
    proc = torchrun([*train_args, "-o", tmp_path / "two"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    one, two = record(tmp_path / "one"), record(tmp_path / "two")
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p or p.endswith(".checkpoints")], "one artifact, no leftovers"
    assert out.count("saved model to") == 1, "only rank 0 writes and reports"
    # Same optimizer steps on the same texts: losses and dev accuracy agree to float-summation noise.
    for a, b in zip(one["history"], two["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.02 * a["train_loss"], (a, b)
    acc_one, acc_two = one["metrics"]["dev"]["accuracy"], two["metrics"]["dev"]["accuracy"]
    assert abs(acc_one - acc_two) <= 0.02, (acc_one, acc_two)  # stated tolerance: 2 points (2 of 101 dev texts)


def test_two_process_run_killed_then_resumed_equals_uninterrupted(tmp_path, train_args):
    args = [*train_args, "--checkpoint-every", "5"]
    straight = torchrun([*args, "-o", tmp_path / "straight"])
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err[-3000:]

    killed = tmp_path / "killed"
    proc = torchrun([*args, "-o", killed])
    wait_for_step(proc, directory_for(str(killed)), 25)  # inside epoch 2 (19 steps per epoch)
    kill_tree(proc.pid)  # the launcher and both workers (torchrun puts workers in their own sessions)
    proc.wait()
    assert not killed.exists()
    resumed = torchrun([*args, "-o", killed, "--resume"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(((a[k] - b[k]).abs().max() <= 1e-5) for k in a), "resumed 2-process weights differ"
    assert record(killed)["best_epoch"] == record(tmp_path / "straight")["best_epoch"]


# --------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_three_shards_merge_to_the_unsharded_output(sst_binary, tmp_path, write, suffix):
    _, model, dev = sst_binary
    source = write(f"in.{suffix}", dev.assign(id=range(len(dev))))
    whole = tmp_path / f"whole.{suffix}"
    assert main(["predict", model, source, "-o", str(whole), "--backend", "torch", "--top-k", "2"]) == 0
    shards = []
    for i in range(3):
        shards.append(str(tmp_path / f"shard-{i}.{suffix}"))
        assert main(["predict", model, source, "-o", shards[-1], "--backend", "torch", "--top-k", "2",
                     "--shard", f"{i}/3", "--chunk-rows", "7"]) == 0
    merged = tmp_path / f"merged.{suffix}"
    assert main(["merge-predictions", *reversed(shards), "-o", str(merged), "--chunk-rows", "5"]) == 0
    read = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[suffix]
    pd.testing.assert_frame_equal(read(merged), read(whole), check_exact=False, atol=1e-6)
    assert read(merged)["predicted"].tolist() == read(whole)["predicted"].tolist()
    if suffix == "csv":
        first = read(shards[1])
        assert first["input_row"].tolist() == list(range(1, len(dev), 3))


def test_merge_refuses_missing_and_overlapping_shards(sst_binary, tmp_path, write, capsys):
    _, model, dev = sst_binary
    source = write("in.csv", dev)
    shards = [str(tmp_path / f"s{i}.csv") for i in range(3)]
    for i, path in enumerate(shards):
        assert main(["predict", model, source, "-o", path, "--backend", "torch", "--shard", f"{i}/3"]) == 0
    out = str(tmp_path / "m.csv")
    assert main(["merge-predictions", shards[0], shards[2], "-o", out]) == 2
    assert "input row 1 is in none of the shard files: a shard is missing" in capsys.readouterr().err
    overlap = str(tmp_path / "again.csv")
    with open(shards[1]) as src, open(overlap, "w") as dst:
        dst.write(src.read())
    assert main(["merge-predictions", *shards, overlap, "-o", out]) == 2
    assert "input row 1 is in both" in capsys.readouterr().err
    assert main(["merge-predictions", source, "-o", out]) == 2
    assert "no input_row column" in capsys.readouterr().err
    assert not os.path.exists(out)
    for spec in ("3/3", "a/b", "-1/2"):
        assert main(["predict", model, source, f"--shard={spec}"]) == 2
        assert "--shard" in capsys.readouterr().err
