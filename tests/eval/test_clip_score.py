"""CLIP score equals torchmetrics' CLIPScore and a direct computation; adapters and loading errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from eval.clip_score import ClipFeatures, as_clip, clip_score, clip_scores, load_open_clip

PROMPTS = ["a red circle", "a small blue square on a white background", "a green star", "noise"]


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


class _Pooled(torch.nn.Module):
    """torchmetrics expects tensors from get_*_features; transformers 5 returns outputs with pooler_output."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config  # torchmetrics reads the text length limit from it

    def get_image_features(self, *a, **k):
        return self.model.get_image_features(*a, **k).pooler_output

    def get_text_features(self, *a, **k):
        return self.model.get_text_features(*a, **k).pooler_output


def test_clip_score_equals_torchmetrics_when_all_cosines_are_positive():
    """torchmetrics 1.9 clamps the *mean* (compute: max(mean(100 cos), 0)) while its docs and Hessel et al. clamp
    each sample; ours clamps each sample. The two agree when every cosine is positive, as with this model."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    from tests.eval.tiny import tiny_hf_clip

    model, processor = tiny_hf_clip(seed=2)
    images = _images()
    metric = CLIPScore(model_name_or_path=lambda: (_Pooled(model), processor))
    expected = float(metric(images, PROMPTS).detach())
    ours = clip_score(ClipFeatures.from_hf(model, processor), images, PROMPTS, batch_size=3)
    assert ours == pytest.approx(expected, abs=1e-3)
    assert expected > 5


def test_clip_score_equals_direct_cosine(hf_clip):
    model, processor = hf_clip
    images = _images(seed=1)
    with torch.no_grad():
        pix = processor(images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt")["pixel_values"]
        tok = processor(text=PROMPTS, return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=pix).pooler_output
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
    direct = 100 * F.cosine_similarity(img, txt).clamp(min=0)
    ours = clip_scores(as_clip((model, processor)), images, PROMPTS)
    torch.testing.assert_close(ours, direct, atol=1e-4, rtol=1e-4)
    assert direct.max() > 0 and (direct == 0).any()  # both sides of the clamp are exercised


def test_open_clip_adapter_and_features_shape():
    import open_clip

    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision,
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1})
    preprocess = open_clip.image_transform(32, is_train=False)
    clip = as_clip((model.eval(), preprocess, open_clip.get_tokenizer("ViT-B-32")), name="tiny-open-clip")
    feats = clip(_images(3))
    assert feats.shape == (3, 16) and clip.num_features == 16
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        pixels = [preprocess(Image.fromarray(a)) for a in _images(3).permute(0, 2, 3, 1).numpy()]
        raw = model.encode_image(torch.stack(pixels))
    torch.testing.assert_close(feats, F.normalize(raw, dim=-1))


def test_loading_errors_name_what_is_available(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_open_clip("ViT-B-32", tmp_path / "missing.bin")
    (tmp_path / "ckpt.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="ViT-B-32"):
        load_open_clip("ViT-Nope", tmp_path / "ckpt.bin")
    with pytest.raises(TypeError, match="cannot use"):
        as_clip(object())
    with pytest.raises(ValueError, match="needs a processor"):
        ClipFeatures.from_hf(torch.nn.Identity(), tokenizer=lambda *a, **k: None)
