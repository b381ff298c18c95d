"""A frozen dataclass Config -> argparse, so every pipeline is ``python -m pipelines.x --field value``."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None) -> T:
    """Parse ``--field-name value`` flags for every field of dataclass ``cls`` (defaults from the class).

    Bools become ``--flag`` / ``--no-flag``; tuples take several values (``--configs float w8a8``).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
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
    args = vars(parser.parse_args(argv))
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
