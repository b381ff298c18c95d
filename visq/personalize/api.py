"""``visq.personalize``: teach a (quantized) text-to-image pipeline a new token from a few images.

    import visq
    result = visq.personalize(pipe, images, token="<new>", prompts=[...], steps=1000, out_dir="runs/heart")
    pipe("a <new> on a green background, top left")         # the token is loaded afterwards (load=True)

The run streams ``metrics.jsonl``, checkpoints every ``checkpoint_every`` steps (rerun the same call to resume)
and writes ``learned_embeds.safetensors`` there, the format ``pipe.load_textual_inversion`` reads.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from visq.personalize.textual_inversion import PersonalizeSettings, TextualInversionTask, check_images
from visq.train import TrainResult, TrainSettings, fit

logger = logging.getLogger(__name__)

EMBEDDING_FILE = "learned_embeds.safetensors"


@dataclass
class PersonalizeResult:
    """The learned token: ``embedding`` (d,), the loop's ``train`` result, and the saved file (if any)."""

    token: str
    embedding: Tensor
    train: TrainResult
    path: Path | None


def save_embedding(path: str | Path, token: str, embedding: Tensor) -> Path:
    """Write ``{token: embedding (1, d)}`` as safetensors, as diffusers' textual-inversion script saves it."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({token: embedding.detach().float().cpu().reshape(1, -1).contiguous()}, str(tmp))
    tmp.replace(path)
    return path


@contextmanager
def token_added(pipe: Any, token: str) -> Iterator[None]:
    """Inside the block, the pipeline's tokenizer knows ``token`` and its embedding table has a row for it; on exit
    the original tokenizer and embedding module are put back (untouched objects, so nothing is left behind).

    The row's value does not matter: the task's hook writes the learned token there. The block works on a copy of
    the tokenizer because diffusers' ``unload_textual_inversion`` re-parses the whole tokenizer (many seconds).
    """
    if token in pipe.tokenizer.get_vocab():
        raise ValueError(f"token {token!r} is already in the tokenizer; pick a new one (e.g. '<concept>') or load "
                         "a fresh pipeline")
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    table, vocab_size = encoder.get_input_embeddings(), encoder.config.vocab_size
    weight, rows = table.weight.data, table.num_embeddings
    pipe.tokenizer = copy.deepcopy(tokenizer)
    try:
        # transformers resizes by giving the module a new, larger tensor; the original tensor is put back on exit
        pipe.load_textual_inversion({token: weight[0].clone()}, token=token)
        yield
    finally:
        pipe.tokenizer = tokenizer
        table.weight.data, table.num_embeddings = weight, rows
        encoder.set_input_embeddings(table)
        encoder.config.vocab_size = vocab_size


_PARTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


def _check_pipeline(pipe: Any) -> None:
    missing = [part for part in _PARTS if getattr(pipe, part, None) is None]
    if missing:
        raise TypeError(f"personalize needs a diffusers text-to-image pipeline with {', '.join(_PARTS)}; "
                        f"{type(pipe).__name__} has no {', '.join(missing)}")


class _SavingTask(TextualInversionTask):
    """Writes the embedding file every ``save_every`` steps (the loop's checkpoint holds the full run state)."""

    def __init__(self, *args: Any, save_path: Path | None = None, save_every: int = 100, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_path, self.save_every = save_path, save_every

    def after_update(self, step: int) -> dict[str, float]:
        metrics = super().after_update(step)
        if self.save_path is not None and (step + 1) % self.save_every == 0:
            save_embedding(self.save_path, self.token_str, self.token.weight)
        return metrics


def personalize(pipe: Any, images: Tensor, token: str = "<new>", prompts: list[str] | None = None, *,
                settings: PersonalizeSettings | None = None, steps: int = 1000, out_dir: str | Path | None = None,
                seed: int = 0, checkpoint_every: int = 100, log_every: int = 10, eval_every: int = 0,
                evaluate: Any = None, load: bool = True, progress: bool = True) -> PersonalizeResult:
    """Learn the embedding of a new ``token`` from reference ``images`` with forward passes only (ZOODiP) or,
    with ``settings=PersonalizeSettings.backprop()``, by backpropagation.

    Args:
        pipe: a diffusers text-to-image pipeline (``tokenizer``, ``text_encoder``, ``unet``, ``vae``, ``scheduler``),
            quantized or not. Its own parameters are never changed.
        images: reference images (n, 3, H, W), uint8 or floats in [0, 1], at the pipeline's resolution.
        token: the new token; it must not be in the tokenizer yet.
        prompts: one prompt per image containing ``token``; default ``"a {token}"``.
        settings: method and hyper-parameters (defaults: ZOODiP).
        steps: optimizer steps.
        out_dir: run folder (checkpoints, metrics, ``learned_embeds.safetensors``); rerun to resume.
        seed: seeds every step (batch, noise, timesteps, directions).
        checkpoint_every: steps between checkpoints and embedding files.
        log_every: steps between metrics records.
        eval_every: steps between ``evaluate(pipe)`` calls (0: at the end only, when ``evaluate`` is given).
        evaluate: optional callable ``pipe -> dict of floats`` run with the current token in place.
        load: load the learned token into ``pipe`` afterwards (as ``pipe.load_textual_inversion`` would).
        progress: show a progress bar.
    """
    settings = settings or PersonalizeSettings()
    if not isinstance(settings, PersonalizeSettings):
        raise TypeError(f"settings must be a visq.PersonalizeSettings, got {type(settings).__name__}")
    _check_pipeline(pipe)
    check_images(images)
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"token must be a non-empty string such as '<concept>', got {token!r}")
    prompts = prompts if prompts is not None else [f"a {token}"] * len(images)
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be a list of strings, one per image (got {prompts!r:.80})")
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images and {len(prompts)} prompts; give one prompt per image")
    out = Path(out_dir) if out_dir is not None else None
    path = out / EMBEDDING_FILE if out is not None else None
    train_settings = TrainSettings(  # validated before the pipeline changes
        steps=steps, out_dir=str(out) if out else None, seed=seed, optimizer="adam", schedule=settings.schedule,
        checkpoint_every=checkpoint_every, log_every=log_every, eval_every=eval_every, progress=progress,
        desc=f"personalize {token} ({settings.method})")
    with token_added(pipe, token):
        task = _SavingTask(pipe, images, prompts, token, settings, evaluate=evaluate, save_path=path,
                           save_every=checkpoint_every)
        try:
            train = fit(task, train_settings)
        finally:
            task.close()
        embedding = task.token.weight.detach().cpu().clone()
    if path is not None:
        save_embedding(path, token, embedding)
    if load:
        with torch.no_grad():
            pipe.load_textual_inversion({token: embedding.to(pipe.text_encoder.dtype)}, token=token)
    return PersonalizeResult(token, embedding, train, path)
