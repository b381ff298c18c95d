"""Fidelity of quantized images to same-seed float images: PSNR, SSIM (torchmetrics) and LPIPS (local weights).

Same seed, same prompt: any difference is the quantization error, so these catch regressions that FID can hide.
Images are uint8 (N, 3, H, W); metrics are per image, then averaged by the caller.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

MAX_PSNR = 100.0  # identical images give +inf; cap so means and JSON stay finite


def _unit(images: Tensor) -> Tensor:
    return images.double() / 255.0 if images.dtype == torch.uint8 else images.double()


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB (data range 1 on [0, 1] images), capped at 100 dB for identical images."""
    vals = peak_signal_noise_ratio(_unit(a), _unit(b), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return vals.nan_to_num(posinf=MAX_PSNR).clamp(max=MAX_PSNR)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5; the kernel shrinks for images smaller than 11 px)."""
    size = min(11, a.shape[-1] - (1 - a.shape[-1] % 2), a.shape[-2] - (1 - a.shape[-2] % 2))
    return structural_similarity_index_measure(
        _unit(a), _unit(b), data_range=1.0, reduction="none", kernel_size=size, sigma=1.5 * size / 11
    )


def lpips_model(backbone_weights: str | Path, net: str = "alex") -> nn.Module:
    """torchmetrics' LPIPS with its shipped linear heads and the torchvision backbone read from a local file.

    torchmetrics downloads the backbone (torchvision ``weights=DEFAULT``); here it must be a local state dict, e.g.
    ``alexnet-owt-7be5be79.pth``.

    Raises:
        FileNotFoundError: the backbone file does not exist.
    """
    from torchmetrics.functional.image.lpips import _LPIPS

    path = Path(backbone_weights)
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS backbone weights not found: {path} (a torchvision {net} state dict)")
    model = _LPIPS(pretrained=True, net=net, pnet_rand=True)  # linear heads from the wheel, backbone random...
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded = 0
    for slice_ in (m for name, m in model.net.named_children() if name.startswith("slice")):
        for idx, layer in slice_.named_children():
            for pname, p in layer.named_parameters():  # ...then overwritten from torchvision's features.<i>.*
                p.data.copy_(state[f"features.{idx}.{pname}"])
                loaded += 1
    if loaded == 0:
        raise ValueError(f"no backbone parameters found in {path}")
    return model.eval()


@torch.no_grad()
def lpips(model: nn.Module, a: Tensor, b: Tensor) -> Tensor:
    """Per-image LPIPS distance (lower is closer)."""
    return model(_unit(a).float(), _unit(b).float(), normalize=True).reshape(-1).double()
