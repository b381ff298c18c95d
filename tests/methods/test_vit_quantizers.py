"""ViT PTQ quantizers against closed-form cases and their specs (research/vit_methods.md 1.3-1.5, 2.1, 3.2, 4)."""

import math

import pytest
import torch

from visq.quantizers import (
    Log2,
    Noisy,
    QuantSpec,
    ShiftUniformLog2,
    SiteShape,
    TanQRecon,
    TwinUniform,
    Uniform,
    build,
)
from visq.quantizers.tangent import compress, expand

SITE = SiteShape("activation", 8, -1)


def softmax_like(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n // 16, 16, generator=g) * 3).softmax(-1)


def fitted(spec, x, site=SITE):
    q = build(spec, site)
    q.observe(x)
    q.fit()
    return q


def test_log2_levels_closed_form():
    q = build(Log2(bits=2), SITE)
    q.scale.fill_(1.0)
    x = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03, 0.7, 2.0, 0.0])
    # codes 0..3 -> 1, 1/2, 1/4, 1/8; code 4 and beyond -> exact zero; above the scale -> the scale
    expected = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0, 0.0, 0.5, 1.0, 0.0])
    assert torch.equal(q(x), expected)


def test_log_sqrt2_has_2b_levels_plus_zero():
    q = fitted(Log2(bits=4, sqrt2=True), softmax_like())
    levels = q(torch.linspace(0, 1, 200_001)).unique()
    assert levels.numel() == 17 and levels[0] == 0  # RepQ-ViT's "Sqrt2_17"
    ratios = levels[2:] / levels[1:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, math.sqrt(2)), rtol=1e-5)


def test_sulq_codes_levels_and_state_dict():
    x = softmax_like()
    q = fitted(ShiftUniformLog2(bits=3), x)
    assert any(math.isclose(float(q.eta), e, rel_tol=1e-6) for e in ShiftUniformLog2().etas)
    # calibration and forward agree: 2^b codes over [lo, hi], so every output is 2^round(...) - eta
    out = q(torch.linspace(0, 1, 100_001))
    exponents = torch.log2(out + q.eta)
    assert torch.allclose(exponents, exponents.round(), atol=1e-4)
    assert out.unique().numel() <= 2**3
    fresh = build(ShiftUniformLog2(bits=3), SITE)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x)) and set(q.state_dict()) == {"eta", "lo", "hi"}


def test_sulq_code_count_matches_bits_at_4_bit():
    q = build(ShiftUniformLog2(bits=4), SITE)
    q.eta.fill_(1e-3)
    q.lo.fill_(math.log2(1e-3))
    q.hi.fill_(math.log2(1 + 1e-3))
    n = 2**4 - 1
    step = (q.hi - q.lo) / n
    codes = torch.clamp(torch.round((torch.log2(torch.linspace(0, 1, 10_001) + q.eta) - q.lo) / step), 0, n)
    assert codes.max() == n and codes.unique().numel() <= 2**4


def test_tanq_companding_inverse_and_uniform_limit():
    x = torch.linspace(0, 1, 1001)
    theta, hi = torch.tensor(1.2), torch.tensor(1.0)
    assert torch.allclose(expand(compress(x, theta, hi), theta, hi), x, atol=1e-5)
    # theta -> 0 is a uniform 2^b-level quantizer
    q = build(TanQRecon(bits=3, thetas=(1e-4,)), SITE)
    q.theta.fill_(1e-4)
    assert torch.allclose(q(x), torch.round(x * 7) / 7, atol=1e-3)


def test_tanq_dense_near_both_ends():
    q = fitted(TanQRecon(bits=4, thetas=(1.3,)), softmax_like())
    levels = q(torch.linspace(0, float(q.hi), 100_001)).unique()
    gaps = levels.diff()
    assert levels.numel() == 16
    assert gaps[0] < gaps[7] and gaps[-1] < gaps[7]  # codes dense near 0 and near hi, sparse in the middle


def test_twin_softmax_two_ranges():
    q = build(TwinUniform(bits=3), SITE)  # k = 4 codes per region
    q.delta2.fill_(1 / 3)
    q.delta1.fill_(1 / 3 / 8)
    x = torch.tensor([0.0, 0.04, 0.1, 0.2, 0.5, 0.9, 1.0])
    d1, d2 = 1 / 24, 1 / 3
    # R1 holds x < 3.5 * d1 on the fine grid; 0.2 and above fall on the coarse grid, clamped at 3 * d2
    expected = torch.tensor([0.0, d1, 2 * d1, d2, 2 * d2, 3 * d2, 3 * d2])
    assert torch.allclose(q(x), expected)


def test_twin_gelu_fixed_negative_step():
    q = fitted(TwinUniform(bits=4, region="gelu"), torch.nn.functional.gelu(torch.randn(4096) * 3))
    assert torch.isclose(q.delta2, torch.tensor(0.16997 / 8))
    neg = q(torch.linspace(-0.17, -1e-4, 1000)).unique()
    assert neg.numel() <= 9 and float(neg.min()) >= -0.16997 - 1e-6


def test_noisy_spec_json_and_forward():
    spec = Noisy(inner=Uniform(bits=4))
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    x = torch.randn(64, 8)
    q = fitted(spec, x)
    inner = build(Uniform(bits=4), SITE)
    inner.load_state_dict({k.removeprefix("inner."): v for k, v in q.state_dict().items() if k != "noise"})
    noise = torch.linspace(-0.1, 0.1, 8)
    q.noise.copy_(noise)
    assert torch.equal(q(x), inner(x + noise))


@pytest.mark.parametrize("spec", [Log2(bits=4), ShiftUniformLog2(bits=4), TanQRecon(bits=4), TwinUniform(bits=4)])
def test_searched_quantizers_raise_without_data(spec):
    with pytest.raises(RuntimeError, match="no calibration data"):
        build(spec, SITE).fit()
