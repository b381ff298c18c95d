import subprocess
import sys

import pytest
import torch
from torch import nn

import visq


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def assert_unchanged(model, before):
    state, types = snapshot(model)
    assert types == before[1]
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)


@pytest.mark.parametrize(
    "calib, match",
    [
        (None, "needs calibration data"),
        (torch.empty(0, 3, 32, 32), "empty"),
        ([], "empty"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN or inf"),
        (torch.randn(2, 3, 16, 16), "does not fit VisionTransformer"),
        (torch.randn(2, 32, 32), "does not fit"),
    ],
)
def test_bad_calibration_leaves_model_unchanged(vit, calib, match):
    before = snapshot(vit)
    with pytest.raises(ValueError, match=match):
        visq.quantize(vit, "w8a8", calib=calib, progress=False)
    assert_unchanged(vit, before)


def test_bad_recipe_method_and_rule(vit, images):
    before = snapshot(vit)
    with pytest.raises(ValueError, match="Valid forms"):
        visq.quantize(vit, "w4a9", calib=images)
    with pytest.raises(ValueError, match="unknown method 'nope'; available: .*minmax"):
        visq.quantize(vit, "w8a8", method="nope", calib=images)
    with pytest.raises(ValueError, match="matches no quantizer site"):
        visq.quantize(vit, visq.Recipe((visq.Rule("decoder.*", visq.Uniform()),)), calib=images)
    assert_unchanged(vit, before)


def test_failure_during_calibration_undoes_the_swap(vit, images, monkeypatch):
    before = snapshot(vit)
    from visq.quantizers.uniform import UniformQuantizer

    def boom(self):
        raise RuntimeError("fit failed")

    monkeypatch.setattr(UniformQuantizer, "fit", boom)
    with pytest.raises(RuntimeError, match="fit failed"):
        visq.quantize(vit, "w8a8", calib=images, progress=False)
    assert_unchanged(vit, before)


def test_unsupported_objects():
    with pytest.raises(TypeError, match="pass a diffusers pipeline, a timm model or a torch.nn.Module"):
        visq.quantize("not a model", "w8a8")

    class OwnAttention(nn.Module):  # an attention class visq has no adapter for
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return nn.functional.scaled_dot_product_attention(q, k, v)

    with pytest.raises(ValueError, match="silently skipped"):
        visq.quantize(nn.Sequential(OwnAttention()), "w8a8", calib=torch.randn(2, 3, 4))
    model = nn.Sequential(OwnAttention())
    visq.quantize(model, "w8a16", calib=torch.randn(2, 3, 4), progress=False)  # float attention is fine
    assert "no visq adapter" in visq.summary(model)


def test_quantize_twice_and_summary_of_float(vit, images):
    with pytest.raises(ValueError, match="not quantized"):
        visq.summary(vit)
    visq.quantize(vit, "w8a8", calib=images, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        visq.quantize(vit, "w8a8", calib=images)


def test_diffusers_calibration_errors(sd, dit):
    with pytest.raises(ValueError, match="list of prompt strings"):
        visq.quantize(sd, "w8a8", calib=[1, 2])
    with pytest.raises(ValueError, match="list of prompt strings"):
        visq.quantize(sd, "w8a8", calib=[])
    with pytest.raises(ValueError, match="class ids"):
        visq.quantize(dit, "w8a8", calib=["a cat"])
    assert not any("quantizer" in n for n, _ in sd.unet.named_modules())


def test_import_visq_is_lean():
    code = "import sys, visq; print(sorted(m for m in ('diffusers', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unsupported_diffusers_model(sd):
    with pytest.raises(TypeError, match=r"unsupported diffusers model \(AutoencoderKL\): .* forward takes a timestep"):
        visq.quantize(sd.vae, "w8a8", calib=["x"])
