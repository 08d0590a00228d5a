"""Forecasting one patient's MADRS: posterior, band, probabilities, next dose, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.fit import read_dataset
from ketasim.fit.forecast import calibration_study, forecast_patient

DATA = Path(__file__).parent / "data" / "fit"


@pytest.fixture(scope="module")
def fc():
    return forecast_patient(str(DATA / "patient.csv"), horizon_days=14, seed=4, n_steps=500)


def test_forecast_shapes_and_probabilities(fc):
    assert fc.day[0] == 0 and fc.day[-1] == pytest.approx(14)
    assert np.all(fc.lo80 <= fc.median) and np.all(fc.median <= fc.hi80)
    assert np.all((fc.lo80 >= 0) & (fc.hi80 <= 60))
    assert np.all((fc.p_response >= 0) & (fc.p_response <= 1))
    assert np.all(np.diff(fc.p_relapse_by) >= -1e-12)  # "by day N" cannot decrease
    # before the drug acts only the visit noise (residual_sd) can put a rating below the
    # response level: rare
    assert fc.p_response[0] < 0.01
    d = fc.diagnostics
    assert 0.2 < d["acceptance_fraction"] < 0.9 and max(d["rhat"]) < 1.1
    # the observed baseline (about 38) moves the baseline posterior away from the prior
    assert fc.posterior["baseline_madrs"]["median"] > 34
    assert fc.metadata["seed"] == 4 and fc.metadata["card_hashes"]
    # the card used is recorded, also when the default was taken (a rerun must not depend on
    # which card is the default then)
    assert fc.metadata["model"] == "clements1981"


def test_forecast_is_reproducible(fc):
    again = forecast_patient(str(DATA / "patient.csv"), horizon_days=14, seed=4, n_steps=500)
    np.testing.assert_array_equal(fc.median, again.median)


def test_next_dose_day_moves_with_threshold():
    """A higher threshold can only allow a later (or equal) next dose."""
    lo = forecast_patient(str(DATA / "patient.csv"), horizon_days=21, threshold=20, seed=2,
                          n_steps=300)
    hi = forecast_patient(str(DATA / "patient.csv"), horizon_days=21, threshold=30, seed=2,
                          n_steps=300)
    assert hi.next_dose_day is not None
    assert lo.next_dose_day is None or lo.next_dose_day <= hi.next_dose_day
    assert hi.next_dose_day >= hi.metadata["last_observation_day"]


def test_scores_at_the_bound_are_censored(tmp_path):
    df = pd.read_csv(DATA / "patient.csv")
    df.loc[df["DVID"] == "madrs", "DV"] = [36.0, 0.0, 0.0, 0.0]
    p = tmp_path / "zero.csv"
    df.to_csv(p, index=False)
    f = forecast_patient(str(p), horizon_days=7, seed=1, n_steps=300)
    assert np.all(np.isfinite(f.median))
    # three scores at the floor push the drug effect up
    assert f.posterior["eta_emax"]["median"] > 0.5


def test_forecast_input_errors(tmp_path, capsys):
    df = pd.read_csv(DATA / "patient.csv")
    two = pd.concat([df, df.assign(ID=2)])
    p = tmp_path / "two.csv"
    two.to_csv(p, index=False)
    with pytest.raises(KetasimError, match="one patient"):
        forecast_patient(str(p))
    p2 = tmp_path / "nomadrs.csv"
    df[df["EVID"] == 1].to_csv(p2, index=False)
    assert main(["forecast", str(p2)]) == 2
    assert "MADRS" in capsys.readouterr().err
    with pytest.raises(KetasimError):
        forecast_patient(read_dataset(str(DATA / "patient.csv")), probability=1.5)


def test_cli_forecast_json(capsys):
    rc = main(["forecast", str(DATA / "patient.csv"), "--days", "7", "--steps", "300",
               "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("time_day", "madrs_median", "madrs_lo80", "madrs_hi80", "p_response",
              "p_relapse_by", "next_dose_latest_day", "diagnostics", "metadata"):
        assert k in d
    assert len(d["time_day"]) == len(d["madrs_lo80"]) == 8


def test_cli_forecast_text_names_the_threshold(capsys):
    rc = main(["forecast", str(DATA / "patient.csv"), "--days", "7", "--steps", "300",
               "--threshold", "18", "--probability", "0.7"])
    assert rc == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "next dose" in x][0]
    assert "MADRS 18" in line and "probability 0.7" in line
    rc = main(["forecast", str(DATA / "patient.csv"), "--days", "7", "--steps", "300"])
    line = [x for x in capsys.readouterr().out.splitlines() if "next dose" in x][0]
    assert "response level (50% of baseline)" in line


def test_band_calibration_small():
    """Held-out later scores fall in the 80% band at about the nominal rate (small sample;
    the 40-patient study is `scripts/recovery_study.py --forecast 40`)."""
    r = calibration_study(3, seed=21, n_steps=300)
    assert r["n_scores"] == 15
    assert 0.55 <= r["coverage_80"] <= 1.0


@pytest.mark.parametrize("kw", [{"threshold": "20"}, {"response_fraction": "0.5"},
                                {"threshold": float("nan")}, {"probability": float("nan")},
                                {"horizon_days": float("inf")}])
def test_forecast_rejects_non_numbers_naming_the_argument(kw):
    name = next(iter(kw))
    with pytest.raises(KetasimError) as exc:
        forecast_patient(read_dataset(str(DATA / "patient.csv")), **kw)
    assert exc.value.field == name


def test_next_dose_status_says_what_the_day_means(capsys):
    """``next_dose_latest_day`` alone was ambiguous: ``None`` meant "now", and a day equal to
    the horizon's end meant "at least until then". ``next_dose_status`` says which."""
    kw = dict(horizon_days=10, seed=2, n_steps=200)
    now = forecast_patient(str(DATA / "patient.csv"), threshold=1, **kw)
    assert now.next_dose_day is None and now.next_dose_status == "due_now"
    far = forecast_patient(str(DATA / "patient.csv"), threshold=59, **kw)
    assert far.next_dose_status == "beyond_horizon"
    assert far.next_dose_day == pytest.approx(far.day[-1])
    assert far.to_dict()["next_dose_status"] == "beyond_horizon"
    mid = forecast_patient(str(DATA / "patient.csv"), threshold=25, **kw)
    if mid.next_dose_status == "by_day":
        assert mid.metadata["last_observation_day"] <= mid.next_dose_day < mid.day[-1]
    assert main(["forecast", str(DATA / "patient.csv"), "--threshold", "59", "--days", "10",
                 "--seed", "2", "--steps", "200"]) == 0
    assert "not within the forecast" in capsys.readouterr().out
