r"""The compiled backend of the particle dynamics (``[dynamics] backend = "jax"``).

Nothing here imports jax until a JAX run asks for it: :func:`require_jax` says whether
jax can be imported and, if not, raises a :class:`particles.engine.config.ConfigError`
naming the install command (``mfpc run`` exits 2). The stepper is
:class:`particles.jax.stepper.JaxParticleStepper` (``docs/backends.md``).
"""
from __future__ import annotations

import importlib

__all__ = ["INSTALL", "require_jax", "available", "device_name"]

#: How to install the optional backend.
INSTALL = 'pip install -e ".[jax]"'


def _import_jax():
    """``import jax`` (a function of its own, so that tests can make it fail)."""
    return importlib.import_module("jax")


def available() -> bool:
    """True when jax can be imported."""
    try:
        _import_jax()
    except ImportError:
        return False
    return True


def require_jax(where="dynamics.backend = 'jax'"):
    """The jax module, with 64-bit numbers enabled; a ConfigError naming the install
    command when jax cannot be imported."""
    try:
        jax = _import_jax()
    except ImportError as e:
        from particles.engine.config import ConfigError

        raise ConfigError(f"{where} needs jax, which cannot be imported ({e}); install it "
                          f"with `{INSTALL}`, or use backend = 'numpy'") from None
    jax.config.update("jax_enable_x64", True)
    return jax


def device_name() -> str:
    """The device the JAX backend computes on, e.g. ``"cpu:0 (cpu)"``, ``"cuda:0 (NVIDIA
    H100)"``."""
    jax = require_jax()
    dev = jax.devices()[0]
    return f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', dev.platform)})"
