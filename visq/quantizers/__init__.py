"""Quantizer families: one file each. Importing this package registers them all."""

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build
from visq.quantizers.log2 import Log2, Log2Quantizer, ShiftUniformLog2, ShiftUniformLog2Quantizer
from visq.quantizers.lsq import LSQ, LSQQuantizer
from visq.quantizers.noisy import Noisy, NoisyQuantizer
from visq.quantizers.outlier_groups import OutlierGroups
from visq.quantizers.prompt_log import PromptLog
from visq.quantizers.split import Split, SplitQuantizer
from visq.quantizers.start_float import StartFloat, StartFloatQuantizer
from visq.quantizers.statsq import StatsQ, StatsQQuantizer
from visq.quantizers.tangent import TanQRecon, TanQReconQuantizer
from visq.quantizers.twin import TwinUniform, TwinUniformQuantizer
from visq.quantizers.uniform import Uniform, UniformQuantizer

__all__ = [
    "LSQ",
    "LSQQuantizer",
    "Log2",
    "Log2Quantizer",
    "Noisy",
    "NoisyQuantizer",
    "OutlierGroups",
    "PromptLog",
    "QuantSpec",
    "Quantizer",
    "ShiftUniformLog2",
    "ShiftUniformLog2Quantizer",
    "SiteShape",
    "Split",
    "SplitQuantizer",
    "StartFloat",
    "StartFloatQuantizer",
    "StatsQ",
    "StatsQQuantizer",
    "TanQRecon",
    "TanQReconQuantizer",
    "TwinUniform",
    "TwinUniformQuantizer",
    "Uniform",
    "UniformQuantizer",
    "build",
]
