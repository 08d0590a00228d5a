"""Progress reporting of long runs: the rich displays (shown after 1 s, on a terminal only)
and the library callbacks of fits, MCMC and sensitivity runs, which must not change results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from rich.console import Console

from ketasim.cli import main
from ketasim.fit import IndividualMAP, PKProblem, PopulationFOCEI, read_dataset
from ketasim.fit.estimators import sample_posterior
from ketasim.progress import RichProgress, RichStatus

DATA = Path(__file__).parent / "data" / "fit"


def test_status_spinner_after_one_second_on_a_terminal_only():
    now = [0.0]
    buf = io.StringIO()
    st = RichStatus("fitting kamp2020", console=Console(file=buf, force_terminal=True,
                                                         width=100), clock=lambda: now[0])
    st("FOCE-I, objective evaluation 1")
    now[0] = 0.5
    st("FOCE-I, objective evaluation 2")
    assert st.status is None  # under a second: nothing shown
    now[0] = 1.5
    st("covariance step")
    assert st.status is not None
    st.close()
    assert st.status is None
    assert "fitting kamp2020: covariance step" in buf.getvalue()
    assert st.messages == ["FOCE-I, objective evaluation 1", "FOCE-I, objective evaluation 2",
                           "covariance step"]
    # not a terminal (a pipe, --json into a file): never shown
    quiet = RichStatus("x", console=Console(file=io.StringIO()), clock=lambda: now[0] + 10)
    quiet("anything")
    assert quiet.status is None


def test_progress_bar_without_final_line_prints_nothing_when_closed():
    now = [0.0]
    buf = io.StringIO()
    bar = RichProgress("MCMC steps", console=Console(file=buf), clock=lambda: now[0])
    now[0] = 5.0
    bar(10, 100)
    bar.close()
    assert bar.bar is None and buf.getvalue() == ""


def _stages(messages: list[str]) -> list[str]:
    out: list[str] = []
    for m in messages:
        s = m.split(", objective evaluation")[0]
        if not out or out[-1] != s:
            out.append(s)
    return out


def _fit_twice(estimator):
    """The CL fit of the small data set with and without a progress callback: (results,
    messages)."""
    ds = read_dataset(str(DATA / "pk_small.csv"))
    msgs: list[str] = []
    with_cb = estimator(PKProblem("kamp2020", ds, ["CL"]), progress=msgs.append).run()
    plain = estimator(PKProblem("kamp2020", ds, ["CL"])).run()
    assert with_cb.objective == plain.objective
    return with_cb, plain, msgs


def test_population_fit_reports_its_stages_and_the_same_result():
    with_cb, plain, msgs = _fit_twice(PopulationFOCEI)
    assert with_cb.estimates["CL"].ci95 == plain.estimates["CL"].ci95
    assert msgs[0] == "FOCE-I, objective evaluation 1"
    stages = _stages(msgs)
    assert stages[0] == "FOCE-I"
    assert stages[1].startswith("refinement on the quadrature likelihood (AGQ ")
    assert "covariance step" in stages
    assert stages[-2:] == ["profile-likelihood interval 1/2 (CL)",
                           "profile-likelihood interval 2/2 (IIV of CL)"]


def test_map_fit_reports_progress_and_the_same_result():
    _, _, msgs = _fit_twice(IndividualMAP)
    assert msgs and all(m.startswith("MAP with the residual error, objective evaluation ")
                        for m in msgs)
    assert msgs[-1].endswith(str(len(msgs)))


def test_mcmc_progress_every_ten_steps_same_draws():
    def log_prob(x):
        return -0.5 * np.sum(x * x, axis=1)

    calls: list[tuple[int, int]] = []
    a = sample_posterior(log_prob, np.zeros(2), seed=3, n_walkers=8, n_steps=45,
                         progress=lambda d, t: calls.append((d, t)))
    b = sample_posterior(log_prob, np.zeros(2), seed=3, n_walkers=8, n_steps=45)
    assert np.array_equal(a["draws"], b["draws"])
    assert calls == [(10, 45), (20, 45), (30, 45), (40, 45), (45, 45)]


def test_cli_fit_json_stays_clean_with_progress(capsys):
    rc = main(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020", "--estimate", "CL",
               "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert json.loads(out.out)["n_subjects"] > 0
    assert "objective evaluation" not in out.out + out.err  # not a terminal: no spinner


def test_mechanism_calibration_search_reports_each_evaluation():
    from ketasim.calibration import fit

    calls: list[tuple[int, int]] = []
    r = fit(3, progress=lambda d, t: calls.append((d, t)))
    assert r["evaluations"] == 3
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_clinic_calibration_search_reports_each_evaluation(monkeypatch):
    import ketasim.clinic_calibration as cc

    # a cheap stand-in for the 30-s loss (the search, not the model, is under test here)
    monkeypatch.setattr(cc, "loss", lambda c: sum((v - 0.5) ** 2 for v in c.values()
                                                  if isinstance(v, float)))
    monkeypatch.setattr(cc, "metrics", lambda c: {})
    monkeypatch.setattr(cc, "evaluate", lambda c=None: {})
    calls: list[tuple[int, int]] = []
    r = cc.fit_clinic(7, progress=lambda d, t: calls.append((d, t)))
    assert r["evaluations"] == len(calls) <= 8
    assert calls[:3] == [(1, 7), (2, 7), (3, 7)] and calls[-1][1] == 7
    assert all(d <= 7 for d, _ in calls)
