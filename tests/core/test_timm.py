import pytest
import timm
import torch

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
    assert "blocks.0.attn.qkv.weight_quantizer" in text and "int4 sym channel" in text
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


def test_attention_without_an_adapter_is_an_error_or_a_named_float_layer():
    cait = dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, depth_token_only=1)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="blocks.0.attn: attention class TalkingHeadAttn has no visq adapter"):
        visq.quantize(_tiny("cait_xxs24_224", **cait), "w8a8", calib=x, progress=False)
    model = visq.quantize(_tiny("cait_xxs24_224", **cait), "w8a16", calib=x, progress=False)
    text = visq.summary(model)
    assert "blocks.0.attn" in text and "attention class TalkingHeadAttn has no visq adapter" in text
    assert "attention class ClassAttn has no visq adapter" in text


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


def _beit():
    model = _tiny("beit_base_patch16_224", patch_size=8, embed_dim=32, depth=2, num_heads=2)
    with torch.no_grad():  # non-zero q / v biases and relative position tables, so the checks can see them
        for block in model.blocks:
            for p in (block.attn.q_bias, block.attn.v_bias, block.attn.relative_position_bias_table):
                p.normal_(0, 0.5)
    return model


def test_beit_attention_without_quantizers_is_timms():
    from visq.hosts.timm import QuantBeitAttention
    from visq.modules import rebind

    attn = _beit().blocks[0].attn
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = attn(x), rebind(QuantBeitAttention, attn)(x)
    snr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())
    assert snr > 100, snr  # measured 145 dB: (q k^T) * scale instead of (q * scale) k^T


def test_beit_quantizes_its_attention_and_round_trips(tmp_path):
    model, x = _beit(), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    visq.quantize(model, "w8a8", calib=x, progress=False)
    text = visq.summary(model)
    assert "blocks.1.attn.probs_quantizer" in text and "blocks.0.attn.qkv.input_quantizer" in text
    visq.save(model, tmp_path)
    fresh = visq.load(_beit(), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
