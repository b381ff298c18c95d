"""Tiny models built in code (no hub, random weights) for tests and overhead benchmarks: a timm ViT, Stable
Diffusion, DiT and DDIM pipelines, a PixArt denoiser. Heavy libraries are imported inside each builder."""

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
