"""int8 inference in torch on CPU: every linear layer of the encoder becomes an int8 matrix product.

Weights are int8 with one scale per output channel; activations are quantised at run time with one scale per
token (row), so a text's scores do not depend on the other texts in its batch or on their padding. Dynamic
quantisation with one scale per tensor (ONNX Runtime's, ``torch.ao``'s) lets the loudest token of a batch set
everyone's precision: 1% of SST-2 labels flipped between batchings, which is why bertclf's onnx-int8 scores one
text per call. The product is ``torch._int_mm`` (int8 x int8 -> int32, oneDNN's VNNI kernels where the CPU has
them): on this project's 2-core AVX512-VNNI machine 708-812 GOP/s against bf16's 345-420 GFLOP/s for the
encoder's shapes. The per-token quantise and dequantise steps are compiled (inductor) into one loop each; where
compiling is not possible (no C++ compiler) they run as plain torch ops, slower but the same numbers.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from functools import lru_cache

import torch

INT8_MAX = 127


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 values, fp32 scale per row as a column)."""
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / INT8_MAX
    return torch.round(x / scale).to(torch.int8), scale


def dequantize(acc: torch.Tensor, row_scale: torch.Tensor, column_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """int32 products back to fp32: scale of the row times scale of the weight's channel, plus the bias."""
    return acc.float() * row_scale * column_scale + bias


@lru_cache(maxsize=1)
def _kernels() -> tuple[Callable, Callable]:
    """Compiled quantise/dequantise (shapes dynamic: one compile serves every batch), tried once on a small
    input so that a machine that cannot compile falls back to the eager functions with a note."""
    quant, dequant = torch.compile(quantize_rows, dynamic=True), torch.compile(dequantize, dynamic=True)
    try:
        q, scale = quant(torch.randn(5, 8))
        dequant(torch._int_mm(q, torch.ones(8, 16, dtype=torch.int8)), scale, torch.ones(16), torch.zeros(16))
    except Exception as err:  # inductor needs a working C++ toolchain
        print(f"note: int8 kernels not compiled ({type(err).__name__}); using eager torch ops", file=sys.stderr)
        return quantize_rows, dequantize
    return quant, dequant


class Int8Linear(torch.nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and int8 activations (per token)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / INT8_MAX
        quantized = torch.round(weight / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        self.register_buffer("weight_t", quantized.t().contiguous())  # (in, out): the layout _int_mm runs fastest on
        self.register_buffer("column_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inside a whole-model torch.compile, inductor fuses the plain functions with their neighbours itself.
        quant, dequant = (quantize_rows, dequantize) if torch.compiler.is_compiling() else _kernels()
        rows = x.reshape(-1, x.shape[-1])
        q, row_scale = quant(rows)
        out = dequant(torch._int_mm(q, self.weight_t), row_scale, self.column_scale, self.bias)
        return out.reshape(*x.shape[:-1], -1)


def int8_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` for CPU inference whose encoder linears are :class:`Int8Linear`.

    The pooler (one token per text) and the classification head stay fp32: they cost nothing and quantising
    them would only add error. The original model is left as it was (export and fit still use it); the copy
    shares its parameters (new modules, same tensors), so it costs only the int8 weights: a full deep copy
    raised the peak RSS of a 'predict' by about 170 MiB.
    """
    quantized = copy.deepcopy(model, memo={id(p): p for p in model.parameters()}).cpu().eval()
    base = quantized.base_model
    pooler = getattr(base, "pooler", None)
    keep = {id(m) for m in pooler.modules()} if pooler is not None else set()
    for parent in list(base.modules()):
        if id(parent) in keep:
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return quantized
