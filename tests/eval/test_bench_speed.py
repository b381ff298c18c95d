"""eval.bench_speed's equal-scope recipe and its tables (from a cell cache; no timing here)."""

import pytest
import torch

import visq
from eval.bench_speed import Config, _cast_unet
from eval.speed_report import goal_table, readme_block, render
from eval.speed_rows import ROWS, apply, linear_scope, quanto_group, scoped_recipe
from visq.deploy.weight_only import Int4Linear
from visq.testing import tiny_vit


def _wide_vit() -> torch.nn.Module:
    """96-wide blocks (the zoo ViT's width) with a 384-wide MLP: per channel and grouped under quanto's rule."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=96,
                             depth=1, num_heads=2, mlp_ratio=4, num_classes=10).eval()


def test_scope_is_the_hosts_linears_and_visq_quantizes_exactly_those():
    model = tiny_vit()
    scope = linear_scope(model)
    assert "head" not in scope and "blocks.0.attn.qkv" in scope and len(scope) == 8
    visq.quantize(model, scoped_recipe("w8a8", scope), calib=torch.randn(4, 3, 32, 32), progress=False)
    sites = visq.quant_state(model).plan.quantized
    assert {s.rsplit(".", 1)[0] for s in sites} == set(scope)  # no attention slots, no patch embedding


def test_full_scope_rows_run_visqs_recipe_with_and_without_the_int8_kernels():
    x = torch.randn(4, 3, 32, 32)
    full = apply(ROWS["visq export W8A8 full"], tiny_vit(), x, {}, lambda: None)
    assert full.visq_export.attention == ["blocks.0.attn", "blocks.1.attn"]
    assert all(m.int8_attention for p, m in full.named_modules() if p in full.visq_export.attention)
    before = apply(ROWS["visq export W8A8 full, fake-quant attention + convs"], tiny_vit(), x, {}, lambda: None)
    assert not any(getattr(m, "int8_attention", False) for m in before.modules())
    assert visq.quant_state(before).plan.quantized.keys() == visq.quant_state(full).plan.quantized.keys()
    with torch.no_grad():  # the same quantization: the kernels change only float rounding
        torch.testing.assert_close(before(x), full(x), rtol=1e-4, atol=1e-4)


def test_tables_from_cache():
    cache = {
        "deit-s|fp32": {"ms": 100.0, "fp32_ms": 100.0, "speedup": 1.0, "batch": 4, "peak_rss_mb": 900,
                        "checkpoint_mb": 84.0},
        "deit-s|visq export W8A8 compiled": {"ms": 50.0, "fp32_ms": 100.0, "speedup": 2.0, "batch": 4,
                                             "checkpoint_mb": 22.0, "compile_s": 31.0, "cpu": "CPU X (avx2)"},
        "deit-s|torchao int4 weight-only bf16": {"error": "ImportError: Requires mslk >= 1.0.0"},
        "vit-zoo|quanto W8A8": {"ms": 8.0, "fp32_ms": 10.0, "speedup": 1.25, "batch": 64, "top1": 90.1,
                                "top1_float": 90.5},
    }
    text = render(cache, Config(), "test machine")
    row = "| visq export W8A8 compiled | visq | W8A8 static | 50.0 | 12.50 | 2.00x | - | 22.00 | - | 31 | M2 |"
    assert row in text
    assert "- **M1**: CPU not recorded" in text and "- **M2**: CPU X (avx2)" in text
    assert "fails here: ImportError: Requires mslk" in text
    assert "90.1% (float 90.5%)" in text and "machine was shared" in text
    assert "Not measured yet (rerun the command to resume): deit-s / bf16" in text
    block = readme_block(cache)
    assert "**deit-s**" in block and "**vit-zoo**" in block and "quanto W8 weight-only" not in block  # README rows


def test_quanto_group_rule_matches_the_installed_quanto():
    assert [quanto_group(k) for k in (64, 96, 128, 160, 384, 320, 200)] == [None, None, None, 32, 128, 64, None]
    quanto = pytest.importorskip("optimum.quanto")
    for k in (64, 96, 128, 160, 384, 320, 200):
        layer = quanto.nn.QLinear(k, 16, weights=quanto.qint4)
        assert layer.weight_group_size == quanto_group(k), k


def test_grouped_w4_row_uses_quantos_grouping_per_layer():
    model = _wide_vit()
    x = torch.randn(2, 3, 32, 32)
    apply(ROWS["visq export W4A16-g128 bf16"], model, x, {}, lambda: None)  # 96-wide inputs: no group of 128
    layers = {p: m for p, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert layers["blocks.0.mlp.fc2"].group_size == 128 and layers["blocks.0.attn.qkv"].group_size == 96
    assert len(layers) == 4 and model(x.bfloat16()).isfinite().all()


def test_torchao_int4_row_quantizes_every_scoped_layer():
    pytest.importorskip("torchao")
    model = _wide_vit()
    apply(ROWS["torchao int4 weight-only bf16"], model, None, {}, lambda: None)
    modules = dict(model.named_modules())
    assert all(type(modules[p].weight).__name__ != "Parameter" for p in linear_scope(_wide_vit()))
    assert model(torch.randn(2, 3, 32, 32).bfloat16()).isfinite().all()


def test_goal_table_compares_same_scheme_and_dtype():
    cell = {"ms": 1.0, "fp32_ms": 1.0, "speedup": 1.0, "batch": 1, "top1_float": 90.0}
    cache = {"vit-zoo|visq export W4A16": {**cell, "top1": 89.0},
             "vit-zoo|quanto W4 weight-only": {**cell, "top1": 89.5},
             "vit-zoo|quanto W4 weight-only bf16": {**cell, "top1": 80.0},  # other dtype: not a peer of the fp32 row
             "vit-zoo|visq export W8A8": {**cell, "top1": 90.0}, "vit-zoo|quanto W8A8": {**cell, "top1": 90.0}}
    lines = goal_table(cache, "vit-zoo")
    assert "| visq export W4A16 | W4 weight-only | 89.00 | quanto W4 weight-only | 89.50 | -0.50 | missed |" in lines
    assert "| visq export W8A8 | W8A8 static | 90.00 | quanto W8A8 | 90.00 | +0.00 | met |" in lines
    assert len(lines) == 4


def test_cast_unet_runs_a_bf16_module_on_fp32_inputs():
    net = torch.nn.Linear(4, 4).bfloat16()
    with _cast_unet(net, torch.bfloat16):
        out = net(torch.randn(2, 4))
    assert out.dtype == torch.float32
    with pytest.raises(RuntimeError):  # hooks gone after the block
        net(torch.randn(2, 4))


def test_interleaved_timing_drops_warmup_and_pairs_rounds():
    from eval.timing import interleaved, paired_ratio

    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "b"] * 5 and [len(t) for t in times.values()] == [3, 3]
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == {"median": 3.0, "min": 2.0, "max": 4.0}
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved({"a": lambda: None}, repeats=0)


def test_a_recorded_spread_is_shown_next_to_the_speedup():
    from eval.speed_report import _speedup

    assert _speedup({"speedup": 2.0}) == "2.00x"
    assert _speedup({"speedup": 2.0, "speedup_min": 1.9, "speedup_max": 2.25}) == "2.00x (1.90-2.25)"


def test_versus_times_rows_in_one_process_and_reports_paired_ratios():
    from eval.bench_versus import render, versus

    rows = ["visq export W8A8 full bf16", "fp32"]
    result = versus("deit-s", rows, repeats=2, warmup=0)
    assert set(result) == set(rows) and "median" not in result[rows[0]]
    fp32 = result["fp32"]
    assert fp32["min"] <= fp32["median"] <= fp32["max"] and fp32["median"] > 0
    text = render("deit-s", rows, result, "cmd", 2, 0, 1)
    assert "| visq export W8A8 full bf16 |" in text and f"{fp32['median']:.2f}x" in text
    with pytest.raises(ValueError, match="at least two rows"):
        versus("deit-s", ["fp32"])
