"""Q-Sched: quantization-aware scheduler coefficients for few-step sampling (Frumkin & Marculescu, arXiv 2509.01624).

After a pipeline is quantized, two pre-conditioning coefficients per sampler step rescale what the scheduler sees;
the denoiser's weights are untouched. At the top of every ``step`` [CODE: enyac-group/q-sched schedulers]::

    model_output = c_eps[i] * model_output        # c_eps: the (quantized) noise prediction
    sample       = c_x[i]   * sample              # c_x:   the noisy sample x_t
    ... the unchanged scheduler step ...

``c_eps = c_x = 1`` is the original sampler, bit for bit. The coefficients are linear ramps from a searched first-step
value to 1 at the last step (``linspace(m, 1, N)``, ``linspace(s, 1, N)``). They are chosen without gradients and
without float images: every candidate ``(m, s)`` samples the same prompts from the same seeds and is scored with the
JAQ objective ``mean(compatibility) + k * mean(quality)`` (text-image compatibility plus a reference-free image
quality term, k = 2 in the paper). Search: the paper's grid over ``[0.8, 1.1]^2``, or a cheaper coarse-to-fine
search (a 3x3 grid whose box halves around the best point each round) [RECON: the cheap search is ours].

Deviations: the identity point (1, 1) is always scored, so the search never returns a sampler that scores below the
original on the objective [RECON]; only first-order samplers are accepted, where one step's coefficients have one
meaning (DPM-Solver / Heun-type multistep solvers are refused) [RECON].

``QSchedScheduler`` is a diffusers ``SchedulerMixin`` / ``ConfigMixin``: assign it to ``pipe.scheduler``; its config
(``base_class``, ``base_config``, ``model_coeff``, ``sample_coeff``) round-trips through ``save_pretrained`` /
``from_pretrained`` and through ``visq.save`` / ``visq.load`` (which write it under ``scheduler/``). A saved
pipeline's ``model_index.json`` names it ``["visq.qsched", "QSchedScheduler"]``; diffusers imports that module by
name, so ``DiffusionPipeline.from_pretrained(folder)`` needs only visq installed. To attach it to another pipeline:
``pipe.scheduler = QSchedScheduler.from_pretrained(folder, subfolder="scheduler")``. At another step count than it was
tuned for it interpolates the ramps (with a warning). This module imports diffusers: ``import visq`` does not.

    import visq, visq.qsched
    visq.quantize(pipe, "w4a4", calib=captions, calib_options={"num_inference_steps": 4})
    reward = visq.qsched.JAQ(compatibility=my_clip_score, quality=my_no_reference_quality, k=2.0)
    result = visq.qsched.tune(pipe, captions, steps=4, reward=reward, guidance_scale=4.0)  # installs the scheduler
    images = pipe(prompts, num_inference_steps=4).images
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config

log = logging.getLogger(__name__)

# First-order samplers: one model evaluation per step, so step i's coefficients scale exactly one update.
FIRST_ORDER = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
               "FlowMatchEulerDiscreteScheduler", "LCMScheduler", "TCDScheduler")

# A reward maps images (N, 3, H, W) in [0, 1] and their conditions (prompts or class ids) to N scores.
RewardFn = Callable[[torch.Tensor, Sequence[Any]], torch.Tensor]


class QSchedScheduler(SchedulerMixin, ConfigMixin):
    """A first-order diffusers scheduler whose ``step`` scales the model output and the sample per step.

    Args:
        base_class: class name of the wrapped diffusers scheduler (one of ``FIRST_ORDER``).
        base_config: its config (``dict(scheduler.config)``).
        model_coeff: ``c_eps`` for each of the N sampler steps; None means 1 at every step (any N).
        sample_coeff: ``c_x`` for each step, the same length as ``model_coeff``.

    Pipelines read the wrapped scheduler's attributes and config through this object unchanged; ``base`` is
    the wrapped scheduler. Build one with :meth:`wrap` or :meth:`ramp`.
    """

    config_name = "scheduler_config.json"

    @register_to_config
    def __init__(self, base_class: str = "DDIMScheduler", base_config: dict | None = None,
                 model_coeff: list[float] | None = None, sample_coeff: list[float] | None = None) -> None:
        import diffusers

        if base_class not in FIRST_ORDER:
            raise ValueError(f"Q-Sched needs a first-order sampler, got {base_class}; use one of {FIRST_ORDER} "
                             f"(e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config))")
        if (model_coeff is None) != (sample_coeff is None):
            raise ValueError("give both model_coeff and sample_coeff, or neither (identity)")
        if model_coeff is not None and (len(model_coeff) != len(sample_coeff) or not model_coeff):
            raise ValueError(f"model_coeff ({len(model_coeff)}) and sample_coeff ({len(sample_coeff)}) must have one "
                             "value per sampler step")
        self.base = getattr(diffusers, base_class).from_config(base_config or {})

    @classmethod
    def wrap(cls, scheduler: Any, model_coeff: Sequence[float] | None = None,
             sample_coeff: Sequence[float] | None = None) -> QSchedScheduler:
        """Wrap (a copy of) ``scheduler``; a ``QSchedScheduler`` is unwrapped first, never nested."""
        base = scheduler.base if isinstance(scheduler, QSchedScheduler) else scheduler
        config = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
        return cls(type(base).__name__, config, _floats(model_coeff), _floats(sample_coeff))

    @classmethod
    def ramp(cls, scheduler: Any, steps: int, model: float, sample: float, model_end: float = 1.0,
             sample_end: float = 1.0) -> QSchedScheduler:
        """Linear ramps over ``steps``: ``c_eps`` from ``model`` to ``model_end``, ``c_x`` from ``sample`` to
        ``sample_end`` (the paper's search uses ends of 1)."""
        return cls.wrap(scheduler, np.linspace(model, model_end, steps).tolist(),
                        np.linspace(sample, sample_end, steps).tolist())

    @property
    def config(self) -> FrozenDict:
        """The wrapped scheduler's config plus this wrapper's fields (pipelines read e.g. ``steps_offset``)."""
        return FrozenDict({**self.base.config, **self._internal_dict})

    def __getattr__(self, name: str) -> Any:
        # everything the wrapper does not define (timesteps, init_noise_sigma, scale_model_input, sigmas, ...)
        base = self.__dict__.get("base")
        if base is not None and not name.startswith("__"):
            return getattr(base, name)
        return super().__getattr__(name)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def set_timesteps(self) -> Callable[..., None]:
        """The wrapped ``set_timesteps`` (same signature: pipelines inspect it); warns when the step count differs
        from the one the coefficients were tuned for."""
        inner = self.base.set_timesteps

        @functools.wraps(inner)
        def set_timesteps(*args: Any, **kwargs: Any) -> None:
            inner(*args, **kwargs)
            n, coeff = len(self.base.timesteps), self.config["model_coeff"]
            if coeff is not None and n != len(coeff):
                log.warning("this Q-Sched scheduler was tuned for %d steps and samples %d: its coefficients are "
                            "interpolated over the sampler's progress; tune for %d steps to do better",
                            len(coeff), n, n)

        return set_timesteps

    def coefficients(self, steps: int) -> tuple[list[float], list[float]]:
        """(c_eps, c_x) for ``steps`` steps: the stored ones, or for another step count their linear interpolation
        over the sampler's progress from 0 to 1 (for the searched ramps, the same ramp over ``steps``) [RECON]."""
        model, sample = self.config["model_coeff"], self.config["sample_coeff"]
        if model is None:
            return [1.0] * steps, [1.0] * steps
        if len(model) == steps:
            return list(model), list(sample)
        where, known = np.linspace(0, 1, steps), np.linspace(0, 1, len(model))
        return np.interp(where, known, model).tolist(), np.interp(where, known, sample).tolist()

    @property
    def step(self) -> Callable[..., Any]:
        """The wrapped ``step`` (same signature: pipelines inspect it for ``eta`` / ``generator``), with the
        model output and the sample scaled by this step's coefficients first."""
        inner = self.base.step

        @functools.wraps(inner)
        def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.config["model_coeff"] is not None:
                i = self.step_position(timestep)
                model, sample_coeff = self.coefficients(len(self.base.timesteps))
                model_output = model_output * model[i]
                sample = sample * sample_coeff[i]
            return inner(model_output, timestep, sample, *args, **kwargs)

        return step

    def step_position(self, timestep: Any) -> int:
        """Index of the current step in ``timesteps``: the scheduler's own ``step_index`` where it keeps one,
        else the position of ``timestep`` (DDIM keeps no index; its timesteps are distinct)."""
        index = getattr(self.base, "step_index", None)
        if index is None:
            index = getattr(self.base, "begin_index", None)
        if index is not None:
            return int(index)
        hits = (self.base.timesteps == torch.as_tensor(timestep).to(self.base.timesteps.device)).nonzero().flatten()
        if not len(hits):
            raise ValueError(f"timestep {timestep} is not one of this scheduler's timesteps; call set_timesteps first")
        return int(hits[0])


def check_steps(scheduler: Any, steps: int) -> None:
    """Raise a clear ValueError when ``scheduler`` cannot sample in ``steps`` steps."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    probe = QSchedScheduler.wrap(scheduler)
    try:
        probe.set_timesteps(steps)
    except ValueError as err:
        raise ValueError(f"{probe.config['base_class']} cannot sample in {steps} steps: {err}") from err
    if len(probe.timesteps) != steps:
        raise ValueError(f"{probe.config['base_class']} gives {len(probe.timesteps)} timesteps for {steps} steps; "
                         "Q-Sched needs one per step")


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


@dataclass(frozen=True)
class JAQ:
    """The JAQ objective: ``mean(compatibility) + k * mean(quality)`` over a set of images, maximised.

    ``compatibility`` scores text-image (or class-image) agreement, ``quality`` is reference-free image quality;
    neither may be a metric you later evaluate with. k = 2 is the paper's choice.
    """

    compatibility: RewardFn
    quality: RewardFn
    k: float = 2.0

    def __call__(self, images: torch.Tensor, conditions: Sequence[Any]) -> tuple[float, float, float]:
        """(score, mean compatibility, mean quality) of ``images`` sampled for ``conditions``."""
        tc = float(torch.as_tensor(self.compatibility(images, conditions)).double().mean())
        iq = float(torch.as_tensor(self.quality(images, conditions)).double().mean())
        if not (math.isfinite(tc) and math.isfinite(iq)):
            raise ValueError(f"the JAQ terms are not finite (compatibility {tc}, quality {iq}); check the reward fns")
        return tc + self.k * iq, tc, iq


@dataclass(frozen=True)
class Candidate:
    """One scored point: first-step ``c_eps`` (model) and ``c_x`` (sample), both ramping to 1 at the last step."""

    model: float
    sample: float
    score: float
    compatibility: float
    quality: float


@dataclass
class TuneResult:
    """What :func:`tune` found. ``candidates`` is the number of distinct (model, sample) points scored, each one
    sampling every prompt; ``pipeline_calls`` the pipeline invocations that took (batches)."""

    scheduler: QSchedScheduler
    best: Candidate
    identity: Candidate
    search: str
    steps: int
    candidates: int
    pipeline_calls: int
    seconds: float
    trace: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the scheduler and the trace)."""
        return {"search": self.search, "steps": self.steps, "model": self.best.model, "sample": self.best.sample,
                "score": self.best.score, "identity_score": self.identity.score, "candidates": self.candidates,
                "pipeline_calls": self.pipeline_calls, "seconds": self.seconds,
                "model_coeff": self.scheduler.config["model_coeff"],
                "sample_coeff": self.scheduler.config["sample_coeff"]}


SEARCHES = ("grid", "coarse")


def tune(
    pipe: Any, prompts: Sequence[str] | Sequence[int], steps: int = 4, *, reward: JAQ, search: str = "coarse",
    bounds: tuple[float, float] = (0.8, 1.1), grid_points: int = 10, rounds: int = 3, seed: int = 0,
    batch_size: int = 32, allow_float: bool = False, apply: bool = True, **pipe_kwargs: Any,
) -> TuneResult:
    """Search the Q-Sched coefficients of a quantized pipeline for ``steps``-step sampling.

    Every candidate samples all ``prompts`` (class ids for a class-conditional pipeline such as DiT) from the same
    seeds (image i uses ``seed + i``) and is scored by ``reward``; no float images are made. The denoiser is not
    touched. With ``apply`` the best scheduler is installed as ``pipe.scheduler``; otherwise the original is kept.

    Args:
        search: ``"grid"``: the paper's ``grid_points`` x ``grid_points`` grid over ``bounds``; ``"coarse"``: a 3x3
            grid whose box halves around the best point for ``rounds`` rounds (about 9 + 8 * rounds candidates).
        pipe_kwargs: passed to every pipeline call (e.g. ``guidance_scale``).

    Raises:
        ValueError: no prompts, an unknown search, steps the scheduler cannot do, a multistep scheduler, or a
            pipeline that is not quantized (unless ``allow_float``).
    """
    conditions = _check_tune_args(pipe, prompts, steps, search, bounds, allow_float)
    original = pipe.scheduler
    cache: dict[tuple[float, float], Candidate] = {}
    calls = 0
    start = time.perf_counter()

    def evaluate(model: float, sample: float) -> Candidate:
        nonlocal calls
        key = (round(model, 6), round(sample, 6))
        if key not in cache:
            pipe.scheduler = QSchedScheduler.ramp(original, steps, *key)
            images, n_calls = _render(pipe, conditions, steps, seed, batch_size, pipe_kwargs)
            calls += n_calls
            cache[key] = Candidate(*key, *reward(images, conditions))
            log.debug("q-sched %s", cache[key])
        return cache[key]

    try:
        identity = evaluate(1.0, 1.0)
        if search == "grid":
            axis = np.linspace(*bounds, grid_points).tolist()
            for m in axis:
                for s in axis:
                    evaluate(m, s)
        else:
            _coarse_to_fine(evaluate, cache, bounds, rounds)
    finally:
        pipe.scheduler = original
    best = max(cache.values(), key=lambda c: c.score)  # max keeps the first of equal scores: deterministic
    result = TuneResult(QSchedScheduler.ramp(original, steps, best.model, best.sample), best, identity, search,
                        steps, len(cache), calls, time.perf_counter() - start, list(cache.values()))
    log.info("q-sched %s search, %d steps: model %.4f sample %.4f, JAQ %.4f (identity %.4f); %d candidates, %.1f s",
             search, steps, best.model, best.sample, best.score, identity.score, len(cache), result.seconds)
    if apply:
        pipe.scheduler = result.scheduler
    return result


def _coarse_to_fine(evaluate: Callable[[float, float], Candidate], cache: dict, bounds: tuple[float, float],
                    rounds: int) -> None:
    """3x3 grids over a box that halves around the best point so far, ``rounds`` times after the first [RECON]."""
    lo, hi = bounds
    centre, half = ((lo + hi) / 2, (lo + hi) / 2), (hi - lo) / 2
    for _ in range(rounds + 1):
        for dm in (-1, 0, 1):
            for ds in (-1, 0, 1):
                evaluate(min(max(centre[0] + dm * half, lo), hi), min(max(centre[1] + ds * half, lo), hi))
        best = max(cache.values(), key=lambda c: c.score)
        centre, half = (best.model, best.sample), half / 2


def _check_tune_args(pipe: Any, prompts: Sequence[Any], steps: int, search: str, bounds: tuple[float, float],
                     allow_float: bool) -> list[Any]:
    from visq.api import quant_state

    conditions = list(prompts)
    if not conditions:
        raise ValueError("tune needs at least one prompt (or class id) to sample")
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}; use one of {SEARCHES}")
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must be 0 < low < high, got {bounds}")
    if not hasattr(pipe, "scheduler"):
        raise ValueError(f"{type(pipe).__name__} has no scheduler: Q-Sched tunes a diffusers pipeline's sampler")
    if not allow_float:
        try:
            quant_state(pipe)
        except ValueError as err:
            raise ValueError("Q-Sched tunes the sampler of a quantized pipeline: quantize it first (visq.quantize or "
                             "visq.load), or pass allow_float=True to tune a float one") from err
    QSchedScheduler.wrap(pipe.scheduler)  # refuses multistep samplers
    check_steps(pipe.scheduler, steps)
    return conditions


def _render(pipe: Any, conditions: list[Any], steps: int, seed: int, batch_size: int,
            pipe_kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Images (N, 3, H, W) in [0, 1] for ``conditions``, image i from generator seed ``seed + i``; and the number of
    pipeline calls."""
    out = []
    for first in range(0, len(conditions), batch_size):
        chunk = conditions[first:first + batch_size]
        generators = [torch.Generator().manual_seed(seed + first + j) for j in range(len(chunk))]
        key = "prompt" if isinstance(chunk[0], str) else "class_labels"
        with torch.no_grad():
            images = pipe(**{key: chunk}, num_inference_steps=steps, generator=generators, output_type="np",
                          **pipe_kwargs).images
        out.append(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().clamp(0, 1))
    return torch.cat(out), len(out)
