"""Stage 8 — export: ONNX (fused fp32) and dynamic int8 into the artifact, each checked against torch fp32.

Every backend (the torch ones too: bf16 where the CPU has it, and int8, which needs no file) is scored on
the artifact's dev set: texts/s, accuracy, and argmax agreement with torch fp32. The results go into
``bertclf.json`` under ``backends``; ``--backend auto`` picks the fastest one that was accepted. Any backend losing more than 0.5 point of dev accuracy is marked not accepted, so ``auto``
never picks it; an ONNX int8 file doing so is refused (``force`` keeps it, still not accepted).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

from . import artifact, backends
from .data import read_labeled
from .errors import BertclfError
from .estimator import TextClassifier, holdout_split
from .modeling import cpu_has_fast_int8, cpu_has_native_bf16
from .predict import decide

INT8_MAX_DROP = 0.005  # accuracy, as a fraction: 0.5 point


def dev_set(record: dict, dev_file: str | None) -> tuple[list[str], list]:
    """The dev texts the model was selected on: its file, or the same seeded split of its train file."""
    options = record.get("data_options", {})
    read = lambda path: read_labeled(path, task=record["task"], **options)[0]  # noqa: E731
    if dev_file:
        data = read(dev_file)
        return data.texts, data.labels
    dev, train = record["data"].get("dev", {}), record["data"]["train"]
    source = dev if dev.get("path") else train if "split" in dev else None
    if source is None or not os.path.isfile(source.get("path", "")):
        raise BertclfError("the artifact's dev data is not available here; pass --dev FILE (labelled, like the training data)")
    data = read(source["path"])
    if data.source["sha256"] != source["sha256"]:
        raise BertclfError(f"{source['path']}: changed since training (sha256 differs); pass --dev FILE")
    if source is dev:
        return data.texts, data.labels
    params = record["params"]
    _, dev_idx, _ = holdout_split(data.labels, record["task"] == "multilabel", params["val_fraction"], params["seed"])
    return [data.texts[i] for i in dev_idx], [data.labels[i] for i in dev_idx]


def _score(clf: TextClassifier, logits_fn, encoded, targets: np.ndarray, reference: np.ndarray | None) -> tuple[dict, np.ndarray]:
    multilabel = clf.task_ == "multilabel"
    start = time.perf_counter()
    logits_fn(encoded)  # warm-up: first calls allocate and pick kernels (and compile, for the compiled backends)
    first_call_s = time.perf_counter() - start
    start = time.perf_counter()
    decided = decide(encoded.pool(logits_fn(encoded)), multilabel, clf.thresholds_)
    seconds = time.perf_counter() - start
    correct = (decided == targets).all(axis=1) if multilabel else decided == targets
    same = reference if reference is not None else decided
    agree = (decided == same).all(axis=1) if multilabel else decided == same
    row = {"texts_per_s": round(len(targets) / seconds, 1), "accuracy": float(correct.mean()),
           "agreement": float(agree.mean()), "first_call_s": round(first_call_s, 1)}
    return row, decided


def _export_fp32(clf: TextClassifier, path: str) -> None:
    """torch → ONNX (dynamic batch and length), then ONNX Runtime's transformer fusions where they apply."""

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    model = clf.model_.to("cpu").eval()
    # The sample must hold padding, or the exporter traces a graph that ignores the attention mask.
    sample = torch.tensor([[clf.tokenizer_.cls_token_id or 101] + [1000] * 6 + [clf.tokenizer_.sep_token_id or 102],
                           [clf.tokenizer_.cls_token_id or 101, 1000, clf.tokenizer_.sep_token_id or 102] + [clf.tokenizer_.pad_token_id] * 5])
    mask = (torch.arange(8)[None, :] < torch.tensor([[8], [3]])).long()
    raw = path + ".raw.onnx"
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    torch.onnx.export(Logits(model).eval(), (sample, mask), raw, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        config = model.config
        optimize_model(raw, model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size).save_model_to_file(path)
        os.unlink(raw)
    except Exception as err:  # an architecture the fusion passes do not know: keep the plain graph
        print(f"note: ONNX Runtime fusions not applied ({type(err).__name__}); using the plain export", file=sys.stderr)
        os.replace(raw, path)


def export(model_dir: str, int8: bool = False, force: bool = False, dev_file: str | None = None) -> dict:
    """Export into ``model_dir/onnx/`` and record each backend's check; returns the ``backends`` record."""
    record = artifact.read_record(model_dir)
    texts, labels = dev_set(record, dev_file)
    clf = TextClassifier.load(model_dir, backend="torch")  # the fp32 reference every backend is checked against
    clf.model_ = clf.model_.to("cpu")  # the backends are checked where they will serve: on a GPU machine too
    clf.verbose = False
    encoded = clf._encode(texts)
    targets = clf._targets(labels).numpy()
    pad = clf.tokenizer_.pad_token_id

    results, reference = {}, None
    # Backends this CPU runs slower than fp32 are not checked (minutes on a large model), so auto cannot pick them.
    bf16 = ["torch-bf16", "torch-bf16-compiled"] if cpu_has_native_bf16() else []
    torch_int8 = ["torch-int8", "torch-int8-compiled"] if cpu_has_fast_int8() else []  # the torch-int8 ones need no file
    if not torch_int8:
        print("note: torch-int8 not checked: this CPU has no int8 dot-product instructions (VNNI/AMX), where torch's "
              "int8 product is many times slower than fp32; onnx-int8 does not need them", file=sys.stderr)
    candidates = ["torch", *bf16, *torch_int8]
    for name in candidates:
        results[name], decided = _score(clf, backends.make(name, None, clf.model_, pad), encoded, targets, reference)
        reference = decided if reference is None else reference

    work = tempfile.mkdtemp(prefix=".onnx.tmp-", dir=model_dir)
    try:
        fp32 = os.path.join(work, "model.onnx")
        _export_fp32(clf, fp32)
        results["onnx"], _ = _score(clf, backends.onnx_logits(fp32, pad), encoded, targets, reference)
        files = {"onnx": fp32}
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            best = None
            for per_channel in (False, True):  # keep whichever agrees better with fp32 on this dev set
                path = os.path.join(work, f"model-int8-{'pc' if per_channel else 'pt'}.onnx")
                # Fused contrib ops have no ONNX shape inference; their outputs are float tensors. The
                # quantizer logs a pre-processing hint to the root logger for every call: not for our users.
                logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
                quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, per_channel=per_channel,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
                row, _ = _score(clf, backends.onnx_logits(path, pad, per_text=True), encoded, targets, reference)
                row["per_channel"] = per_channel
                if best is None or row["agreement"] > best[0]["agreement"]:
                    best = (row, path)
            results["onnx-int8"], files["onnx-int8"] = best
        torch_accuracy = results["torch"]["accuracy"]
        for name, row in results.items():
            row["delta"] = row["accuracy"] - torch_accuracy
            row["accepted"] = row["delta"] >= -INT8_MAX_DROP
            if name in files:
                row["file"] = backends.ONNX_FILES[name]
        int8_row = results.get("onnx-int8")
        if int8_row and not int8_row["accepted"] and not force:
            raise BertclfError(
                f"int8 export refused: dev accuracy {int8_row['accuracy']:.4f} is {-int8_row['delta'] * 100:.2f} points "
                f"below torch fp32 ({torch_accuracy:.4f}), more than {INT8_MAX_DROP * 100:.1f}; "
                "use the onnx backend, or pass --force to keep it (auto will not pick it)"
            )
        os.makedirs(os.path.join(model_dir, "onnx"), exist_ok=True)
        for name, path in files.items():
            os.replace(path, os.path.join(model_dir, backends.ONNX_FILES[name]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["backends"] = results
    record["backends_checked_on"] = {"rows": len(texts), "threads": torch.get_num_threads()}
    artifact.atomic_write_text(os.path.join(model_dir, artifact.RECORD_FILE), json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return results
