"""A residual error per observed quantity: shared σ against one σ per analyte; prints numbers.

Each replicate simulates a data set with parent (ketamine, "plasma") and metabolite
(norketamine) observations whose assays differ: card kamp2020, 0.5 mg/kg over 40 min, both
analytes at the 15 times 5 min–24 h of ``scripts/recovery_study.py``, truth CL = 1.15 × card,
V1 = 0.85 × card, IIV SD 0.3 on both, proportional error ``--sigma-plasma`` (default 0.10)
for the parent and ``--sigma-metabolite`` (0.25) for the metabolite (``simulate_dataset``
with per-quantity σ keys). The same data set is fitted twice by :class:`PopulationFOCEI`
(FOCE-I refined on the adaptive-quadrature likelihood, covariance step; profile intervals
where the default rule allows them):

* ``shared``: one ``sigma_prop`` for both analytes (the default);
* ``per-quantity``: ``sigma_prop_plasma`` and ``sigma_prop_metabolite``
  (``error_by_quantity=True``).

Printed per fit: recovered σ; for CL and V1 the mean relative error against the truth (± SE
over replicates), the RMSE of the log estimate against the realised geometric mean of the
simulated subjects (the luck of the draw removed), the mean reported SE of the log estimate,
how many 95% intervals contain the truth, and the mean IIV CV; then the objective difference
(a likelihood-ratio statistic, one degree of freedom).

    .venv/bin/python scripts/error_per_quantity_study.py --replicates 6 --subjects 40
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext

import numpy as np

from ketasim import __version__
from ketasim.cards import card_versions, load_pk_card
from ketasim.fit.data import read_dataset
from ketasim.fit.estimators import PopulationFOCEI
from ketasim.fit.problem import PKProblem, simulate_dataset
from ketasim.regimen import Regimen

# design (as scripts/recovery_study.py; not model parameters: the truth is set from the card)
TIMES_H = np.array([0.083, 0.167, 0.33, 0.5, 0.67, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 24])
SHIFT = {"CL": 1.15, "V1": 0.85}  # truth = card value × shift
OMEGA = {"CL": 0.3, "V1": 0.3}  # log-normal SDs of the truth
FITS = ("shared", "per-quantity")


def _replicate(job: tuple) -> dict:
    """Simulate one replicate and fit it both ways (a process-pool task)."""
    model, subjects, truth, s_plasma, s_metab, seed, r = job
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    df = simulate_dataset(model, subjects, reg, TIMES_H, truth, OMEGA, metabolite=True,
                          sigma={"sigma_prop_plasma": s_plasma,
                                 "sigma_prop_metabolite": s_metab}, seed=seed)
    est = list(truth)
    out: dict = {"replicate": r, "seed": seed,
                 "realised_gm": {k: float(np.exp(np.mean(np.log(df.attrs["individual"][k]))))
                                 for k in est}}
    ds = read_dataset(df, source=f"replicate {r}")
    for name in FITS:
        pr = PKProblem(model, ds, est, error_by_quantity=name == "per-quantity")
        t0 = time.perf_counter()
        res = PopulationFOCEI(pr).run()
        out[name] = {"seconds": time.perf_counter() - t0, "converged": res.converged,
                     "objective": res.objective, "sigma": res.sigma,
                     "theta": res.theta,
                     "se_log": {k: res.estimates[k].se / res.estimates[k].value for k in est},
                     "ci95": {k: list(res.estimates[k].ci95) for k in est},
                     "ci95_method": {k: res.estimates[k].ci95_method for k in est},
                     "iiv_cv": {k: res.estimates[k].iiv_cv for k in est},
                     "at_bounds": res.diagnostics.get("at_bounds", [])}
    return out


def summarize(rows: list[dict], truth: dict, sig_true: dict) -> dict:
    """Per fit and parameter: errors, SEs and interval hits (printed and returned)."""
    n = len(rows)
    summary: dict = {}
    print(f"{n} replicates; true sigma_prop plasma {sig_true['plasma']}, metabolite "
          f"{sig_true['metabolite']}")
    for m in FITS:
        s: dict = {}
        sig = {k: np.array([x[m]["sigma"][k] for x in rows]) for k in rows[0][m]["sigma"]}
        s["sigma"] = {k: {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
                      for k, v in sig.items()}
        print(f"{m}: " + ", ".join(f"{k} {v.mean():.4f} ({v.min():.4f}–{v.max():.4f})"
                                   for k, v in sig.items())
              + f"; converged {sum(x[m]['converged'] for x in rows)}/{n}, "
              f"{sum(bool(x[m]['at_bounds']) for x in rows)} with a bound, "
              f"{np.mean([x[m]['seconds'] for x in rows]):.1f} s/fit")
        for k in truth:
            v = np.array([x[m]["theta"][k] for x in rows])
            gm = np.array([x["realised_gm"][k] for x in rows])
            rel = v / truth[k] - 1
            se = np.std(rel, ddof=1) / np.sqrt(n) if n > 1 else np.nan
            lerr = np.log(v / gm)
            se_log = np.array([x[m]["se_log"][k] for x in rows])
            hits = sum(x[m]["ci95"][k][0] <= truth[k] <= x[m]["ci95"][k][1] for x in rows)
            cv = np.array([x[m]["iiv_cv"][k] for x in rows])
            s[k] = {"mean_rel_error": float(rel.mean()), "se": float(se),
                    "rmse_log_vs_realised_gm": float(np.sqrt(np.mean(lerr**2))),
                    "mean_log_error_vs_realised_gm": float(lerr.mean()),
                    "mean_se_log": float(se_log.mean()), "ci95_hits": int(hits),
                    "iiv_cv_mean": float(cv.mean())}
            rmse = 100 * s[k]["rmse_log_vs_realised_gm"]
            print(f"  {k}: rel error {100 * rel.mean():+5.1f} ±{100 * se:4.1f}%, log error vs "
                  f"realised GM mean {100 * lerr.mean():+5.2f}% RMSE {rmse:.2f}%, "
                  f"mean SE(log) {100 * se_log.mean():.2f}%, 95% CI holds the truth "
                  f"{hits}/{n}, IIV CV {cv.mean():.3f}")
        summary[m] = s
    d = np.array([x["shared"]["objective"] - x["per-quantity"]["objective"] for x in rows])
    summary["delta_objective"] = {"mean": float(d.mean()), "min": float(d.min())}
    print(f"objective shared − per-quantity (likelihood-ratio statistic, 1 df): mean "
          f"{d.mean():.1f}, min {d.min():.1f}")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=6)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--model", default="kamp2020")
    ap.add_argument("--sigma-plasma", type=float, default=0.10)
    ap.add_argument("--sigma-metabolite", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=9126)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", default=None, help="write per-replicate results here")
    a = ap.parse_args(argv)
    card = load_pk_card(a.model)
    truth = {k: card.parameters[k].value * v for k, v in SHIFT.items()}
    sig_true = {"plasma": a.sigma_plasma, "metabolite": a.sigma_metabolite}
    jobs = [(a.model, a.subjects, truth, a.sigma_plasma, a.sigma_metabolite, a.seed + r, r)
            for r in range(a.replicates)]
    t0 = time.perf_counter()
    pool = ProcessPoolExecutor(a.jobs) if a.jobs > 1 else nullcontext()
    with pool as ex:
        it = ex.map(_replicate, jobs) if a.jobs > 1 else map(_replicate, jobs)
        rows = []
        for row in it:
            rows.append(row)
            print(f"rep {row['replicate']:3d} " + "; ".join(
                f"{m}: CL={row[m]['theta']['CL']:.1f} V1={row[m]['theta']['V1']:.2f} "
                + " ".join(f"{k}={v:.4f}" for k, v in row[m]["sigma"].items())
                for m in FITS), flush=True)
    print(f"model {a.model}, {a.subjects} subjects, total {time.perf_counter() - t0:.0f} s; "
          f"ketasim {__version__}; card {a.model} {card_versions().get('pk/' + a.model, '')}")
    summary = summarize(rows, truth, sig_true)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"design": vars(a), "truth": truth, "rows": rows, "summary": summary}, f,
                      indent=1)


if __name__ == "__main__":
    main()
