"""Quantizer families: one file each. Importing this package registers them all."""

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build
from visq.quantizers.outlier_groups import OutlierGroups
from visq.quantizers.prompt_log import PromptLog
from visq.quantizers.split import Split, SplitQuantizer
from visq.quantizers.uniform import Uniform, UniformQuantizer

__all__ = [
    "OutlierGroups",
    "PromptLog",
    "QuantSpec",
    "Quantizer",
    "SiteShape",
    "Split",
    "SplitQuantizer",
    "Uniform", "UniformQuantizer",
    "build",
]
