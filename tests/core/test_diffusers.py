import pytest
import torch

import visq
from visq.calibrate import CalibSet, Call
from visq.hosts.diffusers import QuantAttnProcessor
from visq.testing import tiny_ddim, tiny_pixart

PROMPTS = ["a red circle", "a blue square", "a small green star", "a large yellow triangle"]
STEPS = {"num_inference_steps": 4}


def psnr(a, b):
    return (10 * torch.log10(1 / ((a - b) ** 2).mean())).item()


def generate(pipe, inputs, steps=4, **kwargs):
    return pipe(inputs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
                **kwargs).images


def test_sd_w8a8_close_to_float_and_w4a8_runs(sd):
    ref = generate(sd, PROMPTS[:2])
    visq.quantize(sd, "w8a8", calib=PROMPTS, calib_options=STEPS, progress=False)
    assert isinstance(sd.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.processor, QuantAttnProcessor)
    out = generate(sd, PROMPTS[:2])
    assert psnr(ref, out) > 28  # measured ~36 dB on this model
    assert not torch.equal(ref, out)
    from visq.testing import tiny_sd

    sd4 = visq.quantize(tiny_sd(), "w4a8", calib=PROMPTS, calib_options=STEPS, progress=False)
    out4 = generate(sd4, PROMPTS[:2])
    assert out4.shape == ref.shape and torch.isfinite(out4).all()
    assert psnr(ref, out4) < psnr(ref, out)  # fewer bits, further from float


def test_text_encoder_and_vae_stay_float(sd):
    visq.quantize(sd, "w8a8", calib=PROMPTS[:1], calib_options=STEPS, progress=False)
    quantized = [n for n, m in sd.text_encoder.named_modules() if "quantizer" in n]
    assert quantized == [] and not any("quantizer" in n for n, _ in sd.vae.named_modules())
    assert "conv_in" in visq.summary(sd) and "time_embedding.linear_1" in visq.summary(sd)


def test_dit_w8a8_close_to_float(dit):
    ref = generate(dit, [0, 1])
    visq.quantize(dit, "w8a8", calib=[0, 1, 0, 1], calib_options=STEPS, progress=False)
    assert psnr(ref, generate(dit, [0, 1])) > 30


def test_unconditional_ddim_pipeline():
    pipe = tiny_ddim()
    ref = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    visq.quantize(pipe, "w8a8", calib=4, calib_options={"num_inference_steps": 3}, progress=False)
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert psnr(torch.tensor(ref.images), torch.tensor(out.images)) > 25


def test_pixart_denoiser_with_captured_calls():
    model = tiny_pixart()
    gen = torch.Generator().manual_seed(0)

    def call(t):
        kwargs = dict(encoder_hidden_states=torch.randn(2, 5, 24, generator=gen), timestep=torch.tensor([t, t]),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
        return Call((torch.randn(2, 4, 4, 4, generator=gen),), kwargs, float(t))

    calls = [call(t) for t in (999, 500, 1)]
    with torch.no_grad():
        ref = model(*calls[0].args, **calls[0].kwargs)[0]
    visq.quantize(model, "w8a8", calib=CalibSet(calls), progress=False)
    with torch.no_grad():
        out = model(*calls[0].args, **calls[0].kwargs)[0]
    assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.99
    assert any(isinstance(m, QuantAttnProcessor) for m in model.modules())


TEMPORAL = visq.Recipe((
    visq.Rule("*.weight_quantizer", visq.Uniform(bits=8, symmetric=True, granularity="channel")),
    visq.Rule("*.input_quantizer", visq.Uniform(bits=8, per_timestep=True)),
))


def test_per_timestep_state_follows_the_denoiser_timestep_under_cfg(sd):
    visq.quantize(sd, TEMPORAL, calib=PROMPTS[:2], calib_options=STEPS, progress=False)
    calibrated = visq.quant_state(sd).timesteps
    assert len(calibrated) == 4
    quantizer = sd.unet.down_blocks[0].resnets[0].conv1.input_quantizer
    assert not torch.allclose(quantizer.scale[0], quantizer.scale[-1])  # states really differ per step
    calls, slots = [], []

    def on_unet(module, args, kwargs):
        calls.append((float(args[1] if len(args) > 1 else kwargs["timestep"]), args[0].shape[0]))

    sd.unet.register_forward_pre_hook(on_unet, with_kwargs=True)
    quantizer.register_forward_pre_hook(lambda m, a: slots.append(m.slot()))
    generate(sd, PROMPTS[:1], guidance_scale=7.5)
    assert [batch for _, batch in calls] == [2] * 4  # CFG: one call per step, unconditional half in the batch
    assert slots == [calibrated.index(t) for t, _ in calls]
    with pytest.raises(KeyError, match="not calibrated"):
        generate(sd, PROMPTS[:1], steps=6)


def test_set_timestep_for_custom_loops(dit):
    visq.quantize(dit, TEMPORAL, calib=[0, 1], calib_options=STEPS, progress=False)
    t = visq.quant_state(dit).timesteps[1]
    visq.set_timestep(dit.transformer, t)
    q = next(m for m in dit.transformer.modules() if getattr(m, "temporal", False))
    assert q.slot() == 1
    with pytest.raises(ValueError, match="different timesteps"):
        visq.set_timestep(dit.transformer, torch.tensor([1.0, 2.0]))
