"""diffusers host: any pipeline's denoiser, a UNet or a diffusion transformer (DDPM / DDIM, Stable Diffusion, SDXL,
DiT, PixArt, FLUX, SD3, Sana, Qwen-Image, Z-Image, Lumina2, HunyuanDiT, AuraFlow, CogView3, Chroma, ...).

The denoiser (``pipe.unet`` or ``pipe.transformer``: a diffusers model whose forward takes a timestep) is quantized;
text encoders and the VAE stay float. Attention gets its slots through an ``nn.Module`` processor installed with
diffusers' own ``set_processor`` (so its quantizers live in the state dict under ``<attn>.processor.*``):
``QuantAttnProcessor`` for the classic processors, else the model's own processor wrapped
(``diffusers_attention.QuantizedProcessor``), which covers joint attention, RoPE, masks and GQA without per-model
code. Calibration data is a
trajectory cache captured from float runs of the pipeline: every denoiser call's inputs (latents, timestep,
conditioning including the unconditional half under classifier-free guidance).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import Tensor, nn

from visq.calibrate import CalibSet, Call
from visq.guard import check_int
from visq.hosts.base import Host
from visq.hosts.diffusers_attention import QuantizedProcessor, attention_gap
from visq.kernels import int8
from visq.quantizers import SiteShape
from visq.sites import ADAPTERS, ATTENTION_SLOTS, AttentionAdapter, FloatRule
from visq.timesteps import as_timestep, temporal_quantizers

DENOISER_EXAMPLES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "PixArtTransformer2DModel",
                     "FluxTransformer2DModel", "SD3Transformer2DModel", "SanaTransformer2DModel")
_FLOAT_RULES = [
    FloatRule("conv_in", "first convolution: tiny compute, large error when quantized (Q-Diffusion keeps it)"),
    FloatRule("conv_out", "last convolution: its error lands directly on the predicted noise"),
    FloatRule("time_embedding*", "timestep embedding: negligible compute, every layer depends on it"),
    FloatRule("class_embedding*", "class embedding: negligible compute"),
    FloatRule("add_embedding*", "added conditioning embedding: negligible compute"),
    FloatRule("pos_embed*", "patch embedding (first layer)"),
    FloatRule("proj_out*", "final projection (last layer)"),
    FloatRule("*norm1.emb*", "timestep / class embedding of adaLN: negligible compute, conditions every block"),
    FloatRule("*norm1.linear", "adaLN modulation: scales and shifts every block from the timestep embedding"),
    FloatRule("adaln_single*", "adaLN-single timestep embedding and modulation"),
    FloatRule("caption_projection*", "caption projection: runs once per prompt, not per pixel"),
    # diffusion transformers (FLUX, SD3, Sana, Qwen-Image, Z-Image, Lumina2, HunyuanDiT, AuraFlow, CogView3, Chroma):
    # the same roles under their own names
    FloatRule("time_*emb*", "timestep (and text / size) embedding: negligible compute, conditions every block"),
    FloatRule("t_embedder*", "timestep embedding: negligible compute, conditions every block"),
    FloatRule("time_step_proj*", "timestep embedding: negligible compute, conditions every block"),
    FloatRule("text_embedder*", "text embedding projection: runs once per prompt, not per pixel"),
    FloatRule("distilled_guidance_layer*", "modulation approximator: runs once per step, conditions every block"),
    FloatRule("condition_embedder*", "timestep / text / image conditioning embedders (Wan): run once per step or "
              "prompt, condition every block"),
    FloatRule("x_embedder*", "patch embedding (first layer)"),
    FloatRule("all_x_embedder*", "patch embedding (first layer)"),
    FloatRule("img_in", "patch embedding (first layer)"),
    FloatRule("patch_embed*", "patch embedding (first layer)"),
    FloatRule("context_embedder*", "text embedding projection: runs once per prompt, not per pixel"),
    FloatRule("txt_in", "text embedding projection: runs once per prompt, not per pixel"),
    FloatRule("cap_embedder*", "caption embedding projection: runs once per prompt, not per pixel"),
    FloatRule("norm_out*", "final adaLN modulation (last layer)"),
    FloatRule("all_final_layer*", "final modulation and projection (last layer)"),
    FloatRule("*norm1_context.linear", "adaLN modulation of the text stream"),
    FloatRule("*.norm.linear", "adaLN modulation of a single-stream block"),
    FloatRule("*img_mod*", "adaLN modulation of the image stream"),
    FloatRule("*_stream_modulation*", "adaLN modulation shared by every block of a stream (FLUX.2)"),
    FloatRule("*txt_mod*", "adaLN modulation of the text stream"),
    FloatRule("*adaLN_modulation*", "adaLN modulation: scales and shifts every block from the timestep embedding"),
]


class QuantAttnProcessor(nn.Module):
    """Attention processor with q / k / v / probs quantizer slots, mirroring diffusers' ``AttnProcessor``."""

    exports_int8_attention = True  # visq.export may set int8_attention: _int8_attention runs the products

    def __init__(self, quantizers: dict[str, nn.Module | None]) -> None:
        super().__init__()
        for name in ATTENTION_SLOTS:
            self.register_module(name, quantizers.get(name))

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        # An explicit signature: diffusers drops keyword arguments (temb) that the processor's __call__ lacks.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)

    def _q(self, name: str, x: Tensor) -> Tensor:
        quantizer = getattr(self, name)
        return quantizer(x) if quantizer is not None else x

    def _int8_attention(self, attn: Attention, query: Tensor, key: Tensor, value: Tensor,
                        mask: Tensor | None) -> Tensor:
        """``get_attention_scores`` and the probs @ v product on integer codes (``kernels.int8.matmul_static``)."""
        if attn.upcast_attention:
            query, key = query.float(), key.float()
        scores = int8.matmul_static(query, self.q_quantizer, key.transpose(-1, -2), self.k_quantizer, attn.scale,
                                     softmax_next=True)  # only the mask is added before the softmax
        if mask is not None:
            scores = scores + mask
        probs = (scores.float() if attn.upcast_softmax else scores).softmax(dim=-1).to(value.dtype)
        return int8.matmul_static(probs, self.probs_quantizer, value, self.v_quantizer)

    def forward(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None,
                attention_mask: Tensor | None, temb: Tensor | None, **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if getattr(self, "int8_attention", False):  # visq.export: both products as int8 GEMMs on the codes
            hidden_states = attn.batch_to_head_dim(self._int8_attention(attn, query, key, value, attention_mask))
        else:
            query, key = self._q("q_quantizer", query), self._q("k_quantizer", key)
            probs = self._q("probs_quantizer", attn.get_attention_scores(query, key, attention_mask))
            hidden_states = attn.batch_to_head_dim(torch.bmm(probs, self._q("v_quantizer", value)))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _classic(module: nn.Module) -> bool:
    # UNets, DiT and PixArt: the plain processors QuantAttnProcessor mirrors (kept for them so their published
    # tables stay comparable; the generic wrapper would compute the same function in another float order)
    return type(module) is Attention and type(module.processor) in (AttnProcessor, AttnProcessor2_0)


def _head_dims(module: nn.Module) -> tuple[int, int]:
    """(q / k head dim, v head dim) of a diffusers attention module."""
    heads = module.heads
    head = getattr(module, "head_dim", None) or module.to_q.out_features // heads
    to_v = getattr(module, "to_v", None)
    kv_heads = module.to_k.out_features // head if getattr(module, "to_k", None) is not None else heads
    return head, (to_v.out_features // kv_heads if to_v is not None else head)


class _DiffusersAdapter(AttentionAdapter):
    """diffusers attention: ``QuantAttnProcessor`` for the classic processors, else the model's own processor
    wrapped (``QuantizedProcessor``). Quantizers live under ``<attn>.processor.*`` either way."""

    def matches(self, module: nn.Module) -> bool:
        if not isinstance(module, (Attention, AttentionModuleMixin)) or getattr(module, "processor", None) is None:
            return False
        return _classic(module) or attention_gap(module.processor) is None

    def gap(self, module: nn.Module) -> str | None:
        if isinstance(module, (Attention, AttentionModuleMixin)) and getattr(module, "processor", None) is not None:
            return attention_gap(module.processor)
        return None

    def site_prefix(self, path: str) -> str:
        return f"{path}.processor"

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        head_qk, head_v = _head_dims(module)
        return {
            "q_quantizer": SiteShape("activation", head_qk, -1),
            "k_quantizer": SiteShape("activation", head_qk, -1),
            "v_quantizer": SiteShape("activation", head_v, -1),
            "probs_quantizer": SiteShape("activation", 1, -1),  # key count varies: per-tensor only
        }

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        attn = model.get_submodule(path)
        old = attn.processor
        new = QuantAttnProcessor(quantizers) if _classic(attn) else QuantizedProcessor.wrap(old, quantizers)
        attn.set_processor(new)
        return lambda: attn.set_processor(old)


ADAPTERS.append(_DiffusersAdapter())


class TimestepHook:
    """Forward pre-hook on the denoiser: points temporal quantizers at the timestep it is called with."""

    def __init__(self, model: nn.Module) -> None:
        self.quantizers = temporal_quantizers(model)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = as_timestep(_timestep_arg(module, args, kwargs))
        for q in self.quantizers:
            q.set_timestep(value)


_TIMESTEP_NAMES = ("timestep", "t")  # Z-Image's denoiser calls it t


@functools.cache
def _timestep_param(model_cls: type[nn.Module]) -> tuple[str, int] | None:
    """The denoiser class's timestep parameter: (name, index among the positional arguments of its forward), or
    None. Cached: the timestep hook asks on every denoiser call."""
    params = [p for p in inspect.signature(model_cls.forward).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1:]  # without self
    return next(((p.name, i) for i, p in enumerate(params) if p.name in _TIMESTEP_NAMES), None)


def _timestep_arg(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    found = _timestep_param(type(model))
    if found is not None and found[0] in kwargs:
        return kwargs[found[0]]
    if found is not None and len(args) > found[1]:
        return args[found[1]]
    raise ValueError(f"{type(model).__name__} called without a timestep argument")


class DiffusersHost(Host):
    """Diffusion pipelines and bare diffusers denoisers."""

    name = "diffusers"
    family = "diffusion"

    def target(self, obj: Any) -> nn.Module:
        model = obj
        if isinstance(obj, DiffusionPipeline):
            model = getattr(obj, "unet", None) or getattr(obj, "transformer", None)
        if not isinstance(model, ModelMixin) or _timestep_param(type(model)) is None:
            found = type(model).__name__ if model is not None else "no unet / transformer"
            raise TypeError(f"unsupported diffusers model ({found}): visq quantizes a pipeline's denoiser, a "
                            "diffusers model whose forward takes a timestep (UNets and transformers: "
                            f"{', '.join(DENOISER_EXAMPLES)}, ...)")
        return model

    def float_rules(self, model: nn.Module) -> list[FloatRule]:
        return list(_FLOAT_RULES)

    def collect(self, obj: Any, calib: Any, options: dict[str, Any]) -> CalibSet:
        if isinstance(calib, CalibSet):
            return calib
        if not isinstance(obj, DiffusionPipeline):
            raise ValueError("a bare denoiser needs calib= a visq.CalibSet of captured calls; pass the pipeline "
                             "instead to calibrate from prompts / class ids")
        return capture_trajectory(obj, calib, **options)

    def activate(self, obj: Any, model: nn.Module) -> None:
        old = getattr(model, "_visq_timestep_hook", None)
        if old is not None:
            old.remove()
        model._visq_timestep_hook = None
        if temporal_quantizers(model):
            model._visq_timestep_hook = model.register_forward_pre_hook(TimestepHook(model), with_kwargs=True)


def _guidance(pipe: DiffusionPipeline, call_kwargs: dict[str, Any]) -> float:
    param = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    default = param.default if param is not None else 1.0
    value = call_kwargs.get("guidance_scale", default)
    # None (e.g. Qwen-Image's default: guidance distilled into the model, or true_cfg_scale instead) means the
    # pipeline batches no unconditional half
    return 1.0 if value is None or value is inspect.Parameter.empty else float(value)


def _pipeline_inputs(pipe: DiffusionPipeline, calib: Any) -> tuple[str, list[Any]]:
    """Which __call__ argument the calibration items feed: prompts, class labels or an unconditional count."""
    params = inspect.signature(pipe.__call__).parameters
    listed = isinstance(calib, (list, tuple)) and len(calib) > 0  # not a str, a tensor or a bare number
    if "prompt" in params:
        if not listed or not all(isinstance(p, str) for p in calib):
            raise ValueError("calibrating a text-to-image pipeline needs calib= a non-empty list of prompt strings, "
                             f"got {_kind(calib)} (one prompt: calib=['a red circle'])")
        return "prompt", list(calib)
    if "class_labels" in params:
        if not listed or not all(isinstance(c, int) and not isinstance(c, bool) for c in calib):
            raise ValueError("calibrating a class-conditional pipeline needs calib= a non-empty list of class ids, "
                             f"got {_kind(calib)}")
        classes = getattr(DiffusersHost().target(pipe).config, "num_embeds_ada_norm", None)
        bad = [c for c in calib if c < 0 or (classes is not None and c >= classes)]
        if bad:
            raise ValueError(f"class ids {sorted(set(bad))[:5]} are outside the model's 0..{(classes or 1) - 1}")
        return "class_labels", list(calib)
    if isinstance(calib, bool) or not isinstance(calib, int) or calib <= 0:
        raise ValueError("calibrating an unconditional pipeline needs calib= the number of samples (int > 0), "
                         f"got {_kind(calib)}")
    return "batch_size", [None] * calib


def _kind(value: Any) -> str:
    if isinstance(value, (str, int, float)):
        return repr(value)
    return f"a {type(value).__name__}" + (f" of length {len(value)}" if hasattr(value, "__len__") else "")


# sample_runs sets these pipeline arguments itself
_OWN_ARGUMENTS = ("prompt", "class_labels", "batch_size", "num_inference_steps", "generator", "output_type")


def check_call_options(pipe: DiffusionPipeline, num_inference_steps: Any, batch_size: Any, seed: Any,
                       call_kwargs: dict[str, Any]) -> None:
    """Raise on sampling options the pipeline would reject late or ignore silently (diffusers' ``__call__`` takes
    ``**kwargs``, so a misspelt option would otherwise vanish)."""
    check_int("num_inference_steps", num_inference_steps)
    check_int("batch_size", batch_size)
    check_int("seed", seed, 0)
    params = {name for name, p in inspect.signature(pipe.__call__).parameters.items()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(call_kwargs) - (params - set(_OWN_ARGUMENTS)))
    if unknown:
        usable = sorted(params - set(_OWN_ARGUMENTS))
        raise ValueError(f"unknown calibration options {unknown} for {type(pipe).__name__}; use num_inference_steps, "
                         f"batch_size, seed or an argument of the pipeline's __call__: {', '.join(usable)}")


def capture_trajectory(
    pipe: DiffusionPipeline,
    calib: Any,
    num_inference_steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    **call_kwargs: Any,
) -> CalibSet:
    """Run the float pipeline on the calibration prompts / class ids and record every denoiser call.

    Args:
        pipe: the (still float) pipeline.
        calib: prompts (text-to-image), class ids (DiT) or a sample count (unconditional).
        num_inference_steps: sampling steps of each calibration run.
        batch_size: prompts per pipeline call.
        seed: generator seed of the first batch (batch i uses seed + i).
        call_kwargs: further pipeline arguments (guidance_scale, height, ...).
    """
    arg, _ = _pipeline_inputs(pipe, calib)
    check_call_options(pipe, num_inference_steps, batch_size, seed, call_kwargs)
    recorder = _Recorder(guides=arg != "batch_size" and _guidance(pipe, call_kwargs) > 1, call_kwargs=call_kwargs)
    handle = DiffusersHost().target(pipe).register_forward_pre_hook(recorder, with_kwargs=True)
    try:
        for _ in sample_runs(pipe, calib, num_inference_steps, batch_size, seed, on_run=recorder.start, **call_kwargs):
            pass
    finally:
        handle.remove()
    return CalibSet(recorder.calls)


def sample_runs(
    pipe: DiffusionPipeline,
    calib: Any,
    num_inference_steps: int = 10,
    batch_size: int = 8,
    seed: int = 0,
    denoiser: nn.Module | None = None,
    on_run: Callable[[int, int], None] | None = None,
    **call_kwargs: Any,
) -> Iterator[Tensor]:
    """Sample the pipeline on the calibration items, one run per batch, and yield each run's final output.

    The output is the final latents for text-to-image pipelines, the images (float, NHWC) otherwise. Batch i uses
    generator seed + i, so two calls with the same arguments sample the same noise. ``denoiser`` replaces the
    pipeline's own denoiser for these runs (e.g. a quantized copy; the pipeline is restored afterwards);
    ``on_run(i, n)`` is called before run i, which samples n items. The arguments are those of ``capture_trajectory``.
    """
    arg, items = _pipeline_inputs(pipe, calib)
    check_call_options(pipe, num_inference_steps, batch_size, seed, call_kwargs)
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    own = getattr(pipe, name)
    progress = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        if denoiser is not None:
            setattr(pipe, name, denoiser)
        for run, i in enumerate(range(0, len(items), batch_size)):
            chunk = items[i : i + batch_size]
            if on_run is not None:
                on_run(run, len(chunk))
            value = len(chunk) if arg == "batch_size" else chunk
            with torch.no_grad():
                out = pipe(**{arg: value}, num_inference_steps=num_inference_steps,
                           generator=torch.Generator().manual_seed(seed + run),
                           output_type="latent" if arg == "prompt" else "np", **call_kwargs)
            yield torch.as_tensor(pipeline_samples(out)).float()
    finally:
        setattr(pipe, name, own)
        pipe._progress_bar_config = progress


def pipeline_samples(output: Any) -> Any:
    """What a pipeline call sampled: ``.images`` of image pipelines, ``.frames`` of video ones (Wan, CogVideoX,
    HunyuanVideo...), or a tuple output's first element (``return_dict=False``)."""
    if isinstance(output, tuple):
        return output[0]
    for name in ("images", "frames"):
        if hasattr(output, name):
            return getattr(output, name)
    raise TypeError(f"{type(output).__name__} has neither .images nor .frames: visq cannot read this pipeline's "
                    "samples; pass calibration as denoiser calls (visq.CalibSet) instead")


class _Recorder:
    """Forward pre-hook recording each denoiser call with its run and step index (``batched_cfg`` sets its flag)."""

    def __init__(self, guides: bool, call_kwargs: dict[str, Any]) -> None:
        self.calls: list[Call] = []
        self.guides, self.call_kwargs = guides, call_kwargs
        self.run, self.step, self.items = 0, 0, 0

    def start(self, run: int, items: int) -> None:
        """A new sampling run of ``items`` prompts / class ids begins: its calls are numbered from step 0."""
        self.run, self.step, self.items = run, 0, items

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        detach = lambda x: x.detach().clone() if isinstance(x, Tensor) else x  # noqa: E731
        cfg = batched_cfg(self.guides, self.items, self.call_kwargs, args, kwargs)
        self.calls.append(Call(tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()},
                               as_timestep(_timestep_arg(module, args, kwargs)), self.run, self.step, cfg))
        self.step += 1


def batched_cfg(guides: bool, items: int, call_kwargs: dict[str, Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> bool:
    """Whether a denoiser call batches classifier-free guidance as [uncond, cond]: the pipeline guides and the call
    carries twice the run's samples (``items`` x ``num_images_per_prompt``). SD, SDXL, PixArt, SD3, Sana... batch
    the pair; FLUX's guidance is an embedding, and its ``true_cfg_scale`` (like Qwen-Image's) makes a separate call
    for the negative prompt."""
    samples = items * (call_kwargs.get("num_images_per_prompt", 1) or 1)
    first = args[0] if args else next(iter(kwargs.values()))
    batch = len(first) if isinstance(first, (list, tuple)) else first.shape[0]  # Z-Image takes a list of latents
    return guides and batch == 2 * samples
