"""``visq.finetune``: EfficientDM's data-free distillation of a quantized denoiser from its float self, and
``visq.merge_lora`` (research/diffusion_methods.md 1.3, 1.4, 1.8).

Training (one ``visq.train.fit`` run; ``DistillTask`` is the method's part):
- Epoch e draws ``batch_size`` prompts / class ids and a noise seed from the step's generator and runs the
  *float teacher* through the pipeline's own sampling loop (its scheduler, its classifier-free guidance), recording
  every denoiser call and the teacher's output. The trajectory is driven by the teacher alone (the code never
  re-samples from the student), so recording it first and then taking one optimizer step per denoising step, in
  sampling order, is exactly the interleaved loop of the spec: at step k the student sees the teacher's
  ``latent_model_input`` (both CFG halves) and the loss is ``sum((eps_q - eps_fp)^2)`` on the guidance-combined
  noise predictions (``eps_u + g (eps_c - eps_u)``; learned-variance channels dropped as the pipeline does).
- The teacher is the same denoiser with every quantizer bypassed (a forward hook returning the quantizer's input):
  QALoRA lives inside the weight quantizers and the float weights are never trained, so the bypassed forward is
  the float model without a second copy in memory (on a GPU this is the spec's "one extra UNet copy" saved).
- Scale-aware optimisation as per-layer learning rates: LoRA of layer l at ``lora_lr * mean(s_w(l))`` (the code's
  ``mean(s_w) / 2500``; multiplying gradients by ``mean(s_w)`` would be a no-op under Adam, spec 1.4). Weight steps
  at ``weight_step_lr`` (1e-6); AdamW, linear decay. Activation steps and offsets (TALSQ) of quantizer q at
  ``act_lr * mean(s_x(q))``: relative, where the code's 5e-4 is absolute. visq also quantizes attention q / k /
  v / probabilities (the code does not), whose steps span 2e-4..0.1 on shapes-dit; the absolute 5e-4 drove the
  8-bit probability steps through zero within one trajectory (W4A8 16.7 -> 12.3 dB PSNR to float, measured).
- Loss weight per step (``loss_weight``): "eps" is the code's unweighted sum; "mu" the paper's Eq. 7 (the
  sampler's mean, a weight c_k^2 per step); "x0" weights each step by its share of the final sample
  (``_step_weights``). Unweighted, the loss is dominated by the last, low-noise steps (300x the first on shapes-dit
  W4A4); the shared LoRA then trades the early steps, which fix the image's layout, for them.
- Steps: ``epochs * num_inference_steps``; the sampler runs the calibrated number of steps, so each TALSQ row is
  trained at the timestep it was calibrated for (other step counts raise: quantize with the steps you sample with).
- Resume: the epoch's seed is task state; a run resumed mid-epoch replays the teacher's trajectory from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from visq import hosts, sites
from visq.api import quant_state
from visq.calibrate import Call
from visq.guard import check_float, check_int, restored_on_error
from visq.quantizers import Quantizer
from visq.quantizers.qalora import QALoRAQuantizer
from visq.train import StepOutput, TrainResult, TrainSettings, TrainTask, fit

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Order of the two CFG halves in the denoiser batch, by pipeline class (the pipelines' own code).
COND_FIRST = ("DiTPipeline",)
# Per-step weight of the noise-prediction loss (DistillSettings.loss_weight, _step_weights).
LOSS_WEIGHTS = ("eps", "mu", "x0")


@dataclass(frozen=True)
class DistillSettings:
    """EfficientDM's hyper-parameters (defaults: the official code, spec 1.6).

    Attributes:
        batch_size: prompts / class ids per trajectory (2 in the code; the denoiser batch doubles under CFG).
        guidance_scale: the teacher's classifier-free guidance (None: the pipeline's default).
        lora_lr: LoRA learning rate per unit of the layer's mean weight step (scale-aware), or the learning rate
            of every LoRA pair times the mean over layers of that step (``scale_aware=False``).
        scale_aware: per-layer LoRA learning rates proportional to the layer's mean weight step.
        weight_step_lr: learning rate of the weight step sizes (0 freezes them).
        act_lr: learning rate of each activation quantizer's steps and offsets per unit of its mean step size
            (relative; 0 freezes them).
        loss_weight: per-step weight of the loss: "eps" (the code), "mu" (the paper) or "x0" (module doc).
        call_kwargs: further pipeline arguments of the teacher runs (e.g. ``eta``, ``height``).
    """

    batch_size: int = 2
    guidance_scale: float | None = None
    lora_lr: float = 4e-4
    scale_aware: bool = True
    weight_step_lr: float = 1e-6
    act_lr: float = 1e-3
    loss_weight: str = "eps"
    call_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS}, got {self.loss_weight!r}")
        check_int("batch_size", self.batch_size)
        if self.guidance_scale is not None:
            check_float("guidance_scale", self.guidance_scale, positive=False)
        check_float("lora_lr", self.lora_lr)
        for name in ("weight_step_lr", "act_lr"):  # 0 freezes them; a negative rate would climb the loss
            check_float(name, getattr(self, name), positive=False)


@dataclass
class TeacherCall:
    """One recorded denoiser call of a teacher trajectory and the teacher's guided noise prediction."""

    call: Call
    target: Tensor


def outer_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Path -> quantizer, for every quantizer of ``model`` that is not part of another quantizer."""
    found: dict[str, Quantizer] = {}
    outer = None
    for name, module in model.named_modules():
        if outer is not None and name.startswith(f"{outer}."):
            continue
        if isinstance(module, Quantizer):
            outer = name
            found[name] = module
    return found


@contextmanager
def float_teacher(model: nn.Module) -> Iterator[None]:
    """Within the context every quantizer passes its input through: the model computes in float (with QALoRA,
    the LoRA update inside the weight quantizer is bypassed too)."""
    handles = [q.register_forward_hook(lambda m, args, out: args[0]) for q in outer_quantizers(model).values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def guided_eps(pipe: Any, model: nn.Module, out: Any, cfg: bool, guidance: float) -> Tensor:
    """The noise prediction the sampler uses: learned-variance channels dropped, CFG halves combined."""
    sample = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
    channels = model.config.get("in_channels")
    # DiT-style learned variance: (B, 2C, H, W) -> the C noise channels; token-major outputs (FLUX's packed
    # (B, tokens, C)) and ordinary ones pass unchanged
    eps = sample[:, :channels] if sample.ndim == 4 and channels and sample.shape[1] > channels else sample
    if not cfg:
        return eps
    first, second = eps.chunk(2)
    cond, uncond = (first, second) if type(pipe).__name__ in COND_FIRST else (second, first)
    return uncond + guidance * (cond - uncond)


class DistillTask(TrainTask):
    """EfficientDM distillation of ``pipe``'s quantized denoiser (module docstring)."""

    name = "efficientdm"

    def __init__(self, pipe: Any, items: Sequence[Any], settings: DistillSettings = DistillSettings()) -> None:
        from visq.hosts.diffusers import _guidance, _pipeline_inputs

        self.pipe, self.settings = pipe, settings
        self.model = hosts.detect(pipe).target(pipe)
        self.loras = {p: m for p, m in self.model.named_modules() if isinstance(m, QALoRAQuantizer)}
        self.act_quantizers = {p: q for p, q in outer_quantizers(self.model).items()
                               if not isinstance(q, QALoRAQuantizer) and any(True for _ in q.parameters())}
        if not self.loras:
            raise ValueError("no QALoRA weight quantizers found: quantize with method='efficientdm' first "
                             "(visq.merge_lora removes them: fine-tune before merging)")
        self.arg, self.items = _pipeline_inputs(pipe, list(items))
        self.call_kwargs = dict(settings.call_kwargs)
        if settings.guidance_scale is not None:
            self.call_kwargs["guidance_scale"] = settings.guidance_scale
        self.guidance = _guidance(pipe, self.call_kwargs)
        self.cfg = self.arg != "batch_size" and self.guidance > 1
        self.num_steps = _check_timesteps(pipe, quant_state(pipe).timesteps)
        self.weights = _step_weights(pipe.scheduler, self.num_steps, settings.loss_weight)
        self.epoch_seed: dict[int, int] = {}
        self._trajectory: tuple[int, list[TeacherCall]] | None = None
        self.model.eval()  # no dropout; gradients still flow
        trained = {id(p) for g in self.param_groups() for p in g["params"]}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trained)

    def config(self) -> dict[str, Any]:
        return {"settings": repr(self.settings), "items": list(map(str, self.items)), "steps": self.num_steps}

    def modules(self) -> dict[str, nn.Module]:
        return {"denoiser": self.model}

    def to(self, device: torch.device) -> None:
        self.pipe.to(device)

    def param_groups(self) -> list[dict[str, Any]]:
        s = self.settings
        steps = {p: _mean_step(m.inner) for p, m in self.loras.items()}
        overall = sum(steps.values()) / len(steps)
        groups = [{"name": f"lora:{p}", "params": [m.lora_A, m.lora_B], "weight_decay": 0.0,
                   "lr": s.lora_lr * (steps[p] if s.scale_aware else overall)} for p, m in self.loras.items()]
        weight_steps = [p for m in self.loras.values() for p in m.inner.parameters()]
        if weight_steps and s.weight_step_lr > 0:
            groups.append({"name": "weight_steps", "params": weight_steps, "lr": s.weight_step_lr,
                           "weight_decay": 0.0})
        if s.act_lr > 0:  # one group per activation quantizer, its lr relative to its own step size
            groups += [{"name": f"act:{path}", "params": list(q.parameters()), "lr": s.act_lr * _mean_step(q),
                        "weight_decay": 0.0} for path, q in self.act_quantizers.items()]
        return groups

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_seed": dict(self.epoch_seed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_seed = {int(k): int(v) for k, v in state["epoch_seed"].items()}

    def step(self, step: int, generator: torch.Generator) -> StepOutput:
        epoch, k = divmod(step, self.num_steps)
        if k == 0:
            self.epoch_seed = {epoch: int(torch.randint(2**62, (1,), generator=generator))}
        if self._trajectory is None or self._trajectory[0] != epoch:
            self._trajectory = (epoch, self.teacher(self.epoch_seed[epoch]))
        record = self._trajectory[1][k]
        out = self.model(*record.call.args, **record.call.kwargs)
        eps = guided_eps(self.pipe, self.model, out, record.call.cfg, self.guidance)
        loss = self.weights[k] * (eps.float() - record.target.float()).pow(2).sum()
        return StepOutput(loss, {"timestep": float(record.call.timestep)})

    def teacher(self, seed: int) -> list[TeacherCall]:
        """The float teacher's trajectory for one epoch: ``batch_size`` items and the noise drawn from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(self.items), generator=generator)[: self.settings.batch_size].tolist()
        while len(pick) < self.settings.batch_size:  # fewer items than the batch: draw with repetition
            pick.append(int(torch.randint(len(self.items), (1,), generator=generator)))
        value: Any = len(pick) if self.arg == "batch_size" else [self.items[i] for i in pick]
        records: list[TeacherCall] = []
        model = self.model

        def record(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            from visq.hosts.diffusers import batched_cfg

            detach = lambda x: x.detach().clone() if isinstance(x, Tensor) else x  # noqa: E731
            cfg = batched_cfg(self.cfg, len(pick), self.call_kwargs, args, kwargs)
            call = Call(tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()},
                        _timestep(module, args, kwargs), cfg=cfg)
            records.append(TeacherCall(call, guided_eps(self.pipe, model, out, cfg, self.guidance).detach()))

        handle = model.register_forward_hook(record, with_kwargs=True)
        progress = dict(getattr(self.pipe, "_progress_bar_config", {}))
        self.pipe.set_progress_bar_config(disable=True)
        try:
            with float_teacher(model), torch.no_grad():
                self.pipe(**{self.arg: value}, num_inference_steps=self.num_steps,
                          generator=torch.Generator().manual_seed(seed),
                          output_type="latent" if self.arg == "prompt" else "np", **self.call_kwargs)
        finally:
            handle.remove()
            self.pipe._progress_bar_config = progress
        if len(records) != self.num_steps:
            raise RuntimeError(f"the pipeline called the denoiser {len(records)} times for {self.num_steps} steps; "
                               "EfficientDM needs one call per step (batched classifier-free guidance)")
        return records


def _timestep(module: nn.Module, args: tuple, kwargs: dict) -> float:
    from visq.hosts.diffusers import _timestep_arg
    from visq.timesteps import as_timestep

    return as_timestep(_timestep_arg(module, args, kwargs))


def _check_timesteps(pipe: Any, calibrated: tuple[float, ...]) -> int:
    """The sampling step count whose timesteps are the calibrated ones (TALSQ rows); raises otherwise.

    DDPM-family schedulers are checked up front on a fresh copy. Flow-matching pipelines (FLUX, SD3...) pass
    their own sigmas and shift, and may rescale the timestep the denoiser sees, so only their sampled trajectory can
    tell: the per-timestep quantizers refuse an uncalibrated timestep in the first teacher run."""
    if not calibrated:
        raise ValueError("the model has no calibrated timesteps: quantize the pipeline (not a bare denoiser)")
    if getattr(pipe.scheduler, "alphas_cumprod", None) is None:
        return len(calibrated)
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(len(calibrated))
    sampled = [float(t) for t in scheduler.timesteps]
    if sorted(round(t, 3) for t in sampled) != sorted(round(t, 3) for t in calibrated):
        raise ValueError(f"the scheduler's {len(calibrated)}-step timesteps differ from the calibrated ones "
                         f"({[round(t, 3) for t in sampled[:4]]}... vs {list(calibrated)[:4]}...): quantize with "
                         "the sampler settings you train and sample with")
    return len(calibrated)


def _step_weights(scheduler: Any, num_steps: int, kind: str) -> list[float]:
    """Loss weight of each sampling step (sampling order, mean 1): "eps" 1 (the code); "mu" c_k^2, c_k the
    coefficient of the noise prediction in the deterministic DDIM update x_prev = a x_t + c_k eps (the paper's
    Eq. 7 loss on the sampler's mean); "x0" (c_k / sqrt(abar_prev))^2, the same error in the scaled coordinates
    x / sqrt(abar) in which a DDIM step only adds (sigma_prev - sigma_k) eps, i.e. its share of the final sample."""
    if kind == "eps":
        return [1.0] * num_steps
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise ValueError(f"loss_weight={kind!r} needs a scheduler with alphas_cumprod ({type(scheduler).__name__} "
                         "has none); use loss_weight='eps'")
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_steps)
    steps = [int(t) for t in fresh.timesteps]
    final = float(getattr(scheduler, "final_alpha_cumprod", alphas[0]))
    weights = []
    for i, t in enumerate(steps):
        a_t = float(alphas[t])
        a_prev = float(alphas[steps[i + 1]]) if i + 1 < len(steps) else final
        c = (1 - a_prev) ** 0.5 - (a_prev / a_t) ** 0.5 * (1 - a_t) ** 0.5
        weights.append(c * c if kind == "mu" else c * c / a_prev)
    mean = sum(weights) / len(weights)
    return [w / mean for w in weights]


def _mean_step(quantizer: nn.Module) -> float:
    """Mean step size of a quantizer: every row, timestep and side of a split (the unit its lr is relative to)."""
    steps = [t.detach().float().flatten() for n, t in [*quantizer.named_parameters(), *quantizer.named_buffers()]
             if n.split(".")[-1] in ("step", "scale")]
    if not steps:
        raise ValueError(f"{type(quantizer).__name__} has no step / scale tensor to scale its learning rate by")
    return float(torch.cat(steps).abs().mean())


def finetune(
    pipe: T,
    prompts: Sequence[Any],
    *,
    steps: int | None = None,
    epochs: int = 10,
    settings: DistillSettings = DistillSettings(),
    out_dir: str | None = None,
    seed: int = 0,
    progress: bool = True,
    accelerator: Any = None,
    **train: Any,
) -> TrainResult:
    """Distil a pipeline quantized with ``method="efficientdm"`` from its float self (module docstring).

    Args:
        pipe: the quantized pipeline (its denoiser is trained in place).
        prompts: prompts (text-to-image), class ids (class-conditional) or a sample count (unconditional) to
            draw each trajectory's conditioning from.
        steps: optimizer steps (default ``epochs`` trajectories of the calibrated step count).
        epochs: trajectories, when ``steps`` is not given.
        settings: the distillation's hyper-parameters.
        out_dir: run folder (checkpoints, metrics.jsonl); rerunning with it resumes.
        seed: seeds the trajectories and every step.
        progress: progress bar.
        accelerator: an ``accelerate.Accelerator`` (multi-process: ``accelerate launch``).
        train: further ``visq.train.TrainSettings`` fields (``checkpoint_every``, ``schedule``...).

    Returns:
        The ``TrainResult`` (final metrics, seconds, peak memory).
    """
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of prompts, got the string {prompts!r} (one prompt: "
                        f"[{prompts!r}])")
    if isinstance(prompts, int) and not isinstance(prompts, bool):
        prompts = [None] * check_int("prompts (a sample count)", prompts)
    if steps is None:
        check_int("epochs", epochs)
    options = {"schedule": "linear", "optimizer": "adamw", "desc": "efficientdm", **train}
    TrainSettings(steps=steps if steps is not None else 1, out_dir=out_dir, seed=seed, **options)  # validates first
    model = hosts.detect(pipe).target(pipe)
    with restored_on_error(model, getattr(pipe, "text_encoder", None)):
        task = DistillTask(pipe, prompts, settings)
        total = steps if steps is not None else epochs * task.num_steps
        result = fit(task, TrainSettings(steps=total, out_dir=out_dir, seed=seed, progress=progress, **options),
                     accelerator=accelerator)
    task.model.eval()
    logger.info("efficientdm: %d steps in %.0f s, peak memory %.0f MB", total, result.seconds, result.peak_memory_mb)
    return result


def merge_lora(obj: T) -> T:
    """Fold every QALoRA update into its layer's weight: the weight becomes ``Q(W + BA)`` (on the grid) and the
    inner quantizer alone remains, so the model computes exactly what it computed while training (bit for bit),
    with no extra parameters. Returns ``obj``."""
    state = quant_state(obj)
    model = hosts.detect(obj).target(obj)
    merged = 0
    for layer in list(model.modules()):
        wq = getattr(layer, "weight_quantizer", None)
        if not isinstance(wq, QALoRAQuantizer):
            continue
        frozen = getattr(layer, "frozen_weight", None) is not None
        layer.unfreeze()
        layer.weight = nn.Parameter(wq.merged(layer.weight), requires_grad=False)  # a new tensor: the float
        layer.weight_quantizer = wq.inner  # model the quantized layer was built from keeps its weights
        if frozen:
            layer.freeze()
        merged += 1
    sites.sync_specs(model, state.plan)
    logger.info("merged the LoRA updates of %d layers", merged)
    return obj
