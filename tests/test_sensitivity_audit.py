"""Audit of the global sensitivity analysis (tenth session): problem definition, estimators
against analytic models, reproducibility and metadata, constant outputs, hostile inputs.

The estimator tests replace the simulation (``EndpointModel``) by cheap analytic functions of
the sampled parameter values, so they check SALib's use (sampling, bounds, analysis, the
mapping of indices to names) end to end in milliseconds."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import ketasim.sensitivity as S
from ketasim.cli import main
from ketasim.errors import KetasimError

FOUR = ["drug_emax", "placebo_active", "drive50", "residual_sd"]


def _fake(f):
    """An ``EndpointModel`` stand-in evaluating ``f(values by name)``; records every row."""

    class Fake:
        rows: list[dict[str, float]] = []

        def __init__(self, endpoint, params, n, seed):
            self.metric, self.at = S.parse_endpoint(endpoint)
            self.params = params
            self.simulations = 0

        def __call__(self, x):
            v = {name: float(xi) for (_, name), xi in zip(self.params, x, strict=True)}
            Fake.rows.append(v)
            return float(f(v))

    Fake.rows = []
    return Fake


def _by_name(r):
    return {p["name"]: p for p in r["parameters"]}


# ------------------------------------------------------------------ 1. problem definition
def test_bounds_are_card_value_times_one_plus_minus_spread_and_stay_valid():
    from ketasim.cards import load_param_card

    for spread in (0.3, 0.5, 0.9):
        for card in ("clinic", *S.MECHANISM_CARDS):
            for name, p in load_param_card(card).parameters.items():
                if name in S.NOT_VARIABLE:
                    continue
                v, lo, hi = S._bounds(card, name, spread)
                assert v == p.value
                assert lo < hi and lo <= v <= hi, (name, spread, lo, v, hi)
                assert np.sign(lo) == np.sign(hi) == np.sign(v), name  # never crosses 0
                if name in S._FRACTIONS:
                    assert 0.0 < lo and hi < 1.0, (name, spread, lo, hi)
                    assert lo < v < hi, (name, spread)
                else:
                    assert (lo, hi) == pytest.approx(sorted((v * (1 - spread),
                                                             v * (1 + spread))))
    # caps and fractional falls are fractions: with ±50 % they used to reach 1.4–1.5
    for name in ("consolidation_cap", "suicidality_cap", "placebo_session"):
        assert name in S._FRACTIONS


def test_sampling_is_uniform_within_the_reported_bounds():
    from scipy.stats import kstest

    fake = _fake(lambda v: sum(v.values()))
    S_model, S.EndpointModel = S.EndpointModel, fake
    try:
        r = S.run_sensitivity(method="sobol", samples=256, params=FOUR)
    finally:
        S.EndpointModel = S_model
    for name in FOUR:
        lo, hi = _by_name(r)[name]["bounds"]
        x = np.array([row[name] for row in fake.rows[1:]])  # row 0: the nominal point
        assert lo <= x.min() and x.max() <= hi
        u = (x - lo) / (hi - lo)
        assert kstest(u, "uniform").pvalue > 0.01, name  # uniform, not log-uniform
    assert r["sampling"] == "uniform"


@pytest.fixture
def reach(monkeypatch):
    """Instrument the score model and the mechanism engine: what reaches the simulation."""
    import ketasim.mechanism as mech
    import ketasim.mood as mood

    seen = {"c": [], "baseline": [], "overrides": []}
    real_scores = mood.scores_batch
    real_from_cards = mech.MechanismParams.from_cards.__func__

    def scores(arm, patients, t, visits, comps, c):
        seen["c"].append(dict(c))
        seen["baseline"].append(np.array([p.baseline_madrs for p in patients]))
        return real_scores(arm, patients, t, visits, comps, c)

    def from_cards(cls, blockers, hyp=None, intv=None, overrides=None):
        mp = real_from_cards(cls, blockers, hyp, intv, overrides)
        seen["overrides"].append({k: {**mp.r, **mp.s}[k] for k in (overrides or {})})
        return mp

    monkeypatch.setattr(mood, "scores_batch", scores)
    monkeypatch.setattr(mech.MechanismParams, "from_cards", classmethod(from_cards))
    return seen


def test_named_parameters_are_the_ones_that_reach_the_simulation(reach):
    from ketasim.population import sample_arm
    from ketasim.validate import clinic_values

    names = ["drug_emax", "madrs_baseline_trd", "theta_H", "Kd0_ketamine"]
    m = S.EndpointModel("madrs_change@24h", S.resolve_parameters(names), 8, 3)
    c0 = clinic_values()
    rng = np.random.default_rng(0)
    bounds = [S._bounds(c, n, 0.5)[1:] for c, n in m.params]
    for k in range(4):
        x = np.array([rng.uniform(lo, hi) for lo, hi in bounds])
        reach["c"].clear()
        reach["baseline"].clear()
        reach["overrides"].clear()
        m(x)
        c = reach["c"][-1]
        assert c["drug_emax"] == x[0]
        assert c["madrs_baseline_trd"] == x[1]
        # every other clinic constant is the card's
        assert {k: v for k, v in c.items() if k not in names} == \
               {k: v for k, v in c0.items() if k not in names}
        # the baseline mean reaches the virtual patients (it is used when they are drawn):
        # the same patients as a population whose baseline mean is the sampled value
        pop = m.population.model_copy(update={"baseline_madrs_mean": float(x[1])})
        want = [p.baseline_madrs for p in sample_arm(pop, 0, 8, 1)]
        assert reach["baseline"][0].tolist() == want
        # a new mechanism draw: theta_H and Kd0_ketamine reach the engine's constants
        assert reach["overrides"] == [{"theta_H": x[2], "Kd0_ketamine": x[3]}]


def test_parameters_the_design_cannot_vary_are_refused():
    with pytest.raises(KetasimError) as e:
        S.resolve_parameters(["pk_iiv_cv", "drug_emax"])
    assert e.value.field == "params" and "pk_iiv_cv" in str(e.value)


# ------------------------------------------------------------------ 2. estimators
def _run_fake(monkeypatch, f, **kw):
    fake = _fake(f)
    monkeypatch.setattr(S, "EndpointModel", fake)
    return S.run_sensitivity(**kw), fake


@pytest.mark.parametrize("samples", [None, 2048])
def test_sobol_linear_model_matches_analytic_indices(monkeypatch, samples):
    a = {"drug_emax": 3.0, "placebo_active": -1.0, "drive50": 0.0, "residual_sd": 2.0}
    # y = Σ a_i u_i with u_i uniform on [0, 1] (the sampled value mapped through its
    # bounds): S1_i = ST_i = a_i² / Σ a_j²
    b = {c_n[1]: S._bounds(*c_n, 0.5)[1:] for c_n in S.resolve_parameters(list(a))}
    r, _ = _run_fake(monkeypatch, lambda v: sum(a[k] * (v[k] - b[k][0]) / (b[k][1] - b[k][0])
                                                for k in a),
                     method="sobol", samples=samples, params=list(a))
    tot = sum(x * x for x in a.values())
    for name, p in _by_name(r).items():
        exact = a[name] ** 2 / tot
        for idx in ("S1", "ST"):
            assert p[f"{idx}_conf"] >= 0
            assert abs(p[idx] - exact) <= max(2 * p[f"{idx}_conf"], 0.02), (name, idx, p)
    z = _by_name(r)["drive50"]  # no effect: ≈ 0 within its CI
    assert abs(z["S1"]) <= z["S1_conf"] + 1e-12 and abs(z["ST"]) <= z["ST_conf"] + 1e-12
    assert r["sum_S1"] == pytest.approx(1.0, abs=max(2 * r["sum_S1_conf"], 0.02))


@pytest.mark.parametrize("samples,tol", [(None, 0.0), (4096, 0.03)])
def test_sobol_ishigami_matches_analytic_indices(monkeypatch, samples, tol):
    names = ["drug_emax", "placebo_active", "drive50", "residual_sd"]
    b = {n: S._bounds(c, n, 0.5)[1:] for c, n in S.resolve_parameters(names)}

    def pi(v, k):  # the sampled value mapped to [−π, π]
        return -math.pi + 2 * math.pi * (v[k] - b[k][0]) / (b[k][1] - b[k][0])

    def ishigami(v):
        x1, x2, x3 = pi(v, names[0]), pi(v, names[1]), pi(v, names[2])
        return math.sin(x1) + 7 * math.sin(x2) ** 2 + 0.1 * x3 ** 4 * math.sin(x1)

    r, _ = _run_fake(monkeypatch, ishigami, method="sobol", samples=samples, params=names)
    a, bb = 7.0, 0.1
    v = a ** 2 / 8 + bb * math.pi ** 4 / 5 + bb ** 2 * math.pi ** 8 / 18 + 0.5
    v1 = 0.5 * (1 + bb * math.pi ** 4 / 5) ** 2
    v2 = a ** 2 / 8
    v13 = bb ** 2 * math.pi ** 8 * (1 / 18 - 1 / 50)
    exact = {names[0]: (v1 / v, (v1 + v13) / v), names[1]: (v2 / v, v2 / v),
             names[2]: (0.0, v13 / v), names[3]: (0.0, 0.0)}
    for name, p in _by_name(r).items():
        s1, st = exact[name]
        # within SALib's own 95 % CI (two half-widths: the CI is a bootstrap estimate)
        assert abs(p["S1"] - s1) <= 2 * p["S1_conf"] + tol, (name, p, s1)
        assert abs(p["ST"] - st) <= 2 * p["ST_conf"] + tol, (name, p, st)
    z = _by_name(r)[names[3]]  # the fourth parameter has no effect
    assert abs(z["S1"]) <= z["S1_conf"] + 1e-12 and z["ST"] == pytest.approx(0.0, abs=1e-12)


def test_morris_linear_and_interaction_models(monkeypatch):
    names = ["drug_emax", "placebo_active", "drive50", "residual_sd"]
    coef = {"drug_emax": 4.0, "placebo_active": -10.0, "drive50": 0.0}

    def f(v):
        return sum(coef[k] * v[k] for k in coef) + v["residual_sd"] * v["drug_emax"]

    r, _ = _run_fake(monkeypatch, f, method="morris", params=names)
    p = _by_name(r)
    width = {k: p[k]["bounds"][1] - p[k]["bounds"][0] for k in names}
    # elementary effects are per full parameter range: a purely linear term has
    # mu = coef × width, mu* = |mu| and sigma = 0
    assert p["placebo_active"]["mu"] == pytest.approx(-10.0 * width["placebo_active"])
    assert p["placebo_active"]["mu_star"] == pytest.approx(10.0 * width["placebo_active"])
    assert p["placebo_active"]["sigma"] == pytest.approx(0.0, abs=1e-9)
    assert p["drive50"]["mu_star"] == 0.0 and p["drive50"]["sigma"] == 0.0
    # the interacting pair: effects vary across the design (sigma > 0), mu* within bounds
    lo_r, hi_r = p["residual_sd"]["bounds"]
    assert p["drug_emax"]["sigma"] > 0 and p["residual_sd"]["sigma"] > 0
    assert (4.0 + lo_r) * width["drug_emax"] - 1e-9 <= p["drug_emax"]["mu_star"] \
        <= (4.0 + hi_r) * width["drug_emax"] + 1e-9
    for q in p.values():
        assert q["mu_star_conf"] >= 0


# ------------------------------------------------------------------ 3. reproducibility
def test_seed_reproducibility_and_seed_dependence(monkeypatch):
    f = lambda v: v["drug_emax"] * v["residual_sd"] + v["placebo_active"]  # noqa: E731
    for method in ("sobol", "morris"):
        a, _ = _run_fake(monkeypatch, f, method=method, seed=7, params=FOUR)
        b, _ = _run_fake(monkeypatch, f, method=method, seed=7, params=FOUR)
        c, _ = _run_fake(monkeypatch, f, method=method, seed=8, params=FOUR)
        strip = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
        assert strip(a) == strip(b)
        assert strip(a)["parameters"] != strip(c)["parameters"]


def test_cli_json_metadata_and_confidence_fields(capsys):
    from ketasim import __version__
    from ketasim.cards import card_versions

    rc = main(["sensitivity", "--endpoint", "response_rate@24h", "--method", "sobol",
               "--samples", "8", "--n", "10", "--seed", "4", "--spread", "0.3",
               "--params", "drug_emax,placebo_active,theta_H", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seed"] == 4 and r["samples"] == 8 and r["spread"] == 0.3 and r["n"] == 10
    assert r["ketasim_version"] == __version__ and r["card_hashes"] == card_versions()
    assert r["metric"] == "response_rate" and r["at"] == "24 h"
    assert r["evaluations"] == 8 * (3 + 2) + 1
    # a rate of 10 patients: a multiple of 1/10 in [0, 1]
    assert 0 <= r["nominal"] <= 1 and r["nominal"] * 10 == pytest.approx(round(r["nominal"]
                                                                                * 10))
    for p in r["parameters"]:
        v, (lo, hi) = p["value"], p["bounds"]
        assert (lo, hi) == pytest.approx(sorted((v * 0.7, v * 1.3)))
        for k in ("S1_conf", "ST_conf"):
            assert p[k] is not None and p[k] >= 0


# ------------------------------------------------------------------ 4. outputs
def test_constant_output_gives_a_clear_message_not_indices(capsys):
    # neither constant acts on a ketamine arm in TRD: the endpoint does not move
    params = "esketamine_clinical_factor,bipolar_fast_factor"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a 0/0 in SALib
        r = S.run_sensitivity(method="sobol", samples=8, n=10, params=params.split(","))
    assert r["output_sd"] == 0.0 and r["constant_output"] is True
    assert "does not vary" in r["message"]
    for p in r["parameters"]:
        assert p["S1"] is None and p["ST"] is None
    assert r["sum_S1"] is None
    assert main(["sensitivity", "--method", "sobol", "--samples", "8", "--n", "10",
                 "--params", params]) == 0
    text = capsys.readouterr().out
    assert "does not vary" in text and "0.000" not in text
    m = S.run_sensitivity(method="morris", samples=2, n=10, params=params.split(","))
    assert m["constant_output"] is True and "does not vary" in m["message"]
    assert all(p["mu_star"] == 0.0 for p in m["parameters"])  # exact: no effect at all
    r2 = S.run_sensitivity(method="morris", samples=2, n=10, params=FOUR)
    assert r2["constant_output"] is False and "message" not in r2
    S.plot_indices(r)  # the plot copes with undefined indices


def test_non_finite_endpoint_is_an_error_naming_the_parameter_set(monkeypatch):
    fake = _fake(lambda v: float("nan") if v["drug_emax"] > 0.6 else v["drive50"])
    monkeypatch.setattr(S, "EndpointModel", fake)
    with pytest.raises(KetasimError) as e:
        S.run_sensitivity(method="sobol", samples=8, params=FOUR)
    assert e.value.field == "params" and "drug_emax" in str(e.value)


# ------------------------------------------------------------------ 5. hostile inputs
@pytest.mark.parametrize("args,field", [
    (["--params", "pk_iiv_cv,drug_emax"], "params"),
    (["--params", "drug_emax,,theta_H"], "params"),
    (["--params", "fu_ketamine,drug_emax"], "params"),
    (["--method", "sobol", "--samples", "12"], "samples"),
    (["--method", "sobol", "--samples", "4"], "samples"),
    (["--samples", "0"], "samples"),
    (["--spread", "0"], "spread"),
    (["--spread", "nan"], "spread"),
    (["--n", "4"], "n"),
    (["--endpoint", "madrs_change@0h"], "endpoint"),
])
def test_cli_hostile_inputs_one_line_naming_the_field(capsys, args, field):
    assert main(["sensitivity", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:") and len(err.strip().splitlines()) == 1


def test_salib_sampling_warnings_do_not_escape(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method, samples in (("sobol", 8), ("sobol", 128), ("morris", 2)):
            _run_fake(monkeypatch, lambda v: v["drug_emax"] + v["drive50"] ** 2,
                      method=method, samples=samples, params=FOUR)
