"""Hostile input to the Python API, from an audit (2026-11-27): bad values raise
KetasimError naming the field instead of returning nonsense (negative concentrations, NaN
readouts) or raising raw numpy errors."""

from __future__ import annotations

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
