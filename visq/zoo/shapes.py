"""visq-shapes: a deterministic, seeded generator of 32x32 captioned images of coloured shapes.

Every image shows one main shape (6 kinds, 8 colours, 2 sizes, 9 grid positions) on a plain background of
another colour, optionally with clutter (small dots and bars drawn over it, so they may occlude it) and
pixel noise. Captions read "a small red triangle on a blue background, top left".

Drawing is vectorised: each shape is an antialiased 128x128 alpha template, placed by a per-image affine
warp (``grid_sample``) at 2x resolution and then average-pooled to 32x32. A batch of thousands takes well
under a second.

Splits: ``"train"`` and ``"heldout"`` draw from independent random streams (``SeedSequence([split, seed])``),
so the same seed never yields the same images in both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: dict[str, int] = {"train": 0, "heldout": 1}

_GRID = (9.0, 16.0, 23.0)  # pixel centres of the 3x3 position grid
_RADIUS = {0: (4.5, 6.0), 1: (8.0, 9.5)}  # half-extent in pixels, per size
_TEMPLATE = 128
_CLUTTER_KINDS = 2  # dot, bar (extra templates after the shapes)


@dataclass(frozen=True)
class ShapesConfig:
    """Knobs of the generator.

    Attributes:
        clutter: probability that an image gets 1-3 clutter items (dots, bars) drawn over it.
        noise: std of Gaussian pixel noise on the [0, 1] scale (0 = none).
        rotation: maximal rotation jitter in degrees.
        jitter: maximal position jitter in pixels around the grid centre.
        colour_jitter: maximal per-channel colour jitter (0-255 scale).
    """

    clutter: float = 0.0
    noise: float = 0.0
    rotation: float = 10.0
    jitter: float = 1.5
    colour_jitter: float = 12.0


@dataclass
class ShapesBatch:
    """A generated batch.

    Attributes:
        images: uint8 tensor (n, 3, 32, 32).
        captions: one caption per image.
        shape, colour, background, position, size: int64 label tensors (indices into the module tuples).
    """

    images: torch.Tensor
    captions: list[str]
    shape: torch.Tensor
    colour: torch.Tensor
    background: torch.Tensor
    position: torch.Tensor
    size: torch.Tensor


def caption(shape: int, colour: int, background: int, position: int, size: int) -> str:
    """The caption of one image from its label indices."""
    bg = COLOUR_NAMES[background]
    article = "an" if bg[0] in "aeiou" else "a"
    thing = f"{SIZES[size]} {COLOUR_NAMES[colour]} {SHAPES[shape]}"
    return f"a {thing} on {article} {bg} background, {POSITIONS[position]}"


def _polygon(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], s: int) -> None:
    draw.polygon([(s / 2 + x * s / 2, s / 2 - y * s / 2) for x, y in pts], fill=255)


@functools.lru_cache(maxsize=1)
def _templates() -> torch.Tensor:
    """Alpha templates (K, 1, 128, 128) in [0, 1]; shapes span [-0.95, 0.95] of the template."""
    big, r = _TEMPLATE * 4, 0.95
    out = []
    for name in SHAPES + ("dot", "bar"):
        im = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(im)
        if name in ("circle", "dot"):
            d.ellipse([big * (1 - r) / 2, big * (1 - r) / 2, big * (1 + r) / 2, big * (1 + r) / 2], fill=255)
        elif name == "square":
            q = r * 0.82
            _polygon(d, [(-q, -q), (q, -q), (q, q), (-q, q)], big)
        elif name == "triangle":
            _polygon(d, [(0, r), (r * 0.95, -r * 0.75), (-r * 0.95, -r * 0.75)], big)
        elif name == "star":
            pts = []
            for k in range(10):
                rad = r if k % 2 == 0 else r * 0.42
                a = np.pi / 2 + k * np.pi / 5
                pts.append((rad * np.cos(a), rad * np.sin(a)))
            _polygon(d, pts, big)
        elif name == "diamond":
            _polygon(d, [(0, r), (r * 0.8, 0), (0, -r), (-r * 0.8, 0)], big)
        elif name == "cross":
            w = r * 0.32
            _polygon(d, [(-w, r), (w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w),
                         (-r, -w), (-r, w), (-w, w)], big)
        elif name == "bar":
            _polygon(d, [(-r, -0.18), (r, -0.18), (r, 0.18), (-r, 0.18)], big)
        im = im.resize((_TEMPLATE, _TEMPLATE), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0))
    return torch.stack(out)[:, None]


def _place(kind: np.ndarray, cx: np.ndarray, cy: np.ndarray, rad: np.ndarray, angle: np.ndarray,
           templates: torch.Tensor | None = None) -> torch.Tensor:
    """Alpha masks (n, 1, 32, 32): template ``kind`` centred at (cx, cy) px, half-extent ``rad`` px, rotated.

    ``templates`` defaults to the shapes' and clutter's (:func:`_templates`)."""
    templates = _templates() if templates is None else templates
    n, res = len(kind), 64
    cos, sin = np.cos(angle), np.sin(angle)
    # affine_grid maps output coords in [-1, 1] to template coords: scale = output half-size / radius
    scale = (res / 2) / (2 * rad / 0.95)
    tx, ty = (cx * 2 / 32 - 1), (cy * 2 / 32 - 1)
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1] = cos * scale, sin * scale
    theta[:, 1, 0], theta[:, 1, 1] = -sin * scale, cos * scale
    theta[:, 0, 2] = -(cos * tx + sin * ty) * scale
    theta[:, 1, 2] = -(-sin * tx + cos * ty) * scale
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, res, res], align_corners=False)
    alpha = torch.empty(n, 1, res, res)
    for k in np.unique(kind):  # one expanded (copy-free) template per kind instead of a gathered stack
        idx = torch.from_numpy(np.flatnonzero(kind == k))
        src = templates[int(k)][None].expand(len(idx), 1, _TEMPLATE, _TEMPLATE)
        alpha[idx] = F.grid_sample(src, grid[idx], mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(alpha, 2)


def _rgb(idx: np.ndarray, rng: np.random.Generator, jitter: float) -> torch.Tensor:
    base = np.array(list(COLOURS.values()), dtype=np.float32)[idx]
    base = base + rng.uniform(-jitter, jitter, size=base.shape).astype(np.float32)
    return torch.from_numpy(np.clip(base, 0, 255) / 255.0)[:, :, None, None]


def _rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {list(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([SPLITS[split], seed]))


def generate(n: int, seed: int, split: str = "train", cfg: ShapesConfig = ShapesConfig(),
             fixed: dict[str, np.ndarray] | None = None) -> ShapesBatch:
    """Generate ``n`` images; the same arguments always give the same batch.

    Args:
        n: number of images.
        seed: random seed.
        split: ``"train"`` or ``"heldout"`` (independent random streams).
        cfg: generator knobs.
        fixed: optional label arrays (length n) that replace the drawn ones, by name: ``shape``, ``colour``,
            ``background``, ``position``, ``size`` (a background equal to the colour is the caller's problem).
    """
    rng = _rng(seed, split)
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    background = (colour + rng.integers(1, len(COLOURS), n)) % len(COLOURS)  # never the shape's colour
    position = rng.integers(0, len(POSITIONS), n)
    size = rng.integers(0, len(SIZES), n)
    if fixed:  # draw first, then override, so the rest of the random stream does not depend on ``fixed``
        unknown = set(fixed) - {"shape", "colour", "background", "position", "size"}
        if unknown:
            raise ValueError(f"unknown label names {sorted(unknown)}")
        shape, colour, background, position, size = (np.asarray(fixed.get(k, v)) for k, v in (
            ("shape", shape), ("colour", colour), ("background", background), ("position", position), ("size", size)))
    images = _draw(rng, cfg, shape, colour, background, position, size, _templates())
    caps = [caption(*t) for t in zip(shape, colour, background, position, size)]
    as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return ShapesBatch(images, caps, as_t(shape), as_t(colour), as_t(background), as_t(position), as_t(size))


def _draw(rng: np.random.Generator, cfg: ShapesConfig, shape: np.ndarray, colour: np.ndarray,
          background: np.ndarray, position: np.ndarray, size: np.ndarray, templates: torch.Tensor) -> torch.Tensor:
    """uint8 images (n, 3, 32, 32) of the labelled shapes; ``shape`` indexes ``templates``."""
    n = len(shape)
    lo = np.where(size == 0, _RADIUS[0][0], _RADIUS[1][0])
    hi = np.where(size == 0, _RADIUS[0][1], _RADIUS[1][1])
    rad = rng.uniform(lo, hi)
    cx = np.asarray(_GRID)[position % 3] + rng.uniform(-cfg.jitter, cfg.jitter, n)
    cy = np.asarray(_GRID)[position // 3] + rng.uniform(-cfg.jitter, cfg.jitter, n)
    angle = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation, n))

    img = _rgb(background, rng, cfg.colour_jitter).expand(n, 3, 32, 32)
    alpha = _place(shape, cx, cy, rad, angle, templates)
    img = img * (1 - alpha) + _rgb(colour, rng, cfg.colour_jitter) * alpha
    if cfg.clutter > 0:
        img = _add_clutter(img, rng, cfg)
    if cfg.noise > 0:
        noise = torch.from_numpy(rng.standard_normal((n, 3, 32, 32)).astype(np.float32))
        img = img + cfg.noise * noise
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _add_clutter(img: torch.Tensor, rng: np.random.Generator, cfg: ShapesConfig) -> torch.Tensor:
    """Draw up to 3 dots/bars in random colours anywhere, over the main shape (partial occlusion)."""
    n = img.shape[0]
    count = np.where(rng.random(n) < cfg.clutter, rng.integers(1, 4, n), 0)
    for k in range(3):
        kind = len(SHAPES) + rng.integers(0, _CLUTTER_KINDS, n)
        rad = np.where(kind == len(SHAPES), rng.uniform(1.2, 2.2, n), rng.uniform(3.0, 6.0, n))
        alpha = _place(kind, rng.uniform(2, 30, n), rng.uniform(2, 30, n), rad, rng.uniform(0, np.pi, n))
        alpha = alpha * torch.from_numpy((count > k).astype(np.float32))[:, None, None, None]
        img = img * (1 - alpha) + _rgb(rng.integers(0, len(COLOURS), n), rng, cfg.colour_jitter) * alpha
    return img


# Held-out concepts: shapes no zoo model was trained on, for personalization (textual inversion) benchmarks. Their
# templates live apart from ``_templates()``, so the six shapes' images and random streams are exactly as before.
NOVEL_SHAPES: tuple[str, ...] = ("heart", "ring")


@functools.lru_cache(maxsize=1)
def _novel_templates() -> torch.Tensor:
    """Alpha templates (len(NOVEL_SHAPES), 1, 128, 128), drawn like :func:`_templates`."""
    big, r = _TEMPLATE * 4, 0.95
    out = []
    for name in NOVEL_SHAPES:
        im = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(im)
        if name == "heart":  # the classic parametric heart, scaled to span [-r, r]
            t = np.linspace(0, 2 * np.pi, 400)
            x = 16 * np.sin(t) ** 3
            y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
            y = y + 2.5  # centre the bounding box vertically (y spans [-17, 12])
            _polygon(d, list(zip(x * r / 16.5, y * r / 16.5)), big)
        elif name == "ring":
            inner = r * 0.55
            d.ellipse([big * (1 - r) / 2, big * (1 - r) / 2, big * (1 + r) / 2, big * (1 + r) / 2], fill=255)
            d.ellipse([big * (1 - inner) / 2, big * (1 - inner) / 2, big * (1 + inner) / 2, big * (1 + inner) / 2],
                      fill=0)
        im = im.resize((_TEMPLATE, _TEMPLATE), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0))
    return torch.stack(out)[:, None]


def novel_caption(name: str, colour: int, background: int, position: int, size: int) -> str:
    """The caption of a held-out concept image, in the grammar of :func:`caption` (``name`` in NOVEL_SHAPES)."""
    bg = COLOUR_NAMES[background]
    article = "an" if bg[0] in "aeiou" else "a"
    return f"a {SIZES[size]} {COLOUR_NAMES[colour]} {name} on {article} {bg} background, {POSITIONS[position]}"


def generate_novel(name: str, n: int, seed: int, colour: str, size: str = "large", split: str = "heldout",
                   cfg: ShapesConfig = ShapesConfig()) -> ShapesBatch:
    """``n`` images of one held-out concept (a ``colour`` ``size`` ``name``) at random positions and backgrounds.

    Returns a :class:`ShapesBatch` whose ``shape`` labels index :data:`NOVEL_SHAPES`. The random stream is the
    split's (``SeedSequence([split, seed])``), like :func:`generate`.
    """
    if name not in NOVEL_SHAPES or colour not in COLOURS or size not in SIZES:
        raise ValueError(f"a held-out concept needs a shape in {NOVEL_SHAPES}, a colour in {COLOUR_NAMES} and a size "
                         f"in {SIZES}; got {name!r}, {colour!r}, {size!r}")
    rng = _rng(seed, split)
    shape = np.full(n, NOVEL_SHAPES.index(name))
    col = np.full(n, COLOUR_NAMES.index(colour))
    background = (col + rng.integers(1, len(COLOURS), n)) % len(COLOURS)
    position = rng.integers(0, len(POSITIONS), n)
    size_idx = np.full(n, SIZES.index(size))
    images = _draw(rng, cfg, shape, col, background, position, size_idx, _novel_templates())
    caps = [novel_caption(name, *t) for t in zip(col, background, position, size_idx)]
    as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return ShapesBatch(images, caps, as_t(shape), as_t(col), as_t(background), as_t(position), as_t(size_idx))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) -> float in [-1, 1] (the range diffusers' VAE expects)."""
    return images.float() / 127.5 - 1.0


def standardize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[0, 1] (or uint8) images (n, 3, H, W) -> (images - mean) / std per channel."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


class ShapesDataset(torch.utils.data.Dataset):
    """A fixed, precomputed split of visq-shapes.

    Items are dicts: ``image`` float tensor (3, 32, 32) in [0, 1], ``caption`` str, and int labels
    ``shape``, ``colour``, ``background``, ``position``, ``size``. ``label`` is the shape index.

    Args:
        split: ``"train"`` or ``"heldout"``.
        size: number of images.
        seed: random seed (images are generated in chunks of 4096 seeded by ``seed`` and the chunk index).
        cfg: generator knobs.
    """

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0,
                 cfg: ShapesConfig = ShapesConfig()) -> None:
        parts = [generate(min(4096, size - s), seed * 100_003 + s // 4096, split, cfg) for s in range(0, size, 4096)]
        self.images = torch.cat([p.images for p in parts])
        self.captions = [c for p in parts for c in p.captions]
        self.labels = {k: torch.cat([getattr(p, k) for p in parts])
                       for k in ("shape", "colour", "background", "position", "size")}
        self.split, self.seed, self.cfg = split, seed, cfg

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        item = {k: int(v[i]) for k, v in self.labels.items()}
        item.update(image=self.images[i].float() / 255.0, caption=self.captions[i], label=item["shape"])
        return item
