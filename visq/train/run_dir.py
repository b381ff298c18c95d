"""A training run's folder: ``run.json`` (the settings it was started with), ``checkpoint.pt`` and ``metrics.jsonl``.

A checkpoint holds tensors, numbers, strings and containers of them only, and is read with
``torch.load(weights_only=True)``: resuming a folder never runs code from it (a crafted ``checkpoint.pt`` is refused
with an error instead of executed).

Checkpoints are written atomically (temporary file, then rename), so a run killed at any moment resumes from the
last complete one. Metrics are appended as they are produced; on resume, lines from steps after the checkpoint
are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class RunDir:
    """Checkpoint and metrics files of one run; ``path=None`` keeps nothing on disk."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path | None:
        return self.path / "checkpoint.pt" if self.path else None

    @property
    def metrics(self) -> Path | None:
        return self.path / "metrics.jsonl" if self.path else None

    def check_settings(self, settings: dict[str, Any], free: tuple[str, ...] = ()) -> None:
        """Record the run's settings, or refuse to resume a run that was started with other settings.

        ``free`` names entries of ``settings["settings"]`` that may differ (a folder written before one of them
        became free still resumes)."""
        if self.path is None:
            return
        file = self.path / "run.json"
        settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        if file.exists() and self.checkpoint.exists():
            before = json.loads(file.read_text())
            if isinstance(before.get("settings"), dict):
                before["settings"] = {k: v for k, v in before["settings"].items() if k not in free}
            if before != settings:
                old, new = _flat(before), _flat(settings)
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(
                    f"{self.path} holds a run started with other settings (differences in: {', '.join(changed)}). "
                    "Resume it with the same settings, or pass a new output folder (or delete this one) to start "
                    "afresh."
                )
        file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when the run starts fresh."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        try:
            state = load_checkpoint(self.checkpoint)
        except Exception as err:  # a checkpoint is written atomically; a broken one was damaged afterwards
            raise ValueError(
                f"cannot read the checkpoint {self.checkpoint} ({err}); delete it to restart the run from step 0"
            ) from err
        logger.info("resuming %s from step %d", self.path, state["step"])
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically as the run's checkpoint."""
        if self.checkpoint is None:
            return
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines of steps after ``step`` (written after the checkpoint a resumed run restarts from)."""
        if self.metrics is None or not self.metrics.exists():
            return
        keep = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics.write_text("".join(line + "\n" for line in keep))

    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics record (a JSON line)."""
        if self.metrics is None:
            return
        with self.metrics.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, read without unpickling code (``weights_only=True``).

    Raises:
        ValueError: the file holds something other than tensors and plain values (it was not written by visq, or
            it was crafted to run code when loaded), or is not a dict.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and plain values, so it was not written by visq (or was "
            "crafted to run code when loaded); it was not unpickled"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, to name the settings that differ."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (or of that file itself), in order."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
