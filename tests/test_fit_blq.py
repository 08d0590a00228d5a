"""Concentrations below the limit of quantification (BLQ): data conventions, Beal's M3
likelihood in every estimator, M1, the command line and the forecast."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.stats import norm

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.fit import (
    IndividualMAP,
    IndividualMCMC,
    PKProblem,
    PopulationFOCEI,
    fit_population,
    read_dataset,
    simulate_dataset,
)
from ketasim.fit.estimators import _data_obj, conditional_modes
from ketasim.fit.forecast import forecast_patient
from ketasim.regimen import Regimen

DATA = Path(__file__).parent / "data" / "fit"
T_RICH = np.array([0.083, 0.167, 0.33, 0.5, 0.67, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 24])
IV = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
TRUTH = {"CL": 84 * 1.15, "V1": 25 * 0.85}


def _rows(**extra: list) -> pd.DataFrame:
    """One subject: an infusion and four concentrations (rows 1–5), plus ``extra`` columns."""
    d = {"ID": [1] * 5, "TIME": [0, 0.5, 2, 8, 24], "EVID": [1, 0, 0, 0, 0],
         "AMT": [35, 0, 0, 0, 0], "RATE": [52.5, 0, 0, 0, 0],
         "DV": [None, 250.0, 90.0, 30.0, 10.0], "MDV": [1, 0, 0, 0, 0]}
    d.update(extra)
    return pd.DataFrame(d)


# ------------------------------------------------------------------------ data conventions
def test_cens_column_monolix_style():
    """CENS 1: DV is the limit; the subject marks the row censored and keeps the limit as
    its value; a flag on the dose row and on an MDV 1 row is ignored; LIMIT 0 is accepted."""
    df = _rows(CENS=[1, 0, 0, 1, 1], LIMIT=[None, None, None, 0, None])
    df.loc[2, "MDV"] = 1  # not an observation, whatever the flag says
    df.loc[2, "CENS"] = 1
    ds = read_dataset(df)
    s = ds.subjects[0]
    assert list(s.obs_time_h) == [0.5, 8, 24]
    assert list(s.obs_censored) == [False, True, True]
    assert list(s.obs_value) == [250.0, 30.0, 10.0]
    assert list(s.censored("plasma")) == [False, True, True]
    assert ds.n_censored() == 2 and ds.n_censored("metabolite") == 0
    assert len(s.regimen) == 1


def test_blq_column_with_and_without_lloq():
    """BLQ 1: the limit is in LLOQ when that column exists (DV may then be empty), else in DV."""
    s = read_dataset(_rows(BLQ=[0, 0, 0, 1, 1], LLOQ=[None, None, None, 5.0, 5.0],
                           DV=[None, 250.0, 90.0, None, 0.0])).subjects[0]
    assert list(s.obs_censored) == [False, False, True, True]
    assert list(s.obs_value) == [250.0, 90.0, 5.0, 5.0]
    s = read_dataset(_rows(BLQ=[".", 0, 0, 0, 1])).subjects[0]
    assert list(s.obs_censored) == [False, False, False, True]
    assert s.obs_value[-1] == 10.0
    # without a flag column nothing is censored (an LLOQ column alone means nothing)
    s = read_dataset(_rows(LLOQ=[5.0] * 5)).subjects[0]
    assert not s.obs_censored.any() and s.obs_censored.shape == s.obs_value.shape


@pytest.mark.parametrize("extra, where, words", [
    ({"CENS": [0, 0, 2, 0, 0]}, "row 3 column CENS", "0 or 1"),
    ({"CENS": [0, 0, 0, -1, 0]}, "row 4 column CENS", "right censoring"),
    ({"BLQ": [0, 0.5, 0, 0, 0]}, "row 2 column BLQ", "0 or 1"),
    ({"BLQ": [0, 0, "yes", 0, 0]}, "row 3 column BLQ", "not a number"),
    ({"CENS": [0, 0, 0, 0, 1], "DV": [None, 250.0, 90.0, 30.0, None]}, "row 5 column DV",
     "limit"),
    ({"CENS": [0, 0, 0, 0, 1], "DV": [None, 250.0, 90.0, 30.0, 0.0]}, "row 5 column DV",
     "limit"),
    ({"BLQ": [0, 0, 0, 1, 0], "LLOQ": [None] * 5}, "row 4 column LLOQ", "missing"),
    ({"BLQ": [0, 0, 0, 1, 0], "LLOQ": [0, 0, 0, -2.0, 0]}, "row 4 column LLOQ", "-2"),
    ({"BLQ": [0, 0, 0, 1, 0], "LLOQ": [0, 0, 0, np.inf, 0]}, "row 4 column LLOQ", "inf"),
    ({"CENS": [0, 0, 0, 1, 0], "LIMIT": [None, None, None, 3.0, None]}, "row 4 column LIMIT",
     "interval censoring"),
    ({"CENS": [0, 0, 0, 1, 0], "BLQ": [0, 0, 0, 1, 0]}, "column BLQ", "not both"),
    ({"CENS": [0, 1, 0, 0, 0], "DVID": ["", "madrs", "plasma", "plasma", "plasma"],
      "DV": [None, 20.0, 90.0, 30.0, 10.0]}, "row 2 column CENS", "madrs score"),
])
def test_censoring_errors_name_row_and_column(extra, where, words):
    with pytest.raises(KetasimError) as e:
        read_dataset(_rows(**extra))
    msg = str(e.value)
    assert where in msg and words in msg and "\n" not in msg, msg


def test_censoring_error_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.csv"
    _rows(CENS=[0, 0, 0, -1, 0]).to_csv(p, index=False)
    rc = main(["fit", str(p), "--model", "kamp2020", "--estimate", "CL"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "row 4 column CENS" in err


def test_simulate_dataset_lloq_round_trips():
    """Values simulated below ``lloq`` become CENS 1 rows at the limit; the draws are those
    of the simulation without it; no ``lloq``, no CENS column."""
    kw = dict(sigma={"sigma_prop": 0.15}, seed=2)
    plain = simulate_dataset("kamp2020", 6, IV, T_RICH, TRUTH, {"CL": 0.3}, **kw)
    cens = simulate_dataset("kamp2020", 6, IV, T_RICH, TRUTH, {"CL": 0.3}, lloq=20.0, **kw)
    assert "CENS" not in plain.columns and "CENS" in cens.columns
    obs = plain.EVID == 0
    below = plain.loc[obs, "DV"].to_numpy() < 20.0
    assert 0 < below.sum() < below.size
    np.testing.assert_array_equal(cens.loc[obs, "CENS"].to_numpy(), below.astype(int))
    np.testing.assert_array_equal(cens.loc[obs, "DV"].to_numpy()[below], 20.0)
    np.testing.assert_array_equal(cens.loc[obs, "DV"].to_numpy()[~below],
                                  plain.loc[obs, "DV"].to_numpy()[~below])
    ds = read_dataset(cens)
    assert ds.n_censored() == below.sum()
    assert not read_dataset(plain).n_censored()
    with pytest.raises(KetasimError, match="lloq"):
        simulate_dataset("kamp2020", 2, IV, T_RICH, lloq=0.0)


# ------------------------------------------------------------------------ the M3 likelihood
def _hand_minus2ll(y, f, cens, err, sig):
    """−2 log p(y|f) written out with scipy.stats.norm (censored: P(Y < LLOQ))."""
    sd = np.sqrt(sig.get("sigma_add", 0.0) ** 2 + (sig.get("sigma_prop", 0.0) * f) ** 2)
    if err == "additive":
        sd = np.sqrt(sd**2 + 1e-6)  # the error model's floor
    return (np.sum(np.where(cens, -2 * norm.logcdf(y, f, sd), -2 * norm.logpdf(y, f, sd)),
                   axis=-1) - np.sum(~cens) * np.log(2 * np.pi))


@pytest.fixture(scope="module", params=[("proportional", {"sigma_prop": 0.15}),
                                        ("additive", {"sigma_add": 4.0})])
def small(request):
    err, sig = request.param
    df = simulate_dataset("kamp2020", 4, IV, T_RICH, TRUTH, {"CL": 0.3, "V1": 0.3}, error=err,
                          sigma=sig, seed=11, lloq=20.0)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL", "V1"], error=err)
    assert pr.any_censored and pr.n_censored == pr.cens.sum() > 0
    return pr, err, sig


def test_m3_data_term_and_conditional_mode_match_a_hand_written_likelihood(small):
    """The data term is Σ −2 log φ (observed) + Σ −2 log Φ((LLOQ − f)/sd) (censored), and the
    batched inner problem finds the minimum of data term + ηᵀΩ⁻¹η that a general-purpose
    optimiser finds on the hand-written objective."""
    pr, err, sig = small
    eta = np.tile([0.2, -0.1], (pr.n, 1))
    f = pr.predict(TRUTH, eta)
    ll, _, _ = _data_obj(pr, f, sig)
    for i in range(pr.n):
        m = pr.mask[i]
        hand = _hand_minus2ll(pr.y[i, m], f[i, m], pr.cens[i, m], err, sig)
        assert ll[i] == pytest.approx(hand, rel=1e-9, abs=1e-8)
    om = np.array([0.3, 0.3])
    c = conditional_modes(pr, TRUTH, om, sig)
    assert c.converged.all()
    for i in range(pr.n):
        sub = pr.take(np.array([i]))
        m = sub.mask[0]

        def obj(e, sub=sub, m=m):
            ff = sub.predict(TRUTH, e[None, :])[0, m]
            return (_hand_minus2ll(sub.y[0, m], ff, sub.cens[0, m], err, sig)
                    + np.sum(e**2 / om**2))

        r = minimize(obj, np.zeros(2), method="Nelder-Mead",
                     options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 4000})
        np.testing.assert_allclose(c.eta[i], r.x, atol=2e-4)


def _minus2ll_by_grid(pr, i, x, err, lo, hi, m=121):
    """−2 log ∫ p(yᵢ|η) p(η) dη of subject i (censored terms by norm.logcdf), dense 2-D grid."""
    g = [np.linspace(lo[k], hi[k], m) for k in range(2)]
    E1, E2 = np.meshgrid(*g, indexing="ij")
    eta = np.stack([E1.ravel(), E2.ravel()], axis=1)
    sub = pr.take(np.full(len(eta), i))
    th = {"CL": np.exp(x[0]), "V1": np.exp(x[1])}
    om = np.exp(x[2:4])
    sig = {pr.error.names[0]: float(np.exp(x[4]))}
    f = sub.predict(th, eta)
    mk = sub.mask[0]
    ll = (-0.5 * _hand_minus2ll(sub.y[0, mk], f[:, mk], sub.cens[0, mk], err, sig)
          - 0.5 * np.sum(~sub.cens[0, mk]) * np.log(2 * np.pi))
    logp = ll - 0.5 * np.sum(eta**2 / om**2, axis=1) - np.log(2 * np.pi * np.prod(om))
    w = np.outer(*[np.r_[0.5, np.ones(m - 2), 0.5] * (gk[1] - gk[0]) for gk in g]).ravel()
    top = logp.max()
    return -2 * (top + np.log(np.sum(w * np.exp(logp - top))))


def test_m3_quadrature_objective_is_the_marginal_likelihood(small):
    """With censored observations the reported (adaptive-quadrature) objective of each
    subject is its exact −2 log marginal likelihood, M3 terms included (dense-grid integral
    of the hand-written likelihood); the Laplace (FOCE-I) term is close to it."""
    pr, err, sig = small
    est = PopulationFOCEI(pr)
    x = np.log([TRUTH["CL"], TRUTH["V1"], 0.3, 0.3, next(iter(sig.values()))])
    laplace = est.ofv_terms(x)
    eta = est._last.eta
    sd = np.sqrt(np.diagonal(np.linalg.inv(est._last.info), axis1=1, axis2=2))
    est.set_quadrature(5)
    agq = est.ofv_terms(x)
    exact = np.array([_minus2ll_by_grid(pr, i, x, err, eta[i] - 7 * sd[i], eta[i] + 7 * sd[i])
                      for i in range(pr.n)])
    np.testing.assert_allclose(agq, exact, atol=0.02)
    np.testing.assert_allclose(laplace, exact, atol=1.0)


def test_censored_value_where_the_model_predicts_zero_is_finite():
    """Proportional error, a censored sample before the dose (prediction 0, residual SD ~0):
    Φ → 1, the term is 0 — no NaN, and the reader does not refuse it (an observed positive
    value there is refused, tests/test_fit_robustness.py)."""
    df = _rows(CENS=[0, 0, 0, 0, 0])
    pre = pd.DataFrame({"ID": [1], "TIME": [0.0], "EVID": [0], "AMT": [0], "RATE": [0],
                        "DV": [1.0], "MDV": [0], "CENS": [1]})
    df = pd.concat([pre, df], ignore_index=True)
    pr = PKProblem("kamp2020", read_dataset(df), ["CL"])
    assert pr.cens[0, 0] and pr.n_censored == 1
    f = pr.predict(pr.theta0())
    assert f[0, 0] == 0.0
    ll, _, _ = _data_obj(pr, f, {"sigma_prop": 0.15})
    without = pr.take(np.array([0]))
    without.mask = without.mask.copy()
    without.mask[0, 0] = False
    ll0, _, _ = _data_obj(without, f, {"sigma_prop": 0.15})
    assert np.isfinite(ll).all() and ll[0] == pytest.approx(ll0[0], abs=1e-12)
    res = PopulationFOCEI(pr, covariance=False).run()
    assert np.isfinite(res.objective)


def test_m1_drops_censored_rows_and_a_subject_left_without_data():
    df = simulate_dataset("kamp2020", 3, IV, T_RICH, TRUTH, {"CL": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=2, lloq=20.0)
    extra = pd.DataFrame({"ID": [9, 9], "TIME": [0.0, 30.0], "EVID": [1, 0], "AMT": [35, 0],
                          "RATE": [52.5, 0], "DV": [np.nan, 20.0], "MDV": [1, 0],
                          "CENS": [0, 1], "WT": [70, 70]})
    ds = read_dataset(pd.concat([df, extra], ignore_index=True))
    m3 = PKProblem("kamp2020", ds, ["CL"])
    m1 = PKProblem("kamp2020", ds, ["CL"], blq="m1")
    assert m3.blq == "m3" and m3.n == 4 and m3.n_obs == ds.n_obs()
    assert m1.n == 3 and m1.n_obs == ds.n_obs() - ds.n_censored() and not m1.any_censored
    assert m1.n_censored == m3.n_censored == ds.n_censored()
    with pytest.raises(KetasimError, match="blq"):
        PKProblem("kamp2020", ds, ["CL"], blq="m4")


# ------------------------------------------------------------------------ estimators
@pytest.fixture(scope="module")
def blq_set():
    """20 subjects, CL with IIV, 24 h sampling, LLOQ 20 ng/mL: about 30% censored."""
    df = simulate_dataset("kamp2020", 20, IV, T_RICH, TRUTH, {"CL": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=21, lloq=20.0)
    gm = float(np.exp(np.mean(np.log(df.attrs["individual"]["CL"]))))
    return df, gm


def test_m3_recovers_clearance_where_the_naive_fit_does_not(blq_set):
    """Taking the limit as an observed value (the naive fit) drags CL far off; M3 recovers the
    realised geometric mean of the subjects' clearances, and its IIV."""
    df, gm = blq_set
    ds = read_dataset(df)
    assert 0.2 < ds.n_censored() / ds.n_obs() < 0.4
    kw = dict(covariance=False)
    m3 = PopulationFOCEI(PKProblem("kamp2020", ds, ["CL"]), **kw).run()
    naive = PopulationFOCEI(PKProblem("kamp2020", read_dataset(df.drop(columns="CENS")),
                                      ["CL"]), **kw).run()
    err_m3 = abs(np.log(m3.theta["CL"] / gm))
    err_naive = abs(np.log(naive.theta["CL"] / gm))
    assert m3.converged and err_m3 < 0.05, err_m3
    assert err_naive > 0.3 and err_naive > 10 * err_m3
    assert abs(m3.estimates["CL"].iiv_cv / np.sqrt(np.expm1(0.09)) - 1) < 0.4
    assert m3.blq == "m3" and m3.n_censored == ds.n_censored()
    assert m3.to_dict()["n_censored"] == ds.n_censored()


def test_map_and_mcmc_use_the_m3_likelihood(blq_set):
    """IndividualMAP's mode and IndividualMCMC's posterior of a subject with censored samples
    match the hand-written posterior (normal densities and normal CDFs, 1-D grid)."""
    df, _ = blq_set
    pr = PKProblem("kamp2020", read_dataset(df), ["CL"])
    i = int(np.argmax(pr.cens.sum(axis=1)))  # the subject with most censored samples
    sig, om = {"sigma_prop": 0.15}, np.array([0.3])
    grid = np.linspace(-1.5, 1.5, 3001)
    sub = pr.take(np.full(len(grid), i))
    f = sub.predict(TRUTH, grid[:, None])
    m = sub.mask[0]
    logp = -0.5 * _hand_minus2ll(sub.y[0, m], f[:, m], sub.cens[0, m], "proportional", sig)
    logp -= 0.5 * grid**2 / om[0] ** 2
    mode = grid[np.argmax(logp)]
    p = np.exp(logp - logp.max())
    mean = np.sum(grid * p) / p.sum()
    sd = np.sqrt(np.sum((grid - mean) ** 2 * p) / p.sum())
    one = pr.take(np.array([i]))
    res = IndividualMAP(one, theta=TRUTH, omega_sd=om, sigma=sig).run()
    assert res.eta[0, 0] == pytest.approx(mode, abs=2e-3)
    assert res.n_censored == one.cens.sum() > 0
    mc = IndividualMCMC(pr, i, TRUTH, om, sig, seed=5, n_walkers=16, n_steps=600).run()
    draws = mc["draws"][:, 0]
    assert abs(draws.mean() - mean) < 0.25 * sd
    assert 0.8 < draws.std() / sd < 1.25


# ------------------------------------------------------------------------ CLI, report
@pytest.fixture(scope="module")
def blq_csv(tmp_path_factory):
    df = simulate_dataset("kamp2020", 8, IV, T_RICH[::2], TRUTH, {"CL": 0.3},
                          sigma={"sigma_prop": 0.15}, seed=8, lloq=20.0)
    p = tmp_path_factory.mktemp("blq") / "blq.csv"
    df.to_csv(p, index=False)
    ds = read_dataset(str(p))
    return p, ds.n_censored(), ds.n_obs()


def test_cli_blq_option_json_and_report(blq_csv, tmp_path, capsys):
    p, n_cens, n_obs = blq_csv
    rep = tmp_path / "fit.html"
    assert main(["fit", str(p), "--model", "kamp2020", "--estimate", "CL", "--json",
                 "--report", str(rep)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["metadata"]["options"]["blq"] == "m3" and d["blq"] == "m3"
    assert d["n_censored"] == n_cens > 0 and d["n_obs"] == n_obs
    html = rep.read_text(encoding="utf-8")
    assert f"{n_cens} observation(s) below the limit of quantification" in html
    assert "M3" in html and html.count("data:image/png;base64,") == 3
    # the VPC's panel of the fraction below the limit, with its numbers under the figure
    m = re.search(r"Fraction below the LLOQ \(([\d.]+) ng/mL\) per time bin .*?: observed "
                  r"([\d., ]+); simulated median ([\d., ]+) \(90% band", html)
    assert m is not None
    obs = [float(x) for x in m.group(2).split(", ")]
    sim = [float(x) for x in m.group(3).split(", ")]
    assert len(obs) == len(sim) >= 3 and max(obs) > 0 and min(obs) == 0.0
    assert abs(sum(obs) - sum(sim)) < 0.5 * len(obs)  # a fitted model tracks the BLQ fraction
    assert main(["fit", str(p), "--model", "kamp2020", "--estimate", "CL", "--json",
                 "--blq", "m1"]) == 0
    d1 = json.loads(capsys.readouterr().out)
    assert d1["metadata"]["options"]["blq"] == "m1" and d1["blq"] == "m1"
    assert d1["n_censored"] == n_cens and d1["n_obs"] == n_obs - n_cens
    assert d1["objective"] != d["objective"]
    assert main(["fit", str(p), "--model", "kamp2020", "--estimate", "CL"]) == 0
    assert f"{n_cens} observation(s) below the limit" in capsys.readouterr().out


def test_cli_unknown_blq_is_one_line_exit_2(blq_csv, capsys):
    p, _, _ = blq_csv
    rc = main(["fit", str(p), "--model", "kamp2020", "--estimate", "CL", "--blq", "m4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "blq" in err and "m4" in err
    with pytest.raises(KetasimError, match="blq"):
        fit_population(str(p), "kamp2020", ["CL"], blq="drop")


def test_forecast_reads_a_patient_file_with_a_blq_column(tmp_path):
    """A BLQ column (and a censored concentration) in a patient file does not change the
    MADRS forecast; a BLQ flag on a score is refused naming row and column."""
    df = pd.read_csv(DATA / "patient.csv")
    df["BLQ"] = 0
    conc = pd.DataFrame({"ID": [1], "TIME": [30.0], "EVID": [0], "AMT": [0.0],
                         "RATE": [0.0], "DV": [5.0], "MDV": [0], "DVID": ["plasma"],
                         "WT": [df.WT.iloc[0]], "BLQ": [1]})
    df = pd.concat([df.iloc[:3], conc, df.iloc[3:]], ignore_index=True)
    p = tmp_path / "patient_blq.csv"
    df.to_csv(p, index=False)
    kw = dict(horizon_days=7, seed=3, n_steps=150)
    a = forecast_patient(str(p), **kw)
    b = forecast_patient(str(DATA / "patient.csv"), **kw)
    np.testing.assert_array_equal(a.median, b.median)
    df.loc[1, "BLQ"] = 1  # the first MADRS score
    df.to_csv(p, index=False)
    with pytest.raises(KetasimError, match="row 2 column BLQ"):
        forecast_patient(str(p), **kw)
