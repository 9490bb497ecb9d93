"""Unit kernels φ(x, y): one family per module, the protocol in :mod:`.base`.

``docs/kernels.md`` says how to add one (one class in one file).
"""
from particles.kernels import expblocks
from particles.kernels.base import (AutodiffKernel, Kernel, check_kernel, pullback_reference,
                                   states_phi)
from particles.kernels.circle import CircleKernel
from particles.kernels.gaussian import GaussianRBF
from particles.kernels.sphere import SphereRBF
from particles.kernels.units import ACTIVATIONS, SigmoidUnit

__all__ = [
    "ACTIVATIONS",
    "Kernel",
    "AutodiffKernel",
    "states_phi",
    "CircleKernel",
    "GaussianRBF",
    "SphereRBF",
    "SigmoidUnit",
    "pullback_reference",
    "check_kernel",
]
