"""torch-int8: int8 linears with per-token activation scales must stay close to fp32, and a row's result must not
depend on the other rows of its batch (the failing of per-tensor dynamic quantisation)."""

from __future__ import annotations

import torch

from bertclf.quantize import Int8Linear, _kernels, dequantize, int8_copy, quantize_rows


def test_int8_linear_is_close_to_the_fp32_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 1536)
    x = torch.randn(3, 40, 384)
    exact, approx = linear(x), Int8Linear(linear)(x)
    assert approx.shape == exact.shape
    assert ((approx - exact).norm() / exact.norm()).item() < 0.02


def test_a_rows_result_does_not_depend_on_its_neighbours():
    torch.manual_seed(1)
    layer = Int8Linear(torch.nn.Linear(64, 32))
    row = torch.randn(1, 64)
    loud_neighbour = torch.randn(1, 64) * 1000  # with one scale per tensor it would crush this row's precision
    alone, together = layer(row), layer(torch.cat([row, loud_neighbour]))[:1]
    torch.testing.assert_close(alone, together, rtol=1e-6, atol=1e-6)
    assert ((alone - torch.nn.functional.linear(row, layer.weight_t.t().float() * layer.column_scale[:, None],
                                                layer.bias)).abs().max() < 0.05)


def test_compiled_kernels_compute_what_the_eager_functions_compute():
    torch.manual_seed(2)
    quant, dequant = _kernels()
    x = torch.randn(37, 24) * torch.linspace(0.01, 10, 37)[:, None]
    (q, s), (q_eager, s_eager) = quant(x), quantize_rows(x)
    assert torch.equal(q, q_eager) and torch.allclose(s, s_eager)
    w, col, bias = torch.randint(-127, 128, (24, 16), dtype=torch.int8), torch.rand(16), torch.randn(16)
    acc = torch._int_mm(q, w)
    torch.testing.assert_close(dequant(acc, s, col, bias), dequantize(acc, s_eager, col, bias))


def test_int8_copy_quantises_the_encoder_only_and_leaves_the_model_alone(tiny_model_dir):
    from bertclf.modeling import load_classifier

    _, model = load_classifier(tiny_model_dir, classes=["a", "b"])
    before = {n: type(m) for n, m in model.named_modules()}
    quantized = int8_copy(model)
    assert {n: type(m) for n, m in model.named_modules()} == before
    kinds = {n: type(m) for n, m in quantized.named_modules()}
    encoder_linears = [n for n, t in before.items() if t is torch.nn.Linear and ".encoder." in f".{n}"]
    assert encoder_linears and all(kinds[n] is Int8Linear for n in encoder_linears)
    assert all(kinds[n] is torch.nn.Linear for n in before if "pooler" in n and before[n] is torch.nn.Linear)
    assert kinds["classifier"] is torch.nn.Linear
    ids = torch.randint(1000, 2000, (2, 12))
    with torch.inference_mode():
        exact, approx = model.eval()(input_ids=ids).logits, quantized(input_ids=ids).logits
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max() + 1e-3
