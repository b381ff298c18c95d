"""visq: quantization for vision transformers and diffusion models, on the ecosystem's own objects.

    import visq
    qmodel = visq.quantize(model, "w8a8", calib=images)
    print(visq.summary(qmodel))
    visq.save(qmodel, "out/")

``import visq`` imports neither diffusers nor timm; hosts load them when given such an object.
"""

from visq import qat  # noqa: F401  (visq.qat.train: quantization-aware training)
from visq.api import QuantState, freeze, quant_state, quantize, summary, unfreeze
from visq.calibrate import CalibSet, Call, observing
from visq.deploy.export import export
from visq.doctor import Diagnosis, doctor
from visq.finetune import finetune, merge_lora
from visq.io import load, save
from visq.personalize import personalize  # the verb; its modules stay importable as visq.personalize.*
from visq.quantizers import QuantSpec, Uniform
from visq.recipes import PRESETS, Recipe, Rule
from visq.timesteps import set_timestep

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CalibSet",
    "Call",
    "Diagnosis",
    "QuantSpec",
    "QuantState",
    "Recipe",
    "Rule",
    "Uniform",
    "export",
    "doctor",
    "finetune",
    "freeze",
    "load",
    "merge_lora",
    "observing",
    "personalize",
    "quant_state",
    "quantize",
    "save",
    "set_timestep",
    "summary",
    "unfreeze",
]
