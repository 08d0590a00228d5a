"""Exact-posterior oracle for the forecast band's calibration (docs/fit.md).

For the patients of ``ketasim.fit.forecast.calibration_study`` (one 0.5 mg/kg infusion, MADRS
observed on days 0-3, days 7, 10, 14, 21, 28 held out), the posterior predictive band is
computed without MCMC: given (eta_E, eta_P) the latent score is linear in the baseline B, so B
is integrated analytically (Gaussian prior and likelihood) and (eta_E, eta_P) are summed over
the emulator's own grid; patients with a day-0-3 score at 0 or 60 get a brute-force 3-D grid
with the Tobit likelihood. Prints the band's coverage of the held-out scores, the expected
coverage (the held-out noise integrated out given the true latent score) and PIT deciles.

Usage: PYTHONPATH=src .venv/bin/python scripts/forecast_oracle.py N SEED [sim|model]
  sim   (default) the simulator's patients, as calibration_study draws them
  model data drawn from the forecast's own prior and emulator (checks the oracle itself)
Writes forecast_oracle_<mode>_<N>_<SEED>.json in the current folder.
"""

import dataclasses
import json
import sys
import time

import numpy as np
import pandas as pd
from scipy.special import log_ndtr, ndtr

from ketasim.cards import load_param_card
from ketasim.fit.data import read_dataset
from ketasim.fit.forecast import ETA_GRID, build_emulator
from ketasim.mood import simulate_patient
from ketasim.population import sample_patient
from ketasim.scenario import ArmSpec, PopulationSpec
from ketasim.units import parse_dose

c = load_param_card("clinic")
sig = c.value("residual_sd")
bsd = c.value("madrs_baseline_sd")
n = int(sys.argv[1])
seed = int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "sim"
arm = ArmSpec(name="k", drug="ketamine", route="iv-infusion", dose="0.5 mg/kg", duration="40 min")
spec = PopulationSpec(seed=seed)
visits = np.array([0, 1, 2, 3, 7, 10, 14, 21, 28], float) * 24
nobs = 4
eg = ETA_GRID
lpe = -0.5 * eg**2 + np.log(np.gradient(eg))
out = []
ncens = 0
t0 = time.time()


def quants(wf, mu, sd, ps=(0.1, 0.9)):
    """mu, sd: (K, V); returns (len(ps), V) quantiles of the mixture."""
    ps = np.asarray(ps)[:, None]
    a = np.full((len(ps), mu.shape[1]), -80.0)
    b = np.full_like(a, 140.0)
    for _ in range(28):
        mid = 0.5 * (a + b)
        F = np.einsum("k,qkv->qv", wf, ndtr((mid[:, None, :] - mu[None]) / sd[None]))
        lo_ = F < ps
        a = np.where(lo_, mid, a)
        b = np.where(lo_, b, mid)
    return 0.5 * (a + b)


for i in range(n):
    pt = sample_patient(spec, 0, i)
    bmean = c.value(f"madrs_baseline_{pt.disorder}")
    if mode == "sim":
        y = simulate_patient(arm, pt, visits)["madrs"]
        ptrue = (pt.baseline_madrs, pt.eta_emax, pt.eta_placebo)
        truelat = simulate_patient(
            arm, dataclasses.replace(pt, residual=np.zeros_like(pt.residual)), visits
        )["madrs"]
    amt = parse_dose("0.5 mg/kg").mg(pt.weight_kg)
    recs = [
        dict(
            ID=1,
            TIME=0.0,
            EVID=1,
            AMT=amt,
            RATE=amt / (40 / 60),
            DV=np.nan,
            MDV=1,
            DVID="",
            WT=pt.weight_kg,
            DISORDER=pt.disorder,
        )
    ]
    recs += [
        dict(
            ID=1,
            TIME=t,
            EVID=0,
            AMT=0.0,
            RATE=0.0,
            DV=10.0,
            MDV=0,
            DVID="madrs",
            WT=pt.weight_kg,
            DISORDER=pt.disorder,
        )
        for t in visits[:nobs]
    ]
    em = build_emulator(read_dataset(pd.DataFrame(recs), source="p").subjects[0], visits)
    if mode == "model":
        rng = np.random.default_rng([seed, i])
        B = bmean + bsd * rng.standard_normal()
        ee, ep = rng.standard_normal(2)
        lt = em.latent(np.array([B]), np.array([ee]), np.array([ep]))[0]
        truelat = lt
        ptrue = (B, ee, ep)
        y = np.clip(lt + sig * rng.standard_normal(len(visits)), 0, 60)
    core = (1 - em.drug)[:, None, :] * (1 - em.placebo)[None, :, :] * em.background  # (E,P,V)
    cens = bool(np.any(y[:nobs] <= 0) or np.any(y[:nobs] >= 60))
    if not cens:
        co = core[..., :nobs]
        yo = y[:nobs]
        cc = (co * co).sum(-1)
        cy = (co * yo).sum(-1)
        r = yo - bmean * co
        cr = (co * r).sum(-1)
        rr = (r * r).sum(-1)
        k = bsd**2 / (sig**2 + bsd**2 * cc)
        lp = (
            -0.5 * ((rr - k * cr**2) / sig**2 + np.log1p(bsd**2 * cc / sig**2))
            + lpe[:, None]
            + lpe[None, :]
        )
        prec = 1 / bsd**2 + cc / sig**2
        mB = (bmean / bsd**2 + cy / sig**2) / prec
        w = np.exp(lp - lp.max())
        w /= w.sum()
        wf = w.ravel()
        keep = wf > 1e-9 * wf.max()
        wf = wf[keep] / wf[keep].sum()
        cf = core.reshape(-1, core.shape[-1])[keep][:, nobs:]
        mu = mB.ravel()[keep][:, None] * cf
        sd = np.sqrt(cf**2 / prec.ravel()[keep][:, None] + sig**2)
        postB = float((wf * mB.ravel()[keep]).sum())
        EE, PP = np.meshgrid(eg, eg, indexing="ij")
        tB = np.array(ptrue[0])
        pitB = float((wf * ndtr((tB - mB.ravel()[keep]) * np.sqrt(prec.ravel()[keep]))).sum())
        pitE = float(wf[EE.ravel()[keep] <= ptrue[1]].sum())
        pitP = float(wf[PP.ravel()[keep] <= ptrue[2]].sum())
    else:  # Tobit observation(s): brute-force grid over (B, eta_E, eta_P), eta spacing 0.1
        sel = np.arange(0, len(eg), 2)
        c2 = core[sel][:, sel]
        Bg = np.linspace(bmean - 7 * bsd, bmean + 7 * bsd, 201)
        Bg = Bg[Bg > 0]
        f = Bg[:, None, None, None] * c2[None, ..., :nobs]
        z = (y[:nobs] - f) / sig
        ll = np.where(
            y[:nobs] <= 0, log_ndtr(z), np.where(y[:nobs] >= 60, log_ndtr(-z), -0.5 * z * z)
        ).sum(-1)
        lp = (
            ll
            - 0.5 * ((Bg - bmean) / bsd)[:, None, None] ** 2
            + lpe[sel][None, :, None]
            + lpe[sel][None, None, :]
        )
        w = np.exp(lp - lp.max())
        w /= w.sum()
        wf = w.ravel()
        keep = wf > 1e-9 * wf.max()
        wf = wf[keep] / wf[keep].sum()
        mu = (Bg[:, None, None, None] * c2[None, ..., nobs:]).reshape(-1, len(visits) - nobs)[keep]
        sd = np.full_like(mu, sig)
        postB = float((wf * np.broadcast_to(Bg[:, None, None], w.shape).ravel()[keep]).sum())
        pitB = pitE = pitP = None
    Q = np.clip(quants(wf, mu, sd), 0, 60)
    rec = {
        "patient": i,
        "B": pt.baseline_madrs,
        "ee": pt.eta_emax,
        "ep": pt.eta_placebo,
        "postB": postB,
        "pit_params": [pitB, pitE, pitP],
        "cens": cens,
        "rows": [],
    }
    for j, v in enumerate(range(nobs, len(visits))):
        lo, hi = Q[0, j], Q[1, j]
        yy = float(y[v])
        lt = float(truelat[v])
        # expected coverage over the held-out visit noise (clip: y=0 if lat+e<=0)
        ecov = (
            float(ndtr((hi - lt) / sig) - (ndtr((lo - lt) / sig) if lo > 0 else 0.0))
            if hi < 60
            else float(1 - ndtr((lo - lt) / sig))
        )
        rec["rows"].append(
            {
                "day": visits[v] / 24,
                "y": yy,
                "lo": float(lo),
                "hi": float(hi),
                "pit": float((wf * ndtr((yy - mu[:, j]) / sd[:, j])).sum()),
                "inside": bool(lo <= yy <= hi),
                "ecov": ecov,
                "lat": lt,
            }
        )
    out.append(rec)
rows = [r for p in out for r in p["rows"]]
pit = np.array([r["pit"] for r in rows])
print(
    mode,
    n,
    seed,
    "exact coverage",
    round(np.mean([r["inside"] for r in rows]), 4),
    "of",
    len(rows),
    "censored-obs patients",
    sum(p["cens"] for p in out),
    "time",
    round(time.time() - t0, 1),
)
print("expected coverage (held-out noise integrated)", round(np.mean([r["ecov"] for r in rows]), 4))
print("PIT deciles", np.histogram(pit, bins=np.linspace(0, 1, 11))[0])
for d in [7, 10, 14, 21, 28]:
    rr_ = [r for r in rows if r["day"] == d]
    print(
        " day",
        d,
        "cov",
        round(np.mean([r["inside"] for r in rr_]), 3),
        "lowmiss",
        np.mean([r["y"] < r["lo"] for r in rr_]).round(3),
        "highmiss",
        np.mean([r["y"] > r["hi"] for r in rr_]).round(3),
    )
with open(f"forecast_oracle_{mode}_{n}_{seed}.json", "w", encoding="utf-8") as fh:
    json.dump(out, fh)
