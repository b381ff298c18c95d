import json
import subprocess
import sys

import pytest
import torch

import visq
from visq.testing import tiny_sd, tiny_vit

PROMPTS = ["a red circle", "a blue square"]


def test_save_load_in_fresh_process_is_bit_identical(vit, images, tmp_path):
    visq.quantize(vit, "w4a8", calib=images, progress=False)
    visq.save(vit, tmp_path / "q")
    torch.save(images, tmp_path / "x.pt")
    with torch.no_grad():
        expected = vit(images)
    script = (
        "import torch, visq; from visq.testing import tiny_vit;"
        f"m = visq.load(tiny_vit(seed=1), r'{tmp_path / 'q'}');"
        f"x = torch.load(r'{tmp_path / 'x.pt'}');"
        f"torch.save(m(x).detach(), r'{tmp_path / 'y.pt'}')"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, cwd=".")
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)


def test_save_load_pipeline_and_summary(sd, tmp_path):
    visq.quantize(sd, "w8a8", calib=PROMPTS, calib_options={"num_inference_steps": 3}, progress=False)
    visq.save(sd, tmp_path)
    meta = json.loads((tmp_path / "quant.json").read_text())
    assert meta["format_version"] == 2 and meta["model"]["class"] == "UNet2DConditionModel"
    fresh = visq.load(tiny_sd(seed=5), tmp_path)
    assert visq.summary(fresh) == visq.summary(sd)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 5, 32)
    with torch.no_grad():
        assert torch.equal(fresh.unet(x, t, ctx).sample, sd.unet(x, t, ctx).sample)


def test_load_errors(vit, images, tmp_path):
    visq.quantize(vit, "w8a8", calib=images, progress=False)
    visq.save(vit, tmp_path)
    with pytest.raises(ValueError, match="quantized VisionTransformer, but the model passed is a UNet2DCondition"):
        visq.load(tiny_sd(), tmp_path)
    import timm

    wider = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                              depth=2, num_heads=2, num_classes=10)
    with pytest.raises(ValueError, match="does not fit this model"):
        visq.load(wider, tmp_path)
    deeper = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                               depth=1, num_heads=2, num_classes=10)
    with pytest.raises(ValueError, match="saved quantizer sites do not exist"):
        visq.load(deeper, tmp_path)
    assert not any("quantizer" in n for n, _ in deeper.named_modules())  # left float after the error
    meta = json.loads((tmp_path / "quant.json").read_text())
    meta["format_version"] = 3
    (tmp_path / "quant.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Upgrade visq"):
        visq.load(tiny_vit(), tmp_path)
    with pytest.raises(FileNotFoundError, match="visq.save"):
        visq.load(tiny_vit(), tmp_path / "missing")
