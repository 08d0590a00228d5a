"""Calibration of the mechanism's free constants against the timing targets and experiments.

Targets (rodent_timecourses.yaml and the mechanism dossier; issue 3 acceptance), checked for
the human 0.5 mg/kg over 40 min and the mouse 10 mg/kg i.p. courses; :data:`TIMING_BASIS` says
which rest on a READ time course and which are the project's assumptions (UNCONFIRMED times in
the calibration folder are not data; every human-course timing is rodent timing carried over):

* p-eEF2 falls within 1 h and recovers by 8–24 h;
* mTORC1 activity peaks within 0.5–2 h and is back near baseline (< 25% of the peak rise) by 4 h;
* synaptic proteins are up from about 2 h and still up at 72 h;
* new spines appear at 12–24 h, not at 3–6 h, and stay up ≥ 7 d, falling by 14 d;
* LHb block outlasts the drug in the mouse (still ≥ θ_H at 12 h);

and the experiment criteria (rapamycin, anisomycin, NBQX, BDNF knockout remove ≥ 70% at 24 h,
the knockout on its compensated-genotype readouts;
GluN2B deletion mimics (50–200% of ketamine's effect) and occludes (ketamine adds ≤ 25%);
spine blockade keeps ≥ 60% at 2–6 h and
removes ≥ 70% at 3–7 d; memantine ≤ 25% of ketamine at 24 h; glutamate inverted U in rat).

``ketasim calibrate mechanism`` prints every target with its value and whether it is met, and
with ``--fit`` searches the calibrated constants (Nelder–Mead on a hinge penalty, log scale)
and prints the values to write into the cards.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .engine import Course, simulate
from .mechanism import Hypotheses
from .pk import Covariates
from .regimen import Regimen

T = np.array([0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 18.0, 24.0,
              48.0, 72.0, 120.0, 168.0, 240.0, 336.0])
MOUSE = Covariates(weight_kg=0.03, age_years=0.25, species="mouse")


def _courses(species: str):
    if species == "mouse":
        return [Course("ketamine", Regimen.build("ip", "10 mg/kg"))], MOUSE
    return [Course("ketamine", Regimen.build("iv-infusion", "0.5 mg/kg", "40 min"))], Covariates()


def _rise(res, name):
    return res.readouts[name] - 1.0


def timing_values(hyp: Hypotheses | None = None, overrides: dict | None = None) -> dict:
    """Named timing quantities for human and mouse (see module docstring)."""
    out = {}
    for sp in ("human", "mouse"):
        courses, cov = _courses(sp)
        res = simulate(courses, T, cov, hypotheses=hyp, overrides=overrides)
        pe = _rise(res, "p_eef2")
        imin = int(np.argmin(pe))
        drop = -pe[imin]
        at = {float(t): i for i, t in enumerate(T)}
        out[f"{sp}.p_eef2_min_time_h"] = float(T[imin])
        out[f"{sp}.p_eef2_drop"] = float(drop)
        out[f"{sp}.p_eef2_left_at_24h"] = float(abs(pe[at[24.0]]) / drop) if drop > 0 else 1.0
        m = _rise(res, "mtorc1")
        imax = int(np.argmax(m))
        out[f"{sp}.mtorc1_peak_time_h"] = float(T[imax])
        out[f"{sp}.mtorc1_left_at_4h"] = float(m[at[4.0]] / m[imax]) if m[imax] > 0 else 1.0
        p = _rise(res, "synaptic_proteins")
        pk = max(p.max(), 1e-12)
        out[f"{sp}.proteins_at_2h"] = float(p[at[2.0]] / pk)
        out[f"{sp}.proteins_at_72h"] = float(p[at[72.0]] / pk)
        s = _rise(res, "spine_density")
        spk = max(s.max(), 1e-12)
        out[f"{sp}.spines_at_6h"] = float(s[at[6.0]] / spk)
        out[f"{sp}.spines_at_24h"] = float(s[at[24.0]] / spk)
        out[f"{sp}.spines_at_7d"] = float(s[at[168.0]] / spk)
        out[f"{sp}.spines_at_14d"] = float(s[at[336.0]] / spk)
        out[f"{sp}.spine_rise"] = float(s.max())
        if sp == "mouse":
            out["mouse.lhb_block_at_12h"] = float(res.readouts["block_H"][at[12.0]])
    return out


def timing_checks(v: dict) -> dict[str, bool]:
    """Pass/fail of each timing target from :func:`timing_values`."""
    c = {}
    for sp in ("human", "mouse"):
        c[f"{sp}: p-eEF2 falls within 1 h"] = (v[f"{sp}.p_eef2_min_time_h"] <= 1.0
                                               and v[f"{sp}.p_eef2_drop"] > 0.001)
        c[f"{sp}: p-eEF2 recovered by 24 h"] = v[f"{sp}.p_eef2_left_at_24h"] < 0.1
        c[f"{sp}: mTORC1 peaks at 0.5-2 h"] = 0.5 <= v[f"{sp}.mtorc1_peak_time_h"] <= 2.0
        c[f"{sp}: mTORC1 near baseline by 4 h"] = v[f"{sp}.mtorc1_left_at_4h"] < 0.25
        c[f"{sp}: synaptic proteins up from ~2 h"] = v[f"{sp}.proteins_at_2h"] > 0.1
        c[f"{sp}: synaptic proteins still up at 72 h"] = v[f"{sp}.proteins_at_72h"] > 0.2
        c[f"{sp}: no new spines at 3-6 h"] = v[f"{sp}.spines_at_6h"] < 0.1
        c[f"{sp}: new spines at 12-24 h"] = v[f"{sp}.spines_at_24h"] > 0.25
        c[f"{sp}: spines up at 7 d"] = v[f"{sp}.spines_at_7d"] > 0.3
        c[f"{sp}: spines falling by 14 d"] = v[f"{sp}.spines_at_14d"] < v[f"{sp}.spines_at_7d"]
    c["mouse: LHb block outlasts the drug (12 h)"] = v["mouse.lhb_block_at_12h"] > 0.2
    return c


#: what each rodent timing target rests on: data (a READ time course in
#: shared/literature/calibration/pd/rodent_timecourses.yaml) or the project's assumption (the
#: literature's time is UNCONFIRMED there, or the target is a modelling choice). Every human-course
#: target is an assumption: rodent timing carried over to the human course.
TIMING_BASIS = {
    "p-eEF2 falls within 1 h": "assumed: Autry 2011's 30-min timing is UNCONFIRMED",
    "p-eEF2 recovered by 24 h": "data: Gideons 2014 (READ-2°), gone by 24 h",
    "mTORC1 peaks at 0.5-2 h": "assumed: Li 2010 READ only 'rapidly activated'; its times are "
                               "UNCONFIRMED",
    "mTORC1 near baseline by 4 h": "assumed: a transient kinase response; Li 2010's 'baseline by "
                                   "~2 h' is UNCONFIRMED",
    "synaptic proteins up from ~2 h": "assumed: Li 2010's times are UNCONFIRMED",
    "synaptic proteins still up at 72 h": "assumed: Li 2010's times are UNCONFIRMED",
    "no new spines at 3-6 h": "data: Moda-Sava 2019 (READ / READ-2°)",
    "new spines at 12-24 h": "data: Moda-Sava 2019 (READ / READ-2°)",
    "spines up at 7 d": "data: Phoumthipphavong 2016 (READ), elevated up to 2 weeks",
    "spines falling by 14 d": "assumed: a modelling choice (spines return toward baseline)",
    "LHb block outlasts the drug (12 h)": "data: Ma 2023 (READ), block up to 24 h",
}


def timing_basis(target: str) -> str:
    """``data: …`` or ``assumed: …`` for a target name of :func:`timing_checks`."""
    sp, _, name = target.partition(": ")
    base = TIMING_BASIS.get(name, "assumed: no data entry")
    if sp == "human":
        return "assumed: rodent timing carried over to the human course (" + base + ")"
    return base


def timing_scores(hyp: Hypotheses | None = None) -> dict[str, bool]:
    """Which mechanism timing targets (rodent and human) are met: ``{target: bool}``."""
    return timing_checks(timing_values(hyp))


def experiment_checks() -> dict[str, tuple[float, bool]]:
    """Acceptance criteria of the named experiments: name → (value, met)."""
    from .experiments import effect_removed, run_experiment

    out: dict[str, tuple[float, bool]] = {}
    for name in ("rapamycin", "anisomycin", "nbqx", "bdnf-knockout"):
        res = run_experiment(name)
        # the knockout is judged on its compensated-genotype readouts: without compensation
        # its drug-free immobility sits at the 300-s ceiling, so "no ketamine effect" would
        # hold by the end of the scale alone (docs/limitations.md)
        used = (("synaptic_strength_within_genotype", "fst_immobility_compensated")
                if name.endswith("knockout") else ("synaptic_strength", "fst_immobility"))
        for r in res["readouts"]:
            if r["readout"] in used:
                f = effect_removed(r["arms"])
                out[f"{name}: removes ≥70% of {r['readout']} effect at 24 h"] = (f, f >= 0.7)
    res = run_experiment("glun2b-deletion")
    for r in res["readouts"]:
        if r["readout"] in ("synaptic_strength", "fst_immobility"):
            a = r["arms"]
            k = a["ketamine"] - a["vehicle"]
            mimic = (a["intervention"] - a["vehicle"]) / k
            added = (a["intervention+ketamine"] - a["intervention"]) / k
            # "mimics": an effect of ketamine's size (50–200% of it), not merely "at least"
            out[f"glun2b-deletion: mimics 50–200% ({r['readout']})"] = (
                mimic, 0.5 <= mimic <= 2.0)
            out[f"glun2b-deletion: ketamine adds ≤25% ({r['readout']})"] = (added, added <= 0.25)
    res = run_experiment("spine-blockade")
    for r in res["readouts"]:
        if r["readout"] not in ("fst_immobility", "synaptic_strength"):
            continue
        f = effect_removed(r["arms"])
        if r["time_h"] <= 6.0:
            out[f"spine-blockade: keeps ≥60% at {r['time_h']:g} h ({r['readout']})"] = (
                1 - f, 1 - f >= 0.6)
        else:
            out[f"spine-blockade: removes ≥70% at {r['time_h']:g} h ({r['readout']})"] = (
                f, f >= 0.7)
    res = run_experiment("memantine-vs-ketamine")
    for r in res["readouts"]:
        if r["time_h"] == 24.0 and r["readout"] in ("synaptic_strength", "spine_density"):
            a = r["arms"]
            ratio = (a["memantine"] - a["vehicle"]) / (a["ketamine"] - a["vehicle"])
            out[f"memantine ≤25% of ketamine at 24 h ({r['readout']})"] = (ratio, ratio <= 0.25)
    arms = run_experiment("dose-response")["readouts"][0]["arms"]
    up = min(arms["10 mg/kg"], arms["20 mg/kg"], arms["30 mg/kg"])
    out["glutamate rises at 10-30 mg/kg (min %)"] = (up, up > 10.0)
    out["glutamate unchanged at 50 mg/kg (%)"] = (arms["50 mg/kg"], abs(arms["50 mg/kg"]) < 10)
    out["glutamate falls at 200 mg/kg (%)"] = (arms["200 mg/kg"], arms["200 mg/kg"] < -10.0)
    return out


def open_checks() -> dict[str, tuple[float, bool]]:
    """Published findings the model is checked against but NOT fitted to (no constant is
    searched to meet them), reported beside the targets so a known discrepancy stays visible:
    name → (value, met). Today: eEF2K-knockout mice are resistant to ketamine (Adaikkan 2018,
    doi:10.1016/j.biopsych.2017.11.028), judged on the compensated-genotype readouts; the
    model's knockout keeps most of the effect through the branches that bypass eEF2K
    (docs/limitations.md)."""
    from .experiments import effect_removed, run_experiment

    out: dict[str, tuple[float, bool]] = {}
    for r in run_experiment("eef2k-knockout")["readouts"]:
        if r["readout"] in ("synaptic_strength_within_genotype", "fst_immobility_compensated"):
            f = effect_removed(r["arms"])
            out[f"eef2k-knockout: removes ≥70% of {r['readout']} effect at "
                f"{r['time_h']:g} h (Adaikkan 2018)"] = (f, f >= 0.7)
    return out


def report() -> dict:
    """All targets with values and pass/fail, for ``ketasim calibrate mechanism``; the
    :func:`open_checks` come separately (``open_checks``) and are not counted in ``met`` /
    ``total``."""
    v = timing_values()
    timing = timing_checks(v)
    exp = experiment_checks()
    return {"timing": {k: bool(x) for k, x in timing.items()},
            "timing_basis": {k: timing_basis(k) for k in timing},
            "timing_values": v,
            "experiments": {k: {"value": float(val), "met": bool(ok)}
                            for k, (val, ok) in exp.items()},
            "met": sum(timing.values()) + sum(ok for _, ok in exp.values()),
            "total": len(timing) + len(exp),
            "open_checks": {k: {"value": float(val), "met": bool(ok)}
                            for k, (val, ok) in open_checks().items()}}


#: constants searched by ``--fit``: tagged ``calibrated`` on their cards, or ``assumed`` where
#: the targets that set them are all the project's assumptions (:data:`TIMING_BASIS`)
FIT_PARAMETERS = ("tau_K", "k_PP", "g_b", "g_dis", "zeta", "k_BDNF", "k_Moff", "h_M", "tau_P",
                  "k_P", "tau_mat", "beta", "tau_S", "theta_H", "tau_Z", "kappa_Z", "tau_Q",
                  "kesc_lhb_factor", "Po_H_rest", "mgc_memantine")


def _margins(overrides: dict) -> np.ndarray:
    """Signed margins of every target (positive = met), scaled to be comparable."""
    import ketasim.experiments as ex

    from . import engine

    orig = engine.simulate

    def sim(*a, **k):
        k.setdefault("overrides", overrides)
        return orig(*a, **k)

    ex.simulate = sim
    try:
        v = timing_values(overrides=overrides)
        m = []
        for sp in ("human", "mouse"):
            m += [1.0 - v[f"{sp}.p_eef2_min_time_h"], v[f"{sp}.p_eef2_drop"] * 100 - 0.1,
                  0.1 - v[f"{sp}.p_eef2_left_at_24h"],
                  v[f"{sp}.mtorc1_peak_time_h"] - 0.5, 2.0 - v[f"{sp}.mtorc1_peak_time_h"],
                  0.25 - v[f"{sp}.mtorc1_left_at_4h"], v[f"{sp}.proteins_at_2h"] - 0.1,
                  v[f"{sp}.proteins_at_72h"] - 0.2, 0.1 - v[f"{sp}.spines_at_6h"],
                  v[f"{sp}.spines_at_24h"] - 0.25, v[f"{sp}.spines_at_7d"] - 0.3,
                  v[f"{sp}.spines_at_7d"] - v[f"{sp}.spines_at_14d"]]
        m.append(v["mouse.lhb_block_at_12h"] - 0.2)
        for k, (val, _ok) in experiment_checks().items():
            if "removes" in k:
                m.append(val - 0.7)
            elif "keeps" in k:
                m.append(val - 0.6)
            elif "mimics" in k:
                m.append(min(val - 0.5, 2.0 - val))
            elif "adds" in k or "memantine" in k:
                m.append(0.25 - val)
            elif "rises" in k:
                m.append((val - 10.0) / 100.0)
            elif "unchanged" in k:
                m.append((10.0 - abs(val)) / 100.0)
            elif "falls" in k:
                m.append((-10.0 - val) / 100.0)
        return np.asarray(m, dtype=float)
    finally:
        ex.simulate = orig


def fit(max_evaluations: int = 200, margin: float = 0.02,
        progress: Callable[[int, int], None] | None = None) -> dict:
    """Nelder–Mead on log-parameters minimising Σ max(0, margin − m_i)² over all targets.
    ``progress(done, max_evaluations)``: optional, after each evaluation of the search.

    Starts from the card values; returns the best values, the penalty and the margins. The
    cards are not edited: write the printed values into ``cards/mechanism/*.yaml`` (tag
    ``calibrated``) and rerun ``ketasim calibrate mechanism --write`` to record the residuals.
    """
    from scipy.optimize import minimize

    from .cards import load_param_card

    start = {}
    for name in FIT_PARAMETERS:
        for card in ("signalling", "receptor"):
            c = load_param_card(card)
            if name in c.parameters:
                start[name] = c.value(name)
    names = list(start)
    x0 = np.log(np.array([start[n] for n in names]))

    n_eval = [0]

    def counted(x):
        v = penalty(x)
        n_eval[0] += 1
        if progress is not None:
            progress(min(n_eval[0], max_evaluations), max_evaluations)
        return v

    def penalty(x):
        ov = dict(zip(names, np.exp(x), strict=True))
        if ov.get("kappa_Z", 0.5) >= 1.0 or ov.get("theta_H", 0.2) >= 1.0:
            return 1e3
        m = _margins(ov)
        return float(np.sum(np.maximum(0.0, margin - m) ** 2))

    p0 = penalty(x0)
    res = minimize(counted, x0, method="Nelder-Mead",
                   options={"maxfev": max_evaluations, "xatol": 1e-3, "fatol": 1e-10})
    best = dict(zip(names, np.exp(res.x).tolist(), strict=True))
    return {"start": start, "best": best, "penalty_start": p0, "penalty_best": float(res.fun),
            "evaluations": int(res.nfev), "margins": _margins(best).tolist()}
