"""Calibration of the clinical layer to ``shared/literature/calibration/clinical`` only.

Designs (arms, doses, visits) follow the calibration files; the targets are their published
numbers or findings:

* Murrough 2013a (TRD, ketamine 0.5 mg/kg vs midazolam, 2:1): response at 24 h 64% vs 28%,
  MADRS difference at 24 h −7.95 (−12.71 to −3.20);
* Kishimoto 2016 (single IV vs control): separation from 40 min, peak on day 1, gone by days
  10–12;
* Fava 2020 (0.1/0.2/0.5/1.0 mg/kg vs midazolam): day-1 effect ordered 0.1 ≤ 0.2 < 0.5 ≈ 1.0;
* Murrough 2013b (six infusions over 12 days): response 70.8% at the end of the series,
  median time to relapse 18 days after the last infusion;
* Diazgranados 2010 (bipolar, saline): d 0.52 at 40 min, 0.80 on day 2, significant through
  day 3, not on days 7–14;
* TRANSFORM-2 (esketamine 56/84 mg twice weekly + new oral antidepressant, 28 days): MADRS
  difference −4 ± 2.5 at day 28;
* Wilkinson 2018 (suicidal ideation, single IV): d 0.48–0.85 on suicide items through day 7.

Further terms of the fit's loss (not separate pass/fail targets): Daly 2018 (intranasal
esketamine 84 mg vs placebo spray) placebo MADRS change −9.7 at 2 h, −5.7 at 24 h and −4.9 at
day 8 and esketamine −17.6 at 2 h; the Cochrane 2021 pooled saline response at 24 h (8.8%);
Murrough 2013b change −18.9 at 2 h after the first infusion; Price 2014 (the Murrough 2013a
sample) within-group d of SSI and MADRS item 10 at 24 h.

The drug-dependent mechanism components are simulated once per patient and cached; score
parameters are then evaluated cheaply (:func:`evaluate`).
"""

from __future__ import annotations

import functools

import numpy as np

from .cards import load_param_card
from .mood import _grid, arm_regimen, mechanism_components, scores_batch
from .population import sample_arm
from .scenario import parse_scenario
from .units import parse_duration

N_PER_ARM = 400

DESIGNS = {
    "murrough2013a": {"population": {"disorder": "trd", "n": 3 * N_PER_ARM, "seed": 11},
                      "arm": [{"name": "ketamine", "drug": "ketamine", "route": "iv-infusion",
                               "dose": "0.5 mg/kg", "duration": "40 min", "ratio": 2},
                              {"name": "midazolam", "control": "active-placebo"}],
                      "endpoints": {"at": ["24 h", "7 d"]}},
    "kishimoto": {"population": {"disorder": "mdd", "n": 2 * N_PER_ARM, "seed": 12},
                  "arm": [{"name": "ketamine", "drug": "ketamine", "route": "iv-infusion",
                           "dose": "0.5 mg/kg", "duration": "40 min"},
                          {"name": "saline", "control": "saline"}],
                  "endpoints": {"at": ["40 min", "80 min", "4 h", "1 d", "3 d", "7 d", "10 d",
                                       "14 d"]}},
    "fava2020": {"population": {"disorder": "trd", "n": 5 * N_PER_ARM, "seed": 13,
                                "comedication": ["oral-antidepressant"]},
                 "arm": [{"name": f"k{d}", "drug": "ketamine", "route": "iv-infusion",
                          "dose": f"{d} mg/kg", "duration": "40 min"}
                         for d in ("0.1", "0.2", "0.5", "1.0")]
                 + [{"name": "midazolam", "control": "active-placebo"}],
                 "endpoints": {"scale": "hamd6", "at": ["1 d", "3 d", "7 d"]}},
    "murrough2013b": {"population": {"disorder": "trd", "n": N_PER_ARM, "seed": 14},
                      "arm": [{"name": "ketamine", "drug": "ketamine", "route": "iv-infusion",
                               "dose": "0.5 mg/kg", "duration": "40 min",
                               "schedule": ["0 d", "2 d", "5 d", "7 d", "9 d", "11 d"]}],
                      "endpoints": {"at": ["2 h", "12 d"] + [f"{d} d" for d in range(14, 96, 2)]}},
    "diazgranados2010": {"population": {"disorder": "bipolar", "n": 2 * N_PER_ARM, "seed": 15,
                                        "comedication": ["lithium"]},
                         "arm": [{"name": "ketamine", "drug": "ketamine", "route": "iv-infusion",
                                  "dose": "0.5 mg/kg", "duration": "40 min"},
                                 {"name": "saline", "control": "saline"}],
                         "endpoints": {"at": ["40 min", "1 d", "2 d", "3 d", "7 d", "14 d"]}},
    "transform2": {"population": {"disorder": "trd", "n": 2 * N_PER_ARM, "seed": 16},
                   "arm": [{"name": "esketamine", "drug": "esketamine", "route": "intranasal",
                            "dose": ["56 mg"] + ["84 mg"] * 7,
                            "schedule": ["0 d", "3 d", "7 d", "10 d", "14 d", "17 d", "21 d",
                                         "24 d"], "background": "oral-antidepressant"},
                           {"name": "placebo", "control": "saline",
                            "background": "oral-antidepressant"}],
                   "endpoints": {"at": ["1 d", "28 d"]}},
    "daly2018": {"population": {"disorder": "trd", "n": 2 * N_PER_ARM, "seed": 17,
                                "baseline_madrs_mean": 34.1, "baseline_madrs_sd": 5.0},
                 "arm": [{"name": "placebo", "control": "saline"},
                         {"name": "esk84", "drug": "esketamine", "route": "intranasal",
                          "dose": "84 mg", "schedule": ["0 d", "3 d"]}],
                 "endpoints": {"at": ["2 h", "24 h", "7 d"]}},
}


@functools.cache
def _cached(design: str):
    """Per arm: (arm, patients, grid, visits, components per patient)."""
    sc = parse_scenario(DESIGNS[design])
    visits = np.array([parse_duration(v, allow_zero=True) for v in sc.endpoints.at])
    total = sum(a.ratio for a in sc.arms)
    out = []
    for ai, arm in enumerate(sc.arms):
        n = int(round(sc.population.n * arm.ratio / total))
        pts = sample_arm(sc.population, ai, n, len(visits))
        t = _grid(visits, arm_regimen(arm))
        comps = [mechanism_components(arm, p, t) for p in pts]
        stacked = {k: np.array([cp[k] for cp in comps]) for k in comps[0]}
        out.append((arm, pts, t, visits, stacked))
    return sc, out


_LAST: dict = {}


def _batch(design: str, c: dict) -> list[dict]:
    """Every arm's scores for constants ``c`` (the last constants' results are kept, so the
    several scales a loss evaluation reads cost one score computation per design)."""
    key = (design, tuple(sorted(c.items())))
    if key not in _LAST:
        if len(_LAST) > 32:
            _LAST.clear()
        _LAST[key] = [scores_batch(arm, pts, t, visits, comps, c)
                      for arm, pts, t, visits, comps in _cached(design)[1]]
    return _LAST[key]


def _scores(design: str, c: dict, key: str = "madrs"):
    sc, arms = _cached(design)
    res = {}
    for (arm, pts, _t, visits, _comps), all_scores in zip(arms, _batch(design, c),
                                                          strict=True):
        score = all_scores[key]
        base = np.array([p.baseline_madrs for p in pts])
        if key == "hamd6":
            base = base * c["hamd6_per_madrs"]
        if key in ("madrs_item10", "ssi"):
            base = np.full(len(pts), c["item10_baseline" if key == "madrs_item10" else
                                      "ssi_baseline"])
        res[arm.name] = (score, base, visits)
    return res


def _d(a, b):
    """Cohen's d of the change (a minus b; negative = a improves more)."""
    s = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    return (a.mean() - b.mean()) / s


def evaluate(c: dict | None = None) -> dict:
    """Model values for every clinical target, with pass/fail."""
    c = c or {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    out: dict[str, tuple[float, bool]] = {}
    r = _scores("murrough2013a", c)
    (sk, bk, _), (sm, bm, _) = r["ketamine"], r["midazolam"]
    rk = np.mean(sk[:, 0] <= 0.5 * bk)
    rm = np.mean(sm[:, 0] <= 0.5 * bm)
    diff = (sk[:, 0] - bk).mean() - (sm[:, 0] - bm).mean()
    out["murrough2013a response 24 h ketamine (0.64 ± 0.10)"] = (rk, abs(rk - 0.64) <= 0.10)
    out["murrough2013a response 24 h midazolam (0.28 ± 0.10)"] = (rm, abs(rm - 0.28) <= 0.10)
    out["murrough2013a MADRS difference 24 h (−8 ± 3)"] = (diff, abs(diff + 8.0) <= 3.0)
    r = _scores("kishimoto", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dif = np.array([(sk[:, i] - bk).mean() - (ss[:, i] - bs).mean() for i in range(len(v))])
    dd = np.array([_d(sk[:, i] - bk, ss[:, i] - bs) for i in range(len(v))])
    out["kishimoto separation by 40 min–4 h (d ≤ −0.3 at 4 h)"] = (dd[2], dd[2] <= -0.3)
    out["kishimoto largest at ~24 h (visit of max |difference| is 1 d)"] = (
        float(v[int(np.argmin(dif))] / 24.0), 0.5 <= v[int(np.argmin(dif))] / 24.0 <= 1.5 or
        abs(dif[3]) >= 0.9 * abs(dif.min()))
    out["kishimoto mostly gone by day 10–14 (|diff 10 d| ≤ 35% of day 1)"] = (
        abs(dif[6]) / abs(dif[3]), abs(dif[6]) <= 0.35 * abs(dif[3]))
    r = _scores("fava2020", c, "hamd6")
    base_chg = (r["midazolam"][0][:, 0] - r["midazolam"][1]).mean()
    eff = {k: (r[k][0][:, 0] - r[k][1]).mean() - base_chg for k in ("k0.1", "k0.2", "k0.5",
                                                                   "k1.0")}
    ok = eff["k0.1"] >= eff["k0.2"] - 0.3 and eff["k0.2"] > eff["k0.5"] and abs(
        eff["k0.5"] - eff["k1.0"]) <= 0.3 * abs(eff["k0.5"])
    out["fava2020 day-1 HAM-D6 effect ordered 0.1 ≤ 0.2 < 0.5 ≈ 1.0"] = (
        eff["k0.5"], bool(ok))
    r = _scores("murrough2013b", c)
    s, b, v = r["ketamine"]
    end = 1  # the 12 d visit (after the sixth infusion on day 11)
    resp_end = s[:, end] <= 0.5 * b
    out["murrough2013b response after six infusions (0.71 ± 0.10)"] = (
        resp_end.mean(), abs(resp_end.mean() - 0.708) <= 0.10)
    times = []
    for i in np.nonzero(resp_end)[0]:
        lost = np.nonzero(s[i, end + 1:] > 0.5 * b[i])[0]
        times.append((v[end + 1 + lost[0]] - 11 * 24.0) / 24.0 if lost.size else np.inf)
    med = float(np.median(times)) if times else float("nan")
    out["murrough2013b median days to relapse after last infusion (10–30)"] = (
        med, 10.0 <= med <= 30.0)
    r = _scores("diazgranados2010", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dd = np.array([_d(sk[:, i] - bk, ss[:, i] - bs) for i in range(len(v))])
    out["diazgranados2010 separation at 40 min (d ≤ −0.3)"] = (dd[0], dd[0] <= -0.3)
    out["diazgranados2010 effect through day 2–3 (d ≤ −0.4 at day 3)"] = (dd[3], dd[3] <= -0.4)
    r = _scores("transform2", c)
    (se, be, _), (sp, bp, _) = r["esketamine"], r["placebo"]
    diff = (se[:, 1] - be).mean() - (sp[:, 1] - bp).mean()
    out["transform2 MADRS difference day 28 (−4 ± 2.5)"] = (diff, abs(diff + 4.0) <= 2.5)
    r = _scores("kishimoto", c, "madrs_item10")
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dd = [-_d(sk[:, i] - bk, ss[:, i] - bs) for i in (3, 4, 5)]
    out["wilkinson2018 suicidality d 0.48–0.85 on days 1–7"] = (
        float(np.mean(dd)), all(0.4 <= x <= 1.0 for x in dd))
    return {k: (float(val), bool(ok)) for k, (val, ok) in out.items()}


def metrics(c: dict) -> dict[str, float]:
    """Continuous quantities behind the targets (for the loss)."""
    m = {}
    r = _scores("murrough2013a", c)
    (sk, bk, _), (sm, bm, _) = r["ketamine"], r["midazolam"]
    m["m13a_rk"] = np.mean(sk[:, 0] <= 0.5 * bk)
    m["m13a_rm"] = np.mean(sm[:, 0] <= 0.5 * bm)
    m["m13a_chg_k"] = (sk[:, 0] - bk).mean()
    m["m13a_chg_m"] = (sm[:, 0] - bm).mean()
    r = _scores("kishimoto", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dif = np.array([(sk[:, i] - bk).mean() - (ss[:, i] - bs).mean() for i in range(len(v))])
    m["kish_d1"] = _d(sk[:, 3] - bk, ss[:, 3] - bs)
    m["kish_peak_excess"] = abs(dif.min()) - abs(dif[3])
    m["kish_ratio10"] = abs(dif[6]) / max(abs(dif[3]), 1e-9)
    m["kish_d4h"] = _d(sk[:, 2] - bk, ss[:, 2] - bs)
    r = _scores("fava2020", c, "hamd6")
    base_chg = (r["midazolam"][0][:, 0] - r["midazolam"][1]).mean()
    for k in ("k0.1", "k0.2", "k0.5", "k1.0"):
        m[f"fava_{k}"] = abs((r[k][0][:, 0] - r[k][1]).mean() - base_chg)
    r = _scores("murrough2013b", c)
    s, b, v = r["ketamine"]
    resp_end = s[:, 1] <= 0.5 * b
    m["m13b_resp"] = resp_end.mean()
    times = []
    for i in np.nonzero(resp_end)[0]:
        lost = np.nonzero(s[i, 2:] > 0.5 * b[i])[0]
        times.append((v[2 + lost[0]] - 11 * 24.0) / 24.0 if lost.size else 90.0)
    m["m13b_relapse_median_d"] = float(np.median(times)) if times else 0.0
    r = _scores("diazgranados2010", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    for i, lab in ((0, "40min"), (2, "2d"), (3, "3d"), (4, "7d")):
        m[f"dz_d_{lab}"] = _d(sk[:, i] - bk, ss[:, i] - bs)
    r = _scores("transform2", c)
    (se, be, _), (sp, bp, _) = r["esketamine"], r["placebo"]
    m["t2_diff28"] = (se[:, 1] - be).mean() - (sp[:, 1] - bp).mean()
    r = _scores("kishimoto", c, "madrs_item10")
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    m["wilk_d"] = float(np.mean([-_d(sk[:, i] - bk, ss[:, i] - bs) for i in (3, 4, 5)]))
    r = _scores("daly2018", c)
    (sp, bp, _), (se, be, _) = r["placebo"], r["esk84"]
    for i, lab in ((0, "2h"), (1, "24h"), (2, "7d")):
        m[f"daly_pl_{lab}"] = (sp[:, i] - bp).mean()
    m["daly_esk_2h"] = (se[:, 0] - be).mean()
    m["saline_resp_24h"] = np.mean(sp[:, 1] <= 0.5 * bp)
    r = _scores("murrough2013b", c)
    s, b, _ = r["ketamine"]
    m["m13b_2h"] = (s[:, 0] - b).mean()
    for key in ("ssi", "madrs_item10"):
        r = _scores("murrough2013a", c, key)
        for arm in ("ketamine", "midazolam"):
            ch = r[arm][0][:, 0] - r[arm][1]
            m[f"price_{key}_{arm}"] = float(-ch.mean() / ch.std(ddof=1))
    return m


def loss(c: dict) -> float:
    """Calibration objective for clinic constants ``c``: sum of squared scaled misses of
    the clinical targets (0 when every target is hit)."""
    m = metrics(c)
    h = lambda x: max(0.0, x)  # noqa: E731
    terms = [
        (m["m13a_rk"] - 0.64) / 0.07, (m["m13a_rm"] - 0.28) / 0.07,
        (m["m13a_chg_k"] - m["m13a_chg_m"] + 7.95) / 2.0,
        (m["m13a_chg_k"] + 16.5) / 3.0, (m["m13a_chg_m"] + 8.8) / 3.0,
        (m["kish_d1"] + 1.0) / 0.25, h(m["kish_peak_excess"]) / 0.5,
        h(m["kish_ratio10"] - 0.3) / 0.05, h(m["kish_d4h"] + 0.3) / 0.1,
        h(m["fava_k0.1"] - m["fava_k0.2"]) / 0.2, h(m["fava_k0.2"] - 0.85 * m["fava_k0.5"]) / 0.2,
        h(abs(m["fava_k0.5"] - m["fava_k1.0"]) - 0.2 * m["fava_k0.5"]) / 0.2,
        (m["m13b_resp"] - 0.708) / 0.07, (m["m13b_relapse_median_d"] - 18.0) / 5.0,
        (m["dz_d_40min"] + 0.52) / 0.2, (m["dz_d_2d"] + 0.80) / 0.2, h(m["dz_d_3d"] + 0.4) / 0.1,
        h(-m["dz_d_7d"] - 0.5) / 0.2,
        (m["t2_diff28"] + 4.0) / 1.5, (m["wilk_d"] - 0.65) / 0.15,
        (m["daly_pl_2h"] + 9.7) / 1.8, (m["daly_pl_24h"] + 5.7) / 1.8,
        (m["daly_pl_7d"] + 4.9) / 1.8, (m["daly_esk_2h"] + 17.6) / 2.6,
        (m["saline_resp_24h"] - 0.088) / 0.04, (m["m13b_2h"] + 18.9) / 2.5,
        (m["price_ssi_ketamine"] - 0.88) / 0.2, (m["price_ssi_midazolam"] - 0.34) / 0.15,
        (m["price_madrs_item10_ketamine"] - 0.72) / 0.2,
        (m["price_madrs_item10_midazolam"] - 0.20) / 0.15,
    ]
    return float(np.sum(np.square(terms)))


BOUNDS = {"placebo_decay_d": (5.0, 40.0), "consolidation_tau_d": (3.0, 60.0),
          "residual_sd": (2.0, 7.0), "k_mood": (0.2, 10.0), "k_mood_slow": (0.01, 2.0),
          "drug_emax_iiv_sd": (0.3, 2.5), "consolidation_gain": (0.0, 2000.0),
          "placebo_iiv_sd": (0.3, 2.5), "bipolar_fast_factor": (1.0, 4.0),
          "placebo_session_tau_h": (1.0, 24.0), "suicidality_residual_sd": (0.1, 2.0),
          "placebo_active_decay_d": (0.5, 40.0)}

FIT = {  # name: transform
    "drug_emax": "logit", "drug_emax_iiv_sd": "log", "drive50": "log", "a_fast": "log",
    "a_proteins": "log", "a_spines": "log", "k_mood": "log", "k_mood_slow": "log",
    "placebo_saline": "logit", "consolidation_gain": "log", "priming_tau_d": "log",
    "esketamine_clinical_factor": "log", "consolidation_tau_d": "log",
    "consolidation_threshold": "logit",
    "placebo_active": "logit", "placebo_iiv_sd": "log", "placebo_decay_d": "log",
    "suicidality_gain": "log", "ad_background_max": "logit", "residual_sd": "log",
    "bipolar_fast_factor": "log", "placebo_session": "logit", "placebo_session_tau_h": "log",
    "suicidality_residual_sd": "log", "placebo_active_decay_d": "log",
}


def fit_clinic(max_evaluations: int = 600, start: dict | None = None) -> dict:
    """Nelder–Mead on transformed parameters minimising :func:`loss`."""
    from scipy.optimize import minimize

    base = {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    base.update(start or {})
    names = list(FIT)

    def to_x(c):
        return np.array([np.log(c[n]) if FIT[n] == "log" else np.log(c[n] / (1 - c[n]))
                         for n in names])

    def to_c(x):
        c = dict(base)
        for n, v in zip(names, x, strict=True):
            c[n] = float(np.exp(v) if FIT[n] == "log" else 1 / (1 + np.exp(-v)))
        return c

    def bounded_loss(c):
        pen = sum(((max(0.0, lo - c[k]) + max(0.0, c[k] - hi)) / (hi - lo)) ** 2 * 1e4
                  for k, (lo, hi) in BOUNDS.items())
        return loss(c) + pen

    x0 = to_x(base)
    l0 = bounded_loss(base)
    res = minimize(lambda x: bounded_loss(to_c(x)), x0, method="Nelder-Mead",
                   options={"maxfev": max_evaluations, "adaptive": True})
    best = to_c(res.x)
    return {"loss_start": l0, "loss_best": float(res.fun), "evaluations": int(res.nfev),
            "best": {n: best[n] for n in names}, "metrics": metrics(best),
            "targets": evaluate(best)}
