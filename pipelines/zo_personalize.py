"""Personalize the quantized zoo text-to-image pipeline with a concept it never saw, and judge the result.

    python -m pipelines.zo_personalize                                  # ZOODiP on a red heart, W8A16 shapes-sd
    python -m pipelines.zo_personalize --method backprop                # classic textual inversion, same pipeline
    python -m pipelines.zo_personalize --method none                    # no token: the concept's name in words

The default recipe is W8A16, ZOODiP's setting (INT8 weights, float activations). The concept is a held-out
visq-shapes shape (``visq.zoo.shapes.NOVEL_SHAPES``) in one colour, large. ``n_refs`` reference images (held-out
split, seed 0) each get their own caption with the concept's words replaced by the token. Held-out prompts (seed 1,
background + position pairs not among the references) are generated from once per prompt (DDIM 20 steps,
guidance 4, image i seeded ``seed + i``) and judged with the judge CLIP:

- CLIP-I: mean cosine between each generated image and each reference image;
- CLIP-T: mean cosine between each generated image and its prompt with the token written as the concept's words.

Memory: the peak tensor memory of ``memory_steps`` training steps (optimizer included), traced through torch's
allocator events (``eval.memory.traced_peak_mb``, the same for every method), plus the pipeline's resident
tensors, and the process's peak RSS over loading, training and scoring (read before the traced steps, which run
last on a fresh copy of the pipeline: the profiler's event trace stays resident and would count in the RSS).
``out/<concept>/<method>/result.json`` holds everything; rerunning resumes the training run and skips finished
results (measured with the same settings; other settings are an error).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines._cli import parse

log = logging.getLogger(__name__)

# concept -> (colour, initialisation word): both methods start from the same word
CONCEPTS: dict[str, tuple[str, str]] = {"heart": ("red", "triangle"), "ring": ("orange", "circle")}
METHODS = ("zo", "backprop", "none")
TOKEN = "<new>"


@dataclass(frozen=True)
class Config:
    """The embedded default; every field is a command-line flag."""

    concept: str = "heart"  # a key of CONCEPTS
    method: str = "zo"  # zo | backprop | none
    # quantization of shapes-sd's UNet (visq.quantize); ZOODiP quantizes weights only: with activation quantizers
    # a difference at mu = 1e-3 measures rounding jumps, not the loss slope
    recipe: str = "w8a16"
    n_calib: int = 16  # training-split captions used to calibrate
    steps: int = 400
    batch: int = 1
    lr: float = 0.0  # 0: the method's default (PersonalizeSettings)
    schedule: str = "constant"  # learning-rate schedule of both methods: constant (ZOODiP), cosine or linear
    zo_n: int = -1  # ZO only: perturbations per step (-1: ZOODiP's 2)
    zo_tau: int = -1  # ZO only: Subspace Gradient period (-1: ZOODiP's 128; 0: off)
    zo_t_low: int = -1  # ZO only: timesteps drawn from [zo_t_low, zo_t_high) (-1: PUTS, 500)
    zo_t_high: int = -1  # ZO only (-1: PUTS, 900)
    n_refs: int = 6  # reference images of the concept
    n_prompts: int = 8  # held-out prompts that use the token
    eval_every: int = 100  # CLIP-I / CLIP-T during training (for steps-to-converge)
    checkpoint_every: int = 20  # steps between checkpoints of the training run (the last step always checkpoints)
    memory_steps: int = 4  # training steps traced for the peak tensor memory
    seed: int = 0
    out: str = "runs/zo_personalize"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.concept not in CONCEPTS:
            raise ValueError(f"unknown concept {self.concept!r}; choose one of {list(CONCEPTS)}")
        if self.lr < 0 or self.lr != self.lr:
            raise ValueError(f"lr must be > 0 (or 0 for the method's default), got {self.lr}")
        for name in ("zo_n", "zo_tau", "zo_t_low", "zo_t_high"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name} must be >= 0 (or -1 for ZOODiP's default), got {getattr(self, name)}")
        if self.zo_n == 0:
            raise ValueError("zo_n (perturbations per step) must be >= 1 (or -1 for ZOODiP's 2)")
        for name in ("n_calib", "steps", "batch", "n_refs", "n_prompts", "memory_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.seed < 0:
            raise ValueError(f"eval_every and seed must be >= 0, got {self.eval_every} and {self.seed}")


def concept_data(cfg: Config) -> dict[str, Any]:
    """References, their token captions, and the held-out prompts (token and words forms) of ``cfg.concept``."""
    from visq.zoo import shapes

    colour, _ = CONCEPTS[cfg.concept]  # Config refuses an unknown concept
    words = f"large {colour} {cfg.concept}"
    refs = shapes.generate_novel(cfg.concept, cfg.n_refs, 0, colour)
    seen = set(zip(refs.background.tolist(), refs.position.tolist()))
    pool = shapes.generate_novel(cfg.concept, 16 * cfg.n_prompts, 1, colour)
    keep, pairs = [], set()
    for i, pair in enumerate(zip(pool.background.tolist(), pool.position.tolist())):
        if pair not in seen and pair not in pairs:
            keep.append(i)
            pairs.add(pair)
    keep = keep[: cfg.n_prompts]
    held_words = [pool.captions[i] for i in keep]
    return {"refs": refs.images, "ref_prompts": [c.replace(words, TOKEN) for c in refs.captions],
            "prompts": [c.replace(words, TOKEN) for c in held_words], "words": held_words,
            "real": pool.images[keep]}


def judge_scores(images: torch.Tensor, refs: torch.Tensor, words: list[str], judge: Any) -> dict[str, float]:
    """CLIP-I (generated vs references) and CLIP-T (generated vs its prompt in words), judge-CLIP cosines."""
    from visq.zoo import clip as zclip

    img = zclip.image_features(judge.model, images)
    ref = zclip.image_features(judge.model, refs)
    txt = zclip.text_features(judge.model, judge.tokenizer, words)
    return {"clip_i": float((img @ ref.T).mean()), "clip_t": float((img * txt).sum(-1).mean())}


def _pipeline(cfg: Config):
    import visq
    from visq import zoo
    from visq.zoo import shapes

    pipe = zoo.load("shapes-sd")
    calib = shapes.generate(cfg.n_calib, 0, "train").captions
    return visq.quantize(pipe, cfg.recipe, calib=calib, calib_options={"num_inference_steps": 10}, progress=False)


def _settings(cfg: Config):
    from visq.personalize import PersonalizeSettings

    extra = {"batch": cfg.batch, "init_word": CONCEPTS[cfg.concept][1], "schedule": cfg.schedule,
             **({"lr": cfg.lr} if cfg.lr > 0 else {})}
    if cfg.method != "zo":
        return PersonalizeSettings.backprop(**extra)
    zo = {"n": cfg.zo_n, "tau": cfg.zo_tau, "t_low": cfg.zo_t_low, "t_high": cfg.zo_t_high}
    return PersonalizeSettings(**extra, **{k: v for k, v in zo.items() if v >= 0})


def step_memory(pipe: Any, data: dict[str, Any], cfg: Config) -> dict[str, float]:
    """Seconds per step and peak traced tensor memory of ``cfg.memory_steps`` training steps (after one warm-up)."""
    from eval.memory import resident_mb, traced_peak_mb
    from visq.personalize import TextualInversionTask
    from visq.personalize.api import token_added

    with token_added(pipe, TOKEN):
        task = TextualInversionTask(pipe, data["refs"], data["ref_prompts"], TOKEN, _settings(cfg))
        opt = torch.optim.Adam(task.param_groups())

        def steps(k: int) -> None:
            for i in range(k):
                out = task.step(i, torch.Generator().manual_seed(i))
                if out.loss.requires_grad:
                    out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        try:
            steps(1)
            t0 = time.perf_counter()
            steps(cfg.memory_steps)
            seconds = (time.perf_counter() - t0) / cfg.memory_steps
            peak = traced_peak_mb(lambda: steps(cfg.memory_steps))
        finally:
            task.close()
    return {"sec_per_step": seconds, "step_peak_mb": peak,
            "resident_mb": resident_mb(pipe.text_encoder, pipe.unet, pipe.vae)}


def main(cfg: Config = Config()) -> dict[str, Any]:
    """Run one (concept, method) cell; returns and writes its ``result.json``."""
    from visq.personalize import personalize
    from visq.train import peak_memory_mb, read_metrics
    from visq.zoo import judge as zjudge
    from visq.zoo import load

    out = Path(cfg.out) / cfg.concept / cfg.method
    out.mkdir(parents=True, exist_ok=True)
    if (out / "result.json").exists():
        return _finished(out / "result.json", cfg)
    torch.manual_seed(cfg.seed)
    pipe, data, judge = _pipeline(cfg), concept_data(cfg), load("judge-clip")

    def score(p: Any) -> dict[str, float]:
        prompts = data["words"] if cfg.method == "none" else data["prompts"]
        images = zjudge.generate_sd(p, prompts, seed=cfg.seed)
        return {**judge_scores(images, data["refs"], data["words"], judge), "_images": images}

    result: dict[str, Any] = {"config": asdict(cfg), "reference": judge_scores(data["real"], data["refs"],
                                                                               data["words"], judge)}
    if cfg.method != "none":
        init = _initial_scores(pipe, data, cfg, score)
        t0 = time.time()
        run = personalize(pipe, data["refs"], TOKEN, data["ref_prompts"], settings=_settings(cfg), steps=cfg.steps,
                          out_dir=out / "run", seed=cfg.seed, eval_every=cfg.eval_every, progress=cfg.progress,
                          checkpoint_every=cfg.checkpoint_every,
                          evaluate=lambda p: {k: v for k, v in score(p).items() if not k.startswith("_")})
        curve = [{"step": 0, **init}] + [{k: m[k] for k in ("step", "clip_i", "clip_t", "loss")}
                                         for m in read_metrics(out / "run") if "clip_i" in m]
        result.update(train_seconds=time.time() - t0, curve=curve, steps_to_converge=steps_to_converge(curve),
                      embedding=str(run.path))
    final = score(pipe)
    torch.save(final.pop("_images"), out / "images.pt")
    result.update(final=final, peak_rss_mb=peak_memory_mb())
    if cfg.method != "none":  # last: the profiler's event trace stays resident (ZO's 9x more events: +0.5 GB RSS)
        del pipe
        result["memory"] = step_memory(_pipeline(cfg), data, cfg)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    log.info("%s / %s: %s", cfg.concept, cfg.method, final)
    return result


# fields that do not change a cell's result
_IGNORED = ("out", "progress", "checkpoint_every")


def _finished(file: Path, cfg: Config) -> dict[str, Any]:
    """The finished cell's result, if it was measured with ``cfg``'s settings."""
    result = json.loads(file.read_text())
    stored = {k: v for k, v in {**asdict(Config()), **result["config"]}.items() if k not in _IGNORED}  # new fields
    wanted = {k: v for k, v in asdict(cfg).items() if k not in _IGNORED}
    if stored != wanted:
        diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        raise ValueError(f"{file} was measured with other settings (stored, wanted): {diff}; pass another --out "
                         "or delete that folder to measure again")
    return result


def _initial_scores(pipe: Any, data: dict[str, Any], cfg: Config, score: Any) -> dict[str, float]:
    """Scores of the initial token (the init word's embedding), cached in the cell's folder."""
    from visq.personalize.api import token_added

    file = Path(cfg.out) / cfg.concept / cfg.method / "init.json"
    if file.exists():
        return json.loads(file.read_text())
    init_id = pipe.tokenizer(CONCEPTS[cfg.concept][1], add_special_tokens=False).input_ids[0]
    with token_added(pipe, TOKEN), torch.no_grad():
        table = pipe.text_encoder.get_input_embeddings().weight  # the table with the token's row (the last)
        table[-1] = table[init_id]
        scores = {k: v for k, v in score(pipe).items() if not k.startswith("_")}
    file.write_text(json.dumps(scores))
    return scores


def steps_to_converge(curve: list[dict[str, float]], key: str = "clip_i", frac: float = 0.95) -> int | None:
    """First evaluated step reaching ``frac`` of the run's final gain in ``key`` over step 0 (None: no gain)."""
    gain = curve[-1][key] - curve[0][key]
    if gain <= 0:
        return None
    return next(c["step"] for c in curve if c[key] - curve[0][key] >= frac * gain)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps({k: v for k, v in main(parse(Config, description=__doc__)).items() if k != "curve"}, indent=1))
