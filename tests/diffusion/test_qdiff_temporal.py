import torch

import visq
from tests.diffusion.conftest import PROMPTS
from visq.methods.qdiff import skip_concat_splits
from visq.quantizers import SiteShape, Split, Uniform, build
from visq.quantizers.split import SplitQuantizer


def test_split_points_match_the_decoder_concat(sd):
    splits = skip_concat_splits(sd.unet)
    seen = {}

    def hook(block_index):
        def record(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            skips = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            seen[block_index] = (hidden.shape[1], hidden.shape[1] + skips[-1].shape[1])
        return record

    for b, block in enumerate(sd.unet.up_blocks):
        block.register_forward_pre_hook(hook(b), with_kwargs=True)
    with torch.no_grad():
        sd.unet(torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 5, 32))
    for b, expected in seen.items():
        assert splits[f"up_blocks.{b}.resnets.0.conv1"] == expected
    assert all(total == sd.unet.get_submodule(path).in_channels for path, (_, total) in splits.items())


def test_split_quantizer_gives_each_side_its_range():
    x = torch.cat([torch.rand(8, 3, 4, 4), 100 * torch.rand(8, 5, 4, 4)], dim=1)
    split = build(Split(inner=Uniform(bits=4), split=3, channels=8), SiteShape("activation", 8, 1))
    single = build(Uniform(bits=4), SiteShape("activation", 8, 1))
    for q in (split, single):
        q.observe(x)
        q.fit()
    small_error = lambda q: (q(x) - x)[:, :3].abs().max().item()  # noqa: E731
    assert small_error(split) <= 1 / 30 + 1e-6  # half a step of the [0, 1] range
    assert small_error(single) > 0.5  # one 100/15 step swallows the whole [0, 1] side
    w = torch.randn(6, 8, 3, 3)
    wq = build(Split(inner=Uniform(bits=8, symmetric=True, granularity="channel"), split=3, channels=8),
               SiteShape("weight", 6, 0, 72))
    wq.observe(w)
    wq.fit()
    assert torch.allclose(wq.head.scale, w[:, :3].abs().amax(dim=(1, 2, 3)) / 127)


def test_qdiff_method_splits_and_saves(sd, tmp_path):
    visq.quantize(sd, "w4a8", method="qdiff", calib=PROMPTS, calib_options={"num_inference_steps": 4},
                  calib_steps=2, progress=False)
    assert isinstance(sd.unet.up_blocks[0].resnets[0].conv1.input_quantizer, SplitQuantizer)
    assert "split@" in visq.summary(sd)
    image = sd(PROMPTS[0], num_inference_steps=3, output_type="pt").images
    assert torch.isfinite(image).all()
    visq.save(sd, tmp_path)
    from visq.testing import tiny_sd

    fresh = visq.load(tiny_sd(), tmp_path)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(fresh.unet(x, t, ctx).sample, sd.unet(x, t, ctx).sample)


def test_temporal_method_per_step_ranges(sd):
    visq.quantize(sd, "w8a8", method="temporal", calib=PROMPTS[:2], calib_options={"num_inference_steps": 3},
                  progress=False)
    # split concat inputs (the baseline's shortcut splitting stays on) hold a table on each side
    sides = ("input_quantizer", "input_quantizer.head", "input_quantizer.tail")
    quantizers = [m for n, m in sd.unet.named_modules() if n.endswith(sides) and hasattr(m, "scale")]
    assert any(n.endswith("input_quantizer.head") for n, _ in sd.unet.named_modules())
    assert quantizers and all(q.temporal and q.scale.shape[0] == 3 for q in quantizers)
    assert torch.isfinite(sd(PROMPTS[0], num_inference_steps=3, output_type="pt").images).all()
