"""ONNX export, the int8 accuracy gate, and the inference backends behind one interface."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertclf import BertclfError, TextClassifier, backends
from bertclf.cli import build_parser, main
from bertclf import modeling
from bertclf.modeling import cpu_has_fast_int8, cpu_has_native_bf16

from .conftest import subset


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("export")
    train, dev = folder / "train.csv", folder / "dev.csv"
    subset("sst2_sentences", "train", 300, seed=4).to_csv(train, index=False)
    subset("sst2_sentences", "dev", 120, seed=4).to_csv(dev, index=False)
    out = folder / "model"
    assert main(["train", str(train), "--dev", str(dev), "-o", str(out), "--model", tiny_model_dir, "--epochs", "2",
                 "--lr", "1e-3", "--max-length", "64", "--quiet"]) == 0
    return str(out)


def test_export_records_each_backend_and_auto_picks_an_accepted_one(model_dir, capsys):
    assert main(["export", model_dir, "--onnx", "--int8", "--force"]) == 0
    assert "onnx-int8" in capsys.readouterr().out
    record = json.load(open(f"{model_dir}/bertclf.json"))
    rows = record["backends"]
    assert {"torch", "onnx", "onnx-int8"} <= set(rows)
    assert ({"torch-int8", "torch-int8-compiled"} <= set(rows)) == cpu_has_fast_int8()
    assert record["backends_checked_on"]["rows"] == 120
    assert rows["onnx"]["agreement"] == 1.0 and rows["onnx"]["accepted"] and rows["onnx"]["file"] == "onnx/model.onnx"
    for row in rows.values():
        assert row["texts_per_s"] > 0 and 0 <= row["accuracy"] <= 1
    auto = TextClassifier.load(model_dir, backend="auto")
    assert auto.backend_ in rows and rows[auto.backend_]["accepted"] and auto.backend_ not in backends.COMPILED
    for name in ("torch-bf16-compiled",) * cpu_has_native_bf16() + ("torch-int8", "torch-int8-compiled") * cpu_has_fast_int8():
        assert rows[name]["agreement"] >= 0.95 and (rows[name]["first_call_s"] > 0 or name not in backends.COMPILED)


def test_auto_never_picks_a_compiled_backend_but_the_name_does(monkeypatch):
    monkeypatch.setattr(backends, "device_type", lambda: "cpu")  # a GPU machine's auto is torch (test below)
    record = {"backends": {"torch": {"accepted": True, "texts_per_s": 100.0},
                           "onnx": {"accepted": True, "texts_per_s": 150.0},
                           "torch-int8": {"accepted": False, "texts_per_s": 200.0},
                           **{name: {"accepted": True, "texts_per_s": 300.0} for name in backends.COMPILED}}}
    assert backends.choose(record, "auto") == "onnx"
    for name in backends.COMPILED:
        assert backends.choose(record, name) == name


def test_auto_passes_over_backends_this_cpu_lacks_the_instructions_for(monkeypatch):
    monkeypatch.setattr(backends, "device_type", lambda: "cpu")
    # exported on a machine with bf16 and VNNI, loaded on one with neither
    record = {"backends": {"torch": {"accepted": True, "texts_per_s": 240.0}, "onnx": {"accepted": True, "texts_per_s": 260.0},
                           "torch-bf16": {"accepted": True, "texts_per_s": 440.0},
                           "torch-int8": {"accepted": True, "texts_per_s": 400.0}}}
    for bf16, int8, chosen in ((True, True, "torch-bf16"), (False, True, "torch-int8"), (False, False, "onnx")):
        monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: bf16)
        monkeypatch.setattr(backends, "cpu_has_fast_int8", lambda: int8)
        assert backends.choose(record, "auto") == chosen


def test_on_a_gpu_machine_auto_is_torch_and_int8_and_onnx_stay_on_the_cpu(monkeypatch):
    monkeypatch.setattr(backends, "device_type", lambda: "cuda")
    record = {"backends": {"onnx-int8": {"accepted": True, "texts_per_s": 500.0}}}
    assert backends.choose(record, "auto") == "torch"  # export measured CPU speeds
    assert [backends.device_for(n) for n in ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")] == \
        ["cuda", "cuda", "cpu", "cpu", "cpu"]


def test_the_cli_offers_every_backend():
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    assert next(a for a in predict._actions if a.dest == "backend").choices == backends.BACKENDS


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="needs a CPU with native bf16")
def test_compiled_backend_agrees_with_eager_bf16_and_scores_a_single_text(model_dir):
    texts = subset("sst2_sentences", "test", 40, seed=3).text.tolist()
    eager = TextClassifier.load(model_dir, backend="torch-bf16")
    compiled = TextClassifier.load(model_dir, backend="torch-bf16-compiled")
    assert np.abs(compiled.predict_proba(texts) - eager.predict_proba(texts)).max() < 0.05
    assert np.abs(compiled.predict_proba(texts[:1]) - eager.predict_proba(texts[:1])).max() < 0.05


def test_int8_backends_agree_with_fp32_and_a_text_scores_the_same_alone_as_in_a_batch(model_dir):
    texts = subset("sst2_sentences", "test", 60, seed=5).text.tolist()
    fp32 = TextClassifier.load(model_dir, backend="torch").predict_proba(texts)
    for name in ("torch-int8", "torch-int8-compiled"):
        clf = TextClassifier.load(model_dir, backend=name)
        batch = clf.predict_proba(texts)
        assert np.abs(batch - fp32).max() < 0.05 and (batch.argmax(1) == fp32.argmax(1)).mean() >= 0.95
        alone = np.concatenate([clf.predict_proba([t]) for t in texts[:8]])
        assert np.abs(alone - batch[:8]).max() < 1e-3  # per-token scales: neighbours and padding do not matter


@pytest.mark.parametrize("machine, flags, fast", [
    ("x86_64", {"avx2", "fma"}, False),  # the AVX2 AMD EPYC where torch._int_mm ran 64x slower than fp32
    ("x86_64", {"avx2", "avx512_vnni"}, True), ("x86_64", {"avx2", "avx_vnni"}, True), ("x86_64", {"amx_int8"}, True),
    ("aarch64", {"asimd"}, True)])
def test_fast_int8_is_told_by_the_cpu_flags(monkeypatch, machine, flags, fast):
    monkeypatch.setattr(modeling.platform, "machine", lambda: machine)
    monkeypatch.setattr(modeling, "_cpu_flags", lambda: frozenset(flags))
    assert modeling.cpu_has_fast_int8() is fast


def test_without_fast_int8_export_skips_torch_int8_and_naming_it_warns(model_dir, tmp_path, monkeypatch, capsys):
    import shutil

    import bertclf.export

    copy = shutil.copytree(model_dir, tmp_path / "model")
    monkeypatch.setattr(bertclf.export, "cpu_has_fast_int8", lambda: False)
    monkeypatch.setattr(backends, "cpu_has_fast_int8", lambda: False)
    monkeypatch.setattr(backends, "device_type", lambda: "cpu")
    assert main(["export", str(copy), "--onnx", "--int8", "--force"]) == 0
    assert "torch-int8 not checked: this CPU has no int8 dot-product instructions" in capsys.readouterr().err
    rows = json.load(open(copy / "bertclf.json"))["backends"]
    assert not {"torch-int8", "torch-int8-compiled"} & set(rows) and {"torch", "onnx", "onnx-int8"} <= set(rows)
    assert TextClassifier.load(str(copy), backend="auto").backend_ in rows
    texts = subset("sst2_sentences", "test", 4, seed=1).text.tolist()
    assert TextClassifier.load(str(copy), backend="torch-int8").predict_proba(texts).shape == (4, 2)  # slow, not refused
    assert "warning: backend torch-int8 on a CPU without int8 dot-product instructions" in capsys.readouterr().err


def test_onnx_backend_matches_torch(model_dir):
    texts = subset("sst2_sentences", "test", 50, seed=2).text.tolist()
    torch_probs = TextClassifier.load(model_dir, backend="torch").predict_proba(texts)
    onnx_probs = TextClassifier.load(model_dir, backend="onnx").predict_proba(texts)
    assert np.allclose(torch_probs, onnx_probs, atol=1e-4)


def test_int8_losing_accuracy_is_refused(model_dir, monkeypatch, capsys):
    import bertclf.export

    monkeypatch.setattr(bertclf.export, "INT8_MAX_DROP", -1.0)  # demand +100 points: any int8 model fails
    assert main(["export", model_dir, "--onnx", "--int8"]) == 2
    assert "int8 export refused: dev accuracy" in capsys.readouterr().err


def test_missing_onnx_file_is_a_clear_error(tmp_path, tiny_model_dir):
    clf = TextClassifier(model=tiny_model_dir, epochs=1, verbose=False).fit(["good", "bad", "fine", "awful"] * 3, ["p", "n"] * 6)
    clf.save(str(tmp_path / "m"))
    with pytest.raises(BertclfError, match="no ONNX model; run 'bertclf export MODEL_DIR --onnx'"):
        TextClassifier.load(str(tmp_path / "m"), backend="onnx")
    assert TextClassifier.load(str(tmp_path / "m"), backend="auto").backend_ == backends.as_trained(clf.precision_)


def test_auto_scores_an_unexported_model_in_its_training_precision(monkeypatch):
    """Without an export, auto runs a bf16-trained model in bf16 where the CPU has native bf16 (its epochs were
    picked on bf16 dev scores) and anything else in fp32; an accepted export still decides."""
    monkeypatch.setattr(backends, "device_type", lambda: "cpu")
    for native, precision, expected in [(True, "bf16", "torch-bf16"), (False, "bf16", "torch"), (True, "fp32", "torch"),
                                        (True, None, "torch")]:
        monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda native=native: native)
        assert backends.choose({"precision": precision}, "auto") == expected
    monkeypatch.setattr(backends, "device_type", lambda: "cuda")
    assert backends.choose({"precision": "bf16"}, "auto") == "torch"
    monkeypatch.setattr(backends, "device_type", lambda: "cpu")
    exported = {"precision": "bf16", "backends": {"torch-bf16": {"accepted": True, "texts_per_s": 100.0},
                                                  "onnx": {"accepted": True, "texts_per_s": 300.0}}}
    assert backends.choose(exported, "auto") == "onnx"
