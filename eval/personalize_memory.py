"""Training-step memory of ZOODiP vs backprop textual inversion at Stable Diffusion 1.5 scale (memory and time only).

    python -m eval.personalize_memory             # -> eval/results/personalize_memory.md (+ .json)
    python -m eval.personalize_memory --readme README.md   # also rewrite the README's block

The zoo pipeline is small enough that its weights dominate a training step's memory, so the personalization
benchmark (``eval.bench_personalize``) cannot show what ZOODiP saves on a real model. This builds a pipeline with
SD-1.5's architecture (UNet 860M parameters, a CLIP ViT-L/14-sized text encoder with 77 tokens, SD's VAE) and
RANDOM weights (no hub: the numbers are memory and time, never quality), quantizes its UNet to W8A16 with
``visq.quantize`` (weights only, ZOODiP's setting), and measures one training step of each method, first on the
fake-quant UNet (fp32 weights, as in the zoo runs), then on the same UNet after ``visq.export`` (int8 weight
storage), exactly as ``pipelines.zo_personalize`` does: peak tensor memory traced through
torch's allocator events (``eval.memory.traced_peak_mb``) on top of the pipeline's resident tensors, and seconds
per step, at 512 x 512 (64 x 64 latents), batch 1, the benchmark's headline ZO settings except n (ZOODiP's 2:
memory does not depend on n, time does).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from eval.report import replace_block
from pipelines import zo_personalize as job
from pipelines._cli import parse

OUT = Path(__file__).parent / "results" / "personalize_memory.md"
BLOCK = "personalize-memory"  # the README block this command writes
# the UNet's two states, measured in turn on one pipeline: as visq.quantize leaves it, then after visq.export
STATES = {"fake-quant": "fake-quant (fp32 weights)", "exported": "exported (int8 storage)"}
LABELS = {"zo": "ZOODiP (ZO, forward only)", "backprop": "textual inversion (backprop)"}


@dataclass(frozen=True)
class Config:
    """Every field is a flag."""

    resolution: int = 512  # image side in pixels; latents are resolution / 8
    recipe: str = "w8a16"  # UNet quantization (ZOODiP: weights only)
    zo_n: int = 2  # ZO perturbations per step (ZOODiP's 2): time grows with n + 1 forwards, memory does not
    steps: int = 1  # traced (and, before them, timed) steps per method, after one warm-up step
    threads: int = 2  # torch CPU threads
    seed: int = 0  # random weights and reference image
    readme: str = ""  # also rewrite this README's personalization-memory block


def sd15_pipeline(resolution: int, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` with SD-1.5's architecture and random weights (the zoo's CLIP tokenizer)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from visq import zoo

    torch.manual_seed(seed)
    tokenizer = zoo.load("shapes-sd").tokenizer
    tokenizer.model_max_length = 77
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768))
    unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=resolution)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def measure(cfg: Config) -> dict[str, Any]:
    """Parameter counts and, per UNet state and method (``"<state>/<method>"``), resident MiB, step peak MiB and
    seconds per step."""
    import visq
    from visq import CalibSet, Call

    torch.set_num_threads(cfg.threads)
    pipe = sd15_pipeline(cfg.resolution, cfg.seed)
    side = cfg.resolution // 8  # weight-only recipe: one denoiser call satisfies the calibration interface
    call = Call((torch.randn(1, 4, side, side), torch.tensor(500), torch.randn(1, 77, 768)), timestep=500.0)
    visq.quantize(pipe.unet, cfg.recipe, calib=CalibSet([call]), progress=False)
    image = torch.randint(0, 256, (1, 3, cfg.resolution, cfg.resolution), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(cfg.seed))
    data = {"refs": image, "ref_prompts": [f"a photo of {job.TOKEN}"]}
    out: dict[str, Any] = {"unet_params_m": sum(p.numel() for p in pipe.unet.parameters()) / 1e6,
                           "text_encoder_params_m": sum(p.numel() for p in pipe.text_encoder.parameters()) / 1e6}
    for state in STATES:
        if state == "exported":
            visq.export(pipe.unet)
        for method in LABELS:
            settings = job.Config(method=method, recipe=cfg.recipe, memory_steps=cfg.steps, zo_n=cfg.zo_n,
                                  zo_tau=0, zo_t_low=0, zo_t_high=1000, schedule="cosine", lr=5e-3)
            out[f"{state}/{method}"] = job.step_memory(pipe, data, settings)
            logging.info("%s / %s: %s", state, method, out[f"{state}/{method}"])
    return out


def table(cfg: Config, result: dict[str, Any]) -> list[str]:
    """The memory table and its ratio lines (the results file's body and the README block)."""
    lines = ["| UNet weights | method | resident MiB (pipeline tensors) | step peak MiB | peak MiB (resident + step) "
             "| s / step |", "|---|---|---|---|---|---|"]
    ratios = [""]
    for state, weights in STATES.items():
        for key, label in LABELS.items():
            r = result[f"{state}/{key}"]
            lines.append(f"| {weights} | {label} | {r['resident_mb']:.0f} | {r['step_peak_mb']:.0f} | "
                         f"{r['resident_mb'] + r['step_peak_mb']:.0f} | {r['sec_per_step']:.1f} |")
        zo, bp = result[f"{state}/zo"], result[f"{state}/backprop"]
        total = (bp["resident_mb"] + bp["step_peak_mb"]) / (zo["resident_mb"] + zo["step_peak_mb"])
        ratios.append(f"- {weights}: backprop / ZO peak memory {total:.2f}x with the pipeline's tensors, "
                      f"{bp['step_peak_mb'] / zo['step_peak_mb']:.1f}x for the step alone (issue goal: at least 3x "
                      "less peak memory).")
    return lines + ratios


def render(cfg: Config, result: dict[str, Any], command: str) -> str:
    """The markdown results file."""
    lines = [
        "# Training-step memory at SD-1.5 scale: ZOODiP vs backprop textual inversion", "",
        f"Command: `{command}` (seed {cfg.seed}; {cfg.threads} threads on a shared 2-core CPU, torch "
        f"{torch.__version__}, {platform.machine()}).", "",
        f"Pipeline: SD-1.5's architecture with RANDOM weights (UNet {result['unet_params_m']:.0f}M parameters, "
        f"text encoder {result['text_encoder_params_m']:.0f}M, SD's VAE; `eval.personalize_memory.sd15_pipeline`), "
        f"UNet quantized `{cfg.recipe}` by `visq.quantize`, measured twice: as quantized (fake-quant fp32 weights, "
        "not frozen: the state of the zoo runs), then after `visq.export` (every linear and convolution holds int8 "
        "codes and one scale per channel, dequantized per call; text encoder and VAE stay fp32). "
        f"{cfg.resolution} x {cfg.resolution} images ({cfg.resolution // 8} x {cfg.resolution // 8} "
        "latents), batch 1, 77 tokens. Memory and time only: random weights say nothing about quality. Each method: "
        f"one warm-up step, then {cfg.steps} timed and {cfg.steps} traced step(s) of "
        "`pipelines.zo_personalize.step_memory` (the function behind the zoo table in `personalize.md`). ZO: n = "
        f"{cfg.zo_n} perturbations, run one after another, so its memory does not grow with n; its time does. Both "
        "methods train the same way on either state: autograd reaches the token through the dequantized weights.",
        "",
        *table(cfg, result)]
    return "\n".join(lines) + "\n"


def readme_block(cfg: Config, result: dict[str, Any], command: str) -> str:
    """The README's block: the table under its command and setup."""
    return "\n".join([f"`{command}` (SD-1.5 architecture, random weights, {cfg.recipe} UNet, {cfg.resolution} px, "
                      "batch 1, the traced step of each method on the same pipeline; details in "
                      "`eval/results/personalize_memory.md`):", "", *table(cfg, result)])


def load_results() -> tuple[Config, dict[str, Any], str]:
    """The committed measurement: its config, result and command."""
    data = json.loads(OUT.with_suffix(".json").read_text())
    cfg = Config(**data["config"])
    return cfg, data["result"], data["command"]


def main(cfg: Config = Config(), command: str = "python -m eval.personalize_memory") -> dict[str, Any]:
    """Measure both methods, write ``personalize_memory.md`` and its JSON beside it (and the README block when
    ``cfg.readme`` names it); returns the result."""
    result = measure(cfg)
    setup = {k: v for k, v in asdict(cfg).items() if k != "readme"}
    OUT.with_suffix(".json").write_text(json.dumps({"config": setup, "command": command, "result": result}, indent=1))
    OUT.write_text(render(cfg, result, command))
    if cfg.readme:
        path = Path(cfg.readme)
        path.write_text(replace_block(path.read_text(), BLOCK, readme_block(cfg, result, command)))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main(parse(Config, description=__doc__), " ".join(["python -m eval.personalize_memory", *sys.argv[1:]]))
