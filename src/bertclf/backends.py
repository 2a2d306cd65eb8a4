"""Inference backends behind one interface: ``logits(encoded) -> np.ndarray`` in input order.

torch (fp32, exact), torch-bf16 (autocast, where the hardware has bf16), torch-int8 (int8 matrix products with
per-token activation scales, CPU; see :mod:`bertclf.quantize`), the compiled variants torch-bf16-compiled and
torch-int8-compiled (the same through ``torch.compile``: faster once compiled, after a one-off compile of tens of
seconds), onnx (ONNX Runtime, fp32, fused graph) and onnx-int8 (ONNX Runtime's dynamic int8 quantisation).
``auto`` picks the fastest backend that ``bertclf export`` checked against torch fp32 on the artifact's dev set and
recorded in ``bertclf.json``, never a compiled one, or without an export the model's training precision (see
:func:`choose`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import numpy as np
import torch

from .batching import Encoded
from .errors import BertclfError
from .modeling import cpu_has_fast_int8, cpu_has_native_bf16, device_type
from .predict import MAX_BATCH_ROWS, batched_logits, predict_logits
from .quantize import int8_copy

BACKENDS = ("auto", "torch", "torch-bf16", "torch-int8", "torch-bf16-compiled", "torch-int8-compiled", "onnx", "onnx-int8")
COMPILED = ("torch-bf16-compiled", "torch-int8-compiled")
ONNX_FILES = {"onnx": os.path.join("onnx", "model.onnx"), "onnx-int8": os.path.join("onnx", "model-int8.onnx")}

Logits = Callable[[Encoded], np.ndarray]


def choose(record: dict, requested: str, onnx_first: bool = False) -> str:
    """``auto``: the fastest recorded backend that passed its accuracy check; without one, the backend of the
    model's training precision (:func:`as_trained`).

    Never a compiled backend: export times them after their first call, which compiles for 13-27 s here. On this
    project's 2-core benchmark torch-bf16-compiled scored SST-2 sentences only 1.11x faster than eager bf16
    (IMDB reviews 1.02x) after a 21 s compile, and a whole 'bertclf predict' of 200,000 sentences ran slower
    with it (683 vs 709 texts/s) and peaked 81 MiB higher. They stay available by name.

    ``onnx_first`` (the server): the fastest accepted ONNX backend if there is one. ONNX Runtime releases the
    GIL for a whole call, so it runs beside the event loop and in two lanes at once; torch's Python-level
    forward does not (under load, bf16 torch served 204-250 texts/s where int8 ONNX served 406).

    A model exported on another machine carries that machine's speeds: backends this CPU lacks the instructions
    for (torch-bf16 without native bf16, torch-int8 without VNNI/AMX) are passed over.
    """
    if requested not in BACKENDS:
        raise BertclfError(f"unknown backend '{requested}'; use one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    if device_type() == "cuda":  # export's speeds are CPU speeds: on a GPU machine, the exact model on the GPU
        return "torch"
    unfit = ("torch-bf16",) * (not cpu_has_native_bf16()) + ("torch-int8",) * (not cpu_has_fast_int8())
    checked = {name: row for name, row in record.get("backends", {}).items()
               if row.get("accepted") and name not in COMPILED and not name.startswith(unfit)}
    if onnx_first and any(name.startswith("onnx") for name in checked):
        checked = {name: row for name, row in checked.items() if name.startswith("onnx")}
    return max(checked, key=lambda name: checked[name]["texts_per_s"]) if checked else as_trained(record.get("precision"))


def as_trained(precision: str | None) -> str:
    """The backend that scores a model in the precision it was trained in: torch-bf16 for a bf16-trained model on a
    CPU with native bf16, else torch (fp32; on a GPU too, as :func:`choose`).

    Such a model's epochs were already picked on bf16 dev scores (training evaluates under its autocast). bf16
    scoring of the 25,000 IMDB test reviews by a bf16-trained model (head-tail, 512 tokens) gave accuracy 0.91056
    against fp32's 0.91052 and took about 740 s from start to finish on a 2-core AVX512-BF16 EPYC.
    """
    native = device_type() == "cpu" and cpu_has_native_bf16()
    return "torch-bf16" if precision == "bf16" and native else "torch"


def device_for(backend: str) -> str:
    """Where a backend runs: the int8 and ONNX ones on the CPU (on a GPU machine too), torch and torch-bf16 on the GPU
    where there is one."""
    return "cpu" if backend.startswith(("torch-int8", "onnx")) else device_type()


def torch_logits(model: torch.nn.Module, pad_id: int, bf16: bool = False, progress: bool = False,
                 compiled: bool = False, int8: bool = False) -> Logits:
    """``compiled``: ``torch.compile`` (inductor) with the weights frozen as constants, so that inductor can
    pre-pack them for the CPU's matrix kernels, and shapes dynamic, so that one graph serves every batch. The
    compile happens on the first call. ``int8``: run an int8 copy of the model (the given one is untouched)."""
    device = next(model.parameters()).device.type
    if bf16 and not (cpu_has_native_bf16() or device == "cuda"):
        raise BertclfError("backend torch-bf16 needs a CPU with native bf16 (AVX512-BF16/AMX) or a GPU; use torch or onnx")
    if int8:
        if device != "cpu":
            raise BertclfError("backend torch-int8 runs on the CPU; on a GPU use torch or torch-bf16")
        if not cpu_has_fast_int8():  # correct, only slow: said, not refused
            print("warning: backend torch-int8 on a CPU without int8 dot-product instructions (VNNI/AMX) runs many "
                  "times slower than torch fp32; use torch, onnx or onnx-int8", file=sys.stderr)
        model = int8_copy(model)
    if compiled:
        model = torch.compile(model, dynamic=True, options={"freezing": True})

    def run(encoded: Encoded) -> np.ndarray:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return predict_logits(model, encoded, pad_id, progress, min_rows=2 if compiled else 1)

    return run


def onnx_logits(path: str, pad_id: int, threads: int | None = None, progress: bool = False,
                per_text: bool = False) -> Logits:
    """``per_text``: one text per call. Dynamic int8 quantises activations with one scale per tensor, so in a
    batch a text's scores would depend on its neighbours and their padding (1% of SST-2 labels flipped
    between batchings); alone, they depend on the text only, for about a quarter less throughput."""
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise BertclfError(f"{path}: no ONNX model; run 'bertclf export MODEL_DIR --onnx' (add --int8 for onnx-int8)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def forward(batch: dict[str, torch.Tensor]) -> np.ndarray:
        return session.run(None, {name: tensor.numpy() for name, tensor in batch.items()})[0]

    rows = 1 if per_text else MAX_BATCH_ROWS
    return lambda encoded: batched_logits(encoded, pad_id, forward, progress, max_rows=rows)


def make(name: str, model_dir: str | None, model: torch.nn.Module, pad_id: int, threads: int | None = None,
         progress: bool = False) -> Logits:
    """A logits function for a concrete backend name (not 'auto')."""
    if threads:
        torch.set_num_threads(threads)
    if name.startswith("torch"):
        return torch_logits(model, pad_id, bf16=name.startswith("torch-bf16"), progress=progress, compiled=name in COMPILED,
                            int8=name.startswith("torch-int8"))
    if model_dir is None:
        raise BertclfError(f"backend {name} needs a saved model directory with an ONNX export")
    return onnx_logits(os.path.join(model_dir, ONNX_FILES[name]), pad_id, threads, progress, per_text=name == "onnx-int8")
