import pytest
import torch

from visq.calibrate import fit_weights  # noqa: F401  (import check: calibrate depends on quantizers)
from visq.quantizers import SiteShape, Uniform, build
from visq.quantizers.base import QuantSpec

ACT = SiteShape("activation", 8, -1)


def fitted(spec, x, site=ACT):
    q = build(spec, site)
    q.observe(x)
    q.fit()
    return q


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_minmax_error_bound_and_levels(bits, symmetric):
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(bits))
    q = fitted(Uniform(bits=bits, symmetric=symmetric), x)
    y = q(x)
    assert (y - x).abs().max() <= q.scale.max() / 2 + 1e-6  # in range, error <= half a step
    assert torch.unique(y).numel() <= 2**bits
    codes = (y / q.scale + q.zero_point).round()
    lo, hi = Uniform(bits=bits, symmetric=symmetric).qrange
    assert codes.min() >= lo and codes.max() <= hi


def test_closed_form_asymmetric_params():
    x = torch.tensor([[-1.0, 0.0, 3.0]])
    q = fitted(Uniform(bits=2), x, SiteShape("activation", 3, -1))
    assert torch.allclose(q.scale, torch.tensor([4 / 3]))
    assert torch.equal(q.zero_point, torch.tensor([1.0]))  # round(1 / (4/3)) = 1
    assert torch.allclose(q(x), torch.tensor([[-4 / 3, 0.0, 8 / 3]]))


def test_ste_gradient_is_identity_inside_and_zero_outside():
    q = fitted(Uniform(bits=4), torch.linspace(-1, 1, 100))
    x = torch.tensor([-0.5, 0.1, 0.7, 5.0, -5.0], requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))


def test_per_channel_weight_scales_follow_channel_max():
    w = torch.randn(6, 10) * torch.arange(1, 7).float()[:, None]
    q = fitted(Uniform(bits=8, symmetric=True, granularity="channel"), w, SiteShape("weight", 6, 0, 10))
    assert torch.allclose(q.scale, w.abs().amax(dim=1) / 127)


def test_group_quantization_has_one_scale_per_group():
    w = torch.randn(4, 64)
    q = fitted(Uniform(bits=4, symmetric=True, granularity="group", group_size=16), w, SiteShape("weight", 4, 0, 64))
    assert q.scale.shape == (16,)
    assert torch.allclose(q.scale, w.reshape(-1, 16).abs().amax(dim=1) / 7)
    assert (q(w) - w).abs().max() <= q.scale.max() / 2 + 1e-6


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="does not divide"):
        build(Uniform(bits=4, symmetric=True, granularity="group", group_size=7), SiteShape("weight", 4, 0, 64))


def test_per_token_is_dynamic():
    x = torch.randn(3, 5, 8) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
    q = build(Uniform(bits=8, granularity="token", dynamic=True), ACT)
    y = q(x)
    step = (x.amax(-1) - x.amin(-1).clamp(max=0)) / 255
    assert ((y - x).abs().amax(-1) <= step / 2 + 1e-5).all()


def test_percentile_and_mse_beat_minmax_on_outliers():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20000, generator=gen)
    x[0, :2] = 20.0  # rare outliers: clipping them costs less than a coarse grid
    site = SiteShape("activation", 1, -1)
    errors = {}
    for rule in ("minmax", "percentile", "mse"):
        q = fitted(Uniform(bits=4, range=rule), x, site)
        errors[rule] = (q(x) - x).pow(2).mean().item()
    assert errors["percentile"] < errors["minmax"] * 0.5
    assert errors["mse"] < errors["minmax"] * 0.5


def test_state_dict_round_trip():
    x = torch.randn(32, 8)
    q = fitted(Uniform(bits=4, granularity="channel"), x)
    fresh = build(Uniform(bits=4, granularity="channel"), ACT)
    fresh.load_state_dict(q.state_dict(), strict=True)
    assert torch.equal(fresh(x), q(x))


def test_spec_dict_round_trip_and_validation():
    spec = Uniform(bits=3, granularity="channel", range="percentile", percentiles=(0.99, 0.999))
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown quantizer type"):
        QuantSpec.from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="granularity"):
        Uniform(granularity="row")
    with pytest.raises(ValueError, match="group_size"):
        Uniform(granularity="group")


def test_temporal_state_per_timestep():
    site = SiteShape("activation", 1, -1, timesteps=(999.0, 500.0))
    q = build(Uniform(bits=8, per_timestep=True), site)
    for t, scale in ((999, 10.0), (500, 1.0)):
        q.set_timestep(t)
        q.observe(torch.tensor([0.0, scale]))
    q.fit()
    assert torch.allclose(q.scale[:, 0], torch.tensor([10.0, 1.0]) / 255)
    q.set_timestep(torch.tensor(500.0).item())
    assert q(torch.tensor([0.5])).item() == pytest.approx(0.5, abs=1 / 255)
    with pytest.raises(KeyError, match="not calibrated"):
        q.set_timestep(10)


def test_temporal_without_timestep_raises():
    q = build(Uniform(bits=8, per_timestep=True), SiteShape("activation", 1, -1, timesteps=(1.0,)))
    with pytest.raises(RuntimeError, match="set_timestep"):
        q(torch.ones(2))


def test_unobserved_quantizer_fit_raises():
    with pytest.raises(RuntimeError, match="saw no data"):
        build(Uniform(bits=8), ACT).fit()


def test_follows_input_dtype():
    q = fitted(Uniform(bits=8), torch.randn(16, 8))
    assert q(torch.randn(4, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_conv_weight_groups_run_along_input_channels():
    w = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(5))
    site = SiteShape("weight", 4, 0, 72, kernel=9)
    q = fitted(Uniform(bits=4, symmetric=True, granularity="group", group_size=4), w, site)
    groups = w.permute(0, 2, 3, 1).reshape(-1, 4)  # 4 input channels at one (out, kh, kw) position
    assert torch.allclose(q.scale, groups.abs().amax(dim=1) / 7)
    step = (q.scale.reshape(4, 3, 3, 2).repeat_interleave(4, dim=3)).permute(0, 3, 1, 2)
    assert ((q(w) - w).abs() <= step / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="input channels"):
        build(Uniform(bits=4, symmetric=True, granularity="group", group_size=3), site)  # divides 72, not 8


def test_specs_written_before_dynamic_existed_load_as_they_meant():
    token = QuantSpec.from_dict({"type": "uniform", "bits": 8, "granularity": "token"})
    assert token.dynamic and token.granularity == "token"
    group = QuantSpec.from_dict({"type": "uniform", "bits": 4, "symmetric": True, "granularity": "group",
                                 "group_size": 8})
    assert group.flat_groups  # the old flattened-kernel layout, so saved conv scales keep their meaning
    assert QuantSpec.from_dict(group.to_dict()) == group
    w = torch.randn(2, 8, 3, 3)
    q = fitted(group, w, SiteShape("weight", 2, 0, 72, kernel=9))
    assert torch.allclose(q.scale, w.reshape(-1, 8).abs().amax(dim=1) / 7)
    with pytest.raises(ValueError, match="dynamic=True"):
        Uniform(granularity="token")


@pytest.mark.parametrize("symmetric", [False, True])
def test_dynamic_per_token_matches_the_closed_form(symmetric):
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(6)) * torch.tensor([1.0, 30.0])[:, None, None]
    spec = Uniform(bits=8, symmetric=symmetric, dynamic=True, granularity="token")
    q = build(spec, ACT)
    assert q.scale.numel() == 0  # nothing calibrated, nothing stored
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    if symmetric:  # torchao's int8 dynamic scheme: absmax / 127 per token
        s, z, qmin, qmax = torch.maximum(-lo, hi) / 127, torch.zeros_like(lo), -128, 127
    else:
        s = (hi - lo) / 255
        z, qmin, qmax = torch.round(-lo / s), 0, 255
    expected = (torch.clamp(torch.round(x / s) + z, qmin, qmax) - z) * s
    assert torch.allclose(q(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="per 'token' or per 'tensor'"):
        Uniform(dynamic=True, granularity="channel")
    with pytest.raises(ValueError, match="range"):
        Uniform(dynamic=True, granularity="token", range="percentile")


def test_mse_weight_clipping_matches_a_brute_force_search():
    from visq.quantizers.uniform import MSE_ALPHAS

    w = torch.distributions.StudentT(2.5).sample((6, 48))
    q = fitted(Uniform(bits=4, symmetric=True, granularity="channel", range="mse"), w, SiteShape("weight", 6, 0, 48))
    for row, scale in zip(w, q.scale):
        best = None
        for alpha in MSE_ALPHAS:  # every shrink factor, one row at a time
            s = alpha * float(row.abs().max()) / 7
            err = float(((torch.clamp(torch.round(row / s), -8, 7) * s - row) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, s)
        assert float(scale) == pytest.approx(best[1], rel=1e-5)
    assert (q.scale < w.abs().amax(dim=1) / 7).any()  # heavy tails: some rows are clipped
