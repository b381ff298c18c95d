"""A frozen dataclass Config -> argparse, so every pipeline is ``python -m pipelines.x --field value``."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
          defaults: T | None = None) -> T:
    """Parse ``--field-name value`` flags for every field of dataclass ``cls``.

    Defaults come from ``defaults`` (an instance, e.g. a preset) or else from the class. Bools become ``--flag`` /
    ``--no-flag``; tuples take several values (``--configs float w8a8``). Fields of other types (nested configs,
    dicts) are not flags: they keep their default.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not _is_flag_type(hints[f.name]):
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        kind: Any = hints[f.name]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            item = typing.get_args(kind)[0] if typing.get_args(kind) else str
            parser.add_argument(flag, nargs="+", type=item, default=default)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(parser.parse_args(argv)).items()}
    return dataclasses.replace(defaults, **args) if defaults is not None else cls(**args)  # type: ignore[type-var]


def _is_flag_type(kind: Any) -> bool:
    """Scalars, tuples of scalars and their ``X | None`` forms can be typed on a command line."""
    options = [k for k in typing.get_args(kind) if k is not type(None)] if typing.get_origin(kind) in (
        typing.Union, types.UnionType) else [kind]
    return all(k in (bool, int, float, str) or typing.get_origin(k) is tuple or k is tuple for k in options)
