"""torch.compile over exported layers (traced without graph breaks), and the CUDA path where a GPU exists."""

import copy

import pytest
import torch
from torch import nn

import visq


def _quantized(recipe: str = "w8a8") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    return visq.quantize(model, recipe, calib=torch.randn(32, 64), progress=False)


def test_compile_full_graph_matches_eager():
    model = _quantized()
    eager = visq.export(copy.deepcopy(model))
    x = torch.randn(20, 64)
    # aot_eager traces exactly what inductor would compile (fullgraph: a graph break raises) without the C++ build
    compiled = visq.export(model, compile=True, compile_options={"backend": "aot_eager", "fullgraph": True},
                           example=(x,))
    assert compiled.visq_export.compile_seconds > 0
    assert "torch.compile on (compiled in" in visq.summary(compiled)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("recipe", ["w8a8", "w4a16-g32"])
def test_cuda_matches_cpu(recipe):
    model = visq.export(_quantized(recipe))
    x = torch.randn(5, 64)  # M < 17: the CUDA int8 kernel needs padding
    with torch.no_grad():
        expected = model(x)
        got = model.cuda()(x.cuda()).cpu()
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
        if recipe.startswith("w4"):
            bf16 = model.to(torch.bfloat16)(x.cuda().bfloat16()).float().cpu()
            assert (bf16 - expected).abs().max() <= 0.02 * expected.abs().max()
