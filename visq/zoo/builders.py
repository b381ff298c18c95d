"""Architectures of the zoo's diffusion models and classifier, built from config (random weights).

Kept in one place so the training scripts and the loaders agree on every size.
"""

from __future__ import annotations

VIT_CLASSES = 6  # the shape names, in visq.zoo.shapes.SHAPES order


def build_vae():
    """AutoencoderKL: 32x32x3 <-> 8x8x4 (two downsamples), ~0.6M parameters."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=32)


def build_unet(cross_attention_dim: int = 64):
    """UNet2DConditionModel over 8x8x4 latents, widths 64/128, cross-attention at both levels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                block_out_channels=(64, 128), layers_per_block=1, norm_num_groups=32,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def build_dit():
    """DiTTransformer2DModel over 8x8x4 latents, patch 1 (64 tokens), 4 layers of width 96, ~1.2M parameters.

    ``num_embeds_ada_norm=1000`` because DiTPipeline's null class for guidance is id 1000. Patch 2 (16 tokens of
    8x8 pixels each) drew blobs: a small shape spans a single token there.
    """
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=3, attention_head_dim=32, in_channels=4, out_channels=4,
                                 num_layers=4, sample_size=8, patch_size=1, num_embeds_ada_norm=1000)


def build_vit():
    """timm DeiT-tiny-style ViT for 32x32 input: 8x8 tokens of width 96, depth 6, 6 shape classes.

    The patchify conv is a small conv stem (:class:`visq.zoo.convstem.ConvStemEmbed`) and the head averages the
    tokens: a plain 4x4-patch ViT stayed at chance for hundreds of steps on this data.
    """
    import timm

    from visq.zoo.convstem import ConvStemEmbed

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                             num_classes=VIT_CLASSES, embed_dim=96, depth=6, num_heads=3,
                             embed_layer=ConvStemEmbed, global_pool="avg", class_token=False)
