"""The README's diffusion quick start runs as written and draws what its prompt asks for (issue 12)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    blocks = re.findall(r"<!-- the test tests/zoo/test_readme_quickstart.py runs this block -->\n```python\n(.*?)```",
                        text, re.S)
    assert len(blocks) == 1, "the README's diffusion quick-start block (and its marker comment) is missing"
    return blocks[0]


def _labels(prompt: str, n: int) -> dict[str, torch.Tensor]:
    """The visq-shapes labels whose caption is ``prompt`` (the quick start must use the trained caption form)."""
    from visq.zoo import shapes

    ranges = (len(shapes.SHAPES), len(shapes.COLOUR_NAMES), len(shapes.COLOUR_NAMES), len(shapes.POSITIONS),
              len(shapes.SIZES))
    for combo in itertools.product(*map(range, ranges)):
        if shapes.caption(*combo) == prompt:
            names = ("shape", "colour", "background", "position", "size")
            return {k: torch.full((n,), v) for k, v in zip(names, combo)}
    raise AssertionError(f"{prompt!r} is not a visq-shapes caption")


@pytest.mark.slow
def test_readme_diffusion_quickstart_draws_its_prompt():
    from pipelines.zoo_bench import Config
    from visq import zoo
    from visq.zoo import clip as zclip

    code = _quickstart()
    prompt = re.search(r'pipe\("([^"]+)", \*\*settings\)', code)[1]
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102  (the README's own code, as a user runs it)
    bench = Config()
    assert scope["settings"] == {"num_inference_steps": bench.steps, "guidance_scale": bench.guidance}
    assert scope["image"].size == (32, 32)
    n = 8
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    with torch.no_grad():
        images = scope["pipe"]([prompt] * n, generator=gens, output_type="pt", **scope["settings"]).images
    judge, labels = zoo.load("judge-clip"), _labels(prompt, n)
    for attr in ("shape", "colour"):
        hits = (zclip.zero_shot(judge.model, judge.tokenizer, images.float().clamp(0, 1), labels, attr)
                == labels[attr]).sum()
        assert hits >= 6, f"the W4A8 quick-start pipeline drew the right {attr} in only {int(hits)} of {n} images"
