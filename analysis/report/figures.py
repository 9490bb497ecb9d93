r"""Figures of a report: the only module that imports matplotlib.

Nothing numerical imports this module; :func:`analysis.report.make.make_report` calls
:func:`make_figures` last. Every function takes the datasets of ``mfpc run`` and the
``analysis`` dataset of :mod:`analysis.report.make` and returns a figure; :func:`save` writes
it atomically (temporary name, then ``os.replace``).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.store.io import atomic_path  # noqa: E402

__all__ = ["make_figures", "save", "loss_curves", "functions", "density", "lln_plot",
           "clt_qq", "m_spectra", "sgd_variance"]

MAX_PANELS = 6


def save(fig, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _panel_times(ts):
    """At most MAX_PANELS save-time indices, first and last included."""
    T = len(ts)
    if T <= MAX_PANELS:
        return list(range(T))
    return sorted(set(np.linspace(0, T - 1, MAX_PANELS).round().astype(int).tolist()))


def _grid(k, width=4.0, height=3.2):
    cols = min(k, 3)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:k]


def _n_colors(ns):
    cmap = plt.get_cmap("viridis")
    return {n: cmap(v) for n, v in zip(ns, np.linspace(0.0, 0.85, len(ns)))}


def loss_curves(particles, meanfield=None):
    r"""Loss :math:`\ell(f_n(t))` per n (mean over seeds, 10–90 % band) and the mean field."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ts = particles["t"].values
    ns = particles["n"].values
    col = _n_colors(ns)
    for n in ns:
        L = particles["loss"].sel(n=n).transpose("seed", "t").values
        m = np.nanmean(L, axis=0)
        lo, hi = np.nanquantile(L, [0.1, 0.9], axis=0)
        ax.fill_between(ts, lo, hi, color=col[n], alpha=0.2, lw=0)
        ax.plot(ts, m, "o-", color=col[n], ms=3, label=f"$n$ = {n} (mean, 10–90 %)")
    if meanfield is not None:
        for v, style, lab in (("loss_0", "k--", "mean field (grid)"),
                              ("loss_0_characteristics", "k:", "mean field (characteristics)")):
            if v in meanfield:
                if v == "loss_0" and meanfield.attrs.get("f_0_source") == "characteristics":
                    continue
                ax.plot(meanfield["t"].values, meanfield[v].values, style, lw=1.6, label=lab)
    ax.set_yscale("log")
    ax.set_xlabel("time $t$")
    ax.set_ylabel(r"loss $\ell = \frac{1}{2}\|f_n - f\|^2_\mu$")
    ax.set_title(r"Training loss (1.2) against time, per $n$")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def functions(particles, meanfield=None, f0_name="f_0"):
    r""":math:`f`, :math:`f_0` and :math:`f_n` (seed 0, each n) on the x nodes at save times."""
    ts = particles["t"].values
    idx = _panel_times(ts)
    fig, axes = _grid(len(idx))
    ns = particles["n"].values
    col = _n_colors(ns)
    x = particles["x"].values
    for ax, j in zip(axes, idx):
        ax.plot(x, particles["f_target"].values, "k-", lw=2.2, label="target $f$")
        if meanfield is not None and f0_name in meanfield:
            ax.plot(meanfield["x"].values, meanfield[f0_name].isel(t=j).values, "r--", lw=1.8,
                    label=r"mean field $f_0$")
        for n in ns:
            ax.plot(x, particles["f_n"].sel(n=n).isel(seed=0, t=j).values, color=col[n],
                    lw=1.0, alpha=0.9, label=f"$f_n$, $n$ = {n} (seed 0)")
        ax.set_title(f"$t$ = {ts[j]:g}")
        ax.set_xlabel("$x$")
        ax.set_ylabel("network output")
        ax.grid(alpha=0.3)
    fig.suptitle(r"Target $f$, mean field $f_0$ and networks $f_n$", y=1.01)
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(labels), 5), fontsize=8, frameon=False)
    return fig


def density(particles, meanfield):
    r"""Heat map of :math:`\rho_0(t, y, c)` (y horizontal, c vertical) with particles on top.

    Only for one-dimensional y (the circle); returns None otherwise.
    """
    if meanfield is None or "rho_0" not in meanfield or meanfield["rho_0"].ndim != 3:
        return None
    ts = particles["t"].values
    idx = _panel_times(ts)
    fig, axes = _grid(len(idx), width=4.2, height=3.4)
    rho = meanfield["rho_0"]
    y, c = rho["y"].values, rho["c"].values
    i_max = int(np.argmax(particles["n"].values))
    n = int(particles["n"].values[i_max])
    have = "y" in particles and "c" in particles
    mass_c = np.nansum(rho.values, axis=(0, 1))
    occupied = c[mass_c > 1e-4 * mass_c.max()]
    clo, chi = occupied.min() - 0.3, occupied.max() + 0.3
    for ax, j in zip(axes, idx):
        tj = ts[j]
        r = rho.sel(t=tj, method="nearest").transpose("y", "c").values
        # square-root colour scale: concentrated mass would otherwise hide the rest
        im = ax.pcolormesh(y, c, r.T, shading="nearest", cmap="magma_r",
                           norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(np.nanmax(r)), 1e-300)))
        if have:
            py = particles["y"].isel(n=i_max, seed=0, t=j).values[:n, 0]
            pc = particles["c"].isel(n=i_max, seed=0, t=j).values[:n]
            size = float(np.clip(6.0 * np.sqrt(128.0 / n), 1.0, 8.0))  # fewer, larger dots
            ax.scatter(np.mod(py, 2 * np.pi), pc, s=size, c="tab:cyan", edgecolors="k",
                       linewidths=0.2, alpha=0.8, label=f"particles, $n$ = {n} (seed 0)")
        ax.set_ylim(clo, chi)
        ax.set_xlim(y[0] - 0.5 * (y[1] - y[0]), y[-1] + 0.5 * (y[1] - y[0]))
        ax.set_title(f"$t$ = {tj:g}")
        ax.set_xlabel("position $y$")
        ax.set_ylabel("weight $c$")
        fig.colorbar(im, ax=ax, label=r"$\rho_0(t, y, c)$ (square-root scale)")
    if have:
        axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(r"Mean-field density $\rho_0$ (grid) and one particle ensemble member",
                 y=1.01)
    fig.tight_layout()
    return fig


def lln_plot(analysis):
    r"""Log-log :math:`E\|f_n - f_0\|^2_\mu` against n: data, fit, prediction tr Σ_t / n."""
    if "lln_err" not in analysis:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ns = analysis["n"].values.astype(float)
    ts = analysis["t"].values
    cmap = plt.get_cmap("plasma")
    nn = np.geomspace(ns.min() / 1.3, ns.max() * 1.3, 50)
    for j, t in enumerate(ts):
        colr = cmap(0.85 * j / max(1, len(ts) - 1))
        E = analysis["lln_err"].isel(t=j).values
        se = analysis["lln_err_stderr"].isel(t=j).values
        ax.errorbar(ns, E, yerr=se, fmt="o", color=colr, ms=4, capsize=2,
                    label=f"$t$ = {t:g}: slope {analysis['lln_slope'].values[j]:.2f}")
        s = analysis["lln_slope"].values[j]
        if np.isfinite(s):
            ax.plot(nn, analysis["lln_prefactor"].values[j] * nn**s, "-", color=colr, lw=1)
        if "lln_trace_sigma" in analysis:
            ax.plot(nn, analysis["lln_trace_sigma"].values[j] / nn, "--", color=colr, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([f"{int(n)}" for n in ns])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("number of particles $n$")
    ax.set_ylabel(r"$E\,\|f_n(t) - f_0(t)\|^2_\mu$")
    ax.set_title("LLN: markers data (±1 s.e.), solid fit,\n"
                 r"dashed prediction $\mathrm{tr}_\mu\Sigma_t / n$ (slope $-1$)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def clt_qq(analysis):
    r"""QQ plot of the standardised top-k components of :math:`\sqrt n (f_n - f_0)` (largest n)."""
    if "clt_xi" not in analysis:
        return None
    ts = analysis["t"].values
    idx = _panel_times(ts)
    fig, axes = _grid(len(idx), width=3.6, height=3.4)
    i_max = int(np.argmax(analysis["n"].values))
    n = int(analysis["n"].values[i_max])
    cmap = plt.get_cmap("tab10")
    for ax, j in zip(axes, idx):
        xi = analysis["clt_xi"].isel(n=i_max, t=j).transpose("seed", "clt_mode").values
        lim = 3.0
        for m in range(xi.shape[1]):
            v = np.sort(xi[:, m][np.isfinite(xi[:, m])])
            if v.size == 0:
                continue
            qn = stats.norm.ppf((np.arange(1, v.size + 1) - 0.5) / v.size)
            ax.plot(qn, v, "o", ms=3, color=cmap(m), label=f"mode {m + 1}")
            lim = max(lim, float(np.max(np.abs(v))) + 0.3)
        ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        p = analysis["clt_ks_p"].isel(n=i_max, t=j).values
        ax.set_title(f"$t$ = {ts[j]:g}, KS p (Bonferroni) = {float(p):.2g}", fontsize=10)
        ax.set_xlabel("N(0, 1) quantile")
        ax.set_ylabel(r"standardised component $\xi_k$")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(rf"CLT: components of $\sqrt{{n}}(f_n - f_0)$ on the top modes of "
                 rf"$\Sigma_t$, $n$ = {n}", y=1.01)
    fig.tight_layout()
    return fig


def m_spectra(analysis):
    r"""Eigenvalues of :math:`M[\rho]` on :math:`L^2(\mu)` per source and save time."""
    if "m_spectrum" not in analysis or analysis.sizes.get("source", 0) == 0:
        return None
    sources = list(analysis["source"].values)
    fig, axes = _grid(len(sources), width=4.4, height=3.6)
    ts = analysis["t"].values
    cmap = plt.get_cmap("plasma")
    for ax, src in zip(axes, sources):
        for j, t in enumerate(ts):
            ev = analysis["m_spectrum"].sel(source=src).isel(t=j).values
            if not np.all(np.isfinite(ev)):
                continue
            floor = 1e-17 * ev[0]
            ax.semilogy(np.arange(1, ev.size + 1), np.clip(ev, floor, None), ".-", ms=3,
                        lw=0.8, color=cmap(0.85 * j / max(1, len(ts) - 1)), label=f"$t$ = {t:g}")
        if "m_psd_tolerance" in analysis:
            top = float(np.nanmax(analysis["m_spectrum"].sel(source=src).values))
            ax.axhline(float(analysis["m_psd_tolerance"]) * top, color="0.5", ls="--", lw=0.8,
                       label=r"round-off $10Q\epsilon\lambda_1$")
        ax.set_xlabel("index $k$")
        ax.set_ylabel(r"eigenvalue $\lambda_k$ of $M[\rho]$ on $L^2(\mu)$")
        label = {"particles": r"$\rho_n$ (particles, largest $n$, seed 0)",
                 "grid": r"$\rho_0$ (grid density)",
                 "characteristics": r"$\rho_0$ (characteristic nodes)"}.get(src, src)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(r"Spectrum of $M[\rho]$ (2.38); values below $10^{-17}\lambda_1$ drawn at "
                 "that floor", y=1.01)
    fig.tight_layout()
    return fig


def sgd_variance(analysis):
    r"""SGD runs: :math:`n\mathrm{Var}(f_n - f_0)` over its prediction
    :math:`\mathrm{tr}_\mu(\Sigma_t + n\theta\Sigma^{SGD}_t)` against t per n (±1 s.e.),
    beside the ratio the GD prediction alone would give (THEORY §4b)."""
    if "sgd_var_ratio" not in analysis:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ts = analysis["t"].values
    ns = analysis["n"].values
    col = _n_colors(ns)
    for i, n in enumerate(ns):
        colr = col[n]
        r = analysis["sgd_var_ratio"].values[i]
        se = analysis["sgd_var_ratio_stderr"].values[i]
        ax.errorbar(ts, r, yerr=se, fmt="o-", color=colr, ms=4, capsize=2, lw=1,
                    label=f"$n$ = {int(n)}, $n\\theta$ = "
                          f"{n * float(analysis['sgd_theta'].values[i]):.3g}")
        ax.plot(ts, analysis["sgd_ratio_gd"].values[i], ":", color=colr, lw=1)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("$t$")
    ax.set_ylabel(r"$n\,\mathrm{Var}(f_n - f_0)\ /\ \mathrm{tr}_\mu(\Sigma_t + "
                  r"n\theta\Sigma^{SGD}_t)$")
    ax.set_title("SGD fluctuations against the prediction (expected 1);\n"
                 "dotted: what the GD prediction alone gives")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def make_figures(folder, particles, meanfield=None, fluctuations=None, analysis=None,
                 f0_name="f_0"):
    """Draw every figure the data allow into ``folder``; return the written paths."""
    folder = Path(folder)
    figs = {
        "loss.png": lambda: loss_curves(particles, meanfield),
        "functions.png": lambda: functions(particles, meanfield, f0_name),
        "density.png": lambda: density(particles, meanfield),
        "lln.png": lambda: lln_plot(analysis) if analysis is not None else None,
        "clt_qq.png": lambda: clt_qq(analysis) if analysis is not None else None,
        "m_spectrum.png": lambda: m_spectra(analysis) if analysis is not None else None,
        "sgd_variance.png": lambda: sgd_variance(analysis) if analysis is not None else None,
    }
    paths = []
    for name, make in figs.items():
        fig = make()
        if fig is not None:
            paths.append(save(fig, folder / name))
    return paths
