import pytest
import timm
import torch
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

import visq
from visq.hosts.timm import QuantAttention, QuantWindowAttention
from visq.testing import tiny_vit


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def float_then_quantized(model, x, recipe="w8a8"):
    with torch.no_grad():
        ref = model(x)
        visq.quantize(model, recipe, calib=x, progress=False)
        return ref, model(x)


def test_w8a8_vit_close_to_float(vit, images):
    ref, out = float_then_quantized(vit, images)
    assert cosine(ref, out) >= 0.99
    assert not torch.equal(ref, out)


def test_attention_slots_used_even_with_fused_attention(vit, images):
    assert vit.blocks[0].attn.fused_attn  # timm's default SDPA path must not bypass the slots
    visq.quantize(vit, "w8a8", calib=images, progress=False)
    attn = vit.blocks[0].attn
    assert isinstance(attn, QuantAttention)
    seen = []
    attn.probs_quantizer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    vit(images[:2])
    probs, quantized = seen[0]
    assert probs.shape == (2, 2, 17, 17)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 17))  # really the softmax probabilities
    assert torch.unique(quantized).numel() <= 256


def test_probs_bits_change_output(images):
    outs = []
    for bits in (8, 2):
        vit = tiny_vit()
        recipe = visq.Recipe((visq.Rule("*.probs_quantizer", visq.Uniform(bits=bits)),))
        visq.quantize(vit, recipe, calib=images, progress=False)
        outs.append(vit(images))
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)


def test_summary_lists_sites_and_float_layers(vit, images):
    visq.quantize(vit, "w4a8", calib=images, progress=False)
    text = visq.summary(vit)
    assert "blocks.0.attn.qkv.weight_quantizer" in text and "int4 asym channel" in text
    assert "patch_embed.proj" in text and "host default" in text
    assert "head" in text and "norm" in text


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224"])
def test_distilled_deit_and_swin(name):
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4) if "swin" in name else dict(
        embed_dim=32, depth=2, num_heads=2, patch_size=8)
    model = timm.create_model(name, pretrained=False, img_size=32, num_classes=10, **kwargs).eval()
    ref, out = float_then_quantized(model, torch.randn(8, 3, 32, 32))
    assert cosine(ref, out) >= 0.99
    if "swin" in name:
        assert any(isinstance(m, QuantWindowAttention) for m in model.modules())


def _tiny(name, **kwargs):
    return timm.create_model(name, pretrained=False, num_classes=10, img_size=32, **kwargs).eval()


class CustomAttention(torch.nn.Module):
    """An attention class visq has no adapter for: its probabilities never pass a quantizer slot."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def test_attention_without_an_adapter_is_an_error_or_a_named_float_layer():
    model, x = torch.nn.Sequential(CustomAttention(), torch.nn.Linear(8, 2)), torch.randn(4, 5, 8)
    with pytest.raises(ValueError, match="^0: attention class CustomAttention has no visq adapter, so its q/k/v"):
        visq.quantize(model, "w8a8", calib=x, progress=False)
    visq.quantize(model, "w8a16", calib=x, progress=False)
    assert "attention class CustomAttention has no visq adapter" in visq.summary(model)


class _DirectWeight(torch.nn.Module):
    """Uses its layer's weight directly, as timm's EVA / HunyuanDiT's pooler do: the quantized layer never runs."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Module()
        self.inner.fc = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.nn.functional.linear(x, self.inner.fc.weight, self.inner.fc.bias))


def test_a_layer_whose_weight_is_used_directly_is_named_when_calibration_misses_it():
    model = _DirectWeight()
    before = [type(m) for m in model.modules()]
    with pytest.raises(RuntimeError, match=r"1 quantizer sites saw no calibration data: inner\.fc\.input_quantizer "
                                           r".*inside inner \(Module\).*F\.linear"):
        visq.quantize(model, "w8a8", calib=torch.randn(4, 8), progress=False)
    assert [type(m) for m in model.modules()] == before


# timm families whose attention is not timm's ``Attention`` (BEiT / SwinV2 / EVA also read ``qkv.weight`` directly)
DIRECT_QKV = {
    "cait": ("cait_xxs24_224", dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, depth_token_only=1), 32),
    "xcit": ("xcit_nano_12_p16_224", dict(embed_dim=32, depth=1, num_heads=2), 32),
    "efficientformer": ("efficientformer_l1", dict(depths=(1, 1, 1, 1), embed_dims=(16, 16, 32, 64),
                                                    num_vit=1), 224),
    "levit": ("levit_128s", {}, 64),
    "levit_conv": ("levit_conv_128s", {}, 64),
    "beit": ("beit_base_patch16_224", dict(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2), 28),
    "eva": ("eva_giant_patch14_224", dict(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2,
                                         mlp_ratio=2), 28),
    "swinv2": ("swinv2_tiny_window8_256", dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4,
                                               patch_size=4), 32),
    # no qkv.weight here, but attention timm computes its own way: pooled q / k / v with relative positions (MViTv2,
    # with a class token), talking heads and attention biases (EfficientFormerV2), mask-unit windows through the
    # fused SDPA path (Hiera, FastViT's SA stages)
    "mvitv2": (lambda **kw: MultiScaleVit(MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=16, use_cls_token=True),
                                          **kw), {}, 32),
    "efficientformerv2": ("efficientformerv2_s0", dict(depths=(1, 1, 2, 2), embed_dims=(16, 16, 32, 64), num_vit=1),
                          224),
    "hiera": ("hiera_tiny_224", dict(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1)), 64),
    "fastvit_sa": (lambda img_size, **kw: timm.create_model("fastvit_sa12", pretrained=False, **kw),  # no img_size
                   dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128)), 64),  # attention on (B, C, H, W)
}


def _family(key, seed=0):
    name, kwargs, size = DIRECT_QKV[key]
    build = name if callable(name) else lambda **kw: timm.create_model(name, pretrained=False, **kw)
    model = build(num_classes=10, **{"img_size": size, **kwargs}).eval()
    torch.manual_seed(seed)
    with torch.no_grad():  # weights, q / v biases and position tables all far from their zero init
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model, torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("key", list(DIRECT_QKV))
def test_slotted_attention_without_quantizers_is_timms(key):
    from visq.sites import ADAPTERS

    model, x = _family(key)
    with torch.no_grad():
        ref = model.forward_features(x)
    swapped = 0
    for path, module in list(model.named_modules()):
        adapter = next((a for a in ADAPTERS if a.matches(module)), None)
        if adapter is not None:
            adapter.install(model, path, {})  # slots without quantizers
            swapped += 1
    with torch.no_grad():
        out = model.forward_features(x)
    snr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30))
    assert swapped >= 1 and snr > 100, (swapped, snr)  # measured: 145-147 dB, or bit-exact


@pytest.mark.parametrize("key", list(DIRECT_QKV))
def test_direct_qkv_families_quantize_their_attention_and_round_trip(key, tmp_path):
    model, x = _family(key)
    with torch.no_grad():
        ref = model.forward_features(x)
    visq.quantize(model, "w8a8", calib=x, progress=False)
    text = visq.summary(model)
    assert ".probs_quantizer" in text and "no visq adapter" not in text  # EfficientFormer: token_mixer
    with torch.no_grad():
        out = model.forward_features(x)
    snr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())
    assert 15 < snr < 90, snr  # quantized, not silently float (measured 21 dB LeViT, a deep random net; 35-58 others)
    visq.save(model, tmp_path)
    fresh = visq.load(_family(key, seed=5)[0], tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
