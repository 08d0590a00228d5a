"""Virtual trials: arms of virtual patients, chunked execution and endpoint statistics.

``run_trial(scenario)`` samples every arm's patients (per-patient seeds, see
:mod:`ketasim.population`), simulates them in chunks through an executor (``"serial"``,
``"processes"`` or ``"dask"``; :func:`_run_chunk` is the one per-chunk work function) and
returns a :class:`TrialResult`: per-patient summaries per chunk (Parquet shards with ``out``,
see :mod:`ketasim.shards`), the long table of a sample of patients (one row per patient and
visit, plus a baseline row at t = 0 whose score is the patient's baseline) and the summary,
computed from the shards one visit at a time.

Because each patient's draws depend only on ``(seed, arm_index, patient_index)``, the results
do not depend on the chunk size, on the executor or on the order in which chunks finish.

Endpoint definitions (on the scale named in ``endpoints.scale``; baseline = the t = 0 score):

* change = score − baseline; its 95 % CI is t-based;
* response: score ≤ (1 − response_fraction) × baseline; remission: score ≤ threshold (MADRS 10,
  HAM-D17 7, HAM-D6 4 unless ``endpoints.remission_threshold``);
* dissociation incidence: CADSS ≥ 4 at the visit (and, per arm, at the patient's peak);
* time to response: first visit meeting response; median over all patients with those never
  responding censored at the last visit (``None`` = not reached), and median among responders
  (both lower medians, so always a visit time);
* relapse: patients responding at the first visit ≥ 24 h after the start of the last dose (the
  usual post-treatment responder visit; else the first visit after the dose ends) are followed
  to ``endpoints.relapse_followup`` after the last dose (else to the last visit); the event is
  the first later visit with score > (1 − response_fraction) × baseline, timed from the start
  of the last dose. Patients who keep their response are censored at the end of follow-up;
  since all censoring is at the end, the Kaplan–Meier median equals the simple one (the lower
  median). A single later visit without response counts as relapse (no confirmation at a
  second visit: a simplification). When no visit follows the responder visit within
  follow-up (e.g. the responder visit is the last visit), relapse is not assessable: the
  fraction and counts are ``None`` rather than "0 of N relapsed".
* differences "A-B" (every pair, A listed before B): mean change in A minus B with a Welch 95 %
  CI (``None`` CI and p when neither arm has any spread), response and remission rate
  differences with Newcombe hybrid score 95 % CIs (Wilson-based, method 10 of Newcombe 1998),
  and Cohen's d of the change.

Control arms carry the drug arms' schedule for the relapse clock (blinded matched infusions).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from itertools import combinations

import numpy as np
import pandas as pd

from . import __version__, shards, stats
from .errors import KetasimError, check_callable
from .progress import RichProgress  # noqa: F401  (re-exported: trial.RichProgress)
from .scenario import ArmSpec, Scenario, load_scenario, parse_scenario
from .shards import Chunk, load_patients  # noqa: F401  (load_patients: trial.load_patients)
from .units import parse_duration

DISCLAIMER = "ketasim is a research tool, not medical advice."
REMISSION_DEFAULT = {"madrs": 10.0, "hamd17": 7.0, "hamd6": 4.0}
DISSOCIATION_CADSS = 4.0
EXECUTORS = ("serial", "processes", "dask")
#: patients per arm whose visit-by-visit long table is kept by default
DEFAULT_TRAJECTORIES = 20
#: above this many patients, a run without an output folder keeps its shards in a temp folder
IN_MEMORY_MAX = 200_000
#: patient covariates copied into the per-patient summaries
COVARIATES = ("weight_kg", "age_years", "sex", "race", "disorder", "comedication",
              "eta_placebo", "eta_emax", "pk_factor_cl", "pk_factor_v")
#: engine columns that are one value per patient (repeated at every visit in the long table)
PATIENT_LEVEL = ("baseline_madrs", "peak_effect_site_ng_per_ml", "peak_cadss",
                 "peak_sbp_change_mmhg", "analgesic_band", "anaesthetic_band")
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


# --------------------------------------------------------------------------- chunks
def _relapse_design(scenario: Scenario, arm_name: str, t: np.ndarray,
                    last: dict[str, tuple[float, float]] | None = None) -> dict:
    """The relapse clock of an arm: last-dose start/end, follow-up end, the responder visit
    index ``j0`` (None when no visit qualifies) and the follow-up visits after it."""
    start, end = (last or last_dose_times(scenario))[arm_name]
    horizon = float(t[-1])
    if scenario.endpoints.relapse_followup:
        horizon = min(horizon, start + parse_duration(scenario.endpoints.relapse_followup,
                                                      field="endpoints.relapse_followup"))
    post = np.arange(len(t)) >= 1
    after = np.nonzero((t >= start + RESPONDER_DELAY_H - 1e-6) & post)[0]
    if not after.size:
        after = np.nonzero((t >= end - 1e-9) & post)[0]
    j0 = int(after[0]) if after.size and t[after[0]] <= horizon else None
    window = (np.nonzero((np.arange(len(t)) > j0) & (t <= horizon + 1e-9))[0]
              if j0 is not None else np.zeros(0, dtype=int))
    return {"start": float(start), "end": float(end), "horizon": horizon, "j0": j0,
            "window": window}


def _response_fields(scenario: Scenario, arm_name: str, score: np.ndarray, t: np.ndarray,
                     last: dict[str, tuple[float, float]] | None = None
                     ) -> dict[str, np.ndarray]:
    """Per patient (rows of ``score``, patients × visits with baseline first): time to
    response (censored at the last visit), whether they ever responded, and the relapse
    fields (at risk, relapsed, time from the start of the last dose)."""
    f = scenario.endpoints.response_fraction
    n = score.shape[0]
    responding = score <= (1.0 - f) * score[:, 0:1]
    post = np.arange(len(t)) >= 1
    hit = responding & post[None, :]
    ever = hit.any(axis=1)
    first_j = np.where(ever, hit.argmax(axis=1), len(t) - 1)
    d = _relapse_design(scenario, arm_name, t, last)
    at_risk = np.zeros(n, dtype=bool)
    ev = np.zeros(n, dtype=bool)
    times = np.full(n, np.nan)
    if d["j0"] is not None:
        j0, window, start = d["j0"], d["window"], d["start"]
        at_risk = responding[:, j0].copy()
        lost = ~responding[:, window] if window.size else np.zeros((n, 0), bool)
        ev = lost.any(axis=1) & at_risk
        times = np.where(ev, t[window[lost.argmax(axis=1)]] - start if window.size else 0.0,
                         (t[window[-1]] if window.size else t[j0]) - start).astype(float)
    return {"time_to_response_h": t[first_j].astype(float), "responded": ever,
            "relapse_at_risk": at_risk, "relapsed": ev, "relapse_time_h": times}


def _patient_major(long: pd.DataFrame, chunk: Chunk, nv: int) -> pd.DataFrame:
    """The engine's long table in patient-major, visit-minor order (as ``simulate_arm`` gives
    it; another engine may return rows in any order)."""
    n = chunk.size
    if len(long) != n * nv:
        raise RuntimeError(f"engine returned {len(long)} rows for {n} patients × {nv} visits")
    pcol = long["patient"].to_numpy()
    if (np.all(pcol == np.repeat(np.arange(chunk.start, chunk.start + n), nv))
            and np.all(np.diff(long["time_h"].to_numpy().reshape(n, nv), axis=1) > 0)):
        return long
    return long.sort_values(["patient", "time_h"], kind="mergesort").reset_index(drop=True)


def _patient_summaries(scenario: Scenario, chunk: Chunk, patients: list, long: pd.DataFrame,
                       labels: list[str], visits_h: np.ndarray) -> pd.DataFrame:
    """One row per patient from the engine's long table: covariates, every per-visit column
    as ``<column>@<visit>`` (the t = 0 visit carries the baseline scores), per-patient peaks
    and exposure bands, time to response and relapse fields."""
    from .cards import load_param_card

    nv, n = len(visits_h), len(patients)
    long = _patient_major(long, chunk, nv)
    out: dict[str, object] = {
        "patient": np.arange(chunk.start, chunk.start + n, dtype=np.int64),
        "arm": np.full(n, chunk.arm, dtype=object),
        "arm_index": np.full(n, chunk.arm_index, dtype=np.int64),
    }
    for name in COVARIATES:
        vals = [getattr(p, name) for p in patients]
        out[name] = (np.array(["+".join(v) for v in vals], dtype=object)
                     if name == "comedication" else np.asarray(vals))
    for col in PATIENT_LEVEL:
        if col in long.columns:
            out[col] = long[col].to_numpy()[::nv]
    for col in long.columns:
        if col in ("patient", "arm", "time_h") or col in PATIENT_LEVEL:
            continue
        m = long[col].to_numpy().reshape(n, nv)
        for j, lab in enumerate(labels):
            out[f"{col}@{lab}"] = m[:, j]
    c = load_param_card("clinic")
    b = np.asarray(out["baseline_madrs"], dtype=float)
    for j in np.nonzero(visits_h == 0.0)[0]:
        lab = labels[j]
        out[f"madrs@{lab}"] = b.copy()
        out[f"hamd17@{lab}"] = np.clip(b * c.value("hamd17_per_madrs"), 0.0, 52.0)
        out[f"hamd6@{lab}"] = np.clip(b * c.value("hamd6_per_madrs"), 0.0, 22.0)
    scale = scenario.endpoints.scale
    score = np.column_stack([out[f"{scale}@{lab}"] for lab in labels]).astype(float)
    out.update(_response_fields(scenario, chunk.arm, score, visits_h))
    return pd.DataFrame(out)


#: per-chunk engine: ``"fast"`` (:func:`ketasim.batch.simulate_arm_fast`: a chunk's patients
#: in the compiled batched kernel, mood layer as ODE states; within ~1e-4 of the reference) or
#: ``"reference"`` (:func:`ketasim.mood.simulate_arm`: LSODA per patient on the mood grid)
ENGINE = "fast"
#: compiled kernel of the fast engine (``run_trial(kernel=...)``): "lanes", "codegen" (each
#: arm's step generated as vector code for its configuration, :mod:`ketasim._codegen`: ~4.5–6×
#: less CPU per course, results within the integration tolerance of "lanes": 5e-7 relative
#: on the bench course, ≤ 3.4e-5 (8.4e-5 MADRS points) on the shipped scenarios' arms), or
#: "auto": "codegen" for
#: trials of at least :data:`TRIAL_CODEGEN_MIN` patients, "lanes" below. Generating and
#: compiling costs ~7 s per arm configuration on first use (then numba's disk cache serves
#: it). Measured on 2 cores with an empty cache, 20,000 courses: codegen 10.0 s (8.3 s of it
#: generation and compilation) against lanes 28.4 s (its own compilation included); with the
#: caches warm the ~0.27 ms per course saved repays a first compilation after ~30,000.
TRIAL_KERNELS = ("auto", "lanes", "codegen")
TRIAL_CODEGEN_MIN = 20_000


def trial_kernel(kernel: str, total: int) -> str:
    """The kernel a trial of ``total`` patients runs with (see :data:`TRIAL_KERNELS`)."""
    if kernel not in TRIAL_KERNELS:
        raise KetasimError("kernel", f"unknown kernel {kernel!r}", ", ".join(TRIAL_KERNELS))
    if kernel == "auto":
        return "codegen" if total >= TRIAL_CODEGEN_MIN else "lanes"
    return kernel


def _run_chunk(scenario: Scenario, chunk: Chunk, labels: list[str], visits_h: np.ndarray,
               trajectories: int, kernel: str = "lanes"
               ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The per-chunk work: sample the chunk's patients (per-patient seeds), simulate them,
    and return their per-patient summaries plus the long table of the patients whose
    trajectories are kept (index < ``trajectories``), or None.

    The engine call is the one line to switch (e.g. to ``ketasim.batch.simulate_arm_batched``,
    which returns the same long table)."""
    from .batch import simulate_arm_fast
    from .mood import simulate_arm
    from .population import sample_arm

    patients = sample_arm(scenario.population, chunk.arm_index, chunk.size, start=chunk.start)
    arm = scenario.arms[chunk.arm_index]
    if ENGINE == "fast":  # the engine switch
        import multiprocessing

        # in a worker process the serial kernel (numba's thread pool is not fork-safe; the
        # executor already runs one chunk per core)
        worker = multiprocessing.parent_process() is not None
        long = simulate_arm_fast(arm, patients, visits_h, threads=1 if worker else None,
                                 kernel=kernel)
    else:
        long = simulate_arm(arm, patients, visits_h)
    long = _patient_major(long, chunk, len(visits_h))
    wide = _patient_summaries(scenario, chunk, patients, long, labels, visits_h)
    traj = None
    if chunk.start < trajectories:
        traj = long[long["patient"].to_numpy() < trajectories].reset_index(drop=True)
    return wide, traj


def _warm_kernel(scenario: Scenario, visits_h: np.ndarray, kernel: str) -> float:
    """Run two patients of every arm with ``kernel`` on one thread (the entry worker processes
    use), so its code is generated and compiled once, in this process; returns the seconds."""
    from .batch import simulate_arm_fast
    from .population import sample_arm

    t0 = time.perf_counter()
    for i, arm in enumerate(scenario.arms):
        simulate_arm_fast(arm, sample_arm(scenario.population, i, 2), visits_h, threads=1,
                          kernel=kernel)
    return time.perf_counter() - t0


def _chunk_task(scenario: Scenario, chunk: Chunk, labels: list[str], visits_h: np.ndarray,
                trajectories: int, kernel: str = "lanes"):
    """``_run_chunk`` as a task for a worker process or a dask worker. A KetasimError comes
    back as a tuple (its constructor does not unpickle); anything else raises (and is
    retried)."""
    try:
        return _run_chunk(scenario, chunk, labels, visits_h, trajectories, kernel)
    except KetasimError as exc:
        return ("error", f"scenario arm[{chunk.arm_index}].{exc.field}", exc.problem)


def _fork_context():
    import multiprocessing as mp

    # fork inherits the compiled (numba) kernels; elsewhere use the platform default
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None


# --------------------------------------------------------------------------- executors
Take = Callable[[Chunk, object], None]


def _chunk_label(ch: Chunk) -> str:
    return f"chunk {ch.arm!r} patients {ch.start}–{ch.start + ch.size - 1}"


def _execute_serial(scenario: Scenario, todo: list[Chunk], labels: list[str],
                    visits_h: np.ndarray, trajectories: int, take: Take,
                    kernel: str = "lanes") -> int:
    for ch in todo:
        take(ch, _chunk_task(scenario, ch, labels, visits_h, trajectories, kernel))
    return 0


def _execute_processes(scenario: Scenario, todo: list[Chunk], labels: list[str],
                       visits_h: np.ndarray, trajectories: int, take: Take, workers: int,
                       retries: int, kernel: str = "lanes") -> int:
    """A pool of ``workers`` processes. A chunk that raises, or is lost because a worker
    process died (BrokenProcessPool), is resubmitted on a fresh pool, up to ``retries``
    times. Returns the number of resubmissions."""
    attempts: dict[str, int] = {}
    resubmitted = 0
    pending = list(todo)
    window = 4 * workers  # chunks in flight: results are taken (written) and dropped as they come
    task = (scenario, labels, visits_h, trajectories, kernel)
    while pending:
        failed: list[Chunk] = []
        errors: dict[str, BaseException] = {}
        queue = iter(pending)
        carry: list[Chunk] = []  # not submitted before the pool broke: not charged
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)),
                                 mp_context=_fork_context()) as pool:
            running: dict = {}

            _fill(pool, running, queue, carry, window, task)
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    ch = running.pop(f)
                    try:
                        res = f.result()
                    except Exception as exc:  # noqa: BLE001 - worker crash or error: retry
                        failed.append(ch)
                        errors[ch.key] = exc
                        continue
                    take(ch, res)
                    del res
                del done
                _fill(pool, running, queue, carry, window, task)
        again = []
        for ch in failed:
            attempts[ch.key] = attempts.get(ch.key, 0) + 1
            exc = errors[ch.key]
            if attempts[ch.key] > retries:
                if isinstance(exc, BrokenProcessPool):
                    # a dead worker fails every chunk in the pool: run this one alone to
                    # tell the chunk that kills its worker from the ones that were nearby
                    exc = _run_alone(scenario, ch, labels, visits_h, trajectories, take,
                                     kernel)
                    if exc is None:
                        continue
                raise KetasimError("executor", f"{_chunk_label(ch)} failed "
                                   f"{attempts[ch.key]} times: {exc.__class__.__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''}")
            again.append(ch)
        resubmitted += len(again)
        order = {ch.key: i for i, ch in enumerate(todo)}
        pending = sorted(again + carry, key=lambda c: order[c.key])
    return resubmitted


def _fill(pool: ProcessPoolExecutor, running: dict, queue, carry: list[Chunk], window: int,
          task: tuple) -> None:
    """Submit chunks from ``queue`` until ``window`` are running; if the pool has broken,
    move the rest to ``carry`` (resubmitted on the next pool without being charged)."""
    scenario, labels, visits_h, trajectories, kernel = task
    while len(running) < window:
        ch = next(queue, None)
        if ch is None:
            return
        try:
            running[pool.submit(_chunk_task, scenario, ch, labels, visits_h, trajectories,
                                kernel)] = ch
        except BrokenProcessPool:
            carry.append(ch)
            carry.extend(queue)
            return


def _run_alone(scenario: Scenario, ch: Chunk, labels: list[str], visits_h: np.ndarray,
               trajectories: int, take: Take, kernel: str = "lanes"
               ) -> BaseException | None:
    """Run one chunk in a worker process of its own; its exception, or None (taken)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_fork_context()) as pool:
        fut = pool.submit(_chunk_task, scenario, ch, labels, visits_h, trajectories, kernel)
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return exc
    take(ch, res)
    return None


_SCHEDULER = re.compile(r"^(tcp|tls|ucx|ws|wss|inproc)://\S+$")


def _execute_dask(scenario: Scenario, todo: list[Chunk], labels: list[str],
                  visits_h: np.ndarray, trajectories: int, take: Take, workers: int,
                  retries: int, scheduler: str | None, kernel: str = "lanes") -> int:
    """dask.distributed: a LocalCluster of ``workers`` single-threaded worker processes, or
    the cluster at ``scheduler``. Tasks carry ``retries``; a task lost with its worker is
    rescheduled by the scheduler. At most a few tasks per worker thread are in flight, and
    each result is written and released as it arrives, so memory stays flat."""
    import logging
    import uuid
    from itertools import islice

    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_as_completed
    except ImportError as exc:  # pragma: no cover - a dependency
        raise KetasimError("executor", "dask needs the 'distributed' package",
                           "pip install 'dask[distributed]'") from exc
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise KetasimError("scheduler", f"cannot connect to {scheduler}: "
                               f"{exc.__class__.__name__}") from exc
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.CRITICAL)
        client = Client(cluster)
    try:
        threads = max(1, sum(client.nthreads().values()))
        token = uuid.uuid4().hex[:12]
        window = 4 * threads
        chunks = iter(todo)
        by_key: dict[str, Chunk] = {}
        ac = dask_as_completed()

        attempts: dict[str, int] = {}
        resubmitted = 0

        def submit(ch: Chunk) -> None:
            key = f"ketasim-chunk-{token}-{ch.key}-{attempts.get(ch.key, 0)}"
            by_key[key] = ch
            ac.add(client.submit(_chunk_task, scenario, ch, labels, visits_h, trajectories,
                                 kernel, key=key, retries=retries, pure=False))

        for ch in islice(chunks, window):
            submit(ch)
        for fut in ac:
            ch = by_key.pop(fut.key)
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 - task error, or result lost in transit
                status = fut.status
                fut.release()
                attempts[ch.key] = attempts.get(ch.key, 0) + 1
                if status == "error" or attempts[ch.key] > retries:
                    # "error": the task itself failed on the cluster after its retries (or
                    # killed its workers, KilledWorker)
                    raise KetasimError("executor", f"{_chunk_label(ch)} failed after "
                                       f"{retries} retries: {exc.__class__.__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}"
                                       ) from exc
                # the result was lost with its worker while being fetched: submit it again
                resubmitted += 1
                submit(ch)
                continue
            fut.release()
            take(ch, res)
            nxt = next(chunks, None)
            if nxt is not None:
                submit(nxt)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return resubmitted


# --------------------------------------------------------------------------- run_trial
def _default_chunk_size(total: int, executor: str, workers: int) -> int:
    if executor == "serial":
        return int(min(1000, max(50, math.ceil(total / 100))))
    return int(min(1000, max(1, math.ceil(total / (workers * 8)))))


def _check_out(out: object) -> str:
    """``out`` as a path string, checked before any work starts (as the CLI's ``--out``): a
    folder that exists, or one that can be created in an existing folder. A missing parent
    folder is refused (it is not created: a mistyped path must not start a long run in a new
    tree of folders); an existing folder's run files are only touched by
    :func:`_prepare_folder`, after every other check passed."""
    if isinstance(out, os.PathLike):
        out = os.fspath(out)
    if not isinstance(out, str) or not out:
        raise KetasimError("out", f"must be a folder path, got {out!r}")
    target = os.path.abspath(out)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise KetasimError("out", f"not a folder: {out}")
        if not os.access(target, os.W_OK | os.X_OK):
            raise KetasimError("out", f"cannot write in {out}: permission denied")
        return out
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise KetasimError("out", f"folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KetasimError("out", f"cannot create {out}: permission denied")
    return out


def _prepare_folder(out: str, resume: bool, sc_hash: str, version: str, cards: dict,
                    chunk_size: int | None, trajectories: int | None
                    ) -> tuple[bool, int | None, int | None]:
    """Check or clear ``out`` for a run. Returns (resuming, chunk_size, trajectories), the
    last two taken from the manifest when resuming and not given."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise KetasimError("out", f"not a folder: {out}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise KetasimError("out", f"cannot create folder {out}: {exc.strerror}") from exc
    has_shards = os.path.isdir(os.path.join(out, "shards"))
    manifest = shards.read_manifest(out) if resume else None
    if not resume:
        shards.clear_run(out)
        return False, chunk_size, trajectories
    if manifest is None:
        if has_shards:
            raise KetasimError("out", f"{out}/shards exists without {shards.MANIFEST}",
                               "--no-resume to overwrite, or another --out")
        return False, chunk_size, trajectories
    if manifest.get("scenario_hash") != sc_hash:
        raise KetasimError("out", f"{out} holds shards of a different scenario (hash "
                           f"{str(manifest.get('scenario_hash'))[:12]} ≠ {sc_hash[:12]})",
                           "--no-resume to overwrite, or another --out")
    # manifests written before 2026-11-27 name the card hashes "card_versions" (same values)
    saved_cards = manifest.get("card_hashes", manifest.get("card_versions"))
    # ... and the package version "version" (before 2026-11-27, tenth session)
    saved_version = manifest.get("ketasim_version", manifest.get("version"))
    if saved_version != version or saved_cards != cards:
        raise KetasimError("out", f"{out} holds shards from another ketasim version or other "
                           "cards", "--no-resume to overwrite, or another --out")
    for name, given in (("chunk_size", chunk_size), ("trajectories", trajectories)):
        if given is not None and manifest.get(name) != given:
            raise KetasimError(name.replace("_", "-"),
                               f"{given} differs from the {manifest.get(name)} of the run in "
                               f"{out}", "the same value, or --no-resume")
    return True, int(manifest["chunk_size"]), int(manifest["trajectories"])


def run_trial(scenario: Scenario, chunk_size: int | None = None, executor: str = "serial",
              progress: Progress | None = None, workers: int = 2, *, out: str | None = None,
              resume: bool = True, trajectories: int | None = None,
              scheduler: str | None = None, retries: int = 3,
              kernel: str = "auto") -> TrialResult:
    """Simulate every arm of ``scenario``; identical results for any chunk size or executor.

    * ``executor``: ``"serial"``, ``"processes"`` (``workers`` processes) or ``"dask"``
      (a LocalCluster of ``workers`` single-threaded workers, or the cluster at
      ``scheduler="tcp://HOST:PORT"``). Failed or lost chunks are retried (``retries``).
    * ``out``: write each chunk's per-patient summaries as a Parquet shard under
      ``out/shards`` and a manifest; with ``resume`` a rerun of the same scenario computes
      only the chunks whose shards are missing or invalid (a different scenario is refused).
      ``out`` itself is created if missing, but its parent folder must exist (checked, as
      the CLI's ``--out``, before any work starts; a missing parent is a KetasimError).
      Without ``out``, small runs keep the shards in memory and large ones in a temporary
      folder.
    * ``trajectories``: patients per arm (the first ones) whose visit-by-visit long table is
      kept in :attr:`TrialResult.data` (default 20).
    * ``progress(done, total)`` is called in this process as patients complete.
    * ``kernel``: the fast engine's compiled kernel, one for the whole trial (so results do
      not depend on chunking or executor): "auto" (default; :func:`trial_kernel`), "lanes" or
      "codegen". Recorded in the metadata; part of the run's identity for resuming.
    """
    from .cards import card_versions

    if executor not in EXECUTORS:
        raise KetasimError("executor", f"unknown executor {executor!r}", ", ".join(EXECUTORS))
    if not isinstance(scenario, Scenario):
        raise KetasimError("scenario", f"must be a Scenario (ketasim.scenario.parse_scenario or "
                           f"load_scenario), got {type(scenario).__name__}")
    for name, v in (("chunk-size", chunk_size), ("workers", workers),
                    ("trajectories", trajectories), ("retries", retries)):
        if (v is not None or name in ("workers", "retries")) \
                and (isinstance(v, bool) or not isinstance(v, int)):
            raise KetasimError(name, f"must be a whole number, got {v!r}")
    if not isinstance(resume, bool):
        raise KetasimError("resume", f"must be True or False, got {resume!r}")
    check_callable("progress", progress)
    if chunk_size is not None and not 1 <= chunk_size <= 1_000_000:
        raise KetasimError("chunk-size", f"must be 1..1,000,000, got {chunk_size}")
    if not 1 <= workers <= 256:
        raise KetasimError("workers", f"must be 1..256, got {workers}")
    if trajectories is not None and not 0 <= trajectories <= 1_000_000:
        raise KetasimError("trajectories", f"must be 0..1,000,000, got {trajectories}")
    if not 0 <= retries <= 20:
        raise KetasimError("retries", f"must be 0..20, got {retries}")
    if scheduler is not None:
        if executor != "dask":
            raise KetasimError("scheduler", "needs the dask executor", "--executor dask")
        if not isinstance(scheduler, str) or not _SCHEDULER.match(scheduler):
            raise KetasimError("scheduler", f"not a scheduler address: {scheduler!r}",
                               "tcp://HOST:PORT")
    if out is not None:
        out = _check_out(out)
    if not isinstance(kernel, str):
        raise KetasimError("kernel", f"must be one of {', '.join(TRIAL_KERNELS)}, got "
                           f"{kernel!r}")
    t0 = time.perf_counter()
    sizes = arm_sizes(scenario)
    labels, visits_h = visit_schedule(scenario)
    _check_arms(scenario)
    total = sum(sizes)
    kern = trial_kernel(kernel, total) if ENGINE == "fast" else "reference"
    names = [a.name for a in scenario.arms]
    sc_json = scenario_dict(scenario)
    sc_hash = shards.scenario_hash(sc_json)
    cards = card_versions()
    resuming = False
    if out is not None:
        resuming, chunk_size, trajectories = _prepare_folder(
            out, resume, sc_hash, __version__, cards, chunk_size, trajectories)
    if chunk_size is None:
        chunk_size = _default_chunk_size(total, executor, workers)
    if trajectories is None:
        trajectories = DEFAULT_TRAJECTORIES
    plan = shards.plan_chunks(names, sizes, chunk_size)
    ident = {"scenario": sc_hash, "version": __version__, "cards": cards,
             "trajectories": trajectories}
    if kern != "lanes":  # (lanes runs keep the identity they had before kernels were chosen)
        ident["kernel"] = kern
    run_hash = shards.scenario_hash(ident)
    folder = out
    if folder is None and total > IN_MEMORY_MAX:
        folder = tempfile.mkdtemp(prefix="ketasim-trial-")
    store: shards.Store = (shards.DirStore(folder, plan) if folder is not None
                           else shards.MemoryStore(plan))
    if folder is not None and out is None:
        weakref.finalize(store, shutil.rmtree, folder, True)
    manifest = {
        "format": shards.FORMAT, "status": "running", "scenario_hash": sc_hash,
        "run_hash": run_hash, "seed": scenario.population.seed, "ketasim_version": __version__,
        "card_hashes": cards, "scenario": sc_json, "chunk_size": chunk_size,
        "trajectories": trajectories, "n_per_arm": dict(zip(names, sizes, strict=True)),
        "visits": labels, "visits_h": visits_h.tolist(), "chunks": len(plan),
        "kernel": kern,
    }
    if out is not None:
        shards.write_json_atomic(manifest, os.path.join(out, shards.MANIFEST))

    todo, resumed = [], []
    for ch in plan:
        ok = (resuming and shards.shard_valid(shards.shard_path(out, ch), ch, run_hash)
              and (ch.start >= trajectories
                   or os.path.exists(shards.shard_path(out, ch, "trajectories"))))
        (resumed if ok else todo).append(ch)
    traj: dict[str, pd.DataFrame] = {}
    for ch in resumed:
        if ch.start < trajectories:
            traj[ch.key] = shards.read_frame(shards.shard_path(out, ch, "trajectories"))
    done = sum(ch.size for ch in resumed)
    if progress is not None:
        progress(done, total)

    def take(ch: Chunk, res) -> None:
        nonlocal done
        if isinstance(res[0], str):
            raise KetasimError(res[1], res[2])
        wide, tr = res
        if isinstance(store, shards.DirStore):
            meta = {"ketasim.run_hash": run_hash, "ketasim.scenario_hash": sc_hash,
                    "ketasim.chunk": f"{ch.arm_index},{ch.start},{ch.size}",
                    "ketasim.chunk_seed": str(ch.seed_entropy(scenario.population.seed)),
                    "ketasim.version": __version__}
            if tr is not None:
                shards.write_parquet_atomic(tr, shards.shard_path(store.folder, ch,
                                                                  "trajectories"))
            shards.write_parquet_atomic(wide, shards.shard_path(store.folder, ch), meta)
        else:
            store.put(ch, wide)
        if tr is not None:
            traj[ch.key] = tr
        done += ch.size
        if progress is not None:
            progress(done, total)

    t_run = time.perf_counter()
    setup_s = 0.0
    if kern == "codegen" and todo and executor != "serial":
        # generate and compile each arm's kernel once here, so forked workers inherit it and
        # dask workers load it from the disk cache, instead of each compiling it
        setup_s = _warm_kernel(scenario, visits_h, kern)
    if executor == "serial" or (executor == "processes" and len(todo) <= 1) or not todo:
        retried = _execute_serial(scenario, todo, labels, visits_h, trajectories, take, kern)
    elif executor == "processes":
        retried = _execute_processes(scenario, todo, labels, visits_h, trajectories, take,
                                     workers, retries, kern)
    else:
        retried = _execute_dask(scenario, todo, labels, visits_h, trajectories, take, workers,
                                retries, scheduler, kern)
    run_s = time.perf_counter() - t_run
    frames = [traj[ch.key] for ch in plan if ch.key in traj]
    data = (pd.concat(frames, ignore_index=True) if frames else _empty_long(scenario))
    data = _finish_table(scenario, data, labels, visits_h)
    computed = sum(ch.size for ch in todo)
    chunks_meta = {"total": len(plan), "run": len(todo), "resumed": len(resumed),
                   "resubmitted": retried, "patients_run": computed,
                   "patients_resumed": total - computed}
    if out is not None:
        manifest.update(status="complete", chunks_done=chunks_meta)
        shards.write_json_atomic(manifest, os.path.join(out, shards.MANIFEST))
    meta = {
        "seed": scenario.population.seed,
        "ketasim_version": __version__,
        "card_hashes": cards,
        "scenario": sc_json,
        "scenario_hash": sc_hash,
        "title": scenario.title,
        "n_per_arm": dict(zip(names, sizes, strict=True)),
        "visits": labels,
        "visits_h": visits_h.tolist(),
        "scale": scenario.endpoints.scale,
        "executor": executor,
        "workers": workers if executor != "serial" else 1,
        "scheduler": scheduler,
        "chunk_size": chunk_size,
        "chunks": chunks_meta,
        "trajectories": trajectories,
        "out": out,
        "run_s": round(run_s, 3),
        "kernel": kern,
        "kernel_setup_s": round(setup_s, 3),
        "patients_per_s": round(computed / run_s, 3) if run_s > 0 and computed else None,
        "wall_s": round(time.perf_counter() - t0, 3),
        "disclaimer": DISCLAIMER,
    }
    return TrialResult(scenario=scenario, data=data, meta=meta, store=store)


def _empty_long(scenario: Scenario) -> pd.DataFrame:
    cols = ["patient", "arm", "time_h", "madrs", "hamd17", "hamd6", "baseline_madrs"]
    return pd.DataFrame({c: pd.Series(dtype=object if c == "arm" else float) for c in cols})


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


class _ArmColumns(dict):
    """Patient × visit arrays of one arm, read from the store on first use."""

    def __init__(self, store: shards.Store, arm_index: int, labels: list[str]) -> None:
        super().__init__()
        self._store, self._arm, self._labels = store, arm_index, labels

    def __missing__(self, col: str) -> np.ndarray:
        names = [f"{col}@{lab}" for lab in self._labels]
        try:
            got = self._store.columns(self._arm, names)
            arr = np.column_stack([got[n] for n in names]).astype(float)
        except (KeyError, ValueError):
            x = self._store.columns(self._arm, [col])[col].astype(float)
            arr = np.repeat(x[:, None], len(self._labels), axis=1)
        self[col] = arr
        return arr


@dataclass
class ArmArrays:
    """One arm as patient × visit arrays (visits in schedule order; loaded on demand)."""

    name: str
    patients: np.ndarray
    time_h: np.ndarray
    cols: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrialResult:
    """A simulated trial: the scenario, run metadata, the per-patient summaries (``store``,
    per chunk) and the long table of the patients whose trajectories were kept (``data``:
    one row per patient and visit, the first ``meta["trajectories"]`` patients per arm)."""

    scenario: Scenario
    data: pd.DataFrame
    meta: dict
    store: shards.Store | None = None

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

    def _arm_index(self, name: str) -> int:
        names = [a.name for a in self.scenario.arms]
        if name not in names:
            raise KetasimError("arm", f"no arm named {name!r}", ", ".join(names))
        return names.index(name)

    def patients(self, arm: str | None = None) -> pd.DataFrame:
        """Per-patient summaries (one row per patient; every endpoint at every visit as
        ``<column>@<visit>``) of one arm or all: the whole table, so for small runs. For a
        run written with ``out``, :func:`load_patients` (``ketasim.trial.load_patients``)
        reads the same table back later from the folder."""
        return self.store.table(None if arm is None else self._arm_index(arm))

    def arm_arrays(self, name: str) -> ArmArrays:
        """Patient × visit arrays of one arm; each column is read from the shards when first
        used (``cols["madrs"]``), so only the columns asked for are in memory."""
        a = self._arm_index(name)
        pts = self.store.columns(a, ["patient"])["patient"]
        return ArmArrays(name, pts, np.asarray(self.meta["visits_h"]),
                         _ArmColumns(self.store, a, self.meta["visits"]))

    @cached_property
    def summary(self) -> dict:
        """The trial summary (:func:`summarise`)."""
        return summarise(self)

    def to_dict(self) -> dict:
        """The JSON contract: arms, differences, meta (plus arm_summary, onset, headline)."""
        return _clean(self.summary)


def _visit_row(store: shards.Store, a: int, j: int, t_j: float, labels: list[str],
               scale: str, f: float, thr: float) -> tuple[dict, dict[str, np.ndarray]]:
    """Endpoint row of arm ``a`` at visit index ``j``, and the per-patient change and
    response/remission flags the differences need; reads only this visit's columns."""
    l0, lj = labels[0], labels[j]
    names = list(dict.fromkeys([f"{scale}@{l0}", f"{scale}@{lj}"]
                               + [f"{s}@{x}" for s in ("madrs_item10", "ssi") for x in (l0, lj)]
                               + [f"{s}@{lj}" for s in _SIDE_COLS]))
    c = store.columns(a, names)
    score = c[f"{scale}@{lj}"].astype(float)
    base = c[f"{scale}@{l0}"].astype(float)
    change = score - base
    responding = score <= (1.0 - f) * base
    remitting = score <= thr
    m, sd = stats.mean_sd(score)
    cm, csd = stats.mean_sd(change)
    row = {
        "time_h": float(t_j), "n": int(score.shape[0]), "mean": m, "sd": sd,
        "mean_ci95": stats.mean_ci(score),
        "change": cm, "change_sd": csd, "change_ci95": stats.mean_ci(change),
        "ci95": stats.mean_ci(change),  # = change_ci95 (the older name, kept)
        "response_rate": float(responding.mean()),
        "remission_rate": float(remitting.mean()),
        "n_responders": int(responding.sum()),
        "n_remitters": int(remitting.sum()),
    }
    for s in ("madrs_item10", "ssi"):
        x, x0 = c[f"{s}@{lj}"].astype(float), c[f"{s}@{l0}"].astype(float)
        row[f"{s}_mean"] = float(x.mean())
        row[f"{s}_change"] = float((x - x0).mean())
        row[f"{s}_change_ci95"] = stats.mean_ci(x - x0)
    for s in _SIDE_COLS:
        row[f"{s}_mean"] = float(c[f"{s}@{lj}"].astype(float).mean())
    row["dissociation_incidence"] = float((c[f"cadss@{lj}"] >= DISSOCIATION_CADSS).mean())
    return row, {"change": change, "responding": responding, "remitting": remitting}


_SIDE_COLS = ("cadss", "bprs_positive", "sbp_change_mmhg", "sedation", "effect_site_ng_per_ml")


def summarise(result: TrialResult) -> dict:
    """Endpoint statistics from the per-patient shards, one visit at a time (only that visit's
    columns of each arm are in memory)."""
    sc = result.scenario
    store = result.store
    scale = result.scale
    f = sc.endpoints.response_fraction
    thr = result.remission_threshold
    labels = result.meta["visits"]
    t = np.asarray(result.meta["visits_h"], dtype=float)
    vis = {v: labels.index(v) for v in result.visits}
    names = [a.name for a in sc.arms]
    arms: dict[str, dict] = {n: {} for n in names}
    pairs = list(combinations(names, 2))
    differences: dict[str, dict] = {f"{a}-{b}": {} for a, b in pairs}
    onset: dict[str, dict | None] = {f"{a}-{b}": None for a, b in pairs}
    for v, j in vis.items():
        per_patient = {}
        for i, name in enumerate(names):
            arms[name][v], per_patient[name] = _visit_row(store, i, j, t[j], labels, scale, f,
                                                          thr)
        for a, b in pairs:
            key = f"{a}-{b}"
            pa, pb = per_patient[a], per_patient[b]
            w = stats.welch(pa["change"], pb["change"])
            na, nb = pa["change"].shape[0], pb["change"].shape[0]
            r = stats.newcombe_diff(int(pa["responding"].sum()), na,
                                    int(pb["responding"].sum()), nb)
            q = stats.newcombe_diff(int(pa["remitting"].sum()), na,
                                    int(pb["remitting"].sum()), nb)
            lo, hi = w["ci95"]
            sig = bool(np.isfinite(lo) and (hi < 0 or lo > 0))
            differences[key][v] = {
                "arm1": a, "arm2": b, "time_h": float(t[j]),
                "difference": w["difference"], "ci95": w["ci95"], "se": w["se"], "df": w["df"],
                "p_value": w["p_value"], "significant": sig,
                "favours": (a if w["difference"] < 0 else b) if sig else None,
                "cohens_d": stats.cohens_d(pa["change"], pb["change"]),
                "response_rate_difference": r["difference"],
                "response_rate_difference_ci95": r["ci95"],
                "remission_rate_difference": q["difference"],
                "remission_rate_difference_ci95": q["ci95"],
            }
            if sig and onset[key] is None:
                onset[key] = {"visit": v, "time_h": float(t[j]),
                              "favours": differences[key][v]["favours"]}
        del per_patient
    last = last_dose_times(sc)
    arm_summary = {arm.name: _arm_level(sc, arm, store, i, labels, t, last)
                   for i, arm in enumerate(sc.arms)}
    out = {"arms": arms, "differences": differences, "arm_summary": arm_summary,
           "onset": onset, "pairs": {f"{a}-{b}": [a, b] for a, b in pairs},
           "meta": dict(result.meta)}
    out["meta"].update(scale=scale, response_fraction=f, remission_threshold=thr,
                       dissociation_cadss_threshold=DISSOCIATION_CADSS,
                       definitions=_DEFINITIONS)
    out["headline"] = headline(out, sc)
    return out


_DEFINITIONS = {
    "change": "mean of (score − baseline score); change_ci95 (also ci95, the older name) "
              "t-based 95% CI of the mean change; mean_ci95 that of the mean score",
    "response": "score ≤ (1 − response_fraction) × baseline",
    "remission": "score ≤ remission_threshold",
    "dissociation_incidence": "fraction with CADSS ≥ 4 (at the visit; peak_… at the peak)",
    "pairs": "the two arms (ARM1, ARM2) of each key of differences and onset; the keys join "
             "the arm names with '-', which is ambiguous when a name contains '-'",
    "difference": "ARM1 minus ARM2 in mean change; Welch 95% CI (null CI and p when neither "
                  "arm has any spread); negative favours ARM1",
    "response_rate_difference": "ARM1 minus ARM2; Newcombe hybrid score 95% CI (Wilson-based, "
                                "Newcombe 1998 method 10)",
    "remission_rate_difference": "ARM1 minus ARM2; Newcombe hybrid score 95% CI (Wilson-based, "
                                 "Newcombe 1998 method 10)",
    "time_to_response": "first visit meeting response; median over all patients, never-"
                        "responders censored at the last visit (null = not reached); medians "
                        "are lower medians (a visit time)",
    "relapse": "responders at the first visit ≥ 24 h after the last dose (else the first visit "
               "after it ends); event = "
               "first later visit with score > (1 − response_fraction) × baseline (one visit, "
               "not confirmed at a second), timed from "
               "the start of the last dose; no event = censored at the end of follow-up; "
               "not assessable (null) when no visit follows the responder visit",
}

#: why relapse is not assessable, by case (``relapse["note"]``)
RELAPSE_NO_FOLLOWUP = "no follow-up after the responder visit"
RELAPSE_NO_RESPONDER_VISIT = "no responder visit within follow-up"
#: appended when ``relapse_followup`` is set: the follow-up adds no visits by itself
RELAPSE_FOLLOWUP_HINT = ("; endpoints.relapse_followup adds no visits: list the follow-up "
                         "visits in endpoints.at")


def _arm_level(sc: Scenario, arm: ArmSpec, store: shards.Store, a: int, labels: list[str],
               t: np.ndarray, last: dict[str, tuple[float, float]]) -> dict:
    """Arm-level summary from per-patient columns: baseline, peaks, time to response,
    relapse (the per-patient fields were computed with each chunk)."""
    scale = sc.endpoints.scale
    c = store.columns(a, [f"{scale}@{labels[0]}", "baseline_madrs",
                          "peak_effect_site_ng_per_ml", "peak_cadss", "peak_sbp_change_mmhg",
                          "time_to_response_h", "responded", "relapse_at_risk", "relapsed",
                          "relapse_time_h"])
    base = c[f"{scale}@{labels[0]}"].astype(float)
    n = int(base.shape[0])
    ttr = c["time_to_response_h"].astype(float)
    ever = c["responded"].astype(bool)
    d = _relapse_design(sc, arm.name, t, last)
    relapse: dict = {"last_dose_h": d["start"], "followup_end_h": float(d["horizon"]),
                     "responder_visit": None, "n_at_risk": 0, "n_relapsed": 0,
                     "n_censored": 0, "relapse_fraction": None, "median_h": None,
                     "median_d": None, "censoring": "responders who keep their response are "
                                                    "censored at the end of follow-up",
                     "assessable": False, "note": RELAPSE_NO_RESPONDER_VISIT}
    if d["j0"] is not None and not d["window"].size:
        # the responder visit is the last visit within follow-up: nobody can be seen to
        # relapse, so "0 of N relapsed" would be a statement without data
        relapse.update(responder_visit=_label(sc, len(t), d["j0"]), n_at_risk=None,
                       n_relapsed=None, n_censored=None,
                       note=RELAPSE_NO_FOLLOWUP + (RELAPSE_FOLLOWUP_HINT
                                                   if sc.endpoints.relapse_followup else ""))
    elif d["j0"] is not None:
        at_risk = c["relapse_at_risk"].astype(bool)
        ev = c["relapsed"].astype(bool)
        times = c["relapse_time_h"].astype(float)
        k = int(at_risk.sum())
        med = stats.event_median(times[at_risk], ev[at_risk]) if k else None
        relapse.update(responder_visit=_label(sc, len(t), d["j0"]), n_at_risk=k,
                       n_relapsed=int(ev.sum()), n_censored=int(k - ev.sum()),
                       relapse_fraction=float(ev.sum() / k) if k else None,
                       median_h=med, median_d=None if med is None else med / 24.0,
                       relapse_times_h=sorted(float(x) for x in times[ev]),
                       assessable=True, note=None)
    peak_ce = c["peak_effect_site_ng_per_ml"].astype(float)
    peak_cadss = c["peak_cadss"].astype(float)
    return {
        "n": n,
        "treatment": describe_arm(arm),
        "baseline_mean": float(base.mean()),
        "baseline_sd": stats.mean_sd(base)[1],
        "baseline_madrs_mean": float(c["baseline_madrs"].astype(float).mean()),
        "median_peak_effect_site_ng_per_ml": float(np.median(peak_ce)),
        "mean_peak_cadss": float(peak_cadss.mean()),
        "peak_dissociation_incidence": float((peak_cadss >= DISSOCIATION_CADSS).mean()),
        "mean_peak_sbp_change_mmhg": float(c["peak_sbp_change_mmhg"].astype(float).mean()),
        "time_to_response": {
            "n_responded": int(ever.sum()), "n": n,
            "median_h": stats.event_median(ttr, ever),
            "median_among_responders_h": stats.lower_median(ttr[ever]),
            "censored": int(n - ever.sum()),
        },
        "relapse": relapse,
    }


def _label(sc: Scenario, n_visits: int, j: int) -> str:
    labels = list(sc.endpoints.at)
    return labels[j - (n_visits - len(labels))]



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
         "pair_arms": list(names[:2]) if pair else None,
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
