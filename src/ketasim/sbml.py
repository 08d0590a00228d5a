"""SBML export of one virtual patient's assembled model (PK → brain → receptor → signalling →
mood → MADRS), so that libRoadRunner, COPASI or tellurium can run it.

The model is built from the same objects the engine uses:

* **PK** — :func:`ketasim.pk.model.assemble` gives ``dx/dt = K x + u``; every non-zero entry of
  ``K`` becomes a parameter ``K__<to>__<from>`` (1/h) and every state ``x_<state>`` (mg, or
  mg/L for an effect site) a rate rule. Doses come from
  :func:`ketasim.pk.solve.compile_schedule`: a bolus is an event adding ``dose<k>_amt`` (mg) to
  its state; a zero-order input (IV infusion, or an absorption with a duration) is a pair of
  events setting the switch ``inf<k>_on`` to 1 and back to 0, and the input ``u_<state>`` sums
  ``inf<k>_on·inf<k>_rate`` (mg/h).
* **Free brain concentration** (µM) per NMDA blocker, as in :func:`ketasim.engine._free_map`.
* **Mechanism** — the equations of :func:`ketasim.mechanism.rhs_nb` (quasi-steady-state block
  of the fast populations, trapped LHb block, signalling and synapses), written once below as
  a table of assignment and rate rules over the packed parameter names
  (:meth:`ketasim.mechanism.MechanismParams.packed`); ``tests/test_sbml.py`` pins this table to
  ``rhs_nb`` at random states.
* **Mood** — the noise-free MADRS of :func:`ketasim.mood.scores_batch`, generated from the
  ``clinic`` card at export time (:func:`_mood_rules`, kept compact and separate).

Patient-specific numbers (``K`` entries, plasma volumes, dose amounts and rates, baseline
MADRS, individual maximal drug effect and placebo fraction) are parameters listed in
:attr:`ExportedModel.patient_parameters`, so one loaded model can be run for many patients by
setting them (what ``ketasim bench --json`` does in libRoadRunner). Time is in hours.
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass, field, replace

import numpy as np

from . import __version__
from .cards import card_versions, load_drug, load_param_card
from .engine import SPECIES_BLOCKER, _free_map
from .errors import MAX_SEED, KetasimError, check_int
from .mechanism import _PACK, POPULATIONS, STATE_NAMES, Hypotheses, Interventions, MechanismParams
from .pk import Covariates, resolve_model
from .pk.model import PKSystem, assemble
from .pk.solve import Schedule, compile_schedule
from .population import Patient
from .scenario import ArmSpec, Scenario

SBML_LEVEL = 3
SBML_VERSION = 1
#: mirrors the numerical floor on the mTOR feedback state in :func:`ketasim.mechanism.rhs_nb`
_Z_FLOOR = 1e-6
#: MADRS scale range (0–60 points)
_MADRS_RANGE = (0.0, 60.0)
_FAST_POPULATIONS = POPULATIONS[:3]  # E2B, Esyn, I: quasi-steady-state block
_LHB = POPULATIONS[3]


# --------------------------------------------------------------------------- setup
@dataclass
class CourseSetup:
    """What the engine assembles for one patient and one drug arm (single course)."""

    arm: ArmSpec
    patient: Patient
    system: PKSystem
    schedule: Schedule
    frees: list[tuple[str, int, float]]  # (blocker, PK state index, scale µM per unit)
    mech: MechanismParams
    parent: str  # ketamine or esketamine


def _iiv(card, patient: Patient) -> dict[str, np.ndarray]:
    from .mood import _CL_NAMES, _V_NAMES

    iiv = {k: np.array([patient.pk_factor_cl]) for k in _CL_NAMES if k in card.parameters}
    iiv.update({k: np.array([patient.pk_factor_v]) for k in _V_NAMES if k in card.parameters})
    return iiv


def course_setup(arm: ArmSpec, patient: Patient,
                 hypotheses: Hypotheses | None = None) -> CourseSetup:
    """Assemble PK, schedule, free-brain map and mechanism constants exactly as
    :func:`ketasim.mood.mechanism_components` → :func:`ketasim.engine.simulate` do."""
    from .mood import arm_regimen

    regimen = arm_regimen(arm)
    if regimen is None:
        raise KetasimError("arm", f"arm {arm.name!r} is a control arm; export needs a drug arm")
    cov = Covariates(weight_kg=patient.weight_kg, age_years=patient.age_years, sex=patient.sex,
                     race=patient.race)
    card = resolve_model(arm.drug, arm.model, regimen.routes)
    system = assemble(card, cov, routes=regimen.routes, n=1, iiv=_iiv(card, patient) or None)
    sched = compile_schedule(system, regimen, np.array([patient.weight_kg]))
    frees = _free_map(system, 0)
    blockers = tuple(dict.fromkeys(f[0] for f in frees))
    if not blockers:
        raise KetasimError("drug", "no NMDA receptor blocker in the simulated course")
    # the acute intervention window counted from the first dose, as in the engines
    first = min([tb for tb, _, _ in sched.boluses] + [ta for ta, _, _, _ in sched.infusions],
                default=0.0)
    mech = MechanismParams.from_cards(blockers, hypotheses or Hypotheses.parse(arm.hypotheses),
                                      Interventions.parse(arm.interventions)).anchored(first)
    parent = "esketamine" if arm.drug == "esketamine" else "ketamine"
    return CourseSetup(arm, patient, system, sched, frees, mech, parent)


def typical_patient(scenario: Scenario) -> Patient:
    """One virtual patient with the population's typical covariates, no random effects and no
    residual noise (the noise-free MADRS)."""
    pop = scenario.population
    c = load_param_card("clinic")
    base = (pop.baseline_madrs_mean if pop.baseline_madrs_mean is not None
            else c.value(f"madrs_baseline_{pop.disorder}"))
    return Patient(0, pop.weight_kg_mean, pop.age_mean,
                   "female" if pop.female_fraction > 0.5 else "male", pop.race, pop.disorder,
                   float(base), 0.0, 0.0, 1.0, 1.0, np.zeros(64), tuple(pop.comedication),
                   (pop.seed, 0, 0))


def without_noise(patients: list[Patient]) -> list[Patient]:
    """The same patients with zero residual draws: noise-free MADRS (what the SBML export
    computes) and noise-free suicidality scores (item 10, SSI), for comparisons."""
    return [replace(p, residual=np.zeros_like(p.residual),
                    residual_suicidality=(None if p.residual_suicidality is None else
                                          np.zeros_like(p.residual_suicidality)))
            for p in patients]


# --------------------------------------------------------------------------- ids
def _x(state: str) -> str:
    return f"x_{state}"


def _y(name: str) -> str:
    return f"y_{name}"


def _k_id(system: PKSystem, i: int, j: int) -> str:
    return f"K__{system.states[i]}__{system.states[j]}"


# --------------------------------------------------------------------------- patient values
def patient_parameters(setup: CourseSetup) -> dict[str, float]:
    """Values of every patient-specific SBML parameter (what a user sets per patient)."""
    s = setup.system
    vals: dict[str, float] = {}
    K = s.K[0]
    for i, j in zip(*np.nonzero(K), strict=True):
        vals[_k_id(s, i, j)] = float(K[i, j])
    for sp, (_, vol) in s.plasma.items():
        vals[f"V_{sp}"] = float(vol[0])
    for k, (_, _, a) in enumerate(setup.schedule.boluses):
        vals[f"dose{k}_amt"] = float(a[0])
    for k, (_, _, _, r) in enumerate(setup.schedule.infusions):
        vals[f"inf{k}_rate"] = float(r[0])
    vals.update(_mood_patient(setup.arm, setup.patient))
    return vals


# --------------------------------------------------------------------------- units
#: SBML unit definitions: id -> (kind, exponent, scale, multiplier) factors. Conversion
#: constants written as literals carry units too (``1000 thousandth``: mg/L → ng/mL and
#: mM → µM; ``24 hour_per_day``), so that a unit-aware tool sees every expression's units.
UNIT_DEFINITIONS: dict[str, tuple[tuple[str, int, int, float], ...]] = {
    "hour": (("second", 1, 0, 3600.0),),
    "day": (("second", 1, 0, 86400.0),),
    "per_hour": (("second", -1, 0, 3600.0),),
    "hour_per_day": (("second", 1, 0, 3600.0), ("second", -1, 0, 86400.0)),
    "mg": (("gram", 1, -3, 1.0),),
    "umol": (("mole", 1, -6, 1.0),),
    "square_metre": (("metre", 2, 0, 1.0),),
    "mg_per_hour": (("gram", 1, -3, 1.0), ("second", -1, 0, 3600.0)),
    "mg_per_L": (("gram", 1, -3, 1.0), ("litre", -1, 0, 1.0)),
    "ng_per_mL": (("gram", 1, -9, 1.0), ("litre", -1, -3, 1.0)),
    "uM": (("mole", 1, -6, 1.0), ("litre", -1, 0, 1.0)),
    "per_uM_per_hour": (("mole", -1, -6, 1.0), ("litre", 1, 0, 1.0), ("second", -1, 0, 3600.0)),
    "g_per_mol": (("gram", 1, 0, 1.0), ("mole", -1, 0, 1.0)),
    "per_L_per_hour": (("litre", -1, 0, 1.0), ("second", -1, 0, 3600.0)),
    "L_per_hour": (("litre", 1, 0, 1.0), ("second", -1, 0, 3600.0)),
    "thousandth": (("dimensionless", 1, -3, 1.0),),
}
#: card unit strings -> SBML unit ids (an unknown card unit fails the export loudly)
CARD_UNITS = {"": "dimensionless", "points": "dimensionless", "h": "hour", "d": "day",
              "1/h": "per_hour", "µM": "uM", "1/(µM·h)": "per_uM_per_hour", "g/mol": "g_per_mol",
              "mg": "mg", "L": "litre", "mg/L": "mg_per_L", "ng/mL": "ng_per_mL"}


def _card_unit(card: str, key: str) -> str:
    """The SBML unit id of parameter ``key`` of mechanism card ``card``."""
    u = load_param_card(card).parameters[key].units
    if u not in CARD_UNITS:  # pragma: no cover - guards a card edit
        raise RuntimeError(f"card {card}: unit {u!r} of {key} has no SBML unit in CARD_UNITS")
    return CARD_UNITS[u]


def _card_param(card: str, key: str) -> tuple[str, str]:
    """(unit id, name) of a parameter taken from a mechanism card."""
    u = load_param_card(card).parameters[key].units
    return _card_unit(card, key), f"{key} [{card} card{', ' + u if u else ''}]"


#: packed mechanism constants that are switches or interventions rather than card values
_PACK_NAMES = {
    "w_a": "hypothesis weight (a) eEF2K/BDNF", "w_b": "hypothesis weight (b) GluN2B brake",
    "w_c": "hypothesis weight (c) disinhibition", "w_d": "hypothesis weight (d) HNK/AMPA",
    "w_e": "hypothesis weight (e) LHb bursting", "w_f": "hypothesis weight (f) spines",
    "ko_eef2k": "eEF2K knockout switch", "del_2b": "GluN2B deletion relief [interventions card]",
    "ko_bdnf": "BDNF knockout switch", "trkb": "TrkB inhibition [interventions card]",
    "rapa": "rapamycin inhibition [interventions card]",
    "aniso": "anisomycin inhibition [interventions card]",
    "nbqx": "NBQX inhibition [interventions card]",
    "spine_block": "spine blockade fraction [interventions card]",
    "win_start": "acute intervention window start [interventions card, h]",
    "win_end": "acute intervention window end [interventions card, h]",
    "kesc_lhb": "kesc_lhb_factor [receptor card]",
}


def _mech_param(name: str) -> tuple[str, str]:
    """(unit id, name) of a packed mechanism constant."""
    r, sg = load_param_card("receptor").parameters, load_param_card("signalling").parameters
    if name in r:
        return _card_param("receptor", name)
    if name in sg:
        return _card_param("signalling", name)
    return ("hour" if name.startswith("win_") else "dimensionless"), _PACK_NAMES[name]


#: names of rule variables (SBML ``name`` attributes); ids not listed get their id as name
_RULE_NAMES = {
    "BH_sum": "total trapped LHb block", "po_H": "LHb open probability",
    "free_H": "unblocked LHb fraction", "block_H": "LHb block",
    "win": "acute intervention window (1 inside)", "rapa_t": "rapamycin acting",
    "aniso_t": "anisomycin acting", "nbqx_t": "NBQX acting", "kK": "eEF2K phosphorylation rate",
    "T_bdnf": "BDNF translation", "u_b": "GluN2B brake relief", "r_I": "interneuron activity",
    "target_E": "pyramidal firing target", "a_hnk": "HNK AMPA effect", "ampa": "AMPA drive",
    "syn_bdnf": "BDNF synthesis", "release": "BDNF release", "drive_M": "mTORC1 drive",
    "kM": "mTORC1 activation rate", "drive_H": "LHb burst drive",
    "drive_fast": "fast mood drive", "drive_slow": "slow mood drive",
    "he_fast": "fast mood effect compartment", "he_slow": "slow mood effect compartment",
    "he": "mood effect", "he_fast_eff": "fast mood effect (esketamine factor)",
    "d_direct": "direct drug effect (fraction)", "priming": "priming",
    "consolidation": "consolidation", "drug_effect": "drug effect (fraction)",
    "placebo_effect": "placebo effect (fraction)", "ad_effect": "oral antidepressant effect",
    "madrs": "MADRS, noise-free (points)",
    "effect_site_ng_per_ml": "parent effect-site concentration, racemic-equivalent (ng/mL)",
    "ce_factor": "free brain µM to racemic-equivalent ng/mL",
    "madrs_baseline": "baseline MADRS (points)", "emax_i": "individual maximal drug effect",
    "placebo_i": "individual placebo fraction", "active_i": "individual active-placebo fraction",
    "session_i": "individual session placebo fraction", "ad_on": "oral antidepressant switch",
    "fast_factor": "bipolar fast-drive factor", "esk_factor": "esketamine clinical factor",
}
#: mechanism / mood rule variables with units other than dimensionless
_RULE_UNITS = {"kK": "per_hour", "kM": "per_hour"}



# --------------------------------------------------------------------------- mechanism table
def _mechanism_rules(blockers: tuple[str, ...], has_hnk: bool) -> list[tuple[str, str, str]]:
    """Assignment (``"="``) and rate (``"d/dt"``) rules of :func:`ketasim.mechanism.rhs_nb`,
    over the packed parameter names; free brain µM of blocker ``b`` is ``C_<b>``."""
    R: list[tuple[str, str, str]] = []

    def A(i: str, f: str) -> None:
        R.append(("=", i, f))

    def D(i: str, f: str) -> None:
        R.append(("d/dt", i, f))

    y = {n: _y(n) for n in STATE_NAMES}
    for pop in _FAST_POPULATIONS:  # quasi-steady-state block (mechanism.qss_block)
        for b in blockers:
            A(f"qss_{pop}_{b}", f"kon*kmax(C_{b}, 0 uM)*Po_{pop}/mgf_{pop}_{b}"
                                f"/(kon*Kd0_{b}*Po_{pop} + kesc_{b}*(1 - Po_{pop}))")
        tot = " + ".join(f"qss_{pop}_{b}" for b in blockers)
        A(f"block_{pop}", f"({tot})/(1 + {tot})")
    # lateral habenula: trapped block as ODEs; Po rises with bursting
    A("BH_sum", " + ".join(f"bH_{b}" for b in blockers))
    A("po_H", f"Po_H_rest + pi_H*kmax({y['lhb_burst']}, 0)")
    A("free_H", "kmin(kmax(1 - BH_sum, 0), 1)")
    for b in blockers:
        D(f"bH_{b}", f"kon*kmax(C_{b}, 0 uM)/mgf_{_LHB}_{b}*po_H*free_H"
                     f" - (kon*Kd0_{b}*po_H + kesc_lhb*kesc_{b}*(1 - po_H))*bH_{b}")
    A("block_H", "kmin(kmax(BH_sum, 0), 1)")
    # acute interventions act inside a drug window
    A("win", "piecewise(1, and(geq(time, win_start), lt(time, win_end)), 0)")
    A("rapa_t", "rapa*win")
    A("aniso_t", "aniso*win")
    A("nbqx_t", "nbqx*win")
    # (a) rest block → eEF2K → p-eEF2 → BDNF translation
    A("kK", "piecewise(0 per_hour, gt(ko_eef2k, 0.5), k_PP*pE0/(1 - pE0))")
    D(y["eef2k"], f"piecewise(-{y['eef2k']}/tau_K, gt(ko_eef2k, 0.5),"
                  f" (kmax(1 - w_a*block_Esyn, 0) - {y['eef2k']})/tau_K)")
    D(y["p_eef2"], f"kK*{y['eef2k']}*(1 - {y['p_eef2']}) - k_PP*{y['p_eef2']}")
    A("T_bdnf", f"1 + w_a*((1 - {y['p_eef2']})/(1 - pE0) - 1)")
    # (b) GluN2B tonic brake on mTORC1
    A("u_b", "w_b*piecewise(del_2b, gt(del_2b, 0), block_E2B)")
    # (c) disinhibition → pyramidal firing → glutamate
    A("r_I", "kmax(1 - block_I, 0)^n_I")
    A("target_E", "(1 + g_dis*(1 - r_I))*kmax(1 - zeta*block_Esyn, 0)")
    D(y["pyramidal_rate"], f"(kmax(1 + w_c*(target_E - 1), 0) - {y['pyramidal_rate']})/tau_r")
    D(y["glutamate"], f"({y['pyramidal_rate']} - {y['glutamate']})/tau_G")
    # (d) HNK → AMPA; AMPA drive from glutamate above its slowly adapting reference
    A("a_hnk", "E_HNK*kmax(C_hnk, 0 uM)/(EC50_HNK + kmax(C_hnk, 0 uM))" if has_hnk else "0")
    A("ampa", f"kmax(1 + ({y['glutamate']} - {y['glutamate_reference']}) + w_d*a_hnk, 0)"
              "*(1 - nbqx_t)")
    D(y["glutamate_reference"], f"({y['glutamate']} - {y['glutamate_reference']})/tau_Q")
    # shared downstream: BDNF → TrkB → mTORC1 (with feedback) → synaptic proteins
    A("syn_bdnf", "piecewise(0, gt(ko_bdnf, 0.5), T_bdnf*(1 - aniso_t))")
    D(y["bdnf"], f"k_BDNF*(syn_bdnf - {y['bdnf']})")
    A("release", f"kmax({y['bdnf']}, 0)*ampa")
    D(y["trkb"], f"(release*(1 + K_T)/(K_T + release)*(1 - trkb) - {y['trkb']})/tau_T")
    A("drive_M", f"kmax({y['trkb']}, 0)*(1 + g_b*u_b)*ampa")
    A("kM", "k_Moff*M0/(1 - M0)")
    D(y["mtorc1"], f"kM*(drive_M/kmax({y['mtor_feedback']}, {_Z_FLOOR!r})^kappa_Z)^h_M"
                   f"*(1 - rapa_t)*(1 - {y['mtorc1']}) - k_Moff*{y['mtorc1']}")
    D(y["mtor_feedback"], f"({y['mtorc1']}/M0 - {y['mtor_feedback']})/tau_Z")
    D(y["synaptic_proteins"], f"((1 + k_P*({y['mtorc1']}/M0 - 1))*(1 - aniso_t)"
                              f" - {y['synaptic_proteins']})/tau_P")
    # (f) spines through two maturation stages
    D(y["precursor1"], f"(beta*w_f*kmax({y['synaptic_proteins']} - 1, 0)"
                       f" - {y['precursor1']})/tau_mat")
    D(y["precursor2"], f"({y['precursor1']} - {y['precursor2']})/tau_mat")
    D(y["spine_density"], f"(1 + {y['precursor2']}*(1 - spine_block)"
                          f" - {y['spine_density']})/tau_S")
    # (e) LHb bursting stops once block exceeds theta_H
    A("drive_H", "kmax(1 - block_H/theta_H, 0)")
    D(y["lhb_burst"], f"(drive_H^h_H - {y['lhb_burst']})/tau_b")
    return R


# --------------------------------------------------------------------------- mood layer
# Generated from the clinic card at export time; mirrors mood.scores_batch (noise-free MADRS).
# Keep in step with mood.py: tests/test_sbml.py compares MADRS with scores_batch at every visit
# and fails when the clinic card gains a parameter not classified here.
MOOD_CARD_KEYS = ("a_fast", "a_proteins", "a_spines", "k_mood", "k_mood_slow", "drive50",
                  "consolidation_gain", "consolidation_threshold", "consolidation_tau_d",
                  "consolidation_cap", "priming_tau_d",
                  "placebo_tau_h", "placebo_decay_d", "placebo_session_tau_h",
                  "placebo_active_decay_d",
                  "ad_background_max",
                  "ad_background_tau_d")
#: clinic parameters folded into the per-patient mood parameters (:func:`_mood_patient`)
MOOD_PATIENT_KEYS = ("drug_emax", "drug_emax_iiv_sd", "placebo_active", "placebo_saline",
                     "placebo_iiv_sd", "placebo_session", "bipolar_fast_factor",
                     "esketamine_potency_factor", "esketamine_clinical_factor")
#: clinic parameters outside the exported MADRS (population draws, noise, other scales,
#: suicidality, side effects, controls)
MOOD_UNUSED_KEYS = ("pk_iiv_cv", "madrs_baseline_trd", "madrs_baseline_mdd",
                    "madrs_baseline_bipolar", "madrs_baseline_sd", "residual_sd",
                    "hamd17_per_madrs", "hamd6_per_madrs", "item10_baseline", "ssi_baseline",
                    "suicidality_gain", "suicidality_cap", "suicidality_residual_sd",
                    "cadss_emax", "cadss_ec50_ng_per_ml", "cadss_hill", "cadss_ec50_iiv_sd",
                    "sbp_per_ng_ml",
                    "bprs_per_ng_ml",
                    "sedation_per_ng_ml", "midazolam_sedation_peak", "midazolam_half_life_h")


def _clinic() -> dict[str, float]:
    return {k: v.value for k, v in load_param_card("clinic").parameters.items()}


def _logistic(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def _mood_patient(arm: ArmSpec, pt: Patient) -> dict[str, float]:
    """Per-patient mood constants, as :func:`ketasim.mood.scores_batch` derives them."""
    c = _clinic()
    ad = arm.background == "oral-antidepressant" or "oral-antidepressant" in pt.comedication
    return {
        "madrs_baseline": float(pt.baseline_madrs),
        "emax_i": _logistic(_logit(c["drug_emax"]) + pt.eta_emax * c["drug_emax_iiv_sd"]),
        "placebo_i": _logistic(_logit(c["placebo_saline"])
                               + pt.eta_placebo * c["placebo_iiv_sd"]),
        "active_i": (0.0 if arm.control == "saline" else
                     _logistic(_logit(c["placebo_active"]) + pt.eta_placebo * c["placebo_iiv_sd"])),
        "session_i": _logistic(_logit(c["placebo_session"])
                               + pt.eta_placebo * c["placebo_iiv_sd"]),
        "ad_on": float(ad),
        "fast_factor": c["bipolar_fast_factor"] if pt.disorder == "bipolar" else 1.0,
        "esk_factor": (c["esketamine_clinical_factor"]
                       if arm.drug == "esketamine" and arm.control is None else 1.0),
    }


def _mood_rules() -> list[tuple[str, str, str]]:
    """Drive → two effect compartments → Emax → consolidation → placebo/AD → MADRS."""
    lo, hi = _MADRS_RANGE
    return [
        ("=", "drive_fast", f"c_a_fast*fast_factor*w_e*kmax(1 - {_y('lhb_burst')}, 0)"),
        ("=", "drive_slow", f"c_a_proteins*kmax({_y('synaptic_proteins')} - 1, 0)"
                            f" + c_a_spines*kmax({_y('spine_density')} - 1, 0)"),
        ("d/dt", "he_fast", "c_k_mood*(drive_fast - he_fast)"),
        ("d/dt", "he_slow", "c_k_mood_slow*(drive_slow - he_slow)"),
        ("=", "he", "esk_factor*(he_fast + he_slow)"),
        ("=", "he_fast_eff", "esk_factor*he_fast"),
        ("=", "d_direct", "emax_i*he/(c_drive50 + he)"),
        ("d/dt", "priming", "(he_fast_eff/(c_drive50 + he_fast_eff) - priming)"
                            "/(24 hour_per_day*c_priming_tau_d)"),
        ("d/dt", "consolidation", "(c_consolidation_gain*d_direct*kmax(priming - "
                                  "c_consolidation_threshold, 0) - consolidation)"
                                  "/(24 hour_per_day*c_consolidation_tau_d)"),
        ("=", "drug_effect", "1 - (1 - d_direct)*(1 - kmin(consolidation, "
                             "c_consolidation_cap))"),
        ("=", "placebo_effect", "1 - (1 - placebo_i*(1 - exp(-time/c_placebo_tau_h))"
                                "*exp(-time/(24 hour_per_day*c_placebo_decay_d)))"
                                "*(1 - session_i*(1 - exp(-time/c_placebo_tau_h))"
                                "*exp(-time/c_placebo_session_tau_h))"
                                "*(1 - active_i*(1 - exp(-time/c_placebo_tau_h))"
                                "*exp(-time/(24 hour_per_day*c_placebo_active_decay_d)))"),
        ("=", "ad_effect", "ad_on*c_ad_background_max"
                           "*(1 - exp(-time/(24 hour_per_day*c_ad_background_tau_d)))"),
        ("=", "madrs", f"kmin(kmax(madrs_baseline*(1 - placebo_effect)*(1 - drug_effect)"
                       f"*(1 - ad_effect), {lo!r}), {hi!r})"),
    ]


# --------------------------------------------------------------------------- SBML document
@dataclass
class ExportedModel:
    """An SBML document and the ids a user needs to run it."""

    sbml: str
    patient_parameters: dict[str, float]
    plasma: dict[str, str]  # species -> id of plasma concentration (ng/mL)
    madrs: str = "madrs"
    state_ids: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


class _Builder:
    def __init__(self, model_id: str, model_name: str = "") -> None:
        import libsbml

        self.libsbml = libsbml
        self.doc = libsbml.SBMLDocument(SBML_LEVEL, SBML_VERSION)
        self.model = self.doc.createModel()
        self.model.setId(model_id)
        if model_name:
            self.model.setName(model_name)
        self.ids: set[str] = set()
        for uid, factors in UNIT_DEFINITIONS.items():
            ud = self.model.createUnitDefinition()
            ud.setId(uid)
            for kind, exp, scale, mult in factors:
                u = ud.createUnit()
                u.setKind(libsbml.UnitKind_forName(kind))
                u.setExponent(exp)
                u.setScale(scale)
                u.setMultiplier(mult)
            self.ids.add(uid)
        # model-wide units (L3V1): time in hours, volumes in litres. There are no species or
        # reactions (PK amounts are mg parameters); the substance and extent units are µmol,
        # matching the µM brain concentrations, as COPASI imports only mole- or item-based
        # substance units (mg would be replaced by mol with a warning).
        self.model.setTimeUnits("hour")
        self.model.setSubstanceUnits("umol")
        self.model.setExtentUnits("umol")
        self.model.setVolumeUnits("litre")
        self.model.setAreaUnits("square_metre")
        self.model.setLengthUnits("metre")
        comp = self.model.createCompartment()
        comp.setId("brain_and_body")
        comp.setName("whole body (no species; quantities are global parameters)")
        comp.setConstant(True)
        comp.setSize(1.0)
        comp.setSpatialDimensions(3)
        comp.setUnits("litre")
        self.ids.add("brain_and_body")
        # max/min are not L3V1 MathML; written with abs rather than piecewise, because COPASI
        # turns every piecewise condition into a root of the integrator and the clamps at 0
        # of amounts decaying to ~1e-30 would flip it at every step (it stops with "Internal
        # step limit exceeded" weeks after the last dose)
        for name, sign in (("kmax", "+"), ("kmin", "-")):
            fd = self.model.createFunctionDefinition()
            fd.setId(name)
            fd.setName(f"{name[1:]}imum of two values")
            fd.setMath(self._parse(f"lambda(a, b, (a + b {sign} abs(a - b))/2)"))
            self.ids.add(name)

    def _parse(self, formula: str):
        ast = self.libsbml.parseL3Formula(formula)
        if ast is None:  # pragma: no cover - formulas are generated here
            raise RuntimeError(f"cannot parse {formula!r}: {self.libsbml.getLastParseL3Error()}")
        self._unit_literals(ast)
        return ast

    def _unit_literals(self, node) -> None:
        """Numbers written without a unit are dimensionless (SBML L3 ``sbml:units``)."""
        if node.isNumber() and not node.hasUnits():
            node.setUnits("dimensionless")
        for k in range(node.getNumChildren()):
            self._unit_literals(node.getChild(k))

    def _new_id(self, i: str) -> None:
        if i in self.ids:
            raise RuntimeError(f"duplicate SBML id {i!r}")  # pragma: no cover
        self.ids.add(i)

    def param(self, i: str, value: float, units: str = "dimensionless", name: str | None = None,
              constant: bool = True) -> None:
        self._new_id(i)
        p = self.model.createParameter()
        p.setId(i)
        p.setName(name or _RULE_NAMES.get(i, i))
        p.setValue(float(value))
        p.setConstant(constant)
        p.setUnits(units)

    def rules(self, table: list[tuple[str, str, str]], initial: dict[str, float],
              units: dict[str, str] | None = None, names: dict[str, str] | None = None) -> None:
        units = {**_RULE_UNITS, **(units or {})}
        names = names or {}
        for kind, i, f in table:
            u, n = units.get(i, "dimensionless"), names.get(i)
            if kind == "=":
                self.param(i, 0.0, constant=False, units=u, name=n)
                r = self.model.createAssignmentRule()
            else:
                self.param(i, initial.get(i, 0.0), constant=False, units=u, name=n)
                r = self.model.createRateRule()
            r.setVariable(i)
            r.setMath(self._parse(f))

    def event(self, i: str, t_h: float, target: str, formula: str, name: str = "") -> None:
        self._new_id(i)
        e = self.model.createEvent()
        e.setId(i)
        if name:
            e.setName(name)
        e.setUseValuesFromTriggerTime(True)
        tr = e.createTrigger()
        tr.setInitialValue(False)
        tr.setPersistent(True)
        tr.setMath(self._parse(f"time >= {t_h!r} hour"))
        a = e.createEventAssignment()
        a.setVariable(target)
        a.setMath(self._parse(formula))

    def notes(self, text: str) -> None:
        self.model.setNotes(f'<body xmlns="http://www.w3.org/1999/xhtml"><pre>'
                            f"{html.escape(text)}</pre></body>")

    def write(self) -> str:
        return self.libsbml.writeSBMLToString(self.doc)


def _state_unit(s: PKSystem, i: int) -> str:
    """PK state ``i``: an amount (mg) or an effect-site concentration (mg/L)."""
    return "mg_per_L" if i in s.effect.values() else "mg"


def _k_unit(s: PKSystem, i: int, j: int) -> str:
    """Units of ``K[i, j]``: (unit of state i)/(unit of state j)/h."""
    return {("mg", "mg"): "per_hour", ("mg_per_L", "mg_per_L"): "per_hour",
            ("mg_per_L", "mg"): "per_L_per_hour",
            ("mg", "mg_per_L"): "L_per_hour"}[(_state_unit(s, i), _state_unit(s, j))]


def _patient_param(s: PKSystem, i: str) -> tuple[str, str]:
    """(unit id, name) of a patient-specific parameter."""
    if i.startswith("K__"):
        to, frm = i[3:].split("__")
        return (_k_unit(s, s.states.index(to), s.states.index(frm)),
                f"PK rate constant into {to} from {frm}")
    if i.startswith("V_"):
        return "litre", f"plasma volume of {i[2:]}"
    if i.startswith("dose"):
        return "mg", f"bolus amount of dose {i[4:-4]}"
    if i.startswith("inf"):
        return "mg_per_hour", f"zero-order input rate {i[3:-5]}"
    return "dimensionless", _RULE_NAMES.get(i, i)


def build_model(setup: CourseSetup, seed: int | None = None,
                source: dict | None = None) -> ExportedModel:
    """The SBML document of one patient's course (see the module docstring)."""
    s, mp = setup.system, setup.mech
    pvals = patient_parameters(setup)
    b = _Builder("ketasim_" + "".join(ch if ch.isalnum() else "_" for ch in setup.arm.name),
                 f"ketasim {setup.arm.name} ({s.card.id}), typical patient")
    # --- PK: dx/dt = K x + u, doses as events
    for i, v in pvals.items():
        b.param(i, v, *_patient_param(s, i))
    inputs: dict[int, list[str]] = {}
    for k, (t0, t1, si, _) in enumerate(setup.schedule.infusions):
        # a switch set (not incremented) by events: idempotent, so a re-fired event or a
        # simulator reset cannot leave a stale rate behind
        b.param(f"inf{k}_on", 0.0, constant=False, name=f"zero-order input {k} on (1) or off (0)")
        b.event(f"inf{k}_start", t0, f"inf{k}_on", "1", f"start of zero-order input {k}")
        b.event(f"inf{k}_stop", t1, f"inf{k}_on", "0", f"end of zero-order input {k}")
        inputs.setdefault(si, []).append(f"inf{k}_on*inf{k}_rate")
    for si, st in enumerate(s.states):
        terms = [f"{_k_id(s, si, j)}*{_x(s.states[j])}" for j in np.nonzero(s.K[0][si])[0]]
        if si in inputs:
            b.rules([("=", f"u_{st}", " + ".join(inputs[si]))], {}, {f"u_{st}": "mg_per_hour"},
                    {f"u_{st}": f"zero-order input into {st}"})
            terms.append(f"u_{st}")
        su = _state_unit(s, si)
        b.rules([("d/dt", _x(st), " + ".join(terms) or f"0 per_hour*{_x(st)}")], {}, {_x(st): su},
                {_x(st): f"PK state {st} ({'mg/L' if su == 'mg_per_L' else 'mg'})"})
    for k, (t, si, _) in enumerate(setup.schedule.boluses):
        b.event(f"dose{k}", t, _x(s.states[si]), f"{_x(s.states[si])} + dose{k}_amt",
                f"bolus {k} into {s.states[si]}")
    plasma = {}
    for sp, (pi, _) in s.plasma.items():
        plasma[sp] = f"plasma_{sp}"
        # 1000 thousandth: mg/L -> ng/mL
        b.rules([("=", f"plasma_{sp}",
                  f"kmax({_x(s.states[pi])}/V_{sp}*1000 thousandth, 0 ng_per_mL)")], {},
                {f"plasma_{sp}": "ng_per_mL"}, {f"plasma_{sp}": f"plasma {sp} (ng/mL)"})
    # --- free brain µM per blocker (engine._free_map: fu·1000/M × Ce, or /V × plasma amount)
    brain = load_param_card("brain")
    terms: dict[str, list[str]] = {}
    for sp, (pi, _) in s.plasma.items():
        if sp not in SPECIES_BLOCKER:
            continue
        blk, fu_name, drug = SPECIES_BLOCKER[sp]
        b.param(f"fu_{sp}", brain.value(fu_name), *_card_param("brain", fu_name))
        b.param(f"mw_{sp}", load_drug(drug).constant("molar_mass"), units="g_per_mol",
                name=f"molar mass of {drug} [{drug} card, g/mol]")
        # 1000 thousandth: (mg/L)/(g/mol) = mM -> µM
        if sp in s.effect:
            terms.setdefault(blk, []).append(f"fu_{sp}*1000 thousandth/mw_{sp}"
                                             f"*kmax({_x(s.states[s.effect[sp]])}, 0 mg_per_L)")
        else:
            terms.setdefault(blk, []).append(
                f"fu_{sp}*1000 thousandth/mw_{sp}/V_{sp}*kmax({_x(s.states[pi])}, 0 mg)")
    if tuple(terms) != mp.blockers:  # pragma: no cover - same construction as _free_map
        raise RuntimeError("free-brain map differs from the engine's")
    for blk, ts in terms.items():
        b.rules([("=", f"C_{blk}", " + ".join(ts))], {}, {f"C_{blk}": "uM"},
                {f"C_{blk}": f"free brain {blk} (µM)"})
    # --- mechanism constants and rules
    for name, v in zip(_PACK, mp.packed(), strict=True):
        if name != "hnk_index":
            b.param(name, v, *_mech_param(name))
    kd0, kesc, mgf = mp.blocker_arrays()
    for j, blk in enumerate(mp.blockers):
        b.param(f"Kd0_{blk}", kd0[j], units="uM", name=f"pore Kd of {blk} [receptor card, µM]")
        b.param(f"kesc_{blk}", kesc[j], units="per_hour",
                name=f"trapped-block escape rate of {blk} [receptor card, 1/h]")
        for pi_, pop in enumerate(POPULATIONS):
            b.param(f"mgf_{pop}_{blk}", mgf[pi_, j],
                    name=f"Mg2+ factor, {pop} and {blk} [receptor card]")
    y0 = mp.baseline()
    nb = len(mp.blockers)
    init = {f"bH_{blk}": float(y0[j]) for j, blk in enumerate(mp.blockers)}
    init.update({_y(n): float(y0[nb + k]) for k, n in enumerate(STATE_NAMES)})
    b.rules(_mechanism_rules(mp.blockers, "hnk" in mp.blockers), init)
    # --- effect-site concentration of the parent (ng/mL, racemic-equivalent), as mood does
    c = _clinic()
    pot = c["esketamine_potency_factor"] if setup.parent == "esketamine" else 1.0
    fu_k = brain.value("fu_ketamine")
    b.param("ce_factor", load_drug(setup.parent).constant("molar_mass") / fu_k * pot,
            units="g_per_mol")
    b.rules([("=", "effect_site_ng_per_ml", f"C_{setup.parent}*ce_factor")], {},
            {"effect_site_ng_per_ml": "ng_per_mL"})
    # --- mood (noise-free MADRS) from the clinic card
    for k in MOOD_CARD_KEYS:
        b.param(f"c_{k}", c[k], *_card_param("clinic", k))
    b.rules(_mood_rules(), {})
    meta = {
        "ketasim_version": __version__, "arm": setup.arm.model_dump(mode="json"),
        "pk_model": s.card.id, "states": s.states, "blockers": list(mp.blockers),
        "hypotheses": mp.hyp.as_dict(), "interventions": mp.intv.label(),
        "patient": {"weight_kg": setup.patient.weight_kg, "age_years": setup.patient.age_years,
                    "sex": setup.patient.sex, "race": setup.patient.race,
                    "disorder": setup.patient.disorder,
                    "baseline_madrs": setup.patient.baseline_madrs,
                    "eta_emax": setup.patient.eta_emax, "eta_placebo": setup.patient.eta_placebo,
                    "pk_factor_cl": setup.patient.pk_factor_cl,
                    "pk_factor_v": setup.patient.pk_factor_v},
        "seed": seed, "card_hashes": card_versions(),
        "units": "time h; x_* mg (effect sites mg/L); C_* free brain µM; plasma_* ng/mL; "
                 "mechanism states normalised (baseline 1); madrs points (no residual noise)",
        "patient_parameters": sorted(pvals),
        **(source or {}),
    }
    b.notes("ketasim SBML export (research tool, not medical advice)\n"
            + textwrap.fill(SEVERAL_PATIENTS, 90) + "\n\n"
            + json.dumps(meta, indent=1, default=str))
    return ExportedModel(b.write(), pvals, plasma, "madrs",
                         [_x(st) for st in s.states] + list(init) + ["he_fast", "he_slow",
                                                                     "consolidation"], meta)


#: how to run several patients in one loaded model, written into every export's notes (no
#: brace: :func:`read_metadata` takes the JSON from the first one)
SEVERAL_PATIENTS = (
    "Several patients in one loaded model (libRoadRunner): per patient call resetAll(), set "
    "the parameters listed under patient_parameters below (setValue), then reset() and "
    "simulate. The last reset() makes doses due at t = 0 fire again with this patient's "
    "amounts; without it every patient gets the exported patient's first dose. See "
    "docs/guides/sbml.md.")


def export_arm(arm: ArmSpec, patient: Patient, seed: int | None = None,
               hypotheses: Hypotheses | None = None,
               source: dict | None = None) -> ExportedModel:
    """Assemble and export one patient's course of ``arm``.

    Acute interventions whose drug window opens before the first dose are refused: the engine
    then starts integrating before t = 0, the export at t = 0. ``seed`` (recorded in the
    model's metadata) is ``None`` or a whole number ≥ 0, as everywhere else; wrong types raise
    :class:`KetasimError` naming the argument. ``source``: extra metadata recorded with the
    model (the CLI records the scenario's name and SHA-256, ``scenario``/``scenario_hash``)."""
    if not isinstance(arm, ArmSpec):
        raise KetasimError("arm", f"must be an ArmSpec (e.g. pick_arm(scenario, name)), got "
                           f"{type(arm).__name__}")
    if not isinstance(patient, Patient):
        raise KetasimError("patient", f"must be a Patient (e.g. typical_patient(scenario)), "
                           f"got {type(patient).__name__}")
    if seed is not None:
        seed = check_int("seed", seed, 0, MAX_SEED)
    if hypotheses is not None and not isinstance(hypotheses, Hypotheses):
        raise KetasimError("hypotheses", f"must be a Hypotheses (Hypotheses.parse(text)) or "
                           f"None, got {type(hypotheses).__name__}")
    setup = course_setup(arm, patient, hypotheses)
    acute = [n for n in ("rapamycin", "anisomycin", "nbqx") if n in setup.mech.intv]
    start = setup.mech.iv["drug_window_start_h"]
    if acute and start < 0:
        raise KetasimError("interventions", f"{', '.join(acute)} start {-start:g} h before t = 0 "
                           "(before the first dose); the SBML export starts at t = 0",
                           "genetic interventions, spine-blockade, mg=<mM>")
    if source is not None and not isinstance(source, dict):
        raise KetasimError("source", f"must be a dict or None, got {type(source).__name__}")
    return build_model(setup, seed, source)


def pick_arm(scenario: Scenario, name: str | None) -> ArmSpec:
    """The arm called ``name``, or the scenario's first drug arm."""
    if not isinstance(scenario, Scenario):
        raise KetasimError("scenario", f"must be a Scenario, got {type(scenario).__name__}")
    if name is not None:
        for a in scenario.arms:
            if a.name == name:
                if a.control is not None:
                    raise KetasimError("arm", f"{name!r} is a control arm; export needs a drug "
                                       "arm", ", ".join(x.name for x in scenario.arms
                                                        if x.control is None))
                return a
        raise KetasimError("arm", f"no arm named {name!r}",
                           ", ".join(a.name for a in scenario.arms))
    for a in scenario.arms:
        if a.control is None:
            return a
    raise KetasimError("scenario", "has no drug arm to export")


def read_metadata(sbml: str) -> dict:
    """The run metadata (ketasim version, card hashes, seed, patient, arm) from an export's
    notes."""
    import re

    import libsbml

    model = libsbml.readSBMLFromString(sbml).getModel()
    m = re.search(r"<pre>(.*)</pre>", model.getNotesString() if model else "", re.S)
    if not m:
        raise KetasimError("sbml", "no ketasim metadata in the model notes")
    text = html.unescape(m.group(1))
    return json.loads(text[text.index("{"):])


def validate(sbml: str, warnings: bool = False) -> list[str]:
    """libsbml consistency check with every check category on (units and modelling practice
    included); the messages of errors (and fatal errors), and with ``warnings=True`` of
    warnings too, each prefixed by its category. Empty if valid."""
    import libsbml

    doc = libsbml.readSBMLFromString(sbml)
    for cat in (libsbml.LIBSBML_CAT_GENERAL_CONSISTENCY, libsbml.LIBSBML_CAT_IDENTIFIER_CONSISTENCY,
                libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, libsbml.LIBSBML_CAT_MATHML_CONSISTENCY,
                libsbml.LIBSBML_CAT_SBO_CONSISTENCY, libsbml.LIBSBML_CAT_OVERDETERMINED_MODEL,
                libsbml.LIBSBML_CAT_MODELING_PRACTICE):
        doc.setConsistencyChecks(cat, True)
    doc.checkConsistency()
    out = []
    floor = libsbml.LIBSBML_SEV_WARNING if warnings else libsbml.LIBSBML_SEV_ERROR
    for i in range(doc.getNumErrors()):
        e = doc.getError(i)
        if e.getSeverity() >= floor:
            out.append(f"{e.getSeverityAsString()} ({e.getCategoryAsString()}): "
                       + e.getMessage().strip())
    return out
