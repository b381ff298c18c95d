"""The visq zoo: small real models trained on visq-shapes and shipped with visq, loaded offline.

``names()`` lists them; ``load(name)`` returns:

- ``"shapes"``: the held-out :class:`~visq.zoo.shapes.ShapesDataset` (1,000 images; build others directly).
- ``"shapes-sd"``: a diffusers ``StableDiffusionPipeline`` (32x32, DDIM, 20 steps / guidance 4 suggested).
- ``"shapes-dit"``: a diffusers ``DiTPipeline`` whose classes are the shape names (``pipe.get_label_ids``); it
  draws large shapes (the distribution of :func:`visq.zoo.judge.dit_data`).
- ``"shapes-vit"``: a timm ``VisionTransformer`` (eval mode) classifying 32x32 images into the 6 shapes;
  normalise inputs with :func:`visq.zoo.vit.normalize`.
- ``"text-clip"``: a :class:`ZooClip` (transformers ``CLIPModel`` + ``CLIPTokenizer`` from ``shapes-sd/tokenizer``);
  its text tower is ``shapes-sd``'s text encoder (same weights).
- ``"judge-clip"``: a :class:`ZooClip` (open_clip ``CLIP`` with a timm CNN image tower + the same tokenizer).
  Score with :mod:`visq.zoo.clip` (``image_features``, ``text_features``, ``zero_shot``), which accept both;
  images go through :func:`visq.zoo.clip.preprocess`.

Heavy libraries (diffusers, transformers, timm) are imported inside ``load`` only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).parent / "weights"

# name -> (shipped path relative to WEIGHTS, command that rebuilds it)
_ZOO: dict[str, tuple[str, str]] = {
    "shapes": ("", "(generated, no weights)"),
    "shapes-sd": ("shapes-sd", "python -m pipelines.train_vae && python -m pipelines.train_clip && "
                               "python -m pipelines.train_sd"),
    "shapes-dit": ("shapes-dit", "python -m pipelines.train_dit"),
    "shapes-vit": ("shapes-vit", "python -m pipelines.train_vit"),
    "text-clip": ("text-clip", "python -m pipelines.train_clip"),
    "judge-clip": ("judge-clip", "python -m pipelines.train_judge_clip"),
}


@dataclass
class ZooClip:
    """A zoo CLIP: ``model`` a transformers ``CLIPModel`` or open_clip ``CLIP`` (eval), ``tokenizer`` a CLIPTokenizer.

    Both follow the OpenAI CLIP ids; score with :mod:`visq.zoo.clip`.
    """

    model: Any
    tokenizer: Any


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return list(_ZOO)


def path(name: str) -> Path:
    """The shipped folder of ``name``; raises if unknown or not trained yet."""
    if name not in _ZOO:
        raise ValueError(f"unknown zoo model {name!r}; available: {names()}")
    rel, cmd = _ZOO[name]
    folder = WEIGHTS / rel
    if not rel or not folder.exists():
        raise FileNotFoundError(f"zoo weights for {name!r} not found at {folder}; build them with: {cmd}")
    return folder


def digest(*folders: str | Path) -> str:
    """A short sha256 of every ``*.safetensors`` file under ``folders`` (names relative to each folder, and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for root in map(Path, folders):
        for f in sorted(root.rglob("*.safetensors")):
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(name: str) -> str:
    """:func:`digest` of the shipped weight files ``load(name)`` reads, so that results (benchmark caches, resumed
    runs) computed on other weights can be told apart from this model's."""
    shared = [path("shapes-sd") / "vae"] if name == "shapes-dit" else []  # see _load_dit
    return digest(path(name), *shared)


def load(name: str, folder: str | Path | None = None) -> Any:
    """Load a zoo model (see the module docstring for what each name returns).

    Args:
        name: one of :func:`names`.
        folder: load from this folder instead of the shipped one (e.g. a freshly trained copy).
    """
    if name not in _ZOO:
        raise ValueError(f"unknown zoo model {name!r}; available: {names()}")
    if name == "shapes":
        from visq.zoo.shapes import ShapesDataset

        return ShapesDataset("heldout", size=1000, seed=0)
    return _LOADERS[name](Path(folder) if folder is not None else path(name))


def _load_sd(folder: Path):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    return _eval_pipe(pipe)


def _load_dit(folder: Path):
    import torch
    from diffusers import AutoencoderKL, DiTPipeline

    # the DiT shares the text-to-image pipeline's VAE instead of shipping a second copy
    vae = AutoencoderKL.from_pretrained(path("shapes-sd") / "vae", dtype=torch.float32)
    # JSON keys are strings; passing the labels with int keys, as DiTPipeline types them, avoids a load warning
    labels = json.loads((folder / "model_index.json").read_text()).get("id2label")
    extra = {"id2label": {int(k): v for k, v in labels.items()}} if labels else {}
    return _eval_pipe(DiTPipeline.from_pretrained(folder, vae=vae, dtype=torch.float32, **extra))


def _eval_pipe(pipe):
    # diffusers/transformers modules may come back in train mode; pipelines never call eval() themselves
    for comp in pipe.components.values():
        if hasattr(comp, "eval"):
            comp.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_vit(folder: Path):
    from safetensors.torch import load_file

    from visq.zoo.builders import build_vit

    model = build_vit()
    state = {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}
    model.load_state_dict(state)
    return model.eval()


def _load_clip(folder: Path) -> ZooClip:
    import torch

    if (folder / "open_clip_config.json").exists():  # the judge: an open_clip CLIP with a timm CNN image tower
        import open_clip
        from safetensors.torch import load_file

        model = open_clip.CLIP(**json.loads((folder / "open_clip_config.json").read_text()))
        model.load_state_dict({k: v.float() for k, v in load_file(folder / "open_clip_model.safetensors").items()})
    else:
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(folder, dtype=torch.float32)
    return ZooClip(model=model.eval(), tokenizer=_tokenizer())


def _tokenizer():
    # one copy of the CLIP tokenizer ships, in the text-to-image pipeline's folder; open_clip's file rebuilds it
    from transformers import CLIPTokenizer

    folder = WEIGHTS / "shapes-sd" / "tokenizer"
    if folder.exists():
        return CLIPTokenizer.from_pretrained(folder)
    from visq.zoo.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


_LOADERS = {"shapes-sd": _load_sd, "shapes-dit": _load_dit, "shapes-vit": _load_vit, "text-clip": _load_clip,
            "judge-clip": _load_clip}
