"""Units at the boundary (pint), converted once to ketasim's internal base.

Internal base units, used everywhere inside the engine as plain floats:

* time: hours (h)
* amount: milligrams of drug base (mg)
* volume: litres (L)
* concentration: mg/L internally; reported as ng/mL (= µg/L) or µM
* body weight: kg

Ketamine doses are base unless the user states a salt (``salt="hcl"``): 1 mg ketamine HCl is
0.867 mg base (factor in the ketamine drug card).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import pint

from .errors import KetasimError


@functools.lru_cache(maxsize=1)
def ureg() -> pint.UnitRegistry:
    """The shared pint registry (with µg/mcg spellings and 'week')."""
    reg = pint.UnitRegistry()
    reg.define("mcg = microgram")
    return reg


_MASS_UNITS = {"mg", "g", "ug", "mcg", "microgram", "milligram", "gram"}
DOSE_UNITS_ALLOWED = "mg, g, µg, mg/kg, µg/kg"
TIME_UNITS_ALLOWED = "s, min, h, d, week"
CONC_UNITS_ALLOWED = "ng/mL, µg/L, mg/L, µM, nM"

_TIME_ALIASES = {
    "s": "second", "sec": "second", "secs": "second", "second": "second", "seconds": "second",
    "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
    "w": "week", "wk": "week", "week": "week", "weeks": "week",
}


def _normalise(text: str) -> str:
    return text.strip().replace("μ", "µ").replace("µ", "u")


@dataclass(frozen=True)
class DoseAmount:
    """A parsed dose: either an absolute amount (mg base) or a per-weight amount (mg/kg base)."""

    value: float
    per_kg: bool

    def mg(self, weight_kg: float) -> float:
        """Amount in mg base for a patient of ``weight_kg``."""
        return self.value * weight_kg if self.per_kg else self.value

    def __str__(self) -> str:
        return f"{self.value:g} mg/kg" if self.per_kg else f"{self.value:g} mg"


_NUM = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
#: longest quantity string read ("0.5 mg/kg", "3.5 d"); longer input is refused before any
#: parsing, so a hostile string cannot make the parser work for long
MAX_QUANTITY_CHARS = 64


def shorten(text: str, limit: int = 40) -> str:
    """``repr(text)``, cut to about ``limit`` characters (for error messages that echo input)."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 5] + "…" + r[-4:]


def _split_number_unit(text: str, field: str, allowed: str) -> tuple[float, str]:
    """Split ``"0.5 mg/kg"`` into ``(0.5, "mg/kg")`` in linear time (one anchored number
    match, then the rest), refusing strings over :data:`MAX_QUANTITY_CHARS` first."""
    s = _normalise(text)
    if len(s) > MAX_QUANTITY_CHARS:
        raise KetasimError(field, f"{shorten(text)} is too long for a number with a unit "
                           f"({len(s)} characters, at most {MAX_QUANTITY_CHARS})", allowed)
    m = _NUM.match(s)
    unit = s[m.end():].strip() if m else ""
    if not m or unit[:1].isdigit():
        raise KetasimError(field, f"cannot read {shorten(text)} as a number with a unit",
                           allowed)
    return float(m.group(0)), unit


#: input sanity bounds (not model parameters): twice the ~100 mg/kg anaesthetic doses used in
#: rodents, and that per-kg bound for the heaviest subject accepted (300 kg). Larger numbers
#: are typing errors or hostile input, and would only make the integrator work for nothing.
MAX_DOSE_MG_PER_KG = 200.0
MAX_DOSE_MG = 60_000.0
#: the longest time or duration accepted anywhere (10 years, in h)
MAX_DURATION_H = 24.0 * 3650.0


def parse_dose(text: str | float, salt: str | None = None, field: str = "dose") -> DoseAmount:
    """Parse a dose such as ``"0.5 mg/kg"``, ``"56 mg"``, ``"250 µg/kg"``.

    Returns the amount in mg (or mg/kg) of drug **base**. ``salt="hcl"`` converts from the
    hydrochloride salt with the factor in the ketamine drug card (0.867).
    """
    if isinstance(text, bool):
        raise KetasimError(field, f"must be an amount with a unit, got {text!r}",
                           DOSE_UNITS_ALLOWED)
    if isinstance(text, int | float):
        value, unit = float(text), "mg"
    else:
        value, unit = _split_number_unit(str(text), field, DOSE_UNITS_ALLOWED)
        if not unit:
            raise KetasimError(field, f"{text!r} has no unit", DOSE_UNITS_ALLOWED)
    if not math.isfinite(value) or not value > 0:
        raise KetasimError(field, f"must be a finite amount greater than zero, got {value:g}",
                           "> 0")
    per_kg = False
    u = unit.replace(" ", "").lower()
    if u.endswith("/kg"):
        per_kg = True
        u = u[: -len("/kg")]
    if u not in _MASS_UNITS:
        raise KetasimError(field, f"unknown unit {unit!r}", DOSE_UNITS_ALLOWED)
    mg = value * _factor(u, "mg")
    limit = MAX_DOSE_MG_PER_KG if per_kg else MAX_DOSE_MG
    if mg > limit:
        raise KetasimError(field, f"{shorten(str(text))} is above the largest dose ketasim "
                           f"accepts ({limit:g} mg{'/kg' if per_kg else ''})",
                           f"≤ {MAX_DOSE_MG_PER_KG:g} mg/kg or ≤ {MAX_DOSE_MG:g} mg")
    factor = salt_factor(salt)
    return DoseAmount(value=float(mg) * factor, per_kg=per_kg)


def salt_factor(salt: str | None) -> float:
    """mg base per mg of the stated form: 1 for base, 0.867 for the hydrochloride."""
    if salt is not None and not isinstance(salt, str):
        raise KetasimError("salt", f"unknown salt {salt!r}", "base, hcl")
    if salt is None or salt.lower() in ("", "base", "none"):
        return 1.0
    if salt.lower() == "hcl":
        from .cards import load_drug  # local import: cards depend on units

        return load_drug("ketamine").constant("base_fraction_of_hcl")
    raise KetasimError("salt", f"unknown salt {salt!r}", "base, hcl")


def parse_duration(text: str | float, field: str = "duration", allow_zero: bool = False) -> float:
    """Parse a duration or time such as ``"40 min"``, ``"2 h"``, ``"3.5 d"``; returns hours.

    A bare number is read as hours.
    """
    if isinstance(text, int | float):
        value, unit = float(text), "h"
    else:
        value, unit = _split_number_unit(str(text), field, TIME_UNITS_ALLOWED)
        unit = unit or "h"
    key = unit.lower()
    if key not in _TIME_ALIASES:
        raise KetasimError(field, f"unknown time unit {unit!r}", TIME_UNITS_ALLOWED)
    hours = value * _factor(_TIME_ALIASES[key], "hour")
    if not math.isfinite(hours):
        raise KetasimError(field, f"must be finite, got {shorten(str(text))}", "a finite time")
    if hours < 0 or (hours == 0 and not allow_zero):
        raise KetasimError(field, f"must be {'≥' if allow_zero else '>'} 0, got "
                           f"{shorten(str(text))}", ">= 0" if allow_zero else "> 0")
    if hours > MAX_DURATION_H:
        raise KetasimError(field, f"{shorten(str(text))} is longer than 10 years",
                           f"≤ {MAX_DURATION_H:g} h")
    return float(hours)


def to_hours(value: float, unit: str) -> float:
    """Convert a time value in ``unit`` (s/min/h/d/week) to hours."""
    key = unit.lower()
    if key not in _TIME_ALIASES:
        raise KetasimError("time unit", f"unknown time unit {unit!r}", TIME_UNITS_ALLOWED)
    return float(value * _factor(_TIME_ALIASES[key], "hour"))


@functools.lru_cache(maxsize=256)
def _factor(unit: str, target: str) -> float:
    """``target`` per ``unit`` (pint; cached): doses and times are multiplicative units, so a
    conversion is one product (pint's parsing cost ~1 ms per dose of a request otherwise)."""
    return float(ureg().Quantity(1.0, unit).to(target).magnitude)


def convert_concentration(mg_per_l: float, unit: str, molar_mass_g_per_mol: float) -> float:
    """Convert an internal concentration (mg/L) to ``unit`` (ng/mL, µg/L, mg/L, µM, nM)."""
    u = _normalise(unit).replace(" ", "").lower()
    if u in ("ng/ml", "ug/l"):
        return mg_per_l * 1000.0
    if u == "mg/l":
        return mg_per_l
    if u in ("um", "umol/l"):
        return mg_per_l / molar_mass_g_per_mol * 1000.0
    if u in ("nm", "nmol/l"):
        return mg_per_l / molar_mass_g_per_mol * 1e6
    raise KetasimError("concentration unit", f"unknown unit {unit!r}", CONC_UNITS_ALLOWED)


def quantity_to_base(value: float, units: str, field: str) -> tuple[float, int]:
    """Convert a card parameter to internal base units.

    Returns ``(magnitude, per_kg_power)``: the value in base units (L, h, mg, 1/h, L/h, and
    dimensionless) and the power of body weight still in the denominator (1 for "L/kg",
    "mL/min/kg"; 0 otherwise). The caller multiplies by ``weight_kg ** per_kg_power``.
    Conversions are cached (pint's parsing dominated a one-patient simulation); an error
    names ``field``.
    """
    try:
        return _to_base(float(value), units or "")
    except ValueError as exc:
        raise KetasimError(field, str(exc)) from exc


@functools.lru_cache(maxsize=8192)
def _to_base(value: float, units: str) -> tuple[float, int]:
    """:func:`quantity_to_base` without the field name (cached); ValueError if unknown."""
    reg = ureg()
    u = _normalise(units) if units else ""
    if u in ("", "1", "-", "fraction", "dimensionless"):
        return float(value), 0
    if u == "%":
        return float(value) / 100.0, 0
    try:
        q = reg.Quantity(value, u.replace("ug", "microgram"))
    except Exception as exc:  # pint raises several error types
        raise ValueError(f"unknown units {units!r} on the card") from exc
    per_kg = 0
    if q.dimensionality.get("[mass]", 0) == -1:
        q = q * reg.Quantity(1, "kg")
        per_kg = 1
    dim = q.dimensionality
    targets = [("liter", {"[length]": 3}), ("liter/hour", {"[length]": 3, "[time]": -1}),
               ("1/hour", {"[time]": -1}), ("hour", {"[time]": 1}), ("mg", {"[mass]": 1}),
               ("mg/L", {"[mass]": 1, "[length]": -3}),
               ("L/hour/year", {"[length]": 3, "[time]": -2})]
    for target, want in targets:
        if dict(dim) == want:
            if target == "L/hour/year":
                return float(q.to("liter/hour/year").magnitude), per_kg
            return float(q.to(target).magnitude), per_kg
    raise ValueError(f"units {units!r} are not a volume, flow, rate, time or amount")
