"""Hostile input to the Python API, from an audit (2026-11-27): bad values raise
KetasimError naming the field instead of returning nonsense (negative concentrations, NaN
readouts) or raising raw numpy errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ketasim import simulate_pk
from ketasim.engine import Course, simulate
from ketasim.errors import KetasimError
from ketasim.mechanism import Hypotheses, Interventions
from ketasim.pk import Covariates
from ketasim.regimen import Dose, Infusion, Regimen
from ketasim.scenario import load_scenario
from ketasim.trial import run_trial
from ketasim.units import DoseAmount


def _reg() -> Regimen:
    return Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")


@pytest.mark.parametrize("call, field", [
    (lambda: simulate_pk(_reg(), [1, 24], iiv={"k10": -1.0}), "iiv"),  # was −3e5 ng/mL
    (lambda: simulate_pk(_reg(), [1, 24], iiv={"k10": 0.0}), "iiv"),  # was LinAlgError
    (lambda: simulate_pk(_reg(), [1], iiv={"k10": "big"}), "iiv"),
    (lambda: simulate_pk(_reg(), [1], iiv={"k10": np.array([1.0, 2.0, 3.0])}), "iiv"),
    (lambda: simulate_pk(Regimen((Dose(0.0, DoseAmount(1e12, False)),)), [1.0]), "dose"),
    (lambda: simulate_pk(_reg(), np.linspace(0.001, 24, 300_001)), "times"),
    (lambda: simulate_pk(_reg(), [1e300]), "times"),
    (lambda: simulate([Course("ketamine", _reg(), iiv={"k10": -1.0})], [1, 24]), "iiv"),
    (lambda: simulate([Course("ketamine", Regimen(()))], [1, 2]), "regimen"),
    (lambda: simulate([Course("ketamine", _reg())], [1, 24],
                      overrides={"theta_H": float("nan")}), "overrides"),  # was NaN block
    (lambda: simulate([Course("ketamine", _reg())], [1, 24],
                      overrides={"theta_H": -1.0}), "overrides"),
    (lambda: simulate([], [1, 2]), "courses"),
    (lambda: Hypotheses(a=-5), "hypotheses"),
    (lambda: Interventions(("magic",)), "interventions"),
    (lambda: Dose(1e9, DoseAmount(1.0, False)), "time"),
    # wrong Python types: KetasimError naming the argument, not AttributeError/TypeError
    (lambda: Covariates(weight_kg=[60, 70, 80], age_years=[30, 40]), "age"),
    (lambda: Covariates(weight_kg=[]), "weight"),
    (lambda: Covariates(weight_kg="seventy"), "weight"),
    (lambda: Covariates(race=None), "race"),
    (lambda: simulate([Course("ketamine", _reg())], [1],
                      covariates=Covariates(weight_kg=[60.0, 90.0])), "covariates"),
    (lambda: simulate_pk(_reg(), ["a", "b"]), "times"),
    (lambda: simulate_pk(None, [1]), "regimen"),
    (lambda: simulate_pk(_reg(), [1], drug=["ketamine"]), "drug"),
    (lambda: simulate(None, [1]), "courses"),
    (lambda: simulate([Course("ketamine", _reg())], [1, 2], rtol=-1.0), "rtol"),
    (lambda: Regimen.build(None, "5 mg"), "route"),
    (lambda: Regimen.build("oral", "50 mg", salt=1), "salt"),
    (lambda: Regimen.build("iv-bolus", True), "dose"),
    (lambda: Dose("1", DoseAmount(5.0, False)), "time"),
    (lambda: Dose(0.0, 5.0), "dose"),
    (lambda: Infusion(0.0, DoseAmount(5.0, False), "40 min"), "duration"),
    (lambda: Infusion(0.0, DoseAmount(5.0, False), float("inf")), "duration"),
    (lambda: Regimen(("5 mg",)), "regimen"),
    (lambda: Hypotheses.parse(5), "hypotheses"),
    (lambda: Interventions.parse([1, 2]), "interventions"),
    (lambda: load_scenario("/"), "scenario"),
    (lambda: load_scenario(None), "scenario"),
    (lambda: run_trial({"arm": []}), "scenario"),
])
def test_bad_library_input_raises_ketasim_error(call, field):
    with pytest.raises(KetasimError) as e:
        call()
    assert e.value.field == field, str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, field", [
    ({"response_fraction": 1.5}, "response_fraction"),
    ({"response_fraction": float("nan")}, "response_fraction"),
    ({"comedication": ("cocaine",)}, "comedication"),
    ({"n_walkers": 2}, "n_walkers"),
    ({"n_steps": 10**12}, "n_steps"),
    ({"seed": -1}, "seed"),
    ({"drug": "cocaine"}, "drug"),
    ({"horizon_days": "14"}, "horizon_days"),
])
def test_forecast_arguments_are_checked(kw, field):
    from pathlib import Path

    from ketasim.fit.forecast import forecast_patient

    data = Path(__file__).parent / "data" / "fit" / "patient.csv"
    with pytest.raises(KetasimError) as e:
        forecast_patient(str(data), **{"horizon_days": 7, **kw})
    assert e.value.field == field


# ------------------------------------------------------------------ audit leftovers (2026-11-28)
FIT_DATA = Path(__file__).parent / "data" / "fit" / "pk_small.csv"


def _arm_and_patient():
    from ketasim.sbml import pick_arm, typical_patient
    from ketasim.trial import resolve_scenario

    sc = resolve_scenario("default")
    return pick_arm(sc, None), typical_patient(sc)


def _export(**kw):
    from ketasim.sbml import export_arm

    arm, patient = _arm_and_patient()
    return export_arm(**{"arm": arm, "patient": patient, **kw})


def _fit(**kw):
    from ketasim.fit import fit_population

    return fit_population(**{"data": str(FIT_DATA), "model": "kamp2020", "estimate": ["CL"],
                             "method": "map", **kw})


def _sens(**kw):
    from ketasim.sensitivity import run_sensitivity

    return run_sensitivity(**{"n": 5, "samples": 2, **kw})


@pytest.mark.parametrize("call, field", [
    # experiments: a non-string name (was TypeError: unhashable type 'list')
    (lambda: __import__("ketasim.experiments").experiments.run_experiment(["a"]), "name"),
    (lambda: __import__("ketasim.experiments").experiments.run_experiment(None), "name"),
    (lambda: __import__("ketasim.experiments").experiments.run_experiment("nope"), "name"),
    # sensitivity: every argument checked up front (were TypeErrors from comparisons)
    (lambda: _sens(n="10"), "n"),
    (lambda: _sens(n=10.0), "n"),
    (lambda: _sens(seed=2**80), "seed"),  # was "scenario population.seed"
    (lambda: _sens(seed="1"), "seed"),
    (lambda: _sens(seed=-1), "seed"),
    (lambda: _sens(method=["morris"]), "method"),
    (lambda: _sens(endpoint=5), "endpoint"),
    (lambda: _sens(spread="0.5"), "spread"),
    (lambda: _sens(samples="10"), "samples"),
    (lambda: _sens(samples=10.5), "samples"),
    (lambda: _sens(method="sobol", samples=2**40), "samples"),
    (lambda: _sens(params="drug_emax"), "params"),
    (lambda: _sens(params=[1, 2]), "params"),
    (lambda: _sens(progress=5), "progress"),
    # fit_population (workers="two" was ValueError from int(); a DataFrame, AttributeError)
    (lambda: _fit(workers="two"), "workers"),
    (lambda: _fit(workers=1000), "workers"),
    (lambda: _fit(workers=1.5), "workers"),
    (lambda: _fit(data=None), "data"),
    (lambda: _fit(data=123), "data"),
    (lambda: _fit(model=None), "model"),
    (lambda: _fit(estimate="CL"), "estimate"),
    (lambda: _fit(iiv="CL"), "iiv"),
    (lambda: _fit(error=5), "error"),
    (lambda: _fit(method=None), "method"),
    (lambda: _fit(progress="yes"), "progress"),
    # SBML export (None was AttributeError; seed -1 was accepted)
    (lambda: _export(arm=None), "arm"),
    (lambda: _export(arm={"name": "ketamine"}), "arm"),
    (lambda: _export(patient=None), "patient"),
    (lambda: _export(seed=-1), "seed"),
    (lambda: _export(seed="1"), "seed"),
    (lambda: _export(hypotheses="default"), "hypotheses"),
    (lambda: __import__("ketasim.sbml").sbml.pick_arm(None, None), "scenario"),
    # simulate / simulate_pk: wrong-typed optional arguments (were AttributeErrors)
    (lambda: simulate_pk(_reg(), [1], covariates="70 kg"), "covariates"),
    (lambda: simulate_pk(_reg(), [1], iiv=[1.0]), "iiv"),
    (lambda: simulate_pk(_reg(), 5.0), "times"),
    (lambda: simulate([Course("ketamine", _reg())], [1], covariates="70 kg"), "covariates"),
    (lambda: simulate([Course("ketamine", _reg())], [1], hypotheses="default"), "hypotheses"),
    (lambda: simulate([Course("ketamine", _reg())], [1], interventions=["rapamycin"]),
     "interventions"),
    (lambda: simulate([Course("ketamine", _reg())], [1], overrides=5), "overrides"),
    (lambda: simulate([Course("ketamine", _reg(), iiv=2.0)], [1]), "iiv"),
])
def test_audit_leftovers_raise_ketasim_error(call, field):
    with pytest.raises(KetasimError) as e:
        call()
    assert e.value.field == field, str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_or_wrong_typed_experiment_lists_the_known_ones():
    from ketasim.experiments import EXPERIMENTS, run_experiment

    for bad in (["a"], "nope"):
        with pytest.raises(KetasimError) as e:
            run_experiment(bad)
        assert e.value.allowed == ", ".join(EXPERIMENTS)


def test_fit_population_takes_a_dataframe_or_path_like_a_csv():
    """A DataFrame (or a pathlib.Path) goes through the CSV validator and fits the same."""
    import json

    import pandas as pd

    def fit(data):
        d = _fit(data=data)[1].to_dict()
        d.pop("elapsed_s", None)
        return json.dumps(d, sort_keys=True, default=str)

    ref = fit(str(FIT_DATA))
    assert fit(pd.read_csv(FIT_DATA)) == ref
    assert fit(FIT_DATA) == ref
    with pytest.raises(KetasimError) as e:  # validated like a CSV: the missing column named
        _fit(data=pd.read_csv(FIT_DATA).drop(columns=["DV"]))
    assert "DV" in str(e.value)


def _small_scenario():
    from ketasim.scenario import parse_scenario

    return parse_scenario({"population": {"disorder": "trd", "n": 4, "seed": 3},
                           "arm": [{"name": "ketamine", "drug": "ketamine",
                                    "route": "iv-infusion", "dose": "0.5 mg/kg",
                                    "duration": "40 min"},
                                   {"name": "saline", "control": "saline"}],
                           "endpoints": {"at": ["24 h"]}})


def test_run_trial_refuses_out_in_a_missing_folder_before_any_work(tmp_path):
    """As the CLI's --out: the folder itself may be created, its parent must exist (a
    mistyped path is refused instead of silently creating a new tree of folders)."""
    sc = _small_scenario()
    calls = []
    with pytest.raises(KetasimError) as e:
        run_trial(sc, out=str(tmp_path / "missing" / "run"),
                  progress=lambda d, t: calls.append(d))
    assert e.value.field == "out" and "folder does not exist" in str(e.value)
    assert not (tmp_path / "missing").exists() and calls == []
    (tmp_path / "file").write_text("x")
    for bad in (str(tmp_path / "file"), str(tmp_path / "file" / "run"), 5, ""):
        with pytest.raises(KetasimError) as e:
            run_trial(sc, out=bad)
        assert e.value.field == "out"
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"
    res = run_trial(sc, out=tmp_path / "run")  # a pathlib.Path in an existing folder is fine
    assert (tmp_path / "run" / "manifest.json").exists() and len(res.data) > 0


def test_run_trial_bad_arguments_leave_a_saved_run_untouched(tmp_path):
    sc = _small_scenario()
    out = tmp_path / "run"
    run_trial(sc, out=str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for kw, field in (({"retries": "3"}, "retries"), ({"trajectories": "5"}, "trajectories"),
                      ({"resume": "no"}, "resume"), ({"progress": 5}, "progress"),
                      ({"workers": None}, "workers"),
                      ({"executor": "dask", "scheduler": 5}, "scheduler")):
        with pytest.raises(KetasimError) as e:
            run_trial(sc, out=str(out), **{"resume": False, **kw})
        assert e.value.field == field, str(e.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
