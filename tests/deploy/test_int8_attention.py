"""Exported attention: q.k^T and probs.v as int8 GEMMs on the quantizers' codes (visq.kernels.int8.matmul_static),
for timm attention, diffusers' classic processor and the generic processor wrapper; exact against the fake-quant
products in integers, and which attention stays fake-quant and why."""

import warnings

import pytest
import torch
from torch import nn

import visq
from visq.calibrate import CalibSet, Call, observing
from visq.kernels.int8 import matmul_static, static_codes
from visq.quantizers import SiteShape, Uniform, build
from visq.testing import tiny_sd, tiny_transformer, tiny_vit

warnings.filterwarnings("ignore", category=FutureWarning)


def _calibrated(spec, *tensors):
    quantizers = [build(spec, SiteShape("activation", t.shape[-1], -1)) for t in tensors]
    with observing(nn.ModuleList(quantizers)):
        for q, t in zip(quantizers, tensors):
            q(t)
    return quantizers


@pytest.mark.parametrize("symmetric", [False, True])
def test_matmul_static_is_the_fake_quant_product_in_exact_integers(symmetric):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 20, 16, generator=gen) + 0.3, torch.rand(2, 3, 16, 24, generator=gen)
    qa, qb = _calibrated(Uniform(bits=8, symmetric=symmetric), a, b)
    got = matmul_static(a, qa, b, qb)
    # reference: the dequantized operands' product in float64, where these integer sums are exact
    (ca, da, sa), (cb, db, sb) = static_codes(a, qa), static_codes(b, qb)
    exact = ((ca.double() + da) @ (cb.double() + db)) * (sa.double() * sb.double())
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)
    torch.testing.assert_close(got, qa(a) @ qb(b), rtol=1e-5, atol=1e-5)  # fake-quant: same values, float sums
    assert (not symmetric) == (da != 0 and db != 0)  # the asymmetric case exercises every zero-point term


def _close_to_fake_quant(obj, run):
    with torch.no_grad():
        fake = run()
        visq.export(obj)
        exported = run()
    scale = fake.abs().max()
    assert (exported - fake).abs().max() <= 1e-3 * scale  # a probs code may flip at a tie: within one step
    return exported


def test_vit_attention_runs_int8_and_matches_fake_quant():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = visq.quantize(tiny_vit(), "w8a8", calib=x, progress=False)
    _close_to_fake_quant(model, lambda: model(x))
    assert model.visq_export.attention == ["blocks.0.attn", "blocks.1.attn"]
    assert all(model.get_submodule(p).int8_attention for p in model.visq_export.attention)
    assert "int8 attention: 2 modules" in visq.summary(model)


def test_stable_diffusion_classic_processor_runs_int8():
    pipe = tiny_sd()
    options = {"num_inference_steps": 2}
    visq.quantize(pipe, "w8a8", method="temporal", calib=["a red circle"], calib_options=options, progress=False)

    def run():
        out = pipe(["a red circle"], num_inference_steps=2, output_type="latent",
                   generator=torch.Generator().manual_seed(0))
        return torch.as_tensor(out.images)

    _close_to_fake_quant(pipe, run)  # per-timestep scales: the current step's codes
    assert len(pipe.unet.visq_export.attention) == 8 and not pipe.unet.visq_export.attention_kept


def test_generic_processor_runs_int8():
    model, kwargs = tiny_transformer("sd3")
    calib = CalibSet([Call((), kwargs, timestep=500.0)])
    visq.quantize(model, "w8a8", calib=calib, progress=False)
    _close_to_fake_quant(model, lambda: model(**kwargs)[0])
    assert len(model.visq_export.attention) == 3


def test_attention_without_an_integer_kernel_is_named():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = visq.export(visq.quantize(tiny_vit(), "w8a8", method="ptq4vit", calib=x, progress=False))
    assert not model.visq_export.attention
    assert set(model.visq_export.attention_kept) == {"blocks.0.attn", "blocks.1.attn"}
    assert "probs_quantizer is a TwinUniformQuantizer" in visq.summary(model)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matmul_static_traces_in_one_graph_with_the_eager_result(symmetric):
    # torch.compile must not break the graph on reading the zero points (it did: int(zero)), and the traced
    # form (zero-point offsets as tensors) must give the eager integers
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 20, 16, generator=gen) + 0.3, torch.rand(2, 3, 16, 24, generator=gen)
    qa, qb = _calibrated(Uniform(bits=8, symmetric=symmetric), a, b)
    torch._dynamo.reset()
    traced = torch.compile(lambda x, y: matmul_static(x, qa, y, qb, 0.125), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(traced(a, b), matmul_static(a, qa, b, qb, 0.125), rtol=1e-6, atol=0)
