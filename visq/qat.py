"""Quantization-aware training with knowledge distillation: LSQ-QAT and OFQ, on the shared training loop.

    import visq, visq.qat
    qmodel = visq.qat.train(model, "w2a2", data, teacher=float_model, method="ofq", steps=2000, out_dir="runs/q")
    visq.save(qmodel, "out/")

``train`` quantizes the model with the method's quantizers (``visq.methods.ofq``: learnable steps initialised from
calibration before any optimizer exists), then runs two phases of ``visq.train.fit``, each resumable from its own
folder (``<out_dir>/qat`` and ``<out_dir>/anneal``; rerun the same call to resume):
1. QAT: ``steps`` updates of AdamW with warm-up and a cosine schedule, every weight and quantizer step trainable.
2. Annealing: ``anneal_steps`` updates at the constant small learning rate ``anneal_lr`` (OFQ: 30 epochs at min_lr
   1e-5 after the 300-epoch run). With OFQ's CGA (``cga=True``) the confident weights are frozen in this phase;
   other methods (and the "no CGA" ablation) train the same phase without freezing, so ablations compare equal
   budgets.
The loss is OFQ's distillation: KL(teacher || student) on temperature-softened logits (T = 1), plus
``hard_weight`` times cross-entropy when the data yield labels (OFQ: 1; visq default 0, soft labels only).
Oscillation statistics (``visq.oscillation``) are logged with every metrics record and drawn into
``<out_dir>/oscillation.svg``. Training wall time is kept in the checkpoints (a resumed run counts the earlier
sessions' time up to their last checkpoint, not the steps it redoes) and written to ``<out_dir>/time.json``.
BatchNorm layers of the student (e.g. a convolutional stem kept float) keep their running statistics during
training.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visq import hosts, recipes
from visq.api import quantize_undoable
from visq.guard import check_float, check_int
from visq.oscillation import CGA, OscillationTracker, write_plot
from visq.train import StepOutput, TrainSettings, TrainTask, fit, read_metrics

logger = logging.getLogger(__name__)
METHODS = ("lsq", "ofq")
Batch = Tensor | tuple[Tensor, Tensor]
Data = Tensor | Callable[[torch.Generator], Batch]


@dataclass(frozen=True)
class QATConfig:
    """Training settings of ``train`` (also recorded in each phase's ``run.json``; resuming checks them).

    Attributes:
        steps: QAT updates (phase 1).
        anneal_steps: updates of the constant-learning-rate phase 2 (CGA's phase for OFQ); 0 skips it.
        batch_size: images per step (when ``data`` is a tensor; a callable decides its own batch).
        lr: peak learning rate of weights and quantizer steps in phase 1.
        anneal_lr: constant learning rate of phase 2.
        weight_decay: AdamW decay of matrices (biases, norms and quantizer steps get none).
        warmup_steps: linear warm-up of phase 1.
        min_lr_ratio: floor of phase 1's cosine schedule.
        temperature: distillation temperature.
        hard_weight: weight of the label cross-entropy (needs labelled data).
        grad_clip: global gradient-norm clip (None: none).
        seed: seeds calibration and every step's data draw.
        calib_size: calibration images drawn from ``data`` when ``calib`` is not given.
        checkpoint_every, log_every, eval_every: as in ``visq.train.TrainSettings``.
    """

    steps: int = 1000
    anneal_steps: int = 100
    batch_size: int = 64
    lr: float = 5e-4
    anneal_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02
    temperature: float = 1.0
    hard_weight: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    calib_size: int = 256
    checkpoint_every: int = 100
    log_every: int = 10
    eval_every: int = 0

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("anneal_steps", 0), ("batch_size", 1), ("warmup_steps", 0), ("seed", 0),
                          ("calib_size", 1), ("checkpoint_every", 1), ("log_every", 1), ("eval_every", 0)):
            check_int(name, getattr(self, name), low)
        for name in ("lr", "anneal_lr", "temperature"):
            check_float(name, getattr(self, name))
        for name in ("weight_decay", "hard_weight"):
            check_float(name, getattr(self, name), positive=False)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None:
            check_float("grad_clip", self.grad_clip)


class QATTask(TrainTask):
    """Distillation QAT of a quantized ``student`` toward a float ``teacher`` (module doc).

    Args:
        student: a model quantized with method "lsq" or "ofq".
        teacher: the float model (kept in eval mode, never trained).
        data: a tensor of inputs (``batch_size`` rows drawn per step) or ``fn(generator) -> inputs | (inputs,
            labels)``; it must draw all randomness from the generator (exact resume).
        cfg: training settings.
        phase: "qat" or "anneal".
        cga: freeze confident weights (OFQ's CGA; phase "anneal" only).
        boundary_range: CGA's BR.
        evaluate: optional ``fn(model) -> metrics`` run every ``eval_every`` steps and at the end (eval mode).
        tracker: oscillation tracker to continue (phase 2 shares phase 1's); None builds one.
    """

    name = "qat"

    def __init__(self, student: nn.Module, teacher: nn.Module, data: Data, cfg: QATConfig, phase: str = "qat",
                 cga: bool = False, boundary_range: float = 0.005,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 tracker: OscillationTracker | None = None) -> None:
        if phase not in ("qat", "anneal"):
            raise ValueError(f"phase must be 'qat' or 'anneal', got {phase!r}")
        self.student, self.teacher, self.data, self.cfg, self.phase = student, teacher, data, cfg, phase
        self.tracker = tracker or OscillationTracker(student)
        self.cga = CGA(student, boundary_range) if cga and phase == "anneal" else None
        self.boundary_range, self.evaluate_fn = boundary_range, evaluate
        self._cga_metrics: dict[str, float] = {}
        self.seconds, self._mark = 0.0, None  # wall time of the updates so far (all sessions); last timing mark

    def config(self) -> dict[str, Any]:
        state = hosts.detect(self.student).target(self.student).visq_state
        return {"recipe": state.recipe.to_dict(), "phase": self.phase, "cga": self.cga is not None,
                "boundary_range": self.boundary_range, "batch_size": self.cfg.batch_size,
                "temperature": self.cfg.temperature, "hard_weight": self.cfg.hard_weight,
                "calib_size": self.cfg.calib_size, "data": _describe(self.data)}

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "tracker": self.tracker}

    def to(self, device: torch.device) -> None:
        self.student.to(device)
        self.teacher.to(device)
        self.tracker.to(device)

    def param_groups(self) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and "quantizer" not in name else no_decay).append(p)
        lr = self.cfg.lr if self.phase == "qat" else self.cfg.anneal_lr
        groups = [{"name": "decay", "params": decay, "lr": lr, "weight_decay": self.cfg.weight_decay},
                  {"name": "no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        if isinstance(self.data, Tensor):
            idx = torch.randint(len(self.data), (self.cfg.batch_size,), generator=generator)
            batch: Batch = self.data[idx]
        else:
            batch = self.data(generator)
        images, labels = batch if isinstance(batch, (tuple, list)) else (batch, None)
        device = next(self.student.parameters()).device
        return images.to(device), labels.to(device) if labels is not None else None

    def step(self, step: int, generator: torch.Generator) -> StepOutput:
        if self._mark is None:  # the first step of this session: time from here, not from the process start
            self._mark = time.perf_counter()
        images, labels = self._batch(generator)
        train_mode(self.student)
        with torch.no_grad():
            target = self.teacher(images)
        logits = self.student(images)
        t = self.cfg.temperature
        kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(target / t, -1), reduction="batchmean",
                      log_target=True) * t * t
        loss, metrics = kd, {"kd": float(kd.detach())}
        if self.cfg.hard_weight > 0:
            if labels is None:
                raise ValueError("hard_weight > 0 needs labelled data: let data return (images, labels)")
            ce = F.cross_entropy(logits, labels)
            loss, metrics["ce"] = loss + self.cfg.hard_weight * ce, float(ce.detach())
        return StepOutput(loss, metrics)

    def before_update(self, step: int) -> None:
        if self.cga is not None:
            self._cga_metrics = self.cga.mask_gradients()

    def after_update(self, step: int) -> dict[str, float]:
        if self.cga is not None:
            self.cga.restore()
        now = time.perf_counter()
        self.seconds, self._mark = self.seconds + now - self._mark, now
        return {**self.tracker.update(), **self._cga_metrics}

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds = float(state.get("seconds", 0.0))  # checkpoints written before the time was kept: 0

    def evaluate(self, step: int) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.student.eval()
        try:
            return dict(self.evaluate_fn(self.student))
        finally:
            train_mode(self.student)


def train_mode(model: nn.Module) -> None:
    """Training mode, except BatchNorm layers, which keep using (and keep) their running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _describe(data: Data) -> str:
    if isinstance(data, Tensor):
        return f"tensor{tuple(data.shape)}"
    return getattr(data, "__qualname__", type(data).__name__)


def calibration_batch(data: Data, cfg: QATConfig) -> Tensor:
    """``cfg.calib_size`` inputs drawn from ``data`` with a generator seeded by ``cfg.seed`` (never a training draw:
    training steps reseed from (seed, step))."""
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    if isinstance(data, Tensor):
        return data[torch.randperm(len(data), generator=generator)[: cfg.calib_size]]
    parts, count = [], 0
    while count < cfg.calib_size:
        batch = data(generator)
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        parts.append(images)
        count += len(images)
    return torch.cat(parts)[: cfg.calib_size]


def train(
    model: nn.Module,
    recipe: str | recipes.Recipe = "w4a4",
    data: Data | None = None,
    *,
    teacher: nn.Module,
    method: str = "ofq",
    config: QATConfig | None = None,
    out_dir: str | Path | None = None,
    calib: Any = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
    accelerator: Any = None,
    **method_kwargs: Any,
) -> nn.Module:
    """Quantize ``model`` with ``method`` at ``recipe`` and train it by distillation from ``teacher``.

    Args:
        model: a float timm ViT (or any module visq can quantize); quantized in place and returned.
        recipe: bit widths, e.g. "w2a2", "w3a3", "w4a4" (``visq.recipes``) or a Recipe.
        data: training inputs (see ``QATTask``).
        teacher: the float model to distil from (a separate copy; it is not changed).
        method: "ofq" (options ``statsq``, ``qkr``, ``cga``, ``boundary_range``) or "lsq".
        config: training settings (``QATConfig``); defaults when None.
        out_dir: run folder (checkpoints, metrics.jsonl per phase, oscillation.svg); None keeps nothing.
        calib: calibration inputs for the step initialisation; None draws ``config.calib_size`` from ``data``.
        evaluate: optional ``fn(model) -> metrics`` (e.g. held-out top-1) logged during training.
        progress: progress bars.
        accelerator: an ``accelerate.Accelerator`` (default: one for the visible devices / ``accelerate launch``).
        method_kwargs: the method's options.

    Raises:
        ValueError: unknown method or recipe, a model without attention blocks for QKR, data missing, or an
            ``out_dir`` holding a run with other settings.
    """
    if method not in METHODS:
        raise ValueError(f"visq.qat.train trains methods {METHODS}, got {method!r}; PTQ methods go through "
                         "visq.quantize")
    if config is not None and not isinstance(config, QATConfig):
        raise TypeError(f"config must be a visq.qat.QATConfig, got {type(config).__name__}")
    cfg = config or QATConfig()
    _check_inputs(model, teacher, data)
    recipe = recipes.resolve(recipe, method, **method_kwargs)
    options = dict(recipe.method_kwargs)
    cga, boundary_range = options.get("cga", method == "ofq"), options.get("boundary_range", 0.005)
    out = Path(out_dir) if out_dir is not None else None
    for phase in ("qat", "anneal")[: 2 if cfg.anneal_steps else 1]:
        _settings(cfg, out, phase, progress)  # validates before the model changes
    teacher.eval()
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    float_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    undo = quantize_undoable(model, recipe, calib=calib if calib is not None else calibration_batch(data, cfg),
                             progress=progress)
    try:
        return _train_quantized(model, teacher, data, cfg, out, cga, boundary_range, evaluate, progress, accelerator,
                                {"calibration_s": time.perf_counter() - start})
    except BaseException:  # a retry must find the caller's float model (weights included), not "already quantized"
        undo()
        model.load_state_dict(float_state)
        raise


def _check_inputs(model: Any, teacher: Any, data: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be the float nn.Module to train, got {type(model).__name__}")
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be the float nn.Module to distil from (a separate copy of the model, e.g. "
                        f"copy.deepcopy(model) before training), got {type(teacher).__name__} {teacher!r:.60}")
    if teacher is model:
        raise ValueError("teacher is the model itself; pass a separate float copy (copy.deepcopy(model))")
    if getattr(hosts.detect(model).target(model), "visq_state", None) is not None:
        raise ValueError("model is already quantized; visq.qat.train quantizes a float model itself")
    if data is None:
        raise ValueError("data is required: a tensor of training inputs or fn(generator) -> batch")
    if isinstance(data, Tensor):
        if data.ndim < 2 or len(data) == 0:
            raise ValueError(f"data must be a batch of inputs (N x ...), got a tensor of shape {tuple(data.shape)}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("data holds NaN or inf values; clean the inputs first")
    elif not callable(data):
        raise TypeError(f"data must be a tensor of inputs or fn(generator) -> batch, got {type(data).__name__}")


def _train_quantized(model: nn.Module, teacher: nn.Module, data: Data, cfg: QATConfig, out: Path | None, cga: bool,
                     boundary_range: float, evaluate: Any, progress: bool, accelerator: Any,
                     seconds: dict[str, float]) -> nn.Module:
    task = QATTask(model, teacher, data, cfg, "qat", evaluate=evaluate)
    fit(task, _settings(cfg, out, "qat", progress), accelerator)
    seconds["qat_s"] = task.seconds
    if cfg.anneal_steps > 0:
        anneal = QATTask(model, teacher, data, cfg, "anneal", cga, boundary_range, evaluate, tracker=task.tracker)
        fit(anneal, _settings(cfg, out, "anneal", progress), accelerator)
        seconds["anneal_s"] = anneal.seconds
    if out is not None:
        plot_oscillation(out, cfg)
        (out / "time.json").write_text(json.dumps(seconds, indent=1) + "\n")
    model.eval()
    return model


def _settings(cfg: QATConfig, out: Path | None, phase: str, progress: bool) -> TrainSettings:
    common = dict(out_dir=str(out / phase) if out is not None else None, seed=cfg.seed, optimizer="adamw",
                  grad_clip=cfg.grad_clip, checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                  eval_every=cfg.eval_every, progress=progress, desc=phase)
    if phase == "qat":
        return TrainSettings(steps=cfg.steps, schedule="cosine", warmup_steps=cfg.warmup_steps,
                             min_lr_ratio=cfg.min_lr_ratio, **common)
    # phase 2 draws other data than phase 1 (its steps restart at 0): shift its seed
    return replace(TrainSettings(steps=cfg.anneal_steps, schedule="constant", **common), seed=cfg.seed + 1_000_003)


def metrics_of(out: str | Path, cfg: QATConfig) -> list[dict[str, Any]]:
    """Both phases' metrics records, with phase 2's steps counted after phase 1's."""
    out = Path(out)
    records = [{**r, "phase": "qat"} for r in _read(out / "qat" / "metrics.jsonl")]
    anneal = _read(out / "anneal" / "metrics.jsonl")
    records += [{**r, "step": r["step"] + cfg.steps, "phase": "anneal"} for r in anneal]
    return records


def _read(path: Path) -> list[dict[str, Any]]:
    return read_metrics(path) if path.is_file() else []


def plot_oscillation(out: str | Path, cfg: QATConfig) -> Path:
    """Draw the fraction of oscillating weights over the run into ``<out>/oscillation.svg``."""
    records = [r for r in metrics_of(out, cfg) if "osc_frac" in r]
    series = {"oscillating weights (EMA > threshold)": [(r["step"], r["osc_frac"]) for r in records]}
    frozen = [(r["step"], 1.0 - r["frozen_frac"]) for r in records if "frozen_frac" in r]
    if frozen:
        series["CGA: weights still training"] = frozen
    return write_plot(Path(out) / "oscillation.svg", series, "Weight oscillation during QAT", "fraction of weights")
