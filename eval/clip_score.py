"""CLIP score (torchmetrics' definition: 100 * max(cos(image, text), 0), averaged) and CLIP image features.

One adapter, :class:`ClipFeatures`, puts open_clip models, transformers ``CLIPModel`` (+ processor) and the zoo's
judge CLIP behind the same interface: ``forward(uint8 images) -> unit-norm image embeddings`` (so it doubles as a
feature extractor for a fast Frechet distance) and ``text(prompts) -> unit-norm text embeddings``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _pooled(out: Any) -> Tensor:
    # transformers 5 returns BaseModelOutputWithPooling from get_*_features; 4.x returned the tensor itself.
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipFeatures(nn.Module):
    """A CLIP model behind one interface. Build it with :meth:`from_open_clip`, :meth:`from_hf` or :func:`as_clip`.

    Args:
        model: the wrapped model (kept as a submodule so ``.to()`` and ``eval()`` reach it).
        encode_images: uint8 (N, 3, H, W) -> raw image embeddings (N, D).
        encode_texts: list of prompts -> raw text embeddings (N, D).
        name: printed in reports and used as the statistics cache key.
    """

    def __init__(
        self, model: nn.Module, encode_images: Callable[[Tensor], Tensor],
        encode_texts: Callable[[list[str]], Tensor], name: str,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self._encode_images, self._encode_texts = encode_images, encode_texts
        self.name = name
        with torch.no_grad():
            self.num_features = int(encode_texts(["a"]).shape[-1])

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Unit-norm image embeddings of uint8 images (N, 3, H, W)."""
        return F.normalize(self._encode_images(images).float(), dim=-1)

    @torch.no_grad()
    def text(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm text embeddings."""
        return F.normalize(self._encode_texts(list(prompts)).float(), dim=-1)

    @classmethod
    def from_hf(
        cls, model: nn.Module, processor: Any = None, *, tokenizer: Any = None,
        preprocess: Callable[[Tensor], Tensor] | None = None, name: str = "hf-clip",
    ) -> ClipFeatures:
        """A transformers ``CLIPModel`` with either its ``CLIPProcessor`` or a tokenizer plus an image
        ``preprocess`` (uint8 (N, 3, H, W) -> pixel_values), as the zoo CLIPs use."""
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        if tokenizer is None or (processor is None and preprocess is None):
            raise ValueError("from_hf needs a processor, or a tokenizer and a preprocess function")

        def images_fn(images: Tensor) -> Tensor:
            if preprocess is not None:
                pixels = preprocess(images)
            else:
                pixels = processor(images=list(_to_hwc(images)), return_tensors="pt")["pixel_values"]
            return _pooled(model.get_image_features(pixel_values=pixels))

        def texts_fn(prompts: list[str]) -> Tensor:
            tok = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True)
            return _pooled(model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))

        return cls(model, images_fn, texts_fn, name)

    @classmethod
    def from_open_clip(cls, model: nn.Module, preprocess: Callable, tokenizer: Callable, name: str) -> ClipFeatures:
        """An open_clip model with its image transform (PIL in) and tokenizer."""

        def images_fn(images: Tensor) -> Tensor:
            return model.encode_image(torch.stack([preprocess(Image.fromarray(a)) for a in _to_hwc(images)]))

        return cls(model, images_fn, lambda prompts: model.encode_text(tokenizer(prompts)), name)


def _to_hwc(images: Tensor) -> np.ndarray:
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images (N, 3, H, W), got {images.dtype}")
    return images.permute(0, 2, 3, 1).cpu().numpy()


def load_open_clip(model_name: str, checkpoint: str | Path) -> ClipFeatures:
    """An open_clip model from a local checkpoint file (never a download).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: unknown model name (the message lists the known ones).
    """
    import open_clip

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"open_clip checkpoint not found: {checkpoint} (give a local .bin/.pt/.safetensors)")
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; known: {', '.join(open_clip.list_models())}")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipFeatures.from_open_clip(model, preprocess, tokenizer, f"open_clip-{model_name}-{checkpoint.stem}")


def as_clip(obj: Any, name: str | None = None) -> ClipFeatures:
    """Wrap what the caller has: a ClipFeatures, a (CLIPModel, processor) pair, an (open_clip model, preprocess,
    tokenizer) triple, or an object with ``clip_features()`` returning one of these (the zoo judge's hook)."""
    if isinstance(obj, ClipFeatures):
        return obj
    if hasattr(obj, "clip_features"):
        return as_clip(obj.clip_features(), name)
    if isinstance(obj, tuple) and len(obj) == 2 and hasattr(obj[0], "get_image_features"):
        return ClipFeatures.from_hf(obj[0], obj[1], name=name or "hf-clip")
    if isinstance(obj, tuple) and len(obj) == 3 and hasattr(obj[0], "encode_image"):
        return ClipFeatures.from_open_clip(*obj, name=name or "open_clip")
    raise TypeError(
        f"cannot use {type(obj).__name__} as a CLIP: pass ClipFeatures, (CLIPModel, CLIPProcessor) or "
        "(open_clip model, preprocess, tokenizer)"
    )


@torch.no_grad()
def clip_scores(clip: ClipFeatures, images: Tensor, prompts: Sequence[str], batch_size: int = 64) -> Tensor:
    """Per-image CLIP scores, 100 * max(cos, 0) as torchmetrics ``CLIPScore`` defines it."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc="clip score", disable=len(images) <= batch_size):
        img, txt = clip(images[s : s + batch_size]), clip.text(prompts[s : s + batch_size])
        out.append(100 * (img * txt).sum(-1).clamp(min=0))
    return torch.cat(out) if out else torch.zeros(0)


def clip_score(clip: ClipFeatures, images: Tensor, prompts: Sequence[str], batch_size: int = 64) -> float:
    """Mean CLIP score over images paired with their prompts."""
    return float(clip_scores(clip, images, prompts, batch_size).mean())
