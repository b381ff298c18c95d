"""QKR attention against float attention; CGA's freezing; oscillation tracking against hand-made code sequences."""

import pytest
import torch
from torch import nn

import visq
from visq.oscillation import CGA, OscillationTracker, low_confidence
from visq.quantizers import SiteShape, StatsQ, build
from visq.testing import tiny_vit


def _with_q_bias(seed: int = 0) -> nn.Module:
    model = tiny_vit(seed)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.bias.normal_(0, 0.5)  # a real query bias: QKR keeps its per-key term exactly
    return model


def test_qkr_in_float_equals_the_attention_it_replaces():
    from visq.methods.qkr import QKRAttention, reparameterize

    model = _with_q_bias()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    reparameterize(model)
    assert all(type(b.attn) is QKRAttention for b in model.blocks)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-4)


def test_qkr_at_8_bits_stays_close_to_float_attention():
    model = _with_q_bias()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x)
    attn_in = []
    hook = model.blocks[0].attn.register_forward_hook(lambda m, args, out: attn_in.append((args[0], out)))
    model(x)
    hook.remove()
    visq.quantize(model, "w8a8", method="ofq", statsq=False, calib=torch.randn(16, 3, 32, 32), progress=False)
    attn = model.blocks[0].attn
    assert {"weight_quantizer", "kx_quantizer", "probs_quantizer", "v_quantizer"} <= set(dict(attn.named_children()))
    x_in, out = attn_in[0]
    err = (attn(x_in) - out).abs().max() / out.abs().max()
    assert err < 0.05
    assert (model(x) - expected).abs().max() < 0.05 * expected.abs().max()


def test_qkr_needs_attention_blocks():
    mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="QKR .* needs timm Attention blocks.*qkr=False"):
        visq.quantize(mlp, "w4a4", method="ofq", calib=torch.randn(4, 8), progress=False)
    visq.quantize(mlp, "w4a4", method="ofq", qkr=False, calib=torch.randn(4, 8), progress=False)


def test_cga_freezes_exactly_the_confident_weights_and_they_stay_bit_identical():
    layer = nn.Linear(4, 2, bias=False)
    # 2 bits: s = 2 mean|w| per row; pre-round b = clamp(w/s, -1, 1) * 2 - 0.5, thresholds at -1.5, -0.5, 0.5
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 1.5, 1.0], [0.001, 0.3, -0.5, 2.0]]))
    s = 2 * layer.weight.abs().mean(dim=1, keepdim=True)
    b = torch.clamp(layer.weight / s, -1, 1 - 1e-6) * 2 - 0.5
    near = torch.zeros_like(b, dtype=torch.bool)
    for t in (-1.5, -0.5, 0.5):
        near |= (b - t).abs() <= 0.1
    layer.weight_quantizer = build(StatsQ(bits=2), SiteShape("weight", 2, 0, 4))
    mask = low_confidence(layer.weight_quantizer, layer.weight, 0.1)
    assert torch.equal(mask, near) and mask.any() and (~mask).any()
    # a model holding the layer: one AdamW step with weight decay, gradients everywhere
    model = nn.Sequential(layer)
    cga = CGA(model, boundary_range=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    before = layer.weight.detach().clone()
    (layer.weight_quantizer(layer.weight) * torch.randn(2, 4)).sum().backward()
    metrics = cga.mask_gradients()
    assert metrics["frozen_frac"] == pytest.approx(float((~near).float().mean()))
    optimizer.step()
    cga.restore()
    assert torch.equal(layer.weight[~near], before[~near])  # bit-identical
    assert (layer.weight[near] != before[near]).all()


def test_oscillation_tracker_counts_reversals_with_an_ema():
    layer = nn.Linear(1, 3, bias=False)
    layer.weight_quantizer = build(StatsQ(bits=2), SiteShape("weight", 3, 0, 1))
    model = nn.Sequential(layer)
    # one weight per row, so s = 2|w| and b = clamp(sign(w)/2, ...) * 2 - 0.5: codes are -1 (w < 0) or 0 (w > 0)
    sequence = [1.0, -1.0, 1.0, -1.0, 1.0]  # row 0 flips every step: reversals from the second switch on
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[sequence[0]], [1.0], [-1.0]]))
    tracker = OscillationTracker(model, momentum=0.5, threshold=0.3)
    ema = 0.0
    for i, value in enumerate(sequence[1:]):
        with torch.no_grad():
            layer.weight[0, 0] = value
            layer.weight[1, 0] = -1.0  # row 1 switches once (first update) and stays: never oscillates
        metrics = tracker.update()
        ema = 0.5 * (1.0 if i >= 1 else 0.0) + 0.5 * ema
        assert tracker.ema_0[0, 0].item() == pytest.approx(ema)
    assert tracker.ema_0[1, 0].item() == 0.0 and tracker.ema_0[2, 0].item() == 0.0
    assert metrics["osc_frac"] == pytest.approx(1 / 3)
    restored = OscillationTracker(model, momentum=0.5, threshold=0.3)
    restored.load_state_dict(tracker.state_dict())
    assert restored.per_layer() == tracker.per_layer() == {"0": pytest.approx(1 / 3)}
