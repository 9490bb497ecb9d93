r"""The compiled backend of the particle dynamics (``[dynamics] backend = "jax"``).

Nothing here imports jax until a JAX run asks for it: :func:`require_jax` says whether
jax can be imported and, if not, raises a :class:`particles.engine.config.ConfigError`
naming the install command (``mfpc run`` exits 2). The stepper is
:class:`particles.jax.stepper.JaxParticleStepper` (``docs/backends.md``).
"""
from __future__ import annotations

import importlib
import os

__all__ = ["INSTALL", "require_jax", "available", "device_name"]

#: How to install the optional backend.
INSTALL = 'pip install -e ".[jax]"'


#: XLA's CPU flags for one thread (read when JAX starts its CPU backend).
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _import_jax():
    """``import jax`` (a function of its own, so that tests can make it fail). In a
    process told to use one core (``MFPC_THREADS=1``: the sweep workers,
    :data:`particles.engine.parallel.ONE_THREAD`), XLA's CPU backend is set to one
    thread too, so that N workers use N cores."""
    if os.environ.get("MFPC_THREADS") == "1":
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {ONE_THREAD_XLA}".strip()
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
