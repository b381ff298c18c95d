from eval.bench_mixed import Config, render


def test_tables_report_the_share_of_the_gap_closed():
    vit = {"float": {"top1": 91.0}, "doctor_seconds": 10.0,
           "w8a8@minmax": {"top1": 90.0, "weight_bits": 8.0, "activation_bits": 8.0},
           "w4a4@minmax": {"top1": 80.0, "weight_bits": 4.0, "activation_bits": 4.0},
           "mixed-w4a4@minmax": {"top1": 87.0, "weight_bits": 3.98, "activation_bits": 4.0},
           "mixed-w4a4@repq": {"top1": 89.5, "weight_bits": 3.98, "activation_bits": 4.0}}
    sd = {"doctors": {"call": {"seconds": 5.0, "calls": 3, "predicted_db": {"4": 9.0, "4.5": 12.0}},
                      "trajectory": {"seconds": 9.0, "calls": 2, "predicted_db": {"4": 5.0, "4.5": 8.0}}},
          "w8a8@minmax": {"psnr": 40.0}, "w4a8@minmax": {"psnr": 30.0},
          "mixed-w4a8-traj@minmax": {"psnr": 34.0, "weight_bits": 4.0}}
    text = render(Config(), vit, sd, "python -m eval.bench_mixed")
    assert "70% of the w4a4 -> w8a8 gap (column minmax)" in text
    assert "| mixed-w4a4 | 3.98 / 4.00 | 87.00 | 89.50 |" in text
    assert "| w3a3 | - | - | - |" in text
    assert "- mixed-w4a8: mixed weights at a mean of 4 bits with A8 (doctor over='call') close not measured" in text
    assert ("- mixed-w4a8-traj: mixed weights at a mean of 4 bits with A8 (doctor over='trajectory') close 40% of "
            "the w4a8 -> w8a8 gap (column minmax) (goal: at least 50%); the doctor's additive forecast for the "
            "allocation: +5.0 dB at 4 bits, +8.0 dB at 4.5 bits (measured: +4.0 dB).") in text
    assert "| mixed-w4a8-traj | 4.00 | 34.00 | - |" in text and "| mixed-w4.5a8 | - | - | - |" in text


def test_readme_block_is_the_benchmark_output():
    from pathlib import Path

    from eval.bench_mixed import BLOCK, OUT, readme_block
    from eval.bench_vit import load_cache
    from eval.report import read_block

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    vit, sd = (load_cache(OUT.with_name(f"mixed_{part}.json")) for part in ("vit", "sd"))
    assert "float" in vit and "w4a8@minmax" in sd  # the committed results
    assert read_block(readme, BLOCK) == readme_block(Config(), vit, sd).strip()


def test_a_cached_diagnosis_of_other_rules_is_run_again(tmp_path):
    import torch
    from torch import nn

    import visq
    from eval.bench_mixed import _diagnosis
    from visq.recipes import parse

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "doctor.json"
    visq.doctor(model, "w4a8-sym", calib=x, bits=(4, 8), progress=False).save(path)
    calls = []

    def run():
        calls.append(1)
        return visq.doctor(model, "w4a8", calib=x, bits=(4, 8), progress=False)

    assert _diagnosis(path, run, parse("w4a8-sym")).recipe.name == "w4a8-sym" and not calls  # the cache counts
    assert _diagnosis(path, run, parse("w4a8")).recipe.name == "w4a8" and calls == [1]  # other rules: diagnosed
    assert _diagnosis(path, run, parse("w4a8")).recipe.name == "w4a8" and calls == [1]  # and saved
