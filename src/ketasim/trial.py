"""Virtual trials: arms of virtual patients, chunked execution and endpoint statistics.

``run_trial(scenario)`` samples every arm's patients (per-patient seeds, see
:mod:`ketasim.population`), simulates them in chunks through an executor (``"serial"`` or
``"processes"``) and returns a :class:`TrialResult`: the long table (one row per patient and
visit, plus a baseline row at t = 0 whose score is the patient's baseline) and the summary.

Because each patient's draws depend only on ``(seed, arm_index, patient_index)``, the results
do not depend on the chunk size, on the executor or on the order in which chunks finish.

Endpoint definitions (on the scale named in ``endpoints.scale``; baseline = the t = 0 score):

* change = score − baseline; its 95 % CI is t-based;
* response: score ≤ (1 − response_fraction) × baseline; remission: score ≤ threshold (MADRS 10,
  HAM-D17 7, HAM-D6 4 unless ``endpoints.remission_threshold``);
* dissociation incidence: CADSS ≥ 4 at the visit (and, per arm, at the patient's peak);
* time to response: first visit meeting response; median over all patients with those never
  responding censored at the last visit (``None`` = not reached), and median among responders;
* relapse: patients responding at the first visit ≥ 24 h after the start of the last dose (the
  usual post-treatment responder visit; else the first visit after the dose ends) are followed
  to ``endpoints.relapse_followup`` after the last dose (else to the last visit); the event is
  the first later visit with score > (1 − response_fraction) × baseline, timed from the start
  of the last dose. Patients who keep their response are censored at the end of follow-up;
  since all censoring is at the end, the Kaplan–Meier median equals the simple one.
* differences "A-B" (every pair, A listed before B): mean change in A minus B with a Welch 95 %
  CI, response and remission rate differences with Wald CIs, and Cohen's d of the change.

Control arms carry the drug arms' schedule for the relapse clock (blinded matched infusions).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from itertools import combinations

import numpy as np
import pandas as pd

from . import __version__, stats
from .errors import KetasimError
from .scenario import ArmSpec, Scenario, load_scenario, parse_scenario
from .units import parse_duration

DISCLAIMER = "ketasim is a research tool, not medical advice."
REMISSION_DEFAULT = {"madrs": 10.0, "hamd17": 7.0, "hamd6": 4.0}
DISSOCIATION_CADSS = 4.0
EXECUTORS = ("serial", "processes")
BASELINE = "baseline"
#: relapse: responders are counted at the first visit this long after the last dose started
RESPONDER_DELAY_H = 24.0

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- examples
def example_names() -> list[str]:
    """Names of the scenario files shipped with ketasim (``ketasim trial NAME``)."""
    folder = resources.files("ketasim") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def example_path(name: str) -> str:
    """Filesystem path of a shipped scenario (package data installed as files)."""
    if name not in example_names():
        raise KetasimError("scenario", f"no example named {name!r}", ", ".join(example_names()))
    return str(resources.files("ketasim") / "scenarios" / f"{name}.toml")


def example_title(name: str) -> str:
    """The title of a shipped example scenario."""
    import tomllib

    with open(example_path(name), "rb") as fh:
        return str(tomllib.load(fh).get("title", ""))


def resolve_scenario(file_or_name: str) -> Scenario:
    """Load a scenario from a TOML path, or a shipped example by name."""
    if os.path.exists(file_or_name) or file_or_name.endswith(".toml") or os.sep in file_or_name:
        if not os.path.exists(file_or_name):
            raise KetasimError("scenario", f"file not found: {file_or_name}",
                               "a TOML file or an example: " + ", ".join(example_names()))
        if os.path.isdir(file_or_name):
            raise KetasimError("scenario", f"{file_or_name} is a folder, not a TOML file")
        try:
            return load_scenario(file_or_name)
        except (OSError, UnicodeDecodeError) as exc:
            raise KetasimError("scenario", f"cannot read {file_or_name}: "
                               f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}"
                               ) from exc
    if file_or_name in example_names():
        return load_scenario(example_path(file_or_name))
    raise KetasimError("scenario", f"no file or example named {file_or_name!r}",
                       "a TOML file or an example: " + ", ".join(example_names()))


def with_overrides(scenario: Scenario, n: int | None = None, seed: int | None = None) -> Scenario:
    """The scenario with population n and/or seed replaced (validated again)."""
    if n is None and seed is None:
        return scenario
    data = scenario_dict(scenario)
    if n is not None:
        data["population"]["n"] = n
    if seed is not None:
        data["population"]["seed"] = seed
    return parse_scenario(data)


def scenario_dict(scenario: Scenario) -> dict:
    """The validated scenario as a plain dict (TOML keys: ``arm`` for the arm list)."""
    return scenario.model_dump(mode="json", by_alias=True)


# --------------------------------------------------------------------------- design
def arm_sizes(scenario: Scenario) -> list[int]:
    """Patients per arm: population n split by the arms' ratios (largest remainder, sums to n)."""
    n = scenario.population.n
    ratios = np.array([a.ratio for a in scenario.arms], dtype=float)
    exact = n * ratios / ratios.sum()
    sizes = np.floor(exact + 1e-9).astype(int)
    rest = n - int(sizes.sum())
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[:rest]:
        sizes[i] += 1
    if np.any(sizes < 1):
        raise KetasimError("scenario population.n",
                           f"{n} patients leave an arm empty with ratios "
                           f"{', '.join(f'{r:g}' for r in ratios)}",
                           "at least one patient per arm")
    return [int(s) for s in sizes]


def visit_schedule(scenario: Scenario) -> tuple[list[str], np.ndarray]:
    """Visit labels and times (h), with a baseline visit at t = 0 first."""
    labels = list(scenario.endpoints.at)
    hours = [parse_duration(t, field="endpoints.at", allow_zero=True) for t in labels]
    if hours[0] > 0:
        labels = [BASELINE, *labels]
        hours = [0.0, *hours]
    return labels, np.asarray(hours, dtype=float)


def describe_arm(arm: ArmSpec) -> str:
    """One-line description of an arm's treatment."""
    if arm.control is not None:
        s = "saline placebo" if arm.control == "saline" else "active placebo (midazolam)"
    else:
        dose = arm.dose if isinstance(arm.dose, str) else " / ".join(arm.dose)
        s = f"{arm.drug} {dose} {arm.route}"
        if arm.duration:
            s += f" over {arm.duration}"
        elif arm.route in ("iv", "iv-infusion"):
            s += " over 40 min"
        if arm.schedule:
            s += ", " + (arm.schedule if isinstance(arm.schedule, str)
                         else "at " + ", ".join(arm.schedule))
        if arm.salt:
            s += f" ({arm.salt})"
    if arm.background != "none":
        s += f" + {arm.background}"
    if arm.hypotheses != "default":
        s += f"; hypotheses {arm.hypotheses}"
    if arm.interventions:
        s += f"; interventions {arm.interventions}"
    return s


def _check_arms(scenario: Scenario) -> None:
    """Resolve every arm's regimen, PK model, hypotheses and interventions up front, so a bad
    arm fails once, in this process, with a message naming the key."""
    from .mechanism import Hypotheses, Interventions
    from .mood import arm_regimen
    from .pk import resolve_model

    for i, arm in enumerate(scenario.arms):
        try:
            reg = arm_regimen(arm)
            if reg is not None:
                resolve_model(arm.drug, arm.model, reg.routes)
            Hypotheses.parse(arm.hypotheses)
            Interventions.parse(arm.interventions)
        except KetasimError as exc:
            raise KetasimError(f"scenario arm[{i}].{exc.field}", exc.problem,
                               exc.allowed) from exc


def last_dose_times(scenario: Scenario) -> dict[str, tuple[float, float]]:
    """Per arm: (start of the last dose, end of the last dose) in hours.

    Control arms follow the drug arms' (latest) schedule; with no drug arm, a single dose at 0."""
    from .mood import arm_regimen

    out: dict[str, tuple[float, float]] = {}
    drug = []
    for arm in scenario.arms:
        reg = arm_regimen(arm)
        if reg is not None and len(reg):
            last = max(reg, key=lambda d: d.time_h)
            out[arm.name] = (last.time_h, reg.end_h)
            drug.append(out[arm.name])
    default = max(drug, key=lambda x: x[1]) if drug else (0.0, 0.0)
    for arm in scenario.arms:
        out.setdefault(arm.name, default)
    return out


# --------------------------------------------------------------------------- execution
#: per-chunk engine: ``"reference"`` (:func:`ketasim.mood.simulate_arm`, LSODA per patient on
#: the mood grid) or ``"fast"`` (:func:`ketasim.batch.simulate_arm_fast`: all patients of a
#: chunk in the compiled batched kernel, mood layer as ODE states; within ~1e-4 of it)
ENGINE = "reference"
def _simulate_chunk(scenario: Scenario, arm_index: int, start: int, n: int,
                    visits_h: np.ndarray) -> pd.DataFrame | tuple[str, str, str | None]:
    """Patients ``start … start+n−1`` of one arm (runs in a worker process too)."""
    from .batch import simulate_arm_fast
    from .mood import simulate_arm
    from .population import sample_arm

    try:
        patients = sample_arm(scenario.population, arm_index, n, start=start)
        run = simulate_arm_fast if ENGINE == "fast" else simulate_arm  # the engine switch
        return run(scenario.arms[arm_index], patients, visits_h)
    except KetasimError as exc:  # returned, not raised: its constructor does not unpickle
        return ("error", f"scenario arm[{arm_index}].{exc.field}", exc.problem)


def _chunks(sizes: list[int], chunk_size: int) -> list[tuple[int, int, int]]:
    return [(a, s, min(chunk_size, n - s)) for a, n in enumerate(sizes)
            for s in range(0, n, chunk_size)]


def _fork_context():
    import multiprocessing as mp

    # fork inherits the compiled (numba) kernels; elsewhere use the platform default
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None


def run_trial(scenario: Scenario, chunk_size: int | None = None, executor: str = "serial",
              progress: Progress | None = None, workers: int = 2) -> TrialResult:
    """Simulate every arm of ``scenario``; identical results for any chunk size or executor."""
    if executor not in EXECUTORS:
        raise KetasimError("executor", f"unknown executor {executor!r}", ", ".join(EXECUTORS))
    if chunk_size is not None and not 1 <= chunk_size <= 1_000_000:
        raise KetasimError("chunk-size", f"must be 1..1,000,000, got {chunk_size}")
    if not 1 <= workers <= 256:
        raise KetasimError("workers", f"must be 1..256, got {workers}")
    t0 = time.perf_counter()
    sizes = arm_sizes(scenario)
    labels, visits_h = visit_schedule(scenario)
    _check_arms(scenario)
    total = sum(sizes)
    if chunk_size is None:
        chunk_size = 50 if executor == "serial" else max(1, math.ceil(total / (workers * 6)))
    jobs = _chunks(sizes, chunk_size)
    results: dict[int, pd.DataFrame] = {}
    done = 0

    def _take(k: int, res) -> None:
        nonlocal done
        if isinstance(res, tuple):
            raise KetasimError(res[1], res[2])
        results[k] = res
        done += jobs[k][2]
        if progress is not None:
            progress(done, total)

    if executor == "serial" or len(jobs) == 1:
        for k, (a, s, n) in enumerate(jobs):
            _take(k, _simulate_chunk(scenario, a, s, n, visits_h))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                 mp_context=_fork_context()) as pool:
            futs = {pool.submit(_simulate_chunk, scenario, a, s, n, visits_h): k
                    for k, (a, s, n) in enumerate(jobs)}
            for f in as_completed(futs):
                _take(futs[f], f.result())
    data = pd.concat([results[k] for k in range(len(jobs))], ignore_index=True)
    data = _finish_table(scenario, data, labels, visits_h)
    from .cards import card_versions

    meta = {
        "seed": scenario.population.seed,
        "version": __version__,
        "card_hashes": card_versions(),
        "scenario": scenario_dict(scenario),
        "title": scenario.title,
        "n_per_arm": dict(zip([a.name for a in scenario.arms], sizes, strict=True)),
        "visits": labels,
        "visits_h": visits_h.tolist(),
        "scale": scenario.endpoints.scale,
        "executor": executor,
        "workers": workers if executor == "processes" else 1,
        "chunk_size": chunk_size,
        "wall_s": round(time.perf_counter() - t0, 3),
        "disclaimer": DISCLAIMER,
    }
    return TrialResult(scenario=scenario, data=data, meta=meta)


def _finish_table(scenario: Scenario, data: pd.DataFrame, labels: list[str],
                  visits_h: np.ndarray) -> pd.DataFrame:
    """Add visit labels and arm index; the t = 0 row carries the patient's baseline score."""
    from .cards import load_param_card

    c = load_param_card("clinic")
    names = [a.name for a in scenario.arms]
    idx = np.searchsorted(visits_h, data["time_h"].to_numpy() - 1e-6)  # visits > 1e-6 h apart
    data.insert(2, "visit", pd.Categorical(np.asarray(labels, dtype=object)[idx],
                                           categories=labels, ordered=True))
    data.insert(2, "arm_index", data["arm"].map({n: i for i, n in enumerate(names)})
                .astype("int64"))
    base = data["time_h"].to_numpy() == 0.0
    b = data.loc[base, "baseline_madrs"].to_numpy()
    data.loc[base, "madrs"] = b
    data.loc[base, "hamd17"] = np.clip(b * c.value("hamd17_per_madrs"), 0.0, 52.0)
    data.loc[base, "hamd6"] = np.clip(b * c.value("hamd6_per_madrs"), 0.0, 22.0)
    return data


# --------------------------------------------------------------------------- results
def _clean(v):
    """JSON-ready: NaN/inf → None, numpy scalars → Python, tuples → lists."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class ArmArrays:
    """One arm as patient × visit arrays (visits in schedule order)."""

    name: str
    patients: np.ndarray
    time_h: np.ndarray
    cols: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrialResult:
    """A simulated trial: the long table, the scenario, run metadata and the summary."""

    scenario: Scenario
    data: pd.DataFrame
    meta: dict

    @property
    def scale(self) -> str:
        """The endpoint scale (``madrs``, ``hamd17`` or ``hamd6``)."""
        return self.scenario.endpoints.scale

    @property
    def visits(self) -> list[str]:
        """The endpoint visits, spelled as in ``endpoints.at``."""
        return list(self.scenario.endpoints.at)

    @property
    def remission_threshold(self) -> float:
        """Remission threshold (scale points): the scenario's, else the scale default."""
        t = self.scenario.endpoints.remission_threshold
        return REMISSION_DEFAULT[self.scale] if t is None else float(t)

    def arm_arrays(self, name: str) -> ArmArrays:
        """One arm's results as (patients × visits) arrays."""
        d = self.data[self.data["arm"] == name].sort_values(["patient", "time_h"])
        labels = self.meta["visits"]
        nv = len(labels)
        pts = d["patient"].to_numpy()[::nv]
        out = ArmArrays(name, pts, np.asarray(self.meta["visits_h"]))
        for col in d.columns:
            if col in ("patient", "arm", "arm_index", "visit", "time_h"):
                continue
            out.cols[col] = d[col].to_numpy(dtype=float).reshape(len(pts), nv)
        return out

    @cached_property
    def summary(self) -> dict:
        """The trial summary (:func:`summarise`)."""
        return summarise(self)

    def to_dict(self) -> dict:
        """The JSON contract: arms, differences, meta (plus arm_summary, onset, headline)."""
        return _clean(self.summary)


def summarise(result: TrialResult) -> dict:
    """Per-arm and per-visit statistics, arm differences, onset, response/remission,
    relapse and side effects of a trial result (JSON-ready dict)."""
    sc = result.scenario
    scale = result.scale
    f = sc.endpoints.response_fraction
    thr = result.remission_threshold
    labels = result.meta["visits"]
    vis = {v: labels.index(v) for v in result.visits}
    last = last_dose_times(sc)
    arrays = {a.name: result.arm_arrays(a.name) for a in sc.arms}
    arms: dict[str, dict] = {}
    arm_summary: dict[str, dict] = {}
    per_patient: dict[str, dict[str, np.ndarray]] = {}
    for arm in sc.arms:
        A = arrays[arm.name]
        score = A.cols[scale]
        base = score[:, 0:1]
        change = score - base
        responding = score <= (1.0 - f) * base
        remitting = score <= thr
        per_patient[arm.name] = {"change": change, "responding": responding,
                                 "remitting": remitting}
        rows = {}
        for v, j in vis.items():
            m, sd = stats.mean_sd(score[:, j])
            cm, csd = stats.mean_sd(change[:, j])
            row = {
                "time_h": float(A.time_h[j]), "n": int(score.shape[0]), "mean": m, "sd": sd,
                "mean_ci95": stats.mean_ci(score[:, j]),
                "change": cm, "change_sd": csd, "ci95": stats.mean_ci(change[:, j]),
                "response_rate": float(responding[:, j].mean()),
                "remission_rate": float(remitting[:, j].mean()),
                "n_responders": int(responding[:, j].sum()),
                "n_remitters": int(remitting[:, j].sum()),
            }
            for s in ("madrs_item10", "ssi"):
                x = A.cols[s]
                row[f"{s}_mean"] = float(x[:, j].mean())
                row[f"{s}_change"] = float((x[:, j] - x[:, 0]).mean())
                row[f"{s}_change_ci95"] = stats.mean_ci(x[:, j] - x[:, 0])
            for s in ("cadss", "bprs_positive", "sbp_change_mmhg", "sedation",
                      "effect_site_ng_per_ml"):
                row[f"{s}_mean"] = float(A.cols[s][:, j].mean())
            row["dissociation_incidence"] = float((A.cols["cadss"][:, j]
                                                   >= DISSOCIATION_CADSS).mean())
            rows[v] = row
        arms[arm.name] = rows
        arm_summary[arm.name] = _arm_level(arm, A, score, responding, last[arm.name], sc)
    differences: dict[str, dict] = {}
    onset: dict[str, dict | None] = {}
    for a, b in combinations([x.name for x in sc.arms], 2):
        key = f"{a}-{b}"
        pa, pb = per_patient[a], per_patient[b]
        rows = {}
        first = None
        for v, j in vis.items():
            w = stats.welch(pa["change"][:, j], pb["change"][:, j])
            na, nb = pa["change"].shape[0], pb["change"].shape[0]
            r = stats.wald_diff(int(pa["responding"][:, j].sum()), na,
                                int(pb["responding"][:, j].sum()), nb)
            q = stats.wald_diff(int(pa["remitting"][:, j].sum()), na,
                                int(pb["remitting"][:, j].sum()), nb)
            lo, hi = w["ci95"]
            sig = bool(np.isfinite(lo) and (hi < 0 or lo > 0))
            rows[v] = {
                "arm1": a, "arm2": b, "time_h": float(result.meta["visits_h"][j]),
                "difference": w["difference"], "ci95": w["ci95"], "se": w["se"], "df": w["df"],
                "p_value": w["p_value"], "significant": sig,
                "favours": (a if w["difference"] < 0 else b) if sig else None,
                "cohens_d": stats.cohens_d(pa["change"][:, j], pb["change"][:, j]),
                "response_rate_difference": r["difference"],
                "response_rate_difference_ci95": r["ci95"],
                "remission_rate_difference": q["difference"],
                "remission_rate_difference_ci95": q["ci95"],
            }
            if sig and first is None:
                first = {"visit": v, "time_h": rows[v]["time_h"], "favours": rows[v]["favours"]}
        differences[key] = rows
        onset[key] = first
    out = {"arms": arms, "differences": differences, "arm_summary": arm_summary,
           "onset": onset, "meta": dict(result.meta)}
    out["meta"].update(scale=scale, response_fraction=f, remission_threshold=thr,
                       dissociation_cadss_threshold=DISSOCIATION_CADSS,
                       definitions=_DEFINITIONS)
    out["headline"] = headline(out, sc)
    return out


_DEFINITIONS = {
    "change": "mean of (score − baseline score); ci95 t-based",
    "response": "score ≤ (1 − response_fraction) × baseline",
    "remission": "score ≤ remission_threshold",
    "dissociation_incidence": "fraction with CADSS ≥ 4 (at the visit; peak_… at the peak)",
    "difference": "ARM1 minus ARM2 in mean change; Welch 95% CI; negative favours ARM1",
    "response_rate_difference": "ARM1 minus ARM2; Wald 95% CI",
    "time_to_response": "first visit meeting response; median over all patients, never-"
                        "responders censored at the last visit (null = not reached)",
    "relapse": "responders at the first visit ≥ 24 h after the last dose (else the first visit "
               "after it ends); event = "
               "first later visit with score > (1 − response_fraction) × baseline, timed from "
               "the start of the last dose; no event = censored at the end of follow-up",
}


def _arm_level(arm: ArmSpec, A: ArmArrays, score: np.ndarray, responding: np.ndarray,
               last: tuple[float, float], sc: Scenario) -> dict:
    t = A.time_h
    n = score.shape[0]
    post = np.arange(len(t)) >= 1  # visits after baseline
    # time to response
    hit = responding & post[None, :]
    ever = hit.any(axis=1)
    first_j = np.where(ever, hit.argmax(axis=1), len(t) - 1)
    ttr = t[first_j]
    # relapse
    start, end = last
    horizon = t[-1]
    if sc.endpoints.relapse_followup:
        horizon = min(horizon, start + parse_duration(sc.endpoints.relapse_followup,
                                                      field="endpoints.relapse_followup"))
    after = np.nonzero((t >= start + RESPONDER_DELAY_H - 1e-6) & post)[0]
    if not after.size:
        after = np.nonzero((t >= end - 1e-9) & post)[0]
    relapse: dict = {"last_dose_h": start, "followup_end_h": float(horizon),
                     "responder_visit": None, "n_at_risk": 0, "n_relapsed": 0,
                     "n_censored": 0, "relapse_fraction": None, "median_h": None,
                     "median_d": None, "censoring": "responders who keep their response are "
                                                    "censored at the end of follow-up"}
    if after.size and t[after[0]] <= horizon:
        j0 = int(after[0])
        window = np.nonzero((np.arange(len(t)) > j0) & (t <= horizon + 1e-9))[0]
        at_risk = responding[:, j0]
        lost = ~responding[:, window] if window.size else np.zeros((n, 0), bool)
        ev = lost.any(axis=1) & at_risk
        times = np.where(ev, t[window[lost.argmax(axis=1)]] - start if window.size else 0.0,
                         (t[window[-1]] if window.size else t[j0]) - start)
        k = int(at_risk.sum())
        med = stats.event_median(times[at_risk], ev[at_risk]) if k else None
        relapse.update(responder_visit=_label(sc, A, j0), n_at_risk=k,
                       n_relapsed=int(ev.sum()), n_censored=int(k - ev.sum()),
                       relapse_fraction=float(ev.sum() / k) if k else None,
                       median_h=med, median_d=None if med is None else med / 24.0,
                       relapse_times_h=sorted(float(x) for x in times[ev]))
    peak_ce = A.cols["peak_effect_site_ng_per_ml"][:, 0]
    peak_cadss = A.cols["peak_cadss"][:, 0]
    return {
        "n": n,
        "treatment": describe_arm(arm),
        "baseline_mean": float(score[:, 0].mean()),
        "baseline_sd": stats.mean_sd(score[:, 0])[1],
        "baseline_madrs_mean": float(A.cols["baseline_madrs"][:, 0].mean()),
        "median_peak_effect_site_ng_per_ml": float(np.median(peak_ce)),
        "mean_peak_cadss": float(peak_cadss.mean()),
        "peak_dissociation_incidence": float((peak_cadss >= DISSOCIATION_CADSS).mean()),
        "mean_peak_sbp_change_mmhg": float(A.cols["peak_sbp_change_mmhg"][:, 0].mean()),
        "time_to_response": {
            "n_responded": int(ever.sum()), "n": n,
            "median_h": stats.event_median(ttr, ever),
            "median_among_responders_h": stats.median_or_none(ttr[ever]),
            "censored": int(n - ever.sum()),
        },
        "relapse": relapse,
    }


def _label(sc: Scenario, A: ArmArrays, j: int) -> str:
    labels = list(sc.endpoints.at)
    return labels[j - (len(A.time_h) - len(labels))]


def _pick(visits: list[str], hours: float) -> str | None:
    """The visit spelled closest to ``hours`` (within 10 %), else None."""
    best = None
    for v in visits:
        h = parse_duration(v, allow_zero=True)
        if abs(h - hours) <= 0.1 * hours and (best is None or abs(h - hours) < best[0]):
            best = (abs(h - hours), v)
    return best[1] if best else None


def headline(summary: dict, sc: Scenario) -> dict:
    """The short summary `ketasim run` prints: PK, onset, response/remission at 24 h and 7 d,
    the score difference at 24 h, dissociation and blood pressure."""
    visits = list(sc.endpoints.at)
    names = [a.name for a in sc.arms]
    pair = f"{names[0]}-{names[1]}" if len(names) > 1 else None
    h = {"scale": sc.endpoints.scale, "pair": pair,
         "median_peak_effect_site_ng_per_ml": {}, "mean_peak_cadss": {},
         "mean_peak_sbp_change_mmhg": {}, "response": {}, "remission": {}}
    for a in sc.arms:
        s = summary["arm_summary"][a.name]
        h["median_peak_effect_site_ng_per_ml"][a.name] = s["median_peak_effect_site_ng_per_ml"]
        h["mean_peak_cadss"][a.name] = s["mean_peak_cadss"]
        h["mean_peak_sbp_change_mmhg"][a.name] = s["mean_peak_sbp_change_mmhg"]
    for hrs in (24.0, 168.0):
        v = _pick(visits, hrs)
        if v is None:
            continue
        h["response"][v] = {a: summary["arms"][a][v]["response_rate"] for a in names}
        h["remission"][v] = {a: summary["arms"][a][v]["remission_rate"] for a in names}
    h["onset"] = summary["onset"].get(pair) if pair else None
    v24 = _pick(visits, 24.0)
    if pair and v24:
        d = summary["differences"][pair][v24]
        h["difference_24h"] = {"visit": v24, "difference": d["difference"], "ci95": d["ci95"],
                               "p_value": d["p_value"]}
    return h
