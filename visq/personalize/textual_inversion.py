"""Textual inversion on a (quantized) text-to-image pipeline, as a ``visq.train.TrainTask``: one new token's
embedding is the only trained tensor, learned by zeroth-order estimates (ZOODiP) or by backpropagation (the
classic baseline).

The token is a separate ``nn.Parameter``. A forward hook on the text encoder's input embedding writes it at the
token's positions, so the pipeline's own tensors never change and the backprop baseline's gradient reaches only
the token. The loss is the LDM denoising loss ``||eps - eps(z_t, t, c(prompt))||^2`` in fp32 on reference latents
(VAE posterior means, encoded once). In ZO mode every forward runs under ``torch.no_grad`` (no graph is built) and
the n + 1 forwards of a step share one batch, noise and timesteps (the pipeline runs in eval mode: no dropout).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visq.personalize.subspace import SubspaceProjector
from visq.personalize.timesteps import sample_timesteps
from visq.personalize.zo import ZOSettings, estimate
from visq.quantizers import Quantizer
from visq.train import StepOutput, TrainTask
from visq.train.loop import SCHEDULES

logger = logging.getLogger(__name__)

METHODS = ("zo", "backprop")


@dataclass(frozen=True)
class PersonalizeSettings:
    """What to learn and how. Defaults: ZOODiP's table (diffusion_methods.md 6.5); ``lr`` the script's 1e-2.

    Attributes:
        method: "zo" (forward passes only) or "backprop" (classic textual inversion).
        batch: reference images per step (ZOODiP: 1).
        lr: peak learning rate (constant schedule).
        adam_eps: Adam's epsilon (ZOODiP's ZO-Adam: 1e-3; classic TI uses 1e-8).
        n, mu, normalize: the ZO estimator (:class:`~visq.personalize.zo.ZOSettings`).
        tau, nu: Subspace Gradient buffer length / refresh period and dropped variance; ``tau=0`` disables it.
        t_low, t_high: timesteps drawn uniformly in [t_low, t_high) (PUTS: 500, 900; classic TI: 0, 1000).
        init_word: a word whose embedding initialises the token.
        schedule: learning-rate schedule over the run (``visq.train``: "constant" as ZOODiP, "cosine", "linear").
    """

    method: str = "zo"
    batch: int = 1
    lr: float = 1e-2
    adam_eps: float = 1e-3
    n: int = 2
    mu: float = 1e-3
    normalize: str = "code"
    tau: int = 128
    nu: float = 1e-3
    t_low: int = 500
    t_high: int = 900
    init_word: str = "circle"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.batch < 1 or self.lr <= 0:
            raise ValueError(f"batch must be >= 1 and lr > 0, got batch={self.batch}, lr={self.lr}")
        ZOSettings(self.n, self.mu, self.normalize)  # validates
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    @classmethod
    def backprop(cls, **overrides: Any) -> PersonalizeSettings:
        """Classic textual inversion: gradients by backprop, t ~ U[0, 1000), Adam eps 1e-8, no subspace."""
        return cls(**{"method": "backprop", "adam_eps": 1e-8, "t_low": 0, "t_high": 1000, "tau": 0, **overrides})


class TokenEmbedding(nn.Module):
    """The learned token: one row of the text encoder's input embedding, kept outside the pipeline."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone().float())


class TextualInversionTask(TrainTask):
    """Learn ``token`` from reference images and one prompt per image (each containing ``token``).

    The token must already be in the tokenizer and the embedding table (``personalize`` adds it); call
    :meth:`close` to remove the hook and restore the modules' flags.
    """

    name = "textual-inversion"

    def __init__(self, pipe: Any, images: Tensor, prompts: list[str], token: str, settings: PersonalizeSettings,
                 evaluate: Callable[[Any], dict[str, float]] | None = None) -> None:
        self.pipe, self.settings, self.token_str, self._evaluate = pipe, settings, token, evaluate
        self.token_id = int(pipe.tokenizer.convert_tokens_to_ids(token))
        table = pipe.text_encoder.get_input_embeddings()
        init_ids = pipe.tokenizer(settings.init_word, add_special_tokens=False).input_ids
        if len(init_ids) != 1:
            raise ValueError(f"init_word {settings.init_word!r} must be one token (it is {len(init_ids)})")
        self.token = TokenEmbedding(table.weight[init_ids[0]])
        self.ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").input_ids
        if not bool((self.ids == self.token_id).any(dim=1).all()):
            raise ValueError(f"every prompt must contain the token {token!r} (e.g. 'a {token} on a green background')")
        pixels = check_images(images)
        self._flags = {name: (m.training, [p.requires_grad for p in m.parameters()])
                       for name, m in self._pipe_modules().items()}
        for m in self._pipe_modules().values():  # eval: no dropout, identical n + 1 forwards; frozen: no grads
            m.eval().requires_grad_(False)
        self._hook = table.register_forward_hook(self._inject)
        try:
            self.latents = _encode(pipe, pixels.to(self.token.weight.device))
        except BaseException:
            self.close()
            raise
        self.subspace = SubspaceProjector(self.token.weight.numel(), settings.tau, settings.nu) if (
            settings.method == "zo" and settings.tau) else None
        if settings.method == "zo" and (n := activation_quantizers(pipe)):
            logger.warning(
                "%d activation quantizers in the pipeline: a zeroth-order difference at mu=%g mostly measures their "
                "rounding jumps, not the loss slope (ZOODiP quantizes weights only); use a weight-only recipe such "
                "as 'w8a16' or the backprop baseline", n, settings.mu)
        self._digest = hashlib.sha256(images.cpu().float().numpy().tobytes() + "|".join(prompts).encode()).hexdigest()

    def _pipe_modules(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.pipe.text_encoder, "unet": self.pipe.unet, "vae": self.pipe.vae}

    def _inject(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        mask = (args[0] == self.token_id)[..., None]
        return torch.where(mask, self.token.weight.to(out.dtype), out)

    def close(self) -> None:
        """Remove the hook; restore the pipeline modules' train flags and ``requires_grad``."""
        self._hook.remove()
        for name, m in self._pipe_modules().items():
            training, grads = self._flags[name]
            m.train(training)
            for p, g in zip(m.parameters(), grads):
                p.requires_grad_(g)

    def config(self) -> dict[str, Any]:
        return {**asdict(self.settings), "token": self.token_str, "data": self._digest}

    def modules(self) -> dict[str, nn.Module]:
        return {"token": self.token}

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [self.token.weight], "lr": self.settings.lr, "eps": self.settings.adam_eps,
                 "betas": (0.9, 0.999), "weight_decay": 0.0, "name": "token"}]

    def to(self, device: torch.device) -> None:
        for m in (self.token, *self._pipe_modules().values()):
            m.to(device)
        self.latents, self.ids = self.latents.to(device), self.ids.to(device)

    def loss(self, latents: Tensor, noise: Tensor, t: Tensor, ids: Tensor) -> Tensor:
        """The fp32 denoising loss of one batch at the current token."""
        noisy = self.pipe.scheduler.add_noise(latents, noise, t)
        cond = self.pipe.text_encoder(ids)[0]
        pred = self.pipe.unet(noisy, t, encoder_hidden_states=cond).sample
        target = noise if self.pipe.scheduler.config.prediction_type == "epsilon" else \
            self.pipe.scheduler.get_velocity(latents, noise, t)
        return F.mse_loss(pred.float(), target.float())

    def draw(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step's batch, noise and timesteps, all from ``generator``."""
        s = self.settings
        idx = torch.randint(0, len(self.latents), (s.batch,), generator=generator)
        noise = torch.randn((s.batch, *self.latents.shape[1:]), generator=generator).to(self.latents.device)
        t = sample_timesteps(s.batch, generator, s.t_low, s.t_high,
                             self.pipe.scheduler.config.num_train_timesteps).to(self.latents.device)
        idx = idx.to(self.latents.device)
        return self.latents[idx], noise, t, self.ids[idx]

    def step(self, step: int, generator: torch.Generator) -> StepOutput:
        batch = self.draw(generator)
        if self.settings.method == "backprop":
            return StepOutput(self.loss(*batch))
        s = self.settings
        removed = self.subspace.removed if self.subspace else 0
        with torch.no_grad():
            loss, (grad,) = estimate([self.token.weight], lambda: self.loss(*batch), generator,
                                     ZOSettings(s.n, s.mu, s.normalize), removed=removed)
            if self.subspace is not None:
                grad = self.subspace.project(grad)
        self.token.weight.grad = grad
        return StepOutput(loss, {"removed_dims": float(removed)})

    def after_update(self, step: int) -> dict[str, float]:
        if self.subspace is not None:
            self.subspace.push(self.token.weight)
            if (step + 1) % self.settings.tau == 0:
                self.subspace.refresh()
        return {}

    def evaluate(self, step: int) -> dict[str, float]:
        if self._evaluate is None:
            return {}
        with torch.no_grad():
            return self._evaluate(self.pipe)

    def state_dict(self) -> dict[str, Any]:
        return {"subspace": self.subspace.state_dict()} if self.subspace is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.subspace is not None:
            self.subspace.load_state_dict(state["subspace"])


def activation_quantizers(pipe: Any) -> int:
    """Quantizers of the pipeline's modules other than weight quantizers (activations, attention sites)."""
    return sum(isinstance(m, Quantizer) and not name.endswith("weight_quantizer")
               for part in ("text_encoder", "unet", "vae") for name, m in getattr(pipe, part).named_modules())


def check_images(images: Any) -> Tensor:
    """Reference images as floats in [0, 1]; raises on anything else (NaN would train a NaN token silently)."""
    if not isinstance(images, Tensor):
        raise TypeError(f"reference images must be a tensor (n, 3, H, W), got {type(images).__name__}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.ndim != 4 or x.shape[1] != 3 or len(x) == 0:
        raise ValueError(f"reference images must be (n, 3, H, W) with n >= 1, got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("reference images hold NaN or inf values; load them again (uint8 or floats in [0, 1])")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("reference images must be uint8 or floats in [0, 1] (not [-1, 1] or [0, 255] floats)")
    return x


@torch.no_grad()
def _encode(pipe: Any, pixels: Tensor) -> Tensor:
    """Latents (posterior mean x scaling factor) of float images in [0, 1] (``check_images``' output)."""
    return pipe.vae.encode(pixels * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
