"""Unit kernels φ(x, y): one family per module, the protocol in :mod:`.base`.

``docs/kernels.md`` says how to add one (one class in one file).
"""
from . import expblocks
from .base import Kernel, pullback_reference
from .circle import CircleKernel
from .gaussian import GaussianRBF
from .sphere import SphereRBF
from .units import ACTIVATIONS, SigmoidUnit

__all__ = [
    "ACTIVATIONS",
    "Kernel",
    "CircleKernel",
    "GaussianRBF",
    "SphereRBF",
    "SigmoidUnit",
    "pullback_reference",
]
