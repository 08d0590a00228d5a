"""Diagnostics of a population fit as one self-contained HTML page (figures embedded as PNG).

Goodness of fit (observed vs population and individual predictions, conditional weighted
residuals vs time and vs prediction), individual fits (up to 12 subjects) and a visual
predictive check (simulated 5/50/95th percentiles with their 90% bands vs the observed ones,
binned by time). The VPC simulates from the fitted model with the same problem's batched exact
solver, through :func:`simulate_replicates` so the heavy part can be routed elsewhere.

Censored (BLQ) observations are not residuals: the goodness-of-fit panels leave them out, the
individual fits show them as open triangles at their limit, and in the VPC they count as
below the limit — an observed percentile that falls below the highest limit in its time bin
is not drawn (nor are censored values in the scatter). The page says how many there were.
"""

from __future__ import annotations

import base64
import html
import os

import numpy as np

from .. import __version__
from ..cards import card_versions
from .data import file_sha256
from .estimators import FitResult
from .problem import PKProblem


def simulate_replicates(problem: PKProblem, fit: FitResult, n_rep: int, seed: int
                        ) -> np.ndarray:
    """(n_rep, subjects, T) observations simulated from the fitted model at the data's
    design (new η and residuals each replicate)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_rep, problem.n, problem.T))
    d = len(problem.iiv)
    for r in range(n_rep):
        eta = rng.standard_normal((problem.n, d)) * fit.omega_sd[None, :]
        f = problem.predict(fit.theta, eta)
        sd = np.sqrt(problem.variance(f, fit.sigma))
        out[r] = f + sd * rng.standard_normal(f.shape)
    return out


def _png(fig) -> str:
    from ..report import _fig_png

    fig.tight_layout()
    return base64.b64encode(_fig_png(fig)).decode()


def fit_report_html(problem: PKProblem, fit: FitResult, seed: int = 1, n_rep: int = 100) -> str:
    """The HTML report of a fit (figures as embedded PNGs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = problem.mask & ~problem.cens  # censored observations are not residuals
    y = problem.y[m]
    t = problem.t_obs[m]
    pred = problem.predict(fit.theta)[m]
    ipred_all = problem.predict(fit.theta, fit.eta)
    ipred = ipred_all[m]
    R = problem.variance(ipred, fit.sigma, problem.qidx[m])
    cwres = (y - ipred) / np.sqrt(R)
    figs = {}
    notes: dict[str, str] = {}  # a line of text under a figure
    fig, ax = plt.subplots(2, 2, figsize=(9, 8))
    for a, x, lab in ((ax[0, 0], pred, "population prediction"),
                      (ax[0, 1], ipred, "individual prediction")):
        a.loglog(x, y, ".", ms=3, alpha=0.6)
        lim = [max(min(x.min(), y.min()), 1e-3), max(x.max(), y.max())]
        a.plot(lim, lim, "k-", lw=1)
        a.set_xlabel(f"{lab} (ng/mL)")
        a.set_ylabel("observed (ng/mL)")
    ax[1, 0].plot(t, cwres, ".", ms=3)
    ax[1, 0].axhline(0, color="k", lw=1)
    ax[1, 0].set_xlabel("time (h)")
    ax[1, 0].set_ylabel("individual weighted residual")
    ax[1, 1].semilogx(ipred, cwres, ".", ms=3)
    ax[1, 1].axhline(0, color="k", lw=1)
    ax[1, 1].set_xlabel("individual prediction (ng/mL)")
    ax[1, 1].set_ylabel("individual weighted residual")
    figs["Goodness of fit"] = _png(fig)
    # individual fits on a dense grid
    k = min(problem.n, 12)
    sub = problem.take(np.arange(k))
    tmax = problem.t_obs.max()
    grid = np.tile(np.linspace(0.0, tmax, 200), (k, 1))
    q = np.zeros_like(grid, dtype=int)
    dense_i = sub.predict(fit.theta, fit.eta[:k], t=grid, qidx=q)
    dense_p = sub.predict(fit.theta, None, t=grid, qidx=q)
    fig, axs = plt.subplots(3, 4, figsize=(12, 8), squeeze=False)
    for j in range(12):
        a = axs.flat[j]
        if j >= k:
            a.axis("off")
            continue
        mm = sub.mask[j] & (sub.qidx[j] == 0) & ~sub.cens[j]
        a.plot(sub.t_obs[j][mm], sub.y[j][mm], "ko", ms=3)
        mc = sub.mask[j] & (sub.qidx[j] == 0) & sub.cens[j]
        if mc.any():  # below the limit: drawn at the limit, open
            a.plot(sub.t_obs[j][mc], sub.y[j][mc], "v", mfc="none", mec="k", ms=4,
                   label="below LLOQ (at the limit)")
        a.plot(grid[j], dense_i[j], "C0-", lw=1, label="individual")
        a.plot(grid[j], dense_p[j], "C1--", lw=1, label="population")
        a.set_title(f"ID {sub.subjects[j].id}", fontsize=9)
        a.set_xlabel("h", fontsize=8)
    axs.flat[0].legend(fontsize=7)
    figs["Individual fits (parent plasma, ng/mL)"] = _png(fig)
    # VPC of the parent's plasma concentrations, binned by time quantiles
    sims = simulate_replicates(problem, fit, n_rep, seed)
    m = problem.mask & (problem.qidx == 0)
    y = problem.y[m]
    t = problem.t_obs[m]
    cens = problem.cens[m]
    # a censored value ranks below every observed one; where a percentile lands among them
    # (below the bin's highest limit) it is unknown and not drawn
    y_rank = np.where(cens, -np.inf, y)
    edges = np.unique(np.quantile(t, np.linspace(0, 1, 9)))
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    mids, obs_q, sim_q, obs_f, sim_f = [], [], [], [], []
    lloq = float(y[cens].max()) if cens.any() else None
    for i in range(len(edges) - 1):
        sel = b == i
        if sel.sum() < 3:
            continue
        mids.append(np.median(t[sel]))
        if lloq is not None:  # fraction below the limit: observed vs simulated (90% band)
            obs_f.append(float(cens[sel].mean()))
            sim_f.append(np.quantile((sims[:, m][:, sel] < lloq).mean(axis=1), [0.05, 0.5, 0.95]))
        if (sel & cens).any():  # order statistics (no interpolation with −∞)
            oq = np.quantile(y_rank[sel], [0.05, 0.5, 0.95], method="inverted_cdf")
            obs_q.append(np.where(oq > y[sel & cens].max(), oq, np.nan))
        else:
            obs_q.append(np.quantile(y[sel], [0.05, 0.5, 0.95]))
        s = sims[:, m][:, sel]
        sq = np.quantile(s, [0.05, 0.5, 0.95], axis=1)  # (3, rep)
        sim_q.append(np.quantile(sq, [0.05, 0.5, 0.95], axis=1))  # (3 bands, 3 pct)
    if mids:  # a VPC needs at least one time bin with ≥ 3 observations
        mids = np.array(mids)
        obs_q = np.array(obs_q)
        sim_q = np.array(sim_q)
        if lloq is None:
            fig, a = plt.subplots(figsize=(8, 5))
        else:
            fig, (a, af) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 1.2]})
            sim_f = np.array(sim_f)
            af.fill_between(mids, sim_f[:, 0], sim_f[:, 2], color="C2", alpha=0.25,
                            label=f"simulated, 90% band of {n_rep}")
            af.plot(mids, sim_f[:, 1], "C2--", lw=1)
            af.plot(mids, obs_f, "k.-", lw=1.2, label="observed")
            af.set_ylim(-0.02, 1.02)
            af.set_ylabel(f"fraction < {lloq:g}")
            af.set_xlabel("time (h)")
            af.legend(fontsize=7, loc="upper left")
        a.semilogy(t[~cens], np.maximum(y[~cens], 1e-3), ".", color="0.7", ms=3)
        if cens.any():
            a.axhline(y[cens].max(), color="k", ls=":", lw=1)
            a.text(t.min(), y[cens].max(), f" LLOQ {y[cens].max():g} ng/mL "
                   f"({cens.sum()} of {cens.size} below)", va="bottom", fontsize=8)
        for j, col in zip(range(3), ("C0", "C3", "C0"), strict=True):
            a.fill_between(mids, sim_q[:, 0, j], sim_q[:, 2, j], color=col, alpha=0.2)
            a.plot(mids, obs_q[:, j], color=col, lw=1.5)
        if lloq is None:
            a.set_xlabel("time (h)")
        a.set_ylabel("concentration (ng/mL)")
        a.set_title(f"VPC: observed 5/50/95th percentiles (lines), 90% bands of {n_rep} "
                    "simulations")
        figs["Visual predictive check"] = _png(fig)
        if lloq is not None:
            notes["Visual predictive check"] = (
                f"Fraction below the LLOQ ({lloq:g} ng/mL) per time bin (median times "
                f"{', '.join(f'{x:.3g}' for x in mids)} h): observed "
                f"{', '.join(f'{x:.2f}' for x in obs_f)}; simulated median "
                f"{', '.join(f'{x:.2f}' for x in sim_f[:, 1])} (90% band "
                f"{', '.join(f'{lo:.2f}–{hi:.2f}' for lo, hi in sim_f[:, [0, 2]])}).")
    plt.close("all")
    # an IIV at its bound: its CV is the bound, not an estimate (the warning says so; the
    # table said "1.0%" as if estimated)
    at_b = set(fit.diagnostics.get("at_bounds", []))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{e.value:.4g}</td><td>{e.se:.3g}</td>"
        f"<td>{e.ci95[0]:.4g} – {e.ci95[1]:.4g}"
        f"{' (profile)' if e.ci95_method == 'profile-likelihood' else ''}</td><td>"
        f"{'' if e.iiv_cv is None else f'{100 * e.iiv_cv:.1f}%'}"
        f"{' (at bound)' if e.iiv_cv is not None and f'omega_{k}' in at_b else ''}</td>"
        f"<td>{html.escape(problem.units(k))}</td></tr>" for k, e in fit.estimates.items())
    rows += "".join(f"<tr><td>{k}</td><td>{e.value:.4g}</td><td>{e.se:.3g}</td>"
                    f"<td>{e.ci95[0]:.4g} – {e.ci95[1]:.4g}</td><td></td><td></td></tr>"
                    for k, e in fit.residual.items())
    diag = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
                   for k, v in fit.diagnostics.items())
    body = "".join(f"<h2>{html.escape(k)}</h2><img src='data:image/png;base64,{v}'>"
                   + (f"<p>{html.escape(notes[k])}</p>" if k in notes else "")
                   for k, v in figs.items())
    warns = "".join(f"<li>{html.escape(w)}</li>" for w in fit.warnings())
    warns = f"<p><b>Warnings</b></p><ul style='color:#a40'>{warns}</ul>" if warns else ""
    versions = html.escape(str({k: v for k, v in card_versions().items()
                                if k.startswith("pk")}))
    src = problem.data.source
    sha = f" (sha256 {file_sha256(src)})" if os.path.isfile(src) else ""
    inputs = html.escape(f"Data: {src}{sha}. Estimated: {', '.join(problem.estimate)}; IIV on: "
                         f"{', '.join(problem.iiv) or 'none'}.")
    err_txt = html.escape(problem.error.describe())
    n_cens = getattr(fit, "n_censored", 0)
    if n_cens:
        how = ("entered the likelihood as the probability of being below the limit (Beal's "
               "M3); they are left out of the residual plots, drawn as open triangles at "
               "the limit in the individual fits, and count as below the limit in the VPC"
               if fit.blq == "m3" else "were dropped before the fit (M1)")
        inputs += html.escape(f" {n_cens} observation(s) below the limit of quantification "
                              f"{how}.")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ketasim fit</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}}td,th{{padding:2px 8px}}
img{{max-width:100%}}</style></head><body>
<h1>Population fit: {html.escape(problem.card.id)} ({fit.method})</h1>
<p>{fit.n_subjects} subjects, {fit.n_obs} observations; objective (−2 log L)
{fit.objective:.3f}; converged: {fit.converged}; {fit.elapsed_s:.1f} s. Error model:
{err_txt}. ketasim {__version__}, seed {seed}.</p><p>{inputs}</p>{warns}
<table><tr><th>parameter</th><th>estimate</th><th>SE</th><th>95% CI</th><th>IIV CV</th>
<th>units</th></tr>{rows}</table><h3>Diagnostics</h3><ul>{diag}</ul>{body}
<p style="font-size:small">Card hashes: {versions}. ketasim is a research tool, not medical
advice.</p></body></html>"""
