"""Forecast one patient's MADRS from their doses and the scores observed so far.

Model: the clinic's score model (:mod:`ketasim.mood`). Its drug-dependent part (PK → brain →
mechanism) is deterministic given the doses and the patient's weight; the patient-specific
part is the baseline score ``B``, the drug-effect random effect ``η_E`` and the placebo random
effect ``η_P`` (standard-normal, scaled by the clinic card's IIV SDs). Their prior is the
population in the clinic card (baseline mean/SD for the disorder, η ~ N(0, 1)); the visit
residual SD is the card's ``residual_sd``. Scores are bounded (0–60): an observation at a bound
enters the likelihood as censored (Tobit), the others as normal densities.

The posterior of ``(B, η_E, η_P)`` is sampled with emcee. To make that cheap the mechanism is
simulated once (:func:`ketasim.mood.mechanism_components`), and
:func:`ketasim.mood.scores_batch` is evaluated once on a grid of ``η_E`` and once on a grid of
``η_P``; the latent score ``B·(1 − p)(1 − d)(1 − a)`` is then interpolated (the drug effect
``d`` depends on ``η_E`` only and the placebo effect ``p`` on ``η_P`` only). PK variability of
the patient is not sampled (the PK part uses the card's typical values and the patient's
weight) — a documented simplification.

Outputs (times in days from the first dose): the predicted MADRS (median and 80% band of the
posterior predictive, visit noise included), the probability of response at each day
(score ≤ (1 − response_fraction)·B), the probability of relapse by each day (underlying score
responded at some earlier day and later rose above the response level), and the latest day for
the next dose that keeps the underlying score below a threshold with a chosen probability.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import log_ndtr

from .. import __version__
from ..cards import card_versions, load_param_card
from ..errors import KetasimError
from ..pk import resolve_model
from .data import SCORE_BOUNDS, Dataset, Subject, as_dataset, file_sha256, read_dataset
from .estimators import sample_posterior

ETA_GRID = np.linspace(-6.0, 6.0, 241)  # η grid for the interpolated score model (settings)
FORECAST_STEP_H = 6.0  # resolution of the forecast grid (h)


def _arm_for(subject: Subject, drug: str, model: str | None):
    from ..scenario import ArmSpec

    reg = subject.regimen
    if len(reg) == 0:
        raise KetasimError("data", f"patient {subject.id} has no doses (EVID 1 rows)")
    routes = reg.routes
    if len(routes) != 1:
        raise KetasimError("data", "a forecast needs all doses by one route", ", ".join(routes))
    durs = {round(d.duration_h, 6) for d in reg}
    if len(durs) != 1:
        raise KetasimError("data", "a forecast needs infusions of one duration")
    route = routes[0]
    dur = durs.pop()
    return ArmSpec(name="patient", drug=drug, route=route,
                   dose=[f"{d.amount.value:.6g} mg" for d in reg],
                   schedule=[f"{d.time_h:.9g} h" for d in reg],
                   duration=f"{dur:.9g} h" if dur > 0 else None, model=model)


@dataclass
class ScoreEmulator:
    """Latent MADRS at ``visits_h`` for any (B, η_E, η_P), exact up to interpolation in η."""

    visits_h: np.ndarray
    drug: np.ndarray  # (G, V) drug effect d on the η_E grid
    placebo: np.ndarray  # (G, V) placebo effect p on the η_P grid
    background: np.ndarray  # (V,) 1 − a(t)

    def latent(self, B: np.ndarray, eta_e: np.ndarray, eta_p: np.ndarray) -> np.ndarray:
        """(draws, V) underlying score (no visit noise, not clipped)."""
        d = _interp_rows(ETA_GRID, self.drug, eta_e)
        p = _interp_rows(ETA_GRID, self.placebo, eta_p)
        return B[:, None] * (1.0 - p) * (1.0 - d) * self.background[None, :]


def _interp_rows(grid: np.ndarray, table: np.ndarray, x: np.ndarray) -> np.ndarray:
    x = np.clip(x, grid[0], grid[-1])
    j = np.clip(np.searchsorted(grid, x) - 1, 0, len(grid) - 2)
    w = ((x - grid[j]) / (grid[j + 1] - grid[j]))[:, None]
    return table[j] * (1.0 - w) + table[j + 1] * w


def build_emulator(subject: Subject, visits_h: np.ndarray, drug: str = "ketamine",
                   model: str | None = None, comedication: tuple[str, ...] = ()
                   ) -> ScoreEmulator:
    """Simulate the mechanism once for the patient's doses and tabulate the score model."""
    from ..mood import _grid, arm_regimen, mechanism_components, scores_batch
    from ..population import Patient

    arm = _arm_for(subject, drug, model)
    visits = np.unique(np.round(np.asarray(visits_h, dtype=float), 9))
    t = _grid(visits, arm_regimen(arm))
    nv = len(visits)

    def patient(eta_e: float, eta_p: float, base: float) -> Patient:
        return Patient(0, subject.weight_kg, subject.age_years, subject.sex, subject.race,
                       subject.disorder, base, eta_p, eta_e, 1.0, 1.0, np.zeros(nv),
                       comedication, (0, 0, 0))

    ref = patient(0.0, 0.0, 1.0)
    comp = mechanism_components(arm, ref, t)
    g = len(ETA_GRID)
    big = {k: np.broadcast_to(v, (g, len(t))) for k, v in comp.items()}
    out_e = scores_batch(arm, [patient(e, 0.0, 1.0) for e in ETA_GRID], t, visits, big)
    out_p = scores_batch(arm, [patient(0.0, e, 1.0) for e in ETA_GRID], t, visits, big)
    d, p = out_e["drug_effect"], out_p["placebo_effect"]
    g0 = int(np.argmin(np.abs(ETA_GRID)))
    core = out_e["madrs"][g0]  # B = 1, no noise: (1 − p)(1 − d)(1 − a)
    denom = (1.0 - out_e["placebo_effect"][g0]) * (1.0 - d[g0])
    background = np.where(denom > 0, core / np.where(denom > 0, denom, 1.0), 1.0)
    return ScoreEmulator(visits, d, p, background)


@dataclass
class Forecast:
    """A patient's forecast (times in days from the first dose; scores in MADRS points)."""

    day: np.ndarray
    median: np.ndarray
    lo80: np.ndarray
    hi80: np.ndarray
    p_response: np.ndarray
    p_relapse_by: np.ndarray
    next_dose_day: float | None
    posterior: dict
    diagnostics: dict
    metadata: dict = field(default_factory=dict)
    #: what :attr:`next_dose_day` means: ``"due_now"`` (``None``: the score is already
    #: likely above the threshold), ``"by_day"`` (the latest day within the horizon) or
    #: ``"beyond_horizon"`` (it holds to the horizon's end, the day given; later unknown)
    next_dose_status: str = "by_day"

    def to_dict(self) -> dict:
        """JSON-ready form of the forecast."""
        return {"time_day": self.day.tolist(), "madrs_median": self.median.tolist(),
                "madrs_lo80": self.lo80.tolist(), "madrs_hi80": self.hi80.tolist(),
                "p_response": self.p_response.tolist(),
                "p_relapse_by": self.p_relapse_by.tolist(),
                "next_dose_latest_day": self.next_dose_day,
                "next_dose_status": self.next_dose_status,
                "posterior": self.posterior, "diagnostics": self.diagnostics,
                "metadata": self.metadata}


#: longest forecast horizon (days from the first dose)
MAX_FORECAST_DAYS = 365

def forecast_patient(data: Dataset | str | os.PathLike | pd.DataFrame | Subject,
                     horizon_days: float = 28.0,
                     threshold: float | None = None, probability: float = 0.8,
                     response_fraction: float | None = None, drug: str = "ketamine",
                     model: str | None = None, seed: int = 1, n_walkers: int = 32,
                     n_steps: int = 1500, comedication: tuple[str, ...] = (),
                     progress: Callable[[int, int], None] | None = None) -> Forecast:
    """Posterior forecast of one patient's MADRS (see the module docstring).
    ``progress(done, total)``: optional, MCMC steps done (the same forecast with or without).

    ``threshold`` (MADRS points) for the next-dose day; default: the patient's response level
    ``(1 − response_fraction)·B``. ``probability``: required probability of staying below it.
    """
    if isinstance(data, Subject):
        subject = data
    else:
        ds = as_dataset(data)
        if len(ds.subjects) != 1:
            raise KetasimError("data", f"a forecast needs one patient, found "
                               f"{len(ds.subjects)} IDs")
        subject = ds.subjects[0]
    if subject.reset_times_h.size:
        raise KetasimError("data", f"a reset (EVID 3/4) after a dose at "
                           f"{subject.reset_times_h[0]:g} h: resets empty a PK system and have "
                           "no meaning for a mood forecast", "EVID 0, 1 or 2")
    if drug not in ("ketamine", "esketamine"):
        raise KetasimError("drug", f"unknown drug {drug!r}", "ketamine, esketamine")
    for name, v in (("horizon_days", horizon_days), ("probability", probability),
                    ("threshold", threshold), ("response_fraction", response_fraction)):
        if v is None and name in ("threshold", "response_fraction"):
            continue
        if (isinstance(v, bool) or not isinstance(v, int | float | np.number)
                or not np.isfinite(v)):
            raise KetasimError(name, f"must be a finite number, got {v!r}")
    if not 0.0 < probability < 1.0:
        raise KetasimError("probability", f"must be between 0 and 1, got {probability:g}")
    if not 0 < horizon_days <= MAX_FORECAST_DAYS:
        raise KetasimError("days", f"must be within (0, {MAX_FORECAST_DAYS}] days, got "
                           f"{horizon_days:g}")
    for name, v, lo, hi in (("n_walkers", n_walkers, 6, 1000), ("n_steps", n_steps, 10, 100_000),
                            ("seed", seed, 0, 2**63 - 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not lo <= v <= hi:
            raise KetasimError(name, f"must be a whole number {lo}..{hi}, got {v!r}")
    if response_fraction is not None and not 0 < response_fraction < 1:
        raise KetasimError("response_fraction", f"must be between 0 and 1, got "
                           f"{response_fraction!r}")
    if isinstance(comedication, str):
        comedication = (comedication,)
    allowed = ("lithium", "valproate", "oral-antidepressant")
    for cm in comedication:
        if cm not in allowed:
            raise KetasimError("comedication", f"unknown {cm!r}", ", ".join(allowed))
    if threshold is not None and not 0 < threshold < SCORE_BOUNDS["madrs"][1]:
        raise KetasimError("threshold", f"must be a MADRS score within (0, 60), got "
                           f"{threshold:g}")
    if response_fraction is None:
        from ..scenario import EndpointsSpec

        response_fraction = EndpointsSpec().response_fraction
    t_obs, y_obs = subject.observed("madrs")
    if t_obs.size == 0:
        raise KetasimError("data", f"patient {subject.id} has no MADRS observations "
                           "(DVID madrs)")
    c = load_param_card("clinic")
    sigma = c.value("residual_sd")
    b_mean = c.value(f"madrs_baseline_{subject.disorder}") if (
        f"madrs_baseline_{subject.disorder}" in c.parameters) else None
    if b_mean is None:
        raise KetasimError("DISORDER", f"unknown disorder {subject.disorder!r}",
                           "trd, mdd, bipolar")
    b_sd = c.value("madrs_baseline_sd")
    lo, hi = SCORE_BOUNDS["madrs"]
    t_now = float(t_obs.max())
    if t_now > MAX_FORECAST_DAYS * 24.0:
        raise KetasimError("data", f"the last MADRS score is {t_now / 24:g} days after the first "
                           f"dose; a forecast covers at most {MAX_FORECAST_DAYS} days")
    horizon_h = max(horizon_days * 24.0, t_now + 24.0)
    grid = np.arange(0.0, horizon_h + 1e-9, FORECAST_STEP_H)
    visits = np.unique(np.round(np.concatenate([grid, t_obs]), 9))
    em = build_emulator(subject, visits, drug, model, comedication)
    io = np.searchsorted(em.visits_h, np.round(t_obs, 9))
    at_lo, at_hi = y_obs <= lo, y_obs >= hi

    def log_prob(x: np.ndarray) -> np.ndarray:
        B, ee, ep = x[:, 0], x[:, 1], x[:, 2]
        f = em.latent(np.maximum(B, 1e-9), ee, ep)[:, io]
        z = (y_obs[None, :] - f) / sigma
        ll = np.where(at_lo, log_ndtr(z), np.where(at_hi, log_ndtr(-z),
                                                  -0.5 * z * z - np.log(sigma)))
        lp = ll.sum(axis=1) - 0.5 * (((B - b_mean) / b_sd) ** 2 + ee**2 + ep**2)
        return np.where(B > 0, lp, -np.inf)

    # start near the mode: a few Nelder-Mead steps from the prior mean
    from scipy.optimize import minimize

    x0 = np.array([b_mean, 0.0, 0.0])
    if 0.0 in np.round(t_obs, 9):
        x0[0] = float(y_obs[np.argmin(t_obs)])
    r = minimize(lambda x: -float(log_prob(x[None, :])[0]), x0, method="Nelder-Mead")
    mc = sample_posterior(log_prob, r.x, seed, n_walkers, n_steps, scale=0.1,
                          progress=progress)
    draws = mc["draws"]
    rng = np.random.default_rng(seed)
    latent = em.latent(draws[:, 0], draws[:, 1], draws[:, 2])
    pred = np.clip(latent + sigma * rng.standard_normal(latent.shape), lo, hi)
    days = em.visits_h / 24.0
    daily = np.isclose(np.mod(em.visits_h, 24.0), 0.0) | np.isclose(np.mod(em.visits_h, 24.0),
                                                                      24.0)
    level = (1.0 - response_fraction) * draws[:, 0][:, None]
    p_resp = (pred <= level).mean(axis=0)
    # relapse by day N: underlying score responded at a daily time after the first dose and
    # later rose above the response level, both by N
    lat_d = np.where(daily[None, :], latent, np.nan)
    responded = np.logical_and.accumulate(~(lat_d <= level), axis=1)  # True until 1st response
    ever = ~responded
    above_after = (latent > level) & np.concatenate([np.zeros((len(draws), 1), bool),
                                                     ever[:, :-1]], axis=1) & daily[None, :]
    p_relapse = np.logical_or.accumulate(above_after, axis=1).mean(axis=0)
    # latest next-dose day: P(underlying score < threshold at every time in [now, d]) ≥ prob
    thr = level if threshold is None else np.full_like(level, threshold)
    after = em.visits_h >= t_now
    ok = np.logical_and.accumulate((latent[:, after] < thr), axis=1).mean(axis=0)
    good = np.nonzero(ok >= probability)[0]
    next_day, status = None, "due_now"
    if good.size:
        beyond = good.size == ok.size
        last = good[-1] if beyond else (np.nonzero(ok < probability)[0][0] - 1)
        if last >= 0:
            next_day = float(em.visits_h[after][last] / 24.0)
            status = "beyond_horizon" if beyond else "by_day"
    keep = daily | np.isin(np.round(em.visits_h, 9), np.round(t_obs, 9))
    post = {"baseline_madrs": _summ(draws[:, 0]), "eta_emax": _summ(draws[:, 1]),
            "eta_placebo": _summ(draws[:, 2])}
    diag = {"sampler": "emcee EnsembleSampler", "acceptance_fraction": mc["acceptance_fraction"],
            "autocorr_time": mc["tau"].tolist(), "autocorr_reliable": mc["tau_reliable"],
            "rhat": mc["rhat"].tolist(), "n_walkers": n_walkers, "n_steps": n_steps,
            "burn_in": mc["burn"], "n_draws": int(len(draws))}
    meta = {"seed": seed, "ketasim_version": __version__, "card_hashes": card_versions(),
            "patient_id": subject.id, "drug": drug,
            # the card actually used (the drug's default for the route when none was named)
            "model": resolve_model(drug, model, tuple(subject.regimen.routes)).id,
            "residual_sd": sigma, "response_fraction": response_fraction,
            "threshold": threshold, "probability": probability, "last_observation_day":
            t_now / 24.0,
            # the rest of what reruns this forecast: horizon, sampler settings, the data
            "horizon_days": float(horizon_days), "n_walkers": n_walkers, "n_steps": n_steps,
            "comedication": list(comedication), **_data_identity(data)}
    return Forecast(days[keep], np.median(pred, 0)[keep], np.quantile(pred, 0.1, 0)[keep],
                    np.quantile(pred, 0.9, 0)[keep], p_resp[keep], p_relapse[keep], next_day,
                    post, diag, meta, status)


def _data_identity(data) -> dict:
    """``{"data": path, "data_sha256": hash}`` for a CSV path; ``None`` for both when the data
    came as a DataFrame, Dataset or Subject (nothing on disk to name)."""
    if isinstance(data, str | os.PathLike):
        return {"data": os.fspath(data), "data_sha256": file_sha256(data)}
    return {"data": None, "data_sha256": None}


def _summ(x: np.ndarray) -> dict:
    return {"median": float(np.median(x)), "ci95": [float(np.quantile(x, 0.025)),
                                                    float(np.quantile(x, 0.975))]}


def calibration_study(n_patients: int, seed: int = 11, observed_days: tuple = (0, 1, 2, 3),
                      held_out_days: tuple = (7, 10, 14, 21, 28), n_steps: int = 800,
                      dose: str = "0.5 mg/kg") -> dict:
    """Band calibration on simulated patients: each is drawn from the clinic population
    (:func:`ketasim.population.sample_patient`, PK variability included), given one 40-min
    infusion of ``dose``, simulated with :func:`ketasim.mood.simulate_patient`; the scores
    at ``observed_days`` are given to :func:`forecast_patient` and the later ones are held out.
    Returns the fraction of held-out scores inside the 80% band."""

    from ..mood import simulate_patient
    from ..population import sample_patient
    from ..scenario import ArmSpec, PopulationSpec
    from ..units import parse_dose

    arm = ArmSpec(name="k", drug="ketamine", route="iv-infusion", dose=dose, duration="40 min")
    spec = PopulationSpec(seed=seed)
    visits = np.array([*observed_days, *held_out_days], dtype=float) * 24.0
    n_obs = len(observed_days)
    inside, total, rows = 0, 0, []
    for i in range(n_patients):
        pt = sample_patient(spec, 0, i)
        m = simulate_patient(arm, pt, visits)["madrs"]
        amt = parse_dose(dose).mg(pt.weight_kg)
        recs = [dict(ID=1, TIME=0.0, EVID=1, AMT=amt, RATE=amt / (40 / 60), DV=np.nan, MDV=1,
                     DVID="", WT=pt.weight_kg, DISORDER=pt.disorder)]
        recs += [dict(ID=1, TIME=t, EVID=0, AMT=0.0, RATE=0.0, DV=y, MDV=0, DVID="madrs",
                      WT=pt.weight_kg, DISORDER=pt.disorder)
                 for t, y in zip(visits[:n_obs], m[:n_obs], strict=True)]
        ds = read_dataset(pd.DataFrame(recs), source=f"patient {i}")
        fc = forecast_patient(ds, horizon_days=max(held_out_days), seed=seed + i,
                              n_steps=n_steps)
        for t, y in zip(visits[n_obs:], m[n_obs:], strict=True):
            j = int(np.argmin(np.abs(fc.day - t / 24.0)))
            hit = bool(fc.lo80[j] <= y <= fc.hi80[j])
            inside += hit
            total += 1
            rows.append({"patient": i, "day": t / 24.0, "madrs": float(y), "lo80":
                         float(fc.lo80[j]), "hi80": float(fc.hi80[j]), "inside": hit})
    return {"coverage_80": inside / total, "n_scores": total, "n_patients": n_patients,
            "seed": seed, "rows": rows}
