"""eval.bench_speed's equal-scope recipe and its tables (from a cell cache; no timing here)."""

import torch

import visq
from eval.bench_speed import Config
from eval.speed_report import readme_block, render
from eval.speed_rows import linear_scope, scoped_recipe
from visq.testing import tiny_vit


def test_scope_is_the_hosts_linears_and_visq_quantizes_exactly_those():
    model = tiny_vit()
    scope = linear_scope(model)
    assert "head" not in scope and "blocks.0.attn.qkv" in scope and len(scope) == 8
    visq.quantize(model, scoped_recipe("w8a8", scope), calib=torch.randn(4, 3, 32, 32), progress=False)
    sites = visq.quant_state(model).plan.quantized
    assert {s.rsplit(".", 1)[0] for s in sites} == set(scope)  # no attention slots, no patch embedding


def test_tables_from_cache():
    cache = {
        "deit-s|fp32": {"ms": 100.0, "fp32_ms": 100.0, "speedup": 1.0, "batch": 4, "peak_rss_mb": 900,
                        "checkpoint_mb": 84.0},
        "deit-s|visq export W8A8 compiled": {"ms": 50.0, "fp32_ms": 100.0, "speedup": 2.0, "batch": 4,
                                             "checkpoint_mb": 22.0, "compile_s": 31.0},
        "deit-s|torchao int4 weight-only bf16": {"error": "ImportError: Requires mslk >= 1.0.0"},
        "vit-zoo|quanto W8A8": {"ms": 8.0, "fp32_ms": 10.0, "speedup": 1.25, "batch": 64, "top1": 90.1,
                                "top1_float": 90.5},
    }
    text = render(cache, Config(), "test machine")
    assert "| visq export W8A8 compiled | visq | W8A8 static | 50.0 | 12.50 | 2.00x | - | 22.00 | - | 31 |" in text
    assert "fails here: ImportError: Requires mslk" in text
    assert "90.1% (float 90.5%)" in text and "machine was shared" in text
    assert "Not measured yet (rerun the command to resume): deit-s / bf16" in text
    block = readme_block(cache)
    assert "**deit-s**" in block and "**vit-zoo**" in block and "torchao int4" not in block  # README rows only
