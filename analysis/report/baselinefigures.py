r"""The figure of the baselines (:mod:`analysis.checks.baselines`): loss against n for every
ensemble, and :math:`f_0`, :math:`f_{lazy}` and f over time at a few nodes.

Plotting only (imports matplotlib through :mod:`analysis.report.figures`); nothing
numerical imports it. :func:`baseline_figure` returns a figure; :func:`analysis.report.
figures.save` writes it.
"""
from __future__ import annotations

import numpy as np

from matplotlib.ticker import NullFormatter

from analysis.report.figures import plt

__all__ = ["baseline_figure", "POINTS"]

#: Nodes at which f_0, f_lazy and f are drawn over time.
POINTS = 3

_LABELS = {"trained": "trained units", "monte_carlo": "Monte-Carlo units",
           "random_features": "random features"}


def baseline_figure(particles, analysis, meanfield=None):
    r"""Left: the loss at the last save time against n, mean over seeds, for every
    ensemble (and the exact Monte-Carlo expectation :math:`(1/2n)\mathrm{Var}`, the
    mean-field and lazy losses as levels). Right: :math:`f_0(t, x)` (reference),
    :math:`f_{lazy}(t, x)` and the target at :data:`POINTS` nodes, over time.

    Parameters
    ----------
    particles : xarray.Dataset
        ``particles.nc``.
    analysis : xarray.Dataset
        With the variables of :func:`analysis.checks.baselines.baseline_checks`.
    meanfield : xarray.Dataset, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    has_lazy = "f_lazy" in analysis and meanfield is not None
    fig, axes = plt.subplots(1, 2 if has_lazy else 1, figsize=(10 if has_lazy else 5, 3.8),
                             squeeze=False)
    ax = axes[0, 0]
    ns = particles["n"].values.astype(float)
    T = float(particles["t"].values[-1])
    for name, var, mk in (("trained", "loss", "o-"), ("monte_carlo", "loss_monte_carlo", "s-"),
                          ("random_features", "loss_random_features", "^-")):
        if var not in particles:
            continue
        L = particles[var]
        L = L.isel(t=-1) if "t" in L.dims else L
        ax.loglog(ns, L.mean("seed").values, mk, label=_LABELS[name])
    if "monte_carlo_expected_loss" in analysis and np.all(
            np.isfinite(analysis["monte_carlo_expected_loss"].values)):
        ax.loglog(ns, analysis["monte_carlo_expected_loss"].values, "k:",
                  label="(1/2n) Var (exact)")
    if meanfield is not None and "loss_0" in meanfield:
        ax.axhline(float(meanfield["loss_0"].values[-1]), color="0.5", lw=0.8, ls="--",
                   label="mean field")
    if "lazy_loss" in analysis:
        ax.axhline(float(analysis["lazy_loss"].values[-1]), color="C3", lw=0.8, ls="-.",
                   label="lazy (M frozen)")
    ax.set_xticks(ns, [f"{v:g}" for v in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("n")
    ax.set_ylabel(f"loss at t = {T:g}")
    ax.set_title("loss against n, every ensemble")
    ax.legend(fontsize=7)
    if has_lazy:
        ax = axes[0, 1]
        from analysis.checks.estimators import reference_f0

        f0, name = reference_f0(meanfield)
        t = f0["t"].values
        Q = f0.sizes["x"]
        idx = np.linspace(0, Q - 1, POINTS + 2).round().astype(int)[1:-1]
        fl = analysis["f_lazy"]
        for j, q in enumerate(idx):
            c = f"C{j}"
            ax.plot(t, f0.isel(x=q).values, "-", color=c, label=f"f_0 ({name})" if j == 0 else None)
            ax.plot(fl["t"].values, fl.isel(x=q).values, "--", color=c,
                    label="f_lazy" if j == 0 else None)
            ax.axhline(float(particles["f_target"].values[q]), color=c, lw=0.6, ls=":",
                       label="f" if j == 0 else None)
        ax.set_xlabel("t")
        ax.set_title(f"f_0, f_lazy and f at {POINTS} nodes")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
