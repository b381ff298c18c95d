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
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- visq:vit-ptq (generated: do not edit by hand) -->\nold\n<!-- /visq:vit-ptq -->\n")
    monkeypatch.setattr(bench_vit, "README", readme)
    cfg = bench_vit.Config(methods=("minmax", "repq"), bits=("w4a4",), seeds=(0, 1), eval_n=40,
                           out=str(tmp_path / "vit_ptq.md"))
    cache = bench_vit.main(cfg, "cmd")
    assert {"minmax|w4a4|0", "repq|w4a4|1", "float"} <= set(cache)
    text = (tmp_path / "vit_ptq.md").read_text()
    assert "| repq |" in text and "Command: `cmd`" in text and "Float top-1" in text
    first = len(calls)
    bench_vit.main(cfg, "cmd")
    assert len(calls) == first  # nothing recomputed
    assert "old" in readme.read_text()  # results written elsewhere than eval/results leave the README alone


def test_cache_of_other_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_vit, "load_vit", tiny_classifier)
    cfg = bench_vit.Config(methods=("minmax",), bits=("w4a4",), seeds=(0,), eval_n=20, out=str(tmp_path / "t.md"))
    bench_vit.main(cfg, "cmd")
    monkeypatch.setattr(bench_vit.zoo, "fingerprint", lambda name: "retrained")
    with pytest.raises(ValueError, match="another setup"):
        bench_vit.main(cfg, "cmd")


def test_readme_vit_table_is_the_results_file():
    from eval.report import read_block

    results = bench_vit.DEFAULT_OUT.read_text()
    assert read_block(bench_vit.README.read_text(), bench_vit.README_BLOCK) == bench_vit.readme_table(results)
    assert all(f"| {m} |" in results for m in bench_vit.METHODS)


def test_readme_table_is_the_float_line_and_the_method_table():
    digest = bench_vit.cell_digest("minmax", "w4a4")
    cache = {"float": {"top1": 90.0}, **{bench_vit.cell_key("minmax", "w4a4", s): {"top1": 80.0 + s, "calib_s": 1.0,
                                                                                   "recipe": digest}
                                         for s in (0, 1, 2)}}
    text = bench_vit.render(bench_vit.Config(methods=("minmax",), bits=("w4a4",)), cache, "cmd")
    assert bench_vit.readme_table(text).splitlines()[0] == "Float top-1: 90.00"
    assert "| minmax | 81.00 ± 1.00 |" in bench_vit.readme_table(text)
