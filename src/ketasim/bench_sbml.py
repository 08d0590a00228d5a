"""Side-by-side benchmark (numbers, not a timed test): ketasim vs libRoadRunner vs SciPy.

Course: racemic ketamine 0.5 mg/kg IV over 40 min twice weekly for 4 weeks (8 infusions,
:data:`ketasim.bench.BENCH_REGIMEN`), MADRS and parent plasma at :data:`VISITS`, for N virtual
TRD patients of the default population (seeded; residual noise set to zero so that MADRS is the
model's, not a random draw).

* **ketasim** — :func:`_ketasim_course_batch`: :func:`ketasim.batch.scores_at_visits`' path
  (all patients in the compiled batched kernel, the mood layer's effect compartments,
  priming and consolidation integrated as ODE states with the mechanism, steps landing only
  on doses and visits), plasma from the same call's exact modal PK.
* **libRoadRunner** — the SBML export (:mod:`ketasim.sbml`) loaded once; per patient: reset,
  set the patient's parameters, simulate to the visits (what a user would write).
* **SciPy reference** — :func:`ketasim.mood.mechanism_components` (engine.simulate, LSODA) on a
  refined mood grid and :func:`ketasim.pk.solve.solve_reference` for plasma, on a few patients.

Relative differences are ``|a − b| / max(|a|, |b|)`` over every patient and visit, MADRS and
plasma together.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager

import numpy as np

from . import __version__
from .batch import _fast_run
from .bench import BENCH_DRUG, BENCH_REGIMEN, _max_rel_diff
from .cards import card_versions
from .mood import _grid, arm_regimen, mechanism_components, scores_batch
from .pk import Covariates, resolve_model
from .pk.model import assemble
from .pk.solve import solve, solve_reference
from .population import Patient, sample_arm
from .sbml import _iiv, course_setup, export_arm, patient_parameters, without_noise
from .scenario import ArmSpec, PopulationSpec
from .units import parse_duration

VISITS = ("0 h", "40 min", "4 h", "24 h", "3 d", "7 d", "14 d", "21 d", "28 d")
#: libRoadRunner (CVODE) tolerances used in the benchmark and the agreement tests; the PK
#: states (``x_*``, mg) get a tiny absolute tolerance of their own because pre-dose plasma
#: troughs (down to ~1e-13 ng/mL in fast clearers) are compared relatively
RR_RTOL = 1e-8
RR_ATOL = 1e-12
RR_ATOL_PK = 1e-22
RR_MAX_STEPS = 100_000
#: step (h) of the refined mood grid of the reference paths, over 12 h after each dose
REF_GRID_STEP_H = 1.0 / 60.0
REF_GRID_WINDOW_H = 12.0
#: step (h) of the refined reference grid everywhere else
REF_GRID_BASE_STEP_H = 0.05
N_SCIPY = 5


def bench_arm() -> ArmSpec:
    """The default 28-day twice-weekly IV course as a scenario arm."""
    route, dose, duration, schedule = BENCH_REGIMEN
    return ArmSpec(name="ketamine 28 d", drug=BENCH_DRUG, route=route, dose=dose,
                   duration=duration, schedule=schedule)


def visits_h() -> np.ndarray:
    """The benchmark's visit times (h after the first dose)."""
    return np.array([parse_duration(v, field="visits", allow_zero=True) for v in VISITS])


def bench_patients(n: int, seed: int = 0) -> list[Patient]:
    """N virtual TRD patients of the default population, residual noise set to zero."""
    return without_noise(sample_arm(PopulationSpec(seed=seed), 0, n, n_visits=len(VISITS)))


def reference_grid(arm: ArmSpec, visits: np.ndarray) -> np.ndarray:
    """ketasim's mood grid refined to :data:`REF_GRID_STEP_H` over 12 h after each dose (the
    mood layer's effect compartments are exact for piecewise-linear input on its grid)."""
    regimen = arm_regimen(arm)
    pts = [_grid(visits, regimen), np.arange(0.0, visits[-1] + 1e-9, REF_GRID_BASE_STEP_H)]
    for d in regimen or ():
        pts.append(d.time_h + np.arange(0.0, REF_GRID_WINDOW_H, REF_GRID_STEP_H))
    g = np.unique(np.round(np.concatenate(pts), 9))
    return g[(g >= 0) & (g <= visits[-1])]


def plasma_batch(arm: ArmSpec, patients: list[Patient], visits: np.ndarray,
                 reference: bool = False, species: str | None = None) -> np.ndarray:
    """Plasma of ``species`` (default the parent; ng/mL, patients × visits) from the exact
    batched PK solver (or SciPy's LSODA reference), patients grouped by sex and race."""
    regimen = arm_regimen(arm)
    card = resolve_model(arm.drug, arm.model, regimen.routes)
    out = np.zeros((len(patients), len(visits)))
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault((p.sex, p.race), []).append(i)
    for (sex, race), idx in groups.items():
        ps = [patients[i] for i in idx]
        w = np.array([p.weight_kg for p in ps])
        cov = Covariates(weight_kg=w, age_years=np.array([p.age_years for p in ps]), sex=sex,
                         race=race)
        iivs = [_iiv(card, p) for p in ps]
        iiv = {k: np.concatenate([d[k] for d in iivs]) for k in iivs[0]}
        system = assemble(card, cov, routes=regimen.routes, n=len(ps), iiv=iiv or None)
        sol = (solve_reference if reference else solve)(system, regimen, visits, w)
        sp = species or (card.drug if card.drug in system.plasma else None)
        out[idx] = sol.plasma_mg_per_l(sp) * 1e3
    return out


def _ketasim_course_batch(arm: ArmSpec, patients: list[Patient], visits: np.ndarray,
                          kernel: str | None = None) -> dict[str, np.ndarray]:
    """ketasim for a batch: MADRS and parent plasma (patients × visits), from one call of the
    fast batched path (mood layer as ODE states in the compiled kernel ``kernel``, default
    :data:`ketasim.batch.KERNEL`; exact PK at the visits)."""
    scores, res = _fast_run(arm, patients, visits, kernel=kernel)
    plasma = (res.plasma_ng_per_ml[arm.drug] if arm.drug in res.plasma_ng_per_ml
              else plasma_batch(arm, patients, visits))
    return {"madrs": scores["madrs"], "plasma": plasma, "kernel": res.metadata["kernel"]}


def scipy_madrs(arm: ArmSpec, patients: list[Patient], visits: np.ndarray,
                grid: np.ndarray | None = None) -> np.ndarray:
    """SciPy reference MADRS: engine.simulate (LSODA) via mood.mechanism_components, patient
    by patient, then mood.scores_batch, on ketasim's mood grid (or ``grid``)."""
    t = _grid(visits, arm_regimen(arm)) if grid is None else grid
    comps = [mechanism_components(arm, p, t) for p in patients]
    comp = {k: np.stack([c[k] for c in comps]) for k in comps[0]}
    return scores_batch(arm, patients, t, visits, comp)["madrs"]


def roadrunner_model(sbml: str):
    """Load an exported model in libRoadRunner with the benchmark's integrator settings."""
    import roadrunner

    roadrunner.Logger.setLevel(roadrunner.Logger.LOG_ERROR)
    rr = roadrunner.RoadRunner(sbml)
    rr.integrator.relative_tolerance = RR_RTOL
    rr.integrator.absolute_tolerance = RR_ATOL
    rr.integrator.max_steps = RR_MAX_STEPS
    for sid in rr.getRateRuleIds():
        if sid.startswith("x_"):
            rr.integrator.setIndividualTolerance(sid, RR_ATOL_PK)
    return rr


@contextmanager
def quiet_solver():
    """Silence SUNDIALS' own warnings (``t + h = t`` just after a dose event), which it prints
    to the process's stdout and would corrupt ``--json`` output; errors still raise."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w", encoding="utf-8") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def roadrunner_run(rr, params: dict[str, float], visits: np.ndarray,
                   selections: list[str]) -> np.ndarray:
    """One patient as a user would run it: reset, set parameters, reset the states, simulate
    to the visits.

    ``resetAll`` (not ``reset``) first: it also returns the event-driven infusion switches to
    their initial values, so a run that stopped mid-infusion cannot leak into the next patient.
    Events due at t = 0 (a dose at time 0) fire during that reset, with the parameter values
    the model had then, i.e. the exported patient's dose amount; so after the new parameters
    are set, ``reset`` (time and rate-rule states back to their initial values) fires them
    again with this patient's amounts. Without it every patient received the exported
    patient's first bolus (0.7 MADRS points off for a 0.5 mg/kg IV bolus at t = 0)."""
    rr.resetAll()
    for k, v in params.items():
        rr.setValue(k, v)
    rr.reset()
    return np.asarray(rr.simulate(times=visits, selections=selections))


def machine() -> str:
    """CPU model, cores, Python and library versions."""
    import libsbml
    import numba
    import roadrunner
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}"
            f", numba {numba.__version__}, libroadrunner {roadrunner.__version__}, "
            f"libsbml {libsbml.getLibSBMLDottedVersion()}, ketasim {__version__}")


#: ketasim kernel the bench times: the generated one (:mod:`ketasim._codegen`), which large
#: runs use (:data:`ketasim.trial.TRIAL_CODEGEN_MIN`); its one-off generation and compilation
#: for the bench configuration is reported as ``ketasim_setup_s``, as libRoadRunner's model
#: load is (``details.roadrunner_load_s``), and the lanes kernel is timed as well
BENCH_KERNEL = "codegen"


def run_side_by_side(n_patients: int = 100, seed: int = 0, n_scipy: int = N_SCIPY,
                     kernel: str = BENCH_KERNEL, both_kernels: bool = True) -> dict:
    """Time the three paths on the same patients; returns the JSON keys plus ``details``.

    Timed: ketasim with ``kernel`` (all N, after a warm-up that generates or loads the kernel,
    timed separately as ``ketasim_setup_s``), and with the other of "codegen"/"lanes"
    (``ketasim_<kernel>_us_per_patient`` for both; not with ``both_kernels=False``), the
    libRoadRunner loop (all N; model
    loaded once, parameters per patient prepared beforehand and reported separately), the SciPy
    reference MADRS (first ``n_scipy`` patients). Untimed checks: SciPy's LSODA PK reference
    for plasma, and ketasim's MADRS on a refined mood grid (the converged mood layer)."""
    if n_patients < 1:
        raise ValueError("n_patients must be ≥ 1")
    arm = bench_arm()
    visits = visits_h()
    patients = bench_patients(n_patients, seed)
    n_ref = max(1, min(n_scipy, n_patients))
    ref_pts = patients[:n_ref]

    if kernel not in ("codegen", "lanes"):
        raise ValueError(f"kernel must be 'codegen' or 'lanes', got {kernel!r}")
    other = "lanes" if kernel == "codegen" else "codegen"
    times, outs, setup = {}, {}, {}
    for k in (kernel, other) if both_kernels else (kernel,):
        # warm-up, timed apart: generate, compile or load the kernels the timed call uses
        # (with ≥ 2 patients the parallel driver; 1 patient the serial one), read the cards
        t0 = time.perf_counter()
        _ketasim_course_batch(arm, patients[:16], visits, k)
        _ketasim_course_batch(arm, patients[:1], visits, k)
        setup[k] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outs[k] = _ketasim_course_batch(arm, patients, visits, k)
        times[k] = time.perf_counter() - t0
    ks, ketasim_s = outs[kernel], times[kernel]

    t0 = time.perf_counter()
    em = export_arm(arm, patients[0], seed=seed)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rr = roadrunner_model(em.sbml)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    params = [patient_parameters(course_setup(arm, p)) for p in patients]
    prep_s = time.perf_counter() - t0
    sel = ["time", em.plasma[BENCH_DRUG], em.madrs]
    rr_out = np.zeros((n_patients, len(visits), 2))
    with quiet_solver():
        roadrunner_run(rr, params[0], visits, sel)  # first simulate (warm-up), not timed
        t0 = time.perf_counter()
        for i, p in enumerate(params):
            rr_out[i] = roadrunner_run(rr, p, visits, sel)[:, 1:]
        rr_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sp_madrs = scipy_madrs(arm, ref_pts, visits)
    scipy_s = time.perf_counter() - t0
    sp_plasma = plasma_batch(arm, ref_pts, visits, reference=True)
    # the same SciPy path on the refined mood grid: what it takes for the reference itself to
    # agree with libRoadRunner to ~1e-4 (the default grid's own error is ~2.6e-3)
    fine_grid = reference_grid(arm, visits)
    t0 = time.perf_counter()
    fine_madrs = scipy_madrs(arm, ref_pts, visits, fine_grid)
    scipy_fine_s = time.perf_counter() - t0

    rr_plasma, rr_madrs = rr_out[:, :, 0], rr_out[:, :, 1]
    d_rr = {"madrs": _max_rel_diff(ks["madrs"], rr_madrs),
            "plasma": _max_rel_diff(ks["plasma"], rr_plasma)}
    d_sp = {"madrs": _max_rel_diff(ks["madrs"][:n_ref], sp_madrs),
            "plasma": _max_rel_diff(ks["plasma"][:n_ref], sp_plasma)}
    res = {
        "ketasim_us_per_patient": ketasim_s / n_patients * 1e6,
        "kernel": ks["kernel"],  # the kernel that ran (codegen falls back where it cannot)
        "ketasim_setup_s": setup[kernel],
        f"ketasim_{kernel}_us_per_patient": ketasim_s / n_patients * 1e6,
        "roadrunner_us_per_patient": rr_s / n_patients * 1e6,
        "scipy_us_per_patient": scipy_s / n_ref * 1e6,
        "max_rel_diff_vs_roadrunner": max(d_rr.values()),
        "max_rel_diff_vs_scipy": max(d_sp.values()),
        "scipy_refined_us_per_patient": scipy_fine_s / n_ref * 1e6,
        "max_rel_diff_vs_scipy_refined": max(_max_rel_diff(ks["madrs"][:n_ref], fine_madrs),
                                             d_sp["plasma"]),
        "n_patients": int(n_patients),
        "machine": machine(),
        "seed": int(seed),
        "ketasim_version": __version__,
        "card_hashes": card_versions(),
    }
    if both_kernels:
        res[f"ketasim_{other}_us_per_patient"] = times[other] / n_patients * 1e6
        res[f"max_rel_diff_{other}_vs_{kernel}"] = max(
            _max_rel_diff(outs[other]["madrs"], ks["madrs"]),
            _max_rel_diff(outs[other]["plasma"], ks["plasma"]))
    rel = np.abs(ks["madrs"] - rr_madrs) / np.maximum(np.maximum(np.abs(ks["madrs"]),
                                                                 np.abs(rr_madrs)), 1e-300)
    res["details"] = {
        "course": f"{BENCH_DRUG} " + ", ".join(BENCH_REGIMEN),
        "visits": list(VISITS), "seed": int(seed), "n_scipy": int(n_ref),
        "ketasim_path": "batch.scores_at_visits path (exact modal PK + RODAS4 on mechanism "
                        "and mood ODE states, numba, all patients at once, outputs only at "
                        f"the visits; kernel {kernel!r}); plasma from the same exact PK",
        "ketasim_setup_s": setup,
        "scipy_path": "engine.simulate via mood.mechanism_components + mood.scores_batch "
                      "(timed); plasma from pk.solve_reference, LSODA rtol 1e-10 (untimed); "
                      "'refined': the same on bench_sbml.reference_grid "
                      f"({len(fine_grid)} grid times instead of "
                      f"{len(_grid(visits, arm_regimen(arm)))})",
        "roadrunner": f"CVODE rtol={RR_RTOL:g} atol={RR_ATOL:g} (PK states {RR_ATOL_PK:g}); "
                      "load once, per patient resetAll + set parameters + reset + simulate",
        "roadrunner_load_s": load_s, "sbml_export_s": export_s,
        "roadrunner_param_prep_us_per_patient": prep_s / n_patients * 1e6,
        "diff_vs_roadrunner": d_rr, "diff_vs_scipy": d_sp,
        "madrs_worst_visit_vs_roadrunner": VISITS[int(np.argmax(rel.max(axis=0)))],
        "madrs_mood_grid_vs_refined_grid": _max_rel_diff(ks["madrs"][:n_ref], fine_madrs),
        "madrs_roadrunner_vs_refined_grid": _max_rel_diff(rr_madrs[:n_ref], fine_madrs),
    }
    return res
