"""Estimators, kept apart from problems (pints style): population FOCE-I, individual MAP and
individual posterior sampling (emcee).

**Why FOCE-I.** The PK problems here are linear compartment models solved exactly and batched
over subjects (:class:`~ketasim.fit.problem.PKProblem`), so one prediction of 200 subjects
costs about a millisecond and is deterministic. FOCE-I (first-order conditional estimation
with interaction, Laplace form) turns that into a smooth objective that a quasi-Newton method
minimises in a few hundred evaluations, gives the NONMEM-comparable −2 log-likelihood and
standard errors from its Hessian. SAEM would need an MCMC E-step per iteration and stochastic
(Louis) standard errors; with rich PK data its estimates agree with FOCE-I, at a higher and
noisier cost. FOCE-I's known weakness — biased variances with sparse, strongly non-linear
data — is reported through the recovery study (``scripts/recovery_study.py``).

Objective (−2 log L, Laplace approximation at the conditional modes ``η̂ᵢ``)::

    OFV = Σᵢ [ Σⱼ (log 2πRᵢⱼ + (yᵢⱼ − fᵢⱼ)²/Rᵢⱼ) + η̂ᵢᵀΩ⁻¹η̂ᵢ + log|Ω| + log|JᵢᵀW̃ᵢJᵢ + Ω⁻¹| ]

with ``f, R`` evaluated at ``η̂ᵢ`` (the interaction), ``Jᵢ = ∂f/∂η`` (forward differences)
and ``W̃ = 1/R + (∂R/∂f)²/(2R²)`` the expected information of a normal with variance ``R(f)``.
The conditional modes are found for all subjects at once by a batched Levenberg–Marquardt
iteration; the outer problem (log θ, log ω, log σ) by L-BFGS-B with central-difference
gradients. Settings below are estimator tolerances, not model numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from ..cards import load_param_card
from ..errors import KetasimError
from .problem import PKProblem

#: estimator settings (documented in docs/fit.md)
INNER_MAX_ITER = 60
INNER_TOL = 1e-7  # Newton decrement (−2LL units) at convergence, per subject
JAC_STEP = 1e-6  # forward-difference step in η
MAX_STEP = 1.0  # largest change of one η per LM step (log scale)
OUTER_STEP = 1e-3  # central-difference step in log θ, log ω, log σ
GRAD_INNER_STEPS = 1  # Newton steps of η̂ at the shifted points of a gradient
INNER_TOL_COV = 1e-13  # tighter for the covariance step (differences of differences)
HESS_STEP = 5e-3  # forward-difference step of the gradient for the Hessian
MAX_RESTARTS = 4  # L-BFGS-B restarts while the gradient is not small
RESTART_GRAD_PER_SUBJECT = 0.02  # |∂OFV/∂(log parameter)| accepted, per subject (the
# objective's curvature grows with the number of subjects, so this is a fixed relative accuracy)
OMEGA_BOUNDS = (np.log(0.01), np.log(3.0))  # SD of η (log scale)
Z95 = 1.959963984540054


@dataclass
class Conditional:
    """Conditional modes of all subjects and what the Laplace term needs."""

    eta: np.ndarray  # (n, d)
    f: np.ndarray  # (n, T) predictions at eta
    R: np.ndarray  # (n, T) residual variance at eta
    info: np.ndarray  # (n, d, d) JᵀW̃J + Ω⁻¹
    obj: np.ndarray  # (n,) data + prior part of −2 log p (no 2π)
    converged: np.ndarray  # (n,) bool


def _sig(problem: PKProblem, log_sig: np.ndarray) -> dict[str, float]:
    return {k: float(np.exp(v)) for k, v in zip(problem.error.names, log_sig, strict=True)}


def _data_obj(problem: PKProblem, f: np.ndarray, sig: dict[str, float]):
    R = problem.error.variance(f, sig)
    r = problem.y - f
    ll = np.where(problem.mask, np.log(R) + r * r / R, 0.0).sum(axis=1)
    return ll, R, r


def conditional_modes(problem: PKProblem, theta: dict[str, float], omega_sd: np.ndarray,
                      sig: dict[str, float], eta0: np.ndarray | None = None,
                      tol: float = INNER_TOL, max_iter: int = INNER_MAX_ITER) -> Conditional:
    """Batched Levenberg–Marquardt for η̂ᵢ = argmin [data −2LL + ηᵀΩ⁻¹η] of every subject."""
    n, d = problem.n, len(problem.iiv)
    Oinv = np.diag(1.0 / omega_sd**2)
    eta = np.zeros((n, d)) if eta0 is None else eta0.copy()
    mu = np.full(n, 1e-3)
    mask = problem.mask

    def total(e):
        f = problem.predict(theta, e)
        ll, R, r = _data_obj(problem, f, sig)
        return ll + np.einsum("ni,ij,nj->n", e, Oinv, e), f, R, r

    obj, f, R, r = total(eta)
    conv = np.zeros(n, bool)
    J = np.zeros((n, problem.T, d))
    for _ in range(max_iter):
        for k in range(d):
            e2 = eta.copy()
            e2[:, k] += JAC_STEP
            J[:, :, k] = (problem.predict(theta, e2) - f) / JAC_STEP
        J[~mask] = 0.0
        dR = problem.error.dvariance(f, sig)
        gf = np.where(mask, dR / R - 2 * r / R - r * r * dR / R**2, 0.0)
        W = np.where(mask, 1.0 / R + 0.5 * (dR / R) ** 2, 0.0)
        g = np.einsum("ntk,nt->nk", J, gf) + 2 * eta @ Oinv
        H = 2 * np.einsum("ntk,nt,ntl->nkl", J, W, J) + 2 * Oinv
        # Newton decrement gᵀH⁻¹g/2 ≈ the remaining decrease of the objective
        dec = 0.5 * np.einsum("nk,nk->n", g, np.linalg.solve(H, g[:, :, None])[:, :, 0])
        conv |= dec < tol
        if conv.all():
            break
        improved = np.zeros(n, bool)
        step = np.zeros((n, d))
        for _try in range(8):
            todo = ~improved & ~conv
            if not todo.any():
                break
            diag = np.maximum(np.diagonal(H, axis1=1, axis2=2), 1e-12)
            Hd = H + mu[:, None, None] * np.eye(d) * diag[:, :, None]
            st = np.clip(-np.linalg.solve(Hd, g[:, :, None])[:, :, 0], -MAX_STEP, MAX_STEP)
            e_try = np.where(todo[:, None], eta + st, eta)
            o2, f2, R2, r2 = total(e_try)
            ok = todo & np.isfinite(o2) & (o2 <= obj + 1e-12)
            eta = np.where(ok[:, None], e_try, eta)
            f = np.where(ok[:, None], f2, f)
            R = np.where(ok[:, None], R2, R)
            r = np.where(ok[:, None], r2, r)
            step = np.where(ok[:, None], st, step)
            obj = np.where(ok, o2, obj)
            mu = np.where(ok, np.maximum(mu / 10, 1e-9), np.where(todo, mu * 10, mu))
            improved |= ok
        conv |= ~improved & (mu > 1e6)
        del step
    for k in range(d):
        e2 = eta.copy()
        e2[:, k] += JAC_STEP
        J[:, :, k] = (problem.predict(theta, e2) - f) / JAC_STEP
    J[~mask] = 0.0
    dR = problem.error.dvariance(f, sig)
    W = np.where(mask, 1.0 / R + 0.5 * (dR / R) ** 2, 0.0)
    info = np.einsum("ntk,nt,ntl->nkl", J, W, J) + Oinv
    return Conditional(eta, f, R, info, obj, conv)


@dataclass
class Estimate:
    """One estimated quantity in card units, with SE and a 95% interval."""

    value: float
    se: float
    ci95: tuple[float, float]
    iiv_cv: float | None = None
    iiv_cv_ci95: tuple[float, float] | None = None
    iiv_sd: float | None = None

    def to_dict(self) -> dict:
        """JSON-ready form: value, se, ci95, iiv_cv."""
        d = {"value": self.value, "se": self.se, "ci95": list(self.ci95),
             "iiv_cv": self.iiv_cv}
        if self.iiv_cv_ci95 is not None:
            d["iiv_cv_ci95"] = list(self.iiv_cv_ci95)
            d["iiv_sd_log"] = self.iiv_sd
        return d


@dataclass
class FitResult:
    """A population or individual fit (values in card units; CVs as fractions)."""

    method: str
    estimates: dict[str, Estimate]
    residual: dict[str, Estimate]
    objective: float
    n_subjects: int
    n_obs: int
    converged: bool
    eta: np.ndarray
    theta: dict[str, float]
    omega_sd: np.ndarray
    sigma: dict[str, float]
    diagnostics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready form of the fit (estimates, objective, diagnostics)."""
        return {"method": self.method,
                "estimates": {k: v.to_dict() for k, v in self.estimates.items()},
                "residual_error": {k: v.to_dict() for k, v in self.residual.items()},
                "objective": self.objective, "n_subjects": self.n_subjects,
                "n_obs": self.n_obs, "converged": self.converged,
                "diagnostics": self.diagnostics, "elapsed_s": self.elapsed_s}


def _cv(sd: float) -> float:
    return float(np.sqrt(np.expm1(sd * sd)))


class PopulationFOCEI:
    """Population estimation of typical values, IIV (diagonal Ω, log-normal) and residual
    error by FOCE-I. ``run()`` returns a :class:`FitResult`."""

    def __init__(self, problem: PKProblem, theta0: dict[str, float] | None = None,
                 omega0: float = 0.3, max_iter: int = 200, covariance: bool = True) -> None:
        self.problem = problem
        self.theta0 = {**problem.theta0(), **(theta0 or {})}
        self.omega0 = omega0
        self.max_iter = max_iter
        self.covariance = covariance
        self._eta: np.ndarray | None = None
        self._tol = INNER_TOL
        self._max_iter = INNER_MAX_ITER
        self.n_eval = 0

    def _split(self, x: np.ndarray):
        pr = self.problem
        p, d = len(pr.estimate), len(pr.iiv)
        theta = {k: float(np.exp(v)) for k, v in zip(pr.estimate, x[:p], strict=True)}
        return theta, np.exp(x[p:p + d]), _sig(pr, x[p + d:])

    def ofv(self, x: np.ndarray) -> float:
        """−2 log-likelihood (FOCE-I) at packed log-parameters ``x``."""
        self.n_eval += 1
        pr = self.problem
        theta, om, sig = self._split(x)
        c = conditional_modes(pr, theta, om, sig, self._eta, self._tol, self._max_iter)
        if not np.all(np.isfinite(c.obj)):
            return 1e300
        _, logdet = np.linalg.slogdet(c.info)
        val = float(c.obj.sum() + pr.n * np.sum(np.log(om**2)) + logdet.sum()
                    + pr.n_obs * np.log(2 * np.pi))
        if np.isfinite(val):
            self._eta = c.eta
            self._last = c
        return val

    def _grad(self, x: np.ndarray, full: bool = False) -> np.ndarray:
        """Central differences; at each shifted point the conditional modes take
        ``GRAD_INNER_STEPS`` damped Newton steps from the modes at ``x`` (their shift is O(h),
        so the objective error is O(h⁴) and the gradient error O(h)); ``full``: converge
        them (for the covariance step)."""
        g = np.zeros_like(x)
        self._max_iter = INNER_MAX_ITER if full else GRAD_INNER_STEPS
        eta = None if self._eta is None else self._eta.copy()
        for k in range(len(x)):
            e = np.zeros_like(x)
            e[k] = OUTER_STEP
            self._eta = eta
            fp = self.ofv(x + e)
            self._eta = eta
            fm = self.ofv(x - e)
            g[k] = (fp - fm) / (2 * OUTER_STEP)
        self._eta = eta
        self._max_iter = INNER_MAX_ITER
        return g

    def run(self) -> FitResult:
        """Run the FOCE-I population fit; returns estimates with SEs and diagnostics."""
        t0 = time.perf_counter()
        pr = self.problem
        y = pr.y[pr.mask]
        x0 = np.concatenate([np.log([self.theta0[k] for k in pr.estimate]),
                             np.full(len(pr.iiv), np.log(self.omega0)),
                             np.log(list(pr.error.initial(y).values()))])
        p, d = len(pr.estimate), len(pr.iiv)
        bounds = ([(v - 5, v + 5) for v in x0[:p]] + [OMEGA_BOUNDS] * d
                  + [(v - 10, v + 5) for v in x0[p + d:]])
        self.ofv(x0)

        def fg(x):
            f = self.ofv(x)
            return f, self._grad(x)

        x = x0
        nit = 0
        gtol = RESTART_GRAD_PER_SUBJECT * pr.n
        n_restarts = -1
        for _ in range(MAX_RESTARTS + 1):
            n_restarts += 1
            res = minimize(fg, x, jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": self.max_iter, "ftol": 1e-12, "gtol": 1e-4})
            x = res.x
            nit += int(res.nit)
            grad = self._grad(x)
            at_bound = np.array([(x[i] - lo < 1e-6) or (hi - x[i] < 1e-6)
                                 for i, (lo, hi) in enumerate(bounds)])
            free_grad = float(np.max(np.abs(grad[~at_bound]))) if (~at_bound).any() else 0.0
            # L-BFGS-B can stop early after a line search through a diverging trial point;
            # restart (fresh curvature memory) while the gradient is clearly not zero
            if free_grad < gtol:
                break
        f_best = self.ofv(x)
        converged = bool(free_grad < gtol)
        cov = None
        if self.covariance:
            cov = self._covariance(x, at_bound)
            f_best = self.ofv(x)
        theta, om, sig = self._split(x)
        se_log = np.sqrt(np.diag(cov)) if cov is not None else np.full(len(x), np.nan)
        est = {}
        for i, k in enumerate(pr.estimate):
            v, s = theta[k], se_log[i]
            e = Estimate(v, v * s, (v * np.exp(-Z95 * s), v * np.exp(Z95 * s)))
            if k in pr.iiv:
                j = p + pr.iiv.index(k)
                w, sw = om[j - p], se_log[j]
                e.iiv_cv = _cv(w)
                e.iiv_sd = float(w)
                e.iiv_cv_ci95 = (_cv(w * np.exp(-Z95 * sw)), _cv(w * np.exp(Z95 * sw)))
            est[k] = e
        resid = {}
        for i, k in enumerate(pr.error.names):
            v, s = sig[k], se_log[p + d + i]
            resid[k] = Estimate(v, v * s, (v * np.exp(-Z95 * s), v * np.exp(Z95 * s)))
        cond = self._last
        diag = {"optimizer": "L-BFGS-B", "message": str(res.message), "iterations": nit,
                "restarts": n_restarts,
                "objective_evaluations": self.n_eval, "max_abs_gradient": free_grad,
                "at_bounds": [n for n, b in zip(self._names(), at_bound, strict=True) if b],
                "inner_converged_fraction": float(cond.converged.mean()),
                "covariance_ok": bool(cov is not None and np.all(np.isfinite(se_log)))}
        self.cond = cond
        return FitResult("FOCE-I", est, resid, f_best, pr.n, pr.n_obs, converged,
                         cond.eta, theta, om, sig, diag, time.perf_counter() - t0)

    def _names(self) -> list[str]:
        pr = self.problem
        return ([f"theta_{k}" for k in pr.estimate] + [f"omega_{k}" for k in pr.iiv]
                + pr.error.names)

    def _covariance(self, x: np.ndarray, at_bound: np.ndarray) -> np.ndarray | None:
        """2·H⁻¹ of the OFV in log-parameters (forward differences of the central gradient)."""
        m = len(x)
        H = np.zeros((m, m))
        self._tol = INNER_TOL_COV
        self.ofv(x)
        eta = self._eta.copy()
        g0 = self._grad(x, full=True)
        for k in range(m):
            e = np.zeros(m)
            e[k] = HESS_STEP
            self._eta = eta
            H[:, k] = (self._grad(x + e, full=True) - g0) / HESS_STEP
        self._eta = eta
        self._tol = INNER_TOL
        H = 0.5 * (H + H.T)
        free = ~at_bound
        cov = np.full((m, m), np.nan)
        try:
            Hf = H[np.ix_(free, free)]
            if np.any(np.linalg.eigvalsh(Hf) <= 0):
                return cov
            cov[np.ix_(free, free)] = 2.0 * np.linalg.inv(Hf)
        except np.linalg.LinAlgError:
            return cov
        return cov


def prior_omega(problem: PKProblem) -> np.ndarray:
    """Population prior SDs of η for individual fits: the clinic card's PK variability
    (``pk_iiv_cv``, log-normal) for every parameter with IIV."""
    cv = load_param_card("clinic").value("pk_iiv_cv")
    return np.full(len(problem.iiv), np.sqrt(np.log1p(cv * cv)))


class IndividualMAP:
    """Maximum a posteriori parameters of each subject with the population model as prior.

    The prior is ``θ`` (typical values; default the card) and ``Ω`` (default
    :func:`prior_omega`); the residual error is estimated pooled over the subjects (a 1-D/2-D
    outer minimisation of the joint MAP objective) unless ``sigma`` is given.
    """

    def __init__(self, problem: PKProblem, theta: dict[str, float] | None = None,
                 omega_sd: np.ndarray | None = None, sigma: dict[str, float] | None = None):
        self.problem = problem
        self.theta = {**problem.theta0(), **(theta or {})}
        self.omega_sd = prior_omega(problem) if omega_sd is None else np.asarray(omega_sd)
        self.sigma = sigma

    def run(self) -> FitResult:
        """Run the individual MAP fit with the population model as prior."""
        t0 = time.perf_counter()
        pr = self.problem
        sig = self.sigma
        opt_msg = "sigma given"
        if sig is None:
            y = pr.y[pr.mask]
            s0 = np.log(list(pr.error.initial(y).values()))
            state = {"eta": None}

            def f(ls):
                c = conditional_modes(pr, self.theta, self.omega_sd, _sig(pr, ls), state["eta"])
                state["eta"] = c.eta
                return float(c.obj.sum())

            r = minimize(f, s0, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
            sig = _sig(pr, r.x)
            opt_msg = str(r.message)
        c = conditional_modes(pr, self.theta, self.omega_sd, sig)
        cov = np.linalg.inv(c.info)  # (n, d, d), posterior covariance of η (Laplace)
        per = {}
        for i, s in enumerate(pr.subjects):
            vals = {}
            for k in pr.estimate:
                if k in pr.iiv:
                    j = pr.iiv.index(k)
                    v = self.theta[k] * np.exp(c.eta[i, j])
                    sd = np.sqrt(cov[i, j, j])
                    vals[k] = Estimate(float(v), float(v * sd),
                                       (float(v * np.exp(-Z95 * sd)), float(v * np.exp(Z95 * sd))))
                else:
                    vals[k] = Estimate(self.theta[k], 0.0, (self.theta[k],) * 2)
            per[s.id] = vals
        est = {k: Estimate(self.theta[k], 0.0, (self.theta[k],) * 2) for k in pr.estimate}
        resid = {k: Estimate(v, float("nan"), (float("nan"),) * 2) for k, v in sig.items()}
        _, logdet = np.linalg.slogdet(c.info)
        ofv = float(c.obj.sum() + pr.n * np.sum(np.log(self.omega_sd**2)) + logdet.sum()
                    + pr.n_obs * np.log(2 * np.pi))
        res = FitResult("MAP", est, resid, ofv, pr.n, pr.n_obs, bool(c.converged.all()), c.eta,
                        self.theta, self.omega_sd, sig,
                        {"sigma_optimizer": opt_msg,
                         "inner_converged_fraction": float(c.converged.mean())},
                        time.perf_counter() - t0)
        res.individual = per  # type: ignore[attr-defined]
        self.cond = c
        return res


def gelman_rubin(chains: np.ndarray) -> np.ndarray:
    """Split-free R-hat over chains: ``chains`` (m, n, d) → (d,)."""
    m, n, _ = chains.shape
    means = chains.mean(axis=1)
    B = n * means.var(axis=0, ddof=1)
    W = chains.var(axis=1, ddof=1).mean(axis=0)
    var = (n - 1) / n * W + B / n
    return np.sqrt(var / W)


def sample_posterior(log_prob, x0: np.ndarray, seed: int, n_walkers: int = 24,
                     n_steps: int = 2000, burn: int | None = None, scale: float = 0.1,
                     vectorize: bool = True) -> dict:
    """Ensemble MCMC (emcee) of a vectorised log-density; returns draws and diagnostics.

    Diagnostics: mean acceptance fraction, integrated autocorrelation time per dimension
    (``tau``; emcee's estimator, ``tau_reliable`` False when the chain is shorter than 50 τ),
    and R-hat treating four groups of walkers as independent chains.
    """
    import emcee

    d = len(x0)
    rng = np.random.default_rng(seed)
    p0 = x0 + scale * rng.standard_normal((n_walkers, d))
    sampler = emcee.EnsembleSampler(n_walkers, d, log_prob, vectorize=vectorize)
    sampler.random_state = np.random.RandomState(seed).get_state()  # reproducible moves
    sampler.run_mcmc(p0, n_steps, progress=False)
    burn = n_steps // 2 if burn is None else burn
    chain = sampler.get_chain(discard=burn)  # (steps, walkers, d)
    try:
        import logging

        logging.getLogger("emcee").setLevel(logging.ERROR)  # tau_reliable reports it
        tau = sampler.get_autocorr_time(discard=burn, quiet=True)
    except Exception:  # pragma: no cover - emcee raises on very short chains
        tau = np.full(d, np.nan)
    groups = np.array_split(np.arange(n_walkers), 4)
    rhat = gelman_rubin(np.stack([chain[:, g, :].reshape(-1, d) for g in groups]))
    flat = chain.reshape(-1, d)
    return {"draws": flat, "acceptance_fraction": float(np.mean(sampler.acceptance_fraction)),
            "tau": np.asarray(tau, dtype=float), "rhat": rhat,
            "tau_reliable": bool(np.all(np.isfinite(tau)) and
                                 (n_steps - burn) > 50 * np.nanmax(tau)),
            "n_walkers": n_walkers, "n_steps": n_steps, "burn": burn}


class IndividualMCMC:
    """Posterior sampling of one subject's PK random effects (emcee) given a population model
    (``θ``, ``Ω``, ``σ``; e.g. from :class:`PopulationFOCEI` or the card prior)."""

    def __init__(self, problem: PKProblem, subject_index: int, theta: dict[str, float],
                 omega_sd: np.ndarray, sigma: dict[str, float], seed: int = 1,
                 n_walkers: int = 24, n_steps: int = 2000) -> None:
        if not 0 <= subject_index < problem.n:
            raise KetasimError("subject", f"index {subject_index} out of range 0..{problem.n-1}")
        self.pr = problem
        self.i = subject_index
        self.theta, self.omega_sd, self.sigma = theta, np.asarray(omega_sd), sigma
        self.seed, self.n_walkers, self.n_steps = seed, n_walkers, n_steps

    def run(self) -> dict:
        """Sample one subject's posterior (emcee); returns draws and convergence diagnostics."""
        pr = self.pr
        sub = pr.take(np.full(self.n_walkers, self.i))
        Oinv = 1.0 / self.omega_sd**2

        def logp(eta: np.ndarray) -> np.ndarray:
            if eta.shape[0] != sub.n:
                s2 = pr.take(np.full(eta.shape[0], self.i))
            else:
                s2 = sub
            f = s2.predict(self.theta, eta)
            ll, _, _ = _data_obj(s2, f, self.sigma)
            out = -0.5 * (ll + (eta * eta * Oinv).sum(axis=1))
            return np.where(np.isfinite(out), out, -np.inf)

        c = conditional_modes(pr.take(np.array([self.i])), self.theta, self.omega_sd, self.sigma)
        res = sample_posterior(logp, c.eta[0], self.seed, self.n_walkers, self.n_steps,
                               scale=0.05)
        vals = {}
        for k in pr.iiv:
            j = pr.iiv.index(k)
            v = self.theta[k] * np.exp(res["draws"][:, j])
            vals[k] = {"median": float(np.median(v)),
                       "ci95": [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))]}
        res["estimates"] = vals
        return res
