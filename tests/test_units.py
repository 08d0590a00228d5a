"""Units at the boundary: doses, durations, concentrations, and their errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ketasim.errors import KetasimError
from ketasim.units import (
    MAX_DOSE_MG,
    MAX_DOSE_MG_PER_KG,
    MAX_DURATION_H,
    DoseAmount,
    convert_concentration,
    parse_dose,
    parse_duration,
    quantity_to_base,
    salt_factor,
    to_hours,
)

KETAMINE_MOLAR_MASS = 237.73  # g/mol, C13H16ClNO
HCL_BASE_FRACTION = 0.867  # 237.73 / 274.19


# ------------------------------------------------------------------ doses
@pytest.mark.parametrize(
    ("text", "value", "per_kg"),
    [
        ("0.5 mg/kg", 0.5, True),
        ("56 mg", 56.0, False),
        ("250 µg/kg", 0.25, True),  # micro sign U+00B5
        ("250 μg/kg", 0.25, True),  # Greek mu U+03BC
        ("250 ug/kg", 0.25, True),
        ("0.05 g", 50.0, False),
        ("25 mcg", 0.025, False),
        ("25 microgram", 0.025, False),
        ("1 gram", 1000.0, False),
        ("  0.5mg/kg ", 0.5, True),
        ("0.5 mg / kg", 0.5, True),
        ("0.5 MG/KG", 0.5, True),
        (".5 mg", 0.5, False),
        ("5e1 mg", 50.0, False),
    ],
)
def test_parse_dose(text, value, per_kg):
    d = parse_dose(text)
    assert isinstance(d, DoseAmount)
    assert d.value == pytest.approx(value, rel=1e-12)
    assert d.per_kg is per_kg


def test_bare_number_is_mg():
    d = parse_dose(28)
    assert d == DoseAmount(28.0, per_kg=False)
    assert parse_dose(0.25).value == 0.25


def test_dose_amount_mg_per_weight():
    assert parse_dose("0.5 mg/kg").mg(70.0) == pytest.approx(35.0)
    assert parse_dose("250 µg/kg").mg(80.0) == pytest.approx(20.0)
    # an absolute amount does not depend on weight
    assert parse_dose("56 mg").mg(70.0) == parse_dose("56 mg").mg(120.0) == 56.0


def test_dose_amount_str():
    assert str(parse_dose("0.5 mg/kg")) == "0.5 mg/kg"
    assert str(parse_dose("0.05 g")) == "50 mg"


@pytest.mark.parametrize("salt", ["hcl", "HCl", "HCL"])
def test_hcl_salt_multiplies_by_base_fraction(salt):
    base = parse_dose("56 mg")
    salted = parse_dose("56 mg", salt=salt)
    assert salted.value == pytest.approx(56.0 * HCL_BASE_FRACTION, rel=1e-12)
    assert salted.value / base.value == pytest.approx(HCL_BASE_FRACTION, rel=1e-12)
    per_kg = parse_dose("0.5 mg/kg", salt=salt)
    assert per_kg.per_kg
    assert per_kg.value == pytest.approx(0.5 * HCL_BASE_FRACTION, rel=1e-12)


def test_hcl_fraction_matches_molar_masses():
    # independent check of the card constant: base / hydrochloride molar masses
    assert salt_factor("hcl") == pytest.approx(237.73 / 274.19, rel=1e-3)


@pytest.mark.parametrize("salt", [None, "", "base", "BASE", "none"])
def test_base_salt_is_identity(salt):
    assert salt_factor(salt) == 1.0
    assert parse_dose("56 mg", salt=salt).value == 56.0


def test_unknown_salt():
    with pytest.raises(KetasimError) as exc:
        parse_dose("56 mg", salt="sulfate")
    assert exc.value.field == "salt"
    assert "salt" in str(exc.value)


# ------------------------------------------------------------------ dose errors
@pytest.mark.parametrize(
    "text",
    ["0 mg", "-1 mg", "-0.5 mg/kg", "0 mg/kg", "0.0 g", 0, -3.0],
)
def test_non_positive_dose_rejected(text):
    with pytest.raises(KetasimError) as exc:
        parse_dose(text)
    assert exc.value.field == "dose"
    assert str(exc.value).startswith("dose:")
    assert "greater than zero" in str(exc.value)


@pytest.mark.parametrize("text", ["5 furlongs", "5 mL", "5 mg/h", "5 mol", "5 mg/lb", "5 kg",
                                  "0.5 mg/kg/h"])
def test_unknown_dose_unit_rejected(text):
    with pytest.raises(KetasimError) as exc:
        parse_dose(text)
    assert exc.value.field == "dose"
    assert "unit" in str(exc.value)
    assert exc.value.allowed and "mg/kg" in exc.value.allowed


@pytest.mark.parametrize("text", ["5", " 12.5 ", "1e3"])
def test_missing_dose_unit_rejected(text):
    with pytest.raises(KetasimError) as exc:
        parse_dose(text)
    assert exc.value.field == "dose"
    assert "no unit" in str(exc.value)


@pytest.mark.parametrize("text", ["", "mg", "five mg", "1,5 mg", "abc"])
def test_unreadable_dose_rejected(text):
    with pytest.raises(KetasimError) as exc:
        parse_dose(text)
    assert exc.value.field == "dose"


@pytest.mark.parametrize("text", ["1e400 mg", float("inf"), float("nan")])
def test_non_finite_dose_rejected(text):
    with pytest.raises(KetasimError) as exc:
        parse_dose(text)
    assert exc.value.field == "dose"


def test_error_names_custom_field():
    with pytest.raises(KetasimError) as exc:
        parse_dose("-2 mg", field="booster dose")
    assert exc.value.field == "booster dose"
    assert str(exc.value).startswith("booster dose:")
    with pytest.raises(KetasimError) as exc:
        parse_duration("3 fortnights", field="interval")
    assert str(exc.value).startswith("interval:")


def test_ketasim_error_is_value_error():
    with pytest.raises(ValueError):
        parse_dose("0 mg")


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize(
    ("text", "hours"),
    [
        ("3600 s", 1.0),
        ("90 s", 0.025),
        ("30 sec", 30 / 3600),
        ("40 min", 40 / 60),
        ("90 mins", 1.5),
        ("2 h", 2.0),
        ("2 hr", 2.0),
        ("2.5 hours", 2.5),
        ("1 d", 24.0),
        ("3.5 d", 84.0),
        ("2 days", 48.0),
        ("1 week", 168.0),
        ("2 weeks", 336.0),
        ("1 wk", 168.0),
        ("6", 6.0),  # a bare number is hours
        (6, 6.0),
        (0.25, 0.25),
        ("40 MIN", 40 / 60),
    ],
)
def test_parse_duration(text, hours):
    assert parse_duration(text) == pytest.approx(hours, rel=1e-12)


def test_zero_duration_only_when_allowed():
    assert parse_duration("0 h", allow_zero=True) == 0.0
    assert parse_duration(0, allow_zero=True) == 0.0
    with pytest.raises(KetasimError) as exc:
        parse_duration("0 min")
    assert exc.value.field == "duration"


@pytest.mark.parametrize("text", ["-1 h", "-30 min", -2.0])
def test_negative_duration_rejected(text):
    for allow_zero in (False, True):
        with pytest.raises(KetasimError) as exc:
            parse_duration(text, allow_zero=allow_zero)
        assert exc.value.field == "duration"


@pytest.mark.parametrize("text", ["3 fortnights", "2 months", "5 kg"])
def test_unknown_time_unit(text):
    with pytest.raises(KetasimError) as exc:
        parse_duration(text)
    assert exc.value.field == "duration"
    assert "unit" in str(exc.value)


@pytest.mark.parametrize("text", [float("nan"), float("inf"), "1e400 h"])
def test_non_finite_duration_rejected(text):
    with pytest.raises(KetasimError):
        parse_duration(text)


def test_to_hours():
    assert to_hours(90, "min") == pytest.approx(1.5)
    assert to_hours(1, "week") == pytest.approx(168.0)
    assert to_hours(7200, "s") == pytest.approx(2.0)
    with pytest.raises(KetasimError) as exc:
        to_hours(1, "year")
    assert "time unit" in str(exc.value)


# ------------------------------------------------------------------ concentrations
def test_one_micromolar_is_molar_mass_ng_per_ml():
    # 1 µM = 1 µmol/L = 237.73 µg/L = 237.73 ng/mL = 0.23773 mg/L
    mg_per_l = KETAMINE_MOLAR_MASS / 1000.0
    assert convert_concentration(mg_per_l, "µM", KETAMINE_MOLAR_MASS) == pytest.approx(1.0)
    assert convert_concentration(mg_per_l, "uM", KETAMINE_MOLAR_MASS) == pytest.approx(1.0)
    assert convert_concentration(mg_per_l, "μM", KETAMINE_MOLAR_MASS) == pytest.approx(1.0)
    assert convert_concentration(mg_per_l, "ng/mL", KETAMINE_MOLAR_MASS) == pytest.approx(237.73)
    assert convert_concentration(mg_per_l, "nM", KETAMINE_MOLAR_MASS) == pytest.approx(1000.0)


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("ng/mL", 1000.0), ("ng/ml", 1000.0), ("µg/L", 1000.0), ("ug/L", 1000.0), ("mg/L", 1.0),
     ("µM", 1000.0 / KETAMINE_MOLAR_MASS), ("umol/L", 1000.0 / KETAMINE_MOLAR_MASS),
     ("nM", 1e6 / KETAMINE_MOLAR_MASS), ("nmol/L", 1e6 / KETAMINE_MOLAR_MASS)],
)
def test_convert_concentration_units(unit, factor):
    assert convert_concentration(0.185, unit, KETAMINE_MOLAR_MASS) == pytest.approx(
        0.185 * factor, rel=1e-12)


def test_ng_per_ml_to_micromolar_round_trip():
    # 185 ng/mL (typical end-of-infusion level) is 0.778 µM
    mg_per_l = 185.0 / 1000.0
    um = convert_concentration(mg_per_l, "µM", KETAMINE_MOLAR_MASS)
    assert um == pytest.approx(185.0 / 237.73, rel=1e-12)
    ng = convert_concentration(mg_per_l, "ng/mL", KETAMINE_MOLAR_MASS)
    assert ng / um == pytest.approx(KETAMINE_MOLAR_MASS, rel=1e-12)


def test_unknown_concentration_unit():
    with pytest.raises(KetasimError) as exc:
        convert_concentration(1.0, "mol/m3", KETAMINE_MOLAR_MASS)
    assert "concentration unit" in str(exc.value)


# ------------------------------------------------------------------ card quantities
@pytest.mark.parametrize(
    ("value", "units", "base", "per_kg"),
    [
        (25, "L", 25.0, 0),
        (0.063, "L/kg", 0.063, 1),
        (84, "L/h", 84.0, 0),
        (0.4381, "1/min", 0.4381 * 60, 0),
        (36, "mL/min/kg", 36 * 60 / 1000, 1),
        (0.53, "h", 0.53, 0),
        (30, "min", 0.5, 0),
        (28, "mg", 28.0, 0),
        (0.54, "", 0.54, 0),
        (54, "%", 0.54, 0),
    ],
)
def test_quantity_to_base(value, units, base, per_kg):
    got, power = quantity_to_base(value, units, "test")
    assert got == pytest.approx(base, rel=1e-12)
    assert power == per_kg


def test_quantity_to_base_rejects_unknown_units():
    with pytest.raises(KetasimError):
        quantity_to_base(1.0, "furlong", "card x V1")
    with pytest.raises(KetasimError):
        quantity_to_base(1.0, "kelvin", "card x V1")


# ------------------------------------------------------------------ properties
_MASS_FACTORS = {"mg": 1.0, "g": 1000.0, "µg": 1e-3, "ug": 1e-3, "mcg": 1e-3}
_TIME_FACTORS = {"s": 1 / 3600, "min": 1 / 60, "h": 1.0, "d": 24.0, "week": 168.0}
_values = st.floats(min_value=1e-4, max_value=1e5, allow_nan=False, allow_infinity=False)


@given(value=_values, unit=st.sampled_from(sorted(_MASS_FACTORS)), per_kg=st.booleans())
def test_dose_round_trip(value, unit, per_kg):
    text = f"{value!r} {unit}" + ("/kg" if per_kg else "")
    if value * _MASS_FACTORS[unit] > (MAX_DOSE_MG_PER_KG if per_kg else MAX_DOSE_MG):
        with pytest.raises(KetasimError, match=r"^dose: .*above the largest dose"):
            parse_dose(text)
        return
    d = parse_dose(text)
    assert d.per_kg is per_kg
    assert d.value == pytest.approx(value * _MASS_FACTORS[unit], rel=1e-12)
    # the parsed amount written back in mg reads back to the same amount
    back = parse_dose(f"{d.value!r} mg" + ("/kg" if per_kg else ""))
    assert back == d
    # and its display form agrees to the printed precision
    assert parse_dose(str(d)).value == pytest.approx(d.value, rel=1e-5)


@given(value=_values, unit=st.sampled_from(sorted(_MASS_FACTORS)))
def test_hcl_is_proportional(value, unit):
    text = f"{value!r} {unit}"
    assume(value * _MASS_FACTORS[unit] <= MAX_DOSE_MG)
    assert parse_dose(text, salt="hcl").value == pytest.approx(
        HCL_BASE_FRACTION * parse_dose(text).value, rel=1e-12)


@given(value=_values, unit=st.sampled_from(sorted(_TIME_FACTORS)))
def test_durations_positive_and_scaled(value, unit):
    if value * _TIME_FACTORS[unit] > MAX_DURATION_H:
        with pytest.raises(KetasimError, match="longer than 10 years"):
            parse_duration(f"{value!r} {unit}")
        return
    hours = parse_duration(f"{value!r} {unit}")
    assert hours > 0
    assert math.isfinite(hours)
    assert hours == pytest.approx(value * _TIME_FACTORS[unit], rel=1e-12)
    assert to_hours(value, unit) == pytest.approx(hours, rel=1e-12)


@given(value=_values)
def test_negative_durations_always_rejected(value):
    with pytest.raises(KetasimError):
        parse_duration(-value)
    with pytest.raises(KetasimError):
        parse_dose(f"{-value!r} mg")


@given(mg_per_l=st.floats(min_value=1e-9, max_value=1e3), mm=st.floats(100.0, 500.0))
def test_concentration_conversions_consistent(mg_per_l, mm):
    ng = convert_concentration(mg_per_l, "ng/mL", mm)
    um = convert_concentration(mg_per_l, "µM", mm)
    nm = convert_concentration(mg_per_l, "nM", mm)
    assert ng == pytest.approx(um * mm, rel=1e-12)
    assert nm == pytest.approx(1000.0 * um, rel=1e-12)


def test_hostile_quantity_strings_fail_fast_and_short():
    """A long run of spaces inside a quantity once made the number/unit regex backtrack for
    tens of seconds (a web request could freeze the server); the error echoes a short form."""
    import time

    for field, fn in (("dose", parse_dose), ("duration", parse_duration)):
        t0 = time.perf_counter()
        with pytest.raises(KetasimError, match=rf"^{field}: .*too long") as e:
            fn("1 m" + " " * 60_000 + "x")
        assert time.perf_counter() - t0 < 0.5
        assert len(str(e.value)) < 300


@pytest.mark.parametrize("text, match", [
    ("1e300 mg/kg", "above the largest dose"),
    ("250 mg/kg", "above the largest dose"),
    ("61 g", "above the largest dose"),
    ("1 2 mg", "cannot read"),
])
def test_dose_bounds_and_garbage(text, match):
    with pytest.raises(KetasimError, match=match):
        parse_dose(text)
    assert parse_dose("200 mg/kg").value == 200.0 and parse_dose("60 g").value == 60000.0
