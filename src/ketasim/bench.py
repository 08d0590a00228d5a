"""Benchmarks (not timed tests): µs per virtual patient for the fast batched PK path.

:func:`run_pk_bench` times, end to end, building the linear system for N patients
(:func:`ketasim.pk.model.assemble`, with weights and inter-individual variability), the matrix
exponentials and the propagation (:func:`ketasim.pk.fast.solve_batch`) to parent and metabolite
plasma concentrations on an hourly grid 0..672 h, with the parent's Cmax and exact AUC.

Scenario: racemic ketamine, the default model (:func:`ketasim.cards.default_pk_model`),
0.5 mg/kg IV over 40 min twice weekly for 4 weeks (8 doses). Virtual patients (bench
assumptions, not literature values): weight log-normal around 70 kg (log-SD 0.2, clipped to
45–120 kg); every disposition parameter (flow rates, clearances, volumes of the states in the
system) gets a log-normal factor with the card's ``iiv_cv``, or 30% CV where the card has none.
"""

from __future__ import annotations

import os
import platform
import time

import numba
import numpy as np

from . import __version__
from .cards import PKCard, card_versions, default_pk_model
from .pk.fast import CHUNK, solve_batch, take_patients
from .pk.model import Covariates, PKSystem, assemble
from .pk.solve import solve
from .regimen import Regimen

BENCH_DRUG = "ketamine"
BENCH_REGIMEN = ("iv-infusion", "0.5 mg/kg", "40 min", "twice weekly for 4 weeks")
BENCH_HORIZON_H = 672.0  # 28 days, hourly grid
WEIGHT_MEDIAN_KG = 70.0
WEIGHT_LOG_SD = 0.2
WEIGHT_CLIP_KG = (45.0, 120.0)
DEFAULT_IIV_CV = 0.30
N_CHECK = 20  # patients checked against the exact generic solver


def bench_regimen() -> Regimen:
    """The benchmark regimen (racemic ketamine IV, repeated infusions; see ``BENCH_REGIMEN``)."""
    route, dose, duration, schedule = BENCH_REGIMEN
    return Regimen.build(route, dose, duration, schedule=schedule)


def disposition_parameters(card: PKCard, routes: tuple[str, ...]) -> list[str]:
    """Names of the rate, clearance and volume parameters of the system ``routes`` builds."""
    system = assemble(card, Covariates(), routes=routes, n=1)
    states = set(system.states)
    names: list[str] = []
    for f in card.flows:
        if f.source in states:
            names.append(f.rate or f.clearance)
    names += [c.volume for c in card.compartments if c.name in states and c.volume]
    return list(dict.fromkeys(names))


def virtual_population(card: PKCard, routes: tuple[str, ...], n: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weights (kg, (n,)) and multiplicative IIV factors per disposition parameter."""
    lo, hi = WEIGHT_CLIP_KG
    w = np.clip(WEIGHT_MEDIAN_KG * np.exp(WEIGHT_LOG_SD * rng.standard_normal(n)), lo, hi)
    iiv = {}
    for name in disposition_parameters(card, routes):
        cv = card.parameters[name].iiv_cv or DEFAULT_IIV_CV
        omega = np.sqrt(np.log1p(cv * cv))
        iiv[name] = np.exp(omega * rng.standard_normal(n))
    return w, iiv


def _simulate(card: PKCard, regimen: Regimen, t_grid: np.ndarray, w: np.ndarray,
              iiv: dict[str, np.ndarray]):
    system = assemble(card, Covariates(weight_kg=w), routes=regimen.routes, iiv=iiv)
    return system, solve_batch(system, regimen, t_grid, w)


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    den = np.maximum(np.abs(a), np.abs(b))
    rel = np.divide(np.abs(a - b), den, out=np.zeros_like(den), where=den > 0)
    return float(rel.max())


def _check(system: PKSystem, regimen: Regimen, t_grid: np.ndarray, w: np.ndarray, res,
           rng: np.random.Generator) -> float:
    k = min(N_CHECK, system.n)
    pick = np.sort(rng.choice(system.n, size=k, replace=False))
    exact = solve(take_patients(system, pick), regimen, t_grid, w[pick])
    diffs = [_max_rel_diff(res.plasma[sp][pick], exact.plasma_mg_per_l(sp))
             for sp in system.plasma]
    return max(diffs)


def _bench_card_hashes(model: str) -> dict[str, str]:
    """Hashes of the cards a benchmark's numbers depend on: the PK card, the drug cards and
    the mechanism cards (every card for the full-chain benchmark)."""
    return {k: v for k, v in card_versions().items()
            if k == f"pk/{model}" or k.startswith(("drugs/", "pk_parts/", "mechanism/"))}


def run_pk_bench(n_patients: int = 100_000, seed: int = 0, threads: int | None = None,
                 repeats: int = 2) -> dict:
    """Time the fast PK path for ``n_patients`` virtual patients; returns a flat dict.

    ``us_per_patient``: the first full-size run after compilation, so it includes the first
    use of the output memory (``output_mb``; on a VM that can dominate); ``us_per_patient_warm``:
    best of ``repeats`` further runs. Both time assembling K from the card (weights and IIV
    factors already drawn), the exponentials and the propagation to all outputs.
    ``us_per_patient_solve_only``: :func:`~ketasim.pk.fast.solve_batch` alone.
    ``compile_s``: the numba compile (or cache load) on a tiny batch, run first.
    ``max_rel_diff_vs_exact``: max relative difference of plasma parent and metabolite, all
    grid times, for ~20 random patients, against :func:`ketasim.pk.solve.solve`.
    """
    if n_patients < 1:
        raise ValueError("n_patients must be ≥ 1")
    old_threads = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        card = default_pk_model(BENCH_DRUG)
        regimen = bench_regimen()
        t_grid = np.arange(0.0, BENCH_HORIZON_H + 1.0)
        rng = np.random.default_rng(seed)
        w, iiv = virtual_population(card, regimen.routes, n_patients, rng)

        m = min(n_patients, 2 * CHUNK)
        t0 = time.perf_counter()
        _simulate(card, regimen, t_grid, w[:m], {k: v[:m] for k, v in iiv.items()})
        compile_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        system, res = _simulate(card, regimen, t_grid, w, iiv)
        first_s = time.perf_counter() - t0
        warm = []
        for _ in range(max(repeats, 0)):
            del res
            t0 = time.perf_counter()
            system, res = _simulate(card, regimen, t_grid, w, iiv)
            warm.append(time.perf_counter() - t0)
        max_rel = _check(system, regimen, t_grid, w, res, rng)
        parent = next(iter(res.plasma))
        summary = (float(np.median(res.cmax) * 1000.0), float(np.median(res.auc) * 1000.0))
        outputs = [*res.plasma]
        del res
        t0 = time.perf_counter()
        solve_batch(system, regimen, t_grid, w)  # the solver alone, K already built
        solve_s = time.perf_counter() - t0
        return {
            "n_patients": int(n_patients),
            "us_per_patient": first_s / n_patients * 1e6,
            "us_per_patient_warm": (min(warm) if warm else first_s) / n_patients * 1e6,
            "us_per_patient_solve_only": solve_s / n_patients * 1e6,
            "compile_s": compile_s,
            "max_rel_diff_vs_exact": max_rel,
            "n_checked": int(min(N_CHECK, n_patients)),
            "model": card.id,
            "regimen": f"{BENCH_DRUG} " + ", ".join(BENCH_REGIMEN),
            "grid": f"0..{BENCH_HORIZON_H:g} h hourly ({len(t_grid)} times)",
            "outputs": ", ".join(f"{sp} plasma (N×{len(t_grid)})" for sp in outputs)
            + f", {parent} Cmax and AUC(0–{BENCH_HORIZON_H:g} h)",
            "output_mb": len(outputs) * n_patients * len(t_grid) * 8 / 1e6,
            "median_cmax_ng_per_ml": summary[0],
            "median_auc_ng_h_per_ml": summary[1],
            "machine": f"{platform.platform()}, {platform.machine()}, "
                       f"{os.cpu_count()} CPUs",
            "numba_threads": int(numba.get_num_threads()),
            "seed": int(seed),
            "ketasim_version": __version__,
            "card_hashes": _bench_card_hashes(card.id),
        }
    finally:
        numba.set_num_threads(old_threads)
