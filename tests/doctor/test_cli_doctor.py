import json

from visq.cli import main


def test_visq_doctor_ranks_writes_json_and_saves_a_mixed_model(tmp_path, capsys):
    main(["doctor", "shapes-vit", "w4a8", "--calib-n", "8", "--bits", "8", "--roles", "weight", "--top", "3",
          "--out", str(tmp_path / "d.json"), "--mixed-weight-bits", "5", "--save", str(tmp_path / "mixed")])
    out = capsys.readouterr().out
    assert out.count("weight_quantizer") >= 3 and "| 1 |" in out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert {s["role"] for s in saved["sites"]} == {"weight"}
    quant = json.loads((tmp_path / "mixed" / "quant.json").read_text())
    assert quant["recipe"]["name"] == "mixed-w5a8"
    bits = {spec["bits"] for site, spec in quant["sites"].items() if site.endswith("weight_quantizer")}
    assert bits == {4, 8}


def test_visq_doctor_over_whole_sampling_runs(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on a blue background, center\n")
    main(["doctor", "shapes-sd", "w4a8", "--calib", str(prompts), "--roles", "weight", "--bits", "--steps", "2",
          "--over", "trajectory", "--top", "2", "--out", str(tmp_path / "d.json")])
    assert capsys.readouterr().out.count("weight_quantizer") >= 2
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["over"] == "trajectory" and saved["calls"] == 2  # 2 steps: 2 denoiser calls (CFG halves share one)
    assert all(not s["timestep_mse"] for s in saved["sites"]) and len(saved["sites"]) > 100
