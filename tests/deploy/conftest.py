import copy

import pytest
import torch
from torch import nn

import visq
from visq.deploy.w8a8 import Int8Linear
from visq.kernels import int8
from visq.modules import QuantLinear


@pytest.fixture(scope="session")
def images():
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def fake_and_exported(obj, **export_kwargs):
    """(fake-quant reference, exported copy) of a quantized pipeline or model, the reference frozen."""
    visq.freeze(obj)
    exported = visq.export(copy.deepcopy(obj), **export_kwargs)
    return obj, exported


def input_codes(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The integer codes a QuantLinear / Int8Linear input quantizer gives ``x`` (offset back to its grid)."""
    q = layer.input_quantizer
    if q.spec.granularity == "token":
        codes, _, zero = int8.quantize_dynamic(x, q.spec)
    else:
        scale, zero = q._current()
        codes = int8.quantize_static(x, scale.reshape(()), zero.reshape(()), q.spec)
    return codes.float() + int8.act_offset(q.spec)


def record_codes(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Forward pre-hooks on every W8A8 layer (fake-quant or exported) recording its input codes per call."""
    seen: dict[str, list[torch.Tensor]] = {}
    for path, m in model.named_modules():
        if isinstance(m, (QuantLinear, Int8Linear)) and m.input_quantizer is not None:
            def hook(mod, args, path=path):
                seen.setdefault(path, []).append(input_codes(mod, args[0]))

            m.register_forward_pre_hook(hook)
    return seen


def assert_codes_within_one_step(ref: dict, out: dict) -> None:
    """Every exported layer saw the reference's input codes up to one integer step, and almost all equal."""
    assert ref and ref.keys() == out.keys()
    for path in ref:
        for a, b in zip(ref[path], out[path], strict=True):
            diff = (a - b).abs()
            assert diff.max() <= 1, path
            assert (diff > 0).float().mean() < 0.01, path
