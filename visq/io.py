"""save / load: ``model.safetensors`` (the quantized module's state dict) + ``quant.json`` (what to rebuild).

``load`` re-plans the quantizer sites from ``quant.json`` on a freshly built float model of the same
architecture, installs them, then loads the state dict strictly: no pickle, and every mismatch is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visq import hosts, sites
from visq.api import QuantState, quant_state
from visq.quantizers import QuantSpec
from visq.recipes import Recipe, Rule

FORMAT_VERSION = 1
_DAMAGED = ("the file is truncated or damaged (an interrupted visq.save or copy). Save the model again with "
            "visq.save, or copy the whole folder again; the model passed to visq.load was left unchanged.")
logger = logging.getLogger(__name__)
T = TypeVar("T")


def save(obj: Any, folder: str | Path) -> Path:
    """Write the quantized model of ``obj`` to ``folder`` (created if needed); returns the folder."""
    state = quant_state(obj)
    host = hosts.detect(obj)
    model = host.target(obj)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(_unshare(tensors), folder / "model.safetensors", metadata={"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
        "model": host.describe(obj),
        "recipe": state.recipe.to_dict(),
        "timesteps": list(state.timesteps),
        "sites": {site: spec.to_dict() for site, spec in state.plan.quantized.items()},
        "float_layers": state.plan.float_layers,
    }
    if getattr(model, "visq_export", None) is not None:
        meta["export"] = model.visq_export.to_dict()  # load rebuilds these layers before reading their buffers
    (folder / "quant.json").write_text(json.dumps(meta, indent=1))
    _save_scheduler(obj, folder)
    return folder


def _save_scheduler(obj: Any, folder: Path) -> None:
    """A tuned Q-Sched scheduler (``visq.qsched``) travels with the quantized model, under ``scheduler/``."""
    config = folder / "scheduler" / "scheduler_config.json"
    scheduler = getattr(obj, "scheduler", None)
    if type(scheduler).__name__ == "QSchedScheduler":
        scheduler.save_pretrained(folder / "scheduler")
    elif config.is_file() and json.loads(config.read_text()).get("_class_name") == "QSchedScheduler":
        config.unlink()  # a stale one from an earlier save into this folder must not come back on load


def _load_scheduler(obj: Any, folder: Path) -> None:
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file() or json.loads(config.read_text()).get("_class_name") != "QSchedScheduler":
        return
    if not hasattr(obj, "scheduler"):
        logger.warning("%s holds a Q-Sched scheduler; %s has none, so it is not loaded", folder, type(obj).__name__)
        return
    from visq.qsched import QSchedScheduler  # imports diffusers, which a pipeline has already loaded

    obj.scheduler = QSchedScheduler.from_pretrained(folder / "scheduler")


def _unshare(tensors: dict[str, Any]) -> dict[str, Any]:
    # safetensors refuses tensors sharing storage (tied weights); store each once as its own copy.
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def load(obj: T, folder: str | Path) -> T:
    """Quantize the float ``obj`` exactly as saved in ``folder``; returns ``obj``.

    Raises:
        FileNotFoundError: the folder lacks ``quant.json`` or ``model.safetensors``.
        ValueError: a damaged (truncated, corrupted) file, newer format, different architecture, or a state dict
            that does not fit. Both files are read before the model is touched.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    state = _read_state(folder / "model.safetensors")
    host = hosts.detect(obj)
    model = host.target(obj)
    if getattr(model, "visq_state", None) is not None:
        raise ValueError("this model is already quantized; load into a freshly built float model")
    saved_cls = meta["model"].get("class")
    if saved_cls != type(model).__name__:
        raise ValueError(f"{folder} holds a quantized {saved_cls}, but the model passed is a {type(model).__name__}")
    _prepare(model, Recipe.from_dict(meta["recipe"]))
    specs = {site: QuantSpec.from_dict(spec) for site, spec in meta["sites"].items()}
    _check_sites(model, specs, folder)
    exact = Recipe(tuple(Rule(site, spec) for site, spec in specs.items()), keep_host_defaults=False)
    timesteps = tuple(meta.get("timesteps", ()))
    plan = sites.plan(model, exact, [], timesteps)
    plan.float_layers = dict(meta.get("float_layers", plan.float_layers))
    undo = sites.install(model, plan)
    try:
        if "export" in meta:
            from visq.deploy.export import rebuild

            rebuild(model, meta["export"])
        _load_state(model, state, folder / "model.safetensors")
        host.activate(obj, model)
        _load_scheduler(obj, folder)
    except BaseException:
        undo()
        raise
    model.visq_state = QuantState(Recipe.from_dict(meta["recipe"]), plan, host.name, timesteps)
    return obj


def _prepare(model: Any, recipe: Recipe) -> None:
    """Repeat the method's structural rewrite (e.g. OFQ's QKR attention) so the saved sites exist again."""
    from visq import methods

    if recipe.method in methods.METHODS:
        methods.get(recipe.method, **recipe.method_kwargs).prepare(model)


def _read_meta(folder: Path) -> dict[str, Any]:
    for name in ("quant.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: is {folder} a folder written by visq.save?")
    path = folder / "quant.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {_DAMAGED}") from err
    missing = [k for k in ("model", "recipe", "sites") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: {_DAMAGED}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{folder}/quant.json has format_version {version!r}; this visq reads up to {FORMAT_VERSION}. "
            "Upgrade visq to load it."
        )
    return meta


def _check_sites(model: Any, specs: dict[str, QuantSpec], folder: Path) -> None:
    owners, _ = sites.find_owners(model)
    available = {o.site(slot) for o in owners for slot in o.shapes}
    missing = sorted(set(specs) - available)
    if missing:
        raise ValueError(
            f"{folder} does not fit this model: {len(missing)} saved quantizer sites do not exist in it "
            f"(e.g. {missing[0]}). Build the same architecture (same config) before visq.load."
        )


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return load_file(path)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}): {_DAMAGED}") from err


def _load_state(model: Any, state: dict[str, Any], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {len(keys)} (e.g. {keys[0]})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        )
        raise ValueError(f"{path} does not fit this model ({detail}). Build the same architecture first.")
    model.load_state_dict(state, strict=True)
