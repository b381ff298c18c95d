import pytest
import timm
import torch

import visq
from visq import Rule
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


def test_a_layer_whose_weight_is_used_directly_is_named_when_calibration_misses_it():
    from dataclasses import replace

    from visq.recipes import parse

    beit = _tiny("beit_base_patch16_224", patch_size=8, embed_dim=32, depth=1, num_heads=2)
    before = [type(m) for m in beit.modules()]
    recipe = parse("w8a8")
    attention_float = tuple(Rule(p, None, optional=True) for p in
                            ("*.q_quantizer", "*.k_quantizer", "*.v_quantizer", "*.probs_quantizer"))
    with pytest.raises(RuntimeError, match=r"1 quantizer sites saw no calibration data: blocks\.0\.attn\.qkv\."
                                           r"input_quantizer .*inside blocks\.0\.attn \(Attention\).*F\.linear"):
        visq.quantize(beit, replace(recipe, rules=attention_float + recipe.rules), calib=torch.randn(2, 3, 32, 32),
                      progress=False)
    assert [type(m) for m in beit.modules()] == before
