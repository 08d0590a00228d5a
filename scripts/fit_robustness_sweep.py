"""Robustness sweep of the fit and forecast surfaces (issue 8): random VALID NONMEM-style data
sets (fixed seed) through ``ketasim fit`` (CLI, ``--json``) and ``fit_population`` (Python),
random one-patient files through ``ketasim forecast``, and MALFORMED files and hostile options
through both commands.

Checks, per the project rules: valid input gives exit 0, strictly valid JSON (no NaN/Infinity
tokens), finite estimates within the estimator's bounds, SEs finite or reported as unavailable
with a warning, intervals containing the estimate, forecast bands ordered lo ≤ median ≤ hi,
probabilities in [0, 1], the same output for the same seed (CLI against Python API). Bad input
gives exit code 2 and ONE line on stderr (``error: ...``) naming the field, and for data files
the row and the column where one is at fault; never a traceback.

Usage: ``python scripts/fit_robustness_sweep.py [--cases N] [--seed S] [--keep DIR]``:
``N`` random valid fit cases (and N//2 forecast cases; every malformed-file and hostile-option
case runs once). Prints one line per failure and a summary by class; exit status 1 if anything
failed. Cases over 60 s are reported as slow; a case over ``CASE_TIMEOUT_S`` is a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ketasim.cards import load_pk_cards
from ketasim.errors import KetasimError
from ketasim.fit import PKProblem, fit_population, read_dataset

CASE_TIMEOUT_S = 180
#: a file the eval-bait cells would create if anything evaluated them
PWNED = os.path.join(tempfile.gettempdir(), "ketasim_sweep_pwned")
VERBOSE = False
SLOW_S = 60
CARDS = {cid: c for cid, c in load_pk_cards().items() if c.species == "human"}
ROUTES = ("iv-infusion", "iv-bolus", "intranasal", "oral", "im")
#: parameters worth estimating (present on some card); others drawn now and then
TYPICAL = ("CL", "V1", "V2", "V", "Vc", "Q", "Q1", "Q2", "k10", "k12", "ka_in", "ka_oral", "ka")
QCOLS = ("DVID", "OBS", "QUANTITY", "OBSERVED", "DVNAME", "ANALYTE")
failures: Counter = Counter()
examples: dict[str, list[str]] = {}
stats: Counter = Counter()
slow: list[str] = []


def record(cls: str, desc: str) -> None:
    failures[cls] += 1
    examples.setdefault(cls, [])
    if len(examples[cls]) < 5:
        examples[cls].append(desc)
    print(f"FAIL [{cls}] {desc}", flush=True)


def strict_json(text: str) -> object:
    """Parse ``text`` as strict JSON (NaN/Infinity tokens are an error)."""
    def bad(tok: str) -> None:
        raise ValueError(f"non-standard JSON token {tok}")
    return json.loads(text, parse_constant=bad)


def cli(args: list[str], desc: str, kind: str) -> tuple[int, str, str] | None:
    """Run ``python -m ketasim ARGS``; a timeout is recorded as a hang."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "ketasim", *args], capture_output=True,
                           text=True, timeout=CASE_TIMEOUT_S, env={**os.environ, "COLUMNS": "200"})
    except subprocess.TimeoutExpired:
        record(f"{kind}: hang > {CASE_TIMEOUT_S}s", desc)
        return None
    dt = time.perf_counter() - t0
    stats[f"{kind} seconds"] += dt
    if dt > SLOW_S:
        slow.append(f"{dt:.0f}s {kind} {desc}")
        print(f"slow ({dt:.0f}s): {kind} {desc}", flush=True)
    return p.returncode, p.stdout, p.stderr


def check_error(kind: str, desc: str, rc: int, err: str, want: tuple[str, ...] = ()) -> None:
    """Exit 2, one ``error:`` line, no traceback, naming every string in ``want``."""
    lines = [x for x in err.splitlines() if x.strip()]
    if VERBOSE:
        print(f"  [{kind}] {desc} -> rc {rc}: {err.strip()[:300]}", flush=True)
    if "Traceback" in err:
        record(f"{kind}: traceback", f"{desc}: {lines[-1][:200] if lines else ''}")
    elif rc != 2:
        record(f"{kind}: exit {rc} (want 2)", f"{desc}: {err.strip()[:300]!r}")
    elif len(lines) != 1 or not lines[0].startswith("error: "):
        record(f"{kind}: not one error line", f"{desc}: {err.strip()[:300]!r}")
    else:
        missing = [w for w in want if w.lower() not in lines[0].lower()]
        if missing:
            record(f"{kind}: error does not name {missing}", f"{desc}: {lines[0][:300]}")


def finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


# ----------------------------------------------------------------------------- valid data
def rand_subject(rng, sid: int, card, routes: list[str], quantities: list[str], covs: dict,
                 qnames: dict) -> list[dict]:
    """Rows of one subject: doses, observations (times sorted) and covariates."""
    rows = []
    route = str(rng.choice(routes))
    n_dose = int(rng.choice([1, 1, 1, 2, 3]))
    dur = float(rng.choice([1 / 60, 40 / 60, 1.0, 4.0]))
    amt_total = float(rng.choice([0.5, 35.0, 70.0, float(10 ** rng.uniform(-3, 3))]))
    tau = float(rng.choice([0.0, 12.0, 24.0, 84.0]))
    use_addl = n_dose > 1 and tau > 0 and rng.random() < 0.4
    doses = []
    for k in range(1 if use_addl else n_dose):
        t = k * (tau or 0.0)
        rec = {"ID": sid, "TIME": t, "EVID": 1, "AMT": amt_total, "DV": ".", "MDV": 1,
               "RATE": 0.0}
        if route == "iv-infusion":
            rec["RATE"] = amt_total / dur
        if use_addl:
            rec["II"], rec["ADDL"] = tau, n_dose - 1
        rec["ROUTE"] = route if (route != "iv-infusion" and route != "iv-bolus"
                                 or rng.random() < 0.5) else ""
        doses.append(rec)
    last_dose = (n_dose - 1) * tau
    style = rng.choice(["sparse", "rich", "none", "all-mdv"], p=[0.3, 0.55, 0.075, 0.075])
    n_obs = {"sparse": int(rng.integers(1, 3)), "rich": int(rng.integers(5, 16)),
             "none": 0, "all-mdv": int(rng.integers(1, 4))}[style]
    grid = np.array([0.0, 1 / 12, 1 / 6, 0.5, 2 / 3, 1, 2, 4, 8, 12, 24, 48, 72, 168])
    grid = grid[grid <= max(24.0, last_dose + 72)]
    times = np.sort(rng.choice(grid, size=n_obs, replace=True))  # duplicates allowed
    if n_obs and rng.random() < 0.2:
        times = np.sort(np.concatenate([times, [last_dose]]))[:max(n_obs, 1)]
    obs = []
    for t in times:
        q = str(rng.choice(quantities))
        obs.append({"ID": sid, "TIME": float(t), "EVID": 0, "AMT": 0.0, "RATE": 0.0, "DV": 1.0,
                    "MDV": 1 if style == "all-mdv" else 0, "_q": q,
                    "DVID": qnames.get(q, q), "ROUTE": ""})
    # order as NONMEM: by time, a dose before an observation at the same time
    for rec in doses + obs:
        rec.update(covs)
        rows.append(rec)
    rows.sort(key=lambda r: (r["TIME"], 0 if r["EVID"] == 1 else 1))
    # an occasional MADRS score in a PK file (fit ignores it)
    if rng.random() < 0.1:
        rows.append({"ID": sid, "TIME": rows[-1]["TIME"], "EVID": 0, "AMT": 0, "RATE": 0,
                     "DV": float(rng.uniform(0, 60)), "MDV": 0, "_q": "madrs", "DVID": "madrs",
                     "ROUTE": "", **covs})
    return rows


def rand_covs(rng) -> dict:
    out = {}
    if rng.random() < 0.7:
        out["WT"] = float(rng.choice([0.5, 300.0, 70.0, float(rng.uniform(40, 130))]))
    if rng.random() < 0.5:
        out["AGE"] = float(rng.choice([0.0, 18.0, 45.0, 99.0]))
    if rng.random() < 0.5:
        out["SEX"] = str(rng.choice(["M", "F", "male", "female", "0", "1"]))
    if rng.random() < 0.3:
        out["RACE"] = str(rng.choice(["caucasian", "black", "asian"]))
    return out


def rand_dataset(rng, i: int) -> tuple[pd.DataFrame, dict]:
    cid = str(rng.choice(sorted(CARDS)))
    card = CARDS[cid]
    routes = [r for r in ROUTES if r in card.routes]
    k = int(rng.choice([1, 1, 2]))
    routes = [str(r) for r in rng.choice(routes, size=min(k, len(routes)), replace=False)]
    n = int(rng.choice([1, 2, 3, 5, 8, 12, 30, 60], p=[.12, .14, .16, .2, .16, .1, .07, .05]))
    probe = _has_metabolite(cid)
    quantities = ["plasma"] + (["metabolite"] if probe and rng.random() < 0.4 else [])
    qstyle = rng.choice(["none", "names", "codes", "aliases"])
    qnames = {"names": {}, "codes": {"plasma": "1", "metabolite": "2"},
              "aliases": {"plasma": "conc", "metabolite": "norketamine"},
              "none": {}}[str(qstyle)]
    rows = []
    for s in range(n):
        rows += rand_subject(rng, s + 1, card, routes, quantities, rand_covs(rng), qnames)
    df = pd.DataFrame(rows)
    for c in ("II", "ADDL"):
        if c in df.columns:
            df[c] = df[c].fillna(0)
    if qstyle == "none" and "metabolite" not in quantities and not (df["_q"] == "madrs").any():
        df = df.drop(columns=["DVID"])
    elif rng.random() < 0.3:
        df = df.rename(columns={"DVID": str(rng.choice(QCOLS[1:]))})
    if rng.random() < 0.2:  # lower-case headers are accepted
        df.columns = [c.lower() if c != "_q" else c for c in df.columns]
    estimate = [p for p in TYPICAL if p in card.parameters]
    m = int(rng.choice([1, 1, 2]))
    est = [str(e) for e in rng.choice(estimate, size=min(m, len(estimate)), replace=False)]
    if rng.random() < 0.1:
        est = [str(rng.choice(list(card.parameters)))]
    iiv = None if rng.random() < 0.6 else [str(rng.choice(est))]
    error = str(rng.choice(["proportional", "additive", "combined"]))
    method = str(rng.choice(["foce", "foce", "map"]))
    return df, {"model": cid, "estimate": est, "iiv": iiv, "error": error, "method": method,
                "routes": routes, "n": n}


_METAB: dict[str, bool] = {}


def _has_metabolite(cid: str) -> bool:
    if cid not in _METAB:
        from ketasim.pk.model import Covariates, assemble

        sysm = assemble(CARDS[cid], Covariates(), routes=("iv-bolus",) if "iv-bolus" in
                        CARDS[cid].routes else tuple(CARDS[cid].routes)[:1], n=1)
        _METAB[cid] = len(sysm.plasma) > 1
    return _METAB[cid]


def fill_dv(rng, df: pd.DataFrame, meta: dict, path: Path) -> bool:
    """Replace the placeholder DVs by the model's prediction with noise (or junk, now and
    then). False when the data set has nothing to fit (the sweep then expects a clean error)."""
    tmp = df.drop(columns=["_q"], errors="ignore")
    tmp.to_csv(path, index=False)
    ds = read_dataset(str(path))
    try:
        pr = PKProblem(meta["model"], ds, meta["estimate"], "combined")
    except KetasimError:
        return False
    rng_eta = rng.normal(0.0, 0.3, (pr.n, len(pr.estimate)))
    pr.iiv = list(pr.estimate)
    f = pr.predict(pr.theta0(), rng_eta)
    style = rng.choice(["model", "model", "model", "junk", "zero-some", "huge"])
    dvcol = next(c for c in df.columns if c.upper() == "DV")
    for i, s in enumerate(pr.subjects):
        k = int(pr.mask[i].sum())
        rows = s.rows[np.isin(s.obs_quantity, pr.quantities)][:k] - 1
        y = f[i, :k] * np.exp(0.15 * rng.standard_normal(k))
        if style == "junk":
            y = 10 ** rng.uniform(-3, 4, k)
        elif style == "zero-some":
            y = np.where(rng.random(k) < 0.3, 0.0, y)
        elif style == "huge":
            y = y * 1e6
        # the eigen-solution can give -1e-14 for a zero concentration: data are ≥ 0
        df.loc[df.index[rows], dvcol] = np.where(np.isfinite(y), np.maximum(y, 0.0), 0.0)
    meta["dv_style"] = str(style)
    return True


def check_fit_json(kind: str, desc: str, d: dict, meta: dict) -> None:
    warns = " ".join(d.get("warnings", []))
    card = CARDS[meta["model"]]
    if not finite(d.get("objective")):
        record(f"{kind}: objective not finite", f"{desc}: {d.get('objective')}")
    for k, e in {**d["estimates"], **d["residual_error"]}.items():
        v = e["value"]
        if not finite(v) or v <= 0:
            record(f"{kind}: estimate not finite/positive", f"{desc}: {k}={v}")
            continue
        if k in card.parameters:
            c = card.parameters[k].value
            if not c * np.exp(-5) * (1 - 1e-6) <= v <= c * np.exp(5) * (1 + 1e-6):
                record(f"{kind}: estimate outside bounds", f"{desc}: {k}={v} card {c}")
        se, ci = e["se"], e["ci95"]
        if se is None or ci[0] is None or ci[1] is None:
            unbounded = {n for w in d.get("warnings", []) if w.startswith("the 95% interval of")
                         for n in w.removeprefix("the 95% interval of ")
                         .split(" is unbounded")[0].split(", ")}
            if d["method"] != "MAP" and "no standard error" not in warns and k not in unbounded:
                record(f"{kind}: SE unavailable without a warning", f"{desc}: {k} se={se}")
        else:
            if not (finite(se) and se >= 0):
                record(f"{kind}: SE negative", f"{desc}: {k} se={se}")
            if not ci[0] <= v * (1 + 1e-9) and v <= ci[1] * (1 + 1e-9):
                record(f"{kind}: CI does not contain the estimate", f"{desc}: {k} {v} {ci}")
        cv = e.get("iiv_cv")
        if cv is not None and not (finite(cv) and cv >= 0):
            record(f"{kind}: IIV CV invalid", f"{desc}: {k} {cv}")
        cvci = e.get("iiv_cv_ci95")
        if cvci is not None and None not in cvci and cv is not None \
                and not cvci[0] <= cv * (1 + 1e-9) and cv <= cvci[1] * (1 + 1e-9):
            record(f"{kind}: IIV CI does not contain the CV", f"{desc}: {k} {cv} {cvci}")
    for sid, ests in d.get("individual", {}).items():
        for k, e in ests.items():
            if not finite(e["value"]) or e["value"] <= 0:
                record(f"{kind}: individual estimate invalid", f"{desc}: {sid} {k} {e}")


def fit_case(rng, i: int, work: Path) -> None:
    df, meta = rand_dataset(rng, i)
    path = work / f"fit{i}.csv"
    fittable = fill_dv(rng, df, meta, path)
    df.drop(columns=["_q"], errors="ignore").to_csv(path, index=False)
    desc = (f"fit#{i} model={meta['model']} routes={meta['routes']} n={meta['n']} "
            f"est={meta['estimate']} iiv={meta['iiv']} error={meta['error']} "
            f"method={meta['method']} dv={meta.get('dv_style')} file={path.name}")
    args = ["fit", str(path), "--model", meta["model"], "--estimate", ",".join(meta["estimate"]),
            "--error", meta["error"], "--method", meta["method"], "--json"]
    if meta["iiv"]:
        args += ["--iiv", ",".join(meta["iiv"])]
    r = cli(args, desc, "fit")
    stats["fit cases"] += 1
    if r is None:
        return
    rc, so, se = r
    if not fittable:  # nothing to fit (e.g. every subject all-MDV): a clean refusal
        check_error("fit-nothing-to-fit", desc, rc, se)
        stats["fit refused (nothing to fit)"] += 1
        return
    if rc != 0:
        lines = se.strip().splitlines()
        if rc == 2 and len(lines) == 1 and "proportional error model cannot fit" in lines[0] \
                and meta["error"] == "proportional" and "row" in lines[0]:
            stats["fit refused (concentration > 0 where the model predicts 0, proportional "
                  "error)"] += 1
            return
        if rc == 2 and len(lines) == 1 and "Traceback" not in se:
            stats["fit refused (valid input)"] += 1
            print(f"refused valid input: {desc}: {lines[0]}", flush=True)
            record("fit: valid input refused", f"{desc}: {lines[0][:300]}")
        else:
            record(f"fit: exit {rc}", f"{desc}: {lines[-1][:300] if lines else ''}")
        return
    try:
        d = strict_json(so)
    except ValueError as exc:
        record("fit: invalid JSON", f"{desc}: {exc}")
        return
    stats["fit ok"] += 1
    if d.get("warnings"):
        stats["fit with warnings"] += 1
    check_fit_json("fit", desc, d, meta)
    if i % 3 == 0:  # Python API, DataFrame in: the same fit
        try:
            _, res = fit_population(df.drop(columns=["_q"], errors="ignore"), meta["model"],
                                    meta["estimate"], meta["error"], meta["iiv"],
                                    meta["method"])
        except Exception as exc:  # noqa: BLE001
            record(f"fit-api: raw {type(exc).__name__}", f"{desc}: {exc}")
            return
        for k, e in res.estimates.items():
            a, b = e.value, d["estimates"][k]["value"]
            if not np.isclose(a, b, rtol=1e-9, atol=0):
                record("fit: API and CLI differ", f"{desc}: {k} {a} vs {b}")


# ----------------------------------------------------------------------------- forecast
def rand_patient(rng) -> tuple[pd.DataFrame, dict]:
    route, drug = [("iv-infusion", "ketamine"), ("iv-bolus", "ketamine"),
                   ("intranasal", "esketamine"), ("intranasal", "ketamine"),
                   ("oral", "ketamine"), ("im", "ketamine")][int(rng.integers(6))]
    n_dose = int(rng.choice([1, 1, 2, 4, 8]))
    tau = float(rng.choice([84.0, 168.0, 24.0]))
    amt = float(rng.choice([35.0, 56.0, 84.0, 0.01, 1000.0]))
    dur = 40 / 60
    rows = []
    covs = {}
    if rng.random() < 0.7:
        covs["WT"] = float(rng.choice([0.5, 300.0, 72.0]))
    if rng.random() < 0.5:
        covs["DISORDER"] = str(rng.choice(["trd", "mdd", "bipolar", "TRD"]))
    if rng.random() < 0.3:
        covs["SEX"] = str(rng.choice(["F", "M"]))
    for k in range(n_dose):
        rows.append({"ID": 7, "TIME": k * tau, "EVID": 1, "AMT": amt,
                     "RATE": amt / dur if route == "iv-infusion" else 0.0, "DV": "", "MDV": 1,
                     "DVID": "", "ROUTE": route, **covs})
    n_obs = int(rng.choice([1, 2, 4, 8, 12]))
    last = float(rng.choice([0.0, 72.0, 24 * 14.0, 24 * 60.0]))
    times = np.sort(np.round(rng.uniform(0, last, n_obs) / 24.0) * 24.0) if last else \
        np.zeros(n_obs)
    if rng.random() < 0.3:
        times[0] = 0.0
    style = rng.choice(["typical", "bounds", "flat"])
    for t in times:
        y = {"typical": float(np.clip(rng.normal(30, 10), 0, 60)),
             "bounds": float(rng.choice([0.0, 60.0])), "flat": 33.0}[str(style)]
        rows.append({"ID": 7, "TIME": float(t), "EVID": 0, "AMT": 0, "RATE": 0, "DV": y,
                     "MDV": 0, "DVID": rng.choice(["madrs", "3"]), "ROUTE": "", **covs})
    rows.sort(key=lambda r: (r["TIME"], 0 if r["EVID"] == 1 else 1))
    opts = {"days": float(rng.choice([1.0, 7.0, 28.0, 90.0, 365.0, 0.25])),
            "threshold": rng.choice([None, None, 0.5, 22.0, 59.5]),
            "probability": float(rng.choice([0.8, 0.5, 0.001, 0.999])),
            "drug": drug, "seed": int(rng.integers(0, 2**31)), "steps": 100}
    return pd.DataFrame(rows), {**opts, "route": route, "n_dose": n_dose, "amt": amt,
                                "style": str(style), "last": last}


def check_forecast(kind: str, desc: str, d: dict) -> None:
    day = np.array(d["time_day"], float)
    med = np.array(d["madrs_median"], dtype=float)
    lo = np.array(d["madrs_lo80"], dtype=float)
    hi = np.array(d["madrs_hi80"], dtype=float)
    for name, a in (("median", med), ("lo80", lo), ("hi80", hi)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a > 60):
            record(f"{kind}: {name} outside 0–60 or not finite", desc)
    if not (np.all(lo <= med + 1e-9) and np.all(med <= hi + 1e-9)):
        record(f"{kind}: band not ordered", desc)
    if np.any(np.diff(day) <= 0):
        record(f"{kind}: days not increasing", desc)
    for name in ("p_response", "p_relapse_by"):
        p = np.array(d[name], dtype=float)
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
            record(f"{kind}: {name} outside [0, 1]", desc)
    pr = np.array(d["p_relapse_by"], dtype=float)
    if np.any(np.diff(pr) < -1e-12):
        record(f"{kind}: p_relapse_by decreases", desc)
    nd = d["next_dose_latest_day"]
    if nd is not None and not (finite(nd) and nd >= d["metadata"]["last_observation_day"] - 1e-9):
        record(f"{kind}: next dose day before the last observation", f"{desc}: {nd}")
    for k, v in d["posterior"].items():
        if not finite(v["median"]):
            record(f"{kind}: posterior {k} not finite", desc)


def forecast_case(rng, i: int, work: Path) -> None:
    df, o = rand_patient(rng)
    path = work / f"patient{i}.csv"
    df.to_csv(path, index=False)
    desc = (f"forecast#{i} route={o['route']} drug={o['drug']} doses={o['n_dose']}x{o['amt']}mg "
            f"obs={o['style']} last={o['last']}h days={o['days']} thr={o['threshold']} "
            f"p={o['probability']} seed={o['seed']} file={path.name}")
    args = ["forecast", str(path), "--days", str(o["days"]), "--probability",
            str(o["probability"]), "--drug", o["drug"], "--seed", str(o["seed"]), "--steps",
            str(o["steps"]), "--json"]
    if o["threshold"] is not None:
        args += ["--threshold", str(o["threshold"])]
    r = cli(args, desc, "forecast")
    stats["forecast cases"] += 1
    if r is None:
        return
    rc, so, se = r
    if rc != 0:
        lines = se.strip().splitlines()
        if rc == 2 and len(lines) == 1 and "Traceback" not in se:
            stats["forecast refused"] += 1
            print(f"refused forecast: {desc}: {lines[0]}", flush=True)
        else:
            record(f"forecast: exit {rc}", f"{desc}: {lines[-1][:300] if lines else ''}")
        return
    try:
        d = strict_json(so)
    except ValueError as exc:
        record("forecast: invalid JSON", f"{desc}: {exc}")
        return
    stats["forecast ok"] += 1
    check_forecast("forecast", desc, d)
    if i % 4 == 0:  # same seed, same output (a second CLI run)
        r2 = cli(args, desc, "forecast")
        if r2 is not None and r2[1] != so:
            a, b = strict_json(so), strict_json(r2[1])
            a.pop("diagnostics", None), b.pop("diagnostics", None)
            a["metadata"].pop("elapsed_s", None), b["metadata"].pop("elapsed_s", None)
            if a != b:
                record("forecast: same seed, different output", desc)


# ---------------------------------------------------------------------------- malformed
BASE = ("ID,TIME,EVID,AMT,RATE,DV,MDV,DVID,WT\n"
        "1,0,1,35,52.5,,1,,70\n"
        "1,0.5,0,0,0,150,0,plasma,70\n"
        "1,2,0,0,0,60,0,plasma,70\n"
        "2,0,1,40,60,,1,,80\n"
        "2,1,0,0,0,120,0,plasma,80\n"
        "2,4,0,0,0,30,0,plasma,80\n")
PATIENT = ("ID,TIME,EVID,AMT,RATE,DV,MDV,DVID,WT\n"
           "1,0,1,35,52.5,,1,,70\n"
           "1,0,0,0,0,34,0,madrs,70\n"
           "1,24,0,0,0,18,0,madrs,70\n")


def _sub(text: str, line: int, col: str, value: str) -> str:
    """``text`` with cell (file line ``line``, column ``col``) set to ``value``."""
    lines = text.splitlines()
    head = lines[0].split(",")
    cells = lines[line].split(",")
    cells[head.index(col)] = value
    lines[line] = ",".join(cells)
    return "\n".join(lines) + "\n"


def malformed_cases() -> list[tuple[str, bytes, tuple[str, ...]]]:
    """(description, file bytes, strings the one-line error must contain)."""
    c: list[tuple[str, str | bytes, tuple[str, ...]]] = [
        ("missing DV column", BASE.replace(",DV,", ",XX,"), ("DV",)),
        ("missing ID column", "\n".join(",".join(x.split(",")[1:])
                                        for x in BASE.splitlines()) + "\n", ("ID",)),
        ("non-numeric DV", _sub(BASE, 2, "DV", "abc"), ("row 2", "DV")),
        ("non-numeric TIME", _sub(BASE, 3, "TIME", "2h"), ("row 3", "TIME")),
        ("non-numeric AMT", _sub(BASE, 1, "AMT", "35mg"), ("row 1", "AMT")),
        ("non-numeric WT", _sub(BASE, 1, "WT", "heavy"), ("row 1", "WT")),
        ("non-numeric ID", _sub(BASE, 2, "ID", "x"), ("row 2", "ID")),
        ("non-numeric EVID", _sub(BASE, 2, "EVID", "obs"), ("row 2", "EVID")),
        ("non-numeric RATE", _sub(BASE, 1, "RATE", "fast"), ("row 1", "RATE")),
        ("non-numeric MDV", _sub(BASE, 2, "MDV", "no"), ("row 2", "MDV")),
        ("negative AMT", _sub(BASE, 1, "AMT", "-35"), ("row 1", "AMT")),
        ("zero AMT dose", _sub(BASE, 1, "AMT", "0"), ("row 1", "AMT")),
        ("dose without AMT", _sub(BASE, 1, "AMT", ""), ("row 1", "AMT")),
        ("negative RATE", _sub(BASE, 1, "RATE", "-2"), ("row 1", "RATE")),
        ("negative TIME", _sub(BASE, 2, "TIME", "-1"), ("row 2", "TIME")),
        ("TIME decreasing within ID", _sub(BASE, 3, "TIME", "0.25"), ("row 3", "TIME")),
        ("EVID 7", _sub(BASE, 2, "EVID", "7"), ("row 2", "EVID")),
        ("EVID 0.5", _sub(BASE, 2, "EVID", "0.5"), ("row 2", "EVID")),
        ("fractional ID", _sub(BASE, 2, "ID", "1.5"), ("row 2", "ID")),
        ("observation without DV", _sub(BASE, 2, "DV", ""), ("row 2", "DV")),
        ("DV nan string", _sub(BASE, 2, "DV", "nan"), ("row 2", "DV")),
        ("DV NaN string", _sub(BASE, 2, "DV", "NaN"), ("row 2", "DV")),
        ("DV inf string", _sub(BASE, 2, "DV", "inf"), ("row 2", "DV")),
        ("DV -Infinity string", _sub(BASE, 2, "DV", "-Infinity"), ("row 2", "DV")),
        ("DV negative concentration", _sub(BASE, 2, "DV", "-5"), ("row 2", "DV")),
        ("DV 1e400", _sub(BASE, 2, "DV", "1e400"), ("row 2", "DV")),
        ("TIME inf", _sub(BASE, 2, "TIME", "inf"), ("row 2", "TIME")),
        ("TIME NaN", _sub(BASE, 2, "TIME", "NaN"), ("row 2", "TIME")),
        ("TIME 1e308", _sub(BASE, 3, "TIME", "1e308"), ("row 3", "TIME")),
        ("AMT inf", _sub(BASE, 1, "AMT", "inf"), ("row 1", "AMT")),
        ("AMT nan", _sub(BASE, 1, "AMT", "nan"), ("row 1", "AMT")),
        ("AMT 1e12", _sub(BASE, 1, "AMT", "1e12"), ("row 1", "AMT")),
        ("RATE inf", _sub(BASE, 1, "RATE", "inf"), ("row 1", "RATE")),
        ("RATE 1e-300", _sub(BASE, 1, "RATE", "1e-300"), ("row 1", "RATE")),
        ("RATE 1e300", _sub(BASE, 1, "RATE", "1e300"), ()),
        ("WT inf", _sub(BASE, 1, "WT", "inf"), ("row 1", "WT")),
        ("WT nan", _sub(BASE, 1, "WT", "nan"), ()),
        ("WT 0", _sub(BASE, 1, "WT", "0"), ("row 1", "WT")),
        ("WT -70", _sub(BASE, 1, "WT", "-70"), ("row 1", "WT")),
        ("WT 1e6", _sub(BASE, 1, "WT", "1e6"), ("row 1", "WT")),
        ("ID inf", _sub(BASE, 2, "ID", "inf"), ("row 2", "ID")),
        ("ID 1e300", _sub(BASE, 2, "ID", "1e300"), ("row 2", "ID")),
        ("ID -1", _sub(BASE, 2, "ID", "-1"), ()),
        ("empty file", "", ()),
        ("header only", BASE.splitlines()[0] + "\n", ()),
        ("blank lines only", "\n\n\n", ()),
        ("BOM", "\ufeff" + BASE, ()),
        ("very long line", BASE.replace("plasma,70\n", "plasma," + "7" * 200000 + "\n", 1),
         ("WT",)),
        ("very long header", "X" * 100000 + "," + BASE, ()),
        ("unknown observation name", _sub(BASE, 2, "DVID", "urine"), ("row 2", "DVID")),
        ("observation code 9", _sub(BASE, 2, "DVID", "9"), ("row 2", "DVID")),
        ("observation code 0", _sub(BASE, 2, "DVID", "0"), ("row 2", "DVID")),
        ("duplicate DV column", BASE.replace("DVID,WT", "DVID,DV").replace(",70\n", ",1\n")
         .replace(",80\n", ",1\n"), ("DV",)),
        ("duplicate column case", BASE.replace("DVID,WT", "DVID,dv"), ("DV",)),
        ("ragged row (extra cell)", BASE.replace("1,2,0,0,0,60,0,plasma,70",
                                                 "1,2,0,0,0,60,0,plasma,70,9,9"), ()),
        ("ragged row (short)", BASE.replace("1,2,0,0,0,60,0,plasma,70", "1,2,0"), ()),
        ("unterminated quote", BASE.replace("plasma,70\n", '"plasma,70\n', 1), ()),
        ("binary junk", b"\x00\x01\x02\xff\xfe" * 50, ()),
        ("latin-1 bytes", BASE.replace("plasma", "pl\xe4sma", 1).encode("latin-1"), ()),
        ("semicolon separated", BASE.replace(",", ";"), ()),
        ("eval bait in DV", _sub(BASE, 2, "DV", f"__import__('pathlib').Path('{PWNED}').touch()"),
         ("row 2", "DV")),
        ("formula in DV", _sub(BASE, 2, "DV", "=1+1"), ("row 2", "DV")),
        ("ADDL without II", _sub(BASE, 1, "RATE", "52.5").replace("DVID,WT", "DVID,WT,ADDL")
         .replace(",70\n", ",70,0\n", 1).replace("1,0,1,35,52.5,,1,,70,0",
                                                 "1,0,1,35,52.5,,1,,70,3"), ("row 1", "ADDL")),
        ("ADDL 1e9", BASE.replace("DVID,WT", "DVID,WT,II,ADDL").replace(
            "1,0,1,35,52.5,,1,,70", "1,0,1,35,52.5,,1,,70,1,1000000000"), ("row 1", "ADDL")),
        ("ADDL 5000 (memory)", BASE.replace("DVID,WT", "DVID,WT,II,ADDL").replace(
            "1,0,1,35,52.5,,1,,70", "1,0,1,35,52.5,,1,,70,0.001,9999"), ()),
        ("ADDL 2.5", BASE.replace("DVID,WT", "DVID,WT,II,ADDL").replace(
            "1,0,1,35,52.5,,1,,70", "1,0,1,35,52.5,,1,,70,12,2.5"), ("row 1", "ADDL")),
        ("II negative", BASE.replace("DVID,WT", "DVID,WT,II,ADDL").replace(
            "1,0,1,35,52.5,,1,,70", "1,0,1,35,52.5,,1,,70,-12,2"), ("row 1",)),
        ("unknown ROUTE", BASE.replace("DVID,WT", "DVID,WT,ROUTE").replace(
            ",70\n", ",70,\n").replace("1,0,1,35,52.5,,1,,70,", "1,0,1,35,0,,1,,70,eyedrops"),
         ("row 1", "ROUTE")),
        ("ROUTE iv-infusion with RATE 0", BASE.replace("DVID,WT", "DVID,WT,ROUTE").replace(
            ",70\n", ",70,\n").replace("1,0,1,35,52.5,,1,,70,", "1,0,1,35,0,,1,,70,iv-infusion"),
         ("row 1", "RATE")),
        ("unknown SEX", BASE.replace("DVID,WT", "DVID,WT,SEX").replace(",70\n", ",70,x\n"),
         ("SEX",)),
        ("unknown RACE", BASE.replace("DVID,WT", "DVID,WT,RACE").replace(",70\n", ",70,martian\n"),
         ("RACE",)),
        ("AGE -5", BASE.replace("DVID,WT", "DVID,WT,AGE").replace(",70\n", ",70,-5\n"),
         ("AGE",)),
        ("AGE inf", BASE.replace("DVID,WT", "DVID,WT,AGE").replace(",70\n", ",70,inf\n"),
         ("AGE",)),
        ("AGE 1e9", BASE.replace("DVID,WT", "DVID,WT,AGE").replace(",70\n", ",70,1e9\n"),
         ("AGE",)),
        ("metabolite on a model without one", _sub(BASE, 2, "DVID", "metabolite"), ()),
        ("only MADRS observations", BASE.replace("plasma", "madrs").replace(",150,", ",30,")
         .replace(",120,", ",30,"), ()),
        ("every observation MDV 1", BASE.replace(",0,plasma", ",1,plasma"), ()),
        ("no dose at all", "ID,TIME,EVID,AMT,DV\n1,1,0,0,100\n1,2,0,0,50\n", ("row 1", "DV")),
        ("pre-dose concentration", "ID,TIME,EVID,AMT,RATE,DV\n1,0,0,0,0,5\n1,0,1,35,52.5,\n"
         "1,1,0,0,0,100\n", ("row 1", "DV")),
        ("EVID 2 rows only", "ID,TIME,EVID,AMT,DV\n1,1,2,0,\n", ()),
        ("EVID 3 reset", BASE.replace("1,2,0,0,0,60,0,plasma,70", "1,2,3,0,0,,1,,70"), ()),
        ("EVID 4 dose without AMT", _sub(_sub(BASE, 1, "EVID", "4"), 1, "AMT", ""),
         ("row 1", "AMT")),
        ("CRLF line ends", BASE.replace("\n", "\r\n"), ()),
        ("quoted cells", BASE.replace("plasma", '"plasma"'), ()),
        ("whitespace cells", BASE.replace(",", " , "), ()),
        ("100k rows", BASE + "".join(f"3,{k},0,0,0,1,0,plasma,70\n" for k in range(100000)),
         ()),
        ("3000 IDs", "ID,TIME,EVID,AMT,RATE,DV,MDV\n" + "".join(
            f"{k},0,1,35,52.5,,1\n{k},1,0,0,0,100,0\n" for k in range(1, 3001)), ()),
    ]
    out = []
    for desc, text, want in c:
        out.append((desc, text if isinstance(text, bytes) else text.encode("utf-8"), want))
    return out


#: malformed cases that are valid after all (the reader accepts them): exit 0 is fine
MAY_PASS = {"BOM", "CRLF line ends", "quoted cells", "whitespace cells", "ID -1", "WT nan",
            "EVID 3 reset", "100k rows", "RATE 1e300", "very long header",
            "ragged row (short)", "3000 IDs", "latin-1 bytes", "ADDL 5000 (memory)",
            "metabolite on a model without one"}


def malformed_case(desc: str, data: bytes, want: tuple[str, ...], work: Path, k: int,
                   command: str) -> None:
    path = work / f"bad{k}_{command}.csv"
    path.write_bytes(data)
    if command == "fit":
        args = ["fit", str(path), "--model", "kamp2020", "--estimate", "CL", "--json"]
    else:
        args = ["forecast", str(path), "--steps", "100", "--json"]
    r = cli(args, f"{command} malformed: {desc}", "malformed")
    stats["malformed cases"] += 1
    if r is None:
        return
    rc, so, se = r
    if rc == 0:
        if desc not in MAY_PASS and command == "fit":
            record("malformed: accepted", f"{command} {desc}")
        try:
            strict_json(so)
        except ValueError as exc:
            record("malformed: invalid JSON", f"{command} {desc}: {exc}")
        stats["malformed accepted (ok)"] += 1
        return
    check_error("malformed", f"{command} {desc}", rc, se, want if command == "fit" else
                tuple(w for w in want if not w.startswith("row")))
    if os.path.exists(PWNED):
        record("malformed: eval of user input", desc)
        os.remove(PWNED)


def _one(work: Path) -> str:
    """A one-patient file with plasma concentrations only (no MADRS)."""
    path = work / "plasma_only.csv"
    path.write_text("\n".join(BASE.splitlines()[:4]) + "\n")
    return str(path)


def hostile_options(work: Path) -> list[tuple[str, list[str], tuple[str, ...]]]:
    good = work / "good.csv"
    good.write_text(BASE)
    pat = work / "pat.csv"
    pat.write_text(PATIENT)
    g, p = str(good), str(pat)
    f = ["fit", g, "--model", "kamp2020"]
    fc = ["forecast", p, "--steps", "100"]
    return [
        ("unknown --estimate name", f + ["--estimate", "XX"], ("estimate",)),
        ("eval bait --estimate", f + ["--estimate", "__import__('os').getcwd()"],
         ("estimate",)),
        ("empty --estimate", f + ["--estimate", ","], ("estimate",)),
        ("duplicate --estimate", f + ["--estimate", "CL,CL"], ("estimate",)),
        ("--estimate case", f + ["--estimate", "cl"], ("estimate",)),
        ("--iiv not estimated", f + ["--estimate", "CL", "--iiv", "V1"], ("iiv",)),
        ("--iiv unknown", f + ["--estimate", "CL", "--iiv", "ZZ"], ("iiv",)),
        ("--error unknown", f + ["--estimate", "CL", "--error", "exponential"], ("error",)),
        ("--method unknown", f + ["--estimate", "CL", "--method", "saem"], ("method",)),
        ("--model unknown", ["fit", g, "--model", "nope", "--estimate", "CL"], ("model",)),
        ("--workers 0", f + ["--estimate", "CL", "--workers", "0"], ("workers",)),
        ("--workers 1e9", f + ["--estimate", "CL", "--workers", "1000000000"], ("workers",)),
        ("--workers nan", f + ["--estimate", "CL", "--workers", "nan"], ("workers",)),
        ("--seed -1", f + ["--estimate", "CL", "--seed", "-1"], ("seed",)),
        ("--report in missing dir", f + ["--estimate", "CL", "--report", "/nonexistent/x.html"],
         ("report",)),
        ("missing data file", ["fit", str(work / "nope.csv"), "--model", "kamp2020",
                               "--estimate", "CL"], ("nope.csv",)),
        ("data is a directory", ["fit", str(work), "--model", "kamp2020", "--estimate", "CL"],
         ()),
        ("missing --model", ["fit", g, "--estimate", "CL"], ("model",)),
        ("forecast --days nan", fc + ["--days", "nan"], ("days",)),
        ("forecast --days inf", fc + ["--days", "inf"], ("days",)),
        ("forecast --days -1", fc + ["--days", "-1"], ("days",)),
        ("forecast --days 0", fc + ["--days", "0"], ("days",)),
        ("forecast --days 1e9", fc + ["--days", "1e9"], ("days",)),
        ("forecast --probability nan", fc + ["--probability", "nan"], ("probability",)),
        ("forecast --probability 1", fc + ["--probability", "1"], ("probability",)),
        ("forecast --probability -0.1", fc + ["--probability", "-0.1"], ("probability",)),
        ("forecast --threshold nan", fc + ["--threshold", "nan"], ("threshold",)),
        ("forecast --threshold inf", fc + ["--threshold", "inf"], ("threshold",)),
        ("forecast --threshold 0", fc + ["--threshold", "0"], ("threshold",)),
        ("forecast --threshold 61", fc + ["--threshold", "61"], ("threshold",)),
        ("forecast --drug memantine", fc + ["--drug", "memantine"], ("drug",)),
        ("forecast --model nope", fc + ["--model", "nope"], ("model",)),
        ("forecast --model mouse-ip", fc + ["--model", "mouse-ip"], ()),
        ("forecast --model memantine-label", fc + ["--model", "memantine-label"], ()),
        ("forecast --steps 5", ["forecast", p, "--steps", "5"], ("steps",)),
        ("forecast --steps 1e9", ["forecast", p, "--steps", "1000000000"], ("steps",)),
        ("forecast --seed 2^64", fc + ["--seed", str(2**64)], ("seed",)),
        ("forecast two patients", ["forecast", g, "--steps", "100"], ("data",)),
        ("forecast no MADRS", ["forecast", _one(work), "--steps", "100"], ("madrs",)),
    ]


def hostile_case(desc: str, args: list[str], want: tuple[str, ...]) -> None:
    r = cli([*args, "--json"] if "--json" not in args else args, desc, "hostile")
    stats["hostile-option cases"] += 1
    if r is None:
        return
    rc, so, se = r
    check_error("hostile", desc, rc, se, want)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=60, help="random valid fit cases")
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--keep", default=None, help="keep the generated files in this folder")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: "
                    "fit,forecast,malformed,hostile")
    ap.add_argument("--verbose", action="store_true", help="print every error line")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    skip = set(filter(None, args.skip.split(",")))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "malformed" not in skip:
            cases = malformed_cases()
            for k, (desc, data, want) in enumerate(cases):
                malformed_case(desc, data, want, work, k, "fit")
            for k, (desc, data, want) in enumerate(cases):
                if "DV" not in want:
                    malformed_case(desc, data, want, work, k, "forecast")
            print(f"malformed done {time.perf_counter() - t0:.0f}s", flush=True)
        if "hostile" not in skip:
            for desc, a, want in hostile_options(work):
                hostile_case(desc, a, want)
            print(f"hostile done {time.perf_counter() - t0:.0f}s", flush=True)
        if "fit" not in skip:
            for i in range(args.cases):
                fit_case(rng, i, work)
            print(f"fit done {time.perf_counter() - t0:.0f}s", flush=True)
        if "forecast" not in skip:
            for i in range(max(args.cases // 2, 1)):
                forecast_case(rng, i, work)
            print(f"forecast done {time.perf_counter() - t0:.0f}s", flush=True)
    print("\nstatistics:")
    for k, v in sorted(stats.items()):
        print(f"  {k}: {v:.0f}" if isinstance(v, float) else f"  {k}: {v}")
    if slow:
        print(f"slow cases (> {SLOW_S}s):")
        for s in slow:
            print(f"  {s[:300]}")
    print("\nfailures by class:")
    for cls, n in failures.most_common():
        print(f"  {n:4d}  {cls}")
        for e in examples[cls]:
            print(f"        e.g. {e[:400]}")
    print(f"total failures: {sum(failures.values())}; wall {time.perf_counter() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
