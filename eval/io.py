"""Reading prompt files (txt, jsonl, csv), class lists and image folders."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
PROMPT_KEYS = ("prompt", "caption", "text")


def _pick(record: dict, where: str) -> str:
    for key in PROMPT_KEYS:
        if key in record:
            return str(record[key])
    raise ValueError(f"{where}: no prompt field; expected one of {PROMPT_KEYS}, got keys {sorted(record)}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file, in order.

    ``.txt``: one prompt per line (blank lines and lines starting with ``#`` skipped). ``.jsonl``: one object per
    line with a ``prompt``/``caption``/``text`` field. ``.csv``: a header row with one of those columns.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown suffix, a record without a prompt, or no prompts at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    elif suffix == ".jsonl":
        prompts = [_pick(json.loads(ln), f"{path}:{i + 1}") for i, ln in enumerate(text.splitlines()) if ln.strip()]
    elif suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        prompts = [_pick(row, f"{path}:{i + 2}") for i, row in enumerate(rows)]
    else:
        raise ValueError(f"unknown prompt file type {suffix!r} ({path}); use .txt, .jsonl or .csv")
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts (txt: one per line; jsonl/csv: a 'prompt' field)")
    return prompts


def parse_classes(spec: str) -> list[int]:
    """Class ids from ``"3,5,7"``, ``"0-9"`` or a mix (``"0-3,8"``)."""
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        ids.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    if not ids:
        raise ValueError(f"no class ids in {spec!r}; write e.g. '0-9' or '1,4,7'")
    return ids


@dataclass
class ImageFolder:
    """The readable images of a folder (sorted by name) and what was skipped, with the reason."""

    root: Path
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def scan_images(folder: str | Path, strict: bool = False) -> ImageFolder:
    """List the images of a folder (recursively); corrupt and non-image files are counted and skipped.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: with ``strict``, on the first unreadable file; always, when no image is readable.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths, skipped = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not _sidecar(p)):
        reason = _check(path)
        if reason is None:
            paths.append(path)
        elif strict:
            raise ValueError(f"{path}: {reason} (drop --strict to skip such files)")
        else:
            skipped.append((path, reason))
    if skipped:
        log.warning("%s: skipped %d unreadable/non-image files, e.g. %s", root, len(skipped), skipped[0][0].name)
    if not paths:
        raise ValueError(f"no readable images in {root} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return ImageFolder(root, paths, skipped)


def _sidecar(path: Path) -> bool:
    """Files the batch runner writes next to its images (manifests, temporaries): not counted as skipped."""
    return path.name.startswith((".", "manifest")) or path.name == "config.json"


def _check(path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image suffix"
    try:
        with Image.open(path) as im:
            im.load()  # verify() misses truncated pixel data; a full decode does not
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        return f"unreadable image ({type(e).__name__})"
    return None


def load_images(paths: Sequence[Path], size: int | None = None) -> torch.Tensor:
    """Load images as one uint8 tensor (N, 3, H, W), RGB. All must share a size unless ``size`` resizes them."""
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arrays.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an HWC uint8 image atomically: a temporary name in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
