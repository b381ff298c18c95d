"""Diffusion transformers through the generic attention wrapper (visq.hosts.diffusers_attention): FLUX, Chroma, SD3,
Sana, Qwen-Image, Z-Image, Lumina2, Lumina-Next, HunyuanDiT, AuraFlow, CogView3Plus and the video models CogVideoX,
HunyuanVideo, LTX-Video, each built tiny in code."""

import subprocess
import sys
import warnings

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

import visq
from visq.calibrate import CalibSet, Call
from visq.hosts.diffusers_attention import QuantizedProcessor
from visq.sites import ATTENTION_SLOTS
from visq.testing import TRANSFORMERS, tiny_transformer

warnings.filterwarnings("ignore", category=FutureWarning)  # diffusers' deprecation notices for FLUX embeddings

# softmax attention modules of each tiny model (Sana's self-attention is linear: named float, not counted)
ATTENTION = {"flux": 2, "flux2": 2, "wan": 4, "chroma": 2, "sd3": 3, "sana": 2, "qwen_image": 2, "z_image": 4,
             "lumina2": 4, "lumina_next": 4, "hunyuan_dit": 4, "auraflow": 2, "cogview3plus": 1, "cogvideox": 2,
             "hunyuan_video": 3, "ltx_video": 4}
# attention the host keeps float by default, each named in summary: HunyuanVideo's text token refiner runs once per
# prompt (like the text encoder), not per video token
HOST_FLOAT = {"hunyuan_video": ["context_embedder.token_refiner.refiner_blocks.0.attn "]}


def _output(out):
    out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
    return torch.stack(out) if isinstance(out, list) else out  # Z-Image returns one latent per image


def _run(model, kwargs):
    with torch.no_grad():
        return _output(model(**kwargs))


def _psnr(ref, out):
    return float(10 * torch.log10(ref.abs().max() ** 2 / (ref - out).pow(2).mean().clamp_min(1e-30)))


def _attentions(model):
    return [m for m in model.modules() if hasattr(m, "set_processor") and getattr(m, "processor", None) is not None]


def _calib(kwargs, timesteps=(None,)):
    name = "t" if "t" in kwargs else "timestep"
    calls = []
    for t in timesteps:
        call = dict(kwargs) if t is None else {**kwargs, name: torch.full_like(kwargs[name], t)}
        calls.append(Call((), call, timestep=float(call[name][0])))
    return CalibSet(calls)


class _Counting(nn.Identity):
    """An identity quantizer that counts its calls: proves the wrapper reached SDPA."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_every_tiny_transformer_is_covered():
    assert set(ATTENTION) == set(TRANSFORMERS)


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_wrapped_processor_reproduces_float(name):
    model, kwargs = tiny_transformer(name)
    ref = _run(model, kwargs)
    attentions = _attentions(model)
    own = [a.processor for a in attentions]
    for a in attentions:  # no quantizer: the model's own processor runs untouched
        a.set_processor(QuantizedProcessor.wrap(a.processor, {}))
    assert torch.equal(_run(model, kwargs), ref)
    # identity quantizers: visq's SDPA (q.k^T, mask, softmax, probs.v) replaces torch's and must match it
    slots = {a: {s: _Counting() for s in ATTENTION_SLOTS} for a in attentions}
    for a, processor in zip(attentions, own):
        a.set_processor(QuantizedProcessor.wrap(processor, slots[a]))
    assert _psnr(ref, _run(model, kwargs)) > 100
    reached = sum(all(q.calls > 0 for q in s.values()) for s in slots.values())
    assert reached == ATTENTION[name]  # Sana's linear attention never calls SDPA


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_w8a8_and_w4a8_quantize_every_softmax_attention(name):
    model, kwargs = tiny_transformer(name)
    ref = _run(model, kwargs)
    for recipe, bar in (("w8a8", 40.0), ("w4a8", 25.0)):
        quantized, _ = tiny_transformer(name)
        visq.quantize(quantized, recipe, calib=_calib(kwargs), progress=False)
        slotted = [m for m in quantized.modules() if isinstance(m, QuantizedProcessor)]
        assert len(slotted) == ATTENTION[name] - len(HOST_FLOAT.get(name, []))
        assert all(m.q_quantizer is not None and m.probs_quantizer is not None for m in slotted)
        assert _psnr(ref, _run(quantized, kwargs)) > bar, recipe
    linear = [line for line in visq.summary(quantized).splitlines() if "linear attention" in line]
    assert len(linear) == (2 if name == "sana" else 0)
    float_lines = [line.strip() for line in visq.summary(quantized).splitlines()]
    for site in HOST_FLOAT.get(name, []):
        assert any(line.startswith(site) and "host default" in line for line in float_lines), site


def test_temporal_quantizers_follow_z_images_t_argument():
    model, kwargs = tiny_transformer("z_image")
    visq.quantize(model, "w8a8", method="temporal", calib=_calib(kwargs, (0.25, 0.75)), progress=False)
    assert visq.quant_state(model).timesteps == (0.25, 0.75)
    out = {t: _run(model, {**kwargs, "t": torch.full((2,), t)}) for t in (0.25, 0.75)}
    assert out[0.25].isfinite().all() and out[0.75].isfinite().all()
    with pytest.raises(Exception, match="timestep"):
        _run(model, {**kwargs, "t": torch.full((2,), 0.5)})


class _ManualAttention:
    """A custom processor computing softmax attention by hand: visq cannot see inside it."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        return attn.to_out[0]((q @ k.transpose(-1, -2) * attn.scale).softmax(-1) @ v)


def test_a_processor_visq_cannot_see_into_raises_or_is_named_float(sd):
    sd.unet.set_attn_processor(_ManualAttention())
    options = {"calib": ["a red circle"], "calib_options": {"num_inference_steps": 2}, "progress": False}
    with pytest.raises(ValueError, match="processor _ManualAttention has no visq adapter"):
        visq.quantize(sd, "w8a8", **options)
    visq.quantize(sd, "w8a16", **options)
    assert visq.summary(sd).count("processor _ManualAttention has no visq adapter") == len(_attentions(sd.unet)) == 8


def test_classic_processors_keep_quant_attn_processor(sd):
    from visq.hosts.diffusers import QuantAttnProcessor

    attn = sd.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert isinstance(attn, Attention) and isinstance(attn.processor, AttnProcessor2_0)
    visq.quantize(sd, "w8a8", calib=["a red circle"], calib_options={"num_inference_steps": 2}, progress=False)
    assert type(attn.processor) is QuantAttnProcessor


def test_export_save_load_fresh_process_bit_identical(tmp_path):
    lines = ["import warnings, torch, visq; warnings.filterwarnings('ignore'); torch.set_num_threads(1)",
             "from visq.testing import tiny_transformer"]
    expected = {}
    for name in TRANSFORMERS:
        _, kwargs = tiny_transformer(name)
        for recipe in ("w8a8", "w4a8"):
            model, _ = tiny_transformer(name)
            visq.export(visq.quantize(model, recipe, calib=_calib(kwargs), progress=False))
            folder = tmp_path / f"{name}-{recipe}"
            visq.save(model, folder)
            expected[folder] = _run(model, kwargs)
            lines += [f"m, kw = tiny_transformer({name!r}, seed=1)",  # other weights: load must replace them all
                      f"_, kw = tiny_transformer({name!r})",
                      f"m = visq.load(m, r'{folder}')",
                      "assert 'exported layers' in visq.summary(m)",
                      "out = m(**kw)[0]",
                      f"torch.save(torch.stack(out) if isinstance(out, list) else out, r'{folder}.pt')"]
    subprocess.run([sys.executable, "-c", "\n".join(lines)], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    for folder, y in expected.items():
        assert torch.equal(torch.load(f"{folder}.pt"), y), folder.name
