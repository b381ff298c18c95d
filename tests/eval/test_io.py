"""Prompt files, class lists and image folders, including bad input."""

from __future__ import annotations

import pytest
from PIL import Image

from eval.io import load_images, parse_classes, read_prompts, scan_images


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n# comment\n  a blue square  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n\n{"caption": "a blue square"}\n')
    (tmp_path / "p.csv").write_text('id,caption\n1,a red circle\n2,"a blue square, top left"\n')
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    assert read_prompts(tmp_path / "p.jsonl") == ["a red circle", "a blue square"]
    assert read_prompts(tmp_path / "p.csv") == ["a red circle", "a blue square, top left"]


def test_bad_prompt_files(tmp_path):
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    (tmp_path / "bad.jsonl").write_text('{"label": 3}\n')
    (tmp_path / "p.yaml").write_text("x")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="no prompt field"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match=".txt, .jsonl or .csv"):
        read_prompts(tmp_path / "p.yaml")
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


def test_parse_classes():
    assert parse_classes("0-3,8, 5") == [0, 1, 2, 3, 8, 5]
    with pytest.raises(ValueError):
        parse_classes(" , ")


def test_image_folder_skips_corrupt_and_non_images(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    Image.new("L", (8, 8), 7).save(tmp_path / "gray.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    full = (tmp_path / "0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    (tmp_path / "manifest.jsonl").write_text("{}\n")  # the runner's sidecar: neither image nor skipped
    found = scan_images(tmp_path)
    assert [p.name for p in found.paths] == ["0.png", "1.png", "2.png", "gray.jpg"]
    assert sorted(p.name for p, _ in found.skipped) == ["broken.png", "notes.txt", "truncated.png"]
    imgs = load_images(found.paths)
    assert imgs.shape == (4, 3, 8, 8) and int(imgs[1, 0, 0, 0]) == 50 and int(imgs[3, 2, 0, 0]) == 7
    with pytest.raises(ValueError, match="--strict"):
        scan_images(tmp_path, strict=True)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        scan_images(tmp_path / "nope")
    with pytest.raises(ValueError, match="no readable images"):
        scan_images(tmp_path)
