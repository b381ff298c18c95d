"""The plan of a generation run (one :class:`Item` per image) and its JSONL manifest, written as images land.

Each image gets its own seed derived from (run seed, prompt index, image index), so its noise never depends on
batching or sharding; the runner also keeps batch composition fixed, so resumed and sharded runs are bit-identical
(a different batch size changes pixels by at most float rounding, +-1 of 255).
Each process appends to its own shard ``manifest.r<rank>.jsonl``; records are trusted
only when their image file exists. ``manifest.jsonl`` is the merged, ordered list (exactly one record per image).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MERGED = "manifest.jsonl"


def image_seed(seed: int, prompt_idx: int, image_idx: int) -> int:
    """A 32-bit seed for one image, independent of batch size, shard and order."""
    return int(np.random.SeedSequence([seed, prompt_idx, image_idx]).generate_state(1)[0])


@dataclass(frozen=True)
class Item:
    """One image to generate: a prompt (text-to-image) or a class id (class-conditional)."""

    index: int
    prompt_idx: int
    image_idx: int
    seed: int
    prompt: str | None = None
    class_id: int | None = None

    @property
    def key(self) -> str:
        return f"p{self.prompt_idx:05d}-i{self.image_idx:03d}"

    @property
    def filename(self) -> str:
        return f"{self.key}.png"


def plan(
    prompts: Sequence[str] | None = None, classes: Sequence[int] | None = None, per_prompt: int = 1, seed: int = 0
) -> list[Item]:
    """All images of a run, prompt-major. Exactly one of ``prompts`` and ``classes`` is given."""
    if (prompts is None) == (classes is None):
        raise ValueError("give either prompts or classes")
    conds = list(prompts if prompts is not None else classes)  # type: ignore[arg-type]
    if not conds:
        raise ValueError("no prompts or classes to generate")
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
    items = []
    for p, cond in enumerate(conds):
        for i in range(per_prompt):
            text, cls = (str(cond), None) if prompts is not None else (None, int(cond))
            items.append(Item(len(items), p, i, image_seed(seed, p, i), text, cls))
    return items


class Manifest:
    """The manifest shards of one image folder, read tolerantly and appended durably."""

    def __init__(self, folder: str | Path, rank: int = 0) -> None:
        self.folder = Path(folder)
        self.shard = self.folder / f"manifest.r{rank}.jsonl"

    def records(self) -> dict[str, dict[str, Any]]:
        """Valid records by key: parseable lines (a line cut by a crash is dropped) whose image file exists."""
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(self.folder.glob("manifest*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "key" in rec and (self.folder / rec["path"]).is_file():
                    found.setdefault(rec["key"], rec)
        return found

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line, flushed to disk before returning."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.shard, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a crash may have left a half line without its newline: close it off first
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def merge(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        """Write ``manifest.jsonl``: one record per planned item, in plan order.

        Raises:
            RuntimeError: some planned image has no valid record.
        """
        found = self.records()
        missing = [it.key for it in items if it.key not in found]
        if missing:
            raise RuntimeError(f"{self.folder}: {len(missing)} images missing from the manifest, e.g. {missing[:3]}")
        ordered = [found[it.key] for it in items]
        tmp = self.folder / f".{MERGED}.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered), encoding="utf-8")
        tmp.replace(self.folder / MERGED)
        return ordered


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Records of a merged manifest (or any JSONL with ``path`` and ``prompt`` fields), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
