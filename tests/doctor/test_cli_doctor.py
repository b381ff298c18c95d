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
