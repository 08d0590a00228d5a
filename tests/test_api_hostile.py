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
from ketasim.regimen import Dose, Regimen
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
])
def test_forecast_arguments_are_checked(kw, field):
    from pathlib import Path

    from ketasim.fit.forecast import forecast_patient

    data = Path(__file__).parent / "data" / "fit" / "patient.csv"
    with pytest.raises(KetasimError) as e:
        forecast_patient(str(data), horizon_days=7, **kw)
    assert e.value.field == field
