"""Exported W8A8 models on bf16 activations (``model.to(torch.bfloat16)`` after ``visq.export``): the int8
kernels read bf16 inputs and write bf16 outputs (oneDNN rescales in fp32 inside the GEMM), and the weight scales
stay fp32."""

import copy

import pytest
import torch
from torch import nn

import visq
from tests.deploy.conftest import fake_and_exported
from visq import Recipe, Rule, Uniform
from visq.deploy.w8a8 import Int8Linear
from visq.kernels import onednn
from visq.testing import tiny_vit


def test_linear_on_bf16_is_the_fp32_result_rounded_once():
    # inputs on the quantizer's power-of-two grid divide exactly in both dtypes, so both see the same codes
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(32, 48)).eval()
    recipe = Recipe((Rule("*.weight_quantizer", Uniform(bits=8, symmetric=True, granularity="channel")),
                     Rule("*.input_quantizer", Uniform(bits=8))))
    calib = torch.randn(64, 32)
    model = visq.export(visq.freeze(visq.quantize(layer, recipe, calib=calib, progress=False)))
    quantizer = model[0].input_quantizer
    quantizer.scale.fill_(2.0 ** -5)
    x = (torch.randint(-100, 100, (5, 32)).float() * 2.0 ** -5)
    with torch.no_grad():
        fp32 = model(x)
        half = copy.deepcopy(model).to(torch.bfloat16)
        got = half(x.bfloat16())
    assert isinstance(half[0], Int8Linear) and got.dtype == torch.bfloat16
    assert half[0].weight_scale.dtype == torch.float32  # the kernel's own scale is not rounded to bf16
    assert half[0].bias.dtype == torch.bfloat16 and half[0].input_quantizer.scale.dtype == torch.bfloat16
    # one rounding to bf16 (8 significant bits), plus the bias rounded to bf16
    bias = model[0].bias.abs()
    assert ((got.float() - fp32).abs() <= fp32.abs() * 2.0 ** -8 + bias * 2.0 ** -8 + 1e-6).all()


@pytest.mark.skipif(not onednn.available(), reason="no exact oneDNN int8 linear on this CPU")
def test_bf16_kernel_writes_bf16():
    w = torch.randint(-127, 128, (16, 24), dtype=torch.int8)
    x = torch.randint(0, 256, (3, 24), dtype=torch.uint8)
    out = onednn.linear(x, 0.5, 3, onednn.PackedWeight(w), torch.ones(16), None, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ((x.float() - 3) * 0.5) @ w.float().t(), rtol=2 ** -8, atol=0)


def test_vit_on_bf16_stays_as_close_as_the_fake_quant_model(images):
    """End to end on bf16, the exported model (int8 attention and linears) moves from its fp32 self no more than
    the fake-quant model moves from its own fp32 self: the bf16 rounding, not a kernel, decides the difference."""
    ref, out = fake_and_exported(visq.quantize(tiny_vit(), "w8a8", calib=images, progress=False))
    with torch.no_grad():
        fake32, out32 = ref(images), out(images)
        fake16 = copy.deepcopy(ref).to(torch.bfloat16)(images.bfloat16())
        out16 = copy.deepcopy(out).to(torch.bfloat16)(images.bfloat16())
    assert out16.dtype == torch.bfloat16
    fake_drift = (fake16.float() - fake32).abs().max()
    assert (out16.float() - out32).abs().max() <= 1.5 * fake_drift
    assert (out16.float() - fake16.float()).abs().max() <= 2 * fake_drift
