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


def test_out_onto_a_file_fails_before_loading_or_calibrating(tmp_path, monkeypatch, capsys):
    import visq.cli

    monkeypatch.setattr(visq.cli, "_load_source", lambda source: pytest.fail("loaded before checking --out"))
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["quantize", "shapes-sd", "w8a8", "--calib", str(tmp_path / "p.txt"), "--out", str(tmp_path / "file")])
    assert err.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [(None, "quant.json not found"), ("{", "not valid JSON")])
def test_summary_of_a_missing_or_truncated_folder_is_a_clear_error(tmp_path, content, match, capsys):
    folder = tmp_path / "q"
    folder.mkdir()
    if content is not None:
        (folder / "quant.json").write_text(content)
        (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as err:
        main(["summary", str(folder)])
    assert err.value.code == 2 and match in capsys.readouterr().err
