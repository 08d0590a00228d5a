"""The literature scorecard: case files, tolerance rules, CLI contract, user cases."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.validate import (
    Endpoint,
    draw_clinic,
    load_case,
    load_cases,
    run_validation,
    shipped_cases_dir,
    tolerance_interval,
)

DATA = Path(__file__).parent / "data" / "cases"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("KETASIM_CACHE", str(tmp_path_factory.getbasetemp() / "kcache"))


# ---------------------------------------------------------------- shipped cases
def test_every_calibration_study_file_has_a_case(shared_calibration):
    root = shared_calibration
    if root is None:
        pytest.skip("shared/literature/calibration not found")
    studies = {p.stem: p.parent.name for p in root.glob("*/*.yaml")}
    cases = {c.id: c for c in load_cases()}
    assert set(studies) <= set(cases), sorted(set(studies) - set(cases))
    for sid, folder in studies.items():
        c = cases[sid]
        assert c.set == "calibration"
        assert c.source == f"{folder}/{sid}.yaml"
        if folder == "clinical":  # every clinical study carries checkable endpoints
            assert c.endpoints, sid
        if not c.endpoints:
            assert len(c.reason) > 20, sid
    # the PK files with observed exposures are checked
    assert cases["observed_concentrations"].endpoints
    assert cases["perez_ruixo2021_esketamine"].endpoints


def test_shipped_cases_are_calibration_and_well_formed():
    cases = load_cases()
    assert len(cases) >= 40
    for c in cases:
        assert c.set == "calibration"
        for e in c.endpoints:
            if e.expect is None:
                lo, hi = tolerance_interval(e)
                assert lo < hi, (c.id, e.name)
                if e.observed is not None:
                    assert lo <= float(e.observed) <= hi, (c.id, e.name)


# ---------------------------------------------------------------- tolerance rules
def _ep(**kw) -> Endpoint:
    base = {"name": "x", "metric": "mean_change", "arm": "a", "at": "24 h"}
    return Endpoint.model_validate({**base, **kw})


def test_tolerance_rules():
    # se from sd and n, with a floor
    lo, hi = tolerance_interval(_ep(observed=-10, sd=8, n=16, tolerance={"rule": "se"}))
    assert (lo, hi) == pytest.approx((-14.0, -6.0))
    lo, hi = tolerance_interval(_ep(observed=-10, sd=8, n=1600, tolerance={"rule": "se",
                                                                            "floor": 2}))
    assert (lo, hi) == pytest.approx((-12.0, -8.0))
    # binomial: Wilson interval, asymmetric near 0, never beyond the floor-widened range
    lo, hi = tolerance_interval(_ep(metric="response_rate", observed=0.05, n=40,
                                    tolerance={"rule": "binomial"}))
    assert 0.0 < lo < 0.05 < hi and hi - 0.05 > 0.05 - lo
    lo2, hi2 = tolerance_interval(_ep(metric="response_rate", observed=0.5, n=4000,
                                      tolerance={"rule": "binomial", "floor": 0.05}))
    assert (lo2, hi2) == pytest.approx((0.45, 0.55))
    # ci95 widened to the floor
    assert tolerance_interval(_ep(observed=-1.0, ci95=[-1.1, -0.9],
                                  tolerance={"rule": "ci95", "floor": 0.2})) == pytest.approx(
        (-1.2, -0.8))
    assert tolerance_interval(_ep(observed=100, tolerance={"rule": "rel", "rel": 0.3})) == \
        pytest.approx((70, 130))


def test_endpoint_validation_messages():
    with pytest.raises(ValueError, match="unknown metric"):
        _ep(metric="nonsense", observed=1, tolerance={"rule": "abs", "abs": 1})
    with pytest.raises(ValueError, match="tolerance"):
        _ep(observed=1)
    with pytest.raises(ValueError, match="observed"):
        _ep(tolerance={"rule": "abs", "abs": 1})
    # rules that take their width from a number need it (tolerance_interval did 1 - None)
    for rule in ("rel", "abs"):
        with pytest.raises(ValueError, match=f"rule {rule} needs '{rule}'"):
            _ep(observed=1, tolerance={"rule": rule})
    with pytest.raises(ValueError, match="'at' needs at least one time"):
        _ep(at=[], observed=1, tolerance={"rule": "abs", "abs": 1})
    with pytest.raises(ValueError, match="conc_at needs 'at'"):
        _ep(metric="conc_at", at=None, observed=1, tolerance={"rule": "abs", "abs": 1})


def test_parameter_draws_move_only_calibrated_constants():
    from ketasim.cards import load_param_card

    card = load_param_card("clinic")
    c0 = {k: v.value for k, v in card.parameters.items()}
    rng = np.random.default_rng(1)
    draws = [draw_clinic(rng, c0) for _ in range(200)]
    for name, p in card.parameters.items():
        vals = np.array([d[name] for d in draws])
        if p.evidence == "calibrated" and c0[name] > 0:
            assert vals.std() > 0, name
            # centred on the card value on the log/logit scale (median ≈ card value)
            assert np.median(vals) == pytest.approx(c0[name], rel=0.1), name
            if 0 < c0[name] < 1 and name in ("drug_emax", "placebo_saline", "placebo_active"):
                assert np.all((vals > 0) & (vals < 1))
        else:
            assert np.all(vals == c0[name]), name


# ---------------------------------------------------------------- user cases (no code changes)
def test_user_cases_folder_runs_every_design(capsys):
    rc = main(["validate", "--cases", str(DATA), "--no-shipped", "--n", "12",
               "--replicates", "20", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    ids = {c["id"] for c in r["cases"]}
    assert ids == {"example_single_iv", "example_repeated_iv", "example_intranasal",
                   "example_other_routes", "example_bipolar_suicidality", "example_pk"}
    n_eps = 0
    for c in r["cases"]:
        assert c["set"] == "validation" and c["used_for_calibration"] is False
        assert c["endpoints"]
        for e in c["endpoints"]:
            n_eps += 1
            assert set(e) >= {"name", "observed", "predicted", "pi90", "tolerance", "within",
                              "mc_se", "verdict_agreement", "mc_stable"}
            assert isinstance(e["within"], bool)
            assert e["predicted"] is not None and math.isfinite(e["predicted"])
            lo, hi = e["pi90"]
            assert lo <= hi
    s = r["summary"]
    assert s["validation"]["endpoints"] == n_eps
    assert s["validation"]["within"] == sum(e["within"] for c in r["cases"]
                                            for e in c["endpoints"])
    assert s["calibration"]["endpoints"] == 0
    assert s["validation"]["mc_unstable"] == sum(not e["mc_stable"] for c in r["cases"]
                                                 for e in c["endpoints"])
    assert r["meta"]["seed"] == 0 and "card_hashes" in r["meta"]
    # every route and population in the examples gave a drug effect of the expected sign
    by = {(c["id"], e["name"]): e for c in r["cases"] for e in c["endpoints"]}
    assert by[("example_other_routes", "IM change 24 h")]["predicted"] < 0
    assert by[("example_bipolar_suicidality", "SSI relative change 24 h")]["predicted"] < 0
    assert by[("example_pk", "IM 0.5 mg/kg Cmax")]["predicted"] > 0


def test_seeded_results_are_reproducible_and_seed_matters():
    a = run_validation(str(DATA), n=10, seed=3, replicates=15, only=["example_single_iv"],
                       include_shipped=False)
    b = run_validation(str(DATA), n=10, seed=3, replicates=15, only=["example_single_iv"],
                       include_shipped=False)
    c = run_validation(str(DATA), n=10, seed=4, replicates=15, only=["example_single_iv"],
                       include_shipped=False)
    strip = [{k: v for k, v in e.items()} for e in a["cases"][0]["endpoints"]]
    assert strip == b["cases"][0]["endpoints"]
    assert [e["predicted"] for e in a["cases"][0]["endpoints"]] != \
        [e["predicted"] for e in c["cases"][0]["endpoints"]]


def test_prediction_interval_includes_parameter_uncertainty(monkeypatch):
    from ketasim import validate

    base = run_validation(str(DATA), n=20, seed=0, replicates=64, only=["example_single_iv"],
                          include_shipped=False)
    monkeypatch.setattr(validate, "draw_clinic", lambda rng, c0=None: dict(c0))
    fixed = run_validation(str(DATA), n=20, seed=0, replicates=64, only=["example_single_iv"],
                           include_shipped=False)
    w = [e["pi90"][1] - e["pi90"][0] for e in base["cases"][0]["endpoints"]]
    wf = [e["pi90"][1] - e["pi90"][0] for e in fixed["cases"][0]["endpoints"]]
    assert sum(w) > sum(wf)
    # the point prediction does not depend on the uncertainty draws
    assert [e["predicted"] for e in base["cases"][0]["endpoints"]] == \
        [e["predicted"] for e in fixed["cases"][0]["endpoints"]]


def test_strict_exits_nonzero_only_with_strict(tmp_path, capsys):
    case = (DATA / "single_iv.yaml").read_text(encoding="utf-8")
    case = case.replace("observed: -8.0, se: 2.5", "observed: 40.0, se: 0.1")
    (tmp_path / "c.yaml").write_text(case)
    args = ["validate", "--cases", str(tmp_path), "--no-shipped", "--n", "8",
            "--replicates", "5", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert not all(e["within"] for e in r["cases"][0]["endpoints"])
    assert main([*args, "--strict"]) == 1


@pytest.mark.parametrize(("text", "expect"), [
    ("id: x\nset: validation\nkind: trial\narms: [{name: a, control: saline}]\n"
     "endpoints: [{name: e, metric: bogus, arm: a, at: 24 h, observed: 1, "
     "tolerance: {rule: abs, abs: 1}}]\n", "unknown metric"),
    ("id: x\nset: validation\narms: [{name: a, control: saline}]\n"
     "endpoints: [{name: e, metric: mean_change, arm: b, at: 24 h, observed: 1, "
     "tolerance: {rule: abs, abs: 1}}]\n", "unknown arm"),
    ("id: x\nset: testing\nreason: none here at all\n", "set"),
    ("id: x\nset: validation\narms: [{name: a, drug: ketamine, route: iv, dose: lots}]\n"
     "endpoints: [{name: e, metric: mean_change, arm: a, at: 24 h, observed: 1, "
     "tolerance: {rule: abs, abs: 1}}]\n", "dose"),
    ("id: x\n  set: : [\n", "not valid YAML"),
    # a rule without its number (was an unexpected TypeError when the case ran)
    ("id: x\nset: validation\narms: [{name: a, control: saline}]\n"
     "endpoints: [{name: e, metric: mean_change, arm: a, at: 24 h, observed: 1, "
     "tolerance: {rule: rel}}]\n", "rule rel needs 'rel'"),
    ("id: x\nset: validation\narms: [{name: a, control: saline}]\n"
     "endpoints: [{name: e, metric: mean_change, arm: a, at: 24 h, observed: 1, "
     "tolerance: {rule: abs}}]\n", "rule abs needs 'abs'"),
    # 'at' as an empty list (was an IndexError when the case ran)
    ("id: x\nset: validation\narms: [{name: a, control: saline}]\n"
     "endpoints: [{name: e, metric: mean_change, arm: a, at: 24 h, observed: 1, "
     "tolerance: {rule: abs, abs: 1}}, {name: f, metric: mean_change, arm: a, at: [], "
     "observed: 1, tolerance: {rule: abs, abs: 1}}]\n", "'at' needs at least one time"),
    # a PK concentration without its time (was a TypeError when the case ran)
    ("id: x\nset: validation\nkind: pk\n"
     "endpoints: [{name: e, metric: conc_at, observed: 100, tolerance: {rule: rel, rel: 0.3}, "
     "regimen: {drug: ketamine, route: iv-infusion, dose: 0.5 mg/kg, duration: 40 min}}]\n",
     "needs 'at'"),
    ("- just a list\n", "mapping"),
])
def test_malformed_case_file_is_one_line_exit_2(tmp_path, capsys, text, expect):
    (tmp_path / "bad_case.yaml").write_text(text)
    rc = main(["validate", "--cases", str(tmp_path), "--no-shipped", "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "bad_case.yaml" in err and expect in err
    assert "Traceback" not in err


def test_folder_errors(tmp_path, capsys):
    assert main(["validate", "--cases", str(tmp_path / "nope"), "--no-shipped"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["validate", "--cases", str(tmp_path), "--no-shipped"]) == 2
    assert "no .yaml" in capsys.readouterr().err
    assert main(["validate", "--no-shipped"]) == 2
    with pytest.raises(KetasimError, match="unknown case"):
        run_validation(str(DATA), n=5, replicates=2, only=["nope"], include_shipped=False)


def test_duplicate_ids_rejected(tmp_path):
    src = (DATA / "single_iv.yaml").read_text(encoding="utf-8")
    (tmp_path / "a.yaml").write_text(src)
    (tmp_path / "b.yaml").write_text(src)
    with pytest.raises(KetasimError, match="duplicate"):
        load_cases(str(tmp_path), include_shipped=False)


def test_one_shipped_calibration_case_runs(capsys):
    rc = main(["validate", "--case", "murrough2013a", "--n", "10", "--replicates", "10",
               "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    (c,) = r["cases"]
    assert c["set"] == "calibration" and c["used_for_calibration"]
    assert r["summary"]["calibration"]["endpoints"] == len(c["endpoints"]) >= 5
    names = {e["name"] for e in c["endpoints"]}
    assert "MADRS difference 24 h" in names
    diff = next(e for e in c["endpoints"] if e["name"] == "MADRS difference 24 h")
    assert diff["predicted"] < 0  # ketamine improves more than midazolam
    assert diff["tolerance"]["interval"] == pytest.approx([-12.71, -3.20])


def test_case_without_endpoints_reports_reason(capsys):
    assert main(["validate", "--case", "potency", "--json"]) == 0
    (c,) = json.loads(capsys.readouterr().out)["cases"]
    assert c["endpoints"] == [] and c["reason"]


def test_hypothesis_comparison(capsys):
    rc = main(["validate", "--cases", str(DATA), "--no-shipped", "--case", "example_single_iv",
               "--n", "6", "--replicates", "5", "--hypotheses", "all", "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["hypotheses"])[0] == "default"
    assert {"only:a", "only:e", "only:f"} <= set(r["hypotheses"])
    assert r["best_by_case"]["example_single_iv"]
    preds = {h: v["cases"][0]["endpoints"][0]["predicted"] for h, v in r["hypotheses"].items()}
    assert len({round(p, 6) for p in preds.values()}) > 1  # the hypotheses change the result


def test_shipped_dir_is_package_data():
    assert os.path.isfile(os.path.join(shipped_cases_dir(), "murrough2013a.yaml"))
    assert load_case(os.path.join(shipped_cases_dir(), "murrough2013a.yaml")).id == \
        "murrough2013a"


def test_table_output_names_sets_and_summary(capsys):
    rc = main(["validate", "--cases", str(DATA), "--no-shipped", "--case", "example_pk",
               "--n", "6", "--replicates", "5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "example_pk" in text and "(validation)" in text
    assert "validation: " in text and "endpoints within tolerance" in text
    assert "within the Monte Carlo error" in text
    assert "not medical advice" in text


def test_validation_statistics_follow_their_textbook_definitions():
    """Pooled SD weighted by degrees of freedom; crude odds ratio (Haldane only for an empty
    cell); significance as a t test at the study's n; lower median; PIs with 'not reached';
    a relative tolerance around a negative observation; no ±1e12 for zero spread."""
    import math

    from ketasim import validate as v

    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    b = np.array([2.0, 4.0])
    want = math.sqrt((7 * np.var(a, ddof=1) + 1 * np.var(b, ddof=1)) / 8)
    assert v._pooled_sd(a, b) == pytest.approx(want)
    assert v._pooled_sd(a, b) != pytest.approx(math.sqrt((np.var(a, ddof=1)
                                                          + np.var(b, ddof=1)) / 2))
    assert v._odds_ratio(6, 7, 1, 7) == pytest.approx(36.0)  # crude (6·6)/(1·1)
    assert v._odds_ratio(7, 7, 1, 7) == pytest.approx((7.5 / 0.5) / (1.5 / 6.5))
    # t with 12 df at −2.1 is not significant at 5% two-sided (z-equivalent above −1.96) …
    assert -1.96 < v._z_equivalent(-2.1, 12) < -1.85
    # … and a large study behaves as a z test
    assert v._z_equivalent(-2.1, 1e6) == pytest.approx(-2.1, abs=1e-4)
    assert v._z_equivalent(2.5, 20) == pytest.approx(-v._z_equivalent(-2.5, 20))
    assert v._lower_median([14.0, 16.0, 18.0, 20.0]) == 16.0
    assert v._lower_median([3.0, math.inf, math.inf]) == math.inf
    assert math.isnan(v._lower_median([]))
    # 22 values without the NaN: the 5th percentile is the 2nd smallest (no interpolation)
    assert v._percentiles([1.0, 2.0, math.nan] + [math.inf] * 20) == [2.0, None]
    assert v._percentiles([float(i) for i in range(101)]) == [5.0, 95.0]
    assert math.isnan(v._ratio(1.0, 0.0))
    e = v.Endpoint(name="x", metric="mean_change", arm="k", at="24 h", scale="madrs",
                   observed=-10.0, tolerance=v.Tolerance(rule="rel", rel=0.2))
    assert v.tolerance_interval(e) == (-12.0, -8.0)
    assert v.judge(e, -10.5)


def test_monte_carlo_error_of_the_point_prediction(monkeypatch):
    """Each prediction carries its Monte Carlo error (a bootstrap of the simulated patients,
    on its own random stream): it matches SD/√n for a mean, it does not move the prediction
    or its PI, and a verdict at the edge of the tolerance is flagged as not stable."""
    from ketasim import validate as v

    case = next(c for c in v.load_cases(str(DATA), include_shipped=False)
                if c.id == "example_pk")
    e0 = case.endpoints[0]
    # two endpoints, so that a bootstrap drawing from the replicates' stream would move the
    # second endpoint's interval
    case = case.model_copy(update={"endpoints": [e0, e0.model_copy(update={"name": "again"})]})
    rows = v.run_pk_case(case, 40, 0, 20)
    vals = v._pk_values(e0, case.population, 40, 0)
    assert rows[0]["mc_se"] == pytest.approx(np.std(vals, ddof=1) / math.sqrt(40), rel=0.25)
    monkeypatch.setattr(v, "MC_BOOTSTRAP", 0)
    bare = v.run_pk_case(case, 40, 0, 20)
    assert [(r["predicted"], r["pi90"]) for r in bare] == \
        [(r["predicted"], r["pi90"]) for r in rows]
    assert bare[0]["mc_se"] is None and bare[0]["mc_stable"] is False
    # the verdict flag: tolerance interval (−12, −8)
    e = v.Endpoint(name="x", metric="mean_change", arm="k", at="24 h", scale="madrs",
                   observed=-10.0, tolerance=v.Tolerance(rule="rel", rel=0.2))
    rng = np.random.default_rng(0)
    far = v.mc_error(e, -10.0, list(-10.0 + 0.5 * rng.standard_normal(200)))
    edge = v.mc_error(e, -8.1, list(-8.1 + 0.5 * rng.standard_normal(200)))
    assert far["mc_stable"] and far["verdict_agreement"] == 1.0
    assert far["mc_se"] == pytest.approx(0.5, rel=0.2)
    assert not edge["mc_stable"] and 0.4 < edge["verdict_agreement"] < 0.8
    # non-finite bootstrap values ("not reached") count in the agreement, not in the SE
    q = v.mc_error(e, math.inf, [math.inf] * 10)
    assert q["mc_se"] is None and q["verdict_agreement"] == 1.0 and q["mc_stable"]
