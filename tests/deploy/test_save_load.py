"""Exported models through visq.save / visq.load: the exported form on disk, bit-identical in a fresh process."""

import json
import subprocess
import sys

import torch

import visq
from visq.deploy.w8a8 import Int8Linear
from visq.deploy.weight_only import Int4Linear
from visq.testing import tiny_vit

LAYER_CLASS = {"w8a8": Int8Linear, "w4a16-g16": Int4Linear, "w4a8": Int8Linear, "w4a16-sym": Int4Linear}


def test_export_save_load_fresh_process_bit_identical(images, tmp_path):
    torch.save(images, tmp_path / "x.pt")
    lines = ["import torch, visq; from visq.testing import tiny_vit", f"x = torch.load(r'{tmp_path / 'x.pt'}')"]
    expected = {}
    for recipe, cls in LAYER_CLASS.items():
        model = visq.export(visq.quantize(tiny_vit(), recipe, calib=images, progress=False))
        visq.save(model, tmp_path / recipe)
        meta = json.loads((tmp_path / recipe / "quant.json").read_text())
        assert set(meta["export"]["layers"]) == {p for p, m in model.named_modules() if isinstance(m, cls)}
        with torch.no_grad():
            expected[recipe] = model(images)
        lines += [
            f"m = visq.load(tiny_vit(seed=1), r'{tmp_path / recipe}')",
            "assert 'exported layers: 8' in visq.summary(m), visq.summary(m)",
            f"assert ('int8 attention: 2 modules' in visq.summary(m)) == {'a8' in recipe}, visq.summary(m)",
            f"torch.save(m(x).detach(), r'{tmp_path / recipe}.pt')",
        ]
    subprocess.run([sys.executable, "-c", "\n".join(lines)], check=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
                   cwd=".")
    for recipe, y in expected.items():
        assert torch.equal(torch.load(tmp_path / f"{recipe}.pt"), y), recipe
