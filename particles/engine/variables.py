"""The one table of long names and units of what mfpc writes.

:data:`VARIABLES` names every variable and coordinate of ``particles.nc``,
``meanfield.nc``, ``fluctuations.nc`` and ``analysis.nc``; :func:`long_name_units` adds
the names that depend on the problem (grid axes ``y_0``, ``y_1``, ... for N > 1), and
:func:`cf_meta` gives both for the variables of a Dataset.
:func:`particles.engine.results.finish` takes a variable's metadata from here unless its
caller gives them. All quantities of the paper are dimensionless: ``"1"`` is the CF unit
of a pure number; time ``t`` is the paper's training time (THEORY §2).
"""
from __future__ import annotations

import re

__all__ = ["VARIABLES", "long_name_units", "cf_meta"]

#: name -> (long_name, units) of every variable and coordinate of the files mfpc writes
VARIABLES = {
    # coordinates of every file
    "n": ("number of units (particles) n of the network (1.1)", "1"),
    "seed": ("ensemble member index (spawn key of its SeedSequence)", "1"),
    "t": ("training time (paper's time: E = n l, THEORY section 2)", "1"),
    "x": ("input node x of the data measure mu", "1"),
    "x_": ("input node x' of the data measure mu (second argument)", "1"),
    "y": ("unit position y (cell centre)", "1"),
    "c": ("unit weight (charge) c (cell centre)", "1"),
    "particle": ("unit index", "1"),
    "y_dim": ("coordinate index of y", "1"),
    "x_dim": ("coordinate index of x", "1"),
    "node": ("characteristic node index", "1"),
    "member": ("ensemble member index", "1"),
    # particles.nc (particles.simulate)
    "f_n": ("network f_n on the x nodes (1.1)", "1"),
    "loss": ("loss 1/2 ||f_n - f||^2_mu (1.2)", "1"),
    "f_target": ("target f on the x nodes", "1"),
    "x_weight": ("quadrature weight of the x node in <.,.>_mu", "1"),
    "x_nodes": ("coordinates of the x nodes", "1"),
    "y_unit": ("unit positions y_i", "1"),
    "c_unit": ("unit weights c_i", "1"),
    # meanfield.nc (meanfield.grid.solve, meanfield.characteristics)
    "f_0": ("mean-field network f_0 on the x nodes (2.34)", "1"),
    "loss_0": ("mean-field loss 1/2 ||f_0 - f||^2_mu (1.2)", "1"),
    "rho_0": ("density of rho_0 (cell mass / cell volume)", "1"),
    "mass": ("total mass of rho_0 on the grid", "1"),
    "outflow": ("cumulative mass out through the grid boundaries", "1"),
    "f_0_characteristics": ("mean-field network f_0 along characteristics (2.34)", "1"),
    "loss_0_characteristics": ("mean-field loss along characteristics (1.2)", "1"),
    "y_nodes": ("positions Y_j of the characteristic nodes", "1"),
    "c_nodes": ("weights C_j of the characteristic nodes", "1"),
    "weight": ("quadrature weight w_j of the characteristic node in rho_in", "1"),
    # fluctuations.nc (meanfield.influence, meanfield.linearised, meanfield.sgdnoise,
    # meanfield.sgdensemble)
    "clt_cov": ("predicted covariance of sqrt(n) (f_n - f_0)(t) (Prop. 2.1)", "1"),
    "clt_var": ("predicted variance of sqrt(n) (f_n - f_0)(t, x) (Prop. 2.1)", "1"),
    "clt_cov_stderr": ("standard error of clt_cov from the ensemble size", "1"),
    "f_0_influence": ("f_0 along characteristics (forward run of the influence method)", "1"),
    "f_0_grid": ("f_0 on the grid (forward run of the linearised ensemble)", "1"),
    "sgd_cov": ("predicted SGD covariance Sigma^SGD_t of f_n - f_0 per unit n theta_ref: "
                "n Cov = Sigma_t + n theta_ref Sigma^SGD_t (THEORY 4b; (3.29), (3.31))", "1"),
    "sgd_var": ("predicted SGD variance Sigma^SGD_t(x, x) per unit n theta_ref "
                "(THEORY 4b; (3.29), (3.31))", "1"),
    "sgd_cov_stderr": ("standard error of sgd_cov from the ensemble size", "1"),
    # analysis.nc (analysis.checks; docs/propositions.md says how each statistic is derived):
    # its coordinates
    "solver": ("mean-field solver (grid or characteristics)", "1"),
    "source": ("measure rho of M[rho]: particles at the largest n, grid or characteristics", "1"),
    "clt_mode": ("index k of an eigenmode of Sigma_t on L2(mu), largest first", "1"),
    "m_mode": ("index of an eigenvalue of M[rho] on L2(mu), largest first", "1"),
    "m_k": ("index k of a leading eigenvalue of M[rho_n], largest first", "1"),
    # LLN (Prop. 2.2, (2.41))
    "lln_err": ("mean over seeds of ||f_n - f_0||^2_mu (2.41)", "1"),
    "lln_err_stderr": ("standard error over seeds of lln_err", "1"),
    "lln_seeds": ("number of seeds with a finite lln_err", "1"),
    "lln_slope": ("slope of log lln_err against log n (expected -1, Prop. 2.2)", "1"),
    "lln_slope_low": ("lower end of the bootstrap interval of lln_slope", "1"),
    "lln_slope_high": ("upper end of the bootstrap interval of lln_slope", "1"),
    "lln_slope_fit_low": ("lower end of the Student-t interval of lln_slope", "1"),
    "lln_slope_fit_high": ("upper end of the Student-t interval of lln_slope", "1"),
    "lln_prefactor": ("exp(intercept) of the free fit of lln_err against n", "1"),
    "lln_prefactor_fixed": ("n lln_err, geometric mean over n (slope fixed at -1)", "1"),
    "lln_prefactor_fixed_low": ("lower end of the bootstrap interval of lln_prefactor_fixed",
                                "1"),
    "lln_prefactor_fixed_high": ("upper end of the bootstrap interval of "
                                 "lln_prefactor_fixed", "1"),
    "lln_trace_sigma": ("predicted prefactor tr_mu Sigma_t (Prop. 2.1, (2.32))", "1"),
    # CLT (Prop. 2.1, (2.32))
    "clt_var_ratio": ("sum_q w_q n Var_seeds(f_n - f_0) / tr_mu Sigma_t (expected 1)", "1"),
    "clt_var_ratio_stderr": ("standard error of clt_var_ratio under the Gaussian "
                             "prediction", "1"),
    "clt_var_ratio_z": ("(clt_var_ratio - 1) / clt_var_ratio_stderr", "1"),
    "clt_seeds": ("number of seeds with a finite sqrt(n) (f_n - f_0)", "1"),
    "clt_ks_p": ("Bonferroni-combined KS p-value of the top-k modes against N(0, 1)", "1"),
    "clt_ks_p_mode": ("KS p-value of one mode xi_k against N(0, 1)", "1"),
    "clt_mahalanobis_p": ("KS p-value of sum_k xi_k^2 against chi2_k", "1"),
    "clt_xi": ("whitened component xi_k of sqrt(n) (f_n - f_0) on mode k of Sigma_t", "1"),
    "clt_eigenvalue": ("eigenvalue lambda_k of Sigma_t on L2(mu)", "1"),
    "clt_k": ("number of modes of Sigma_t tested (above the rank tolerance)", "1"),
    # M[rho] ((2.38)-(2.40))
    "m_spectrum": ("eigenvalues of M[rho] on L2(mu), largest first (2.38)", "1"),
    "m_min_eigenvalue_source": ("lambda_min / lambda_max of M[rho] per source", "1"),
    "m_min_eigenvalue": ("lambda_min / lambda_max of M[rho], minimum over sources", "1"),
    "m_psd_tolerance": ("round-off tolerance of m_min_eigenvalue (M[rho] >= 0)", "1"),
    "m_identity_residual": ("largest gap of identity (2.39) over random r, relative to its "
                            "round-off scale", "1"),
    "m_tangent_residual": ("relative gap of M[rho_n] and n grad_z f_n . grad_z f_n", "1"),
    "m_leading": ("leading eigenvalues of M[rho_n], mean over seeds", "1"),
    "m_leading_ref": ("leading eigenvalues of M[rho_0] (reference)", "1"),
    "m_leading_rel_err": ("rms relative error of m_leading against m_leading_ref", "1"),
    "m_leading_slope": ("slope of log m_leading_rel_err against log n (expected -1/2)",
                        "1"),
    "m_leading_slope_low": ("lower end of the bootstrap interval of m_leading_slope", "1"),
    "m_leading_slope_high": ("upper end of the bootstrap interval of m_leading_slope", "1"),
    # losses ((2.37), (2.43), Prop. 2.3-2.4)
    "loss_max_increase": ("largest loss increase between save times / l(0), over seeds",
                          "1"),
    "loss_0_max_increase": ("largest mean-field loss increase between save times / "
                            "l_0(0)", "1"),
    "loss_level": ("loss level of time_to_level", "1"),
    "time_to_level": ("time for the loss to reach loss_level, mean over seeds", "1"),
    "time_to_level_stderr": ("standard error over seeds of time_to_level", "1"),
    "time_to_level_reached": ("number of seeds whose loss reaches loss_level", "1"),
    "time_to_level_0": ("time for the mean-field loss to reach loss_level", "1"),
    "time_to_level_slope": ("slope of log time_to_level against log n (expected 0)", "1"),
    "time_to_level_slope_low": ("lower end of the bootstrap interval of "
                                "time_to_level_slope", "1"),
    "time_to_level_slope_high": ("upper end of the bootstrap interval of "
                                 "time_to_level_slope", "1"),
    "final_time": ("last save time T", "1"),
    "final_loss": ("loss at T, mean over seeds", "1"),
    "final_loss_stderr": ("standard error over seeds of final_loss", "1"),
    "final_loss_slope": ("slope of log final_loss against log n (self-healing: < -1)", "1"),
    "final_loss_slope_low": ("lower end of the bootstrap interval of final_loss_slope",
                             "1"),
    "final_loss_slope_high": ("upper end of the bootstrap interval of final_loss_slope",
                              "1"),
    "loss_floor": ("mean-field loss l_0(T) at the last save time", "1"),
    "loss_floor_ratio": ("loss_floor / final_loss at the largest n", "1"),
    # SGD fluctuations (Prop. 3.2, (3.23), (3.34))
    "fluct_var": ("sum_q w_q Var_seeds f_n(t, x_q)", "1"),
    "fluct_slope": ("slope of log fluct_var against log n (expected -2 alpha for SGD)",
                    "1"),
    "fluct_slope_low": ("lower end of the bootstrap interval of fluct_slope", "1"),
    "fluct_slope_high": ("upper end of the bootstrap interval of fluct_slope", "1"),
    "fluct_expected_slope": ("expected slope -2 alpha of fluct_var (NaN: no prediction)",
                             "1"),
    # without a mean field (paper Sec. 4; analysis/checks/scaling.py, analysis/checks/highdim.py)
    "fit": ("what a slope is fitted to: the mean over target realisations or one of them",
            "1"),
    "ens_var": ("sum_q w_q Var_seeds f_n(t, x_q): E||f_n - E f_n||^2_mu", "1"),
    "ens_var_slope": ("slope of log(n ens_var) against log n (LLN: at most 0)", "1"),
    "ens_var_slope_low": ("lower end of the bootstrap interval of ens_var_slope", "1"),
    "ens_var_slope_high": ("upper end of the bootstrap interval of ens_var_slope", "1"),
    "dist_largest": ("mean over seeds of ||f_n - f_bar||^2_mu, f_bar the largest-n mean", "1"),
    "dist_largest_slope": ("slope of log dist_largest against log n", "1"),
    "dist_largest_slope_low": ("lower end of the bootstrap interval of dist_largest_slope",
                               "1"),
    "dist_largest_slope_high": ("upper end of the bootstrap interval of "
                                "dist_largest_slope", "1"),
    "final_loss_mean": ("mean over seeds of the loss (4.8) at the last save time", "1"),
    "loss_slope": ("slope of log final_loss_mean against log n (Figs. 1, 3)", "1"),
    "loss_slope_low": ("lower end of the bootstrap interval of loss_slope", "1"),
    "loss_slope_high": ("upper end of the bootstrap interval of loss_slope", "1"),
    "signed_pos": ("mean over seeds of <Theta(f) (f - f_n)>_mu at the last save time (4.11)",
                   "1"),
    "signed_pos_slope": ("slope of log |signed_pos| against log n (Fig. 3)", "1"),
    "signed_pos_slope_low": ("lower end of the bootstrap interval of signed_pos_slope", "1"),
    "signed_pos_slope_high": ("upper end of the bootstrap interval of signed_pos_slope", "1"),
    "signed_pos_sign_changes": ("sign changes of signed_pos between consecutive n", "1"),
    "signed_neg": ("mean over seeds of <Theta(-f) (f - f_n)>_mu at the last save time (4.11)",
                   "1"),
    "signed_neg_slope": ("slope of log |signed_neg| against log n (Fig. 3)", "1"),
    "signed_neg_slope_low": ("lower end of the bootstrap interval of signed_neg_slope", "1"),
    "signed_neg_slope_high": ("upper end of the bootstrap interval of signed_neg_slope", "1"),
    "signed_neg_sign_changes": ("sign changes of signed_neg between consecutive n", "1"),
    "m_gram_min_ratio": ("lambda_min/lambda_max of the nonzero spectrum of M[rho_n] "
                         "(Gram matrix, seed 0, last save time)", "1"),
    "m_gram_rank": ("numerical rank of the Gram matrix of M[rho_n] (-1: not computed)", "1"),
    "m_gram_size": ("side min(Q, n (N + 1)) of the spectrum of M[rho_n] (0: not computed)",
                    "1"),
    "m_gram_tolerance": ("round-off bound of m_gram_min_ratio for a PSD matrix", "1"),
    "quench_loss_ratio": ("mean loss at the last save time over that at the quench "
                          "(largest n)", "1"),
    "quench_loss_ratio_low": ("lower end of the bootstrap interval of quench_loss_ratio",
                              "1"),
    "quench_loss_ratio_high": ("upper end of the bootstrap interval of quench_loss_ratio",
                               "1"),
    "quench_time": ("last save time at or before the batch quench", "1"),
    "quench_n": ("n of the quench_loss_ratio", "1"),
    # SGD fluctuation prediction (THEORY 4b; analysis/checks/sgd.py)
    "sgd_theta": ("SGD noise temperature theta_ref = dt / P(0) per n (3.13)", "1"),
    "sgd_var_ratio": ("sum_q w_q n Var_seeds(f_n - f_0) / tr_mu(Sigma_t + n theta "
                      "Sigma^SGD_t) (expected 1)", "1"),
    "sgd_var_ratio_stderr": ("standard error of sgd_var_ratio under the Gaussian "
                             "prediction", "1"),
    "sgd_var_ratio_z": ("(sgd_var_ratio - 1) / sgd_var_ratio_stderr", "1"),
    "sgd_term_ratio": ("n theta tr_mu Sigma^SGD_t / tr_mu Sigma_t (SGD over GD term)", "1"),
    "sgd_ratio_gd": ("tr_mu Sigma_t / tr_mu(Sigma_t + n theta Sigma^SGD_t): the ratio the "
                     "GD prediction alone gives", "1"),
    "sgd_expected_slope": ("slope of log tr_mu(Sigma_t + n theta_n Sigma^SGD_t)/n against "
                           "log n over the run's n", "1"),
    "sgd_trace": ("tr_mu Sigma^SGD_t (per unit theta_ref)", "1"),
    "sgd_growth": ("growth rate of tr_mu Sigma^SGD_t over the save interval ending at t",
                   "1"),
    "sgd_loss_0": ("mean-field loss 1/2 ||f_0 - f||^2_mu of the reference f_0", "1"),
    # baselines beside trained units (particles/baselines.py, analysis/checks/baselines.py)
    "f_n_monte_carlo": ("Monte-Carlo units' network f_n on the x nodes (c = G/rho_bar)", "1"),
    "loss_monte_carlo": ("Monte-Carlo units' loss (1.2)", "1"),
    "f_n_random_features": ("random features' network f_n on the x nodes (y frozen)", "1"),
    "loss_random_features": ("random features' loss (1.2)", "1"),
    "ensemble": ("ensemble: trained units, Monte-Carlo units or random features", "1"),
    "f_lazy": ("lazy-regime prediction f + exp(-t M[rho_in])(f(0) - f) on the x nodes", "1"),
    "lazy_gap": ("||f_0 - f_lazy||_mu / ||f(0) - f||_mu (feature learning)", "1"),
    "lazy_gap_bound": ("RK4 time-error bound of lazy_gap for y frozen", "1"),
    "lazy_loss": ("loss 1/2 ||f_lazy - f||^2_mu of the lazy prediction", "1"),
    "lazy_reference_loss": ("loss of the reference f_0 beside the lazy prediction", "1"),
    "baseline_excess_loss": ("mean loss at the last save time over the ensemble's limit", "1"),
    "baseline_excess_slope": ("slope of baseline_excess_loss against n", "1"),
    "baseline_excess_slope_low": ("lower end of the bootstrap interval of "
                                  "baseline_excess_slope", "1"),
    "baseline_excess_slope_high": ("upper end of the bootstrap interval of "
                                   "baseline_excess_slope", "1"),
    "baseline_floor": ("the ensemble's limit loss: l(f_0(T)), l(f_lazy,c(T)) or the "
                       "Monte-Carlo bias", "1"),
    # self-healing and the closure (2.50) (analysis/checks/healing.py)
    "excess_loss": ("mean over seeds of loss(f_n(t)) - loss_0(t)", "1"),
    "excess_loss_stderr": ("standard error over seeds of excess_loss", "1"),
    "excess_loss_power": ("predicted signal tr Sigma/(2n) over the standard error "
                          "sqrt((||r_0||^2 tr Sigma/n + (tr Sigma)^2/(2n^2))/S)", "1"),
    "excess_loss_slope": ("slope of log excess_loss against log n (expected -1)", "1"),
    "excess_loss_slope_low": ("lower end of the bootstrap interval of excess_loss_slope", "1"),
    "excess_loss_slope_high": ("upper end of the bootstrap interval of excess_loss_slope", "1"),
    "excess_loss_fall": ("n excess_loss at excess_loss_fall_to over that at "
                         "excess_loss_fall_from (expected < 1)", "1"),
    "excess_loss_fall_low": ("lower end of the bootstrap interval of excess_loss_fall", "1"),
    "excess_loss_fall_high": ("upper end of the bootstrap interval of excess_loss_fall", "1"),
    "excess_loss_fall_from": ("first save time at or after the peak of tr Sigma_t with "
                              "power", "1"),
    "excess_loss_fall_to": ("last save time with power", "1"),
    "excess_loss_fall_expected": ("tr Sigma at excess_loss_fall_to over tr Sigma at "
                                  "excess_loss_fall_from (leading order)", "1"),
    "r0_norm": ("||f_0(t) - f||_mu", "1"),
    "trace_sigma_peak_time": ("save time of the largest tr_mu Sigma_t", "1"),
    "trace_sigma_decay": ("tr_mu Sigma_T over its peak over the save times", "1"),
    "healing_time_measured": ("time for tr_mu Sigma_t to halve from its peak (influence)", "1"),
    "healing_time_predicted": ("time for tr_mu Sigma to halve from its peak under the closure "
                               "(2.50) with M[rho_0(T)] frozen", "1"),
    "healing_rate_predicted": ("smallest eigenvalue of M[rho_0(T)] among the directions carrying "
                               "the top half of tr Sigma at its peak", "1"),
    "closure_regime": ("||r_0||_mu / sqrt(tr_mu Sigma_t)", "1"),
    "closure_error": ("relative Frobenius error on L2(mu) of Sigma_t propagated by (2.50) with "
                      "M[rho_0(t)] frozen against Sigma_{t+h}", "1"),
    "closure_horizon": ("horizon h of closure_error", "1"),
    "closure_tolerance": ("2 delta + delta^2 + discretisation, delta = closure_regime", "1"),
    "closure_m_gap": ("spread of closure_error between the sources of M[rho_0(t)]", "1"),
    # step and batch advice (analysis/advise.py, advice.nc)
    "advise_seed": ("index of the ensemble member whose initial draw is used", "1"),
    "dt_max": ("largest stable step of the integrator on E = n l at the initial draws", "1"),
    "lambda_max": ("largest eigenvalue of the Hessian of E = n l at an initial draw", "1"),
    "dt_max_spread": ("spread of the stable step over the members", "1"),
    "batch_equal": ("batch P at which n theta tr Sigma^SGD_T = tr Sigma_T, theta = dt/P", "1"),
    "batch_ratio": ("batch P at which n theta tr Sigma^SGD_T = r tr Sigma_T (--sgd-ratio)", "1"),
    "predicted_var": ("tr_mu of the predicted n Var(f_n - f_0) at T", "1"),
    "healing_t_min": ("shortest T at which the self-healing check has power", "1"),
    "trace_sigma": ("tr_mu Sigma_t (influence method)", "1"),
    "trace_sigma_sgd_T": ("tr_mu Sigma^SGD_T per unit theta (influence method)", "1"),
    "baseline_excess_ratio": ("excess loss of trained units over that of Monte-Carlo units "
                              "at the last save time", "1"),
    "baseline_excess_ratio_low": ("lower end of the bootstrap interval of "
                                  "baseline_excess_ratio", "1"),
    "baseline_excess_ratio_high": ("upper end of the bootstrap interval of "
                                   "baseline_excess_ratio", "1"),
    "baseline_lln_slope": ("slope of n E||f_n - E f_n||^2_mu against n per ensemble at the last "
                           "save time (the LLN from the ensemble alone)", "1"),
    "baseline_lln_slope_low": ("lower end of the bootstrap interval of baseline_lln_slope", "1"),
    "baseline_lln_slope_high": ("upper end of the bootstrap interval of baseline_lln_slope",
                                "1"),
    "monte_carlo_expected_loss": ("exact expected loss of Monte-Carlo units, (1/2n) Var + "
                                  "bias", "1"),
}


def long_name_units(name) -> tuple[str, str] | None:
    """``(long_name, units)`` of a variable or coordinate, or None when it has none here."""
    name = str(name)
    if name in VARIABLES:
        return VARIABLES[name]
    m = re.fullmatch(r"y_(\d+)", name)
    if m:
        return f"unit position, coordinate {m.group(1)} of y (cell centre)", "1"
    return None


def cf_meta(ds) -> dict:
    """``{name: (long_name, units)}`` for the variables of ``ds`` this table knows."""
    out = {}
    for name in ds.variables:
        got = long_name_units(name)
        if got is not None:
            out[name] = got
    return out
