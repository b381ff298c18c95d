"""Exported W8A8 linears (and convolutions) against the fake-quant forward: per layer within one accumulator step,
per model within one integer step of every layer's input codes (a ViT; a UNet per layer on its own inputs)."""

import dataclasses

import pytest
import torch
from torch import nn

import visq
from tests.deploy.conftest import assert_codes_within_one_step, fake_and_exported, record_codes
from visq import Recipe, Rule, Uniform
from visq.deploy.w8a8 import Int8Conv2d, Int8Linear
from visq.kernels import int8, onednn
from visq.testing import tiny_sd, tiny_vit

PROMPTS = ["a red circle", "a blue square"]


def _token_spec(**kw) -> Uniform:
    # per-token activations are dynamic; the explicit flag exists once the quality-defaults half lands
    extra = {"dynamic": True} if "dynamic" in {f.name for f in dataclasses.fields(Uniform)} else {}
    return Uniform(granularity="token", **kw, **extra)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 16)).eval()


ACTIVATIONS = {
    "static asym": Uniform(bits=8),
    "static asym int_mm": Uniform(bits=8),
    "static sym": Uniform(bits=8, symmetric=True),
    "static asym 6-bit": Uniform(bits=6),
    "token asym": None,
    "token sym": None,
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_layer_within_one_accumulator_step(name):
    act = ACTIVATIONS[name] or _token_spec(symmetric=name.endswith("sym"))
    recipe = Recipe((Rule("*.weight_quantizer", Uniform(bits=8, symmetric=True, granularity="channel")),
                     Rule("*.input_quantizer", act)))
    x = torch.randn(64, 24) * 3 + 1
    ref, out = fake_and_exported(visq.quantize(_mlp(), recipe, calib=x, progress=False))
    assert isinstance(out[0], Int8Linear) and isinstance(out[2], Int8Linear)
    eight_bit_static = name.startswith("static") and "6-bit" not in name
    assert out[0].use_onednn == (onednn.available() and eight_bit_static)
    if name.endswith("int_mm"):  # the path torch.compile and CUDA take
        out[0].use_onednn = False
        out[0].prepare()
    y = torch.randn(5, 7, 24) * 3 + 1  # 3-d input, outside the calibration range (clamped codes)
    with torch.no_grad():
        expected, got = ref[0](y), out[0](y)
    # one accumulator step is s_x * s_w[channel] (s_x per token when dynamic)
    act_scale = int8.quantize_dynamic(y, act)[1] if act.granularity == "token" else out[0].input_quantizer.scale
    step = act_scale * out[0].weight_scale
    assert got.shape == expected.shape
    assert ((got - expected).abs() <= step).all()


@pytest.mark.parametrize("recipe", ["w8a8", "w4a8", "w4a8-sym"])
def test_vit_codes_within_one_step(images, recipe):
    ref, out = fake_and_exported(visq.quantize(tiny_vit(), recipe, calib=images, progress=False))
    assert sum(isinstance(m, Int8Linear) for m in out.modules()) == 8
    seen_ref, seen_out = record_codes(ref), record_codes(out)
    with torch.no_grad():
        a, b = ref(images), out(images)
    assert_codes_within_one_step(seen_ref, seen_out)
    # A score or probability within float rounding of a rounding boundary can give the two forwards codes one
    # step apart (which one depends on the CPU's float matmul); an image where every code agrees must agree to
    # float rounding, and a flipped code may move only its own image, by a little.
    flipped = torch.zeros(len(images), dtype=torch.bool)
    for path in seen_ref:
        for x, y in zip(seen_ref[path], seen_out[path], strict=True):
            flipped |= (x != y).flatten(1).any(1)
    err = (a - b).abs().amax(-1)
    assert flipped.sum() <= 2 and (err[~flipped] <= 1e-5 * a.abs().max()).all()
    assert (err <= 1e-2 * a.abs().max()).all()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_sd_unet_per_timestep_layers_match_fake_quant_on_their_inputs():
    """Every exported W8A8 linear and convolution, on the inputs it sees in a sampling run, gives its fake-quant
    layer's output up to float rounding (the same codes, the same integer sums). End to end the runs drift apart a
    little: a rounding difference upstream moves a code by one step downstream, which a random UNet amplifies."""
    pipe = visq.quantize(tiny_sd(), "w8a8", method="temporal", calib=PROMPTS,
                         calib_options={"num_inference_steps": 2}, progress=False)
    ref, out = fake_and_exported(pipe)
    reference = dict(ref.unet.named_modules())
    checked = []

    def compare(path):
        def hook(module, args, output):
            fake = reference[path]
            fake.input_quantizer._t_index = module.input_quantizer._t_index  # the step the exported layer is at
            expected = fake(args[0])
            assert (output - expected).abs().max() <= 1e-5 * expected.abs().max(), path
            checked.append(path)
        return hook

    for path, module in out.unet.named_modules():
        if isinstance(module, (Int8Linear, Int8Conv2d)):
            module.register_forward_hook(compare(path))
    kwargs = dict(num_inference_steps=2, output_type="np")
    with torch.no_grad():
        a = ref(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
        b = out(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
        float_images = tiny_sd()(PROMPTS, generator=torch.Generator().manual_seed(0), **kwargs).images
    exported = {p for p, m in out.unet.named_modules() if isinstance(m, (Int8Linear, Int8Conv2d))}
    assert set(checked) == exported and len(checked) == 2 * len(exported)  # every layer, both steps
    # with every layer exact on its own inputs, the runs differ only where a rounding difference moved a code by
    # one step and later layers carried it on: 0 with the convolutions fake-quant, 4e-3 to 2e-2 with them int8
    # (the thread count changes the rounding), while quantization itself moves these images by 5e-2
    assert abs(a - b).max() < 0.5 * abs(a - float_images).max()
    text = visq.summary(out)
    if onednn.available() or int8.native_int8_gemm():
        kernel = "oneDNN qlinear" if onednn.available() else "_int_mm"
        assert f"int8 {kernel} W8A8 (static per-tensor act" in text
    else:
        assert "int8 W8A8, exact fp32 GEMM on the codes (static per-tensor act" in text
    assert "conv_in" not in text.split("fake-quant layers")[1]  # a float layer is not listed as fake-quant
    conv = "int8 oneDNN qconv2d W8A8" if onednn.conv_available() else "no exact int8 convolution kernel"
    assert conv in text
    assert "int8 attention: 8 modules" in text


def test_export_errors(images):
    with pytest.raises(ValueError, match="not quantized"):
        visq.export(tiny_vit())
    model = visq.export(visq.quantize(tiny_vit(), "w8a8", calib=images, progress=False))
    with pytest.raises(ValueError, match="already exported"):
        visq.export(model)
