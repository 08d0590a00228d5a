"""Regimens as data: frozen dose objects, schedules, and NONMEM-style event tables.

Times are hours from the first dose; amounts are mg of drug base (or mg/kg base, resolved with
the patient's weight when the regimen is compiled). An event table has the NONMEM columns
``ID, TIME, EVID, AMT, RATE, CMT, II, ADDL`` (TIME and II in hours, AMT in mg, RATE in mg/h,
RATE = 0 for a bolus or a first-order absorption dose) plus ``ROUTE`` naming the route, so a
table can be read back without the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import KetasimError
from .units import (
    MAX_DOSE_MG,
    MAX_DOSE_MG_PER_KG,
    MAX_DURATION_H,
    DoseAmount,
    parse_dose,
    parse_duration,
    shorten,
)

#: Routes ketasim knows. A PK model card lists the subset it supports.
ROUTES: tuple[str, ...] = (
    "iv-bolus", "iv-infusion", "intranasal", "oral", "im", "sc", "sublingual", "rectal", "ip",
)
ROUTE_ALIASES = {
    "iv": "iv-infusion", "infusion": "iv-infusion", "bolus": "iv-bolus", "in": "intranasal",
    "nasal": "intranasal", "po": "oral", "intramuscular": "im", "subcutaneous": "sc",
    "sl": "sublingual", "pr": "rectal", "intraperitoneal": "ip", "i.p.": "ip",
}


def normalise_route(route: str) -> str:
    """Canonical route name, or a :class:`KetasimError` naming the allowed routes."""
    if not isinstance(route, str):
        raise KetasimError("route", f"must be a route name, got {route!r}", ", ".join(ROUTES))
    r = route.strip().lower().replace("_", "-")
    r = ROUTE_ALIASES.get(r, r)
    if r not in ROUTES:
        raise KetasimError("route", f"unknown route {route!r}", ", ".join(ROUTES))
    return r


@dataclass(frozen=True)
class Dose:
    """One administration by a non-infused route (bolus, nasal spray, tablet, injection).

    ``amount`` is mg base (or mg/kg base when ``amount.per_kg``); ``time_h`` is hours.
    """

    time_h: float
    amount: DoseAmount
    route: str = "iv-bolus"

    def __post_init__(self) -> None:
        object.__setattr__(self, "route", normalise_route(self.route))
        if self.route == "iv-infusion":
            raise KetasimError("route", "an IV infusion needs a duration; use Infusion")
        _check_time(self.time_h)
        _check_amount(self.amount)

    @property
    def duration_h(self) -> float:
        """Input duration (h): 0 for a bolus-type dose."""
        return 0.0


@dataclass(frozen=True)
class Infusion:
    """A zero-order IV infusion of ``amount`` over ``duration_h`` hours starting at ``time_h``."""

    time_h: float
    amount: DoseAmount
    duration_h: float
    route: str = "iv-infusion"

    def __post_init__(self) -> None:
        object.__setattr__(self, "route", normalise_route(self.route))
        _check_time(self.time_h)
        _check_amount(self.amount)
        d = self.duration_h
        if isinstance(d, bool) or not isinstance(d, int | float | np.number):
            raise KetasimError("duration", f"must be a number of hours, got {type(d).__name__}")
        if not (np.isfinite(d) and 0 < d <= MAX_DURATION_H):
            raise KetasimError("duration", f"must be finite and > 0, got {d!r} h", "> 0")

    def rate_mg_per_h(self, weight_kg: float) -> float:
        """Infusion rate (mg/h) for a patient of ``weight_kg`` (kg)."""
        return self.amount.mg(weight_kg) / self.duration_h


Administration = Dose | Infusion


def _check_time(t: float) -> None:
    if isinstance(t, bool) or not isinstance(t, int | float | np.number):
        raise KetasimError("time", f"must be a number of hours, got {type(t).__name__}")
    if not np.isfinite(t) or t < 0 or t > MAX_DURATION_H:
        raise KetasimError("time", f"must be a finite time within 0–{MAX_DURATION_H:g} h, got "
                           f"{t!r}", ">= 0")


def _check_amount(a: DoseAmount) -> None:
    if not isinstance(a, DoseAmount):
        raise KetasimError("dose", f"must be a DoseAmount, got {type(a).__name__}")
    if not np.isfinite(a.value) or a.value <= 0:
        raise KetasimError("dose", f"must be greater than zero, got {a.value:g}", "> 0")
    limit = MAX_DOSE_MG_PER_KG if a.per_kg else MAX_DOSE_MG
    if a.value > limit:
        raise KetasimError("dose", f"{a.value:g} mg{'/kg' if a.per_kg else ''} is above the "
                           f"largest dose ketasim accepts ({limit:g})")


@dataclass(frozen=True)
class Regimen:
    """An ordered, immutable collection of administrations."""

    doses: tuple[Administration, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.doses, str) or not all(isinstance(d, Dose | Infusion)
                                                  for d in self.doses):
            raise KetasimError("regimen", "doses must be Dose or Infusion objects")
        ordered = tuple(sorted(self.doses, key=lambda d: (d.time_h, d.route)))
        object.__setattr__(self, "doses", ordered)

    def __len__(self) -> int:
        return len(self.doses)

    def __iter__(self):
        return iter(self.doses)

    @property
    def routes(self) -> tuple[str, ...]:
        """The routes used, sorted."""
        return tuple(sorted({d.route for d in self.doses}))

    @property
    def end_h(self) -> float:
        """End of the last dose input (h after the first dose)."""
        return max((d.time_h + d.duration_h for d in self.doses), default=0.0)

    def total_mg(self, weight_kg: float) -> float:
        """Total amount of drug base administered (mg)."""
        return float(sum(d.amount.mg(weight_kg) for d in self.doses))

    def as_dict(self) -> list[dict[str, object]]:
        """Every administration as plain JSON values, for run metadata: time and duration
        (h), amount (full precision) and its unit (``"mg"`` or ``"mg/kg"``, base), route."""
        return [{"time_h": float(d.time_h), "amount": float(d.amount.value),
                 "unit": "mg/kg" if d.amount.per_kg else "mg",
                 "duration_h": float(d.duration_h), "route": d.route} for d in self.doses]

    def __add__(self, other: Regimen) -> Regimen:
        return Regimen(self.doses + other.doses)

    @classmethod
    def build(
        cls,
        route: str,
        dose: str | float,
        duration: str | float | None = None,
        schedule: str | None = None,
        salt: str | None = None,
        start: str | float = 0.0,
    ) -> Regimen:
        """Build a regimen from user strings.

        ``route`` e.g. ``"iv-infusion"``; ``dose`` e.g. ``"0.5 mg/kg"``; ``duration`` for IV
        infusions (``"40 min"``), ignored otherwise; ``schedule`` e.g. ``"every 3.5 d x 8"``
        or ``"twice weekly for 4 weeks"`` (default: a single dose).
        """
        r = normalise_route(route)
        amount = parse_dose(dose, salt=salt)
        t0 = parse_duration(start, field="start", allow_zero=True)
        times = [t0 + t for t in parse_schedule(schedule)]
        if r == "iv-infusion":
            if duration is None:
                raise KetasimError("duration", "an IV infusion needs a duration, e.g. '40 min'")
            dur = parse_duration(duration)
            return cls(tuple(Infusion(t, amount, dur) for t in times))
        return cls(tuple(Dose(t, amount, r) for t in times))

    # ---------------------------------------------------------------- event tables
    def to_event_table(self, weight_kg: float, cmt_of_route: dict[str, int] | None = None,
                       subject_id: int = 1, compress: bool = True) -> pd.DataFrame:
        """Compile to a NONMEM-style event table (TIME/II in h, AMT in mg base, RATE in mg/h).

        Regular repeats of an identical dose are compressed into one record with II and ADDL.
        ``cmt_of_route`` maps route → dosing compartment number (from the PK model); without it
        CMT is 1 for every route.
        """
        rows = []
        for d in self.doses:
            amt = d.amount.mg(weight_kg)
            rate = amt / d.duration_h if isinstance(d, Infusion) else 0.0
            cmt = (cmt_of_route or {}).get(d.route, 1)
            rows.append({"ID": subject_id, "TIME": d.time_h, "EVID": 1, "AMT": amt, "RATE": rate,
                         "CMT": cmt, "II": 0.0, "ADDL": 0, "ROUTE": d.route})
        if compress:
            rows = _compress(rows)
        return pd.DataFrame(rows, columns=["ID", "TIME", "EVID", "AMT", "RATE", "CMT", "II",
                                           "ADDL", "ROUTE"])

    @classmethod
    def from_event_table(cls, table: pd.DataFrame | str, subject_id: int | None = None,
                         route_of_cmt: dict[int, str] | None = None,
                         source: str | None = None) -> Regimen:
        """Read a regimen back from an event table (a DataFrame or a CSV path).

        Only dosing records (EVID 1 or 4) are used; ADDL/II are expanded. The route comes from
        a ``ROUTE`` column, else from ``route_of_cmt``, else RATE > 0 means IV infusion and
        RATE = 0 means IV bolus. AMT is mg base (absolute, not per kg). Errors name
        ``source`` (default: the CSV path, or "event table"), the 1-based data row and the
        column, as the fit data's do: ``data.csv row 7 column AMT: …``.
        """
        if source is None:
            source = table if isinstance(table, str) else "event table"
        df = pd.read_csv(table) if isinstance(table, str) else table.copy()
        df.columns = [c.upper() for c in df.columns]
        missing = {"TIME", "AMT"} - set(df.columns)
        if missing:
            raise KetasimError(source, f"missing columns {sorted(missing)}",
                               "ID, TIME, EVID, AMT, RATE, CMT, II, ADDL")
        if subject_id is not None and "ID" in df.columns:
            df = df[df["ID"] == subject_id]
        if "EVID" in df.columns:
            df = df[df["EVID"].isin([1, 4])]
        for col in ("TIME", "AMT", "RATE", "CMT", "II", "ADDL"):
            if col in df.columns:
                vals = pd.to_numeric(df[col], errors="coerce")
                bad = vals.isna() & df[col].notna()
                if bad.any():
                    r = bad.to_numpy().argmax()
                    raise KetasimError(f"{source} row {df.index[r] + 1} column {col}",
                                       f"not a number: {shorten(str(df[col].iloc[r]))}")
                df[col] = vals
        doses: list[Administration] = []
        for i, row in zip(df.index, df.itertuples(index=False), strict=True):
            rec = row._asdict()
            amt = float(rec["AMT"])
            t0 = float(rec["TIME"])
            if not (math.isfinite(t0) and 0 <= t0 <= MAX_DURATION_H):
                raise KetasimError(f"{source} row {i + 1} column TIME",
                                   f"must be within 0–{MAX_DURATION_H:g} h, got {t0:g}")
            if not (math.isfinite(amt) and 0 < amt <= MAX_DOSE_MG):
                raise KetasimError(f"{source} row {i + 1} column AMT",
                                   f"a dose needs an amount > 0 and ≤ {MAX_DOSE_MG:g} mg, got "
                                   f"{amt:g}")
            rate = _cell(rec, "RATE", 0.0)
            if not math.isfinite(rate):
                raise KetasimError(f"{source} row {i + 1} column RATE", "not finite")
            if rate < 0:
                raise KetasimError(f"{source} row {i + 1} column RATE",
                                   "modelled rate/duration (RATE < 0) is not supported",
                                   "0 (bolus or absorption) or > 0 mg/h (infusion)")
            route = rec.get("ROUTE")
            if not isinstance(route, str) or not route:
                cmt = int(_cell(rec, "CMT", 1.0))
                route = (route_of_cmt or {}).get(cmt) or ("iv-infusion" if rate > 0 else
                                                          "iv-bolus")
            addl = _cell(rec, "ADDL", 0.0)
            ii = _cell(rec, "II", 0.0)
            if not (0 <= addl < 10000 and addl == int(addl)):
                raise KetasimError(f"{source} row {i + 1} column ADDL",
                                   f"must be a whole number 0..9999, got {addl:g}", "0..9999")
            n_addl = int(addl)
            if n_addl > 0 and not ii > 0:
                raise KetasimError(f"{source} row {i + 1} column II", "ADDL > 0 needs II > 0")
            try:
                route = normalise_route(route)
            except KetasimError as exc:
                raise KetasimError(f"{source} row {i + 1} column ROUTE", exc.problem,
                                   exc.allowed) from exc
            if rate <= 0 and route == "iv-infusion":
                raise KetasimError(f"{source} row {i + 1} column RATE",
                                   "an IV infusion record needs RATE > 0 mg/h")
            for k in range(n_addl + 1):
                t = t0 + k * ii
                a = DoseAmount(amt, per_kg=False)
                try:
                    if rate > 0:
                        doses.append(Infusion(t, a, amt / rate, route=route))
                    else:
                        doses.append(Dose(t, a, route=route))
                except KetasimError as exc:
                    raise KetasimError(f"{source} row {i + 1} column {exc.field.upper()}",
                                       exc.problem, exc.allowed) from exc
        if not doses:
            raise KetasimError(source, "no dosing records (EVID 1)")
        return cls(tuple(doses))


def _cell(rec: dict, key: str, default: float) -> float:
    """A numeric event-table cell; a missing column or an empty (NaN) cell gives ``default``."""
    v = rec.get(key)
    if v is None:
        return default
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise KetasimError(f"event table {key}", f"not a number: {v!r}") from exc
    return default if np.isnan(x) else x


def _compress(rows: list[dict]) -> list[dict]:
    """Merge runs of identical doses at a constant interval into II/ADDL records."""
    out: list[dict] = []
    for r in rows:
        if out:
            p = out[-1]
            same = all(p[k] == r[k] for k in ("ID", "AMT", "RATE", "CMT", "ROUTE"))
            last_t = p["TIME"] + p["II"] * p["ADDL"]
            gap = r["TIME"] - last_t
            if same and gap > 0 and (p["ADDL"] == 0 or abs(gap - p["II"]) < 1e-9):
                p["II"] = gap if p["ADDL"] == 0 else p["II"]
                p["ADDL"] += 1
                continue
        out.append(dict(r))
    return out


# -------------------------------------------------------------------- schedules
_WORD_NUM = {"once": 1, "twice": 2, "thrice": 3, "one": 1, "two": 2, "three": 3, "four": 4,
             "five": 5, "six": 6, "seven": 7}
_PER = {"daily": 24.0, "day": 24.0, "weekly": 168.0, "week": 168.0}
#: longest schedule string read (``"at 0, 3.5 d, 7 d, …"`` for a few hundred doses fits)
MAX_SCHEDULE_CHARS = 4000
_SCHEDULE_HELP = ("'once', 'every 3.5 d x 8', 'every 24 h for 5 d', 'twice weekly for 4 weeks', "
                  "'daily x 7', 'at 0, 3.5 d, 7 d'")


def parse_schedule(text: str | None) -> list[float]:
    """Dose times (h, from 0) for a schedule string.

    Accepted forms: ``once``; ``every <interval> x|× <n>``; ``every <interval> for
    <duration>``; ``<n|once|twice|thrice> [times] daily|weekly for <duration>`` or ``x <n>``;
    ``daily x 7``; ``at 0, 3.5 d, 7 d``. "twice weekly" spaces doses evenly (every 3.5 d).
    """
    if text is None or not str(text).strip() or str(text).strip().lower() in ("once", "single"):
        return [0.0]
    if len(str(text)) > MAX_SCHEDULE_CHARS:
        raise KetasimError("schedule", f"{shorten(str(text))} is too long ({len(str(text))} "
                           f"characters, at most {MAX_SCHEDULE_CHARS})", _SCHEDULE_HELP)
    s = str(text).strip().lower().replace("×", "x")
    s = re.sub(r"\s+", " ", s)
    if not s.isascii():
        raise KetasimError("schedule", f"cannot read {shorten(str(text))}: only plain (ASCII) "
                           "letters and digits are understood", _SCHEDULE_HELP)
    m = re.fullmatch(r"at (.+)", s)
    if m:
        times = [parse_duration(p, field="schedule", allow_zero=True)
                 for p in m.group(1).split(",")]
        if any(b <= a for a, b in zip(times, times[1:], strict=False)):
            raise KetasimError("schedule", "times after 'at' must be increasing")
        return times
    m = re.fullmatch(r"every (.+?) (?:x ?(\d+)|for (.+))", s)
    if m:
        interval = parse_duration(m.group(1), field="schedule interval")
        return _repeat(interval, m.group(2), m.group(3))
    m = re.fullmatch(r"(?:(\w+) (?:times )?)?(daily|weekly)(?: (?:x ?(\d+)|for (.+)))?", s)
    if m:
        word = m.group(1) or "once"
        per_n = _WORD_NUM.get(word) or (int(word) if word.isdigit() else None)
        if not per_n:
            raise KetasimError("schedule", f"cannot read {shorten(str(text))}", _SCHEDULE_HELP)
        interval = _PER[m.group(2)] / per_n
        if m.group(3) is None and m.group(4) is None:
            raise KetasimError("schedule", f"{shorten(str(text))} needs 'x N' or 'for <duration>'",
                               _SCHEDULE_HELP)
        return _repeat(interval, m.group(3), m.group(4))
    raise KetasimError("schedule", f"cannot read {shorten(str(text))}", _SCHEDULE_HELP)


def _repeat(interval_h: float, count: str | None, span: str | None) -> list[float]:
    if count is not None:
        n = int(count) if len(count) <= 6 else 10**6
    else:
        total = parse_duration(span, field="schedule duration")
        n = int(np.floor(total / interval_h + 1e-9))
    if n < 1 or n > 10000:
        raise KetasimError("schedule", f"number of doses must be 1..10000, got {n}")
    return [k * interval_h for k in range(n)]


def combine(regimens: Iterable[Regimen]) -> Regimen:
    """Merge several regimens into one."""
    doses: list[Administration] = []
    for r in regimens:
        doses.extend(r.doses)
    return Regimen(tuple(doses))


def dose_times(regimen: Regimen) -> Sequence[float]:
    """Start times of the doses (h after the first dose)."""
    return [d.time_h for d in regimen.doses]
