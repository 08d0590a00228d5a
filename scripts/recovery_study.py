"""Parameter-recovery study for the population PK fit (FOCE-I); prints numbers.

Simulates ``--replicates`` data sets with ketasim's exact PK solver (``simulate_pk``) from
known typical values and IIV (50 subjects, rich sampling, proportional error), fits each back
with :class:`ketasim.fit.estimators.PopulationFOCEI` (FOCE-I refined on the quadrature
likelihood; ``--no-quadrature``: plain FOCE-I), and reports per parameter: the mean relative
error of the estimates, the fraction of replicates within the tolerance (10% typical values,
30% IIV CVs), the coverage of the 95% intervals (profile likelihood for typical values where
the estimator computes them, else Wald on the log scale; the method is printed), and as
diagnostics the FOCE-I estimate's mean error, the error against the realised geometric mean
of the simulated subjects' parameters, the spread of the estimates against the mean SE, and
the coverage of Wald and sandwich intervals.
``--jobs N`` fits replicates in N processes (same seeds, same results).

    .venv/bin/python scripts/recovery_study.py --replicates 50 --jobs 2 --json rec.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext

import numpy as np

from ketasim import __version__
from ketasim.cards import card_versions
from ketasim.fit.data import read_dataset
from ketasim.fit.estimators import PopulationFOCEI
from ketasim.fit.problem import PKProblem, simulate_dataset
from ketasim.regimen import Regimen

# design of the simulated study (not model parameters: the truth is set relative to the card)
TIMES_H = np.array([0.083, 0.167, 0.33, 0.5, 0.67, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 24])
SHIFT = {"CL": 1.15, "V1": 0.85, "Q2": 1.0, "V2": 1.1}  # truth = card value × shift
OMEGA = {"CL": 0.3, "V1": 0.3, "Q2": 0.3, "V2": 0.3}  # log-normal SDs of the truth
Z95 = 1.959963984540054


def summarize(rows: list[dict], truth: dict, true_cv: dict, sigma_prop: float,
              subjects: int = 50) -> dict:
    """Per-parameter recovery numbers over the replicates (printed and returned)."""
    est = list(truth)
    summary = {}
    for k in est:
        v = np.array([x["estimates"][k]["value"] for x in rows])
        lo = np.array([x["estimates"][k]["ci95"][0] for x in rows])
        hi = np.array([x["estimates"][k]["ci95"][1] for x in rows])
        cv = np.array([x["estimates"][k]["iiv_cv"] for x in rows])
        clo = np.array([x["estimates"][k].get("iiv_cv_ci95", [np.nan, np.nan])[0] for x in rows])
        chi = np.array([x["estimates"][k].get("iiv_cv_ci95", [np.nan, np.nan])[1] for x in rows])
        rel = v / truth[k] - 1
        relcv = cv / true_cv[k] - 1
        s = {"truth": truth[k], "mean_estimate": float(v.mean()),
             "mean_rel_error": float(rel.mean()), "median_abs_rel_error": float(np.median(
                 np.abs(rel))), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
             "ci95_coverage": float(np.mean((lo <= truth[k]) & (truth[k] <= hi))),
             "true_cv": true_cv[k], "mean_cv": float(cv.mean()),
             "mean_rel_error_cv": float(relcv.mean()),
             "within_30pct_cv": float(np.mean(np.abs(relcv) <= 0.30)),
             "cv_ci95_coverage": float(np.mean((clo <= true_cv[k]) & (true_cv[k] <= chi)))}
        se_s = np.array([(x.get("diagnostics", {}).get("se_log_sandwich") or {}).get(
            f"theta_{k}") or np.nan for x in rows], dtype=float)
        if np.isfinite(se_s).any():  # the sandwich interval, same point estimate
            s["sandwich_ci95_coverage"] = float(np.mean(
                np.abs(np.log(v / truth[k])) <= Z95 * se_s))
        shift = np.array([(x.get("diagnostics", {}).get("focei_log_shift") or {}).get(
            f"theta_{k}", np.nan) for x in rows], dtype=float)
        if np.isfinite(shift).any():  # the FOCE-I estimate before the quadrature refinement
            s["focei_mean_rel_error"] = float(np.mean(v * np.exp(-shift) / truth[k] - 1))
        gm = np.array([x.get("realised_gm", {}).get(k, np.nan) for x in rows], dtype=float)
        if np.isfinite(gm).any():  # estimation error given the subjects drawn
            s["mean_log_error_vs_realised_gm"] = float(np.mean(np.log(v / gm)))
            s["sd_log_realised_gm"] = float(np.std(np.log(gm / truth[k])))
            # an oracle that knew every subject's parameter, with the exact SE ω/√n of their
            # log geometric mean: the coverage that the subjects drawn allow at most
            om_k = np.sqrt(np.log1p(true_cv[k] ** 2))
            s["oracle_ci95_coverage"] = float(np.mean(
                np.abs(np.log(gm / truth[k])) <= Z95 * om_k / np.sqrt(subjects)))
        s["sd_log_estimate"] = float(np.std(np.log(v)))
        # the Wald SE of log θ (the reported se / value; ci95 may be a profile interval)
        se_log = np.array([x["estimates"][k]["se"] / x["estimates"][k]["value"] for x in rows])
        s["mean_se_log"] = float(np.mean(se_log))
        # calibration of the SE: the SD of (log estimate − log truth)/SE is 1 for a right SE
        s["sd_z"] = float(np.std(np.log(v / truth[k]) / se_log))
        s["wald_ci95_coverage"] = float(np.mean(np.abs(np.log(v / truth[k])) <= Z95 * se_log))
        methods = [x["estimates"][k].get("ci95_method", "wald-log") for x in rows]
        s["ci95_methods"] = {m: methods.count(m) for m in sorted(set(methods))}
        # profile intervals: mean log half-widths below and above (asymmetry)
        if "profile-likelihood" in methods:
            s["mean_log_halfwidth_lower_upper"] = [float(np.mean(np.log(v / lo))),
                                                   float(np.mean(np.log(hi / v)))]
        summary[k] = s
        print(f"{k}: truth {truth[k]:.4g}, mean est {v.mean():.4g} (mean rel err "
              f"{100 * rel.mean():+.1f}%, {100 * s['within_10pct']:.0f}% of replicates within "
              f"10%), 95% CI coverage {100 * s['ci95_coverage']:.0f}%; IIV CV truth "
              f"{true_cv[k]:.3f}, mean est {cv.mean():.3f} ({100 * relcv.mean():+.1f}%, "
              f"{100 * s['within_30pct_cv']:.0f}% within 30%), CV CI coverage "
              f"{100 * s['cv_ci95_coverage']:.0f}%")
        extra = ", ".join(f"{n} {s[n]:+.4f}" if "error" in n else f"{n} {s[n]:.4f}"
                          for n in ("focei_mean_rel_error", "mean_log_error_vs_realised_gm",
                                    "sd_log_realised_gm", "sd_log_estimate", "mean_se_log",
                                    "sd_z", "wald_ci95_coverage", "sandwich_ci95_coverage",
                                    "oracle_ci95_coverage")
                          if n in s)
        print(f"  {k}: {extra}; ci95 by {s['ci95_methods']}"
              + (", mean log half-widths {:.4f} below, {:.4f} above".format(
                  *s["mean_log_halfwidth_lower_upper"])
                 if "mean_log_halfwidth_lower_upper" in s else ""))
    sp = np.array([x["sigma_prop"]["value"] for x in rows])
    print(f"sigma_prop: truth {sigma_prop:g}, mean est {sp.mean():.4g}")
    print(f"converged: {sum(x['converged'] for x in rows)}/{len(rows)}; mean fit time "
          f"{np.mean([x['seconds'] for x in rows]):.1f} s")
    return summary


def _replicate(job: tuple) -> dict:
    """Simulate and fit one replicate (a process-pool task): the JSON record of the fit."""
    model, subjects, truth, om, sigma_prop, seed, r, est, quadrature = job
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    df = simulate_dataset(model, subjects, reg, TIMES_H, truth, om,
                          sigma={"sigma_prop": sigma_prop}, seed=seed)
    pr = PKProblem(model, read_dataset(df, source=f"replicate {r}"), est)
    t0 = time.perf_counter()
    res = PopulationFOCEI(pr, quadrature=quadrature).run()
    d = res.to_dict()
    # the realised geometric mean of the individual parameters: what the data can show
    gm = {k: float(np.exp(np.mean(np.log(df.attrs["individual"][k])))) for k in est}
    return {"replicate": r, "seconds": time.perf_counter() - t0, "converged": res.converged,
            "method": res.method, "objective": res.objective, "estimates": d["estimates"],
            "sigma_prop": d["residual_error"]["sigma_prop"], "realised_gm": gm,
            "diagnostics": res.diagnostics}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--model", default="kamp2020")
    ap.add_argument("--estimate", default="CL,V1")
    ap.add_argument("--sigma-prop", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", default=None, help="write per-replicate results here")
    ap.add_argument("--jobs", type=int, default=1,
                    help="replicates fitted in parallel processes (results are identical)")
    ap.add_argument("--no-quadrature", dest="quadrature", action="store_false",
                    help="plain FOCE-I (no adaptive-quadrature refinement)")
    ap.add_argument("--summarize", default=None,
                    help="only summarise the replicates saved in this JSON file")
    ap.add_argument("--timing", type=int, default=0,
                    help="instead: time one population fit of this many subjects")
    ap.add_argument("--workers", type=int, default=1,
                    help="with --timing: worker processes of that one fit")
    ap.add_argument("--forecast", type=int, default=0,
                    help="instead: forecast-band calibration on this many simulated patients")
    a = ap.parse_args(argv)
    if a.summarize:
        with open(a.summarize, encoding="utf-8") as fh:
            saved = json.load(fh)
        print(f"{len(saved['replicates'])} replicates from {a.summarize}")
        # the study's own design where the file records it (files written before it was
        # recorded: --subjects and --sigma-prop, whose defaults are the shipped studies')
        summarize(saved["replicates"], saved["truth"], saved["true_cv"],
                  saved.get("sigma_prop", a.sigma_prop), saved.get("subjects", a.subjects))
        return
    if a.timing:
        from ketasim.cards import load_pk_card as _load

        est_t = a.estimate.split(",")
        card_t = _load(a.model)
        truth_t = {k: card_t.parameters[k].value * SHIFT.get(k, 1.0) for k in est_t}
        df = simulate_dataset(a.model, a.timing, Regimen.build("iv-infusion", "0.5 mg/kg",
                                                               duration="40 min"),
                              TIMES_H, truth_t, {k: OMEGA.get(k, 0.3) for k in est_t},
                              sigma={"sigma_prop": a.sigma_prop}, seed=a.seed)
        w0, c0 = time.perf_counter(), time.process_time()
        pr = PKProblem(a.model, read_dataset(df), est_t)
        res = PopulationFOCEI(pr, workers=a.workers).run()
        print(f"{a.timing} subjects, estimate {a.estimate}, {a.workers} worker(s): "
              f"wall {time.perf_counter() - w0:.0f} s,"
              f" CPU {time.process_time() - c0:.0f} s, converged {res.converged}, "
              f"{res.diagnostics}")
        for k in est_t:
            e = res.estimates[k]
            print(f"  {k}: truth {truth_t[k]:.4g} est {e.value:.4g} CI {e.ci95[0]:.4g}–"
                  f"{e.ci95[1]:.4g}, IIV CV {e.iiv_cv:.3f}")
        return
    if a.forecast:
        from ketasim.fit.forecast import calibration_study

        t0 = time.perf_counter()
        r = calibration_study(a.forecast, seed=a.seed)
        print(f"forecast 80% band coverage: {100 * r['coverage_80']:.1f}% of {r['n_scores']} "
              f"held-out scores ({r['n_patients']} patients, seed {a.seed}), "
              f"{time.perf_counter() - t0:.0f} s; ketasim {__version__}")
        return
    from ketasim.cards import load_pk_card

    card = load_pk_card(a.model)
    est = a.estimate.split(",")
    truth = {k: card.parameters[k].value * SHIFT.get(k, 1.0) for k in est}
    om = {k: OMEGA.get(k, 0.3) for k in est}
    true_cv = {k: float(np.sqrt(np.expm1(om[k] ** 2))) for k in est}
    rows = []
    t_all = time.perf_counter()
    jobs = [(a.model, a.subjects, truth, om, a.sigma_prop, a.seed + r, r, est, a.quadrature)
            for r in range(a.replicates)]
    with ProcessPoolExecutor(a.jobs) if a.jobs > 1 else nullcontext() as pool:
        results = pool.map(_replicate, jobs) if pool is not None else map(_replicate, jobs)
        for rec in results:  # in replicate order
            rows.append(rec)
            d = rec["estimates"]
            msg = " ".join(f"{k}={d[k]['value']:.4g}[{d[k]['ci95'][0]:.4g},{d[k]['ci95'][1]:.4g}]"
                           f"(cv {d[k]['iiv_cv']:.3f}[{d[k]['iiv_cv_ci95'][0]:.3f},"
                           f"{d[k]['iiv_cv_ci95'][1]:.3f}])" for k in est)
            print(f"rep {rec['replicate']:3d} {rec['seconds']:6.1f} s conv={rec['converged']} "
                  f"{msg}", flush=True)
            if a.json:  # written as it goes, so an interrupted study keeps its replicates
                with open(a.json, "w", encoding="utf-8") as fh:
                    json.dump({"replicates": rows, "seed": a.seed, "truth": truth,
                               "true_cv": true_cv, "subjects": a.subjects,
                               "sigma_prop": a.sigma_prop}, fh, default=float)
    print(f"\nmodel {a.model}, {a.subjects} subjects, {a.replicates} replicates, "
          f"proportional error {a.sigma_prop:g}, total {time.perf_counter() - t_all:.0f} s")
    print(f"ketasim {__version__}; card {a.model} {card_versions().get('pk/' + a.model, '')}")
    summary = summarize(rows, truth, true_cv, a.sigma_prop, a.subjects)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"summary": summary, "replicates": rows, "seed": a.seed,
                       "truth": truth, "true_cv": true_cv, "subjects": a.subjects,
                       "sigma_prop": a.sigma_prop, "ketasim_version": __version__,
                       "command": " ".join(sys.argv), "jobs": a.jobs,
                       "wall_s": time.perf_counter() - t_all},
                      fh, indent=1, default=float)


if __name__ == "__main__":
    main()
