"""Mood and the clinic: depression and suicidality scores, controls and side effects.

For patient i at time t (h after the first dose), with every constant in the ``clinic`` card:

* **Drive** from the synaptic state (:mod:`ketasim.mechanism`):
  ``h(t) = f_d·a_fast·(1 − R_b)⁺ + a_proteins·(P − 1)⁺ + a_spines·(S − 1)⁺`` — LHb burst
  suppression (hours), synaptic proteins (days) and spines (sustained); ``f_d`` is the
  disorder factor (bipolar > 1). Mood follows the drive through an effect compartment
  ``dh_e/dt = k_mood·(h − h_e)``.
* **Drug effect** (fraction of the baseline score): ``d = E_i·h_e/(h50 + h_e)`` with
  ``E_i = logistic(logit(E) + η_E,i)``.
* **Placebo / expectancy and natural course**: ``p(t) = P_i·(1 − e^{−t/τ_p})·e^{−t/τ_fade}``,
  ``P_i = logistic(logit(P) + η_P,i)``, P the saline or active-placebo fraction. Every arm
  carries it (blinded infusion); active placebo adds midazolam sedation.
* **Oral antidepressant background**: ``a(t) = A·(1 − e^{−t/τ_AD})``.
* **MADRS** ``= clip(B_i·(1 − p)·(1 − d)·(1 − a) + ε, 0, 60)`` with ε ~ N(0, σ) per visit.
  HAM-D17 = 0.75·MADRS, HAM-D6 = 0.36·MADRS (documented linear mappings, assumed).
* **Suicidality**: MADRS item 10 and SSI fall by ``1 − (1 − p)(1 − g·d)`` of baseline (g ≥ 1:
  an effect beyond the depression change, Wilkinson 2018).
* **Side effects** from the effect-site (brain-equilibrated) concentration Ce (ng/mL, racemic
  equivalents): CADSS, BPRS positive, ΔSBP (mmHg), sedation (0–1); midazolam sedation decays
  with its half-life. Exposure bands (analgesic, anaesthetic) from the drug card.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    pts = [np.arange(0.0, min(end, 48.0) + 1e-9, 1.0 / 6.0), np.arange(0.0, end + 1e-9, 2.0),
           visits_h]
    if regimen is not None:
        for d in regimen:
            pts.append(d.time_h + np.arange(0.0, 12.0, 1.0 / 6.0))
    g = np.unique(np.round(np.concatenate(pts), 9))
    return g[(g >= 0) & (g <= end)]


def _effect_compartment(t: np.ndarray, h: np.ndarray, k: float) -> np.ndarray:
    """Exact first-order lag of a piecewise-linear input (1/h rate ``k``)."""
    out = np.zeros_like(h)
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        e = np.exp(-k * dt)
        slope = (h[i] - h[i - 1]) / dt if dt > 0 else 0.0
        # y' = k (h0 + slope·s − y)
        out[i] = h[i] - slope / k + e * (out[i - 1] - h[i - 1] + slope / k)
    return out


def simulate_patient(arm: ArmSpec, patient: Patient, visits_h: np.ndarray,
                     hypotheses: Hypotheses | None = None) -> dict[str, np.ndarray]:
    """Scores and side effects of one patient at the visit times (h)."""
    c = {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    regimen = arm_regimen(arm)
    t = _grid(visits_h, regimen)
    n = len(t)
    drive = np.zeros(n)
    ce = np.zeros(n)
    if regimen is not None:
        from .pk import resolve_model

        cov = Covariates(weight_kg=patient.weight_kg, age_years=patient.age_years,
                         sex=patient.sex, race=patient.race)
        card = resolve_model(arm.drug, arm.model, regimen.routes)
        iiv = {k: patient.pk_factor_cl for k in _CL_NAMES if k in card.parameters}
        iiv.update({k: patient.pk_factor_v for k in _V_NAMES if k in card.parameters})
        res = simulate([Course(arm.drug, regimen, card.id, iiv)], t, cov,
                       hypotheses=hypotheses or Hypotheses.parse(arm.hypotheses),
                       interventions=Interventions.parse(arm.interventions))
        r = res.readouts
        fast = c["a_fast"] * np.maximum(1.0 - r["lhb_burst"], 0.0)
        if patient.disorder == "bipolar":
            fast = fast * c["bipolar_fast_factor"]
        drive = (fast + c["a_proteins"] * np.maximum(r["synaptic_proteins"] - 1.0, 0.0)
                 + c["a_spines"] * np.maximum(r["spine_density"] - 1.0, 0.0))
        parent = "esketamine" if arm.drug == "esketamine" else "ketamine"
        drug = load_drug(parent)
        fu = load_param_card("brain").value("fu_ketamine")
        ce = res.brain_free_uM[parent] * drug.constant("molar_mass") / fu  # ng/mL
        if parent == "esketamine":
            ce = ce * c["esketamine_potency_factor"]
    he = _effect_compartment(t, drive, c["k_mood"])
    emax = _logistic(_logit(c["drug_emax"]) + patient.eta_emax)
    d = emax * he / (c["drive50"] + he)
    p_typ = c["placebo_active"] if arm.control == "active-placebo" else c["placebo_saline"]
    if arm.control is None:
        p_typ = c["placebo_saline"]  # blinded drug arms carry the infusion-visit expectancy
    p_i = _logistic(_logit(p_typ) + patient.eta_placebo)
    p = p_i * (1.0 - np.exp(-t / c["placebo_tau_h"])) * np.exp(-t / (24.0 * c["placebo_decay_d"]))
    a = np.zeros(n)
    if arm.background == "oral-antidepressant" or "oral-antidepressant" in patient.comedication:
        a = c["ad_background_max"] * (1.0 - np.exp(-t / (24.0 * c["ad_background_tau_d"])))
    core = (1.0 - p) * (1.0 - d) * (1.0 - a)
    idx = np.searchsorted(t, np.round(visits_h, 9))
    noise = patient.residual[: len(visits_h)] * c["residual_sd"]
    madrs = np.clip(patient.baseline_madrs * core[idx] + noise, 0.0, 60.0)
    suic = (1.0 - p) * (1.0 - np.minimum(c["suicidality_gain"] * d, 0.99)) * (1.0 - a)
    sed = c["sedation_per_ng_ml"] * ce
    if arm.control == "active-placebo":
        k = np.log(2) / c["midazolam_half_life_h"]
        dur = 40.0 / 60.0
        rise = np.clip(t / dur, 0.0, 1.0)
        sed = c["midazolam_sedation_peak"] * rise * np.exp(-k * np.maximum(t - dur, 0.0))
    out = {
        "time_h": visits_h,
        "madrs": madrs,
        "hamd17": np.clip(madrs * c["hamd17_per_madrs"], 0.0, 52.0),
        "hamd6": np.clip(madrs * c["hamd6_per_madrs"], 0.0, 22.0),
        "madrs_item10": np.clip(c["item10_baseline"] * suic[idx], 0.0, 6.0),
        "ssi": np.clip(c["ssi_baseline"] * suic[idx], 0.0, 38.0),
        "cadss": np.clip(c["cadss_per_ng_ml"] * ce[idx], 0.0, 92.0),
        "bprs_positive": np.clip(c["bprs_per_ng_ml"] * ce[idx], 0.0, 24.0),
        "sbp_change_mmhg": c["sbp_per_ng_ml"] * ce[idx],
        "sedation": np.clip(sed[idx], 0.0, 1.0),
        "effect_site_ng_per_ml": ce[idx],
        "drug_effect": d[idx],
        "placebo_effect": p[idx],
        "peak_effect_site_ng_per_ml": np.full(len(visits_h), float(ce.max())),
        "peak_cadss": np.full(len(visits_h), float(np.clip(c["cadss_per_ng_ml"] * ce.max(), 0,
                                                              92))),
        "peak_sbp_change_mmhg": np.full(len(visits_h), float(c["sbp_per_ng_ml"] * ce.max())),
    }
    return out


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
