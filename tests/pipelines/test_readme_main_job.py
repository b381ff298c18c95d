"""The README's main-job block is what ``pipelines.quantize_eval`` renders, so it cannot drift silently.

The job writes the block (``--readme README.md``, and ``<out>/readme_block.md`` always); this test re-renders it
from the README's own numbers (columns, rows, formats, setup line and notes must be exactly what the job writes).
When ``runs/quantize_eval/metrics.json`` exists and matches today's defaults and weights (the README's first
command wrote it), the README's numbers must also agree with that run within what differs between CPUs (float
rounding in the sampler: 0.16 dB of PSNR between two x86 machines); the block shows no timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.report import COLUMNS, read_block
from pipelines.quantize_eval import BLOCK, Config, readme_block

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "runs" / "quantize_eval"


def _parse_table(block: str) -> dict[str, dict]:
    rows = [line for line in block.splitlines() if line.startswith("|")]
    headers = [h.strip() for h in rows[0].strip("|").split("|")]
    keys = {header: key for key, header, _, _ in COLUMNS}
    assert headers[0] == "config" and all(h in keys for h in headers[1:]), headers
    table = {}
    for row in rows[2:]:
        name, *cells = [c.strip() for c in row.strip("|").split("|")]
        table[name] = {keys[h]: float(c) for h, c in zip(headers[1:], cells) if c != "-"}
    return table


def _matching_run() -> dict | None:
    """``metrics.json`` of a default main-job run on the shipped weights, if there is one."""
    if not (RUN / "metrics.json").is_file() or not (RUN / "run.json").is_file():
        return None
    from visq import zoo

    payload, cfg = json.loads((RUN / "metrics.json").read_text()), Config()
    run_spec = payload["run"]
    same = (run_spec["model"] == cfg.model and run_spec["configs"] == list(cfg.configs)
            and len(run_spec["prompts"]) == cfg.n_prompts and run_spec["per_prompt"] == cfg.per_prompt
            and json.loads((RUN / "run.json").read_text()).get("weights") == zoo.fingerprint(cfg.model))
    return payload if same else None


def _payload_from_readme(table: dict[str, dict], block: str) -> dict:
    """What metrics.json would hold for the README's numbers under the default Config."""
    cfg = Config()
    n = cfg.n_prompts * cfg.per_prompt
    small_n = "fewer images than feature dimensions" in block
    configs = {name: {**m, "n_images": n, "fid_network": "zoo-judge-clip", "fid_reference_n": cfg.reference_n,
                      "clip_network": "zoo-judge-clip", **({"fid_small_n": True} if small_n else {})}
               for name, m in table.items()}
    run_spec = {"model": cfg.model, "configs": list(table), "prompts": ["p"] * cfg.n_prompts,
                "per_prompt": cfg.per_prompt, "seed": cfg.seed, "gen": {"steps": cfg.steps, "guidance": cfg.guidance},
                "calib": ["c"] * cfg.n_calib}
    return {"configs": configs, "run": run_spec}


# Largest difference between CPUs per column (absolute); sizes and bits are exact on every machine.
CROSS_CPU = {"fid": 0.05, "clip_score": 0.5, "psnr": 0.5, "ssim": 0.002, "lpips": 0.005, "size_mb": 0.0,
             "weight_bits": 0.0}


def test_readme_main_job_block_is_what_the_job_renders():
    block = read_block((ROOT / "README.md").read_text(), BLOCK)
    table = _parse_table(block)
    assert list(table) == list(Config().configs)
    assert block == readme_block(_payload_from_readme(table, block))
    assert "s / image" not in block.split("\n\n")[1]  # no machine timing column in the README


def test_readme_numbers_agree_with_this_machines_run_of_the_first_command():
    payload = _matching_run()
    if payload is None:
        pytest.skip("no default run of `python -m pipelines.quantize_eval` in runs/quantize_eval")
    table = _parse_table(read_block((ROOT / "README.md").read_text(), BLOCK))
    formats = {key: fmt for key, _, fmt, _ in COLUMNS}
    for name, row in table.items():
        for key, value in row.items():
            measured = float(formats[key].format(payload["configs"][name][key]))  # as the README rounds it
            assert abs(measured - value) <= CROSS_CPU[key] + 1e-9, (name, key, measured, value)
