"""The zoo CLIPs (transformers ``CLIPModel``, open_clip ``CLIP`` for the judge) and scoring helpers.

Two CLIPs are trained contrastively on visq-shapes captions: the *text CLIP* (its text tower is the
text encoder of the ``shapes-sd`` pipeline) and the *judge CLIP* (differently seeded and sized, used
only to score generated images). Images enter as float tensors in [0, 1], (n, 3, 32, 32); the models
normalise them themselves with ``MEAN``/``STD`` via :func:`preprocess`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visq.zoo import shapes

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ClipArch:
    """Sizes of one zoo CLIP."""

    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    projection_dim: int = 64
    max_positions: int = 32


TEXT_CLIP = ClipArch()
JUDGE_CLIP = ClipArch(text_hidden=48, text_layers=2, text_heads=4, vision_hidden=96, vision_layers=4,
                      vision_heads=4, projection_dim=64)

# The judge is an open_clip CLIP with a small timm CNN image tower: a ViT tower trained from scratch on these
# images learned shape far too slowly (judge zero-shot shape 57% after 1,000 steps), a CNN learns it in minutes.
JUDGE_OPENCLIP: dict = {
    "embed_dim": 64,
    "vision_cfg": {"timm_model_name": "test_resnet", "image_size": 32, "timm_pool": "avg", "timm_proj": "linear"},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
}


def build_openclip(cfg: dict = JUDGE_OPENCLIP):
    """A randomly initialised open_clip ``CLIP`` (used for the judge)."""
    import open_clip

    return open_clip.CLIP(**cfg)


def build_clip(arch: ClipArch):
    """A randomly initialised ``CLIPModel`` for 32x32 images and the full CLIP vocabulary."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=49408, hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
                          num_hidden_layers=arch.text_layers, num_attention_heads=arch.text_heads,
                          max_position_embeddings=arch.max_positions, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, projection_dim=arch.projection_dim)
    vision = CLIPVisionConfig(image_size=32, patch_size=4, hidden_size=arch.vision_hidden,
                              intermediate_size=4 * arch.vision_hidden, num_hidden_layers=arch.vision_layers,
                              num_attention_heads=arch.vision_heads, projection_dim=arch.projection_dim)
    cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=arch.projection_dim)
    return CLIPModel(cfg)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (n, 3, 32, 32) -> normalised pixel values; uint8 input is scaled first."""
    return shapes.standardize(images, MEAN, STD)


def _unit(x) -> torch.Tensor:
    # transformers 5 may return a model output object from get_*_features; take the projected tensor
    x = x if isinstance(x, torch.Tensor) else x.pooler_output
    return x / x.norm(dim=-1, keepdim=True)


def encode_images(model, pixels: torch.Tensor) -> torch.Tensor:
    """Unit image embeddings of preprocessed pixels, for a transformers ``CLIPModel`` or an open_clip ``CLIP``."""
    if hasattr(model, "encode_image"):  # open_clip
        return model.encode_image(pixels, normalize=True)
    return _unit(model.get_image_features(pixel_values=pixels))


def encode_texts(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Unit text embeddings of token ids, for a transformers ``CLIPModel`` or an open_clip ``CLIP``."""
    if hasattr(model, "encode_text"):  # open_clip pools at the first max id, i.e. the first <|endoftext|>
        return model.encode_text(input_ids, normalize=True)
    return _unit(model.get_text_features(input_ids=input_ids))


def logit_scale(model) -> torch.Tensor:
    """The learned contrastive temperature (exp of the stored log-scale)."""
    return model.logit_scale.exp()


def image_features(model, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """L2-normalised projected image features (n, d) for [0, 1] or uint8 images."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(encode_images(model, preprocess(images[i:i + batch])))
    return torch.cat(out)


def text_features(model, tokenizer, texts: list[str], batch: int = 512) -> torch.Tensor:
    """L2-normalised projected text features (n, d)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            tok = tokenizer(texts[i:i + batch], padding="max_length", truncation=True, return_tensors="pt")
            out.append(encode_texts(model, tok.input_ids))
    return torch.cat(out)


def retrieval_top1(model, tokenizer, images: torch.Tensor, captions: list[str]) -> float:
    """Image -> caption retrieval top-1 over the set's captions; a retrieved identical caption counts as correct."""
    img = image_features(model, images)
    txt = text_features(model, tokenizer, captions)
    best = (img @ txt.T).argmax(dim=1).tolist()
    return sum(captions[j] == captions[i] for i, j in enumerate(best)) / len(captions)


_ATTRS = {"shape": shapes.SHAPES, "colour": shapes.COLOUR_NAMES}


def zero_shot(model, tokenizer, images: torch.Tensor, labels: dict[str, torch.Tensor], attribute: str) -> torch.Tensor:
    """Predict ``attribute`` ("shape" or "colour") of each image; returns predicted indices (n,).

    Candidates are the image's own caption (from ``labels``: shape, colour, background, position, size)
    with only ``attribute`` varied, so the judge compares like with like.
    """
    if attribute not in _ATTRS:
        raise ValueError(f"attribute must be one of {list(_ATTRS)}, got {attribute!r}")
    names = ("shape", "colour", "background", "position", "size")
    n, k = len(images), len(_ATTRS[attribute])
    texts = []
    for i in range(n):
        lab = {name: int(labels[name][i]) for name in names}
        for v in range(k):
            texts.append(shapes.caption(**{**lab, attribute: v}))
    img = image_features(model, images)
    txt = text_features(model, tokenizer, texts).view(n, k, -1)
    return torch.einsum("nd,nkd->nk", img, txt).argmax(dim=1)
