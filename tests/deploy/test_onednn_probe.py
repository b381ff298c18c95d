"""oneDNN's int8 linear is used only where it is exact: on x86 without VNNI it saturates int16 pair sums."""

import pytest
import torch
from torch import nn

import visq
from visq.kernels import int8, onednn


def _saturating_linear(x_u8, scale, zero, weight, w_scale, bias):
    """What an AVX2-only CPU computes: u8 x s8 products summed in pairs into saturating int16."""
    prods = (x_u8.long() - zero)[:, None, :] * weight.source.long()[None, :, :]
    pairs = prods.reshape(*prods.shape[:2], -1, 2).sum(-1).clamp(-32768, 32767)
    return pairs.sum(-1).float() * scale * w_scale


def test_a_saturating_kernel_is_not_used(monkeypatch):
    monkeypatch.setattr(onednn, "linear", _saturating_linear)
    onednn.available.cache_clear()
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
            assert not onednn.available()
            return
        assert not onednn.available()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64)).eval()
        exported = visq.export(visq.quantize(model, "w8a8", calib=torch.randn(32, 64) * 4, progress=False))
        route = "_int_mm" if int8.native_int8_gemm() else "exact fp32 GEMM"  # the exact integer kernel here
        assert "oneDNN" not in visq.summary(exported) and route in visq.summary(exported)
    finally:
        onednn.available.cache_clear()


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")),
                    reason="this torch build has no oneDNN qlinear")
def test_an_exact_kernel_passes_the_probe(monkeypatch):
    def exact(x_u8, scale, zero, weight, w_scale, bias):
        return ((x_u8.double() - zero) @ weight.source.double().t()).float() * scale * w_scale

    monkeypatch.setattr(onednn, "linear", exact)
    onednn.available.cache_clear()
    try:
        assert onednn.available()
    finally:
        onednn.available.cache_clear()
