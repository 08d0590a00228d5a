"""Virtual trials: reproducibility under chunking and executors, endpoint statistics, the
`ketasim trial` / `ketasim run` contracts, bad scenario files and the shipped examples."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ketasim import stats
from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.scenario import load_scenario, parse_scenario
from ketasim.trial import (
    arm_sizes,
    example_names,
    example_path,
    resolve_scenario,
    run_trial,
    with_overrides,
)

SMALL = {
    "title": "small test trial",
    "population": {"disorder": "trd", "n": 14, "seed": 7},
    "arm": [
        {"name": "ketamine", "drug": "ketamine", "route": "iv-infusion", "dose": "0.5 mg/kg",
         "duration": "40 min", "ratio": 1},
        {"name": "midazolam", "control": "active-placebo", "ratio": 1},
    ],
    "endpoints": {"scale": "madrs", "at": ["40 min", "24 h", "7 d"]},
}


def run(capsys, args):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def small():
    return parse_scenario(SMALL)


@pytest.fixture(scope="module")
def reference(small):
    """The small trial, unchunked and serial."""
    return run_trial(small, chunk_size=10_000, executor="serial")


# ------------------------------------------------------------------ reproducibility
def test_chunked_equals_unchunked(small, reference):
    chunked = run_trial(small, chunk_size=3, executor="serial")
    pd.testing.assert_frame_equal(chunked.data, reference.data, check_exact=True)
    assert chunked.to_dict()["arms"] == reference.to_dict()["arms"]
    assert chunked.to_dict()["differences"] == reference.to_dict()["differences"]


def test_processes_equal_serial(small, reference):
    calls = []
    par = run_trial(small, chunk_size=4, executor="processes", workers=2,
                    progress=lambda done, total: calls.append((done, total)))
    pd.testing.assert_frame_equal(par.data, reference.data, check_exact=True)
    assert par.to_dict()["arms"] == reference.to_dict()["arms"]
    assert calls[-1] == (14, 14)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_same_seed_same_results_different_seed_differs(small, reference):
    again = run_trial(small)
    pd.testing.assert_frame_equal(again.data, reference.data, check_exact=True)
    other = run_trial(with_overrides(small, seed=8))
    assert not np.array_equal(other.data["madrs"].to_numpy(), reference.data["madrs"].to_numpy())
    assert other.meta["seed"] == 8


def test_long_table_shape_and_baseline(small, reference):
    d = reference.data
    assert len(d) == 14 * 4  # baseline + 3 visits
    assert list(d["visit"].cat.categories) == ["baseline", "40 min", "24 h", "7 d"]
    base = d[d["time_h"] == 0.0]
    np.testing.assert_array_equal(base["madrs"].to_numpy(), base["baseline_madrs"].to_numpy())
    for col in ("patient", "arm", "time_h", "madrs", "hamd17", "hamd6", "madrs_item10", "ssi",
                "cadss", "sbp_change_mmhg", "sedation", "effect_site_ng_per_ml"):
        assert col in d.columns


def test_arm_sizes_follow_ratio():
    sc = parse_scenario({**SMALL, "population": {"n": 73},
                         "arm": [{**SMALL["arm"][0], "ratio": 2}, SMALL["arm"][1]]})
    assert arm_sizes(sc) == [49, 24]
    with pytest.raises(KetasimError, match="population.n"):
        arm_sizes(with_overrides(sc, n=1))


# ------------------------------------------------------------------ statistics
def test_identical_control_arms_difference_ci_contains_zero():
    """Two identical saline arms: the difference CI contains 0 (about 95 % of the time: the
    check runs 10 seeds × 3 visits and wants at least 24 of the 30 CIs to contain 0)."""
    covered, total = 0, 0
    for seed in range(10):
        sc = parse_scenario({
            "population": {"n": 60, "seed": seed},
            "arm": [{"name": "saline A", "control": "saline"},
                    {"name": "saline B", "control": "saline"}],
            "endpoints": {"at": ["1 d", "3 d", "7 d"]},
        })
        s = run_trial(sc).to_dict()
        for row in s["differences"]["saline A-saline B"].values():
            lo, hi = row["ci95"]
            covered += lo < 0 < hi
            total += 1
            rlo, rhi = row["response_rate_difference_ci95"]
            assert rlo <= row["response_rate_difference"] <= rhi
        for rows in s["arms"].values():
            for row in rows.values():
                assert 0.0 <= row["response_rate"] <= 1.0
                assert 0.0 <= row["remission_rate"] <= 1.0
                assert row["ci95"][0] <= row["change"] <= row["ci95"][1]
    assert covered >= 24, f"{covered}/{total}"


def test_endpoint_values_match_the_long_table(reference):
    s = reference.to_dict()
    d = reference.data
    k = d[d["arm"] == "ketamine"].sort_values(["patient", "time_h"])
    b = k[k["visit"] == "baseline"]["madrs"].to_numpy()
    x = k[k["visit"] == "24 h"]["madrs"].to_numpy()
    row = s["arms"]["ketamine"]["24 h"]
    assert row["n"] == 7
    assert row["mean"] == pytest.approx(x.mean())
    assert row["change"] == pytest.approx((x - b).mean())
    assert row["response_rate"] == pytest.approx(np.mean(x <= 0.5 * b))
    assert row["remission_rate"] == pytest.approx(np.mean(x <= 10.0))
    m = d[d["arm"] == "midazolam"].sort_values(["patient", "time_h"])
    cm = (m[m["visit"] == "24 h"]["madrs"].to_numpy()
          - m[m["visit"] == "baseline"]["madrs"].to_numpy())
    diff = s["differences"]["ketamine-midazolam"]["24 h"]
    ref = st.ttest_ind(x - b, cm, equal_var=False)
    assert diff["difference"] == pytest.approx((x - b).mean() - cm.mean())
    assert diff["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_stats_helpers():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, 40), rng.normal(0, 1, 25)
    w = stats.welch(a, b)
    ci = st.ttest_ind(a, b, equal_var=False).confidence_interval()
    assert w["ci95"] == pytest.approx((ci.low, ci.high), rel=1e-9)
    lo, hi = stats.mean_ci(a)
    ref = st.ttest_1samp(a, 0).confidence_interval()
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)
    r = stats.wald_diff(30, 50, 20, 50)
    assert r["difference"] == pytest.approx(0.2)
    se = math.sqrt(0.6 * 0.4 / 50 + 0.4 * 0.6 / 50)
    assert r["ci95"] == pytest.approx((0.2 - 1.959964 * se, 0.2 + 1.959964 * se), rel=1e-5)
    assert stats.event_median([1, 2, 3, 9, 9], [1, 1, 1, 0, 0]) == 3.0
    assert stats.event_median([1, 2, 9, 9, 9], [1, 1, 0, 0, 0]) is None
    assert math.isnan(stats.cohens_d([1.0], [2.0, 3.0]))


def test_relapse_after_repeated_infusions():
    sc = with_overrides(resolve_scenario("murrough2013b"), n=6)
    r = run_trial(sc).to_dict()["arm_summary"]["ketamine x6"]["relapse"]
    assert r["last_dose_h"] == pytest.approx(11 * 24.0)
    assert r["responder_visit"] == "12 d"
    assert r["n_relapsed"] + r["n_censored"] == r["n_at_risk"]
    assert all(0 < t <= 84 * 24.0 for t in r["relapse_times_h"])


def test_newcombe_interval_known_values():
    """Newcombe's hybrid score interval (method 10): Newcombe 1998 Table II and the audit's
    cases; first proportion minus second, as the trial's ARM1 minus ARM2."""
    cases = {(56, 70, 48, 80): (0.0524, 0.3339), (9, 10, 3, 10): (0.1705, 0.8090),
             (5, 56, 0, 29): (-0.0381, 0.1926), (0, 10, 0, 20): (-0.1611, 0.2775),
             (0, 10, 0, 10): (-0.2775, 0.2775), (10, 10, 0, 20): (0.6791, 1.0),
             (0, 25, 0, 47): (-0.0756, 0.1332), (25, 25, 20, 47): (0.3800, 0.7049)}
    for (k1, n1, k2, n2), ci in cases.items():
        r = stats.newcombe_diff(k1, n1, k2, n2)
        assert r["difference"] == pytest.approx(k1 / n1 - k2 / n2)
        assert r["ci95"] == pytest.approx(ci, abs=6e-5), (k1, n1, k2, n2)
    # the sign follows the order of the arms
    lo, hi = stats.newcombe_diff(20, 47, 25, 25)["ci95"]
    assert (lo, hi) == pytest.approx((-0.7049, -0.3800), abs=6e-5)
    assert stats.wilson(0, 25) == pytest.approx((0.0, 0.1332), abs=6e-5)
    assert all(math.isnan(x) for x in stats.newcombe_diff(0, 0, 1, 2)["ci95"])


def test_rate_differences_use_newcombe(reference):
    """Response and remission differences carry Newcombe intervals (the Wald interval has
    zero width at 0/n vs 0/n and at 100% vs 100%)."""
    s = reference.to_dict()
    for v, d in s["differences"]["ketamine-midazolam"].items():
        a, b = s["arms"]["ketamine"][v], s["arms"]["midazolam"][v]
        for rate, k in (("response_rate", "n_responders"), ("remission_rate", "n_remitters")):
            ref = stats.newcombe_diff(a[k], a["n"], b[k], b["n"])
            assert d[f"{rate}_difference"] == pytest.approx(ref["difference"])
            assert d[f"{rate}_difference_ci95"] == pytest.approx(list(ref["ci95"]))
            lo, hi = d[f"{rate}_difference_ci95"]
            assert hi - lo > 0
    assert "Newcombe" in s["meta"]["definitions"]["response_rate_difference"]
    assert "Wald" not in json.dumps(s["meta"]["definitions"])


def test_welch_without_spread_is_undefined():
    """No spread in either group: SE 0, so no t statistic; CI and p are NaN (JSON null), not a
    zero-width CI with p = 0."""
    w = stats.welch([1.0, 1.0, 1.0], [2.0, 2.0])
    assert w["difference"] == -1.0 and w["se"] == 0.0
    assert all(math.isnan(x) for x in (*w["ci95"], w["p_value"], w["df"]))
    w = stats.welch([3.0, 3.0], [3.0, 3.0])
    assert w["difference"] == 0.0 and math.isnan(w["p_value"])
    # one patient in a group: only the difference is defined (unchanged)
    w = stats.welch([1.0], [2.0, 3.0])
    assert w["difference"] == -1.5
    assert all(math.isnan(x) for x in (*w["ci95"], w["se"], w["df"], w["p_value"]))


def test_lower_median_is_a_visit_time():
    assert stats.lower_median([24.0, 4.0]) == 4.0  # np.median: 14 h, not a visit
    assert stats.lower_median([1.0, 4.0, 24.0]) == 4.0
    assert stats.lower_median([]) is None
    assert stats.lower_median([4.0, 24.0]) == stats.event_median([4.0, 24.0], [True, True])
    # a trial arm with 8 responders: 4 at 40 min, 3 at 24 h, 1 at 7 d
    sc = parse_scenario({**SMALL, "population": {"disorder": "trd", "n": 20, "seed": 1}})
    res = run_trial(sc)
    p = res.patients("ketamine")
    ttr = np.sort(p.loc[p["responded"], "time_to_response_h"].to_numpy())
    assert ttr.size % 2 == 0
    tt = res.to_dict()["arm_summary"]["ketamine"]["time_to_response"]
    assert tt["median_among_responders_h"] == ttr[ttr.size // 2 - 1]
    assert tt["median_among_responders_h"] in res.meta["visits_h"]


def test_relapse_with_followup(reference):
    """A visit after the responder visit: counts, fraction and median as before."""
    for r in (b["relapse"] for b in reference.to_dict()["arm_summary"].values()):
        assert r["assessable"] is True and r["note"] is None
        assert r["responder_visit"] == "24 h"
        assert isinstance(r["n_at_risk"], int) and r["n_at_risk"] > 0
        assert r["n_relapsed"] + r["n_censored"] == r["n_at_risk"]
        assert r["relapse_fraction"] == pytest.approx(r["n_relapsed"] / r["n_at_risk"])


NO_FOLLOWUP = ('title = "no follow-up"\n[population]\nn = 8\nseed = 5\n'
               '[[arm]]\nname = "ketamine"\ndrug = "ketamine"\nroute = "iv-infusion"\n'
               'dose = "0.5 mg/kg"\nduration = "40 min"\n'
               '[[arm]]\nname = "saline"\ncontrol = "saline"\n'
               '[endpoints]\nat = ["40 min", "24 h"]\n')


def test_relapse_not_assessable_without_followup(capsys, tmp_path):
    """The responder visit is the last visit: relapse is not assessable (null), not "0 of N
    relapsed, N censored"."""
    path = tmp_path / "s.toml"
    path.write_text(NO_FOLLOWUP)
    rc, out, err = run(capsys, ["trial", str(path), "--json"])
    assert rc == 0, err
    d = json.loads(out)
    for r in (b["relapse"] for b in d["arm_summary"].values()):
        assert r["responder_visit"] == "24 h" and r["assessable"] is False
        assert r["note"] == "no follow-up after the responder visit"
        for key in ("relapse_fraction", "n_at_risk", "n_relapsed", "n_censored", "median_d"):
            assert r[key] is None, key
    rc, out, err = run(capsys, ["trial", str(path), "--out", str(tmp_path / "o")])
    assert rc == 0, err
    lines = [x for x in out.splitlines() if "relapse:" in x]
    assert len(lines) == 2
    assert all("no follow-up after the responder visit" in x and "censored" not in x
               for x in lines)
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert html.count("not assessable: no follow-up after the responder visit") == 2


def test_relapse_followup_without_visits_says_how_to_fix_it(capsys, tmp_path):
    """`relapse_followup` adds no visits: when the scenario sets it but lists no visit after
    the responder visit, the note says to list the follow-up visits in `at`."""
    path = tmp_path / "s.toml"
    path.write_text(NO_FOLLOWUP.replace('at = ["40 min", "24 h"]',
                                        'at = ["40 min", "24 h"]\nrelapse_followup = "4 weeks"'))
    rc, out, err = run(capsys, ["trial", str(path), "--json"])
    assert rc == 0, err
    for r in (b["relapse"] for b in json.loads(out)["arm_summary"].values()):
        assert r["assessable"] is False
        assert r["note"].startswith("no follow-up after the responder visit")
        assert "relapse_followup adds no visits" in r["note"] and "endpoints.at" in r["note"]


def test_terminal_reports_side_effect_peaks_between_visits(capsys, tmp_path):
    """With no visit at the end of the infusion the visit means of CADSS are 0; the terminal
    still shows each arm's per-patient peaks (as the JSON and report do)."""
    path = tmp_path / "s.toml"
    path.write_text(NO_FOLLOWUP.replace('at = ["40 min", "24 h"]', 'at = ["4 h", "24 h"]'))
    rc, out, err = run(capsys, ["trial", str(path)])
    assert rc == 0, err
    peaks = [x for x in out.splitlines() if "peaks per patient" in x]
    assert len(peaks) == 2
    ket = float(peaks[0].split("CADSS mean")[1].split()[0])
    sal = float(peaks[1].split("CADSS mean")[1].split()[0])
    assert ket > 0.5 and sal == 0.0
    assert "ng/mL" in peaks[0] and "mmHg" in peaks[0]


def test_same_patients_in_every_arm():
    """Common random numbers: with the option, patient i of every arm is the same person
    (covariates, random effects, visit noise); without it the arms draw their own."""
    import tomllib

    from ketasim.population import sample_arm

    text = ('[population]\nn = 12\nseed = 3\n{}'
            '[[arm]]\nname = "a"\ndrug = "ketamine"\nroute = "iv-infusion"\n'
            'dose = "0.5 mg/kg"\nduration = "40 min"\n'
            '[[arm]]\nname = "b"\ndrug = "ketamine"\nroute = "iv-infusion"\n'
            'dose = "0.5 mg/kg"\nduration = "40 min"\nhypotheses = "only:e"\n')
    for same in (True, False):
        sc = parse_scenario(tomllib.loads(text.format(
            "same_patients_in_every_arm = true\n" if same else "")))
        a, b = (sample_arm(sc.population, k, 6) for k in (0, 1))
        for x, y in zip(a, b, strict=True):
            fields = (x.weight_kg, x.baseline_madrs, x.eta_emax, x.pk_factor_cl) == (
                y.weight_kg, y.baseline_madrs, y.eta_emax, y.pk_factor_cl)
            assert fields is same
            assert np.array_equal(x.residual, y.residual) is same
        # the default arm 0 is unchanged by the option
        c = sample_arm(parse_scenario(tomllib.loads(text.format(""))).population, 0, 6)
        assert [p.baseline_madrs for p in a] == [p.baseline_madrs for p in c]


# ------------------------------------------------------------------ CLI contracts
def test_trial_json_contract(capsys, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'title = "contract"\n[population]\nn = 8\nseed = 5\n'
        '[[arm]]\nname = "ketamine"\ndrug = "ketamine"\nroute = "iv-infusion"\n'
        'dose = "0.5 mg/kg"\nduration = "40 min"\n'
        '[[arm]]\nname = "saline"\ncontrol = "saline"\n'
        '[endpoints]\nat = ["4 h", "24 h"]\n')
    rc, out, err = run(capsys, ["trial", str(path), "--json", "--out", str(tmp_path / "o")])
    assert rc == 0, err
    d = json.loads(out)
    assert set(d["arms"]) == {"ketamine", "saline"}
    for arm in d["arms"].values():
        assert list(arm) == ["4 h", "24 h"]
        for row in arm.values():
            for key in ("n", "mean", "change", "response_rate", "remission_rate", "sd", "ci95",
                        "madrs_item10_change", "ssi_change", "cadss_mean",
                        "sbp_change_mmhg_mean", "sedation_mean", "dissociation_incidence"):
                assert key in row
    row = d["arms"]["ketamine"]["24 h"]
    assert row["change_ci95"] == row["ci95"] and row["change_ci95"] != row["mean_ci95"]
    diff = d["differences"]["ketamine-saline"]["24 h"]
    assert isinstance(diff["difference"], float) and len(diff["ci95"]) == 2
    for key in ("response_rate_difference", "response_rate_difference_ci95", "cohens_d"):
        assert key in diff
    meta = d["meta"]
    assert meta["seed"] == 5 and meta["ketasim_version"] and meta["card_hashes"]
    assert parse_scenario(meta["scenario"]) == load_scenario(str(path))
    for name in ("results.parquet", "summary.json", "report.html"):
        assert (tmp_path / "o" / name).is_file()
    table = pd.read_parquet(tmp_path / "o" / "results.parquet")
    assert len(table) == 8 * 3
    # the results file carries its own provenance (copied or downloaded alone)
    import pyarrow.parquet as pq

    md = pq.read_schema(tmp_path / "o" / "results.parquet").metadata
    assert json.loads(md[b"ketasim.seed"]) == 5
    assert json.loads(md[b"ketasim.ketasim_version"]) == meta["ketasim_version"]
    assert json.loads(md[b"ketasim.card_hashes"]) == meta["card_hashes"]
    assert parse_scenario(json.loads(md[b"ketasim.scenario"])) == load_scenario(str(path))


BAD = {
    "unknown_key": ('[[arm]]\nname = "a"\ncontrol = "saline"\ncolour = "red"\n', "colour"),
    "wrong_unit": ('[[arm]]\nname = "k"\ndrug = "ketamine"\nroute = "iv"\n'
                   'dose = "0.5 mg/furlong"\n', "dose"),
    "negative_n": ('[population]\nn = -5\n[[arm]]\nname = "a"\ncontrol = "saline"\n',
                   "population.n"),
    "missing_arm_field": ('[[arm]]\nname = "k"\ndrug = "ketamine"\ndose = "0.5 mg/kg"\n',
                          "route"),
    "missing_arm_name": ('[[arm]]\ncontrol = "saline"\n', "arm[0].name"),
    "bad_toml": ('[[arm]\nname = \n', "TOML"),
    "bad_route": ('[[arm]]\nname = "k"\ndrug = "ketamine"\nroute = "teleport"\n'
                  'dose = "0.5 mg/kg"\n', "route"),
    "bad_visit": ('[[arm]]\nname = "a"\ncontrol = "saline"\n[endpoints]\nat = ["3 parsecs"]\n',
                  "endpoints.at"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenario_files_exit_2_with_one_line(capsys, tmp_path, case):
    text, key = BAD[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    rc, out, err = run(capsys, ["trial", str(path), "--json"])
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert key in err
    assert "Traceback" not in err


def test_missing_file_and_unknown_example(capsys):
    rc, _, err = run(capsys, ["trial", "no/such/file.toml"])
    assert rc == 2 and "file not found" in err and err.count("\n") == 1
    rc, _, err = run(capsys, ["trial", "nosuchexample"])
    assert rc == 2 and "murrough2013a" in err


@pytest.mark.parametrize("name", ["murrough2013a", "murrough2013b", "kishimoto_single_iv",
                                  "fava2020", "diazgranados2010", "transform2",
                                  "wilkinson_suicidality", "default"])
def test_examples_load(name):
    assert name in example_names()
    sc = load_scenario(example_path(name))
    assert sum(arm_sizes(sc)) == sc.population.n


def test_example_details():
    fava = resolve_scenario("fava2020")
    assert fava.endpoints.scale == "hamd6" and len(fava.arms) == 5
    t2 = resolve_scenario("transform2")
    esk = t2.arms[0]
    assert esk.drug == "esketamine" and len(esk.dose) == len(esk.schedule) == 8
    assert all(a.background == "oral-antidepressant" for a in t2.arms)
    m = resolve_scenario("murrough2013a")
    # shipped at 10x the published n = 73 so that the example shows the expected result
    assert [a.ratio for a in m.arms] == [2, 1] and m.population.n == 730
    assert resolve_scenario("diazgranados2010").population.disorder == "bipolar"


def test_example_by_name_and_list(capsys):
    rc, out, err = run(capsys, ["trial", "--list-examples", "--json"])
    assert rc == 0, err
    assert {r["name"] for r in json.loads(out)} >= {"murrough2013a", "transform2"}
    rc, out, err = run(capsys, ["trial", "transform2", "--n", "4", "--json"])
    assert rc == 0, err
    assert set(json.loads(out)["arms"]) == {"esketamine + AD", "placebo + AD"}


def test_run_writes_files(capsys, tmp_path):
    folder = tmp_path / "out"
    rc, out, err = run(capsys, ["run", "--out", str(folder), "--json", "--n", "40"])
    assert rc == 0, err
    d = json.loads(out)
    assert d["meta"]["n_per_arm"] == {"ketamine": 20, "midazolam": 20}
    assert set(d["arms"]["ketamine"]) == {"40 min", "4 h", "24 h", "3 d", "7 d", "14 d"}
    h = d["headline"]
    assert h["median_peak_effect_site_ng_per_ml"]["ketamine"] > 0
    assert set(h["response"]) == {"24 h", "7 d"} and "difference_24h" in h
    for name in ("results.parquet", "summary.json", "report.html", "scores.png",
                 "response.png"):
        assert (folder / name).stat().st_size > 0
    assert json.loads((folder / "summary.json").read_text(encoding="utf-8"))["arms"] == d["arms"]
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "research tool, not medical advice" in html
    assert html.count("data:image/png;base64,") == 2
    assert "<script" not in html and "src='http" not in html and 'href="http' not in html
    for k in ("Run metadata", "card hashes", "Side effects", "Endpoints per arm"):
        assert k in html


def test_outputs_written_atomically(monkeypatch, tmp_path, reference):
    from ketasim import report

    (tmp_path / "summary.json").write_text("keep me")
    real = os.replace

    def failing(src, dst):
        if dst.endswith("summary.json"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(KetasimError, match="summary.json"):
        report.write_trial_outputs(reference, str(tmp_path))
    assert (tmp_path / "summary.json").read_text(encoding="utf-8") == "keep me"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ketasim-")]


# ------------------------------------------------------------------ numbers a reader sees
def test_report_ci_bounds_never_read_zero_when_they_are_not():
    """A Welch CI of [-3.80, -0.004] (p 0.0497, CI excluding 0) was shown "[-3.8, -0.0]", and
    [-0.04, 3.2] (p 0.0503) "[-0.0, 3.2]": rounding hid whether the interval excludes 0 (the
    report's onset rule). A bound that is not 0 now shows its first significant digit."""
    from ketasim.report import _ci, _pp_ci

    assert _ci((-3.8, -0.004)) == "[-3.8, -0.004]"
    assert _ci((-0.04, 3.2)) == "[-0.04, 3.2]"
    assert _ci((-0.0499, 2.0)) == "[-0.05, 2.0]"
    assert _ci((-3.84, -1.0)) == "[-3.8, -1.0]" and _ci((0.0, 1.0)) == "[0.0, 1.0]"
    assert _ci((None, 1.0)) == "[–, 1.0]" and _ci((math.nan, 1.0)) == "[–, 1.0]"
    assert _ci((0.0004, 0.5), 1, True) == "[0.04%, 50.0%]"
    # response-rate difference CIs, percentage points
    assert _pp_ci((-0.0004, 0.5)) == "[-0.04, +50.0]" and _pp_ci((0.0, 0.1)) == "[+0.0, +10.0]"


def test_results_parquet_and_report_say_only_the_first_patients_are_kept(small, tmp_path):
    """results.parquet holds the visit-by-visit rows of the first ``trajectories`` patients
    per arm, while report.html and summary.json use every patient; neither the file's metadata
    nor the report said so, so a reader recomputing a response rate from results.parquet got
    another number than the report (e.g. 16 / 20 vs 36 / 50 ever responded)."""
    import pyarrow.parquet as pq

    from ketasim import report

    res = run_trial(small, executor="serial", trajectories=2)
    report.write_trial_outputs(res, str(tmp_path))
    md = pq.read_schema(tmp_path / "results.parquet").metadata
    assert json.loads(md[b"ketasim.trajectories"]) == 2
    assert json.loads(md[b"ketasim.n_per_arm"]) == {"ketamine": 7, "midazolam": 7}
    assert pd.read_parquet(tmp_path / "results.parquet")["patient"].nunique() == 2
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "first 2 patients of each arm only (of ketamine: 7, midazolam: 7)" in html
    # every patient kept: said so
    full = run_trial(small, executor="serial", trajectories=100)
    assert "visit-by-visit rows of every patient" in report.trial_html(full, figures={
        "scores.png": b"", "response.png": b""})


def test_run_keeps_every_patient_so_the_file_reproduces_the_report(tmp_path):
    # before: `ketasim run` wrote the visit rows of only the first 20 patients per arm, so a
    # response rate recomputed from results.parquet differed from report.html / summary.json
    from ketasim.cli import main

    assert main(["run", "--n", "60", "--workers", "1", "--out", str(tmp_path)]) == 0
    d = pd.read_parquet(tmp_path / "results.parquet")
    s = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert d.groupby("arm")["patient"].nunique().to_dict() == s["meta"]["n_per_arm"]
    assert sum(s["meta"]["n_per_arm"].values()) == 60
    visit = next(iter(s["headline"]["response"]))
    for arm, rate in s["headline"]["response"][visit].items():
        rows = d[(d["arm"] == arm) & (d["visit"] == visit)]
        responded = rows["madrs"] <= 0.5 * rows["baseline_madrs"]  # >= 50% fall
        assert abs(float(responded.mean()) - rate) < 1e-12, (arm, visit)


def test_pairs_with_a_dash_in_an_arm_name_are_labelled_unambiguously(capsys, tmp_path):
    """Difference keys join the arm names with "-", so with "ketamine-iv" and "saline-iv" the
    terminal named the favoured arm "ketamine" (key.split("-")[0]) and the report and page
    showed "ketamine-iv-saline-iv". The summary now lists each key's two arms (``pairs``),
    and every label reads "ARM1 vs ARM2"."""
    path = tmp_path / "s.toml"
    path.write_text(NO_FOLLOWUP.replace('name = "ketamine"', 'name = "ketamine-iv"')
                    .replace('name = "saline"', 'name = "saline-iv"'))
    rc, out, err = run(capsys, ["trial", str(path), "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert d["pairs"] == {"ketamine-iv-saline-iv": ["ketamine-iv", "saline-iv"]}
    assert d["headline"]["pair_arms"] == ["ketamine-iv", "saline-iv"]
    assert "pairs" in d["meta"]["definitions"]
    rc, out, err = run(capsys, ["trial", str(path), "--out", str(tmp_path / "o")])
    assert rc == 0, err
    flat = " ".join(out.split())
    assert "ketamine-iv vs saline-iv: difference in mean" in flat
    assert "(negative favours ketamine-iv)" in flat
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "<td>ketamine-iv vs saline-iv</td>" in html
    assert "ketamine-iv vs saline-iv: none" in html or "ketamine-iv vs saline-iv: 40" in html \
        or "ketamine-iv vs saline-iv: 24" in html
