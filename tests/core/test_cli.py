import pytest

from visq.cli import main


def test_quantize_local_folder_and_summary(sd, tmp_path, capsys):
    sd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square\n")
    main(["quantize", str(tmp_path / "pipe"), "w8a8", "--calib", str(tmp_path / "prompts.txt"),
          "--out", str(tmp_path / "q"), "--steps", "2"])
    assert (tmp_path / "q" / "model.safetensors").is_file()
    main(["summary", str(tmp_path / "q")])
    out = capsys.readouterr().out
    assert "UNet2DConditionModel (diffusers), recipe w8a8" in out and "conv_in: host default" in out


def test_unknown_source(tmp_path):
    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(SystemExit, match="neither a zoo model"):
        main(["quantize", str(tmp_path / "nothing"), "w8a8", "--calib", str(tmp_path / "p.txt"), "--out", "o"])
