"""Virtual patients: covariates and random effects, reproducible per patient.

Every patient's draws come from ``SeedSequence([seed, arm_index, patient_index])``, so a
patient is the same whatever the chunking or the order in which chunks run. With
``same_patients_in_every_arm`` the arm index of the draws is 0 in every arm (common random
numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cards import load_param_card
from .scenario import PopulationSpec


@dataclass
class Patient:
    """One virtual patient (units: kg, years; random effects on their natural scales)."""

    index: int
    weight_kg: float
    age_years: float
    sex: str
    race: str
    disorder: str
    baseline_madrs: float
    eta_placebo: float  # standard-normal draw; × placebo_iiv_sd gives the logit deviation
    eta_emax: float  # standard-normal draw; × drug_emax_iiv_sd gives the logit deviation
    pk_factor_cl: float  # multiplicative, clearance-type parameters
    pk_factor_v: float  # multiplicative, volumes
    residual: np.ndarray  # standard-normal draws for visit noise
    comedication: tuple[str, ...]
    seed_entropy: tuple[int, int, int]
    # drawn after the fields above, so adding them left every earlier draw unchanged
    eta_cadss: float = 0.0  # standard-normal draw; × cadss_ec50_iiv_sd gives the log deviation
    residual_suicidality: np.ndarray | None = None  # standard-normal draws, suicidality visits


def patient_rng(seed: int, arm_index: int, patient_index: int) -> np.random.Generator:
    """Random generator of one virtual patient, independent of chunking and workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, arm_index, patient_index]))


def _clip(x: float, lo: float, hi: float) -> float:
    """``np.clip`` of one finite float (the same value, without numpy's per-call overhead)."""
    return float(min(max(x, lo), hi))


def _arm_constants(spec: PopulationSpec) -> tuple[float, float, float]:
    """Baseline MADRS mean and SD and the log-scale SD of the PK factors (card values unless
    the population overrides them)."""
    c = load_param_card("clinic")
    mean = (spec.baseline_madrs_mean if spec.baseline_madrs_mean is not None
            else c.value(f"madrs_baseline_{spec.disorder}"))
    sd = spec.baseline_madrs_sd if spec.baseline_madrs_sd is not None else c.value(
        "madrs_baseline_sd")
    return mean, sd, np.sqrt(np.log(1.0 + c.value("pk_iiv_cv") ** 2))


#: visit-noise draws taken before eta_cadss (the trial's default visit count)
NOISE_BLOCK = 64


def sample_patient(spec: PopulationSpec, arm_index: int, i: int, n_visits: int = NOISE_BLOCK,
                   constants: tuple[float, float, float] | None = None) -> Patient:
    """Draw patient ``i`` of an arm; the same call always gives the same patient (covariates,
    eta_placebo, eta_emax, PK factors and the first visit-noise draws do not depend on
    ``n_visits``: the visit noise of visit k is the same for any ``n_visits`` > k, and so are
    eta_cadss and the suicidality noise).
    ``constants``: :func:`_arm_constants` of ``spec`` (computed here if not given)."""
    mean, sd, s = constants if constants is not None else _arm_constants(spec)
    arm_index = 0 if spec.same_patients_in_every_arm else arm_index  # the draws' arm
    rng = patient_rng(spec.seed, arm_index, i)
    w = _clip(rng.normal(spec.weight_kg_mean, spec.weight_kg_sd), 40.0, 200.0)
    age = _clip(rng.normal(spec.age_mean, spec.age_sd), 18.0, 90.0)
    sex = "female" if rng.random() < spec.female_fraction else "male"
    base = _clip(rng.normal(mean, sd), 20.0, 60.0)
    eta_p = float(rng.standard_normal())
    eta_e = float(rng.standard_normal())
    f_cl = float(np.exp(rng.normal(0.0, s)))
    f_v = float(np.exp(rng.normal(0.0, s)))
    # a fixed block of visit-noise draws, then eta_cadss, then the suicidality noise, so a
    # patient is the same whatever ``n_visits`` (the first k draws of either noise never
    # depend on it); visits beyond the block continue the stream afterwards
    resid = rng.standard_normal(NOISE_BLOCK)
    eta_c = float(rng.standard_normal())
    resid_s = rng.standard_normal(NOISE_BLOCK)
    if n_visits > NOISE_BLOCK:
        extra = n_visits - NOISE_BLOCK
        resid = np.concatenate([resid, rng.standard_normal(extra)])
        resid_s = np.concatenate([resid_s, rng.standard_normal(extra)])
    resid, resid_s = resid[:n_visits].copy(), resid_s[:n_visits].copy()
    return Patient(i, w, age, sex, spec.race, spec.disorder, base, eta_p, eta_e, f_cl, f_v,
                   resid, tuple(spec.comedication), (spec.seed, arm_index, i), eta_c, resid_s)


def sample_arm(spec: PopulationSpec, arm_index: int, n: int, n_visits: int = 64,
               start: int = 0) -> list[Patient]:
    """Patients ``start … start+n−1`` of an arm."""
    k = _arm_constants(spec)
    return [sample_patient(spec, arm_index, i, n_visits, k) for i in range(start, start + n)]
