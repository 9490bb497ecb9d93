r"""Figures of the paper's Section 4 (Figs. 1–4), drawn from the outputs of ``mfpc run``.

With :mod:`analysis.report.figures`, the only modules that import matplotlib. Each function returns
a figure; :func:`analysis.report.figures.save` writes it atomically.

* :func:`loss_vs_n` — the loss (4.8) (or a signed error (4.11)) at the last save time
  against n: one star per realisation of the target, a filled circle for their mean, and
  the guides :math:`n^{-1}` and :math:`n^{-2}` (Fig. 1 right, Fig. 3).
* :func:`training_loss` — the loss against time, log scale, the quench marked (Fig. 2).
* :func:`slice_levels` — level sets of f and :math:`f_n` in the slice (4.7) of the sphere,
  with the units projected on it (Fig. 1 left).
* :func:`great_circles` — f and :math:`f_n` along three great circles (4.12) (Fig. 4).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["loss_vs_n", "training_loss", "slice_levels", "great_circles", "slice_nodes",
           "great_circle_nodes", "network_at", "paper_figures"]


def loss_vs_n(scaling, name="final_loss_mean", *, label="loss (4.8)", ax=None):
    r"""``scaling[name](fit, n)`` of :func:`analysis.checks.scaling.final_scaling` against n.

    Stars: each realisation; filled circles: their mean; dashed guides :math:`n^{-1}`
    (blue) and :math:`n^{-2}` (red) through the mean at the smallest n. Signed errors are
    drawn as their absolute value. The fitted slope of the mean (``<name>_slope`` or
    ``loss_slope``) with its interval is in the legend.
    """
    fig, ax = (plt.subplots(figsize=(4.6, 3.6)) if ax is None else (ax.figure, ax))
    ns = scaling["n"].values.astype(float)
    vals = np.abs(scaling[name].values)
    for r in range(1, vals.shape[0]):
        ax.loglog(ns, vals[r], "*", color="0.45", ms=7, mfc="none",
                  label="realisations" if r == 1 else None)
    slope = "loss_slope" if name == "final_loss_mean" else f"{name}_slope"
    s, lo, hi = (float(scaling[slope + k].sel(fit="mean")) for k in ("", "_low", "_high"))
    ax.loglog(ns, vals[0], "o", color="k",
              label=f"mean: slope {s:.2f} [{lo:.2f}, {hi:.2f}]")
    a = vals[0][0]
    if np.isfinite(a) and a > 0:
        ax.loglog(ns, a * (ns / ns[0]) ** -1.0, "--", color="tab:blue", label=r"$n^{-1}$")
        ax.loglog(ns, a * (ns / ns[0]) ** -2.0, "--", color="tab:red", label=r"$n^{-2}$")
    ax.set_xticks(ns)
    ax.set_xticklabels([f"{int(n)}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("n")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    return fig


def training_loss(particles, *, quench=None, ax=None):
    """The loss against time for each n (mean over seeds and realisations), log scale;
    ``quench``: the time the batch grows (a dotted vertical line)."""
    fig, ax = (plt.subplots(figsize=(5.0, 3.6)) if ax is None else (ax.figure, ax))
    L = particles["loss"]
    L = L.mean([d for d in ("seed", "realisation") if d in L.dims], skipna=True)
    cmap = plt.get_cmap("viridis")
    ns = particles["n"].values
    for k, n in enumerate(ns):
        ax.semilogy(particles["t"].values, L.sel(n=n).values, "-",
                    color=cmap(0.85 * k / max(1, len(ns) - 1)), label=f"n = {n}")
    if quench is not None:
        ax.axvline(quench, color="k", ls=":", label="quench")
    ax.set_xlabel("t")
    ax.set_ylabel("loss (4.8)")
    ax.legend(fontsize=7)
    return fig


def slice_nodes(d, m=61):
    r"""The slice (4.7): :math:`x = \sqrt d(\sin\theta\cos\phi, \sin\theta\sin\phi,
    \cos\theta, 0, \dots)` on an (m, 2m) grid of :math:`\theta \in [0, \pi]`,
    :math:`\phi \in [0, 2\pi)`. Returns theta (m,), phi (2m,), x (m·2m, d)."""
    if d < 3:
        raise ValueError(f"the slice (4.7) needs d >= 3 (d = {d})")
    th = np.linspace(0.0, np.pi, m)
    ph = np.linspace(0.0, 2 * np.pi, 2 * m, endpoint=False)
    T, P = np.meshgrid(th, ph, indexing="ij")
    x = np.zeros(T.shape + (d,))
    x[..., 0] = np.sin(T) * np.cos(P)
    x[..., 1] = np.sin(T) * np.sin(P)
    x[..., 2] = np.cos(T)
    return th, ph, np.sqrt(d) * x.reshape(-1, d)


def great_circle_nodes(d, i, j, m=200):
    r"""The great circle (4.12): :math:`x_i = \sqrt d\cos\theta`,
    :math:`x_j = \sqrt d\sin\theta`, other coordinates 0. Returns theta (m,), x (m, d)."""
    th = np.linspace(0.0, 2 * np.pi, m)
    x = np.zeros((m, d))
    x[:, i] = np.sqrt(d) * np.cos(th)
    x[:, j] = np.sqrt(d) * np.sin(th)
    return th, x


def network_at(problem, y, c, x):
    """:math:`f_n(x) = \\frac1n\\sum_i c_i\\varphi(x, y_i)` of one member on nodes x (Q, d)."""
    y = np.asarray(y, float)
    c = np.asarray(c, float)
    ok = np.isfinite(c) & np.all(np.isfinite(y.reshape(len(c), -1)), axis=1)
    y, c = y[ok], c[ok]
    return problem.network(y[None], (c / len(c))[None], x=x)[0]


def slice_levels(problem, y, c, *, m=61, levels=10):
    """Level sets of f (black dotted) and :math:`f_n` (coloured) in the slice (4.7) with
    the units projected on the slice's coordinates (Fig. 1 left)."""
    d = problem.target.d if hasattr(problem.target, "d") else problem.x.shape[1]
    th, ph, x = slice_nodes(d, m)
    f = np.asarray(problem.target(x)).reshape(len(th), len(ph))
    fn = network_at(problem, y, c, x).reshape(len(th), len(ph))
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    lv = np.linspace(np.min(f), np.max(f), levels)
    ax.contour(ph, th, f, levels=lv, colors="k", linestyles=":", linewidths=1.0)
    cs = ax.contour(ph, th, fn, levels=lv, cmap="viridis", linewidths=1.0)
    fig.colorbar(cs, ax=ax, label=r"$f_n$")
    yy = np.asarray(y, float)
    r = np.linalg.norm(yy[:, :3], axis=1)
    ax.plot(np.mod(np.arctan2(yy[:, 1], yy[:, 0]), 2 * np.pi),
            np.arccos(np.clip(yy[:, 2] / np.where(r > 0, r, 1), -1, 1)), "r.", ms=4,
            label="units (projected)")
    ax.set_xlabel(r"$\phi$")
    ax.set_ylabel(r"$\theta$")
    ax.set_title(f"slice (4.7): f (dotted) and f_n, n = {len(c)}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def great_circles(problem, members, *, pairs=((0, 1), (2, 3), (4, 5)), m=200):
    """f (thick yellow) and :math:`f_n` of each member along the great circles (4.12)
    of ``pairs`` (Fig. 4). ``members``: list of (label, y, c)."""
    d = problem.x.shape[1]
    pairs = [(i % d, j % d) for i, j in pairs if i % d != j % d]
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.0 * len(pairs), 3.0), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        th, x = great_circle_nodes(d, i, j, m)
        ax.plot(th, problem.target(x), color="gold", lw=4, label="f")
        for label, y, c in members:
            ax.plot(th, network_at(problem, y, c, x), lw=1, label=label)
        ax.set_xlabel(rf"$\theta$ (x$_{i + 1}$, x$_{j + 1}$)")
    axes[0][0].legend(fontsize=7)
    return fig


def _last_units(particles, i_n, seed=0):
    n = int(particles["n"].values[i_n])
    sel = dict(n=i_n, seed=seed, t=-1)
    if "realisation" in particles["y"].dims:
        sel["realisation"] = 0
    return (particles["y"].isel(sel).values[:n], particles["c"].isel(sel).values[:n])


def paper_figures(folder, particles, analysis, problem, *, quench=None):
    """Draw the figures of this module the data allow into ``folder``; return the paths.

    ``loss_n.png`` (and ``signed_pos_n.png``, ``signed_neg_n.png``) when ``analysis`` has
    the slopes of :func:`analysis.checks.scaling.final_scaling`; ``training_loss.png`` always;
    ``slice.png`` (sphere kernels, d ≥ 3) and ``great_circles.png`` (data on the sphere)
    from the units of seed 0 at the last save time, realisation 0.
    """
    from pathlib import Path

    from analysis.report.figures import save

    folder = Path(folder)
    figs = {"training_loss.png": lambda: training_loss(particles, quench=quench)}
    if analysis is not None and "loss_slope" in analysis:
        figs["loss_n.png"] = lambda: loss_vs_n(analysis)
        for s, lab in (("signed_pos", "(4.11), Θ(f)"), ("signed_neg", "(4.11), Θ(−f)")):
            if f"{s}_slope" in analysis:
                figs[f"{s}_n.png"] = (lambda s=s, lab=lab:
                                      loss_vs_n(analysis, s, label=f"|signed error {lab}|"))
    has_units = "y" in particles and "c" in particles
    d = problem.x.shape[1]
    on_sphere = getattr(problem.measure, "name", "") == "sphere"
    if has_units and getattr(problem.kernel, "name", "") == "sphere" and d >= 3:
        i = int(np.argmax(particles["n"].values))
        figs["slice.png"] = lambda: slice_levels(problem, *_last_units(particles, i))
    if has_units and on_sphere and d >= 2:
        ns = particles["n"].values
        pick = sorted({0, len(ns) - 1})
        figs["great_circles.png"] = lambda: great_circles(
            problem, [(f"n = {int(ns[i])}", *_last_units(particles, i)) for i in pick])
    paths = []
    for name, make in figs.items():
        paths.append(save(make(), folder / name))
    return paths
