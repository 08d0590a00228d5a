"""Diagnosis of the recovery study's interval coverage on chosen replicates (docs/fit.md).

Re-simulates replicates of ``scripts/recovery_study.py`` (same seeds) and fits each twice:
with the default settings, and with tighter ones (more quadrature nodes, more and stricter
refinement iterations, a smaller Hessian step, tighter inner tolerance). If the estimates or
SEs move by a fraction of the SE between the two, optimisation or integration error matters;
both fits also report the profile-likelihood interval next to the Wald one.

    .venv/bin/python scripts/coverage_diagnosis.py --replicates 1,4,22,30 --jobs 2

``--realised STUDY.json`` instead re-simulates the replicates of a finished study (same
seeds, no fits) and reports what the subjects drawn allow: the spread of the realised log
geometric mean and of the realised SD of η, against ω/√n and ω/√(2(n−1)), and how often each
replicate's CV interval contains its own subjects' realised CV.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from recovery_study import OMEGA, SHIFT, TIMES_H  # the study's design

import ketasim.fit.estimators as E
from ketasim.cards import load_pk_card
from ketasim.fit.data import read_dataset
from ketasim.fit.problem import PKProblem, simulate_dataset
from ketasim.regimen import Regimen

# the tighter settings (estimator settings only; defaults in ketasim.fit.estimators)
TIGHT = {"AGQ_NODES": 7, "REFINE_MAX_ITER": 40, "REFINE_GRAD_FRACTION": 0.01,
         "HESS_STEP": 2e-3, "INNER_TOL_COV": 1e-14}
DEFAULT = {k: getattr(E, k) for k in TIGHT}


def _fit(job: tuple) -> dict:
    model, subjects, est, sigma_prop, seed, r, tight = job
    for k, v in (TIGHT if tight else DEFAULT).items():  # a worker process runs both kinds
        setattr(E, k, v)
    card = load_pk_card(model)
    truth = {k: card.parameters[k].value * SHIFT[k] for k in est}
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    df = simulate_dataset(model, subjects, reg, TIMES_H, truth, {k: OMEGA[k] for k in est},
                          sigma={"sigma_prop": sigma_prop}, seed=seed + r)
    pr = PKProblem(model, read_dataset(df), est)
    t0 = time.perf_counter()
    res = E.PopulationFOCEI(pr, profile=True).run()
    out = {"replicate": r, "tight": tight, "seconds": time.perf_counter() - t0,
           "method": res.method, "objective": res.objective,
           "refine_iterations": res.diagnostics.get("refine_iterations"),
           "max_abs_gradient": res.diagnostics["max_abs_gradient"],
           "profile": res.diagnostics.get("profile")}
    for k in est:
        e = res.estimates[k]
        wl, wh = e.ci95_wald or e.ci95
        out[k] = {"truth": truth[k], "value": e.value, "se_log": e.se / e.value,
                  "wald": [wl, wh], "ci95": list(e.ci95), "method": e.ci95_method,
                  "realised_gm": float(np.exp(np.mean(np.log(df.attrs["individual"][k])))),
                  "z": float(np.log(e.value / truth[k]) / (e.se / e.value))}
    return out


def realised(path: str, subjects: int, model: str = "kamp2020") -> None:
    """Print the realised-sample diagnostics of a saved recovery study (see the docstring)."""
    with open(path, encoding="utf-8") as fh:
        saved = json.load(fh)
    rows, truth, true_cv = saved["replicates"], saved["truth"], saved["true_cv"]
    est = list(truth)
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    card = load_pk_card(model)
    subjects = saved.get("subjects", subjects)  # the study's own, where the file records it
    n = subjects
    out = {k: {"log_gm": [], "sd": [], "cv_in_ci": []} for k in est}
    for x in rows:
        df = simulate_dataset(model, subjects, reg, TIMES_H, truth,
                              {k: OMEGA[k] for k in est}, sigma={"sigma_prop": 0.15},
                              seed=saved["seed"] + x["replicate"])
        for k in est:
            lv = np.log(np.asarray(df.attrs["individual"][k]) / card.parameters[k].value
                        / (truth[k] / card.parameters[k].value))
            gm = float(np.exp(lv.mean()) * truth[k])
            assert abs(gm / x["realised_gm"][k] - 1) < 1e-9, "not the study's data"
            sd = float(lv.std())
            lo, hi = x["estimates"][k]["iiv_cv_ci95"]
            out[k]["log_gm"].append(float(lv.mean()))
            out[k]["sd"].append(sd)
            out[k]["cv_in_ci"].append(lo <= np.sqrt(np.expm1(sd * sd)) <= hi)
    for k in est:
        om = float(np.sqrt(np.log1p(true_cv[k] ** 2)))
        o = out[k]
        print(f"{k}: SD of realised log GM {np.std(o['log_gm']):.4f} (ω/√n {om / np.sqrt(n):.4f});"
              f" SD of realised SD of η {np.std(o['sd']):.4f} (ω/√(2(n−1)) "
              f"{om / np.sqrt(2 * (n - 1)):.4f}); realised CV inside the CV interval in "
              f"{100 * np.mean(o['cv_in_ci']):.0f}% of {len(rows)} replicates")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--realised", default=None, help="a saved recovery study (JSON): report "
                    "the realised-sample diagnostics instead of fitting")
    ap.add_argument("--replicates", default=None, help="comma-separated replicate indices")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--estimate", default="CL,V1")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.realised:
        realised(a.realised, a.subjects)
        return
    if not a.replicates:
        ap.error("--replicates or --realised is required")
    est = a.estimate.split(",")
    reps = [int(v) for v in a.replicates.split(",")]
    jobs = [("kamp2020", a.subjects, est, 0.15, a.seed, r, t) for r in reps
            for t in (False, True)]
    rows = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for o in pool.map(_fit, jobs):
            rows.append(o)
            msg = " ".join(
                f"{k}={o[k]['value']:.4g} se_log={o[k]['se_log']:.4f} "
                f"wald[{o[k]['wald'][0]:.4g},{o[k]['wald'][1]:.4g}] "
                f"prof[{o[k]['ci95'][0]:.4g},{o[k]['ci95'][1]:.4g}] z={o[k]['z']:+.2f}"
                for k in est)
            print(f"rep {o['replicate']:3d} {'tight  ' if o['tight'] else 'default'} "
                  f"{o['seconds']:5.0f} s ofv {o['objective']:.3f} it "
                  f"{o['refine_iterations']} |g| {o['max_abs_gradient']:.3g} {msg}", flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
