"""Fixtures of the eval tests: tiny models built in code (see tiny.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.tiny import tiny_hf_clip, tiny_sd_pipeline


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory) -> Path:
    """The tiny pipeline saved as a local diffusers folder (the runner loads models by name or folder)."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_clip():
    return tiny_hf_clip()


@pytest.fixture(scope="session")
def clip_features(hf_clip):
    from eval.clip_score import ClipFeatures

    return ClipFeatures.from_hf(*hf_clip, name="tiny-hf-clip")
