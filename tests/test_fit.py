"""Fitting: data validation, the batched PK problem, FOCE-I, MAP, MCMC, CLI and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.fit import (
    IndividualMAP,
    IndividualMCMC,
    PKProblem,
    PopulationFOCEI,
    read_dataset,
    simulate_dataset,
)
from ketasim.fit.estimators import gelman_rubin
from ketasim.fit.problem import ErrorModel
from ketasim.pk import Covariates, simulate_pk
from ketasim.regimen import Regimen

DATA = Path(__file__).parent / "data" / "fit"
T_RICH = np.array([0.083, 0.167, 0.33, 0.5, 0.67, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 24])
IV = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")


# ------------------------------------------------------------------------ data validation
@pytest.mark.parametrize("name, where", [
    ("missing_column.csv", "column DV"),
    ("time_decreasing.csv", "row 3 column TIME"),
    ("dose_without_amount.csv", "row 1 column AMT"),
    ("bad_number.csv", "row 2 column DV"),
    ("bad_quantity.csv", "row 2 column DVID"),
])
def test_malformed_data_names_row_and_column(name, where):
    with pytest.raises(KetasimError) as e:
        read_dataset(str(DATA / name))
    assert where in str(e.value)
    assert "\n" not in str(e.value)


def test_malformed_data_cli_one_line_exit_2(capsys):
    rc = main(["fit", str(DATA / "time_decreasing.csv"), "--model", "kamp2020",
               "--estimate", "CL"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "row 3 column TIME" in err


def test_unknown_parameter_and_missing_file(capsys):
    assert main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020",
                 "--estimate", "CLX"]) == 2
    assert "CLX" in capsys.readouterr().err
    assert main(["fit", "/nonexistent.csv", "--model", "kamp2020", "--estimate", "CL"]) == 2


def test_reader_expands_addl_and_reads_covariates():
    df = pd.DataFrame({"ID": [1, 1, 1], "TIME": [0, 0.5, 200], "EVID": [1, 0, 0],
                       "AMT": [35, 0, 0], "RATE": [52.5, 0, 0], "II": [84, 0, 0],
                       "ADDL": [2, 0, 0], "DV": [np.nan, 100, 1], "MDV": [1, 0, 0],
                       "WT": [82, 82, 82], "SEX": ["F", "F", "F"], "DVID": ["", "plasma", "2"]})
    s = read_dataset(df).subjects[0]
    assert [d.time_h for d in s.regimen] == [0, 84, 168]
    assert s.weight_kg == 82 and s.sex == "female"
    assert list(s.obs_quantity) == ["plasma", "metabolite"]


# ------------------------------------------------------------------------ problem
def _table(model, regimen, t, weights, metabolite):
    subs = []
    for i, w in enumerate(weights):
        r = simulate_pk(regimen, t, drug="esketamine" if "perez" in model else "ketamine",
                        model=model, covariates=Covariates(weight_kg=w))
        obs = [(a, b, "plasma") for a, b in zip(t, r.plasma_ng_per_ml[r.parent][0],
                                                  strict=True)]
        if metabolite:
            sp = next(k for k in r.plasma_ng_per_ml if k != r.parent)
            obs += [(a, b, "metabolite") for a, b in zip(t, r.plasma_ng_per_ml[sp][0],
                                                           strict=True)]
        obs.sort(key=lambda o: o[0])
        subs.append({"id": i + 1, "regimen": regimen, "weight_kg": w, "obs": obs})
    from ketasim.fit.data import to_csv_table

    return read_dataset(to_csv_table(subs))


@pytest.mark.parametrize("model, regimen, metabolite", [
    ("kamp2020", Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min",
                               schedule="every 3.5 d x 2"), True),
    ("herd2007", Regimen.build("iv-bolus", "20 mg"), True),
    ("perez-ruixo-2021", Regimen.build("intranasal", "56 mg", schedule="every 3.5 d x 2"),
     False),
])
def test_batched_prediction_matches_exact_solver(model, regimen, metabolite):
    """The eigen-superposition predictor agrees with ketasim's expm solver."""
    t = np.array([0.1, 0.5, 0.8, 2, 6, 24, 84.2, 85, 90])
    ds = _table(model, regimen, t, [55.0, 90.0], metabolite)
    est = ["kel"] if "perez" in model else ["CL"]
    pr = PKProblem(model, ds, est)
    f = pr.predict(pr.theta0())
    np.testing.assert_allclose(f[pr.mask], pr.y[pr.mask], rtol=1e-6, atol=1e-9)
    # and a changed parameter changes the prediction the way the card says
    th = {k: 2 * v for k, v in pr.theta0().items()}
    assert not np.allclose(pr.predict(th)[pr.mask], pr.y[pr.mask], rtol=1e-3)


def test_error_models():
    f = np.array([1.0, 10.0, 100.0])
    assert np.allclose(ErrorModel("additive").variance(f, {"sigma_add": 2.0}), 4.0, rtol=1e-4)
    assert np.allclose(ErrorModel("proportional").variance(f, {"sigma_prop": 0.1}),
                       (0.1 * f) ** 2)
    v = ErrorModel("combined").variance(f, {"sigma_add": 1.0, "sigma_prop": 0.1})
    assert np.allclose(v, 1.0 + (0.1 * f) ** 2, rtol=1e-4)
    with pytest.raises(KetasimError):
        ErrorModel("exponential-ish")


# ------------------------------------------------------------------------ estimators
@pytest.fixture(scope="module")
def pop_fit():
    truth = {"CL": 84 * 1.15}
    df = simulate_dataset("kamp2020", 24, IV, T_RICH[::2], truth, {"CL": 0.3},
                          sigma={"sigma_prop": 0.12}, seed=5)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL"])
    # the realised individual clearances: their geometric mean is what the data can show
    cl = np.array(df.attrs["individual"]["CL"])
    return pr, PopulationFOCEI(pr).run(), {"CL": float(np.exp(np.log(cl).mean())),
                                           "CL_design": truth["CL"], "individual": cl}


def test_focei_recovers_typical_value_and_iiv(pop_fit):
    pr, res, truth = pop_fit
    e = res.estimates["CL"]
    assert res.converged
    assert abs(e.value / truth["CL"] - 1) < 0.05
    assert abs(e.value / truth["CL_design"] - 1) < 0.25
    assert e.ci95[0] < truth["CL"] < e.ci95[1]
    # individual estimates (conditional modes) follow the realised clearances
    cl_hat = e.value * np.exp(res.eta[:, 0])
    assert np.corrcoef(np.log(cl_hat), np.log(truth["individual"]))[0, 1] > 0.95
    assert 0 < e.se < 0.2 * e.value
    true_cv = np.sqrt(np.expm1(0.3**2))
    assert abs(e.iiv_cv / true_cv - 1) < 0.35
    assert abs(res.sigma["sigma_prop"] / 0.12 - 1) < 0.15
    # the reported objective is the quadrature one, at a minimum: moving CL away raises it
    assert res.method.startswith("FOCE-I + AGQ")
    est = PopulationFOCEI(pr)
    est.set_quadrature(int(round(res.diagnostics["quadrature_nodes"])))
    x = np.log([e.value, res.omega_sd[0], res.sigma["sigma_prop"]])
    f0 = est.ofv(x)
    assert abs(f0 - res.objective) < 1e-2
    assert est.ofv(x + np.array([0.1, 0, 0])) > f0
    assert est.ofv(x - np.array([0.1, 0, 0])) > f0


def test_model_based_se_agrees_with_sandwich(pop_fit):
    """2·H⁻¹ (reported) and the robust sandwich H⁻¹SH⁻¹ estimate the same variance when the
    model is right: a broken Hessian (step, unconverged modes) would pull them apart."""
    _, res, _ = pop_fit
    se = np.log(res.estimates["CL"].ci95[1] / res.estimates["CL"].ci95[0]) / (2 * 1.96)
    ratio = res.diagnostics["se_log_sandwich"]["theta_CL"] / se
    assert 0.7 < ratio < 1.4, ratio


def test_profile_interval_is_reported_and_brackets_the_estimate(pop_fit):
    """The fixture's fit (24 subjects, CL) is small enough for profiles by default: ci95 is
    the profile-likelihood interval, it contains the estimate, and for this well-identified
    parameter it is close to the Wald interval (log scale) kept next to it."""
    pr, res, _ = pop_fit
    e = res.estimates["CL"]
    assert e.ci95_method == "profile-likelihood" and e.ci95_wald is not None
    assert e.ci95[0] < e.value < e.ci95[1]
    half_w = np.log(np.array(e.ci95_wald) / e.value)
    half_p = np.log(np.array(e.ci95) / e.value)
    np.testing.assert_allclose(half_p, half_w, rtol=0.15)
    for name in ("theta_CL", "omega_CL"):
        prof = res.diagnostics["profile"][name]
        assert prof["converged"] and all(1 <= n <= 6 for n in prof["points"])
        assert prof["min_objective_seen"] > res.objective - 0.05  # the fit was at the optimum
    d = e.to_dict()
    assert d["ci95_method"] == "profile-likelihood" and d["ci95_wald"] == list(e.ci95_wald)
    # the IIV's interval is its profile too (ω is skewed: the profile is not Wald's)
    assert d["iiv_ci95_method"] == "profile-likelihood"
    assert e.iiv_cv_ci95[0] < e.iiv_cv < e.iiv_cv_ci95[1]
    assert e.iiv_cv_ci95_wald is not None and e.iiv_cv_ci95 != e.iiv_cv_ci95_wald


@pytest.mark.parametrize("which", ["CL", "omega_CL"])
def test_profile_interval_matches_brute_force_profile(pop_fit, which):
    """The profile bounds solve profile −2LL = min + 3.841, checked against a brute-force
    profile: at each value of the profiled log-parameter (log CL or log ω) the other two
    minimised by Nelder–Mead on the same quadrature objective, the crossing found by Brent's
    method."""
    from scipy.optimize import brentq, minimize

    pr, res, _ = pop_fit
    e = res.estimates["CL"]
    est = PopulationFOCEI(pr)
    est.set_quadrature(int(round(res.diagnostics["quadrature_nodes"])))
    x_hat = np.log([e.value, res.omega_sd[0], res.sigma["sigma_prop"]])
    i = 0 if which == "CL" else 1
    rest = [j for j in range(3) if j != i]
    start = {"x": x_hat[rest]}

    def profile(v):
        def f(z):
            x = np.empty(3)
            x[i], x[rest] = v, z
            return est.ofv(x)

        r = minimize(f, start["x"], method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-5, "maxfev": 400})
        start["x"] = r.x
        return r.fun

    f_min = profile(x_hat[i])
    assert f_min > res.objective - 0.01  # the fit's optimum is the brute-force one
    if which == "CL":
        got = np.log(e.ci95)
    else:  # CV bounds back to log ω
        got = np.log(np.sqrt(np.log1p(np.array(e.iiv_cv_ci95) ** 2)))
    for j, side in enumerate((-1, 1)):
        start["x"] = x_hat[rest]
        root = brentq(lambda c: profile(c) - f_min - 3.841458820694124, x_hat[i],
                      x_hat[i] + side * 0.8, xtol=1e-5)
        assert abs(got[j] - root) < 2e-3, (j, got[j], root)


def test_profiles_follow_the_request_and_the_cost_rule(pop_fit):
    """``profile=False`` keeps Wald intervals (named so); by default profiles run only while
    subjects × quadrature nodes × typical values stay within PROFILE_AUTO_WORK."""
    from ketasim.fit import estimators as E

    pr, _, _ = pop_fit
    res = PopulationFOCEI(pr, profile=False).run()
    e = res.estimates["CL"]
    assert e.ci95_method == "wald-log" and e.ci95_wald is None and "profile" not in \
        res.diagnostics
    np.testing.assert_allclose(np.log(e.ci95[1] / e.value), 1.959964 * e.se / e.value,
                               rtol=1e-6)
    assert PopulationFOCEI(pr).profiles_enabled()  # 24 subjects × 5 nodes × 1
    assert not PopulationFOCEI(pr, covariance=False).profiles_enabled()
    big = pr.take(np.arange(pr.n).repeat(200))  # 4800 subjects × 5 nodes × 2 > the budget
    assert big.n * 5 * 2 > E.PROFILE_AUTO_WORK
    assert not PopulationFOCEI(big).profiles_enabled()
    assert PopulationFOCEI(big, profile=True).profiles_enabled()


def _subject_minus2ll_by_grid(pr, i, x, lo, hi, m=121):
    """−2 log ∫ p(yᵢ|η) p(η) dη of subject i by a dense 2-D trapezoid grid over [lo, hi]."""
    g = [np.linspace(lo[k], hi[k], m) for k in range(2)]
    E1, E2 = np.meshgrid(*g, indexing="ij")
    eta = np.stack([E1.ravel(), E2.ravel()], axis=1)
    sub = pr.take(np.full(len(eta), i))
    th = {"CL": np.exp(x[0]), "V1": np.exp(x[1])}
    om, sig = np.exp(x[2:4]), np.exp(x[4])
    f = sub.predict(th, eta)
    R = (sig * f) ** 2 + 1e-12
    ll = np.where(sub.mask, np.log(2 * np.pi * R) + (sub.y - f) ** 2 / R, 0).sum(axis=1)
    logp = -0.5 * (ll + np.sum(eta**2 / om**2, axis=1)) - np.log(2 * np.pi * np.prod(om))
    w = np.outer(*[np.r_[0.5, np.ones(m - 2), 0.5] * (gk[1] - gk[0]) for gk in g]).ravel()
    top = logp.max()
    return -2 * (top + np.log(np.sum(w * np.exp(logp - top))))


def test_quadrature_objective_is_the_marginal_likelihood():
    """Each subject's term of the refined objective is its exact −2 log marginal likelihood
    (dense-grid integral); FOCE-I's Laplace term is measurably off at the recovery design."""
    truth = {"CL": 84 * 1.15, "V1": 25 * 0.85}
    df = simulate_dataset("kamp2020", 4, IV, T_RICH, truth, {"CL": 0.3, "V1": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=11)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL", "V1"])
    est = PopulationFOCEI(pr)
    x = np.log([truth["CL"], truth["V1"], 0.3, 0.3, 0.15])
    laplace = est.ofv_terms(x)
    eta = est._last.eta
    sd = np.sqrt(np.diagonal(np.linalg.inv(est._last.info), axis1=1, axis2=2))
    est.set_quadrature(5)
    agq = est.ofv_terms(x)
    exact = np.array([_subject_minus2ll_by_grid(pr, i, x, eta[i] - 7 * sd[i],
                                                eta[i] + 7 * sd[i]) for i in range(pr.n)])
    np.testing.assert_allclose(agq, exact, atol=0.02)
    assert np.abs(laplace - exact).sum() > 5 * np.abs(agq - exact).sum()


def test_quadrature_corrects_focei_v1_bias():
    """Regression guard of the V1 coverage fix (docs/fit.md): at the true parameters of the
    recovery design, the quadrature moves every subject's V1 score the same way as the
    recovery study's FOCE-I bias (upward V1), and the corrected scores sum to ≈ 0."""
    truth = {"CL": 84 * 1.15, "V1": 25 * 0.85}
    df = simulate_dataset("kamp2020", 60, IV, T_RICH, truth, {"CL": 0.3, "V1": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=7)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL", "V1"])
    x = np.log([truth["CL"], truth["V1"], 0.3, 0.3, 0.15])
    est = PopulationFOCEI(pr)
    g_laplace = est.subject_gradients(x)
    est.set_quadrature(5)
    g_agq = est.subject_gradients(x)
    d = (g_agq - g_laplace)[:, 1]  # ∂/∂log V1 of the quadrature correction, per subject
    assert d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) > 8  # systematic, raises OFV with V1
    z = g_agq.sum(axis=0) / np.sqrt((g_agq**2).sum(axis=0))  # standardised score at truth
    assert np.all(np.abs(z) < 3), z


def test_individual_map_tracks_population_modes(pop_fit):
    pr, res, _ = pop_fit
    m = IndividualMAP(pr, theta=res.theta, omega_sd=res.omega_sd, sigma=res.sigma).run()
    cl_map = np.array([m.individual[s.id]["CL"].value for s in pr.subjects])
    cl_pop = res.theta["CL"] * np.exp(res.eta[:, 0])
    np.testing.assert_allclose(cl_map, cl_pop, rtol=1e-3)
    # card prior with estimated sigma also runs and gives positive SEs
    m2 = IndividualMAP(pr).run()
    assert all(v["CL"].se > 0 for v in m2.individual.values())
    assert 0.05 < m2.sigma["sigma_prop"] < 0.3


def test_individual_mcmc_diagnostics(pop_fit):
    pr, res, _ = pop_fit
    out = IndividualMCMC(pr, 0, res.theta, res.omega_sd, res.sigma, seed=3, n_walkers=12,
                         n_steps=300).run()
    assert 0.2 < out["acceptance_fraction"] < 0.95
    assert np.all(out["rhat"] < 1.1)
    lo, hi = out["estimates"]["CL"]["ci95"]
    assert lo < res.theta["CL"] * np.exp(res.eta[0, 0]) < hi


def test_gelman_rubin_flags_disagreeing_chains():
    rng = np.random.default_rng(0)
    same = rng.standard_normal((4, 500, 1))
    assert gelman_rubin(same)[0] < 1.05
    apart = same + np.arange(4)[:, None, None] * 3.0
    assert gelman_rubin(apart)[0] > 1.5


# ------------------------------------------------------------------------ CLI and report
def test_cli_fit_json_and_report(tmp_path, capsys):
    rep = tmp_path / "fit.html"
    rc = main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL",
               "--json", "--report", str(rep)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    e = d["estimates"]["CL"]
    assert e["ci95"][0] < e["value"] < e["ci95"][1] and e["se"] > 0 and e["iiv_cv"] > 0
    assert e["ci95_method"] == "profile-likelihood" and len(e["ci95_wald"]) == 2
    assert d["n_subjects"] == 8 and isinstance(d["converged"], bool)
    assert np.isfinite(d["objective"])
    assert d["metadata"]["ketasim_version"] and "pk/kamp2020" in d["metadata"]["card_hashes"]
    html = rep.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    assert "Visual predictive check" in html


def test_fit_report_marks_an_iiv_at_its_bound(tmp_path, capsys):
    """The report's table showed V1's IIV CV at its lower bound as "1.0%", like an estimate
    (only the warning above said otherwise); it now reads "1.0% (at bound)"."""
    rep = tmp_path / "fit.html"
    assert main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate",
                 "CL,V1", "--json", "--report", str(rep)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "omega_V1" in d["diagnostics"]["at_bounds"]
    html = rep.read_text(encoding="utf-8")
    cv = 100 * d["estimates"]["V1"]["iiv_cv"]
    assert f"<td>{cv:.1f}% (at bound)</td>" in html
    assert f"<td>{100 * d['estimates']['CL']['iiv_cv']:.1f}%</td>" in html  # estimated


def test_parallel_fit_is_identical_to_serial():
    """workers=2 farms out the independent objective evaluations (gradients, the Hessian,
    profiles): every reported number is the same as in one process, bit for bit."""
    df = simulate_dataset("kamp2020", 10, IV, T_RICH[::2], {"CL": 84 * 1.15, "V1": 20.0},
                          {"CL": 0.3, "V1": 0.3}, sigma={"sigma_prop": 0.15}, seed=3)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL", "V1"], iiv=["CL", "V1"])
    one, two = PopulationFOCEI(pr).run(), PopulationFOCEI(pr, workers=2).run()
    assert one.diagnostics.pop("workers") == 1 and two.diagnostics.pop("workers") == 2
    assert two.objective == one.objective and np.array_equal(two.eta, one.eta)
    assert json.dumps(two.to_dict()["estimates"]) == json.dumps(one.to_dict()["estimates"])
    assert two.estimates["V1"].ci95_method == "profile-likelihood"  # the profiles ran too
    for d in (one.diagnostics, two.diagnostics):
        d["profile"].pop("seconds")
    for k in ("objective_evaluations", "iterations", "se_log_sandwich", "profile"):
        assert two.diagnostics[k] == one.diagnostics[k], k
    with pytest.raises(KetasimError, match="workers"):
        PopulationFOCEI(pr, workers=0)


def _die_in_worker(task):
    """Stands in for the fit's worker function: the worker process exits at once."""
    import os

    os._exit(3)


def test_parallel_fit_lost_worker_is_one_error(monkeypatch):
    """A worker process that dies mid-fit ends the fit with one KetasimError naming
    ``workers`` (the CLI's one-line exit 2), not a traceback from the pool."""
    import ketasim.fit.estimators as est_mod

    df = simulate_dataset("kamp2020", 4, IV, T_RICH[::2], {"CL": 84.0}, {"CL": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=4)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL"])
    monkeypatch.setattr(est_mod, "_worker_terms", _die_in_worker)
    with pytest.raises(KetasimError, match="workers.*died"):
        PopulationFOCEI(pr, workers=2).run()


def test_cli_fit_workers_must_be_positive(capsys):
    rc = main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL",
               "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "workers" in err and len(err.splitlines()) == 1


def test_cli_map_lists_individuals(capsys):
    rc = main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL",
               "--method", "map", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "MAP" and len(d["individual"]) == 8
    cls = [v["CL"]["value"] for v in d["individual"].values()]
    assert np.std(np.log(cls)) > 0.05  # the data move subjects away from the prior mean


def _degenerate_fit():
    """A fit as the estimator returns it on noise-free data: not converged, an IIV and the
    residual error at their bounds, no covariance."""
    from ketasim.fit.estimators import Estimate, FitResult

    nan = float("nan")
    return FitResult(
        "FOCE-I", {"CL": Estimate(154.8, nan, (nan, nan), iiv_cv=90.0,
                                  iiv_cv_ci95=(nan, nan), iiv_sd=3.0)},
        {"sigma_prop": Estimate(9e-6, nan, (nan, nan))}, -430.7, 12, 84, False,
        np.zeros((12, 1)), {"CL": 154.8}, np.array([3.0]), {"sigma_prop": 9e-6},
        {"max_abs_gradient": 25.8, "at_bounds": ["omega_CL", "sigma_prop"],
         "covariance_ok": False})


def test_fit_warnings_name_non_convergence_bounds_and_missing_se():
    w = _degenerate_fit().warnings()
    assert any("did not converge" in x for x in w)
    assert any("IIV of CL is at its bound" in x for x in w)
    assert any("sigma_prop is at its bound" in x for x in w)
    assert any("no standard error" in x and "CL" in x for x in w)
    assert _degenerate_fit().to_dict()["warnings"] == w


def test_cli_fit_prints_warnings_and_strict_json(monkeypatch, tmp_path, capsys):
    """A degenerate fit is flagged on the terminal, in the report and in JSON, and the JSON
    is strict (null, not NaN, for a missing standard error)."""
    import types

    import ketasim.fit as fit_mod

    pr = types.SimpleNamespace(estimate=["CL"], units=lambda k: "L/h")
    monkeypatch.setattr(fit_mod, "fit_population", lambda *a, **k: (pr, _degenerate_fit()))
    args = ["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "warning: the fit did not converge" in text and "IIV of CL is at its bound" in text
    assert main([*args, "--json"]) == 0

    def no_constants(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    d = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert d["estimates"]["CL"]["se"] is None and d["estimates"]["CL"]["ci95"] == [None, None]
    assert len(d["warnings"]) == 4


def test_recovery_study_summarize_uses_the_saved_design(tmp_path, monkeypatch, capsys):
    """``scripts/recovery_study.py --summarize FILE`` prints the study's numbers again
    (docs/fit.md): the oracle coverage depends on the study's subject count, which must come
    from the file, not from the ``--subjects`` default (50), when the study ran with another."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "recovery_study", Path(__file__).parent.parent / "scripts" / "recovery_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    truth, cv = 100.0, 0.307
    # realised geometric mean 0.12 log units off the truth: inside 1.96·ω/√10 = 0.186,
    # outside 1.96·ω/√50 = 0.083 (ω = 0.3)
    row = {"replicate": 0, "seconds": 1.0, "converged": True, "diagnostics": {},
           "estimates": {"CL": {"value": 101.0, "se": 5.0, "ci95": [90.0, 110.0],
                                "ci95_method": "profile-likelihood", "iiv_cv": 0.3,
                                "iiv_cv_ci95": [0.2, 0.4]}},
           "sigma_prop": {"value": 0.15}, "realised_gm": {"CL": truth * np.exp(0.12)}}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps({"replicates": [row], "seed": 1, "truth": {"CL": truth},
                                "true_cv": {"CL": cv}, "subjects": 10, "sigma_prop": 0.15}))
    monkeypatch.setattr(sys, "argv", ["recovery_study.py", "--summarize", str(path)])
    mod.main()
    assert "oracle_ci95_coverage 1.0000" in capsys.readouterr().out


# ------------------------------------------------------------ residual error per quantity
def _two_analytes(n=12, sigma=None, seed=3, times=T_RICH[::2], **kw):
    return simulate_dataset("kamp2020", n, IV, times, {"CL": 96.6}, {"CL": 0.3},
                            sigma={"sigma_prop_plasma": 0.10, "sigma_prop_metabolite": 0.25}
                            if sigma is None else sigma,
                            seed=seed, metabolite=True, **kw)


def test_error_per_quantity_names_and_variance():
    em = ErrorModel("combined", by_quantity=True)
    assert em.names == ["sigma_add_plasma", "sigma_prop_plasma", "sigma_add_metabolite",
                        "sigma_prop_metabolite"]
    assert ErrorModel("proportional", by_quantity=True).names == ["sigma_prop_plasma",
                                                                  "sigma_prop_metabolite"]
    assert ErrorModel("combined").names == ["sigma_add", "sigma_prop"]  # off: unchanged
    f = np.array([[10.0, 10.0, 100.0]])
    q = np.array([[0, 1, 1]])
    sig = {"sigma_add_plasma": 1.0, "sigma_prop_plasma": 0.1, "sigma_add_metabolite": 3.0,
           "sigma_prop_metabolite": 0.3}
    np.testing.assert_allclose(em.variance(f, sig, q), [[1 + 1.0, 9 + 9.0, 9 + 900.0]],
                               rtol=1e-5)
    np.testing.assert_allclose(em.dvariance(f, sig, q), [[2 * 0.01 * 10, 2 * 0.09 * 10,
                                                          2 * 0.09 * 100]])
    with pytest.raises(KetasimError, match="qidx"):
        em.variance(f, sig)
    # starting values from each quantity's own observed values
    ini = em.initial(np.array([10.0, 20.0, 300.0]), np.array([0, 0, 1]))
    assert list(ini) == em.names
    assert ini["sigma_add_plasma"] == pytest.approx(1.5)
    assert ini["sigma_add_metabolite"] == pytest.approx(30.0)
    # the problem routes each observation to its quantity's σ
    pr = PKProblem("kamp2020", read_dataset(_two_analytes(n=3)), ["CL"],
                   error_by_quantity=True)
    assert pr.error.names == ["sigma_prop_plasma", "sigma_prop_metabolite"]
    fp = pr.predict(pr.theta0())
    R = pr.variance(fp, {"sigma_prop_plasma": 0.1, "sigma_prop_metabolite": 0.25})
    m = pr.mask
    assert (pr.qidx[m] == 1).any() and (pr.qidx[m] == 0).any()
    np.testing.assert_allclose(R[m], (np.where(pr.qidx == 1, 0.25, 0.1) * fp)[m] ** 2 + 1e-12)


def test_error_per_quantity_refused_with_one_quantity(capsys):
    plasma_only = simulate_dataset("kamp2020", 3, IV, T_RICH[::3], sigma={"sigma_prop": 0.1})
    with pytest.raises(KetasimError) as e:
        PKProblem("kamp2020", read_dataset(plasma_only), ["CL"], error_by_quantity=True)
    assert "error_by_quantity" in str(e.value) and "plasma only" in str(e.value)
    assert "\n" not in str(e.value)
    # both analytes in the file, but only the parent fitted: refused too
    with pytest.raises(KetasimError, match="error_by_quantity"):
        PKProblem("kamp2020", read_dataset(_two_analytes(n=2)), ["CL"], quantities=("plasma",),
                  error=ErrorModel("proportional", by_quantity=True))
    rc = main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL",
               "--error-per-quantity"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "error_by_quantity" in err


def test_simulate_dataset_per_quantity_sigma_keeps_the_draws():
    base = _two_analytes(n=4, sigma={"sigma_prop": 0.1})
    same = _two_analytes(n=4, sigma={"sigma_prop_plasma": 0.1, "sigma_prop_metabolite": 0.1})
    pd.testing.assert_frame_equal(base, same)
    noisy = _two_analytes(n=4, sigma={"sigma_prop": 0.1, "sigma_prop_metabolite": 0.3})
    clean = _two_analytes(n=4, sigma={})
    met = (base.EVID == 0) & (base.DVID == "metabolite")
    par = (base.EVID == 0) & (base.DVID == "plasma")
    assert met.any() and par.any()
    np.testing.assert_array_equal(noisy.DV[par], base.DV[par])
    # the metabolite residuals are the same draws, 3× larger
    np.testing.assert_allclose((noisy.DV[met] - clean.DV[met]) / (base.DV[met] - clean.DV[met]),
                               3.0, rtol=1e-4)  # DV rounded in the table
    with pytest.raises(KetasimError, match="sigma"):
        _two_analytes(n=2, sigma={"sigma_prop_parent": 0.1})
    with pytest.raises(KetasimError, match="metabolite=False"):
        simulate_dataset("kamp2020", 2, IV, T_RICH, sigma={"sigma_prop_metabolite": 0.1})


def test_error_per_quantity_recovers_two_sigmas():
    """Parent σ 0.10, metabolite σ 0.25: the per-quantity fit recovers both (the shared σ
    lies between) and its objective is far lower (one more parameter)."""
    ds = read_dataset(_two_analytes(n=12))
    per = PopulationFOCEI(PKProblem("kamp2020", ds, ["CL"], error_by_quantity=True)).run()
    shared = PopulationFOCEI(PKProblem("kamp2020", ds, ["CL"])).run()
    assert per.converged and shared.converged
    assert set(per.residual) == {"sigma_prop_plasma", "sigma_prop_metabolite"}
    assert per.sigma["sigma_prop_plasma"] == pytest.approx(0.10, rel=0.2)
    assert per.sigma["sigma_prop_metabolite"] == pytest.approx(0.25, rel=0.2)
    assert per.sigma["sigma_prop_plasma"] < shared.sigma["sigma_prop"] < per.sigma[
        "sigma_prop_metabolite"]
    assert shared.objective - per.objective > 50
    for k, e in per.residual.items():  # each σ has its own SE and interval
        assert 0 < e.se < 0.3 * e.value and e.ci95[0] < e.value < e.ci95[1], k
    assert abs(per.estimates["CL"].value / 96.6 - 1) < 0.15
    # with equal σ the per-quantity objective is the shared one
    pq = PKProblem("kamp2020", ds, ["CL"], error_by_quantity=True)
    p1 = PKProblem("kamp2020", ds, ["CL"])
    x = np.log([96.6, 0.3, 0.15])
    assert PopulationFOCEI(pq).ofv(np.r_[x, x[-1]]) == pytest.approx(
        PopulationFOCEI(p1).ofv(x), rel=1e-12)
    # MAP and MCMC need σ for each quantity when given
    with pytest.raises(KetasimError, match="sigma_prop_metabolite"):
        IndividualMAP(pq, sigma={"sigma_prop": 0.1})
    m = IndividualMAP(pq, theta=per.theta, omega_sd=per.omega_sd, sigma=per.sigma).run()
    assert set(m.sigma) == set(per.sigma)


def test_cli_fit_error_per_quantity_json_and_report(tmp_path, capsys):
    csv = tmp_path / "two.csv"
    _two_analytes(n=8).to_csv(csv, index=False)
    rep = tmp_path / "fit.html"
    assert main(["fit", str(csv), "--model", "kamp2020", "--estimate", "CL",
                 "--error-per-quantity", "--report", str(rep), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d["residual_error"]) == ["sigma_prop_plasma", "sigma_prop_metabolite"]
    assert d["residual_error"]["sigma_prop_plasma"]["value"] < d["residual_error"][
        "sigma_prop_metabolite"]["value"]
    assert d["metadata"]["options"] == {"estimate": ["CL"], "iiv": ["CL"],
                                        "error": "proportional", "method": "foce",
                                        "blq": "m3", "error_per_quantity": True}
    assert "proportional, one per observed quantity (plasma, metabolite)" in rep.read_text()
    # MAP estimates both σ as well; the text table names them with their units
    assert main(["fit", str(csv), "--model", "kamp2020", "--estimate", "CL", "--method",
                 "map", "--error-per-quantity"]) == 0
    out = capsys.readouterr().out
    assert "sigma_prop_plasma" in out and "sigma_prop_metabolite" in out
    assert out.count("fraction of the") == 2


def test_error_option_off_gives_the_objective_of_before():
    """Pinned from the code before the per-quantity option (commit 70625fd): a combined error
    model with metabolite and censored (M3) observations, FOCE-I and quadrature objectives."""
    df = simulate_dataset("kamp2020", 6, IV, T_RICH[::2], {"CL": 96.6, "V1": 21.25},
                          {"CL": 0.3, "V1": 0.3}, error="combined",
                          sigma={"sigma_add": 2.0, "sigma_prop": 0.15}, seed=17, metabolite=True,
                          lloq=5.0)
    assert float(df.DV.sum()) == pytest.approx(6728.06226814141, rel=1e-12)
    assert int(df.CENS.sum()) == 11
    pr = PKProblem("kamp2020", read_dataset(df), ["CL", "V1"], error="combined")
    est = PopulationFOCEI(pr)
    x = np.log([96.6, 21.25, 0.3, 0.3, 2.0, 0.15])
    assert est.ofv(x) == pytest.approx(656.9648621251655, rel=1e-10)
    est.set_quadrature(5)
    assert est.ofv(x) == pytest.approx(656.0918279972719, rel=1e-10)
