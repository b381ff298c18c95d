"""The batch runner: resume after a crash, 2 processes equal 1, folder modes and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval import images
from eval.images import RunSpec, Scorers, run
from eval.io import load_images
from eval.manifest import plan
from tests.eval._launch_run import PROMPTS, scorers, spec

HERE = Path(__file__).parent


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def _comparable(metrics: dict) -> dict:
    return {name: {k: v for k, v in m.items() if k != "sec_per_image"} for name, m in metrics.items()}


def _merged(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(sd_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, run(spec(str(sd_folder)), out, scorers())


def test_full_run_writes_images_manifest_metrics_and_report(full_run):
    out, metrics = full_run
    assert set(_pngs(out / "float")) == {it.filename for it in plan(PROMPTS, per_prompt=3, seed=7)}
    records = _merged(out / "float")
    assert [r["key"] for r in records] == [it.key for it in plan(PROMPTS, per_prompt=3, seed=7)]
    assert records[4]["prompt"] == PROMPTS[1] and records[4]["config"]["name"] == "float"
    m = metrics["float"]
    assert m["n_images"] == 9 and m["fid"] > 0 and m["fid_network"] == "random-conv-8-s0" and "clip_score" in m
    assert "psnr" not in m  # the fidelity reference is itself
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["configs"]["float"]["fid"] == pytest.approx(m["fid"]) and "torchmetrics" in saved["versions"]
    report = (out / "report.md").read_text()
    assert "random-conv-8-s0" in report and "| float |" in report
    assert (out / "grid.png").is_file() and (out / "metrics.png").is_file()


def test_resume_after_crash_equals_uninterrupted_run(full_run, sd_folder, tmp_path):
    out_full, metrics_full = full_run
    out = tmp_path / "resumed"
    seen = []

    def crash_on_third(record: dict) -> None:
        seen.append(record["key"])
        if len(seen) == 3:  # mid-batch: batch 2 of 5 has one image on disk, one not
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run(spec(str(sd_folder)), out, scorers(), on_image=crash_on_third)
    assert len(_pngs(out / "float")) == 3 and not (out / "float" / "manifest.jsonl").exists()
    assert run(spec(str(sd_folder)), out, scorers(), max_images=2) is None  # a second, clean stop
    assert len(_pngs(out / "float")) == 5
    # what a kill can leave behind: a half-written manifest line and a temporary image never renamed
    with open(out / "float" / "manifest.r0.jsonl", "a") as f:
        f.write('{"key": "p00002-i002", "pa')
    (out / "float" / ".p00002-i002.png.tmp").write_bytes(b"partial")
    before = {k: v for k, v in _pngs(out / "float").items()}
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "float").glob("*.png")}

    metrics = run(spec(str(sd_folder)), out, scorers())
    assert _comparable(metrics) == _comparable(metrics_full)
    assert _pngs(out / "float") == _pngs(out_full / "float")
    assert all((out / "float" / n).stat().st_mtime_ns == t for n, t in mtimes.items())  # nothing rewritten
    assert {k: _pngs(out / "float")[k] for k in before} == before
    keys = [r["key"] for r in _merged(out / "float")]
    assert keys == [r["key"] for r in _merged(out_full / "float")] and len(set(keys)) == 9
    assert not list((out / "float").glob(".*.tmp"))


def test_rerun_with_other_generation_arguments_is_refused(full_run, sd_folder):
    out, _ = full_run
    other = spec(str(sd_folder))
    other.seed = 8
    with pytest.raises(ValueError, match="different seed"):
        run(other, out, scorers())


def test_rerun_on_other_weights_is_refused(full_run, sd_folder, tmp_path):
    out, _ = full_run
    moved = tmp_path / "run"
    moved.mkdir()
    info = json.loads((out / "run.json").read_text())
    assert info["weights"]  # the run recorded which weights made its images
    (moved / "run.json").write_text(json.dumps({**info, "weights": "0" * 16}))  # as if the model were retrained
    with pytest.raises(ValueError, match="different weights"):
        run(spec(str(sd_folder)), moved, scorers())


@pytest.mark.slow
def test_two_processes_equal_one(full_run, sd_folder, tmp_path):
    out_full, metrics_full = full_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # accelerate 1.15's `launch --cpu` starts one process unless MPI is configured; --multi_gpu on a CPU machine
    # starts two under torchrun and eval.dist asks accelerate for the CPU (gloo) group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(HERE / "_launch_run.py"), str(sd_folder), str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    ranks = {r["rank"] for r in _merged(two / "float")}
    assert ranks == {0, 1}  # both processes generated
    assert _pngs(two / "float") == _pngs(out_full / "float")
    saved = json.loads((two / "metrics.json").read_text())["configs"]
    for key, value in _comparable(metrics_full)["float"].items():
        assert saved["float"][key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key


def test_unknown_model_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*zoo names"):
        run(RunSpec(model="no-such-model", prompts=["a"]), tmp_path / "a", Scorers())
    with pytest.raises(FileNotFoundError, match="pipeline folder not found"):
        run(RunSpec(model=str(tmp_path / "missing" / "pipe"), prompts=["a"]), tmp_path / "b", Scorers())
    (tmp_path / "p.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        images.main(["run", "--model", "x", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "c")])


def test_folder_modes(full_run, tmp_path, monkeypatch, clip_features):
    out, metrics = full_run
    monkeypatch.setattr(images, "clip_from_arg", lambda arg: clip_features)
    res = images.main(["clip", str(out / "float"), "--captions", str(out / "float" / "manifest.jsonl")])
    assert res["clip_score"] == pytest.approx(metrics["float"]["clip_score"], rel=1e-6) and res["n_images"] == 9
    (out / "float" / "junk.png").write_bytes(b"junk")  # counted and skipped
    try:
        res = images.main(["fid", str(out / "float"), "--reference", str(out / "float"), "--cache-dir",
                           str(tmp_path), "--save-stats", str(tmp_path / "s.safetensors")])
        assert abs(res["fid"]) < 1e-6 and res["skipped"] == 1 and res["fid_network"] == "tiny-hf-clip"
        res2 = images.main(["fid", str(out / "float"), "--reference", str(tmp_path / "s.safetensors")])
        assert abs(res2["fid"]) < 1e-6
        with pytest.raises(ValueError, match="--strict"):
            images.main(["fid", str(out / "float"), "--reference", str(out / "float"), "--strict"])
    finally:
        (out / "float" / "junk.png").unlink()
    assert torch.is_tensor(clip_features.text(["a"]))


def test_class_conditional_dit_images_barely_depend_on_batch_size(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 32), latent_channels=4,
                        norm_num_groups=32, sample_size=32)
    pipe = DiTPipeline(dit.eval(), vae.eval(), DDIMScheduler(steps_offset=1, clip_sample=False))
    pipe.save_pretrained(tmp_path / "dit")
    results = []
    for bs in (1, 3):
        spec = RunSpec(model=str(tmp_path / "dit"), classes=[0, 3], per_prompt=2, batch_size=bs,
                       gen=images.GenSpec(steps=2, guidance=2.0))
        metrics = run(spec, tmp_path / f"bs{bs}", Scorers(progress=False))
        assert metrics["float"]["n_images"] == 4
        results.append(load_images(sorted((tmp_path / f"bs{bs}" / "float").glob("*.png"))).int())
    # per-image generators: another batch size changes only float rounding (resume and sharding keep the batches,
    # so there the PNGs are bit-identical, see the tests above)
    assert (results[0] - results[1]).abs().max() <= 1
    assert all((results[0][i] - results[0][j]).abs().float().mean() > 5 for i in range(4) for j in range(i))
