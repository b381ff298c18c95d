"""Tiny models built in code (no hub, random weights) for tests and overhead benchmarks: a timm ViT, Stable
Diffusion, DiT and DDIM pipelines, a PixArt denoiser, the diffusion transformers of ``TRANSFORMERS`` (FLUX, SD3,
Sana, Qwen-Image, Z-Image, Lumina2, HunyuanDiT, AuraFlow, CogVideoX, HunyuanVideo, LTX-Video...), flow-matching
FLUX and SD3 pipelines and Wan and CogVideoX text-to-video pipelines. Heavy libraries are imported inside each
builder."""

from __future__ import annotations

import torch


def tiny_vit(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        "deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=10,
    ).eval()


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         sample_size=16).eval()


def tiny_sd(seed: int = 0):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from visq.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).eval()
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                        num_hidden_layers=2, vocab_size=49408, max_position_embeddings=32)).eval()
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=text, tokenizer=build_clip_tokenizer(32), unet=unet,
                                   scheduler=_ddim(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_dit(seed: int = 0):
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=1000).eval()
    pipe = DiTPipeline(transformer=transformer, vae=_vae(), scheduler=_ddim(), id2label={0: "a", 1: "b"})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_ddim(seed: int = 0):
    from diffusers import DDIMPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=3, out_channels=3,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()
    pipe = DDIMPipeline(unet=unet, scheduler=_ddim())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart(seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    return PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=2, sample_size=4, patch_size=2, cross_attention_dim=16,
                                    caption_channels=24).eval()


# Diffusion transformers at toy widths, from their diffusers classes: name -> (config, inputs). Each builder returns
# the model and the keyword arguments of one denoiser call (batch 2, 16 image tokens, 6 text tokens), as its
# pipeline would pass them.
_B, _TXT = 2, 6


def _flux_kwargs(r, channels: int = 16) -> dict:
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return dict(hidden_states=r(_B, 16, channels), encoder_hidden_states=r(_B, _TXT, 32),
                img_ids=ids.reshape(16, 3), txt_ids=torch.zeros(_TXT, 3), timestep=torch.full((_B,), 0.5))


def _flux(r):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    return model, {**_flux_kwargs(r), "pooled_projections": r(_B, 32)}


def _flux2(r):
    from diffusers import Flux2Transformer2DModel

    # FLUX.2: parallel (fused qkv + MLP) single-stream blocks, 4-axis RoPE, embedded guidance
    model = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4))
    grid = torch.meshgrid(torch.zeros(1), torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    return model, dict(hidden_states=r(_B, 16, 16), encoder_hidden_states=r(_B, _TXT, 32),
                       img_ids=torch.stack(grid, -1).reshape(16, 4), txt_ids=torch.zeros(_TXT, 4),
                       timestep=torch.full((_B,), 0.5), guidance=torch.full((_B,), 3.5))


def _wan(r):
    from diffusers import WanTransformer3DModel

    # Wan 2.1 text-to-video: a 3-d patch embedding over (frames, height, width), 3-axis RoPE, cross-attention
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return model, dict(hidden_states=r(_B, 4, 2, 8, 8), timestep=torch.full((_B,), 500.0),
                       encoder_hidden_states=r(_B, _TXT, 32))


def _chroma(r):
    from diffusers import ChromaTransformer2DModel

    model = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                     axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=16,
                                     approximator_layers=1)
    return model, _flux_kwargs(r)


def _latent_kwargs(r, timestep: float = 500.0) -> dict:
    return dict(hidden_states=r(_B, 4, 8, 8), encoder_hidden_states=r(_B, _TXT, 32),
                timestep=torch.full((_B,), timestep))


def _sd3(r):
    from diffusers import SD3Transformer2DModel

    # SD3.5-style: a dual-attention first layer and RMS q / k norms
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                  pooled_projection_dim=32, out_channels=4, pos_embed_max_size=16,
                                  dual_attention_layers=(0,), qk_norm="rms_norm")
    return model, {**_latent_kwargs(r), "pooled_projections": r(_B, 32)}


def _sana(r):
    from diffusers import SanaTransformer2DModel

    model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                   num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                   cross_attention_dim=16, caption_channels=32, sample_size=8, patch_size=1)
    return model, _latent_kwargs(r)


def _qwen_image(r):
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                        axes_dims_rope=(4, 6, 6))
    mask = torch.ones(_B, _TXT, dtype=torch.long)
    mask[1, -2:] = 0  # the second prompt is shorter: its padding is masked out of the joint attention
    return model, dict(hidden_states=r(_B, 16, 16), encoder_hidden_states=r(_B, _TXT, 32),
                       encoder_hidden_states_mask=mask, timestep=torch.full((_B,), 0.5), img_shapes=[[(1, 4, 4)]] * _B)


def _z_image(r):
    from diffusers import ZImageTransformer2DModel

    model = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2,
                                     n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6],
                                     axes_lens=[64, 32, 32])
    return model, dict(x=[r(4, 1, 8, 8) for _ in range(_B)], t=torch.full((_B,), 0.5),
                       cap_feats=[r(_TXT - i, 32) for i in range(_B)])


def _lumina2(r):
    from diffusers import Lumina2Transformer2DModel

    model = Lumina2Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                      num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                                      axes_dim_rope=(4, 6, 6), axes_lens=(32, 32, 32), cap_feat_dim=32)
    mask = torch.ones(_B, _TXT, dtype=torch.bool)
    mask[1, -2:] = False
    return model, {**_latent_kwargs(r, 0.5), "encoder_attention_mask": mask}


def _lumina_next(r):
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    # Lumina-Next: grouped-query heads, 2-d RoPE passed in by the caller, masked cross-attention to the caption
    model = LuminaNextDiT2DModel(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                 num_attention_heads=2, num_kv_heads=1, multiple_of=16, learn_sigma=False,
                                 cross_attention_dim=32)
    mask = torch.ones(_B, _TXT, dtype=torch.long)
    mask[1, -2:] = 0
    rope = get_2d_rotary_pos_embed_lumina(16, 8, 8, linear_factor=1.0, ntk_factor=1.0)
    # as LuminaPipeline does: a base sequence length turns on the processor's length-dependent softmax scale (and
    # the blocks unpack cross_attention_kwargs with **, so its None default raises in diffusers itself)
    return model, {**_latent_kwargs(r, 0.5), "encoder_mask": mask, "image_rotary_emb": rope,
                   "cross_attention_kwargs": {"base_sequence_length": 4}}


def _hunyuan_dit(r):
    from diffusers import HunyuanDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    model = HunyuanDiT2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=8,
                              hidden_size=16, num_layers=2, cross_attention_dim=32, cross_attention_dim_t5=32,
                              pooled_projection_dim=16, text_len=_TXT, text_len_t5=_TXT,
                              use_style_cond_and_image_meta_size=False)
    ones = torch.ones(_B, _TXT, dtype=torch.long)
    rope = get_2d_rotary_pos_embed(8, ((0, 0), (4, 4)), (4, 4), use_real=True)
    return model, {**_latent_kwargs(r), "text_embedding_mask": ones, "encoder_hidden_states_t5": r(_B, _TXT, 32),
                   "text_embedding_mask_t5": ones, "image_rotary_emb": rope}


def _auraflow(r):
    from diffusers import AuraFlowTransformer2DModel

    model = AuraFlowTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1,
                                       num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=2,
                                       joint_attention_dim=32, caption_projection_dim=16, out_channels=4,
                                       pos_embed_max_size=16)
    return model, _latent_kwargs(r)


def _cogview3(r):
    from diffusers import CogView3PlusTransformer2DModel

    model = CogView3PlusTransformer2DModel(patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                           num_attention_heads=2, out_channels=4, text_embed_dim=32, time_embed_dim=16,
                                           condition_dim=4, pos_embed_max_size=16, sample_size=8)
    size = torch.tensor([[8.0, 8.0]] * _B)
    return model, {**_latent_kwargs(r), "original_size": size, "target_size": size, "crop_coords": torch.zeros(_B, 2)}


def _cogvideox(r):
    from diffusers import CogVideoXTransformer3DModel

    # CogVideoX: text and video tokens in one joint attention (expert adaLN per stream), 3-d sin-cos positions
    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                        time_embed_dim=4, text_embed_dim=32, num_layers=2, sample_width=4,
                                        sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=_TXT)
    return model, dict(hidden_states=r(_B, 3, 4, 4, 4), encoder_hidden_states=r(_B, _TXT, 32),
                       timestep=torch.full((_B,), 500.0))


def _hunyuan_video(r):
    from diffusers import HunyuanVideoTransformer3DModel

    # HunyuanVideo: dual- then single-stream blocks with 3-axis RoPE, a masked text token refiner, embedded guidance
    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                           num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                           patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                                           rope_axes_dim=(2, 4, 4))
    mask = torch.ones(_B, _TXT, dtype=torch.long)
    mask[1, -2:] = 0  # the second prompt is shorter
    return model, dict(hidden_states=r(_B, 4, 2, 4, 4), timestep=torch.full((_B,), 500.0),
                       encoder_hidden_states=r(_B, _TXT, 16), encoder_attention_mask=mask,
                       pooled_projections=r(_B, 8), guidance=torch.full((_B,), 3500.0))


def _ltx_video(r):
    from diffusers import LTXVideoTransformer3DModel

    # LTX-Video: latent video as a flat token sequence (frames x height x width given apart), 3-d RoPE, masked cross
    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                       num_layers=2, caption_channels=32)
    mask = torch.ones(_B, _TXT, dtype=torch.long)
    mask[1, -2:] = 0
    return model, dict(hidden_states=r(_B, 2 * 4 * 4, 8), encoder_hidden_states=r(_B, _TXT, 32),
                       timestep=torch.full((_B,), 500.0), encoder_attention_mask=mask, num_frames=2, height=4, width=4)


TRANSFORMERS = {"flux": _flux, "flux2": _flux2, "wan": _wan, "chroma": _chroma, "sd3": _sd3, "sana": _sana,
                "qwen_image": _qwen_image, "z_image": _z_image, "lumina2": _lumina2, "lumina_next": _lumina_next,
                "hunyuan_dit": _hunyuan_dit, "auraflow": _auraflow, "cogview3plus": _cogview3, "cogvideox": _cogvideox,
                "hunyuan_video": _hunyuan_video, "ltx_video": _ltx_video}


def tiny_transformer(name: str, seed: int = 0):
    """A diffusion transformer of ``TRANSFORMERS`` at toy width, random weights from ``seed``, and the keyword
    arguments of one denoiser call (inputs drawn from ``seed`` too)."""
    if name not in TRANSFORMERS:
        raise ValueError(f"unknown tiny transformer {name!r}; choose from {', '.join(TRANSFORMERS)}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model, kwargs = TRANSFORMERS[name](lambda *shape: torch.randn(*shape, generator=generator))
    return model.eval(), kwargs


def tiny_sd3(seed: int = 0):
    """A Stable Diffusion 3.5-style pipeline at toy width: the SD3 transformer of ``TRANSFORMERS`` (dual attention,
    RMS q / k norms), flow-matching Euler sampler, two CLIP text encoders with projections (visq's CLIP tokenizer)
    and no T5 (diffusers then feeds zeros in its place, as with ``text_encoder_3=None`` upstream). Classifier-free
    guidance is batched [uncond, cond]. Sample with ``height=16, width=16`` (8x8 latents, 16 tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from visq.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer, _ = _sd3(lambda *shape: torch.zeros(shape))

    def clip() -> CLIPTextModelWithProjection:  # hidden 16 + 16 = the joint width 32; projections 16 + 16 = pooled
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=49408,
            max_position_embeddings=32, projection_dim=16)).eval()

    tokenizer, vae = build_clip_tokenizer(32), _vae()
    vae.register_to_config(shift_factor=0.0)  # SD3's decode shifts latents; visq's toy VAE has none
    pipe = StableDiffusion3Pipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=vae, text_encoder=clip(), tokenizer=tokenizer, text_encoder_2=clip(),
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan(seed: int = 0):
    """A Wan 2.1 text-to-video pipeline at toy width: the Wan transformer of ``TRANSFORMERS`` (3-d patches, 3-axis
    RoPE), a 3-d causal Wan VAE, a UMT5 text encoder (visq's CLIP tokenizer), flow-matching Euler sampler. It
    returns ``.frames``, not ``.images``. Sample with ``height=32, width=32, num_frames=5, max_sequence_length=8``
    (2 latent frames of 4x4, the VAE downsamples 8x in space and 4x in time)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from visq.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer, _ = _wan(lambda *shape: torch.zeros(shape))
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    text = UMT5EncoderModel(UMT5Config(vocab_size=49408, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))
    pipe = WanPipeline(tokenizer=build_clip_tokenizer(32), text_encoder=text.eval(), transformer=transformer.eval(),
                       vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_cogvideox(seed: int = 0):
    """A CogVideoX text-to-video pipeline at toy width: the CogVideoX transformer of ``TRANSFORMERS`` (joint text +
    video attention), a 3-d CogVideoX VAE, a T5 text encoder (visq's CLIP tokenizer), CogVideoX's DDIM sampler with
    batched classifier-free guidance. It returns ``.frames``. Sample with ``height=32, width=32, num_frames=9,
    max_sequence_length=6`` (3 latent frames of 4x4, the VAE downsamples 8x in space and 4x in time)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline
    from transformers import T5Config, T5EncoderModel

    from visq.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer, _ = _cogvideox(lambda *shape: torch.zeros(shape))
    vae = AutoencoderKLCogVideoX(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1,
                                 norm_num_groups=2, temporal_compression_ratio=4,
                                 down_block_types=("CogVideoXDownBlock3D",) * 4,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4)
    text = T5EncoderModel(T5Config(vocab_size=49408, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))
    pipe = CogVideoXPipeline(tokenizer=build_clip_tokenizer(32), text_encoder=text.eval(), vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=CogVideoXDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(seed: int = 0):
    """A FLUX.1 pipeline at toy width: flow-matching Euler sampler (sigma timesteps), CLIP + T5 text encoders (both
    tokenized by visq's CLIP tokenizer), 16x16 images = 4x4 packed latent tokens. Sample with ``height=16,
    width=16, max_sequence_length=8``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from visq.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer, _ = _flux(lambda *shape: torch.zeros(shape))
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                        num_hidden_layers=1, vocab_size=49408, max_position_embeddings=32)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=49408, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)).eval()
    vae = _vae()
    vae.register_to_config(shift_factor=0.0)  # FLUX's decode shifts latents; visq's toy VAE has none
    tokenizer = build_clip_tokenizer(32)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text, tokenizer=tokenizer,
                        text_encoder_2=t5, tokenizer_2=tokenizer, transformer=transformer.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe
