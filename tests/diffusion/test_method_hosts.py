"""Every diffusion PTQ method on the DiT pipeline host and on a bare PixArt denoiser (tiny random models).

W8A8 keeps the output close to float for the uniform methods; DGQ's log2 probabilities are coarser by design, so
its bar is lower. The bare denoiser's own forward pre-hook picks the per-timestep state. The PixArt calls are a
trajectory of 2 runs x 3 steps with the run / step metadata a pipeline capture records, so EDA's per-step selection
works on them too.
"""

import pytest
import torch

import visq
from visq.calibrate import CalibSet, Call
from visq.testing import tiny_dit, tiny_pixart

METHODS = ["qdiff", "temporal", "eda", "dgq"]
OPTIONS = {"eda": {"recon_iters": 2}}
MIN_COSINE = {"dgq": 0.95}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.mark.parametrize("method", METHODS)
def test_method_on_dit_pipeline(method):
    pipe = tiny_dit()
    latents = {"num_inference_steps": 3, "output_type": "np"}
    ref = pipe([0, 1], generator=torch.Generator().manual_seed(0), **latents).images
    visq.quantize(pipe, "w8a8", method=method, calib=[0, 1, 0, 1], calib_options={"num_inference_steps": 3},
                  progress=False, **OPTIONS.get(method, {}))
    out = pipe([0, 1], generator=torch.Generator().manual_seed(0), **latents).images
    assert _cosine(torch.tensor(ref), torch.tensor(out)) > MIN_COSINE.get(method, 0.99)


def _pixart_calls() -> list[Call]:
    gen = torch.Generator().manual_seed(0)
    calls = []
    for run in range(2):
        for step, t in enumerate((999, 500, 1)):
            kwargs = dict(encoder_hidden_states=torch.randn(2, 5, 24, generator=gen), timestep=torch.tensor([t, t]),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
            calls.append(Call((torch.randn(2, 4, 4, 4, generator=gen),), kwargs, float(t), run=run, step=step))
    return calls


@pytest.mark.parametrize("method", METHODS)
def test_method_on_pixart_denoiser(method):
    model, calls = tiny_pixart(), _pixart_calls()
    probe = calls[0]
    with torch.no_grad():
        ref = model(*probe.args, **probe.kwargs)[0]
    visq.quantize(model, "w8a8", method=method, calib=CalibSet(calls), progress=False, **OPTIONS.get(method, {}))
    with torch.no_grad():
        out = model(*probe.args, **probe.kwargs)[0]
    assert _cosine(ref, out) > MIN_COSINE.get(method, 0.99)
