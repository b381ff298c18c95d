import torch

import visq
from tests.diffusion.conftest import PROMPTS
from visq.quantizers import (
    OutlierGroups,
    PromptLog,
    QuantSpec,
    SiteShape,
    StartFloat,
    StartFloatQuantizer,
    Uniform,
    build,
)
from visq.quantizers.outlier_groups import OutlierGroupsQuantizer
from visq.quantizers.prompt_log import PromptLogQuantizer
from visq.testing import tiny_sd


def fit(q, x):
    q.observe(x)
    q.fit()
    return q


def test_grouping_isolates_injected_outlier_channels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 32, generator=gen)  # (B, N tokens, C channels)
    outliers = [3, 17, 29]
    x[..., outliers] *= 50
    q = fit(build(OutlierGroups(bits=4, groups=2, tokens=16), SiteShape("activation", 32, -1)), x)
    assert not bool(q.on_tokens)
    groups = q.channel_group
    assert len(set(groups[outliers].tolist())) == 1
    assert groups[outliers[0]] not in groups[[c for c in range(32) if c not in outliers]]
    plain = fit(build(Uniform(bits=4), SiteShape("activation", 32, -1)), x)
    normal = [c for c in range(32) if c not in outliers]
    err = lambda quant: (quant(x) - x)[..., normal].pow(2).mean()  # noqa: E731
    assert err(q) < err(plain) / 20


def test_grouping_picks_the_pixel_axis_for_pixel_outliers():
    x = torch.randn(2, 8, 4, 4)
    x[:, :, 1, 2] *= 40  # one hot pixel in every channel
    q = fit(build(OutlierGroups(bits=4, groups=2, tokens=16), SiteShape("activation", 8, 1)), x)
    assert bool(q.on_tokens) and q.token_group.view(4, 4)[1, 2] != q.token_group.view(4, 4)[0, 0]
    assert (q(x) - x).abs().max() < 40 * x.abs().max() / 15


def test_log_quantizer_keeps_start_token_exact():
    probs = torch.softmax(torch.randn(2, 3, 5, 7) * 3, dim=-1)
    probs[..., 0] += 2.0
    probs = probs / probs.sum(-1, keepdim=True)
    q = build(PromptLog(bits=4, keep_start=True), SiteShape("activation", 1, -1))
    out = q(probs)
    assert torch.equal(out[..., 0], probs[..., 0])
    top = probs[..., 1:].amax(dim=(-2, -1), keepdim=True)
    codes = -torch.log2(out[..., 1:] / top)
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.max() <= 15  # powers of two below the max
    ratio = out[..., 1:] / probs[..., 1:]
    big = probs[..., 1:] > top / 2**14
    assert ((ratio[big] > 2**-0.5 - 1e-4) & (ratio[big] < 2**0.5 + 1e-4)).all()  # within half a log2 step


def test_start_float_keeps_the_start_key_out_of_the_range():
    keys = torch.randn(4, 6, 8)
    keys[:, 0] *= 50.0  # the start token's key is an outlier
    spec = StartFloat(Uniform(bits=4))
    out = fit(build(spec, SiteShape("activation", 8, -1)), keys)(keys)
    assert torch.equal(out[:, 0], keys[:, 0])
    plain = fit(build(Uniform(bits=4), SiteShape("activation", 8, -1)), keys[:, 1:])
    assert torch.equal(out[:, 1:], plain(keys[:, 1:]))  # the range comes from tokens 1: alone
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_dgq_method_on_tiny_sd(sd, tmp_path):
    visq.quantize(sd, "w8a8", method="dgq", calib=PROMPTS[:2], calib_options={"num_inference_steps": 3},
                  progress=False)
    mods = dict(sd.unet.named_modules())
    assert isinstance(mods["down_blocks.0.resnets.0.conv1.input_quantizer"], OutlierGroupsQuantizer)
    cross = mods["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.probs_quantizer"]
    assert isinstance(cross, PromptLogQuantizer) and cross.spec.keep_start
    assert not mods["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.probs_quantizer"].spec.keep_start
    assert isinstance(mods["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.k_quantizer"],
                      StartFloatQuantizer)
    assert not isinstance(mods["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.k_quantizer"],
                          StartFloatQuantizer)
    assert torch.isfinite(sd(PROMPTS[0], num_inference_steps=3, output_type="pt").images).all()
    visq.save(sd, tmp_path)
    fresh = visq.load(tiny_sd(), tmp_path)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor(visq.quant_state(sd).timesteps[0]), torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(fresh.unet(x, t, ctx).sample, sd.unet(x, t, ctx).sample)
