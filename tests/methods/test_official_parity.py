"""Issue 12: quantizer details that must match the official RepQ-ViT / I&S-ViT / NoisyQuant code."""

import pytest
import torch
from torch import nn

import visq
from visq.methods import noisyquant
from visq.methods.dopq import DopQ
from visq.methods.ias import IaS
from visq.methods.repq import RepQ
from visq.quantizers import Log2, SiteShape, Uniform, build
from visq.quantizers.log2 import log_quantize
from visq.quantizers.observed import ObservedValues
from visq.quantizers.uniform import params_to_range, range_to_params
from visq.recipes import Recipe, parse

CHANNEL = SiteShape("activation", 1, -1)


def official_uniform(x, lo, hi, bits):
    """The official quantizer's arithmetic: s = (hi - lo) / (2^b - 1), z = round(-lo / s), not widened nor clamped."""
    s = (hi - lo) / (2**bits - 1)
    z = torch.round(-lo / s)
    return (torch.clamp(torch.round(x / s) + z, 0, 2**bits - 1) - z) * s, s, z


def test_all_positive_channel_gets_the_official_step():
    x = torch.linspace(16.6, 39.9, 1000)[:, None]  # RepQ's outlier channels: post-LN, all positive
    free = build(Uniform(bits=3, include_zero=False), CHANNEL)
    free.observe(x)
    free.fit()
    ref, step, zero = official_uniform(x, x.min(), x.max(), 3)
    assert float(free.scale) == pytest.approx(float(step), rel=1e-6)  # 3.33, not 39.9 / 7
    assert float(free.zero_point) == float(zero) == -5.0  # outside [0, 7]: kept, only codes are clamped
    assert torch.allclose(free(x), ref, atol=1e-5)
    assert (free(x) - x).abs().max() <= step / 2 + 1e-5
    widened = build(Uniform(bits=3), CHANNEL)  # the generic default still contains 0
    widened.observe(x)
    widened.fit()
    assert float(widened.scale) == pytest.approx(39.9 / 7, rel=1e-5)


@pytest.mark.parametrize("method", [RepQ, IaS, DopQ])
def test_repq_rules_do_not_force_zero_into_post_ln_ranges(method):
    rules = Recipe(method().rules(parse("w4a4").rules))
    for site in ("blocks.0.attn.qkv.input_quantizer", "blocks.0.mlp.fc1.input_quantizer"):
        spec = rules.spec_for(site)[1]
        assert spec.granularity == "channel" and not spec.include_zero
    if method is RepQ:  # I&S (SULQ) and DopQ (TanQ) quantize the probabilities with their own families
        assert rules.spec_for("blocks.0.attn.probs_quantizer")[1].percentiles == (0.999, 0.9999, 0.99999)
    assert parse("w4a4").spec_for("blocks.0.attn.qkv.input_quantizer")[1].include_zero


def test_log_sqrt2_search_on_a_whole_softmax_matches_the_official_step():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 65, 65, generator=g).softmax(-1)
    spec = Log2(bits=3, sqrt2=True, percentiles=(0.999, 0.9999, 0.99999))
    candidates = [torch.quantile(x.reshape(-1), p) for p in spec.percentiles]  # the official search, whole tensor
    errors = [float((log_quantize(x, d, 3, True) - x).pow(2).mean()) for d in candidates]
    official = candidates[errors.index(min(errors))]
    q = build(spec, CHANNEL)
    for chunk in x.split(2):  # several calibration batches: the search still sees every value
        q.observe(chunk)
    q.fit()
    assert float(q.scale) == pytest.approx(float(official), rel=1e-4)  # float32 torch.quantile rank rounding


def test_uniform_percentile_candidates_are_whole_tensor_quantiles():
    torch.manual_seed(1)
    x = torch.distributions.StudentT(3.0).sample((200_000,))  # 0.99999 needs > 100k values to resolve
    q = build(Uniform(bits=4, range="percentile", include_zero=False), CHANNEL)
    for chunk in x.split(50_000):
        q.observe(chunk[:, None])
    q.fit()
    best = min(
        (float((official_uniform(x, torch.quantile(x, 1 - p), torch.quantile(x, p), 4)[0] - x).pow(2).mean()), p)
        for p in (0.999, 0.9999, 0.99999)
    )
    _, step, _ = official_uniform(x, torch.quantile(x, 1 - best[1]), torch.quantile(x, best[1]), 4)
    assert float(q.scale) == pytest.approx(float(step), rel=1e-4)


def test_observed_quantiles_stay_exact_in_the_tails_beyond_capacity():
    g = torch.Generator().manual_seed(2)
    batches = [torch.randn(3, 5000, generator=g) * s + s for s in (10.0, 0.1, 1.0, 0.01)]  # order matters for tails
    seen = ObservedValues(rows=3, capacity=3 * 4096, seed=0)
    for b in batches:
        seen.add(b)
    everything = torch.cat(batches, dim=1)
    assert not seen.exact and seen.values.shape == (3, 4096)
    for p in (0.9999, 0.999, 0.99, 0.001, 0.0001):
        exact = torch.quantile(everything.double(), p, dim=1).float()
        assert torch.allclose(seen.quantile(p), exact, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("symmetric", [False, True])
def test_noisyquant_clip_alpha_one_is_the_calibrated_range(monkeypatch, symmetric):
    spec = Uniform(bits=3, symmetric=symmetric, range="percentile")
    site = SiteShape("activation", 16, -1)
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    layer = nn.Sequential(nn.Linear(16, 8))
    recipe = Recipe((visq.Rule("*.weight_quantizer", Uniform(bits=8, symmetric=True, granularity="channel")),
                     visq.Rule("*.input_quantizer", spec)), method="percentile")
    visq.quantize(layer, recipe, calib=x, progress=False)
    layer[0].input_quantizer = build(visq.quantizers.Noisy(inner=spec), site)
    inner = layer[0].input_quantizer.inner
    inner.observe(x)
    inner.fit()
    scale, zero = inner.scale.clone(), inner.zero_point.clone()
    back = range_to_params(*params_to_range(scale, zero, spec), spec)
    assert torch.allclose(back[0], scale, rtol=1e-6) and torch.equal(back[1], zero)
    monkeypatch.setattr(noisyquant, "CLIP_ALPHAS", [1.0])
    weight = layer[0].quantized_weight().detach()
    with torch.no_grad():
        noisyquant.search_clip(layer[0], x, nn.functional.linear(x, weight, layer[0].bias), weight)
    assert torch.allclose(inner.scale, scale, rtol=1e-6) and torch.equal(inner.zero_point, zero)  # not 4/3 of it


def test_noisyquant_mean_search_finds_the_shift_that_removes_a_constant_rounding_error():
    """Inputs sit 0.3 steps above the integer grid (scale 1, range [0, 7]): shifting by -0.3 steps before rounding
    and back after reproduces them exactly (Q(x + m) - m = x), the first such shift among the candidates."""
    spec = Uniform(bits=3, symmetric=False, range="minmax")
    layer = nn.Sequential(nn.Linear(16, 8))
    recipe = Recipe((visq.Rule("*.weight_quantizer", Uniform(bits=8, symmetric=True, granularity="channel")),
                     visq.Rule("*.input_quantizer", spec)), method="minmax")
    grid = torch.arange(8.0).repeat(2, 2)  # (2, 16): the calibrated range is exactly [0, 7]
    visq.quantize(layer, recipe, calib=grid, progress=False)
    layer[0].input_quantizer = build(visq.quantizers.Noisy(inner=spec), SiteShape("activation", 16, -1))
    inner = layer[0].input_quantizer.inner
    inner.observe(grid)
    inner.fit()
    assert inner.scale.item() == pytest.approx(1.0)
    x = torch.randint(0, 7, (64, 16), generator=torch.Generator().manual_seed(0)).float() + 0.3
    weight = layer[0].quantized_weight().detach()
    ref = nn.functional.linear(x, weight, layer[0].bias)
    with torch.no_grad():
        before = noisyquant._output_error(layer[0], x, ref, weight)
        shift = noisyquant.search_mean(layer[0], x, ref, weight)
        after = noisyquant._output_error(layer[0], x, ref, weight)
    assert shift == pytest.approx(-0.3) and before > 0.01 and after < 1e-10
    assert torch.allclose(layer[0].input_quantizer.noise, torch.full((16,), -0.3))
