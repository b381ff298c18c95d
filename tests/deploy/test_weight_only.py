"""Weight-only export: packed 4-bit storage (round trip, size on disk), kernels against the fake-quant forward; and
convolutions, weight-only (int8 storage) or W8A8 (oneDNN's int8 convolution)."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import visq
from tests.deploy.conftest import fake_and_exported
from visq import Recipe, Rule
from visq.deploy.w8a8 import Int8Conv2d
from visq.deploy.weight_only import Int4Linear, Int8WeightConv2d, Int8WeightLinear
from visq.kernels import int4, onednn
from visq.quantizers import Uniform


def _mlp(width: int = 256) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)).eval()


@pytest.mark.parametrize("k", [6, 7])
def test_pack_unpack_round_trip(k):
    codes = torch.randint(-8, 8, (5, k), generator=torch.Generator().manual_seed(k))
    packed = int4.pack(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k + 1) // 2)
    assert torch.equal(int4.unpack(packed, k), codes.to(torch.int8))
    assert int(packed[0, 0]) == (int(codes[0, 0]) + 8) | (int(codes[0, 1]) + 8) << 4  # element 2j: low nibble
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        int4.pack(torch.tensor([[8, 0]]))


@pytest.mark.parametrize("recipe", ["w4a16", "w4a16-g32", "w3a16-g64", "w4a16-sym", "w4a16-g32-sym"])
def test_int4_dequant_path_bit_equal_and_tinygemm_close(recipe):
    x = torch.randn(32, 256)
    ref, out = fake_and_exported(visq.quantize(_mlp(), recipe, calib=x, progress=False))
    assert isinstance(out[0], Int4Linear)
    y = torch.randn(9, 256)
    with torch.no_grad():
        assert torch.equal(out(y), ref(y))  # fp32 activations: unpack + F.linear, the fake-quant arithmetic
        expected = ref.to(torch.bfloat16)(y.bfloat16()).float()
        got = out.to(torch.bfloat16)(y.bfloat16()).float()
    assert out[0].tinygemm and out[0].kernel_weight is not None  # bf16 activations ran tinygemm
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()  # bf16 scales: close, not equal


def test_int4_asymmetric_zero_points_closed_form():
    # one row, range [-1, 2] on the 16-level grid: scale 0.2, zero point round(1 / 0.2) = 5
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.9, 2.0, 1.3, 0.2, 0.1]])
    layer = nn.Linear(8, 1, bias=False)
    layer.weight.data.copy_(w)
    out = visq.export(visq.quantize(nn.Sequential(layer), "w4a16-asym", calib=torch.randn(2, 8), progress=False))
    assert isinstance(out[0], Int4Linear)
    assert torch.allclose(out[0].weight_scale, torch.tensor([[0.2]]))
    assert int(out[0].weight_zero) == 5 - 8  # unsigned zero 5 on the packer's signed grid
    expected = (torch.clamp(torch.round(w / 0.2) + 5, 0, 15) - 5) * 0.2
    assert torch.allclose(int4.dequantize(out[0].packed, out[0].weight_scale, 8, torch.float32, out[0].weight_zero),
                          expected)


def test_int4_checkpoint_is_an_eighth_of_fp32(tmp_path):
    x = torch.randn(32, 256)
    float_model = _mlp()
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()}, tmp_path / "fp32.safetensors")
    model = visq.export(visq.quantize(_mlp(), "w4a16-g128", calib=x, progress=False))
    visq.save(model, tmp_path / "q")
    ratio = os.path.getsize(tmp_path / "q" / "model.safetensors") / os.path.getsize(tmp_path / "fp32.safetensors")
    assert 0.12 < ratio < 0.14  # 4 bits a weight, one fp32 scale per 128 weights, fp32 biases
    assert "kernel_weight" not in str(model.state_dict().keys())  # tinygemm's layout is rebuilt, not saved


def test_int8_weight_only_matches_fake_quant():
    x = torch.randn(32, 256)
    ref, out = fake_and_exported(visq.quantize(_mlp(), "w8a16", calib=x, progress=False))
    assert isinstance(out[0], Int8WeightLinear)
    y = torch.randn(9, 256)
    with torch.no_grad():
        expected, got = ref(y), out(y)
    assert torch.equal(got, expected)  # fp32: dequant + F.linear, the fake-quant arithmetic
    assert "int8 weight-only (_weight_int8pack_mm for bf16" in visq.summary(out)
    with torch.no_grad():
        bf16 = out.to(torch.bfloat16)(y.bfloat16()).float()
    assert (bf16 - expected).abs().max() <= 0.02 * expected.abs().max()


def test_asymmetric_8bit_weights_that_do_not_fit_int8_stay_fake_quant():
    model = nn.Sequential(nn.Linear(16, 4))
    model[0].weight.data = torch.rand(4, 16) + 0.1  # all positive: zero point 0, codes up to 255
    quantized = visq.quantize(model, "w8a16-asym", calib=torch.randn(2, 16), progress=False)
    ref, out = fake_and_exported(quantized)
    assert not isinstance(out[0], Int8WeightLinear)
    assert "do not fit int8" in visq.summary(out)
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(out(x), ref(x))


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, stride=2, groups=4),
                         nn.SiLU(), nn.Conv2d(16, 8, 1, bias=False)).eval()


@pytest.mark.parametrize("recipe", ["w8a16", "w4a16"])
def test_int8_conv_storage_matches_fake_quant_and_round_trips(recipe, tmp_path):
    x = torch.randn(2, 3, 12, 12)
    ref, out = fake_and_exported(visq.quantize(_convnet(), recipe, calib=x, progress=False))
    assert all(isinstance(out[i], Int8WeightConv2d) for i in (0, 2, 4))
    assert out[0].qweight.dtype == torch.int8 and out[0].qweight.shape == (16, 3, 3, 3)
    assert not any(p.dtype == torch.float32 and p.ndim == 4 for p in out.state_dict().values())  # no float kernels
    y = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        expected = ref(y)
        assert torch.equal(out(y), expected)  # fp32: the fake-quant weight, dequantized from its codes
    assert "int8 weight storage (dequantized per call + F.conv2d)" in visq.summary(out)
    _assert_round_trip(out, tmp_path, Int8WeightConv2d, y, expected)


def _assert_round_trip(out, folder, cls, y, expected):
    """visq.save / visq.load rebuild the exported convolutions (grouped one included) bit for bit."""
    visq.save(out, folder)
    loaded = visq.load(_convnet(), folder)
    assert isinstance(loaded[2], cls) and loaded[2].conv["groups"] == 4
    with torch.no_grad():
        assert torch.equal(loaded(y), expected)


@pytest.mark.skipif(not onednn.conv_available(), reason="oneDNN's int8 convolution is not exact on this CPU")
@pytest.mark.parametrize("symmetric", [False, True])
def test_convolutions_with_quantized_inputs_run_int8_and_round_trip(symmetric, tmp_path):
    x = torch.randn(2, 3, 12, 12)
    recipe = Recipe((Rule("*.weight_quantizer", Uniform(bits=8, symmetric=True, granularity="channel")),
                     Rule("*.input_quantizer", Uniform(bits=8, symmetric=symmetric))))
    ref, out = fake_and_exported(visq.quantize(_convnet(), recipe, calib=x, progress=False))
    assert all(isinstance(out[i], Int8Conv2d) for i in (0, 2, 4))
    y = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        expected, got = ref(y), out(y)
    # the same integer sums as the fake-quant convolution: only float rounding differs
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert "int8 oneDNN qconv2d W8A8 (static per-tensor act)" in visq.summary(out)
    _assert_round_trip(out, tmp_path, Int8Conv2d, y, got)


def test_convolutions_without_an_exact_int8_kernel_stay_fake_quant(monkeypatch):
    monkeypatch.setattr(onednn, "conv_available", lambda: False)
    x = torch.randn(2, 3, 12, 12)
    ref, out = fake_and_exported(visq.quantize(_convnet(), "w8a8", calib=x, progress=False))
    assert not any(isinstance(m, (Int8Conv2d, Int8WeightConv2d)) for m in out.modules())
    assert "no exact int8 convolution kernel on this CPU" in visq.summary(out)
    per_token = visq.export(visq.quantize(_convnet(), "w8a8-dyn", calib=x, progress=False))
    assert "the int8 convolution takes static per-tensor 8-bit inputs" in visq.summary(per_token)
