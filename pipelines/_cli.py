"""A frozen dataclass Config -> argparse, so every pipeline is ``python -m pipelines.x --field value``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import tokenize
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Help of fields that mean the same in every job; a field's own ``metadata["help"]`` or trailing ``# comment`` wins.
GLOSSARY = {
    "name": "model name: its folder under --run-dir (and --out-dir)",
    "seed": "random seed (data, initialisation, sampling)",
    "batch": "batch size",
    "batch_size": "images per generation batch",
    "lr": "learning rate",
    "restart_lr": "learning rate of the warm-restart cycle",
    "decoder_lr": "learning rate of the decoder-only stage",
    "weight_decay": "AdamW weight decay",
    "label_smoothing": "cross-entropy label smoothing",
    "ema": "decay of the exponential moving average of the weights (the EMA weights are shipped)",
    "kl_weight": "weight of the VAE's KL term",
    "caption_dropout": "fraction of captions dropped to the empty prompt (classifier-free guidance)",
    "pool": "training images generated up front and reused",
    "threads": "torch CPU threads",
    "eval_size": "held-out images of the final check",
    "eval_samples": "samples generated for the final quality check",
    "export_only": "skip training: export the weights of the last checkpoint",
    "clip_dir": "text CLIP whose text tower becomes the pipeline's text encoder",
    "run_dir": "checkpoints, logs and metrics.json go to <run-dir>/<name>; a rerun resumes from there",
    "out_dir": "where the final weights are written",
    "out": "where results are written",
    "guidance": "classifier-free guidance scale",
    "progress": "show progress bars",
    "grid_points": "grid points per axis of the grid search",
    "rounds": "box-halving rounds of the coarse search",
    "models": "zoo pipelines to run (shapes-sd, shapes-dit)",
    "bits": "recipes, one row / cell each (w4a8, w4a4-dyn, ...; <recipe>@<method> picks a method)",
    "recipe": "quantization recipe (w8a8, w4a8, w4a16-g64, ...)",
    "prompts": "held-out captions evaluated (shapes-sd)",
    "per_prompt": "images per caption",
    "dit_per_class": "images per class (shapes-dit)",
    "calib_prompts": "training-split captions (or class ids x 4) used to calibrate the quantizers",
    "reference_n": "real held-out images in the judge-CLIP FID reference",
    "inception": "also compute Inception FIDs (minutes of CPU for their reference; --no-inception skips them)",
}


def field_help(cls: type) -> dict[str, str]:
    """Help text of every field of dataclass ``cls``: ``metadata["help"]``, else the field's trailing ``# comment``
    or the comment line above it in the class source, else the glossary (``steps`` reads as sampling steps when the
    job has a ``guidance``)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # subclasses override their bases
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        above = ""
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            name = tok.line.strip().split(":", 1)[0]
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                above = tok.string.lstrip("# ").strip()  # a comment line: it documents the field below
            elif tok.type == tokenize.COMMENT and name.isidentifier():
                comments[name] = tok.string.lstrip("# ").strip()
            elif tok.type == tokenize.NEWLINE:
                if above and name.isidentifier():
                    comments.setdefault(name, above)
                above = ""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    steps = "sampling (denoising) steps per image" if "guidance" in names else "training (optimisation) steps"
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        text = f.metadata.get("help") or comments.get(f.name) or GLOSSARY.get(f.name)
        out[f.name] = text or (steps if f.name == "steps" else "")
    return out


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
          defaults: T | None = None) -> T:
    """Parse ``--field-name value`` flags for every field of dataclass ``cls``.

    Defaults come from ``defaults`` (an instance, e.g. a preset) or else from the class. Bools become ``--flag`` /
    ``--no-flag``; tuples take several values (``--configs float w8a8``). Fields of other types (nested configs,
    dicts) are not flags: they keep their default. A value the Config's ``__post_init__`` refuses exits with status
    2 and its message, as argparse does for a malformed flag.
    """
    cli = parser(cls, description, defaults)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(cli.parse_args(argv)).items()}
    try:
        return dataclasses.replace(defaults, **args) if defaults is not None else cls(**args)  # type: ignore[type-var]
    except (ValueError, TypeError) as err:  # the Config's own checks: a usage error, not a traceback
        cli.error(str(err))


def parser(cls: type[T], description: str | None = None, defaults: T | None = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`parse`: one flag per command-line field, its help from :func:`field_help`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not _is_flag_type(hints[f.name]):
            continue
        text = helps[f.name].replace("%", "%%") or None  # argparse formats help with %
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        kind: Any = hints[f.name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif isinstance(default, tuple):
            item = typing.get_args(kind)[0] if typing.get_args(kind) else str
            parser.add_argument(flag, nargs="+", type=item, default=default, help=text)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default, help=text)
    return parser


def _is_flag_type(kind: Any) -> bool:
    """Scalars, tuples of scalars and their ``X | None`` forms can be typed on a command line."""
    options = [k for k in typing.get_args(kind) if k is not type(None)] if typing.get_origin(kind) in (
        typing.Union, types.UnionType) else [kind]
    return all(k in (bool, int, float, str) or typing.get_origin(k) is tuple or k is tuple for k in options)
