"""Mood and the clinic: depression and suicidality scores, controls and side effects.

For patient i at time t (h after the first dose), with every constant in the ``clinic`` card:

* **Drive** from the synaptic state (:mod:`ketasim.mechanism`):
  ``h(t) = f_d·w_e·a_fast·(1 − R_b)⁺ + a_proteins·(P − 1)⁺ + a_spines·(S − 1)⁺`` — LHb burst
  suppression (hours), synaptic proteins (days) and spines (sustained); ``f_d`` is the
  disorder factor (bipolar > 1), ``w_e`` the weight of hypothesis (e), which carries the
  rapid effect (as in the rodent forced-swim readout). Mood follows the fast term through an
  effect compartment with rate ``k_mood`` and the synaptic terms through one with
  ``k_mood_slow``.
* **Drug effect** (fraction of the baseline score): direct ``d₀ = E_i·h_e/(h50 + h_e)`` with
  ``E_i = logistic(logit(E) + η_E,i)`` (for esketamine arms ``h_e`` is scaled by the
  calibrated ``esketamine_clinical_factor``); a priming trace of the fast (acute) effect
  drive ``h_f``: ``dπ/dt = (h_f/(h50 + h_f) − π)/τ_π``; and a consolidated part ``C`` that
  builds up in a primed state (``dC/dt = (g_c·d₀·(π − θ_c)⁺ − C)/τ_c``, capped at
  ``C_max``) and fades after the last dose; ``d = 1 − (1 − d₀)(1 − C)``. A single dose
  primes but stays below θ_c; a series consolidates (Murrough 2013b against Kishimoto 2016).
* **Placebo / expectancy and natural course** (:func:`placebo_effect`): with the onset
  ``o(t) = 1 − e^{−t/τ_p}``, a sustained part ``P_i·o·e^{−t/τ_fade}`` (natural course, every
  arm), a session (infusion-day) expectancy ``X_i·o·e^{−t/τ_x}`` that is large within hours
  and gone within a day (Daly 2018 placebo −9.7 at 2 h, −5.7 at 24 h) and, for an infusion
  that feels active (ketamine, midazolam), an extra expectancy ``A_i·o·e^{−t/τ_A}`` fading
  over days; ``p = 1 − (1 − sustained)(1 − session)(1 − active)``; ``P_i``, ``X_i``, ``A_i``
  logit-normal with the same patient draw η_P. Active placebo adds midazolam sedation.
* **Oral antidepressant background**: ``a(t) = A·(1 − e^{−t/τ_AD})``.
* **MADRS** ``= clip(B_i·(1 − p)·(1 − d)·(1 − a) + ε, 0, 60)`` with ε ~ N(0, σ) per visit.
  HAM-D17 = 0.75·MADRS, HAM-D6 = 0.36·MADRS (documented linear mappings, assumed).
* **Suicidality**: MADRS item 10 and SSI fall by ``1 − (1 − p)(1 − g·d)`` of baseline (g ≥ 1:
  an effect beyond the depression change, Wilkinson 2018), plus a visit noise of SD
  ``σ_s × baseline`` (:func:`suicidality_noise`; Price 2014 within-group d), clipped to the
  scale.
* **Side effects** from the effect-site (brain-equilibrated) concentration Ce (ng/mL, racemic
  equivalents): CADSS a sigmoid Emax in Ce with a log-normal patient EC50 (:func:`cadss`),
  BPRS positive, ΔSBP (mmHg), sedation (0–1) linear in Ce; midazolam sedation decays with its
  half-life. Exposure bands (analgesic, anaesthetic) from the drug card.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

from .cards import load_drug, load_param_card
from .engine import Course, simulate
from .mechanism import Hypotheses, Interventions
from .pk import Covariates
from .population import Patient
from .regimen import Dose, Infusion, Regimen
from .scenario import ArmSpec
from .units import parse_dose, parse_duration

SCORES = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi")
SIDE_EFFECTS = ("cadss", "bprs_positive", "sbp_change_mmhg", "sedation")
_CL_NAMES = ("CL", "k10", "kel")
_V_NAMES = ("V1", "V", "Vc")


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def arm_regimen(arm: ArmSpec) -> Regimen | None:
    """The drug regimen of an arm (None for controls)."""
    if arm.control is not None:
        return None
    route = arm.route
    if isinstance(arm.schedule, list):
        times = [parse_duration(t, field="schedule", allow_zero=True) for t in arm.schedule]
        doses = arm.dose if isinstance(arm.dose, list) else [arm.dose] * len(times)
        items = []
        for t, d in zip(times, doses, strict=True):
            amt = parse_dose(d, salt=arm.salt)
            if route in ("iv-infusion", "iv"):
                items.append(Infusion(t, amt, parse_duration(arm.duration or "40 min")))
            else:
                items.append(Dose(t, amt, route))
        return Regimen(tuple(items))
    dose = arm.dose if isinstance(arm.dose, str) else arm.dose[0]
    duration = arm.duration or ("40 min" if route in ("iv-infusion", "iv") else None)
    return Regimen.build(route, dose, duration=duration, schedule=arm.schedule, salt=arm.salt)


def _grid(visits_h: np.ndarray, regimen: Regimen | None) -> np.ndarray:
    end = float(visits_h[-1])
    # 10-min steps over the first two days, 15 min after: the priming and consolidation
    # inputs are nonlinear in the lagged drive, and integrating them as piecewise-linear on a
    # 2-h grid left ~1e-3 relative error on MADRS late in a course (1e-5 at 15 min with a
    # consolidation gain of 445; ≤ 6e-4, about 0.01 MADRS points, with the recalibrated 1604)
    pts = [np.arange(0.0, min(end, 48.0) + 1e-9, 1.0 / 6.0), np.arange(0.0, end + 1e-9, 0.25),
           visits_h]
    if regimen is not None:
        for d in regimen:
            # 2-min steps while the acute drive curves (the effect compartments are exact for
            # piecewise-linear input: ≤ 1e-5 relative on MADRS against an ODE solver), then 10
            pts.append(d.time_h + np.arange(0.0, 4.0, 1.0 / 30.0))
            pts.append(d.time_h + np.arange(0.0, 12.0, 1.0 / 6.0))
    g = np.unique(np.round(np.concatenate(pts), 9))
    return g[(g >= 0) & (g <= end)]


@njit(cache=True, nogil=True)
def _lag_rows(h: np.ndarray, slope: np.ndarray, e: np.ndarray, k: float) -> np.ndarray:
    out = np.zeros_like(h)
    for r in range(h.shape[0]):
        y = 0.0
        for i in range(1, h.shape[1]):
            # y' = k (h(t) − y) with h linear on the step
            s = slope[r, i - 1] / k
            y = h[r, i] - s + e[i - 1] * (y - h[r, i - 1] + s)
            out[r, i] = y
    return out


def _effect_compartment(t: np.ndarray, h: np.ndarray, k: float) -> np.ndarray:
    """Exact first-order lag (rate ``k``, 1/h) of a piecewise-linear input ``h`` (…, T)."""
    h = np.asarray(h, dtype=float)
    dt = np.diff(t)
    e = np.exp(-k * dt)
    slope = np.diff(h, axis=-1) / np.where(dt > 0, dt, 1.0)
    flat = np.ascontiguousarray(h.reshape(-1, h.shape[-1]))
    out = _lag_rows(flat, np.ascontiguousarray(slope.reshape(-1, slope.shape[-1])), e, float(k))
    return out.reshape(h.shape)


def mechanism_components(arm: ArmSpec, patient: Patient, t: np.ndarray,
                         hypotheses: Hypotheses | None = None) -> dict[str, np.ndarray]:
    """Drug-dependent inputs of the score model on the grid ``t`` (h): LHb burst suppression,
    synaptic-protein and spine rises, effect-site concentration (ng/mL, potency-adjusted)."""
    return mechanism_run(arm, patient, t, hypotheses)[1]


def mechanism_run(arm: ArmSpec, patient: Patient, t: np.ndarray,
                  hypotheses: Hypotheses | None = None,
                  overrides: dict[str, float] | None = None):
    """The engine result (None for a control arm) and :func:`mechanism_components`;
    ``overrides``: mechanism-card values by name (sensitivity, uncertainty)."""
    regimen = arm_regimen(arm)
    n = len(t)
    zero = np.zeros(n)
    if regimen is None:
        return None, {"fast": zero, "proteins": zero, "spines": zero, "ce": zero}
    from .pk import resolve_model

    cov = Covariates(weight_kg=patient.weight_kg, age_years=patient.age_years, sex=patient.sex,
                     race=patient.race)
    card = resolve_model(arm.drug, arm.model, regimen.routes)
    iiv = {k: patient.pk_factor_cl for k in _CL_NAMES if k in card.parameters}
    iiv.update({k: patient.pk_factor_v for k in _V_NAMES if k in card.parameters})
    res = simulate([Course(arm.drug, regimen, card.id, iiv)], t, cov,
                   hypotheses=hypotheses or Hypotheses.parse(arm.hypotheses),
                   interventions=Interventions.parse(arm.interventions), overrides=overrides)
    return res, components_from(arm, res.readouts, res.brain_free_uM, hypotheses)


def components_from(arm: ArmSpec, readouts: dict[str, np.ndarray],
                    brain_free_uM: dict[str, np.ndarray],
                    hypotheses: Hypotheses | None = None) -> dict[str, np.ndarray]:
    """Score-model inputs from engine outputs (any leading patient axis): LHb burst
    suppression weighted by hypothesis (e) (``hypotheses``, else the arm's), synaptic-protein
    and spine rises, effect-site concentration (ng/mL, racemic-equivalent: esketamine × its
    potency factor)."""
    w_e = (hypotheses or Hypotheses.parse(arm.hypotheses)).e
    parent = "esketamine" if arm.drug == "esketamine" else "ketamine"
    fu = load_param_card("brain").value("fu_ketamine")
    ce = brain_free_uM[parent] * load_drug(parent).constant("molar_mass") / fu
    if parent == "esketamine":
        ce = ce * load_param_card("clinic").value("esketamine_potency_factor")
    r = readouts
    return {"fast": w_e * np.maximum(1.0 - r["lhb_burst"], 0.0),
            "proteins": np.maximum(r["synaptic_proteins"] - 1.0, 0.0),
            "spines": np.maximum(r["spine_density"] - 1.0, 0.0), "ce": ce}


def scores_from_components(arm: ArmSpec, patient: Patient, t: np.ndarray,
                           visits_h: np.ndarray, comp: dict[str, np.ndarray],
                           c: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Scores and side effects at the visits from the mechanism components on grid ``t``."""
    out = scores_batch(arm, [patient], t, visits_h,
                       {k: v[None, :] for k, v in comp.items()}, c)
    return {k: v[0] if v.ndim == 2 else v for k, v in out.items()}


def scores_batch(arm: ArmSpec, patients: list[Patient], t: np.ndarray, visits_h: np.ndarray,
                 comp: dict[str, np.ndarray], c: dict[str, float] | None = None
                 ) -> dict[str, np.ndarray]:
    """Vectorised over patients: ``comp`` arrays are (patients, len(t)); outputs (patients,
    visits) except ``time_h``."""
    c = c or {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    bip = np.array([p.disorder == "bipolar" for p in patients])
    fast = c["a_fast"] * comp["fast"] * np.where(bip, c["bipolar_fast_factor"], 1.0)[:, None]
    slow = c["a_proteins"] * comp["proteins"] + c["a_spines"] * comp["spines"]
    ce = comp["ce"]
    if arm.drug == "esketamine" and arm.control is None:
        # the components carry the card's potency factor (components_from); a constants dict
        # with another value (validate, sensitivity) rescales them, as the card value would
        pot = load_param_card("clinic").value("esketamine_potency_factor")
        if c["esketamine_potency_factor"] != pot:
            ce = ce * (c["esketamine_potency_factor"] / pot)
    he_fast = _effect_compartment(t, fast, c["k_mood"])
    he = he_fast + _effect_compartment(t, slow, c["k_mood_slow"])
    if arm.drug == "esketamine" and arm.control is None:
        he = he * c["esketamine_clinical_factor"]
        he_fast = he_fast * c["esketamine_clinical_factor"]
    emax = drug_emax_i(patients, c)[:, None]
    d_direct = emax * he / (c["drive50"] + he)
    # priming: a slow trace of the acute (fast) drug action, so it counts recent doses;
    # consolidation needs it above a threshold that one dose does not reach, so a series
    # consolidates and a single dose fades
    prime = _effect_compartment(t, he_fast / (c["drive50"] + he_fast),
                                1.0 / (24.0 * c["priming_tau_d"]))
    # consolidation: sustained improvement builds up while primed, then fades
    cons = _effect_compartment(
        t, c["consolidation_gain"] * d_direct * np.maximum(prime - c["consolidation_threshold"],
                                                           0.0),
        1.0 / (24.0 * c["consolidation_tau_d"]))
    d = drug_effect(d_direct, cons, c)
    idx = np.searchsorted(t, np.round(visits_h, 9))
    return visit_scores(arm, patients, visits_h, d[:, idx], ce[:, idx],
                        ce.max(axis=1), c)


def drug_emax_i(patients: list[Patient], c: dict[str, float]) -> np.ndarray:
    """Per-patient maximal drug effect ``E_i = logistic(logit(E) + η_E,i·sd)`` (fraction)."""
    eta_e = np.array([p.eta_emax for p in patients]) * c["drug_emax_iiv_sd"]
    return 1.0 / (1.0 + np.exp(-(_logit(c["drug_emax"]) + eta_e)))


def drug_effect(d_direct: np.ndarray, cons: np.ndarray, c: dict[str, float]) -> np.ndarray:
    """Total drug effect ``d = 1 − (1 − d₀)(1 − min(C, C_max))`` (fraction of baseline)."""
    return 1.0 - (1.0 - d_direct) * (1.0 - np.minimum(cons, c["consolidation_cap"]))


def visit_scores(arm: ArmSpec, patients: list[Patient], visits_h: np.ndarray, d: np.ndarray,
                 ce: np.ndarray, peak: np.ndarray, c: dict[str, float]
                 ) -> dict[str, np.ndarray]:
    """Scores and side effects at the visits (h) from the drug effect ``d`` and the
    effect-site concentration ``ce`` (ng/mL) at the visits (patients × visits) and its peak
    over the course (patients,): the closed-form placebo, background and score formulas."""
    t = np.asarray(visits_h, dtype=float)
    npt, nv = len(patients), len(t)
    # an infusion that feels active (ketamine, or midazolam's sedation) carries the larger
    # expectancy; saline the smaller
    p = placebo_effect(arm, patients, t, c)
    ad = np.array([arm.background == "oral-antidepressant"
                   or "oral-antidepressant" in pt.comedication for pt in patients])[:, None]
    a = ad * c["ad_background_max"] * (1.0 - np.exp(-t / (24.0 * c["ad_background_tau_d"])))
    core = (1.0 - p) * (1.0 - d) * (1.0 - a)
    base = np.array([pt.baseline_madrs for pt in patients])[:, None]
    noise = np.array([pt.residual[:nv] for pt in patients]).reshape(npt, nv) * c["residual_sd"]
    madrs = np.clip(base * core + noise, 0.0, 60.0)
    suic = ((1.0 - p) * (1.0 - np.minimum(c["suicidality_gain"] * d, c["suicidality_cap"]))
            * (1.0 - a))
    suic_noise = suicidality_noise(patients, t, c)
    sed = c["sedation_per_ng_ml"] * ce
    if arm.control == "active-placebo":
        k = np.log(2) / c["midazolam_half_life_h"]
        dur = parse_duration(arm.duration or "40 min")  # midazolam infusion, as designed
        rise = np.clip(t / dur, 0.0, 1.0)
        sed = np.broadcast_to(c["midazolam_sedation_peak"] * rise
                              * np.exp(-k * np.maximum(t - dur, 0.0)), (npt, nv))
    peak = np.asarray(peak, dtype=float).reshape(npt, 1)
    return {
        "time_h": visits_h,
        "madrs": madrs,
        "hamd17": np.clip(madrs * c["hamd17_per_madrs"], 0.0, 52.0),
        "hamd6": np.clip(madrs * c["hamd6_per_madrs"], 0.0, 22.0),
        "madrs_item10": np.clip(c["item10_baseline"] * (suic + suic_noise), 0.0, 6.0),
        "ssi": np.clip(c["ssi_baseline"] * (suic + suic_noise), 0.0, 38.0),
        "cadss": cadss(ce, patients, c),
        "bprs_positive": np.clip(c["bprs_per_ng_ml"] * ce, 0.0, 24.0),
        "sbp_change_mmhg": c["sbp_per_ng_ml"] * ce,
        "sedation": np.clip(sed, 0.0, 1.0),
        "effect_site_ng_per_ml": ce,
        "drug_effect": d,
        "placebo_effect": p,
        "peak_effect_site_ng_per_ml": np.repeat(peak, nv, axis=1),
        "peak_cadss": np.repeat(cadss(peak, patients, c), nv, axis=1),
        "peak_sbp_change_mmhg": np.repeat(c["sbp_per_ng_ml"] * peak, nv, axis=1),
        # exposure bands from the drug card (racemic-equivalent effect-site concentration)
        "analgesic_band": np.repeat(peak >= _band("analgesic_ng_per_ml"), nv, axis=1),
        "anaesthetic_band": np.repeat(peak >= _band("anaesthetic_ng_per_ml"), nv, axis=1),
    }


def placebo_effect(arm: ArmSpec, patients: list[Patient], t: np.ndarray,
                   c: dict[str, float]) -> np.ndarray:
    """Placebo fraction of the baseline score (patients × visits) at times ``t`` (h).

    Three parts share the patient's placebo draw ``η_P`` (logit-normal, SD ``ω_P``) and the
    onset ``1 − e^{−t/τ_p}``: a sustained part (natural course and lasting expectancy) ``P_i``
    fading over ``τ_fade`` in every arm; a session (infusion-day) expectancy ``X_i`` fading
    over ``τ_x`` hours (Daly 2018 placebo: −9.7 at 2 h, −5.7 at 24 h); and, for an infusion
    that feels active (ketamine, midazolam), an extra expectancy ``A_i`` fading over
    ``τ_A`` days (Murrough 2013a midazolam −8.8 at 24 h against saline's smaller change).
    They combine as ``p = 1 − (1 − sustained)(1 − session)(1 − active)``."""
    t = np.asarray(t, dtype=float)
    eta_p = np.array([pt.eta_placebo for pt in patients])[:, None] * c["placebo_iiv_sd"]
    onset = 1.0 - np.exp(-t / c["placebo_tau_h"])

    def typical(frac: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(_logit(frac) + eta_p)))

    keep = 1.0 - typical(c["placebo_saline"]) * onset * np.exp(
        -t / (24.0 * c["placebo_decay_d"]))
    keep = keep * (1.0 - typical(c["placebo_session"]) * onset
                   * np.exp(-t / c["placebo_session_tau_h"]))
    if arm.control != "saline":
        keep = keep * (1.0 - typical(c["placebo_active"]) * onset
                       * np.exp(-t / (24.0 * c["placebo_active_decay_d"])))
    return 1.0 - keep


def suicidality_noise(patients: list[Patient], t: np.ndarray, c: dict[str, float]
                      ) -> np.ndarray:
    """Visit noise of the suicidality scores as a fraction of their baseline (patients ×
    visits): ``σ_s·ε`` with ε ~ N(0, 1) per visit, 0 at t = 0 (the baseline rating is the
    baseline). Item 10 and SSI add ``baseline × noise`` before clipping to the scale, as
    MADRS adds its residual."""
    t = np.asarray(t, dtype=float)
    nv = len(t)
    eps = np.array([pt.residual_suicidality[:nv] if pt.residual_suicidality is not None
                    else np.zeros(nv) for pt in patients]).reshape(len(patients), nv)
    return np.where(t > 0.0, c["suicidality_residual_sd"] * eps, 0.0)


def cadss(ce: np.ndarray, patients: list[Patient], c: dict[str, float]) -> np.ndarray:
    """CADSS (points) from the effect-site concentration ``ce`` (ng/mL racemic equivalents;
    patients × visits or patients,): a sigmoid Emax ``E_CADSS·Ce^γ/(EC50_i^γ + Ce^γ)`` with a
    log-normal patient EC50 ``EC50_i = EC50·exp(ω_C·η_C,i)``."""
    ce = np.maximum(np.asarray(ce, dtype=float), 0.0)
    eta = np.array([pt.eta_cadss for pt in patients]) * c["cadss_ec50_iiv_sd"]
    ec50 = c["cadss_ec50_ng_per_ml"] * np.exp(eta).reshape((len(patients),)
                                                             + (1,) * (ce.ndim - 1))
    g = c["cadss_hill"]
    x = (ce / ec50) ** g
    return np.clip(c["cadss_emax"] * x / (1.0 + x), 0.0, 92.0)


def _band(name: str) -> float:
    return load_drug("ketamine").bands[name].value


def simulate_patient(arm: ArmSpec, patient: Patient, visits_h: np.ndarray,
                     hypotheses: Hypotheses | None = None) -> dict[str, np.ndarray]:
    """Scores and side effects of one patient at the visit times (h)."""
    t = _grid(visits_h, arm_regimen(arm))
    comp = mechanism_components(arm, patient, t, hypotheses)
    return scores_from_components(arm, patient, t, visits_h, comp)


def simulate_arm(arm: ArmSpec, patients: list[Patient], visits_h: np.ndarray,
                 hypotheses: Hypotheses | None = None) -> pd.DataFrame:
    """Long table: one row per patient and visit (scores, side effects, effect terms)."""
    rows = []
    for pt in patients:
        r = simulate_patient(arm, pt, visits_h, hypotheses)
        df = pd.DataFrame(r)
        df.insert(0, "patient", pt.index)
        df.insert(1, "arm", arm.name)
        df["baseline_madrs"] = pt.baseline_madrs
        rows.append(df)
    return pd.concat(rows, ignore_index=True)
