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

**Quadrature refinement (default).** The Laplace term is exact only when each subject's
posterior of η is Gaussian. Where a random effect is weakly identified it is not: V1 after a
40-min infusion (kamp2020, 15 samples) has a per-subject posterior SD of 0.15–0.18 against
ω = 0.3, the Laplace term is off by up to 0.2 −2LL units per subject, and the error depends on
V1 systematically, so FOCE-I overestimated V1 by 3.0% (relative to the geometric mean of the
simulated subjects' V1; +0.3% after the refinement, 50 replicates in docs/fit.md). From
the FOCE-I optimum the fit therefore takes damped Newton steps (FOCE-I Hessian as metric) on
the adaptive Gauss–Hermite quadrature of each subject's marginal likelihood — nodes
``η̂ᵢ + Lᵢz_q`` with ``LᵢLᵢᵀ`` the Laplace covariance, 5 nodes per random effect (25 for two;
3 per effect for four or five effects; plain FOCE-I beyond), which reduces to the Laplace
term with one node. Five
nodes agree with a dense-grid integral to < 0.003 per subject and with seven nodes to 0.0004
in log V1 (tests/test_fit.py, docs/fit.md). ``quadrature=False`` gives plain FOCE-I.

**Censored observations (BLQ, Beal's M3).** A concentration below its limit L contributes
``−2 log Φ((L − f)/√R)`` instead of the normal term (:func:`_data_obj`), in the modes, the
quadrature integrand (so the reported objective is the exact marginal likelihood with M3),
MAP and MCMC; FOCE-I's Laplace matrix uses the Gauss–Newton curvature of those terms
(:func:`_score_weights`). M1 (dropping them) is the problem's ``blq="m1"``.

**Covariance.** ``2·H⁻¹`` of the reported (quadrature) objective in the log-parameters, H by
forward differences of central-difference gradients with converged modes; intervals
``exp(log θ ± 1.96·SE)`` (log scale: positive parameters, skewed intervals). The robust
sandwich ``H⁻¹SH⁻¹`` (S: outer products of the subjects' gradients, NONMEM's default $COV) is
computed too and reported in ``diagnostics["se_log_sandwich"]`` but not used: with the model
right both estimate the same variance, the sandwich with more noise at 50 subjects; in the
recovery study it was not wider for V1 (same coverage), and the SE of log V1 matched the
spread expected from ω/√n and the per-subject information (docs/fit.md).

**Profile-likelihood intervals** (default where affordable, ``profile=``). For the typical
values and the IIV SDs, ``ci95`` (``iiv_cv_ci95``) is the likelihood-ratio interval on the
reported objective: the values of the log-parameter where the profile −2LL (all other free
parameters re-optimised) is ``min + 3.841`` (χ²₁, 0.95) — asymmetric where the likelihood is,
invariant to the parameterisation, as NONMEM users get from PsN's ``llp``. Each bound is a
secant search on the signed root √ΔOFV from Wald's bound, each profile point a few Newton
steps of the other parameters with the covariance step's Hessian as metric (about 13
objective evaluations a point, 1–3 points a bound). The Wald SE stays in ``se`` and the Wald
interval in ``ci95_wald``; ``ci95_method`` names the method. Profiles run by default while
subjects × quadrature nodes × profiled parameters ≤ ``PROFILE_AUTO_WORK`` (CL and V1 with
IIV: 5000 for 50 subjects, 20000 for 200 — measured 87 s for that fit, 29 s of it profiles),
else Wald intervals (the 200-subject, four-parameter fit: 129600, keeps its time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_ndtr

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
AGQ_NODES = 5  # Gauss–Hermite nodes per random effect (exact to degree 9 per coordinate)
AGQ_MAX_NODES = 243  # largest product grid per subject (fewer nodes per dimension beyond)
REFINE_MAX_ITER = 8  # Newton iterations on the quadrature objective after FOCE-I
REFINE_GRAD_FRACTION = 0.1  # stop them when max |gradient| < this × the FOCE-I tolerance
MAX_RESTARTS = 4  # L-BFGS-B restarts while the gradient is not small
RESTART_GRAD_PER_SUBJECT = 0.02  # |∂OFV/∂(log parameter)| accepted, per subject (the
# objective's curvature grows with the number of subjects, so this is a fixed relative accuracy)
OMEGA_BOUNDS = (np.log(0.01), np.log(3.0))  # SD of η (log scale)
Z95 = 1.959963984540054
CHI2_95 = Z95 * Z95  # χ²₁ 0.95 quantile (3.8415): the likelihood-ratio cut of a 95% interval
PROFILE_ROOT_TOL = 0.01  # |signed root √ΔOFV − 1.96| accepted at a profile bound
PROFILE_MAX_POINTS = 6  # profile points per side (secant search for the bound)
PROFILE_NEWTON_MAX = 4  # Newton iterations of the other parameters at one profile point
PROFILE_DECREMENT = 0.01  # stop them when the predicted further decrease (−2LL) is below
PROFILE_AUTO_WORK = 20000  # profiles by default while subjects × nodes × profiled ≤ this


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
    """Each subject's data part of −2 log p(y|η) without the log 2π constants ((n,)), the
    residual variance R and the residuals ``y − f`` ((n, T) each).

    An observed value contributes ``log R + (y − f)²/R``; a censored one (BLQ, ``y`` its limit,
    Beal's M3) ``−2 log Φ((y − f)/√R)``, the probability of a value below the limit, computed
    by ``scipy.special.log_ndtr`` (no underflow far in the tail; with R → 0 under the
    proportional model at f = 0 the term is 0, as Φ → 1)."""
    R = problem.variance(f, sig)
    r = problem.y - f
    if not problem.any_censored:
        ll = np.where(problem.mask, np.log(R) + r * r / R, 0.0).sum(axis=1)
        return ll, R, r
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        term = np.where(problem.cens, -2.0 * log_ndtr(r / np.sqrt(R)), np.log(R) + r * r / R)
    ll = np.where(problem.mask, term, 0.0).sum(axis=1)
    return ll, R, r


def _score_weights(problem: PKProblem, f: np.ndarray, R: np.ndarray, r: np.ndarray,
                   sig: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per observation ((n, T) each): ``gf`` = ∂(data −2LL)/∂f (exact) and the weight ``W``
    of the Gauss–Newton curvature ``∂²(−2LL)/∂η² ≈ 2·JᵀWJ``.

    Observed values: ``W = 1/R + (∂R/∂f)²/(2R²)``, the expected information of a normal with
    variance R(f) (FOCE-I's W̃). Censored ones (M3, ``z = (LLOQ − f)/s``, ``s = √R``,
    ``λ = φ(z)/Φ(z)``): ``gf = −2λ·dz/df`` and ``W = λ(z + λ)·(dz/df)²`` — the exact second
    derivative of ``−2 log Φ(z(f))`` in f without the ``d²z/df²`` term (exact for additive
    error; always ≥ 0, as ``0 < λ(z + λ) < 1``), times JᵀJ as for the observed values."""
    mask = problem.mask
    dR = problem.dvariance(f, sig)
    gf = np.where(mask, dR / R - 2 * r / R - r * r * dR / R**2, 0.0)
    W = np.where(mask, 1.0 / R + 0.5 * (dR / R) ** 2, 0.0)
    if problem.any_censored:
        cm = problem.cens
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            sd = np.sqrt(R)
            z = r / sd
            dz = -(1.0 + z * dR / (2.0 * sd)) / sd  # z = (L − f)/s(f): −(1 + z·s')/s, s' = R'/(2s)
            lam = np.exp(-0.5 * z * z - 0.5 * np.log(2 * np.pi) - log_ndtr(z))  # φ/Φ
            gc = -2.0 * lam * dz
            wc = np.clip(lam * (z + lam), 0.0, 1.0) * dz * dz
        gf = np.where(cm, gc, gf)
        W = np.where(cm, wc, W)
    return gf, W


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
        gf, W = _score_weights(problem, f, R, r, sig)
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
    W = _score_weights(problem, f, R, r, sig)[1]
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
    ci95_method: str = "wald-log"  # or "profile-likelihood"
    ci95_wald: tuple[float, float] | None = None  # the Wald interval where ci95 is a profile
    iiv_ci95_method: str = "wald-log"  # of iiv_cv_ci95 (Wald on log ω, or the profile)
    iiv_cv_ci95_wald: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready form: value, se, ci95 (with its method), iiv_cv."""
        d = {"value": self.value, "se": self.se, "ci95": list(self.ci95),
             "ci95_method": self.ci95_method, "iiv_cv": self.iiv_cv}
        if self.ci95_wald is not None:
            d["ci95_wald"] = list(self.ci95_wald)
        if self.iiv_cv_ci95 is not None:
            d["iiv_cv_ci95"] = list(self.iiv_cv_ci95)
            d["iiv_ci95_method"] = self.iiv_ci95_method
            if self.iiv_cv_ci95_wald is not None:
                d["iiv_cv_ci95_wald"] = list(self.iiv_cv_ci95_wald)
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
    blq: str = "m3"  # how censored (BLQ) observations entered: "m3" likelihood, "m1" dropped
    n_censored: int = 0  # censored observations in the data (fitted quantities), used or not

    def to_dict(self) -> dict:
        """JSON-ready form of the fit (estimates, objective, diagnostics; ``n_obs`` counts
        the observations in the likelihood, censored ones included under M3, and
        ``n_censored`` the censored ones in the data, dropped under M1)."""
        return {"method": self.method,
                "estimates": {k: v.to_dict() for k, v in self.estimates.items()},
                "residual_error": {k: v.to_dict() for k, v in self.residual.items()},
                "objective": self.objective, "n_subjects": self.n_subjects,
                "n_obs": self.n_obs, "blq": self.blq, "n_censored": self.n_censored,
                "converged": self.converged,
                "diagnostics": self.diagnostics, "elapsed_s": self.elapsed_s,
                "warnings": self.warnings()}

    def warnings(self) -> list[str]:
        """Caveats a reader of the estimates needs, in words: no convergence, parameters at
        a bound (an IIV CV or residual error at its bound is the bound, not an estimate) and
        estimates without a standard error. Empty for a clean fit."""
        d = self.diagnostics
        out = []
        if not self.converged:
            g = d.get("max_abs_gradient")
            out.append("the fit did not converge"
                       + (f" (max |gradient| {g:.3g})" if g is not None else "")
                       + ": the estimates are not a reliable optimum")
        for n in d.get("at_bounds", []):
            kind, _, name = n.partition("_")
            if kind == "omega":
                out.append(f"the IIV of {name} is at its bound: its CV is the bound, not an "
                           "estimate (the data do not support IIV on it; refit without)")
            elif kind == "theta":
                out.append(f"{name} is at its bound: the value is the bound, not an estimate")
            else:
                out.append(f"the residual error {n} is at its bound (noise-free data, or "
                           "too few observations?)")
        no_se = [k for k, e in {**self.estimates, **self.residual}.items()
                 if not np.isfinite(e.se)]
        if no_se:
            out.append("no standard error or interval for " + ", ".join(no_se)
                       + " (the covariance step failed)")
        at_b = set(d.get("at_bounds", []))
        unbounded = [k for k, e in {**self.estimates, **self.residual}.items()
                     if k not in no_se and not all(np.isfinite(c) and c > 0 for c in (
                         *e.ci95, *(e.iiv_cv_ci95 if e.iiv_cv_ci95 is not None
                                    and f"omega_{k}" not in at_b else ())))]
        if unbounded:
            out.append("the 95% interval of " + ", ".join(unbounded) + " is unbounded (an end "
                       "is 0 or infinite, null in JSON): the data do not determine it")
        return out


def _cv(sd: float) -> float:
    """Coefficient of variation (fraction) of a log-normal with log-scale SD ``sd``; ``inf``
    (JSON ``null``) where it overflows (an unbounded interval end), without a warning."""
    with np.errstate(over="ignore"):
        return float(np.sqrt(np.expm1(sd * sd)))


def _wald_log(v: float, se_log: float) -> tuple[float, float]:
    """Wald 95% interval ``v·exp(±1.96·se_log)`` (units of ``v``); an end that overflows is
    ``inf`` (JSON ``null``, named by :meth:`FitResult.warnings`), without a NumPy warning."""
    with np.errstate(over="ignore"):
        return float(v * np.exp(-Z95 * se_log)), float(v * np.exp(Z95 * se_log))


class PopulationFOCEI:
    """Population estimation of typical values, IIV (diagonal Ω, log-normal) and residual
    error by FOCE-I, refined on the adaptive-quadrature likelihood (``quadrature=True``, see
    the module docstring). ``run()`` returns a :class:`FitResult`.

    ``progress``: optional callable given a one-line message at every objective evaluation
    and stage (FOCE-I, quadrature refinement, covariance step, each profile), e.g. the command
    line's spinner; it does not change the fit."""

    def __init__(self, problem: PKProblem, theta0: dict[str, float] | None = None,
                 omega0: float = 0.3, max_iter: int = 200, covariance: bool = True,
                 quadrature: bool = True, profile: bool | None = None,
                 progress: Callable[[str], None] | None = None, workers: int = 1) -> None:
        if int(workers) < 1:
            raise KetasimError("workers", f"need at least 1 worker process, got {workers}")
        self.problem = problem
        self.progress = progress
        self.workers = int(workers)
        self._pool = None  # the worker processes while run() uses them
        self._stage = "FOCE-I"
        self.quadrature = quadrature
        self.profile = profile  # None: where affordable (PROFILE_AUTO_WORK)
        self.theta0 = {**problem.theta0(), **(theta0 or {})}
        self.omega0 = omega0
        self.max_iter = max_iter
        self.covariance = covariance
        self._eta: np.ndarray | None = None
        self._tol = INNER_TOL
        self._max_iter = INNER_MAX_ITER
        self.n_eval = 0
        self._nodes: tuple[np.ndarray, np.ndarray] | None = None  # None: Laplace (FOCE-I)
        self._tiled: PKProblem | None = None

    def _split(self, x: np.ndarray):
        pr = self.problem
        p, d = len(pr.estimate), len(pr.iiv)
        theta = {k: float(np.exp(v)) for k, v in zip(pr.estimate, x[:p], strict=True)}
        return theta, np.exp(x[p:p + d]), _sig(pr, x[p + d:])

    def ofv_terms(self, x: np.ndarray) -> np.ndarray | None:
        """Each subject's contribution to the FOCE-I −2 log-likelihood at packed
        log-parameters ``x`` ((n,); they sum to :meth:`ofv`), or None where not finite."""
        self.n_eval += 1
        if self.progress is not None:
            self.progress(f"{self._stage}, objective evaluation {self.n_eval}")
        pr = self.problem
        theta, om, sig = self._split(x)
        c = conditional_modes(pr, theta, om, sig, self._eta, self._tol, self._max_iter)
        if not np.all(np.isfinite(c.obj)):
            return None
        _, logdet = np.linalg.slogdet(c.info)
        terms = (c.obj + np.sum(np.log(om**2)) + logdet
                 + pr.normal_counts() * np.log(2 * np.pi))
        if self._nodes is not None:
            terms = terms + self._quadrature_correction(c, theta, om, sig)
        if not np.all(np.isfinite(terms)):
            return None
        self._eta = c.eta
        self._last = c
        return terms

    def _quadrature_correction(self, c: Conditional, theta: dict[str, float],
                               omega_sd: np.ndarray, sig: dict[str, float]) -> np.ndarray:
        """−2 log of the adaptive Gauss–Hermite sum that turns each subject's Laplace term
        into the quadrature estimate of its marginal likelihood ((n,); 0 with one node).

        Nodes ``ηᵢ_q = η̂ᵢ + Lᵢ z_q`` with ``LᵢLᵢᵀ = (JᵢᵀW̃ᵢJᵢ + Ω⁻¹)⁻¹`` (the Laplace
        covariance) and product Gauss–Hermite ``(z_q, w_q)`` for a standard normal:
        ``∫ p(y|η) p(η) dη = Laplace × Σ_q w_q exp(−½[obj(η_q) − obj(η̂) − z_qᵀz_q])``.
        """
        pr = self.problem
        Z, W = self._nodes
        n, d = c.eta.shape
        L = np.linalg.cholesky(np.linalg.inv(c.info))  # (n, d, d)
        eta = (c.eta[None, :, :] + np.einsum("nij,qj->qni", L, Z)).reshape(-1, d)
        if self._tiled is None or self._tiled.n != len(eta):
            self._tiled = pr.take(np.tile(np.arange(n), len(Z)))
        f = self._tiled.predict(theta, eta)
        ll, _, _ = _data_obj(self._tiled, f, sig)
        obj = (ll + np.sum(eta * eta / omega_sd**2, axis=1)).reshape(len(Z), n)
        v = obj - c.obj[None, :] - np.sum(Z * Z, axis=1)[:, None]
        v = np.where(np.isfinite(v), v, np.inf)
        vmin = v.min(axis=0)
        return vmin - 2.0 * np.log(np.sum(W[:, None] * np.exp(-0.5 * (v - vmin)), axis=0))

    def set_quadrature(self, nodes_per_dim: int) -> None:
        """Evaluate the objective with adaptive Gauss–Hermite quadrature of this many nodes
        per random effect (what a refined fit reports), or 0: the FOCE-I Laplace form."""
        d = len(self.problem.iiv)
        self._nodes = gauss_hermite_nodes(nodes_per_dim, d) if nodes_per_dim and d else None

    def subject_gradients(self, x: np.ndarray) -> np.ndarray:
        """(n, m) gradients of each subject's objective term in the log-parameters ``x``,
        modes converged: the scores whose outer products form the sandwich's middle."""
        self._tol = INNER_TOL_COV
        self.ofv(x)
        G = self._grad(x, full=True, per_subject=True)
        self._tol = INNER_TOL
        return G

    def ofv(self, x: np.ndarray) -> float:
        """−2 log-likelihood (FOCE-I) at packed log-parameters ``x``."""
        terms = self.ofv_terms(x)
        return 1e300 if terms is None else float(terms.sum())

    def _terms_at(self, points: list[np.ndarray], eta0: np.ndarray | None,
                  max_iter: int) -> list[np.ndarray | None]:
        """:meth:`ofv_terms` at each of ``points``, every one with the conditional modes
        starting from ``eta0`` (the current inner tolerance, ``max_iter`` inner steps).
        Independent evaluations: on the worker processes when ``workers`` > 1, in the same
        order and with the same floating-point operations as one after another here, so the
        results are identical either way. Leaves the modes at ``eta0``."""
        if self._pool is None or len(points) < 2:
            out = []
            for xp in points:
                self._eta = eta0
                self._max_iter = max_iter
                out.append(self.ofv_terms(xp))
        else:
            self.n_eval += len(points)
            if self.progress is not None:
                self.progress(f"{self._stage}, objective evaluation {self.n_eval}")
            from concurrent.futures.process import BrokenProcessPool

            tasks = [(xp, eta0, self._tol, max_iter, self._nodes) for xp in points]
            try:
                out = list(self._pool.map(_worker_terms, tasks))
            except BrokenProcessPool as exc:
                raise KetasimError("workers", "a worker process of the fit died (out of "
                                   "memory?); rerun with fewer workers") from exc
        self._eta = eta0
        self._max_iter = INNER_MAX_ITER
        return out

    def _grads(self, xs: list[np.ndarray], full: bool = False,
               which: np.ndarray | None = None) -> list[np.ndarray]:
        """Central differences at each of ``xs`` ((n, m) per-subject gradients each), all
        from the modes at the current point: at each shifted point the conditional modes take
        ``GRAD_INNER_STEPS`` damped Newton steps from there (their shift is O(h), so the
        objective error is O(h⁴) and the gradient error O(h)); ``full``: converge them (for
        the covariance step). ``which``: only these components (the others are 0). All
        2·m·len(xs) evaluations are independent (one batch for the worker processes)."""
        n = self.problem.n
        eta = None if self._eta is None else self._eta.copy()
        ks = list(range(len(xs[0])) if which is None else which)
        points = []
        for x in xs:
            for k in ks:
                e = np.zeros_like(x)
                e[k] = OUTER_STEP
                points += [x + e, x - e]
        res = iter(self._terms_at(points, eta, INNER_MAX_ITER if full else GRAD_INNER_STEPS))
        out = []
        for x in xs:
            G = np.zeros((n, len(x)))
            for k in ks:
                tp, tm = next(res), next(res)
                if tp is None or tm is None:  # a diverging trial point: the sum is huge
                    G[:, k] = (1e300 if tp is None else 0.0) - (1e300 if tm is None else 0.0)
                    G[:, k] /= 2 * OUTER_STEP * n
                else:
                    G[:, k] = (tp - tm) / (2 * OUTER_STEP)
            out.append(G)
        return out

    def _grad(self, x: np.ndarray, full: bool = False, per_subject: bool = False,
              which: np.ndarray | None = None) -> np.ndarray:
        """Central-difference gradient at ``x`` (see :meth:`_grads`); ``per_subject``: the
        (n, m) gradients of each subject's term (the scores of the sandwich covariance)
        instead of their sum."""
        G = self._grads([x], full, which)[0]
        return G if per_subject else G.sum(axis=0)

    def run(self) -> FitResult:
        """Run the FOCE-I population fit, refine it on the quadrature likelihood (unless
        ``quadrature=False``) and return estimates with SEs (2·H⁻¹) and diagnostics.

        With ``workers`` > 1 the independent objective evaluations of each gradient, Hessian
        and profile step run on that many forked worker processes (the results are identical
        to ``workers=1``); where the platform cannot fork, the fit runs in this process."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if self.workers < 2 or "fork" not in mp.get_all_start_methods():
            res = self._run()
            res.diagnostics["workers"] = 1
            return res
        global _WORKER_EST
        _WORKER_EST = self  # inherited by the forked workers (nothing pickled but tasks)
        try:
            with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork")) as pool:
                self._pool = pool
                res = self._run()
        finally:
            self._pool = None
            _WORKER_EST = None
        res.diagnostics["workers"] = self.workers
        return res

    def _run(self) -> FitResult:
        t0 = time.perf_counter()
        self._stage = "FOCE-I"
        pr = self.problem
        x0 = np.concatenate([np.log([self.theta0[k] for k in pr.estimate]),
                             np.full(len(pr.iiv), np.log(self.omega0)),
                             np.log(list(pr.initial_sigma().values()))])  # σ: observed values
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
        converged = bool(free_grad < gtol)
        method, refine = "FOCE-I", {}
        q = quadrature_nodes_per_dim(d) if self.quadrature and d > 0 else 0
        if q:
            # FOCE-I's Laplace term is biased where a random effect is weakly identified
            # (V1 from an infusion: docs/fit.md); refine on the quadrature likelihood
            focei_ofv, x_focei = self.ofv(x), x.copy()
            H_focei = self._hessian(x, accurate=False)[0]  # Newton metric of the refinement
            self.set_quadrature(q)
            self._stage = f"refinement on the quadrature likelihood (AGQ {q}^{d})"
            x, n_ref, free_grad = self._refine(x, at_bound, bounds, gtol, H_focei)
            converged = bool(free_grad < gtol)
            method = f"FOCE-I + AGQ({q}^{d})"
            refine = {"quadrature_nodes": q**d, "focei_objective": focei_ofv,
                      "refine_iterations": n_ref,
                      "focei_log_shift": {k: float(v) for k, v in zip(
                          self._names(), x - x_focei, strict=True)}}
        f_best = self.ofv(x)
        cov = None
        if self.covariance:
            self._stage = "covariance step"
            cov = self._covariance(x, at_bound)
            f_best = self.ofv(x)
        theta, om, sig = self._split(x)
        se_log = np.sqrt(np.diag(cov)) if cov is not None else np.full(len(x), np.nan)
        profiles: dict[str, dict] = {}
        if cov is not None and self.profiles_enabled():
            t_p = time.perf_counter()
            names = self._names()
            for i in range(p + d):  # typical values and IIV SDs
                what = names[i].replace("theta_", "").replace("omega_", "IIV of ")
                self._stage = f"profile-likelihood interval {i + 1}/{p + d} ({what})"
                if not at_bound[i] and np.isfinite(se_log[i]):
                    profiles[names[i]] = self._profile_interval(x, f_best, i, ~at_bound,
                                                                bounds, se_log[i])
            f_best = self.ofv(x)  # modes and the last evaluation back at the optimum
            refine["profile"] = {
                "method": "likelihood ratio on the reported objective: −2LL ≤ min + 3.841 "
                          "(χ²₁ 0.95), other parameters re-optimised",
                "seconds": time.perf_counter() - t_p,
                **{k: {kk: vv for kk, vv in v.items()} for k, v in profiles.items()}}
        est = {}
        for i, k in enumerate(pr.estimate):
            v, s = theta[k], se_log[i]
            e = Estimate(v, v * s, _wald_log(v, s))
            pk = profiles.get(f"theta_{k}")
            if pk is not None and pk["converged"]:
                e.ci95_wald = e.ci95
                e.ci95 = (float(v * np.exp(pk["ci95_log"][0])),
                          float(v * np.exp(pk["ci95_log"][1])))
                e.ci95_method = "profile-likelihood"
            if k in pr.iiv:
                j = p + pr.iiv.index(k)
                w, sw = om[j - p], se_log[j]
                e.iiv_cv = _cv(w)
                e.iiv_sd = float(w)
                e.iiv_cv_ci95 = tuple(_cv(c) for c in _wald_log(w, sw))
                pw = profiles.get(f"omega_{k}")
                if pw is not None and pw["converged"]:
                    e.iiv_cv_ci95_wald = e.iiv_cv_ci95
                    e.iiv_cv_ci95 = (_cv(w * np.exp(pw["ci95_log"][0])),
                                     _cv(w * np.exp(pw["ci95_log"][1])))
                    e.iiv_ci95_method = "profile-likelihood"
            est[k] = e
        resid = {}
        for i, k in enumerate(pr.error.names):
            v, s = sig[k], se_log[p + d + i]
            resid[k] = Estimate(v, v * s, _wald_log(v, s))
        cond = self._last
        diag = {"optimizer": "L-BFGS-B", "message": str(res.message), "iterations": nit,
                "restarts": n_restarts,
                "objective_evaluations": self.n_eval, "max_abs_gradient": free_grad,
                "at_bounds": [n for n, b in zip(self._names(), at_bound, strict=True) if b],
                "inner_converged_fraction": float(cond.converged.mean()),
                "covariance_ok": bool(cov is not None and np.all(np.isfinite(se_log))),
                **refine}
        if cov is not None:  # the robust alternative, for comparison (docs/fit.md)
            se_s = np.sqrt(np.diag(self.covariances["sandwich"]))
            diag["se_log_sandwich"] = {k: (float(v) if np.isfinite(v) else None)
                                       for k, v in zip(self._names(), se_s, strict=True)}
        self.cond = cond
        return FitResult(method, est, resid, f_best, pr.n, pr.n_obs, converged,
                         cond.eta, theta, om, sig, diag, time.perf_counter() - t0,
                         pr.blq, pr.n_censored)

    def profiles_enabled(self) -> bool:
        """Whether :meth:`run` computes profile-likelihood intervals of the typical values
        and IIV SDs: as asked (``profile=``), else while subjects × quadrature nodes per
        subject × (typical values + IIV SDs) ≤ ``PROFILE_AUTO_WORK`` (the profiles' cost
        grows with that product; beyond it the intervals are Wald's, reported as such)."""
        if self.profile is not None:
            return bool(self.profile)
        if not self.covariance:
            return False
        pr = self.problem
        d = len(pr.iiv)
        q = quadrature_nodes_per_dim(d) if self.quadrature and d > 0 else 0
        return pr.n * max(q, 1) ** d * (len(pr.estimate) + d) <= PROFILE_AUTO_WORK

    def _names(self) -> list[str]:
        pr = self.problem
        return ([f"theta_{k}" for k in pr.estimate] + [f"omega_{k}" for k in pr.iiv]
                + pr.error.names)

    def _hessian(self, x: np.ndarray, accurate: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Hessian of the objective in log-parameters (forward differences, step
        ``HESS_STEP``, of central-difference gradients) and the (n, m) per-subject gradients
        at ``x``. ``accurate``: modes converged to ``INNER_TOL_COV`` (covariance step);
        otherwise the optimiser's cheaper gradients (a Newton metric)."""
        m = len(x)
        H = np.zeros((m, m))
        self._tol = INNER_TOL_COV if accurate else INNER_TOL
        self.ofv(x)
        eta = self._eta.copy()
        shifted = [x + HESS_STEP * np.eye(m)[k] for k in range(m)]
        Gs = self._grads([x, *shifted], full=accurate)  # one batch, all from the modes at x
        G0 = Gs[0]
        g0 = G0.sum(axis=0)
        for k in range(m):
            H[:, k] = (Gs[k + 1].sum(axis=0) - g0) / HESS_STEP
        self._eta = eta
        self._tol = INNER_TOL
        return 0.5 * (H + H.T), G0

    def _covariance(self, x: np.ndarray, at_bound: np.ndarray) -> np.ndarray | None:
        """Covariance of the log-parameters, ``2·H⁻¹`` (H: Hessian of the −2LL objective),
        over the parameters not at a bound. The sandwich ``H⁻¹SH⁻¹`` (S: sum of outer
        products of the subjects' gradients) is kept in ``self.covariances`` for comparison.
        """
        m = len(x)
        H, G0 = self._hessian(x)
        self._H_cov = H  # the profiles' Newton metric
        free = ~at_bound
        cov = np.full((m, m), np.nan)
        self.covariances = {"hessian": cov.copy(), "sandwich": cov.copy()}
        try:
            Hf = H[np.ix_(free, free)]
            if np.any(np.linalg.eigvalsh(Hf) <= 0):
                return cov
            Hi = np.linalg.inv(Hf)
        except np.linalg.LinAlgError:
            return cov
        Sf = (G0.T @ G0)[np.ix_(free, free)]
        self.covariances["hessian"][np.ix_(free, free)] = 2.0 * Hi
        self.covariances["sandwich"][np.ix_(free, free)] = Hi @ Sf @ Hi
        return self.covariances["hessian"]

    def _profile_interval(self, x: np.ndarray, f_hat: float, i: int, free: np.ndarray,
                          bounds: list[tuple[float, float]], se_i: float) -> dict:
        """Likelihood-ratio 95% interval of log-parameter ``i``: the values where the profile
        −2LL (the other free parameters re-optimised) exceeds ``f_hat`` by χ²₁(0.95).

        Per side, a secant search on the signed root r(δ) = √(profile − f_hat) (linear in
        the offset δ where the objective is quadratic, so Wald's ±1.96·SE is the first try)
        until |r − 1.96| < ``PROFILE_ROOT_TOL``. At each point the other parameters start
        from the previous point moved along the quadratic profile (−H_oo⁻¹H_oi δ, H: the
        covariance step's Hessian) and take damped Newton steps with H_oo as the metric and
        converged-mode gradients, until the predicted further decrease is below
        ``PROFILE_DECREMENT``; the profile value is the objective less that decrease.
        Returns ``ci95_log`` (offsets from ``x[i]``), points and evaluations per side,
        ``converged``, and the lowest objective met (below ``f_hat``: not at the optimum)."""
        m = len(x)
        lo = np.array([b[0] for b in bounds])
        hi = np.array([b[1] for b in bounds])
        o = np.flatnonzero(free & (np.arange(m) != i))
        H = self._H_cov
        w, V = np.linalg.eigh(H[np.ix_(o, o)])
        Hoo_inv = (V / np.maximum(w, 1e-6 * max(w.max(), 1e-12))) @ V.T if len(o) else V
        slope = -Hoo_inv @ H[o, i] if len(o) else np.zeros(0)
        eta_hat = self._eta.copy()
        n0 = self.n_eval
        out: dict = {"ci95_log": [np.nan, np.nan], "points": [0, 0], "converged": True,
                     "min_objective_seen": f_hat}
        for j, side in enumerate((-1.0, 1.0)):
            self._eta = eta_hat.copy()
            pts = [(0.0, 0.0)]
            xo, d_prev = x[o].copy(), 0.0
            delta = side * Z95 * se_i
            found = None
            limit = (lo[i] - x[i]) if side < 0 else (hi[i] - x[i])
            for _ in range(PROFILE_MAX_POINTS):
                delta = side * min(abs(delta), abs(limit))
                xs = x.copy()
                xs[i] = x[i] + delta
                xs[o] = np.clip(xo + slope * (delta - d_prev), lo[o], hi[o])
                fp, xs = self._profile_min(xs, o, Hoo_inv, lo, hi)
                out["min_objective_seen"] = min(out["min_objective_seen"], fp)
                r = float(np.sqrt(max(fp - f_hat, 0.0)))
                pts.append((delta, r))
                out["points"][j] += 1
                xo, d_prev = xs[o].copy(), delta
                if abs(r - Z95) < PROFILE_ROOT_TOL:
                    found = delta
                    break
                if abs(delta) >= abs(limit) and r < Z95:  # the bound is inside the interval
                    found = delta
                    break
                (d1, r1), (d2, r2) = pts[-2], pts[-1]
                nxt = d2 + (Z95 - r2) * (d2 - d1) / (r2 - r1) if r2 > r1 + 1e-9 else 2 * d2
                delta = side * float(np.clip(abs(nxt), 0.25 * abs(d2), 3 * abs(d2)))
            if found is None:  # not within tolerance: interpolate a bracket, else give up
                ds = np.array([p_[0] for p_ in pts]) * side
                rs = np.array([p_[1] for p_ in pts])
                order = np.argsort(ds)
                ds, rs = ds[order], rs[order]
                k = np.flatnonzero((rs[:-1] < Z95) & (rs[1:] >= Z95))
                if len(k):
                    a = k[0]
                    found = side * float(ds[a] + (Z95 - rs[a]) * (ds[a + 1] - ds[a])
                                         / (rs[a + 1] - rs[a]))
                else:
                    out["converged"] = False
                    continue
            out["ci95_log"][j] = float(found)
        self._eta = eta_hat
        out["evaluations"] = self.n_eval - n0
        out["ci95_log"] = [float(v) for v in out["ci95_log"]]
        return out

    def _profile_min(self, xs: np.ndarray, o: np.ndarray, Hoo_inv: np.ndarray,
                     lo: np.ndarray, hi: np.ndarray) -> tuple[float, np.ndarray]:
        """Minimise the objective over the components ``o`` from ``xs`` (damped Newton,
        metric ``Hoo_inv``); returns the profile value (objective less the predicted
        remaining decrease) and the point."""
        f = self.ofv(xs)
        if not len(o):
            return f, xs
        dec = np.inf
        for _ in range(PROFILE_NEWTON_MAX + 1):
            g = self._grad(xs, full=True, which=o)[o]
            step = -Hoo_inv @ g
            dec = float(-0.5 * g @ step)
            if dec < PROFILE_DECREMENT:
                break
            t, moved = 1.0, False
            while t > 1e-3:
                xn = xs.copy()
                xn[o] = np.clip(xs[o] + t * np.clip(step, -MAX_STEP, MAX_STEP), lo[o], hi[o])
                fn = self.ofv(xn)
                if fn <= f + 1e-9:
                    xs, f, moved = xn, fn, True
                    break
                t *= 0.5
            if not moved:
                break
        return f - (dec if np.isfinite(dec) and dec < PROFILE_DECREMENT else 0.0), xs

    def _refine(self, x: np.ndarray, at_bound: np.ndarray, bounds: list[tuple[float, float]],
                gtol: float, H: np.ndarray) -> tuple[np.ndarray, int, float]:
        """Damped Newton iterations on the quadrature objective from the FOCE-I optimum,
        with ``H`` (the FOCE-I Hessian there: the two objectives differ by a small, smooth
        correction) as the metric; parameters at a bound stay there. Returns the point, the
        iterations and the final max |gradient| of the quadrature objective."""
        free = ~at_bound
        if not free.any():  # every parameter at a bound: nothing to refine
            return x, 0, 0.0
        lo = np.array([b[0] for b in bounds])
        hi = np.array([b[1] for b in bounds])
        f = self.ofv(x)
        Hfree = H[np.ix_(free, free)]
        if not np.all(np.isfinite(Hfree)):  # a diverging difference: fall back to steepest
            Hfree = np.eye(int(free.sum()))  # descent (the line search still guards)
        w, V = np.linalg.eigh(Hfree)
        Hf = (V * np.maximum(w, 1e-6 * max(w.max(), 1e-12))) @ V.T  # keep it PD
        n_it = 0
        gmax = np.inf
        for _ in range(REFINE_MAX_ITER):
            g = self._grad(x, full=True)
            gmax = float(np.max(np.abs(g[free]))) if free.any() else 0.0
            if gmax < REFINE_GRAD_FRACTION * gtol:
                break
            n_it += 1
            step = np.zeros_like(x)
            step[free] = np.clip(-np.linalg.solve(Hf, g[free]), -MAX_STEP, MAX_STEP)
            t, moved = 1.0, False
            while t > 1e-3:
                xn = np.clip(x + t * step, lo, hi)
                fn = self.ofv(xn)
                if fn <= f + 1e-9:
                    x, f, moved = xn, fn, True
                    break
                t *= 0.5
            if not moved:
                break
        return x, n_it, gmax


#: the estimator a forked worker process evaluates objectives for (set before the fork)
_WORKER_EST: PopulationFOCEI | None = None


def _worker_terms(task: tuple) -> np.ndarray | None:
    """In a worker process: the estimator's :meth:`PopulationFOCEI.ofv_terms` at ``x`` with
    the modes starting from ``eta0``, inner tolerance ``tol``, ``max_iter`` inner steps and
    quadrature ``nodes`` (None: Laplace), as the parent would compute it."""
    x, eta0, tol, max_iter, nodes = task
    est = _WORKER_EST
    est.progress = None
    est._eta, est._tol, est._max_iter, est._nodes = eta0, tol, max_iter, nodes
    return est.ofv_terms(x)


def gauss_hermite_nodes(per_dim: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Product Gauss–Hermite rule for a d-dimensional standard normal: nodes (q, d) and
    weights (q,) summing to 1 (exact for polynomials of degree ≤ 2·per_dim − 1 in each
    coordinate)."""
    x, w = np.polynomial.hermite.hermgauss(per_dim)
    z1, w1 = np.sqrt(2.0) * x, w / np.sqrt(np.pi)
    Z = np.stack(np.meshgrid(*[z1] * d, indexing="ij"), -1).reshape(-1, d)
    W = np.prod(np.stack(np.meshgrid(*[w1] * d, indexing="ij"), -1).reshape(-1, d), axis=1)
    return Z, W


def quadrature_nodes_per_dim(d: int) -> int:
    """Nodes per random effect of the adaptive quadrature: the largest odd number up to
    ``AGQ_NODES`` whose product grid has at most ``AGQ_MAX_NODES`` points (0: none fits)."""
    for q in range(AGQ_NODES, 2, -2):
        if q**d <= AGQ_MAX_NODES:
            return q
    return 0


def prior_omega(problem: PKProblem) -> np.ndarray:
    """Population prior SDs of η for individual fits: the clinic card's PK variability
    (``pk_iiv_cv``, log-normal) for every parameter with IIV."""
    cv = load_param_card("clinic").value("pk_iiv_cv")
    return np.full(len(problem.iiv), np.sqrt(np.log1p(cv * cv)))


class IndividualMAP:
    """Maximum a posteriori parameters of each subject with the population model as prior.

    The prior is ``θ`` (typical values; default the card) and ``Ω`` (default
    :func:`prior_omega`); the residual error is estimated pooled over the subjects (a 1-D/2-D
    outer minimisation of the joint MAP objective) unless ``sigma`` is given. ``progress``:
    optional callable given a one-line message per evaluation of that objective.
    """

    def __init__(self, problem: PKProblem, theta: dict[str, float] | None = None,
                 omega_sd: np.ndarray | None = None, sigma: dict[str, float] | None = None,
                 progress: Callable[[str], None] | None = None):
        self.problem = problem
        self.progress = progress
        self.theta = {**problem.theta0(), **(theta or {})}
        self.omega_sd = prior_omega(problem) if omega_sd is None else np.asarray(omega_sd)
        _check_sigma_names(problem, sigma)
        self.sigma = sigma

    def run(self) -> FitResult:
        """Run the individual MAP fit with the population model as prior."""
        t0 = time.perf_counter()
        pr = self.problem
        sig = self.sigma
        opt_msg = "sigma given"
        if sig is None:
            s0 = np.log(list(pr.initial_sigma().values()))  # from the observed values
            state = {"eta": None, "n": 0}

            def f(ls):
                state["n"] += 1
                if self.progress is not None:
                    self.progress(f"MAP with the residual error, objective evaluation "
                                  f"{state['n']}")
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
                    + int(pr.normal_counts().sum()) * np.log(2 * np.pi))
        res = FitResult("MAP", est, resid, ofv, pr.n, pr.n_obs, bool(c.converged.all()), c.eta,
                        self.theta, self.omega_sd, sig,
                        {"sigma_optimizer": opt_msg,
                         "inner_converged_fraction": float(c.converged.mean())},
                        time.perf_counter() - t0, pr.blq, pr.n_censored)
        res.individual = per  # type: ignore[attr-defined]
        self.cond = c
        return res


def _check_sigma_names(problem: PKProblem, sigma: dict[str, float] | None) -> None:
    """A given ``sigma`` of a per-quantity error model must name each quantity's parameters
    (a plain ``sigma_prop`` would silently leave them at 0)."""
    if sigma is None or not problem.error.by_quantity:
        return
    missing = [k for k in problem.error.names if k not in sigma]
    if missing:
        raise KetasimError("sigma", f"the per-quantity error model needs {', '.join(missing)}",
                           ", ".join(problem.error.names))


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
                     vectorize: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    """Ensemble MCMC (emcee) of a vectorised log-density; returns draws and diagnostics.
    ``progress(done, total)``: optional, called every 10 steps and at the end (the same
    draws with or without it).

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
    for k, _ in enumerate(sampler.sample(p0, iterations=n_steps)):  # = run_mcmc
        if progress is not None and ((k + 1) % 10 == 0 or k + 1 == n_steps):
            progress(k + 1, n_steps)
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
        _check_sigma_names(problem, sigma)
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
