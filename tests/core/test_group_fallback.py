"""Issue 27: a weight group size that does not divide a layer falls back per layer, and summary says so."""

import torch
from torch import nn

import visq
from visq.quantizers import SiteShape, Uniform
from visq.sites import fit_groups


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(320, 64), nn.ReLU(), nn.Linear(64, 97), nn.ReLU(), nn.Linear(97, 8))


def test_group_sizes_fall_back_to_the_largest_divisor_or_per_channel():
    group = Uniform(bits=4, symmetric=True, granularity="group", group_size=128)
    assert fit_groups(group, SiteShape("weight", 64, 0, 256)) == (group, "")  # divides: unchanged
    spec, note = fit_groups(group, SiteShape("weight", 64, 0, 320))
    assert spec.group_size == 80 and note == "group 128 does not divide its 320 input elements: group 80"
    spec, note = fit_groups(Uniform(bits=4, granularity="group", group_size=64), SiteShape("weight", 8, 0, 97))
    assert spec.granularity == "channel" and spec.group_size == 0 and "per channel" in note  # 97 is prime
    conv = SiteShape("weight", 16, 0, 40 * 9, kernel=9)  # a 3x3 convolution with 40 input channels
    spec, note = fit_groups(Uniform(bits=4, granularity="group", group_size=32), conv)
    assert spec.group_size == 20 and "40 input channels" in note


def test_fallback_groups_quantize_as_that_group_size_would(tmp_path):
    model, x = _model(), torch.randn(8, 320)
    visq.quantize(model, "w4a16-g128", calib=x, progress=False)
    w = model[0].weight.detach()
    groups = w.reshape(-1, 80)  # closed form: asymmetric int4 (the 4-bit default) per 80-element group, min-max
    lo, hi = groups.amin(dim=1, keepdim=True).clamp(max=0), groups.amax(dim=1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 15
    zero = torch.round(-lo / scale)
    expected = ((torch.clamp(torch.round(groups / scale) + zero, 0, 15) - zero) * scale).reshape(w.shape)
    torch.testing.assert_close(model[0].weight_quantizer(w), expected)
    text = visq.summary(model)
    assert "sites fitted to their layer: 3" in text and "0.weight_quantizer  group 128 does not divide" in text
    visq.save(model, tmp_path)
    fresh = visq.load(_model(), tmp_path)
    assert visq.summary(fresh) == text
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
