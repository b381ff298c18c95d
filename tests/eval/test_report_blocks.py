"""eval.report pieces the README and reports are built from: generated blocks, notes, chart titles."""

import pytest

from eval.report import notes, read_block, replace_block


def test_block_markers_round_trip_and_fail_loudly():
    text = "a\n<!-- visq:t (generated: do not edit by hand) -->\nold\n<!-- /visq:t -->\nb\n"
    new = replace_block(text, "t", "new body\n")
    assert read_block(new, "t") == "new body" and new.startswith("a\n") and new.endswith("-->\nb\n")
    with pytest.raises(ValueError, match="expected one"):
        replace_block("no markers", "t", "x")


def test_notes_say_when_fid_cannot_separate_configs_and_what_the_size_means():
    same = {"float": {"fid": 0.181, "n_images": 64, "size_mb": 16.8}, "w8a8": {"fid": 0.179, "n_images": 64}}
    text = " ".join(notes(same))
    assert "same for every configuration at this size (64 images each)" in text and "not the size of the files" in text
    assert not any("same for every" in n for n in notes({"a": {"fid": 0.2}, "b": {"fid": 0.3}}))


def test_chart_titles_say_which_direction_is_better():
    from eval.report import bar_chart

    # the title is drawn into the image; compare against the same chart with the expected title drawn by hand
    assert bar_chart("FID", {"a": 1.0}, lower_is_better=True).tobytes() == bar_chart(
        "FID (lower is better)", {"a": 1.0}).tobytes()
    assert bar_chart("PSNR", {"a": 1.0}, lower_is_better=False).tobytes() == bar_chart(
        "PSNR (higher is better)", {"a": 1.0}).tobytes()
