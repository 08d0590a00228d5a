"""BLQ simulation study: Beal's M3 against M1 (discard) and the naive fit; prints numbers.

Each replicate simulates a data set as ``scripts/recovery_study.py`` does (card kamp2020,
0.5 mg/kg over 40 min, 15 samples 5 min–24 h, truth CL = 1.15 × card, V1 = 0.85 × card, IIV
SD 0.3 on both, 15% proportional error; ``simulate_dataset``), with ``--lloq`` ng/mL as the
lower limit of quantification: a simulated value below it becomes a censored row (DV = LLOQ,
CENS 1). The same data set is fitted four ways with :class:`PopulationFOCEI` (FOCE-I refined on
the adaptive-quadrature likelihood; no covariance step, as only the point estimates are
compared):

* ``m3``: the censored rows by their likelihood Φ((LLOQ − f)/sd) (``blq="m3"``);
* ``m1``: the censored rows dropped (``blq="m1"``);
* ``naive``: the CENS column removed, so DV = LLOQ is taken as an observed value;
* ``full``: the same replicate without the limit (every simulated value observed; the same
  random draws), the best the design allows.

Printed per method: mean relative error (± its standard error over replicates) of CL, V1 and
of their IIV CVs against the truth, and for CL and V1 the mean log error against the realised
geometric mean of the simulated subjects (the luck of the draw removed); then, paired within
each replicate, the mean relative difference of each estimate from the ``full`` fit of the
same subjects and draws (± SE): what the handling of the censored rows alone costs.

    .venv/bin/python scripts/blq_study.py --replicates 10 --json blq.json
    .venv/bin/python scripts/blq_study.py --summarize blq.json
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
METHODS = ("m3", "m1", "naive", "full")


def _replicate(job: tuple) -> dict:
    """Simulate one replicate and fit it by every method (a process-pool task)."""
    model, subjects, truth, sigma_prop, lloq, seed, r = job
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    kw = dict(sigma={"sigma_prop": sigma_prop}, seed=seed)
    cens_df = simulate_dataset(model, subjects, reg, TIMES_H, truth, OMEGA, lloq=lloq, **kw)
    full_df = simulate_dataset(model, subjects, reg, TIMES_H, truth, OMEGA, **kw)
    est = list(truth)
    data = {"m3": (cens_df, "m3"), "m1": (cens_df, "m1"),
            "naive": (cens_df.drop(columns="CENS"), "m3"), "full": (full_df, "m3")}
    out: dict = {"replicate": r, "seed": seed,
                 "censored_fraction": float(cens_df.loc[cens_df.EVID == 0, "CENS"].mean()),
                 "realised_gm": {k: float(np.exp(np.mean(np.log(
                     cens_df.attrs["individual"][k])))) for k in est}}
    for name, (df, blq) in data.items():
        pr = PKProblem(model, read_dataset(df, source=f"replicate {r} {name}"), est, blq=blq)
        t0 = time.perf_counter()
        res = PopulationFOCEI(pr, covariance=False).run()
        out[name] = {"seconds": time.perf_counter() - t0, "converged": res.converged,
                     "n_obs": res.n_obs, "n_censored": res.n_censored,
                     "theta": res.theta, "iiv_cv": {k: res.estimates[k].iiv_cv for k in est},
                     "sigma_prop": res.sigma["sigma_prop"],
                     "at_bounds": res.diagnostics.get("at_bounds", [])}
    return out


def summarize(rows: list[dict], truth: dict, true_cv: dict) -> dict:
    """Mean relative errors per method and parameter (printed and returned)."""
    n = len(rows)
    summary: dict = {}
    print(f"{n} replicates; censored fraction {np.mean([x['censored_fraction'] for x in rows]):.3f}"
          f" (range {min(x['censored_fraction'] for x in rows):.3f}–"
          f"{max(x['censored_fraction'] for x in rows):.3f})")
    print("mean relative error vs truth, % (± SE over replicates); [mean log error vs the "
          "realised geometric mean, %]")
    for m in METHODS:
        s: dict = {}
        parts = []
        for k in truth:
            v = np.array([x[m]["theta"][k] for x in rows])
            cv = np.array([x[m]["iiv_cv"][k] for x in rows])
            gm = np.array([x["realised_gm"][k] for x in rows])
            rel, relcv = v / truth[k] - 1, cv / true_cv[k] - 1
            se = np.std(rel, ddof=1) / np.sqrt(n) if n > 1 else np.nan
            secv = np.std(relcv, ddof=1) / np.sqrt(n) if n > 1 else np.nan
            s[k] = {"mean_rel_error": float(rel.mean()), "se": float(se),
                    "mean_log_error_vs_realised_gm": float(np.mean(np.log(v / gm))),
                    "cv_mean_rel_error": float(relcv.mean()), "cv_se": float(secv)}
            parts.append(f"{k} {100 * rel.mean():+6.1f} ±{100 * se:4.1f} "
                         f"[{100 * np.mean(np.log(v / gm)):+6.1f}]  "
                         f"CV_{k} {100 * relcv.mean():+6.1f} ±{100 * secv:4.1f}")
        sp = np.array([x[m]["sigma_prop"] for x in rows])
        conv = sum(x[m]["converged"] for x in rows)
        bounds = sum(bool(x[m]["at_bounds"]) for x in rows)
        s.update({"sigma_prop_mean": float(sp.mean()), "converged": conv,
                  "fits_with_a_bound": bounds,
                  "mean_seconds": float(np.mean([x[m]["seconds"] for x in rows]))})
        summary[m] = s
        print(f"{m:>5}: {'  '.join(parts)}  sigma_prop {sp.mean():.3f}; converged {conv}/{n}, "
              f"{bounds} with a parameter at a bound, {s['mean_seconds']:.1f} s/fit")
    print("paired with the same replicate's fit without the limit (full): mean relative "
          "difference, % (± SE)")
    for m in METHODS[:-1]:
        parts = []
        for k in truth:
            for name, get in ((k, lambda x, mm, k=k: x[mm]["theta"][k]),
                              (f"CV_{k}", lambda x, mm, k=k: x[mm]["iiv_cv"][k])):
                d = np.array([get(x, m) / get(x, "full") - 1 for x in rows])
                se = np.std(d, ddof=1) / np.sqrt(n) if n > 1 else np.nan
                summary[m].setdefault("vs_full", {})[name] = {"mean_rel_diff": float(d.mean()),
                                                             "se": float(se)}
                parts.append(f"{name} {100 * d.mean():+6.1f} ±{100 * se:4.1f}")
        print(f"{m:>5}: {'  '.join(parts)}")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=10)
    ap.add_argument("--subjects", type=int, default=50)
    ap.add_argument("--model", default="kamp2020")
    ap.add_argument("--sigma-prop", type=float, default=0.15)
    ap.add_argument("--lloq", type=float, default=20.0, help="ng/mL")
    ap.add_argument("--seed", type=int, default=8126)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", default=None, help="write per-replicate results here")
    ap.add_argument("--summarize", default=None,
                    help="only summarise the replicates saved in this JSON file")
    a = ap.parse_args(argv)
    if a.summarize:
        with open(a.summarize, encoding="utf-8") as fh:
            saved = json.load(fh)
        print(f"{a.summarize}: LLOQ {saved['lloq']:g} ng/mL, {saved['subjects']} subjects, "
              f"seed {saved['seed']}")
        summarize(saved["replicates"], saved["truth"], saved["true_cv"])
        return
    card = load_pk_card(a.model)
    truth = {k: card.parameters[k].value * SHIFT[k] for k in SHIFT}
    true_cv = {k: float(np.sqrt(np.expm1(OMEGA[k] ** 2))) for k in SHIFT}
    jobs = [(a.model, a.subjects, truth, a.sigma_prop, a.lloq, a.seed + r, r)
            for r in range(a.replicates)]
    rows = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.jobs) if a.jobs > 1 else nullcontext() as pool:
        results = pool.map(_replicate, jobs) if pool is not None else map(_replicate, jobs)
        for rec in results:
            rows.append(rec)
            print(f"rep {rec['replicate']:3d} censored {rec['censored_fraction']:.3f} "
                  + " ".join(f"{m}: CL={rec[m]['theta']['CL']:.4g} V1={rec[m]['theta']['V1']:.4g}"
                             f" cv={rec[m]['iiv_cv']['CL']:.3f}/{rec[m]['iiv_cv']['V1']:.3f}"
                             for m in METHODS), flush=True)
    print(f"\nmodel {a.model} (card {card_versions().get('pk/' + a.model, '')}), {a.subjects} "
          f"subjects, LLOQ {a.lloq:g} ng/mL, proportional error {a.sigma_prop:g}, seeds "
          f"{a.seed}–{a.seed + a.replicates - 1}; ketasim {__version__}; "
          f"{time.perf_counter() - t0:.0f} s")
    summary = summarize(rows, truth, true_cv)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"summary": summary, "replicates": rows, "truth": truth,
                       "true_cv": true_cv, "lloq": a.lloq, "subjects": a.subjects,
                       "sigma_prop": a.sigma_prop, "seed": a.seed}, fh, indent=1,
                      default=float)


if __name__ == "__main__":
    main()
