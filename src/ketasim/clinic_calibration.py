"""Calibration of the clinical layer to ``shared/literature/calibration/clinical`` only.

Designs (arms, doses, visits) follow the calibration files; the targets are their published
numbers or findings, kept with their source file, evidence tag and tolerance in
``cards/targets/clinic.yaml`` (:func:`targets`; the code holds only the logic of each check):

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
from collections.abc import Callable

import numpy as np

from .cards import load_param_card
from .mood import _grid, arm_regimen, mechanism_components, scores_batch
from .population import sample_arm
from .scenario import parse_scenario
from .units import parse_duration

N_PER_ARM = 400
_KINDS = ("equal", "at_most", "at_least")


def _targets_text() -> str:
    from importlib import resources

    return resources.files("ketasim.cards").joinpath("targets", "clinic.yaml").read_text(
        encoding="utf-8")


def targets_hash() -> str:
    """SHA-256 prefix of ``cards/targets/clinic.yaml`` (recorded with calibration reports)."""
    import hashlib

    return hashlib.sha256(_targets_text().encode()).hexdigest()[:12]


@functools.cache
def targets() -> dict:
    """The calibration targets (``cards/targets/clinic.yaml``): ``checks`` by id (label and
    numbers of each pass/fail check of :func:`evaluate`) and ``loss`` (the terms of
    :func:`loss`), each with its source file in ``shared/literature/calibration`` and an
    evidence tag. A malformed entry raises :class:`~ketasim.errors.CardError` naming it."""
    import yaml

    from .errors import CardError

    data = yaml.safe_load(_targets_text())
    if not isinstance(data, dict) or not isinstance(data.get("checks"), dict) or not \
            isinstance(data.get("loss"), list):
        raise CardError("targets/clinic.yaml", "needs a 'checks' mapping and a 'loss' list")
    for i, t in enumerate(data["loss"]):
        where = f"targets/clinic.yaml loss[{i}]"
        if not isinstance(t, dict) or t.get("kind") not in _KINDS:
            raise CardError(where, f"kind must be one of {', '.join(_KINDS)}")
        if not (isinstance(t.get("scale"), int | float) and t["scale"] > 0):
            raise CardError(where, "scale must be a number > 0")
        if not isinstance(t.get("value"), int | float) or not t.get("metric"):
            raise CardError(where, "needs 'metric' and a numeric 'value'")
    for k, c in data["checks"].items():
        if not isinstance(c, dict) or not c.get("label") or not c.get("source"):
            raise CardError(f"targets/clinic.yaml checks.{k}", "needs 'label' and 'source'")
    return data

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
    """Model values for every clinical target, with pass/fail (numbers and labels from
    :func:`targets`)."""
    c = c or {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    T = targets()["checks"]
    out: dict[str, tuple[float, bool]] = {}

    def within(key: str, value: float) -> None:
        t = T[key]
        out[t["label"]] = (value, abs(value - t["value"]) <= t["tol"])

    r = _scores("murrough2013a", c)
    (sk, bk, _), (sm, bm, _) = r["ketamine"], r["midazolam"]
    within("m13a_resp_k", np.mean(sk[:, 0] <= 0.5 * bk))
    within("m13a_resp_m", np.mean(sm[:, 0] <= 0.5 * bm))
    within("m13a_diff", (sk[:, 0] - bk).mean() - (sm[:, 0] - bm).mean())
    r = _scores("kishimoto", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dif = np.array([(sk[:, i] - bk).mean() - (ss[:, i] - bs).mean() for i in range(len(v))])
    dd = np.array([_d(sk[:, i] - bk, ss[:, i] - bs) for i in range(len(v))])
    t = T["kish_early"]
    out[t["label"]] = (dd[2], dd[2] <= t["d_max"])
    t = T["kish_peak"]
    peak_d = v[int(np.argmin(dif))] / 24.0
    out[t["label"]] = (float(peak_d), t["window_d"][0] <= peak_d <= t["window_d"][1] or
                       abs(dif[3]) >= t["near_peak"] * abs(dif.min()))
    t = T["kish_gone"]
    out[t["label"]] = (abs(dif[6]) / abs(dif[3]), abs(dif[6]) <= t["ratio_max"] * abs(dif[3]))
    r = _scores("fava2020", c, "hamd6")
    base_chg = (r["midazolam"][0][:, 0] - r["midazolam"][1]).mean()
    eff = {k: (r[k][0][:, 0] - r[k][1]).mean() - base_chg for k in ("k0.1", "k0.2", "k0.5",
                                                                   "k1.0")}
    t = T["fava_order"]
    ok = eff["k0.1"] >= eff["k0.2"] - t["slack_01_02"] and eff["k0.2"] > eff["k0.5"] and abs(
        eff["k0.5"] - eff["k1.0"]) <= t["equal_05_10"] * abs(eff["k0.5"])
    out[t["label"]] = (eff["k0.5"], bool(ok))
    r = _scores("murrough2013b", c)
    s, b, v = r["ketamine"]
    end = 1  # the 12 d visit (after the sixth infusion on day 11)
    resp_end = s[:, end] <= 0.5 * b
    within("m13b_resp", resp_end.mean())
    times = []
    for i in np.nonzero(resp_end)[0]:
        lost = np.nonzero(s[i, end + 1:] > 0.5 * b[i])[0]
        times.append((v[end + 1 + lost[0]] - 11 * 24.0) / 24.0 if lost.size else np.inf)
    med = float(np.median(times)) if times else float("nan")
    t = T["m13b_relapse"]
    out[t["label"]] = (med, t["range_d"][0] <= med <= t["range_d"][1])
    r = _scores("diazgranados2010", c)
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dd = np.array([_d(sk[:, i] - bk, ss[:, i] - bs) for i in range(len(v))])
    t = T["dz_40min"]
    out[t["label"]] = (dd[0], dd[0] <= t["d_max"])
    t = T["dz_day3"]
    out[t["label"]] = (dd[3], dd[3] <= t["d_max"])
    r = _scores("transform2", c)
    (se, be, _), (sp, bp, _) = r["esketamine"], r["placebo"]
    within("t2_diff", (se[:, 1] - be).mean() - (sp[:, 1] - bp).mean())
    r = _scores("kishimoto", c, "madrs_item10")
    (sk, bk, v), (ss, bs, _) = r["ketamine"], r["saline"]
    dd = [-_d(sk[:, i] - bk, ss[:, i] - bs) for i in (3, 4, 5)]
    t = T["wilk_d"]
    out[t["label"]] = (float(np.mean(dd)), all(t["range"][0] <= x <= t["range"][1] for x in dd))
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
    m["m13a_diff"] = m["m13a_chg_k"] - m["m13a_chg_m"]
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
    m["fava_absdiff_05_10"] = abs(m["fava_k0.5"] - m["fava_k1.0"])
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


def loss_terms(m: dict[str, float]) -> np.ndarray:
    """The scaled misses of the loss terms of :func:`targets` for metrics ``m``."""
    out = []
    for t in targets()["loss"]:
        thr = t["value"] + (t.get("factor", 1.0) * m[t["ref"]] if t.get("ref") else 0.0)
        x = m[t["metric"]]
        if t["kind"] == "equal":
            out.append((x - thr) / t["scale"])
        elif t["kind"] == "at_most":
            out.append(max(0.0, x - thr) / t["scale"])
        else:
            out.append(max(0.0, thr - x) / t["scale"])
    return np.array(out)


def loss(c: dict) -> float:
    """Calibration objective for clinic constants ``c``: sum of squared scaled misses of
    the clinical targets (0 when every target is hit)."""
    return float(np.sum(np.square(loss_terms(metrics(c)))))


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


def fit_clinic(max_evaluations: int = 600, start: dict | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """Nelder–Mead on transformed parameters minimising :func:`loss`. ``progress(done,
    max_evaluations)``: optional, after each evaluation of the search."""
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
    n_eval = [0]

    def counted(x):
        v = bounded_loss(to_c(x))
        n_eval[0] += 1
        if progress is not None:
            progress(min(n_eval[0], max_evaluations), max_evaluations)
        return v

    res = minimize(counted, x0, method="Nelder-Mead",
                   options={"maxfev": max_evaluations, "adaptive": True})
    best = to_c(res.x)
    return {"loss_start": l0, "loss_best": float(res.fun), "evaluations": int(res.nfev),
            "best": {n: best[n] for n in names}, "metrics": metrics(best),
            "targets": evaluate(best)}
