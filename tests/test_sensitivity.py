"""Global sensitivity analysis (SALib): Sobol and Morris over card parameters."""

from __future__ import annotations

import json

import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.sensitivity import DEFAULT_PARAMETERS, parse_endpoint, run_sensitivity

CLINIC = ["drug_emax", "placebo_active", "drive50", "residual_sd"]


def test_parse_endpoint():
    assert parse_endpoint("madrs_change@24h") == ("madrs_change", "24 h")
    assert parse_endpoint("response_rate @ 7 d") == ("response_rate", "7 d")
    for bad in ("madrs@24h", "madrs_change", "madrs_change@", "x@1h"):
        with pytest.raises(KetasimError):
            parse_endpoint(bad)


def test_default_subset_spans_clinic_and_mechanism_cards():
    from ketasim.cards import load_param_card

    cards = {c for c, _ in DEFAULT_PARAMETERS}
    assert {"clinic", "receptor", "signalling"} <= cards
    for card, name in DEFAULT_PARAMETERS:
        assert load_param_card(card).parameters[name].evidence in ("calibrated", "assumed",
                                                                   "derived", "read")


def test_sobol_indices_sum_to_at_most_one_and_reproducible():
    a = run_sensitivity("madrs_change@24h", method="sobol", samples=32, n=30, seed=5,
                        params=CLINIC)
    b = run_sensitivity("madrs_change@24h", method="sobol", samples=32, n=30, seed=5,
                        params=CLINIC)
    assert [p["S1"] for p in a["parameters"]] == [p["S1"] for p in b["parameters"]]
    assert [p["ST_conf"] for p in a["parameters"]] == [p["ST_conf"] for p in b["parameters"]]
    assert a["sum_S1"] - a["sum_S1_conf"] <= 1.0
    assert a["evaluations"] == 32 * (len(CLINIC) + 2) + 1
    names = [p["name"] for p in a["parameters"]]
    assert sorted(names) == sorted(CLINIC)
    st = {p["name"]: p["ST"] for p in a["parameters"]}
    # the placebo fraction and the maximal drug effect dominate a 24 h change; residual noise
    # (mean zero) barely moves a mean
    assert max(st["placebo_active"], st["drug_emax"]) > 5 * st["residual_sd"]
    for p in a["parameters"]:
        assert p["S1_conf"] >= 0 and p["ST_conf"] >= 0
        assert p["bounds"][0] < p["value"] < p["bounds"][1]


def test_morris_default_parameters_fast_enough_and_mechanism_matters():
    r = run_sensitivity("madrs_change@24h", method="morris", samples=4, n=30, seed=1)
    assert r["wall_s"] < 120.0  # timing is noisy on a shared machine; the bound is loose
    names = {p["name"] for p in r["parameters"]}
    assert names == {n for _, n in DEFAULT_PARAMETERS}
    mu = {p["name"]: p["mu_star"] for p in r["parameters"]}
    assert mu["Kd0_ketamine"] > 0  # a mechanism constant reaches the clinical endpoint
    assert r["mechanism_simulations"] < r["evaluations"]  # memoised typical-patient drive


def test_cli_sensitivity_json_and_plot(tmp_path, capsys):
    png = tmp_path / "s.png"
    rc = main(["sensitivity", "--endpoint", "response_rate@24h", "--method", "morris",
               "--samples", "3", "--n", "20", "--params", ",".join(CLINIC), "--plot", str(png),
               "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "morris" and r["metric"] == "response_rate"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "card_hashes" in r and "card_versions" not in r and r["seed"] == 0


@pytest.mark.parametrize("args", [
    ["--method", "fast"], ["--endpoint", "nonsense"], ["--params", "nope,drug_emax"],
    ["--method", "sobol", "--samples", "10"], ["--spread", "1.5"],
])
def test_cli_sensitivity_errors(capsys, args):
    assert main(["sensitivity", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
