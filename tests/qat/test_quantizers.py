"""LSQ / LSQ+ and StatsQ against closed forms: levels, scales, the LSQ step gradient, calibration inits."""

import math

import pytest
import torch

from visq.quantizers import LSQ, QuantSpec, SiteShape, StatsQ, build
from visq.quantizers.statsq import codes


def _weight_site(rows: int, cols: int) -> SiteShape:
    return SiteShape("weight", rows, 0, cols)


def test_statsq_levels_and_scale_match_the_closed_form():
    w = torch.tensor([[0.1, -0.3, 0.5, -0.7, 0.05, 1.5], [2.0, -2.0, 0.2, 0.0, -0.6, 0.4]])
    q = build(StatsQ(bits=2), _weight_site(2, 6))
    s = 2 * w.abs().mean(dim=1, keepdim=True)  # row 0: 1.05, row 1: 1.7333
    expected = torch.empty_like(w)
    for i in range(2):
        for j in range(6):
            v = min(max(w[i, j].item() / s[i].item(), -1.0), 1.0 - 1e-6)
            expected[i, j] = s[i] * (math.floor(v * 2 - 0.5 + 0.5) + 0.5) / 2  # round half up is fine off-ties
    out = q(w)
    torch.testing.assert_close(out, expected)
    levels = set((out / s).flatten().tolist())
    assert levels <= {-0.75, -0.25, 0.25, 0.75} and len(levels) == 4
    assert set(codes(w, 2).flatten().tolist()) == {-2.0, -1.0, 0.0, 1.0}
    w3 = torch.randn(4, 64)
    s3 = 2 * w3.abs().mean(dim=1, keepdim=True)
    levels3 = torch.unique(torch.round(build(StatsQ(bits=3), _weight_site(4, 64))(w3) / s3 * 8))
    torch.testing.assert_close(levels3, torch.arange(-4, 4) * 2 + 1.0)  # (k + 0.5) / 4 in eighths


def test_statsq_gradient_is_the_identity_and_scale_follows_the_weights():
    w = torch.randn(3, 8, requires_grad=True)
    q = build(StatsQ(bits=2), _weight_site(3, 8))
    q(w).mul(torch.arange(24.0).reshape(3, 8)).sum().backward()
    torch.testing.assert_close(w.grad, torch.arange(24.0).reshape(3, 8))
    assert not list(q.parameters()) and not list(q.buffers())
    doubled = q(2 * w.detach())
    torch.testing.assert_close(doubled, 2 * q(w.detach()))


def test_statsq_refuses_activations():
    with pytest.raises(ValueError, match="weights"):
        build(StatsQ(bits=2), SiteShape("activation", 4, -1))


def test_lsq_step_gradient_matches_a_hand_computed_case():
    # 2-bit signed: Q_N = 2, Q_P = 1; step 0.5; x / s = [-3, -0.6, 0.3, 0.8, 4] for a (1, 5) activation
    q = build(LSQ(bits=2, signed=True, granularity="tensor"), SiteShape("activation", 5, -1))
    with torch.no_grad():
        q.step.fill_(0.5)
    x = torch.tensor([[-1.5, -0.3, 0.15, 0.4, 2.0]], requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, torch.tensor([[-1.0, -0.5, 0.0, 0.5, 0.5]]))
    y.sum().backward()
    # dy/ds: clipped low -> -Q_N = -2; inside -> round(v) - v: -1 + 0.6 = -0.4, 0 - 0.3 = -0.3, 1 - 0.8 = 0.2;
    # clipped high -> Q_P = 1. Sum -2.5, times g = 1 / sqrt(N * Q_P) with N = 5 features per sample
    expected = (-2 - 0.4 - 0.3 + 0.2 + 1) / math.sqrt(5 * 1)
    torch.testing.assert_close(q.step.grad, torch.tensor([expected]))
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))


def test_lsq_plus_offset_gradient_and_weight_grad_scale():
    q = build(LSQ(bits=2, signed=False, offset=True), SiteShape("activation", 4, -1))
    with torch.no_grad():
        q.step.fill_(1.0)
        q.offset.fill_(-0.5)
    x = torch.tensor([[-2.0, 0.0, 1.2, 5.0]])  # (x - beta) / s = [-1.5, 0.5, 1.7, 5.5]: low clip, in, in, high clip
    q(x).sum().backward()
    torch.testing.assert_close(q.offset.grad, torch.tensor([2.0]))  # 1 per clipped element, 0 inside
    w = build(LSQ(bits=4, granularity="channel"), _weight_site(2, 8))
    weight = torch.randn(2, 8)
    w.observe(weight)
    w.fit()
    g = w.grad_scale(weight)
    assert g == pytest.approx(1 / math.sqrt(8 * 7))


@pytest.mark.parametrize("init", ["lsq", "minmax", "mse"])
def test_lsq_inits_from_calibration(init):
    torch.manual_seed(0)
    x = torch.randn(64, 16, 8)
    spec = LSQ(bits=4, init=init)
    q = build(spec, SiteShape("activation", 8, -1))
    q.observe(x[:32])
    q.observe(x[32:])
    q.fit()
    q_n, q_p = spec.qrange
    if init == "lsq":
        assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(q_p), rel=1e-5)
    elif init == "minmax":
        assert q.step.item() == pytest.approx(max(-x.min().item() / q_n, x.max().item() / q_p), rel=1e-5)
    else:
        mse = (q(x) - x).pow(2).mean()
        minmax = build(LSQ(bits=4, init="minmax"), SiteShape("activation", 8, -1))
        minmax.observe(x)
        minmax.fit()
        assert mse < (minmax(x) - x).pow(2).mean()


def test_lsq_per_channel_offset_minmax_init_maps_range_onto_grid():
    x = torch.stack([torch.linspace(-1, 3, 50), torch.linspace(0, 1, 50)], dim=-1)  # (50, 2)
    q = build(LSQ(bits=3, signed=False, offset=True, granularity="channel", init="minmax"),
              SiteShape("activation", 2, -1))
    q.observe(x)
    q.fit()
    torch.testing.assert_close(q.step.detach(), torch.tensor([4 / 7, 1 / 7]))
    torch.testing.assert_close(q.offset.detach(), torch.tensor([-1.0, 0.0]))
    torch.testing.assert_close(q(x)[[0, -1]], x[[0, -1]])


def test_lsq_state_round_trip_and_spec_json():
    spec = LSQ(bits=3, signed=False, offset=True, granularity="channel")
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    a = build(spec, SiteShape("activation", 4, -1))
    with torch.no_grad():
        a.step.uniform_(0.1, 1)
        a.offset.uniform_(-1, 1)
    b = build(spec, SiteShape("activation", 4, -1))
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(a(x), b(x))
    assert QuantSpec.from_dict(StatsQ(bits=3).to_dict()) == StatsQ(bits=3)


def test_lsq_per_timestep_keeps_one_step_per_timestep():
    q = build(LSQ(bits=4, per_timestep=True, init="minmax"), SiteShape("activation", 4, -1, timesteps=(999, 500)))
    for t, amp in ((999, 1.0), (500, 4.0)):
        q.set_timestep(t)
        q.observe(amp * torch.linspace(-1, 1, 40).reshape(10, 4))
    q.fit()
    assert q.step.shape == (2, 1)
    assert q.step[1].item() == pytest.approx(4 * q.step[0].item())
    with pytest.raises(KeyError, match="not calibrated"):
        q.set_timestep(10)


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="init"):
        LSQ(init="percentile")
    with pytest.raises(ValueError, match="granularity"):
        LSQ(granularity="token")
    with pytest.raises(ValueError, match="bits"):
        StatsQ(bits=1)
