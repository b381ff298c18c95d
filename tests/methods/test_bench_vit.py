"""eval/bench_vit.py on a tiny stand-in ViT: the table is written and finished cells are skipped on a rerun."""

import pytest
import timm
import torch

from eval import bench_vit


def tiny_classifier(cfg):
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=2, num_classes=6).eval()


def test_bench_writes_table_and_resumes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench_vit, "load_vit", lambda cfg: calls.append(1) or tiny_classifier(cfg))
    cfg = bench_vit.Config(methods=("minmax", "repq"), bits=("w4a4",), seeds=(0, 1), eval_n=40,
                           out=str(tmp_path / "vit_ptq.md"))
    cache = bench_vit.main(cfg, "cmd")
    assert {"minmax|w4a4|0", "repq|w4a4|1", "float"} <= set(cache)
    text = (tmp_path / "vit_ptq.md").read_text()
    assert "| repq |" in text and "Command: `cmd`" in text and "Float top-1" in text
    first = len(calls)
    bench_vit.main(cfg, "cmd")
    assert len(calls) == first  # nothing recomputed


def test_cache_of_other_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_vit, "load_vit", tiny_classifier)
    cfg = bench_vit.Config(methods=("minmax",), bits=("w4a4",), seeds=(0,), eval_n=20, out=str(tmp_path / "t.md"))
    bench_vit.main(cfg, "cmd")
    monkeypatch.setattr(bench_vit.zoo, "fingerprint", lambda name: "retrained")
    with pytest.raises(ValueError, match="another setup"):
        bench_vit.main(cfg, "cmd")
