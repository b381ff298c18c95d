from eval.personalize_memory import Config, render, table


def _result(zo_step: float, bp_step: float) -> dict:
    cell = {"resident_mb": 1000.0, "sec_per_step": 2.0}
    exported = {"resident_mb": 250.0, "sec_per_step": 2.0}
    return {"unet_params_m": 860.0, "text_encoder_params_m": 123.0,
            "fake-quant/zo": {**cell, "step_peak_mb": zo_step},
            "fake-quant/backprop": {**cell, "step_peak_mb": bp_step},
            "exported/zo": {**exported, "step_peak_mb": zo_step},
            "exported/backprop": {**exported, "step_peak_mb": bp_step}}


def test_ratios_count_the_pipeline_tensors_once_per_method():
    lines = table(Config(), _result(zo_step=500.0, bp_step=5000.0))
    # fake-quant: (1000 + 5000) / (1000 + 500) = 4.00x with the model; 5000 / 500 = 10.0x for the step
    assert lines[-2].startswith("- fake-quant (fp32 weights): backprop / ZO peak memory 4.00x with the pipeline's "
                                "tensors, 10.0x for the step")
    # exported: (250 + 5000) / (250 + 500) = 7.00x
    assert lines[-1].startswith("- exported (int8 storage): backprop / ZO peak memory 7.00x with the pipeline's")
    assert "| fake-quant (fp32 weights) | ZOODiP (ZO, forward only) | 1000 | 500 | 1500 | 2.0 |" in lines
    text = render(Config(), _result(500.0, 5000.0), "python -m eval.personalize_memory")
    assert "RANDOM weights" in text and "512 x 512" in text and "64 x 64 latents" in text


def test_readme_block_is_the_committed_measurement():
    from pathlib import Path

    from eval.personalize_memory import BLOCK, load_results, readme_block
    from eval.report import read_block

    cfg, result, command = load_results()
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert read_block(readme, BLOCK) == readme_block(cfg, result, command).strip()
