"""save / load: ``model.safetensors`` (the quantized module's state dict) + ``quant.json`` (what to rebuild).

``load`` re-plans the quantizer sites from ``quant.json`` on a freshly built float model of the same
architecture, installs them, then loads the state dict strictly: no pickle, and every mismatch is an error.
``quant.json`` (format 2) stores SHA-256 digests of the tensor file's bytes and of its own content, so a flipped
byte in the tensors or an edited bit width is refused instead of loaded into a silently different model. Format-1
folders (visq before the digests) still load, with a warning that they cannot be checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from visq import hosts, sites
from visq.api import QuantState, quant_state
from visq.quantizers import QuantSpec
from visq.recipes import Recipe, Rule

FORMAT_VERSION = 2
_DAMAGED = ("the file is truncated or damaged (an interrupted visq.save or copy). Save the model again with "
            "visq.save, or copy the whole folder again; the model passed to visq.load was left unchanged.")
logger = logging.getLogger(__name__)
T = TypeVar("T")


def save(obj: Any, folder: str | Path) -> Path:
    """Write the quantized model of ``obj`` to ``folder`` (created if needed); returns the folder."""
    state = quant_state(obj)
    host = hosts.detect(obj)
    model = host.target(obj)
    folder = check_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    data = save_bytes(_unshare(tensors), metadata={"format": "pt"})
    (folder / "model.safetensors").write_bytes(data)
    tensor_digest = hashlib.sha256(data).hexdigest()
    meta = {
        "format_version": FORMAT_VERSION,
        "model": host.describe(obj),
        "recipe": state.recipe.to_dict(),
        "timesteps": list(state.timesteps),
        "sites": {site: spec.to_dict() for site, spec in state.plan.quantized.items()},
        "float_layers": state.plan.float_layers,
        "adjusted": state.plan.adjusted,
    }
    if getattr(model, "visq_export", None) is not None:
        meta["export"] = model.visq_export.to_dict()  # load rebuilds these layers before reading their buffers
    meta["digest"] = {"tensors": tensor_digest, "meta": _meta_digest(meta)}
    (folder / "quant.json").write_text(json.dumps(meta, indent=1))
    _save_scheduler(obj, folder)
    return folder


def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path, if ``save`` can write there; raises before any work when it cannot.

    Raises:
        ValueError: ``folder`` (or a parent of it) is an existing file.
    """
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            raise ValueError(f"cannot save into {folder}: {path} is a file, not a folder; pass a folder path "
                             "(it is created if missing)")
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


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of ``quant.json``'s content other than the digests themselves (key order and spacing ignored)."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    meta = read_meta(folder)
    state = _read_state(folder / "model.safetensors", meta)
    recipe, specs, timesteps = _parse_meta(meta, folder / "quant.json")
    host = hosts.detect(obj)
    model = host.target(obj)
    if getattr(model, "visq_state", None) is not None:
        raise ValueError("this model is already quantized; load into a freshly built float model")
    saved_cls = meta["model"].get("class")
    if saved_cls != type(model).__name__:
        raise ValueError(f"{folder} holds a quantized {saved_cls}, but the model passed is a {type(model).__name__}")
    _prepare(model, recipe)
    _check_sites(model, specs, folder)
    exact = Recipe(tuple(Rule(site, spec) for site, spec in specs.items()), keep_host_defaults=False)
    plan = sites.plan(model, exact, [], timesteps)
    plan.float_layers = dict(meta.get("float_layers", plan.float_layers))
    plan.adjusted = dict(meta.get("adjusted", {}))
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
    model.visq_state = QuantState(recipe, plan, host.name, timesteps)
    return obj


def _prepare(model: Any, recipe: Recipe) -> None:
    """Repeat the method's structural rewrite (e.g. OFQ's QKR attention) so the saved sites exist again."""
    from visq import methods

    methods.get(recipe.method, **recipe.method_kwargs).prepare(model)


def _parse_meta(meta: dict[str, Any], path: Path) -> tuple[Recipe, dict[str, QuantSpec], tuple[float, ...]]:
    """The recipe, site specs and timesteps of ``quant.json``; anything malformed raises naming the file."""
    from visq import methods

    try:
        recipe = Recipe.from_dict(meta["recipe"])
        specs = {str(site): QuantSpec.from_dict(spec) for site, spec in dict(meta["sites"]).items()}
        methods.get(recipe.method, **recipe.method_kwargs)  # an unknown method or option raises here
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} has a malformed recipe or sites entry ({type(err).__name__}: {err}): "
                         f"{_DAMAGED}") from err
    timesteps = meta.get("timesteps", [])
    if not isinstance(timesteps, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in timesteps):
        raise ValueError(f"{path}: timesteps must be a list of numbers, got {timesteps!r}: {_DAMAGED}")
    if not isinstance(meta.get("float_layers", {}), dict):
        raise ValueError(f"{path}: float_layers must be a mapping of layer to reason: {_DAMAGED}")
    return recipe, specs, tuple(float(t) for t in timesteps)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The checked content of a saved folder's ``quant.json`` (its digest verified for format >= 2).

    Raises:
        FileNotFoundError: the folder lacks ``quant.json`` or ``model.safetensors``.
        ValueError: the file is damaged, edited after ``visq.save``, or of a newer format.
    """
    folder = Path(folder)
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
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path} has no valid format_version (got {version!r}), so it was not written by visq.save "
                         f"or was edited: {_DAMAGED}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}; this visq reads up to {FORMAT_VERSION}. Upgrade visq to load it."
        )
    if version >= 2:
        digest = meta.get("digest")
        if not isinstance(digest, dict) or digest.get("meta") != _meta_digest(meta):
            raise ValueError(f"{path} was changed after visq.save (its content no longer matches its digest): "
                             "editing quant.json (bits, sites, recipe) would load a different model than the tensors "
                             "were calibrated for. Save the model again with visq.save instead of editing the file.")
    else:
        logger.warning("%s is a format-1 folder (no digests): its files cannot be checked for changes; save it "
                       "again with this visq to add them", folder)
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


def _read_state(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    data = path.read_bytes()
    expected = meta.get("digest", {}).get("tensors") if meta["format_version"] >= 2 else None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"{path} does not match the digest in quant.json: its bytes changed after visq.save. "
                         f"{_DAMAGED}")
    try:
        return load_bytes(data)
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
