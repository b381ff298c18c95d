"""Cached benchmark cells count only for the quantization they measured."""

from __future__ import annotations

from eval import bench_vit
from eval.cells import quantization_digest


def test_digest_follows_the_rules_a_method_applies():
    # min-max uses the recipe's weights: a symmetric and an asymmetric 4-bit grid are different quantizations
    assert quantization_digest("w4a4", "minmax") != quantization_digest("w4a4-sym", "minmax")
    # RepQ-ViT brings its own weight quantizers: the grammar's weight default does not change what it applies
    assert quantization_digest("w4a4", "repq") == quantization_digest("w4a4-sym", "repq")
    assert quantization_digest("w4a4", "minmax") != quantization_digest("w4a4", "percentile")
    assert quantization_digest("w8a8", "dgq") != quantization_digest("w8a8", "dgq", log_probs=False)


def test_a_cell_of_other_rules_is_measured_again():
    cell = {"top1": 80.0, "recipe": bench_vit.cell_digest("minmax", "w4a4-sym")}
    cache = {bench_vit.cell_key("minmax", "w4a4", 0): cell}
    assert bench_vit.cached(cache, "minmax", "w4a4", 0) is None  # measured with the symmetric grid
    assert bench_vit.cached({"minmax|w4a4|0": {"top1": 80.0}}, "minmax", "w4a4", 0) is None  # no digest recorded
    cell["recipe"] = bench_vit.cell_digest("minmax", "w4a4")
    assert bench_vit.cached(cache, "minmax", "w4a4", 0) is cell
    assert bench_vit.cached({"ptq:minmax|w4a4|0": cell}, "ptq:minmax", "w4a4", 0, method="minmax") is cell
