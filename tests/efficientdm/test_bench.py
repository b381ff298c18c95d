"""eval.bench_efficientdm: the PTQ rows are read back from bench_diffusion's own tables; the table's rows."""

from eval.bench_diffusion import Config as BenchConfig
from eval.bench_diffusion import table as ptq_table
from eval.bench_efficientdm import Config, cells, ptq_rows, table


def test_ptq_rows_read_back_what_bench_diffusion_writes():
    bench = BenchConfig(methods=("qdiff", "dgq"), bits=("w4a8", "w4a4"))
    results = {"float": {"fid": 0.14}, "w4a8-qdiff": {"psnr": 36.79, "clip_score": 90.6},
               "w4a4-qdiff": {"psnr": 22.6}, "w4a4-dgq": {"psnr": 30.38, "ssim": 0.956}}
    parsed = ptq_rows("\n".join(ptq_table("shapes-sd", results, bench)))["shapes-sd"]
    assert parsed["PSNR to float (dB)"]["qdiff"] == {"w4a8": 36.79, "w4a4": 22.6}
    assert parsed["PSNR to float (dB)"]["dgq"] == {"w4a4": 30.38}  # a dash is no value
    assert parsed["SSIM to float"]["dgq"] == {"w4a4": 0.956}
    assert parsed["CLIP score (judge)"]["qdiff"] == {"w4a8": 90.6}


def test_table_rows_and_cell_order():
    cfg = Config(models=("shapes-dit",), ablations=("rank 8",))
    assert cells(cfg) == [("shapes-dit", "w4a4", "efficientdm"), ("shapes-dit", "w4a8", "efficientdm"),
                          ("shapes-dit", "w4a4", "rank 8")]
    ptq = {"shapes-dit": {"PSNR to float (dB)": {"dgq": {"w4a4": 14.63}}}}
    job = {"train_seconds": 61.2, "peak_memory_mb": 900.4, "optimizer_steps": 200}
    trained = {("w4a4", "efficientdm"): {"name": "loaded-a", "result": job}}
    results = {"float": {"clip_score": 90.0}, "loaded-a": {"psnr": 16.5, "ssim": 0.61}}
    lines = table("shapes-dit", results, trained, ptq, cfg, BenchConfig())
    assert "| W4A4 dgq (PTQ) | 14.63 | - | - | - | - | - | - | - |" in lines
    assert "| W4A4 efficientdm | 16.50 | 0.610 | - | - | - | 61 | 900 | 200 |" in lines
    assert "| float | - | - | - | - | 90.00 | - | - | - |" in lines


def test_the_untrained_initialisation_row_comes_first_without_training_columns():
    from eval.bench_efficientdm import INIT

    cfg = Config(models=("shapes-dit",), bits=("w4a4",), ablations=())
    job = {"train_seconds": 61.2, "peak_memory_mb": 900.4, "optimizer_steps": 200}
    trained = {("w4a4", "efficientdm"): {"name": "loaded-a", "result": job},
               ("w4a4", INIT): {"name": "loaded-init", "result": None}}
    results = {"loaded-a": {"psnr": 16.5}, "loaded-init": {"psnr": 12.8}}
    lines = table("shapes-dit", results, trained, {}, cfg, BenchConfig())
    init = lines.index(f"| W4A4 {INIT} | 12.80 | - | - | - | - | - | - | 0 |")
    assert init < lines.index("| W4A4 efficientdm | 16.50 | - | - | - | - | 61 | 900 | 200 |")
