"""The exact fp32 route for int8 GEMMs (CPUs without VNNI, where torch._int_mm is a scalar loop)."""

import pytest
import torch

import visq
from tests.deploy.conftest import fake_and_exported
from visq.kernels import int8
from visq.testing import tiny_vit


def _reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.long() @ b.long()).to(torch.int32)


@pytest.mark.parametrize("k", [64, 1024, 1025, 2500])
def test_int_mm_fp32_is_exact_at_the_extremes_and_on_random_codes(k):
    worst_a, worst_b = torch.full((3, k), -128, dtype=torch.int8), torch.full((k, 5), -128, dtype=torch.int8)
    assert torch.equal(int8.int_mm_fp32(worst_a, worst_b), _reference(worst_a, worst_b))
    gen = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (2, 3, 17, k), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (2, 3, k, 9), dtype=torch.int8, generator=gen)
    assert torch.equal(int8.int_mm_fp32(a, b), _reference(a, b))


def test_one_fp32_gemm_over_a_long_k_would_round():
    """Why the K-chunks: past 2^24 fp32 drops integers, so one GEMM over K = 4096 is not exact."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(101, 128, (4, 4096), dtype=torch.int8, generator=gen)  # odd products: sums past 2^24 round
    b = torch.randint(101, 128, (4096, 8), dtype=torch.int8, generator=gen)
    assert not torch.equal((a.float() @ b.float()).to(torch.int32), _reference(a, b))
    assert torch.equal(int8.int_mm_fp32(a, b), _reference(a, b))


def test_reduced_fp32_matmul_precision_is_refused():
    a, b = torch.ones(2, 8, dtype=torch.int8), torch.ones(8, 2, dtype=torch.int8)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with pytest.raises(RuntimeError, match="set_float32_matmul_precision"):
            int8.int_mm_fp32(a, b)
    finally:
        torch.set_float32_matmul_precision(before)


def test_both_routes_give_the_same_exported_model(images, monkeypatch):
    _, out = fake_and_exported(visq.quantize(tiny_vit(), "w8a8", calib=images[:4], progress=False))
    results = {}
    for native in (True, False):
        monkeypatch.setattr(int8, "native_int8_gemm", lambda native=native: native)
        with torch.no_grad():
            results[native] = out(images[:4])
        kernels = visq.summary(out)
        assert ("_int_mm" in kernels) == native and ("exact fp32 GEMM" in kernels) == (not native)
    assert torch.equal(results[True], results[False])


def test_export_warns_where_int8_is_no_faster_than_fp32(images, monkeypatch, caplog):
    monkeypatch.setattr(int8, "native_int8_gemm", lambda: False)
    with caplog.at_level("WARNING", logger="visq.deploy.export"):
        visq.export(visq.quantize(tiny_vit(), "w8a8", calib=images[:4], progress=False))
    assert "no VNNI / AMX int8 GEMM" in caplog.text
    monkeypatch.setattr(int8, "native_int8_gemm", lambda: True)
    caplog.clear()
    with caplog.at_level("WARNING", logger="visq.deploy.export"):
        visq.export(visq.quantize(tiny_vit(), "w8a8", calib=images[:4], progress=False))
    assert "VNNI" not in caplog.text
