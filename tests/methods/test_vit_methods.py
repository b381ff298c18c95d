"""ViT PTQ methods on tiny timm models: reparameterisation, NoisyQuant, attention probabilities, save / load."""

import pytest
import torch
from torch import nn

import visq
from visq.methods.dopq import mad_target, median_target
from visq.methods.repq import mean_target, reparameterize_all
from visq.quantizers import Uniform
from visq.reconstruct import ReconConfig, block_loss, capture, passthrough, reconstruct_block
from visq.testing import tiny_vit

VIT_METHODS = ["ptq4vit", "repq", "ias", "dopq", "noisyquant"]
FAST = {"ias": {"iters": 3}, "dopq": {"iters": 3}}


def post_ln_channelwise(model, images):
    channel = Uniform(bits=4, granularity="channel")
    rules = (visq.Rule("*.attn.qkv.input_quantizer", channel), visq.Rule("*.mlp.fc1.input_quantizer", channel))
    recipe = visq.Recipe(rules)
    return visq.quantize(model, recipe, calib=images, progress=False)


@pytest.mark.parametrize("aggregate", [median_target, mad_target, mean_target])
def test_reparameterisation_with_integer_zero_point_is_lossless(vit, images, aggregate):
    post_ln_channelwise(vit, images)
    with torch.no_grad():
        before = vit(images)
        assert reparameterize_all(vit, aggregate, round_zero=True) == 4
        after = vit(images)
    assert vit.blocks[0].attn.qkv.input_quantizer.spec.granularity == "tensor"
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)


def test_fractional_zero_point_is_not_lossless(vit, images):
    post_ln_channelwise(vit, images)
    with torch.no_grad():
        before = vit(images)
        reparameterize_all(vit, lambda s, z: (s.mean(), z.mean() + 0.5), round_zero=False)
        assert not torch.allclose(before, vit(images), atol=1e-4)


def test_noisyquant_lowers_layer_output_error_on_heavy_tails():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(2.0).sample((1024, 64)).clamp(-40, 40)
    errors = {}
    for method in ("percentile", "noisyquant"):
        torch.manual_seed(1)
        layer = nn.Sequential(nn.Linear(64, 32))
        with torch.no_grad():
            ref = layer(x)
        visq.quantize(layer, "w8a6", method=method, calib=x, progress=False)
        with torch.no_grad():
            errors[method] = float((layer(x) - ref).pow(2).mean())
    quant, linear = layer[0].input_quantizer, layer[0]
    assert quant.noise.abs().sum() > 0
    with torch.no_grad():  # the same layer with the noise (and its folded bias) removed
        linear.bias.add_(linear.quantized_weight() @ quant.noise)
        quant.noise.zero_()
        errors["no noise"] = float((layer(x) - ref).pow(2).mean())
    assert errors["noisyquant"] < errors["no noise"] < errors["percentile"]
    assert errors["noisyquant"] < 0.95 * errors["percentile"]


@pytest.mark.parametrize("method", VIT_METHODS)
def test_attention_probabilities_really_quantized(images, method):
    vit = tiny_vit()
    assert vit.blocks[0].attn.fused_attn  # the fused SDPA path must not bypass the probability quantizer
    visq.quantize(vit, "w4a4", method=method, calib=images, progress=False, **FAST.get(method, {}))
    seen = []
    vit.blocks[1].attn.probs_quantizer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    with torch.no_grad():
        vit(images[:4])
    probs, quantized = seen[0]
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)
    assert quantized.unique().numel() <= 2**4 + 1 and not torch.equal(probs, quantized)


@pytest.mark.parametrize("method", VIT_METHODS)
def test_save_load_round_trip(images, method, tmp_path):
    vit = tiny_vit()
    visq.quantize(vit, "w4a4", method=method, calib=images, progress=False, **FAST.get(method, {}))
    visq.save(vit, tmp_path)
    fresh = visq.load(tiny_vit(seed=7), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(images), vit(images))
    assert visq.summary(fresh) == visq.summary(vit)


def test_reparameterising_methods_leave_post_ln_per_tensor(images):
    vit = tiny_vit()
    visq.quantize(vit, "w4a4", method="repq", calib=images, progress=False)
    state = visq.quant_state(vit)
    assert state.plan.specs["blocks.0.mlp.fc1.input_quantizer"].granularity == "tensor"
    assert "logsqrt2" in visq.summary(vit)


def test_block_reconstruction_lowers_block_loss(vit, images):
    visq.quantize(vit, "w4a4", calib=images, progress=False)
    with passthrough(vit):
        targets = capture(vit, ["blocks.0"], visq.CalibSet(visq.Call((b,)) for b in images.split(16)))
    data = targets["blocks.0"]
    block = vit.blocks[0]

    def loss():
        with torch.no_grad():
            return float(block_loss(block(*data.args), data.output))

    before = loss()
    reconstruct_block(block, data, data.output, ReconConfig(iters=40, lr=1e-3, batch_size=16))
    assert loss() < before
    assert all(p.requires_grad for p in block.parameters())  # requires_grad restored


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224"])
@pytest.mark.parametrize("method", ["repq", "dopq"])
def test_distilled_deit_and_swin(name, method, tmp_path):
    import timm

    def build():
        torch.manual_seed(0)
        kwargs = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4) if "swin" in name else dict(
            embed_dim=32, depth=2, num_heads=2, patch_size=8)
        return timm.create_model(name, pretrained=False, img_size=32, num_classes=10, **kwargs).eval()

    model, x = build(), torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    visq.quantize(model, "w8a8", method=method, calib=x, progress=False, **FAST.get(method, {}))
    with torch.no_grad():
        out = model(x)
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.95
    specs = visq.quant_state(model).plan.specs
    assert all(s.granularity == "tensor" for site, s in specs.items() if site.endswith("fc1.input_quantizer"))
    visq.save(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(visq.load(build(), tmp_path)(x), out)
