"""Getting the pipeline of one evaluated configuration: load (zoo name or local folder), then quantize or load
a saved quantized model, and measure its denoiser's size at the stored weight bits."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eval.dist import state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantConfig:
    """One configuration to evaluate: float, a recipe (+ method) to quantize with, or a saved quantized folder."""

    name: str
    recipe: str | None = None
    method: str | None = None
    load: str | None = None
    options: tuple[tuple[str, Any], ...] = ()  # keyword options of the method

    @classmethod
    def parse(cls, token: str) -> QuantConfig:
        """``float`` | ``<recipe>[@<method>[:key=value...]]`` (e.g. ``w4a8@ias``, ``w8a8@dgq:log_probs=false``) |
        ``load:<folder>``. Option values are read as bool (true/false), int, float or else str."""
        if token == "float":
            return cls("float")
        if token.startswith("load:"):
            folder = token[len("load:") :]
            return cls(f"loaded-{Path(folder).name}", load=folder)
        recipe, _, method_part = token.partition("@")
        method, *pairs = method_part.split(":") if method_part else [""]
        options = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"method option {pair!r} in {token!r} is not key=value (e.g. w8a8@dgq:groups=4)")
            options.append((key, _option_value(value)))
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", token)
        return cls(name, recipe, method or None, options=tuple(options))

    @property
    def quantized(self) -> bool:
        return self.recipe is not None or self.load is not None


def _option_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def zoo_names() -> list[str]:
    """Names ``visq.zoo.load`` knows (empty when the zoo is not available)."""
    try:
        from visq import zoo
    except ImportError:
        return []
    names = getattr(zoo, "names", None)
    return list(names()) if callable(names) else []


def pipeline_names() -> list[str]:
    """The zoo names that load a diffusers pipeline (a shipped ``model_index.json``), the only ones eval runs."""
    from visq import zoo

    out = []
    for name in zoo_names():
        try:
            if (zoo.path(name) / "model_index.json").is_file():
                out.append(name)
        except (FileNotFoundError, ValueError):
            pass  # not shipped (e.g. the generated data set)
    return out


def check_model(model: str) -> None:
    """Raise early when ``model`` is a zoo name of something other than a pipeline (e.g. the ViT)."""
    if not Path(model).is_dir() and model in zoo_names() and model not in pipeline_names():
        raise ValueError(f"{model!r} is not a diffusion pipeline (image evaluation generates images); use a "
                         f"pipeline: {', '.join(pipeline_names())}, or a local diffusers folder")


def validate(configs: list[QuantConfig]) -> None:
    """Check every configuration (recipe string, method, its options and model family, saved folder) before any
    image is generated, so a typo fails in seconds instead of after the float images.

    Raises:
        ValueError / FileNotFoundError: naming the configuration and the fix.
    """
    from visq import methods, recipes
    from visq.methods.base import check_family

    for cfg in configs:
        if cfg.load is not None and not (Path(cfg.load) / "quant.json").is_file():
            raise FileNotFoundError(f"configuration {cfg.name!r}: {cfg.load} is not a folder written by visq.save")
        if cfg.recipe is None:
            continue
        try:
            recipe = recipes.resolve(cfg.recipe, cfg.method, **dict(cfg.options))
            check_family(methods.get(recipe.method, **recipe.method_kwargs), "diffusion", "a pipeline's denoiser")
        except (ValueError, TypeError) as err:
            raise ValueError(f"configuration {cfg.name!r}: {err}") from err


def weights_fingerprint(model: str) -> str:
    """A short hash of the weights a zoo name or a local pipeline folder loads ("" for an unknown model)."""
    if Path(model).is_dir() or model in zoo_names():
        from visq import zoo

        return zoo.digest(model) if Path(model).is_dir() else zoo.fingerprint(model)
    return ""


def load_pipeline(model: str) -> Any:
    """A float diffusers pipeline from a zoo name or a local diffusers folder (``model_index.json``), in eval mode.

    Raises:
        FileNotFoundError: a path that does not exist or holds no diffusers pipeline.
        ValueError: an unknown name (the message lists the zoo names).
    """
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=torch.float32)
    elif model in zoo_names():
        from visq import zoo

        check_model(model)
        pipe = zoo.load(model)
    elif "/" in model or path.suffix:
        raise FileNotFoundError(f"pipeline folder not found: {path}")
    else:
        names = ", ".join(zoo_names()) or "(visq.zoo not available)"
        raise ValueError(f"unknown model {model!r}; zoo names: {names}; or give a local diffusers folder")
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.eval()  # built-from-config diffusers models start in train mode (DESIGN section 9)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoiser(pipe: Any) -> nn.Module:
    """The module visq quantizes (``pipe.unet`` or ``pipe.transformer``), as visq's host finds it."""
    from visq.hosts import detect

    return detect(pipe).target(pipe)


def _weight_bits(module: nn.Module) -> int | None:
    q = getattr(module, "weight_quantizer", None)
    spec = getattr(q, "spec", q)
    bits = getattr(spec, "bits", None)
    return int(bits) if bits is not None else None


def calibration_seconds(models_dir: Path, cfg: QuantConfig) -> dict[str, float]:
    """The recorded calibration time of a quantized configuration (empty for float or loaded ones)."""
    done = models_dir / f"{cfg.name}.done"
    seconds = json.loads(done.read_text()).get("calib_seconds") if done.is_file() else None
    return {"calib_seconds": seconds} if seconds is not None else {}


def model_size(pipe: Any) -> dict[str, float]:
    """Denoiser size at the stored weight bits (float parameters count at their dtype's bits)."""
    model = denoiser(pipe)
    total_bits = 0
    n_params = 0
    for module in model.modules():
        bits = _weight_bits(module)
        for name, p in module.named_parameters(recurse=False):
            n_params += p.numel()
            quantized = bits is not None and name == "weight"
            total_bits += p.numel() * (bits if quantized else p.element_size() * 8)
    return {"params_m": n_params / 1e6, "size_mb": total_bits / 8 / 1e6, "weight_bits": total_bits / max(n_params, 1)}


def _check_saved_rules(saved: Path, cfg: QuantConfig) -> None:
    """Refuse to resume from a model saved under another meaning of the same recipe string (a grammar default that
    changed between releases, say): its images would be presented as this recipe's."""
    from visq import recipes

    stored = json.loads((saved / "quant.json").read_text())["recipe"]["rules"]
    wanted = recipes.parse(cfg.recipe).to_dict()["rules"]
    if stored != wanted:
        raise ValueError(f"{saved} was quantized with rules that {cfg.recipe!r} no longer stands for (the recipe "
                         f"grammar's defaults changed since): delete {saved.parent.parent} or pass a new --out to "
                         f"start this run afresh")


def prepare(
    model: str, cfg: QuantConfig, models_dir: Path, calib: list | None, calib_options: dict[str, Any] | None = None
) -> Any:
    """The pipeline of one configuration; every process of a run must call it (it synchronises them).

    A recipe is applied once, on the main process, and saved under ``models_dir/<name>``; other processes and
    resumed runs load that saved model, so every image of a configuration comes from the same calibration.
    ``calib_options`` go to ``visq.quantize`` (sampler steps and guidance of the calibration runs); the
    calibration time is recorded in ``<name>.done``.
    """
    import visq

    pipe = load_pipeline(model)
    if cfg.load is not None:
        if not Path(cfg.load).is_dir():
            raise FileNotFoundError(f"saved quantized folder not found: {cfg.load}")
        visq.load(pipe, cfg.load)
    elif cfg.recipe is not None:
        saved, done = models_dir / cfg.name, models_dir / f"{cfg.name}.done"
        with state().main_process_first():
            if done.is_file():
                log.info("%s: loading the quantized model saved at %s", cfg.name, saved)
                _check_saved_rules(saved, cfg)
                visq.load(pipe, str(saved))
            else:
                log.info("%s: quantizing with %s (method %s)", cfg.name, cfg.recipe, cfg.method or "default")
                start = time.perf_counter()
                visq.quantize(pipe, cfg.recipe, method=cfg.method, calib=calib, calib_options=calib_options,
                              **dict(cfg.options))
                seconds = time.perf_counter() - start
                visq.save(pipe, str(saved))
                done.write_text(json.dumps({**asdict(cfg), "calib_seconds": seconds}))
    if cfg.quantized and hasattr(visq, "freeze"):
        visq.freeze(pipe)  # cache fake-quantized weights: generation then costs what float does, plus activations
    return pipe
