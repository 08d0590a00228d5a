"""Benchmark of the batched engine (:mod:`ketasim.batch`) against the SciPy reference.

Not a timed test: :func:`run_engine_bench` returns numbers for ``ketasim bench engine``.

Scenario (the issue's default course): racemic ketamine, default PK model, 0.5 mg/kg IV over
40 min twice weekly for 4 weeks (8 infusions, 28 days); the full chain PK → brain → receptor →
signalling → synapses. Outputs per patient: every readout, plasma and free-brain concentration
at the visits :data:`VISITS_H`, plus per-patient summaries (peak free brain ketamine on the
step grid, spine density and synaptic strength at day 28, minimum LHb burst rate over the
visits). Virtual patients as in ``ketasim bench pk`` (:func:`ketasim.bench.virtual_population`:
log-normal weights and IIV factors on every disposition parameter; bench assumptions, not
literature values).
"""

from __future__ import annotations

import os
import platform
import resource
import time

import numba
import numpy as np

from . import __version__
from .batch import ATOL, RTOL, simulate_batch
from .bench import BENCH_DRUG, BENCH_REGIMEN, bench_regimen, virtual_population
from .cards import card_versions, default_pk_model
from .engine import Course, simulate
from .pk import Covariates

#: visit times (h): before the first dose, 4 h and 1 day after it, then weekly to day 28
VISITS_H = np.array([0.0, 4.0, 24.0, 168.0, 336.0, 504.0, 672.0])
REF_TOL = {"rtol": 1e-9, "atol": 1e-13}  # tight reference for the agreement check


def _courses(card, regimen, iiv: dict[str, np.ndarray]) -> list[Course]:
    return [Course(BENCH_DRUG, regimen, card.id, iiv)]


def _summaries(res) -> np.ndarray:
    """(N, 4): peak free brain ketamine µM, spine density and synaptic strength at the last
    visit, minimum LHb burst rate over the visits."""
    r = res.readouts
    return np.stack([res.peak_brain_free_uM[BENCH_DRUG], r["spine_density"][:, -1],
                     r["synaptic_strength"][:, -1], r["lhb_burst"].min(axis=1)], axis=1)


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / (|b| + 1e-6·max|b|) over a time course."""
    floor = 1e-6 * np.max(np.abs(b)) + 1e-300
    return float(np.max(np.abs(a - b) / (np.abs(b) + floor)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_engine_bench(n_patients: int = 200, n_reference: int = 3, courses: int = 0,
                     chunk: int = 5000, seed: int = 0) -> dict:
    """Time the batched engine and the SciPy reference on the default 28-day course.

    ``n_patients``: batch size for the per-course timings (1 thread and all numba threads).
    ``n_reference``: patients run through :func:`ketasim.engine.simulate` (default
    tolerances, timed) and again with tight tolerances for the agreement check.
    ``courses``: if > 0, also run that many patient-courses in chunks of ``chunk`` keeping only
    the per-patient summaries, and report wall time and peak RSS.
    """
    if n_patients < 1 or n_reference < 1:
        raise ValueError("n_patients and n_reference must be ≥ 1")
    card = default_pk_model(BENCH_DRUG)
    regimen = bench_regimen()
    rng = np.random.default_rng(seed)
    w, iiv = virtual_population(card, regimen.routes, n_patients, rng)
    threads = numba.get_num_threads()
    out: dict = {"n_patients": n_patients, "model": card.id,
                 "regimen": f"{BENCH_DRUG} " + ", ".join(BENCH_REGIMEN),
                 "visits_h": VISITS_H.tolist(), "rtol": RTOL, "atol": ATOL}

    def batch(sel, t=VISITS_H, thr=None):
        return simulate_batch(_courses(card, regimen, {k: v[sel] for k, v in iiv.items()}), t,
                              Covariates(weight_kg=w[sel]), threads=thr)

    t0 = time.perf_counter()
    batch(slice(0, 2), thr=1)
    batch(slice(0, 2))
    out["compile_or_cache_load_s"] = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), time.process_time()
    res1 = batch(slice(None), thr=1)
    out["us_per_course_1_thread"] = (time.perf_counter() - t0) / n_patients * 1e6
    # CPU time is less sensitive than wall time to other jobs sharing the cores
    out["cpu_us_per_course_1_thread"] = (time.process_time() - c0) / n_patients * 1e6
    t0 = time.perf_counter()
    res = batch(slice(None))
    out[f"us_per_course_{threads}_threads"] = (time.perf_counter() - t0) / n_patients * 1e6
    out["steps_per_course_mean"] = float(res.stats[:, 0].mean())
    out["rejected_per_course_mean"] = float(res.stats[:, 1].mean())
    out["threads_identical"] = bool(np.array_equal(res1.readouts["synaptic_strength"],
                                                   res.readouts["synaptic_strength"]))
    s = _summaries(res)
    out["median_peak_free_brain_ketamine_uM"] = float(np.median(s[:, 0]))
    out["median_spine_density_day28"] = float(np.median(s[:, 1]))

    # interactive: one patient, hourly outputs over the 28 days, warm
    hourly = np.arange(0.0, 673.0)
    batch(slice(0, 1), hourly, 1)
    t0 = time.perf_counter()
    batch(slice(0, 1), hourly, 1)
    out["interactive_one_course_ms"] = (time.perf_counter() - t0) * 1e3

    # SciPy reference (default tolerances, timed), and agreement with a tight reference
    k = min(n_reference, n_patients)
    ref_ms, worst = [], 0.0
    for i in range(k):
        one = {n: float(v[i]) for n, v in iiv.items()}
        cov = Covariates(weight_kg=float(w[i]))
        c = _courses(card, regimen, one)
        t0 = time.perf_counter()
        simulate(c, VISITS_H, cov)
        ref_ms.append((time.perf_counter() - t0) * 1e3)
        tight = simulate(c, VISITS_H, cov, **REF_TOL)
        for name, v in tight.readouts.items():
            worst = max(worst, _max_rel(res.readouts[name][i], v))
        for name, v in tight.plasma_ng_per_ml.items():
            worst = max(worst, _max_rel(res.plasma_ng_per_ml[name][i], v))
        for name, v in tight.brain_free_uM.items():
            worst = max(worst, _max_rel(res.brain_free_uM[name][i], v))
    out["scipy_reference_ms_per_course"] = float(np.median(ref_ms))
    out["n_reference"] = k
    best = min(out["us_per_course_1_thread"], out[f"us_per_course_{threads}_threads"])
    out["speedup_vs_scipy"] = out["scipy_reference_ms_per_course"] * 1e3 / best
    out["max_rel_diff_vs_tight_reference"] = worst

    if courses > 0:
        out.update(run_chunked(courses, chunk, seed))
    out.update({
        "machine": f"{platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
        "numba_threads": threads, "load_average_1min": os.getloadavg()[0],
        "ketasim_version": __version__, "seed": seed,
        "card_hashes": {k: v for k, v in card_versions().items()
                        if k.startswith(("mechanism", "pk/" + card.id, "drugs/ketamine"))},
    })
    return out


def run_chunked(courses: int, chunk: int = 5000, seed: int = 0) -> dict:
    """``courses`` patient-courses in chunks (each chunk its own seed), per-patient summaries
    only, so memory stays flat. Returns wall time, courses per second and peak RSS."""
    card = default_pk_model(BENCH_DRUG)
    regimen = bench_regimen()
    summaries = np.empty((courses, 4))
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    done = 0
    while done < courses:
        m = min(chunk, courses - done)
        rng = np.random.default_rng([seed, done])
        w, iiv = virtual_population(card, regimen.routes, m, rng)
        res = simulate_batch(_courses(card, regimen, iiv), VISITS_H, Covariates(weight_kg=w))
        summaries[done:done + m] = _summaries(res)
        done += m
    wall = time.perf_counter() - t0
    return {"chunked_courses": courses, "chunk": chunk, "chunked_wall_s": wall,
            "chunked_courses_per_s": courses / wall,
            "chunked_extrapolated_1e6_courses_min": 1e6 / (courses / wall) / 60.0,
            "peak_rss_mb_before_chunked": rss0, "peak_rss_mb": _peak_rss_mb(),
            "chunked_median_spine_density_day28": float(np.median(summaries[:, 1]))}
