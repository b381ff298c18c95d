"""Loaders return the documented types, in eval mode, and run offline."""

import subprocess
import sys

import pytest
import torch

from visq import zoo


def test_names():
    assert set(zoo.names()) == {"shapes", "shapes-sd", "shapes-dit", "shapes-vit", "text-clip", "judge-clip"}


def test_unknown_name_lists_names():
    with pytest.raises(ValueError, match="shapes-sd"):
        zoo.load("nope")


def test_missing_weights_name_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="pipelines.train_vit"):
        zoo.load("shapes-vit")


def test_import_is_light():
    code = "import sys, visq.zoo; print(any(m in sys.modules for m in ('diffusers', 'timm', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dataset():
    from visq.zoo.shapes import ShapesDataset

    assert isinstance(zoo.load("shapes"), ShapesDataset)


def test_sd(sd_pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(sd_pipe, StableDiffusionPipeline)
    assert not sd_pipe.unet.training and not sd_pipe.vae.training and not sd_pipe.text_encoder.training
    assert sd_pipe.unet.dtype == torch.float32
    gen = torch.Generator().manual_seed(0)
    im = sd_pipe("a large red circle on a blue background, center", num_inference_steps=4, generator=gen,
                 output_type="np").images
    assert im.shape == (1, 32, 32, 3)
    im2 = sd_pipe("a large red circle on a blue background, center", num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert (im == im2).all()


def test_dit(dit_pipe):
    from diffusers import DiTPipeline

    assert isinstance(dit_pipe, DiTPipeline) and not dit_pipe.transformer.training
    assert dit_pipe.get_label_ids(["circle", "star"]) == [0, 3]
    im = dit_pipe([0, 3], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert im.shape == (2, 32, 32, 3)


def test_vit(vit):
    import timm

    from visq.zoo.vit import normalize

    assert isinstance(vit, timm.models.vision_transformer.VisionTransformer) and not vit.training
    with torch.no_grad():
        assert vit(normalize(torch.rand(2, 3, 32, 32))).shape == (2, 6)


def test_clips(text_clip, judge_clip):
    import open_clip
    from transformers import CLIPModel, CLIPTokenizer

    from visq.zoo import clip as zclip

    assert isinstance(text_clip.model, CLIPModel) and isinstance(judge_clip.model, open_clip.CLIP)
    for c in (text_clip, judge_clip):
        assert isinstance(c.tokenizer, CLIPTokenizer) and not c.model.training
        feats = zclip.image_features(c.model, torch.rand(2, 3, 32, 32))
        assert feats.shape == (2, 64) and torch.allclose(feats.norm(dim=1), torch.ones(2))


def test_sd_text_encoder_is_text_clip(sd_pipe, text_clip):
    a = sd_pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(a, text_clip.model.text_model.get_input_embeddings().weight)
