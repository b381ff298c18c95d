"""pipelines.zo_personalize's data and convergence helpers, and the benchmark's table (no model needed)."""

import dataclasses
import json
import re

import pytest

from eval import bench_personalize as bench
from pipelines import zo_personalize as job


def test_concept_data_holds_out_prompts():
    data = job.concept_data(job.Config(concept="heart", n_refs=6, n_prompts=8))
    assert data["refs"].shape == (6, 3, 32, 32) and len(data["prompts"]) == len(data["words"]) == 8
    assert all(p.startswith(f"a {job.TOKEN} on ") for p in data["ref_prompts"] + data["prompts"])
    tails = {p.split(" on ", 1)[1] for p in data["ref_prompts"]}
    assert not tails & {p.split(" on ", 1)[1] for p in data["prompts"]}  # no reference background + position
    assert all(w == p.replace(job.TOKEN, "large red heart") for w, p in zip(data["words"], data["prompts"]))


def test_steps_to_converge():
    curve = [{"step": 0, "clip_i": 0.5}, {"step": 100, "clip_i": 0.6}, {"step": 200, "clip_i": 0.696},
             {"step": 300, "clip_i": 0.7}]
    assert job.steps_to_converge(curve) == 200
    assert job.steps_to_converge([{"step": 0, "clip_i": 0.5}, {"step": 100, "clip_i": 0.4}]) is None


def test_bench_table_and_goals():
    def cell(ci, ct, peak, memory=True):
        out = {"reference": {"clip_i": 0.9, "clip_t": 0.3}, "final": {"clip_i": ci, "clip_t": ct},
               "peak_rss_mb": 900.0, "config": {"steps": 300}}
        if memory:  # a trained cell
            out.update(memory={"resident_mb": 10.0, "step_peak_mb": peak, "sec_per_step": 0.5}, steps_to_converge=200)
        return out

    cells = {"zo": cell(0.76, 0.3, 2.0), "backprop": cell(0.8, 0.3, 20.0), "none": cell(0.6, 0.3, 0, False)}
    results = {"heart": cells}
    lines = bench.table(bench.Config(), results)
    assert lines[2].startswith("| heart | real held-out images (ceiling) | - | 0.900 |")
    assert lines[3].startswith("| heart | ZOODiP (ZO, forward only) | 300 | 0.760 | 0.300 |")
    assert "| 12.0 | 2.00 | 900 | 0.500 | 200 |" in lines[3]
    assert lines[5].endswith("| - | 0.600 | 0.300 | - | - | 900 | - | - |")
    assert lines[-1] == ("- heart: ZO / backprop CLIP-I 0.950, CLIP-T 1.000 (goal >= 0.95); memory backprop / ZO "
                         "2.50x with the model's tensors, 10.0x for the step alone (goal >= 3x); ZO - no token "
                         "CLIP-I +0.160")


def test_finished_cell_is_reused_only_with_the_same_settings(tmp_path):
    cfg = job.Config(out=str(tmp_path), steps=300)
    cell = tmp_path / "heart" / "zo"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "final": {"clip_i": 0.5}}))
    moved = dataclasses.replace(cfg, progress=False)  # where and how it is shown do not change a result
    assert job.main(moved)["final"] == {"clip_i": 0.5}
    with pytest.raises(ValueError, match="other settings.*'steps': \\(300, 400\\)"):
        job.main(dataclasses.replace(cfg, steps=400))
    with pytest.raises(ValueError, match="recipe"):
        job.main(dataclasses.replace(cfg, recipe="w8a8"))


def test_bench_cells_and_command():
    cfg = bench.Config(steps=300, zo_steps=2000, out="runs/x")
    assert bench.cell_root(cfg, "zo") == bench.Path("runs/x/w8a16_2000steps_n2_tau128_t500-900")
    assert bench.cell_root(cfg, "backprop") == bench.Path("runs/x/w8a16_300steps")
    args = bench._cell_args(cfg, "heart", "zo")
    assert args[args.index("--steps") + 1] == "2000"
    assert args[args.index("--out") + 1] == "runs/x/w8a16_2000steps_n2_tau128_t500-900"
    assert bench.command(cfg).endswith("--steps 300 --zo-steps 2000 --lr 0.005")
    assert "--zo-steps" not in bench.command(bench.Config())
    tuned = bench.Config(zo_n=8, zo_tau=0, zo_t_low=0, zo_t_high=1000, out="runs/x")
    assert bench.cell_root(tuned, "zo") == bench.Path("runs/x/w8a16_300steps_n8_tau0_t0-1000")
    assert bench.command(tuned).endswith("--lr 0.005 --zo-n 8 --zo-tau 0 --zo-t-low 0 --zo-t-high 1000")
    assert "--zo-n" not in bench._cell_args(tuned, "heart", "backprop")  # backprop cells are shared across ZO runs
    zo_args = bench._cell_args(tuned, "heart", "zo")
    assert zo_args[zo_args.index("--zo-tau") + 1] == "0"
    settings = job._settings(job.Config(zo_n=8, zo_tau=0, zo_t_low=0, zo_t_high=1000))
    assert (settings.n, settings.tau, settings.t_low, settings.t_high) == (8, 0, 0, 1000)
    assert job._settings(job.Config(method="backprop", zo_n=8)).n == 2  # ZO fields never reach backprop
    cosine = bench.Config(schedule="cosine", out="runs/x")
    assert bench.cell_root(cosine, "backprop") == bench.Path("runs/x/w8a16_300steps_cosine")
    assert bench.command(cosine).endswith("--lr 0.005 --schedule cosine")
    assert job._settings(job.Config(method="backprop", schedule="cosine")).schedule == "cosine"


def test_bench_readme_block_is_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.MARK_START}\nold\n{bench.MARK_END}\nrest\n")
    cell = {"reference": {"clip_i": 0.9, "clip_t": 0.3}, "final": {"clip_i": 0.6, "clip_t": 0.3}, "peak_rss_mb": 1.0}
    cfg = bench.Config(readme=str(readme))
    bench.write_readme(cfg, {"heart": {"none": cell}})
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{bench.MARK_END}\nrest\n") and "old" not in text
    assert f"`{bench.command(cfg)}`" in text and "\n".join(bench.table(cfg, {"heart": {"none": cell}})) in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="lacks the markers"):
        bench.write_readme(cfg, {"heart": {"none": cell}})


def test_peak_rss_is_read_before_the_traced_steps(tmp_path, monkeypatch):
    """The profiler's event trace of the traced steps stays resident (ZO's n + 1 forwards per step: 9x the events of
    a backprop step), so the cell reads its peak RSS first and traces the steps last, on a fresh pipeline."""
    import visq.train

    order = []
    monkeypatch.setattr(visq.train, "peak_memory_mb", lambda: order.append("rss") or 1.0)

    def traced(pipe, data, cfg):
        assert job.TOKEN not in pipe.tokenizer.get_vocab()  # a fresh pipeline, not the one holding the learned token
        order.append("traced")
        return {"sec_per_step": 0.1, "step_peak_mb": 1.0, "resident_mb": 1.0}

    monkeypatch.setattr(job, "step_memory", traced)
    cfg = job.Config(out=str(tmp_path), steps=1, n_refs=1, n_prompts=1, n_calib=1, eval_every=0, progress=False)
    result = job.main(cfg)
    assert order == ["rss", "traced"] and result["peak_rss_mb"] == 1.0 and result["memory"]["step_peak_mb"] == 1.0


@pytest.mark.parametrize("flags, match", [
    (["--lr", "-1"], r"lr must be > 0 \(or 0 for the method's default\), got -1.0"),
    (["--zo-n", "0"], "zo_n .* must be >= 1"),
    (["--zo-tau", "-2"], "zo_tau must be >= 0"),
    (["--checkpoint-every", "0"], "checkpoint_every must be >= 1"),
    (["--concept", "star"], "unknown concept 'star'"),
])
def test_bad_flags_exit_2_with_the_reason(flags, match, capsys):
    from pipelines._cli import parse

    with pytest.raises(SystemExit) as err:
        parse(job.Config, flags)
    assert err.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_checkpoint_interval_is_a_flag_that_does_not_change_a_result():
    from pipelines._cli import parse

    cfg = parse(job.Config, ["--checkpoint-every", "5"])
    assert cfg.checkpoint_every == 5 and "checkpoint_every" in job._IGNORED
