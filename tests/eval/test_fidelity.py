"""PSNR / SSIM closed-form cases, LPIPS from a local backbone file, top-1."""

from __future__ import annotations

import math

import pytest
import torch

from eval.fidelity import MAX_PSNR, lpips, lpips_model, psnr, ssim
from eval.top1 import top1


def test_psnr_closed_form():
    a = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    b = a.clone()
    b[1] += 10  # MSE = (10/255)^2 on every pixel
    vals = psnr(a, b)
    assert vals[0] == MAX_PSNR  # identical: capped, not inf
    assert float(vals[1]) == pytest.approx(20 * math.log10(255 / 10), rel=1e-6)


def test_ssim_identical_is_one_and_constant_shift_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    # two constant images x, y: SSIM = (2xy + C1) / (x^2 + y^2 + C1), the contrast term is 1
    x, y, c1 = 0.3, 0.5, 0.01**2
    s = ssim(torch.full((1, 3, 16, 16), x, dtype=torch.float64), torch.full((1, 3, 16, 16), y, dtype=torch.float64))
    assert float(s) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), rel=1e-6)
    assert float(ssim(a[:1], a[1:])) < 0.2


def test_lpips_reads_the_backbone_from_a_local_file(tmp_path):
    import torchvision

    backbone = torchvision.models.alexnet()
    torch.save(backbone.state_dict(), tmp_path / "alexnet.pth")
    model = lpips_model(tmp_path / "alexnet.pth")
    torch.testing.assert_close(model.net.slice1[0].weight, backbone.features[0].weight)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d = lpips(model, imgs, imgs.flip(0))
    assert d.shape == (2,) and float(lpips(model, imgs, imgs).abs().max()) < 1e-6 and float(d.min()) > 0
    with pytest.raises(FileNotFoundError, match="LPIPS backbone"):
        lpips_model(tmp_path / "nope.pth")


def test_top1_counts_argmax_hits():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    loader = [(torch.tensor([[0], [1]]), torch.tensor([0, 2])),
              {"image": torch.tensor([[2]]), "label": torch.tensor([2])}]
    assert top1(Fixed(), loader) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no samples"):
        top1(Fixed(), [])
