"""The fast batched PK path agrees with the exact generic solver (no timing here)."""

from __future__ import annotations

import numpy as np
import pytest

from ketasim.bench import run_pk_bench, virtual_population
from ketasim.cards import load_pk_card
from ketasim.errors import KetasimError
from ketasim.pk.fast import parent_species, solve_batch, take_patients
from ketasim.pk.model import Covariates, assemble
from ketasim.pk.solve import solve
from ketasim.regimen import Regimen

HOURLY = np.arange(0.0, 673.0)
IV = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", schedule="twice weekly for 4 weeks")
NASAL = Regimen.build("intranasal", "56 mg", schedule="twice weekly for 4 weeks")
ORAL = Regimen.build("oral", "1 mg/kg", schedule="daily x 5")


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    den = np.maximum(np.abs(a), np.abs(b))
    rel = np.divide(np.abs(a - b), den, out=np.zeros_like(den), where=den > 0)
    return float(rel.max())


def population(model: str, regimen: Regimen, n: int = 50, seed: int = 3, **cov):
    card = load_pk_card(model)
    w, iiv = virtual_population(card, regimen.routes, n, np.random.default_rng(seed))
    system = assemble(card, Covariates(weight_kg=w, **cov), routes=regimen.routes, iiv=iiv)
    return system, w


def check_against_exact(system, regimen, t, w, tol=1e-6):
    fast = solve_batch(system, regimen, t, w, auc_on_grid=True)
    exact = solve(system, regimen, t, w)
    assert list(fast.plasma) == list(system.plasma)
    for sp in system.plasma:
        assert fast.plasma[sp].shape == (system.n, len(t))
        assert max_rel(fast.plasma[sp], exact.plasma_mg_per_l(sp)) <= tol, sp
    parent = parent_species(system)
    assert max_rel(fast.auc, exact.integral(f"auc_{parent}")) <= tol
    assert np.all(fast.cmax >= exact.plasma_mg_per_l(parent).max(axis=1) * (1 - 1e-12))
    return fast, exact


@pytest.mark.parametrize("model", ["clements1981", "kamp2020", "domino"])
def test_iv_regimen_matches_exact_solver(model):
    system, w = population(model, IV)
    fast, exact = check_against_exact(system, IV, HOURLY, w)
    final = solve_batch(system, IV, HOURLY, w).auc  # default: AUC at the last grid time only
    assert final.shape == (system.n,)
    np.testing.assert_array_equal(final, fast.auc[:, -1])


def test_esketamine_intranasal_matches_exact_solver():
    system, w = population("perez-ruixo-2021", NASAL, age_years=65.0, race="japanese")
    assert "depot_swallowed" in system.states  # a zero-order input besides the nasal bolus
    check_against_exact(system, NASAL, HOURLY, w)


def test_racemic_oral_first_pass_matches_exact_solver():
    system, w = population("clements1981", ORAL, n=20)
    check_against_exact(system, ORAL, np.arange(0.0, 150.0, 0.5), w)


def test_cmax_is_the_true_peak_for_iv_infusions():
    system, w = population("clements1981", IV, n=10)
    dense = np.unique(np.round(np.concatenate(
        [HOURLY] + [d.time_h + np.arange(0.0, 3.0, 1.0 / 60.0) for d in IV]), 9))
    exact = solve(system, IV, dense, w).plasma_mg_per_l("ketamine").max(axis=1)
    cmax = solve_batch(system, IV, HOURLY, w).cmax
    np.testing.assert_allclose(cmax, exact, rtol=1e-9)


def test_irregular_grid_partial_infusion_boluses_and_one_patient():
    card = load_pk_card("kamp2020")
    reg = (Regimen.build("iv-bolus", "20 mg", schedule="at 0, 3 h, 10 h")
           + Regimen.build("iv-infusion", "30 mg", "2 h", schedule="at 5 h, 11.5 h"))
    t = np.array([0.25, 3.0, 4.2, 6.0, 7.5, 10.0, 12.0])  # ends inside the last infusion
    for n in (1, 37):
        system, w = population("kamp2020", reg, n=n, seed=n)
        assert system.card.id == card.id
        check_against_exact(system, reg, t, w)


def test_threads_give_identical_results():
    system, w = population("clements1981", IV, n=200)
    one = solve_batch(system, IV, HOURLY, w, threads=1)
    two = solve_batch(system, IV, HOURLY, w, threads=2)
    for sp in one.plasma:
        np.testing.assert_array_equal(one.plasma[sp], two.plasma[sp])
    np.testing.assert_array_equal(one.cmax, two.cmax)


def test_take_patients_selects_rows():
    system, w = population("clements1981", IV, n=12)
    sub = take_patients(system, np.array([3, 7]))
    np.testing.assert_array_equal(sub.K, system.K[[3, 7]])
    full = solve_batch(system, IV, HOURLY, w)
    part = solve_batch(sub, IV, HOURLY, w[[3, 7]])
    np.testing.assert_allclose(part.plasma["ketamine"], full.plasma["ketamine"][[3, 7]],
                               rtol=1e-13, atol=0)


def test_unsupported_route_is_an_error():
    system = assemble("perez-ruixo-2021", Covariates(), routes=("intranasal",))
    with pytest.raises(KetasimError):
        solve_batch(system, Regimen.build("im", "20 mg"), HOURLY, 70.0)


def test_bench_smoke():
    r = run_pk_bench(n_patients=70, seed=1, repeats=0)
    for key in ("n_patients", "us_per_patient", "us_per_patient_warm", "compile_s",
                "max_rel_diff_vs_exact", "model", "regimen", "machine", "numba_threads"):
        assert key in r
    assert r["n_patients"] == 70
    assert r["model"] == "clements1981"
    assert r["max_rel_diff_vs_exact"] <= 1e-6
    assert r["seed"] == 1 and r["ketasim_version"] and "pk/clements1981" in r["card_hashes"]
