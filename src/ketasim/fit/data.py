"""NONMEM-style data sets in: reading, validating and splitting into subjects.

Columns (case-insensitive): ``ID, TIME, AMT, DV`` are required; ``EVID`` (from ``AMT`` and
``MDV`` when absent, as NONMEM does), ``RATE`` (mg/h, 0 for a
bolus or an absorption dose), ``CMT``, ``MDV``, ``ROUTE``, ``II``/``ADDL`` are optional, and a
column naming the observed quantity (``DVID``, also accepted as ``OBS``, ``QUANTITY``,
``OBSERVED``, ``DVNAME``, ``ANALYTE``) with values ``plasma`` (parent drug, ng/mL),
``metabolite`` (ng/mL), ``madrs``, ``ssi``, ``cadss`` — or the numeric codes 1–5 in that order.
Without that column every observation is ``plasma``. Covariates: ``WT``/``WEIGHT`` (kg),
``AGE`` (years), ``SEX`` (male/female or 0/1 = male/female), ``RACE``, ``DISORDER``.

Units: TIME h, AMT mg base, RATE mg/h, concentrations ng/mL, scores in scale points.

Concentrations below the lower limit of quantification (BLQ) are marked by one of two flag
columns (0 = observed, 1 = left-censored; empty = 0):

* ``CENS`` (Monolix): DV holds the limit (LLOQ, ng/mL). Right censoring (``CENS -1``) is
  refused. A ``LIMIT`` column may be present; on a censored row it must be empty or 0 and is
  not used (the likelihood is Beal's M3, censoring interval (−∞, LLOQ]).
* ``BLQ`` (NONMEM style): the limit is in an ``LLOQ`` column when the data have one (then it is
  required on every censored row and DV is not used there), else in DV.

Only observation rows (EVID 0, MDV not 1) can be censored: a flag on a dose or MDV 1 row is
ignored. A flag on a score (MADRS, SSI, CADSS) is refused: scores are censored at their scale
bounds by the forecast itself.

Text conventions (NONMEM): comma, tab or white-space delimited; ``#`` lines are comments (a
``#ID,TIME,...`` line is the header); with a first column ``C``, rows whose ``C`` starts with
"C" are comments (``IGNORE=C``).

Every problem is reported as one line naming the row (1-based data row; the file line is one
more, because of the header; comment and blank lines are counted) and the column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import KetasimError
from ..pk.model import Covariates
from ..regimen import ROUTES, Dose, Infusion, Regimen, normalise_route
from ..units import MAX_DOSE_MG, MAX_DURATION_H

QUANTITIES: tuple[str, ...] = ("plasma", "metabolite", "madrs", "ssi", "cadss")
QUANTITY_ALIASES = {"conc": "plasma", "concentration": "plasma", "parent": "plasma",
                    "cp": "plasma", "ketamine": "plasma", "esketamine": "plasma",
                    "norketamine": "metabolite", "nk": "metabolite", "metab": "metabolite"}
QUANTITY_COLUMNS = ("DVID", "OBS", "QUANTITY", "OBSERVED", "DVNAME", "ANALYTE")
REQUIRED = ("ID", "TIME", "AMT", "DV")  # EVID: from AMT and MDV when absent (NONMEM)
#: score bounds (scale points) for censoring at the limits
SCORE_BOUNDS = {"madrs": (0.0, 60.0), "ssi": (0.0, 38.0), "cadss": (0.0, 92.0)}
_WEIGHT_COLS = ("WT", "WEIGHT", "WEIGHT_KG", "BW")
#: most additional doses one record may expand to (as ``Regimen.from_event_table``)
MAX_ADDL = 9999
#: largest subject ID magnitude: every ID an integer exact in a float (and in JSON readers)
MAX_ID = 2**53
#: censoring flag columns: Monolix ``CENS`` (limit in DV), NONMEM-style ``BLQ`` (limit in
#: ``LLOQ`` where that column exists, else in DV); 1 = below the limit (left-censored)
CENS_COLUMNS = ("CENS", "BLQ")


@dataclass
class Subject:
    """One subject: regimen, observations and covariates (units: h, mg, kg, years)."""

    id: int
    regimen: Regimen
    obs_time_h: np.ndarray
    obs_value: np.ndarray
    obs_quantity: np.ndarray  # str array, one of QUANTITIES
    weight_kg: float
    age_years: float
    sex: str
    race: str
    disorder: str
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # data rows of the obs
    #: True where the observation is below its limit of quantification (left-censored); its
    #: ``obs_value`` is then the limit (LLOQ, ng/mL). Default: nothing censored.
    obs_censored: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.obs_censored is None:
            self.obs_censored = np.zeros(np.shape(self.obs_time_h), bool)
    #: times (h) of resets (EVID 3, and EVID 4 before its dose) after the first dose: from a
    #: reset on, doses before it no longer contribute (NONMEM semantics)
    reset_times_h: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def observed(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """Observation times (h) and values of one quantity (e.g. plasma ng/mL, MADRS); for a
        censored observation the value is its limit (see :meth:`censored`)."""
        m = self.obs_quantity == quantity
        return self.obs_time_h[m], self.obs_value[m]

    def censored(self, quantity: str) -> np.ndarray:
        """Boolean mask, aligned with :meth:`observed`, of the censored (BLQ) observations."""
        return self.obs_censored[self.obs_quantity == quantity]


@dataclass
class Dataset:
    """A validated data set: the table (upper-case columns) and its subjects."""

    table: pd.DataFrame
    subjects: list[Subject]
    source: str = "<table>"

    @property
    def quantities(self) -> list[str]:
        """The observed quantities present in the data, sorted."""
        return sorted({q for s in self.subjects for q in s.obs_quantity})

    def n_obs(self, quantity: str | None = None) -> int:
        """Number of observations (of one quantity, or all)."""
        return int(sum((s.obs_quantity == quantity).sum() if quantity else s.obs_time_h.size
                       for s in self.subjects))

    def n_censored(self, quantity: str | None = None) -> int:
        """Number of censored (BLQ) observations (of one quantity, or all)."""
        return int(sum((s.obs_censored & (s.obs_quantity == quantity)).sum() if quantity
                       else s.obs_censored.sum() for s in self.subjects))


def _err(source: str, row: int | None, col: str, problem: str,
         allowed: str | None = None) -> KetasimError:
    where = f"{source} row {row} column {col}" if row is not None else f"{source} column {col}"
    return KetasimError(where, problem, allowed)


def _num(df: pd.DataFrame, col: str, source: str, default: float | None = None) -> np.ndarray:
    """A numeric column; an empty cell gives ``default`` (or is an error when None)."""
    if col not in df.columns:
        return np.full(len(df), np.nan if default is None else default)
    raw = df[col]
    vals = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(vals) & raw.notna().to_numpy() & (raw.astype(str).str.strip() != "").to_numpy()
    bad &= ~raw.astype(str).str.strip().str.lower().isin(["nan", "."]).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise _err(source, int(df.index[i]) + 1, col, f"not a number: {raw.iloc[i]!r}")
    if default is not None:
        vals = np.where(np.isnan(vals), default, vals)
    return vals


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a data file's bytes, recorded with a fit or forecast so that its
    output names the exact data it came from (a path alone can be rewritten)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_dataset(data: str | os.PathLike | pd.DataFrame | Dataset, field: str = "data"
               ) -> Dataset:
    """``data`` as a :class:`Dataset`: a Dataset as is; a CSV path (``str`` or path object)
    or a pandas DataFrame read and validated by :func:`read_dataset`. Anything else:
    :class:`KetasimError` naming ``field``."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | os.PathLike | pd.DataFrame):
        return read_dataset(data)
    raise KetasimError(field, f"must be a CSV path, a pandas DataFrame or a Dataset, got "
                       f"{type(data).__name__}")


def _join(fields: list[str], sep: str) -> str:
    """One delimited line from ``fields`` (quoted where needed, as :mod:`csv` writes it)."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, delimiter=sep, lineterminator="").writerow(fields)
    return buf.getvalue()


def _read_text_table(path: str) -> pd.DataFrame:
    """A NONMEM-style text table as strings, indexed by data row (file line − 2, 0-based).

    Comma-, tab- or whitespace-delimited (decided from the header line); a UTF-8 byte-order
    mark is dropped. Lines starting with ``#`` are comments (NONMEM's default ``IGNORE=#``),
    except a ``#``-line naming the columns (``#ID,TIME,...``), which is the header; blank
    lines are skipped. Row numbers keep counting comment and blank lines, so row N is always
    file line N + 1."""
    import io

    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError as exc:
        raise KetasimError("data", f"file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KetasimError("data", f"cannot read {path} as text: "
                           f"{str(exc).splitlines()[0]}") from exc
    header_at, header = None, ""
    for k, line in enumerate(lines):
        t = line.strip()
        if not t:
            continue
        if t.startswith("#"):
            names = {w.strip().upper() for w in t.lstrip("#").replace(",", " ").split()}
            if not {"ID", "TIME"} <= names:
                continue  # a comment before the header
            t = t.lstrip("#").strip()
        header_at, header = k, t
        break
    if header_at is None:
        raise KetasimError("data", f"{path} has no header line")
    sep = "," if "," in header else "\t" if "\t" in header else r"\s+"
    keep = [header]
    rows = []
    for k in range(header_at + 1, len(lines)):
        t = lines[k].strip()
        if not t or t.startswith("#"):
            continue
        keep.append(lines[k] if sep != r"\s+" else t)
        rows.append(k - 1)  # file line k + 1, data row k, 0-based k - 1
    # every row must have the header's number of fields: pandas would take surplus leading
    # fields as an index (the columns then shift) and pad missing ones with empty cells
    import csv

    def _fields(line: str) -> list[str]:
        return line.split() if sep == r"\s+" else next(csv.reader([line], delimiter=sep))

    n_head = len(_fields(header))
    for i, r in enumerate(rows, start=1):
        f = _fields(keep[i])
        if len(f) > n_head and not any(x.strip() for x in f[n_head:]):
            f = f[:n_head]  # trailing empty fields (a spreadsheet's trailing commas)
            keep[i] = " ".join(f) if sep == r"\s+" else _join(f, sep)
        if len(f) != n_head:
            raise KetasimError(f"{path} row {r + 1}", f"{len(f)} fields where the header "
                               f"names {n_head}")
    try:
        df = pd.read_csv(io.StringIO("\n".join(keep)), dtype=str, keep_default_na=False,
                         skipinitialspace=True, sep=sep, engine="c" if len(sep) == 1 else
                         "python", skip_blank_lines=False)
    except Exception as exc:  # pandas parser errors: report the class, one line
        raise KetasimError("data", f"cannot read {path} as CSV: "
                           f"{str(exc).splitlines()[0]}") from exc
    if len(df) != len(rows):  # cannot happen with skip_blank_lines=False; keep rows honest
        raise KetasimError("data", f"cannot read {path}: {len(df)} rows parsed from "
                           f"{len(rows)} data lines")
    df.index = pd.Index(rows)
    return df


def read_dataset(data: str | os.PathLike | pd.DataFrame, source: str | None = None) -> Dataset:
    """Read and validate a NONMEM-style CSV (path) or DataFrame into a :class:`Dataset`."""
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if not isinstance(data, str | pd.DataFrame):
        raise KetasimError("data", f"must be a CSV path or a pandas DataFrame, got "
                           f"{type(data).__name__}")
    if isinstance(data, str):
        source = source or data
        df = _read_text_table(data)
    else:
        df = data.astype(str).reset_index(drop=True)
        df.attrs = {}
        source = source or "<table>"
    df.columns = [str(c).strip().upper() for c in df.columns]
    if len(df.columns) and df.columns[0] == "C":  # NONMEM IGNORE=C: "C" rows are comments
        keep = ~df["C"].astype(str).str.strip().str.upper().str.startswith("C").to_numpy()
        df = df[keep]
    rownum = [int(i) + 1 for i in df.index]  # 1-based data rows (file line − 1)
    for c in df.columns:  # pandas renames a repeated header "DV" to "DV.1"
        base, dot, k = c.rpartition(".")
        if dot and k.isdigit() and base in df.columns:
            raise _err(source, None, base, "appears more than once in the header")
    if len(set(df.columns)) != len(df.columns):
        dup = next(c for c in df.columns if list(df.columns).count(c) > 1)
        raise _err(source, None, dup, "appears more than once in the header")
    df = df.replace({"": np.nan, ".": np.nan, "nan": np.nan, "NaN": np.nan})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise _err(source, None, ",".join(missing), "missing required column(s)",
                   "ID, TIME, AMT, DV (+ EVID, RATE, CMT, MDV, DVID, WT, ...)")
    if len(df) == 0:
        raise KetasimError(source, "no data rows")
    ids = _num(df, "ID", source)
    time = _num(df, "TIME", source)
    amt = _num(df, "AMT", source, 0.0)
    rate = _num(df, "RATE", source, 0.0)
    dv = _num(df, "DV", source)
    mdv = _num(df, "MDV", source, -1.0)
    if "EVID" in df.columns:
        evid = _num(df, "EVID", source, 0.0)
    else:  # NONMEM without EVID: AMT > 0 is a dose, MDV 1 another event, else an observation
        evid = np.where(amt > 0, 1.0, np.where(mdv == 1, 2.0, 0.0))
    ii = _num(df, "II", source, 0.0)
    addl = _num(df, "ADDL", source, 0.0)
    ss = _num(df, "SS", source, 0.0)
    if np.any(ss != 0):  # a steady-state record would silently be read as a single dose
        r = int(np.argmax(ss != 0))
        raise _err(source, rownum[r], "SS", f"steady-state dosing (SS {ss[r]:g}) is not "
                   "supported: give the doses that lead to it (ADDL/II)", "0 or empty")
    cens, limit, flag_col, lim_col = _censoring(df, source, evid, mdv, dv)
    for col, arr in (("ID", ids), ("TIME", time)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise _err(source, rownum[int(np.argmax(bad))], col, "missing or not finite")
    for col, arr, hi, unit in (("TIME", time, MAX_DURATION_H, "h"), ("AMT", amt, MAX_DOSE_MG, "mg"),
                               ("RATE", rate, None, "mg/h"), ("II", ii, MAX_DURATION_H, "h"),
                               ("ADDL", addl, MAX_ADDL, ""), ("DV", dv, None, "")):
        bad = np.isinf(arr) | ((arr > hi) if hi is not None else False)
        if bad.any():
            r = int(np.argmax(bad))
            raise _err(source, rownum[r], col, f"{arr[r]:g} is not finite or above {hi:g} {unit}"
                       if hi is not None else f"{arr[r]:g} is not finite")
    big = np.abs(ids) > MAX_ID
    if big.any():
        r = int(np.argmax(big))
        raise _err(source, rownum[r], "ID", f"{ids[r]:g} is outside ±{MAX_ID:g}")
    frac = ids != np.round(ids)
    if frac.any():
        r = int(np.argmax(frac))
        raise _err(source, rownum[r], "ID", f"must be a whole number, got {ids[r]:g}")
    for r in range(len(df)):
        row = rownum[r]
        if evid[r] not in (0, 1, 2, 3, 4):
            raise _err(source, row, "EVID", f"unknown event id {evid[r]:g}", "0, 1, 2, 3, 4")
        if time[r] < 0:
            raise _err(source, row, "TIME", f"must be ≥ 0 h, got {time[r]:g}")
        if evid[r] in (1, 4):
            if not (np.isfinite(amt[r]) and amt[r] > 0):
                raise _err(source, row, "AMT", "a dose record (EVID 1) needs an amount > 0 mg")
            if rate[r] < 0:
                raise _err(source, row, "RATE", "modelled rate (RATE < 0) is not supported",
                           "0 or > 0 mg/h")
            if addl[r] < 0 or addl[r] != int(addl[r]) or (addl[r] > 0 and not ii[r] > 0):
                raise _err(source, row, "ADDL", "needs a whole number ≥ 0 and II > 0")
        elif evid[r] == 0 and mdv[r] != 1:
            if cens[r]:
                if not (np.isfinite(limit[r]) and limit[r] > 0):
                    got = "missing" if np.isnan(limit[r]) else f"{limit[r]:g}"
                    raise _err(source, row, lim_col, f"a censored observation ({flag_col} 1) "
                               f"needs its limit of quantification (ng/mL, finite, > 0) in "
                               f"{lim_col}, got {got}")
            elif not np.isfinite(dv[r]):
                raise _err(source, row, "DV", "an observation (EVID 0, MDV 0) needs a value")
    # times within an ID must not decrease (NONMEM order)
    for sid in pd.unique(ids):
        idx = np.nonzero(ids == sid)[0]
        d = np.diff(time[idx])
        if np.any(d < 0):
            k = int(np.argmax(d < 0)) + 1
            raise _err(source, rownum[idx[k]], "TIME",
                       f"time decreases within ID {sid:g} ({time[idx[k]]:g} h after "
                       f"{time[idx[k - 1]]:g} h)")
    qcol = next((c for c in QUANTITY_COLUMNS if c in df.columns), None)
    quantity = np.array(["plasma"] * len(df), dtype=object)
    if qcol is None and "CMT" in df.columns:
        # without a quantity column every observation is the parent drug; observations in
        # two compartments (parent and metabolite, say) would silently all become parent
        cmt = _num(df, "CMT", source, 1.0)
        r0, r = _second_cmt(cmt, (evid == 0) & (mdv != 1))
        if r is not None:
            raise _err(source, rownum[r], "CMT", f"observations in compartments "
                       f"{cmt[r0]:g} and {cmt[r]:g}, and the observed quantity is not "
                       "read from CMT: add a DVID column naming each observation's quantity",
                       ", ".join(QUANTITIES))
    if qcol is not None:
        for r, v in enumerate(df[qcol].to_numpy()):
            if evid[r] != 0 or mdv[r] == 1 or (isinstance(v, float) and np.isnan(v)):
                continue
            quantity[r] = _quantity(str(v), source, rownum[r], qcol)
    for r in range(len(df)):
        if cens[r] and quantity[r] in SCORE_BOUNDS:
            raise _err(source, rownum[r], flag_col, f"a {quantity[r]} score cannot be marked "
                       "censored: scores are censored at their scale bounds automatically",
                       f"{flag_col} 0 on score rows")
        if evid[r] != 0 or mdv[r] == 1 or cens[r] or not np.isfinite(dv[r]):
            continue
        lo, hi = SCORE_BOUNDS.get(quantity[r], (0.0, np.inf))
        if not lo <= dv[r] <= hi:
            raise _err(source, rownum[r], "DV", f"{quantity[r]} value {dv[r]:g} is outside "
                       f"{lo:g}–{hi:g}")
    route_col = df["ROUTE"] if "ROUTE" in df.columns else None
    if route_col is None and "CMT" in df.columns:
        # without ROUTE every dose is IV (RATE > 0 infusion, else bolus); doses into two
        # compartments (e.g. a depot and the central one) would silently become IV doses
        cmt = _num(df, "CMT", source, 1.0)
        r0, r = _second_cmt(cmt, np.isin(evid, (1, 4)))
        if r is not None:
            raise _err(source, rownum[r], "CMT", f"doses go into compartments "
                       f"{cmt[r0]:g} and {cmt[r]:g}, and the route of a dose is not "
                       "read from CMT: add a ROUTE column naming each dose's route",
                       ", ".join(ROUTES))
    wcol = next((c for c in _WEIGHT_COLS if c in df.columns), None)
    weight = _num(df, wcol, source) if wcol else np.full(len(df), np.nan)
    age = _num(df, "AGE", source) if "AGE" in df.columns else np.full(len(df), np.nan)
    for col, arr in ((wcol, weight), ("AGE", age)):
        if np.isinf(arr).any():
            raise _err(source, rownum[int(np.argmax(np.isinf(arr)))], col, "not finite")
    subjects = []
    for sid in pd.unique(ids):
        idx = np.nonzero(ids == sid)[0]
        doses = []
        for r in idx:
            if evid[r] not in (1, 4):
                continue
            route = None
            if route_col is not None and isinstance(route_col.iloc[r], str):
                try:
                    route = normalise_route(route_col.iloc[r])
                except KetasimError as exc:
                    raise _err(source, rownum[r], "ROUTE", exc.problem, exc.allowed) from exc
            if route is None:
                route = "iv-infusion" if rate[r] > 0 else "iv-bolus"
            if rate[r] <= 0 and route == "iv-infusion":
                raise _err(source, rownum[r], "RATE", "an IV infusion record needs RATE > 0 mg/h")
            doses += _dose_record(source, rownum[r], float(time[r]), float(amt[r]),
                                  float(rate[r]), float(ii[r]), int(addl[r]), route)
        obs = [r for r in idx if evid[r] == 0 and mdv[r] != 1]
        first_dose = min((float(time[r]) for r in idx if evid[r] in (1, 4)), default=np.inf)
        resets = sorted({float(time[r]) for r in idx if evid[r] in (3, 4)
                         and time[r] > first_dose})  # a reset before any dose changes nothing
        w = _first(weight[idx])
        a_ = _first(age[idx])
        if w is not None and not 0.5 <= w <= 300:
            r = rownum[idx[np.nonzero(weight[idx] == w)[0][0]]]
            raise _err(source, r, wcol or "WT", f"weight must be 0.5–300 kg, got {w:g}")
        sex = _text_cov(df, "SEX", idx, {"0": "male", "1": "female", "m": "male",
                                         "f": "female"}, "male")
        race = _text_cov(df, "RACE", idx, {}, "caucasian")
        w_, age_ = 70.0 if w is None else w, 40.0 if a_ is None else a_
        try:  # the PK layer's own covariate checks, reported at the subject's first row
            Covariates(weight_kg=w_, age_years=age_, sex=sex, race=race)
        except KetasimError as exc:
            col = {"weight": wcol or "WT", "age": "AGE", "sex": "SEX", "race": "RACE"}.get(
                exc.field, exc.field.upper())
            raise _err(source, rownum[idx[0]], col, exc.problem, exc.allowed) from exc
        subjects.append(Subject(
            id=int(sid), regimen=Regimen(tuple(doses)),
            obs_time_h=time[obs].astype(float),
            obs_value=np.where(cens[obs], limit[obs], dv[obs]).astype(float),
            obs_quantity=np.array([quantity[r] for r in obs], dtype="<U12"),
            weight_kg=w_, age_years=age_, sex=sex, race=race,
            disorder=_text_cov(df, "DISORDER", idx, {}, "trd"),
            rows=np.asarray([rownum[r] for r in obs], dtype=int),
            obs_censored=cens[obs].astype(bool),
            reset_times_h=np.asarray(resets, dtype=float)))
    return Dataset(df, subjects, source)


def _second_cmt(cmt: np.ndarray, rows: np.ndarray) -> tuple[int, int | None]:
    """Among the rows selected by the mask ``rows``: the first one and the first whose CMT
    differs from it (``None`` when all selected rows share one compartment)."""
    idx = np.nonzero(rows)[0]
    if idx.size == 0:
        return 0, None
    other = np.nonzero(cmt[idx] != cmt[idx[0]])[0]
    return int(idx[0]), (int(idx[other[0]]) if other.size else None)


def _censoring(df: pd.DataFrame, source: str, evid: np.ndarray, mdv: np.ndarray,
               dv: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, str]:
    """Censoring of each row: (censored observation?, limit (ng/mL), flag column, limit
    column). ``CENS`` (Monolix: limit in DV) or ``BLQ`` (limit in ``LLOQ`` if the data have
    that column, else DV); flag values 0/1 (empty = 0) on every row, a 1 counting only on
    observation rows (EVID 0, MDV not 1). Without a flag column nothing is censored."""
    n = len(df)
    present = [c for c in CENS_COLUMNS if c in df.columns]
    if not present:
        return np.zeros(n, bool), dv, "CENS", "DV"
    if len(present) > 1:
        raise _err(source, None, present[1], "two censoring flag columns: give either CENS "
                   "(Monolix) or BLQ (NONMEM style), not both")
    flag_col = present[0]
    flag = _num(df, flag_col, source, 0.0)
    for r in range(n):
        if flag[r] in (0.0, 1.0):
            continue
        row = int(df.index[r]) + 1  # the file's data row
        if flag_col == "CENS" and flag[r] == -1.0:
            raise _err(source, row, flag_col, "right censoring (CENS -1, above an upper "
                       "limit) is not supported", "0 = observed, 1 = below the LLOQ in DV")
        raise _err(source, row, flag_col, f"must be 0 or 1, got {flag[r]:g}",
                   "0 = observed, 1 = below the limit of quantification")
    cens = (flag == 1.0) & (evid == 0) & (mdv != 1)
    if "LIMIT" in df.columns:  # Monolix's lower end of the censoring interval: only 0/empty
        lim_lo = _num(df, "LIMIT", source, 0.0)
        bad = cens & (lim_lo != 0.0)
        if bad.any():
            r = int(np.argmax(bad))
            raise _err(source, int(df.index[r]) + 1, "LIMIT", "interval censoring (a lower "
                       f"limit {lim_lo[r]:g}) is not supported", "empty or 0 on censored rows")
    if flag_col == "BLQ" and "LLOQ" in df.columns:
        return cens, _num(df, "LLOQ", source), flag_col, "LLOQ"
    return cens, dv, flag_col, "DV"


def _dose_record(source: str, row: int, time_h: float, amt_mg: float, rate_mg_h: float,
                 ii_h: float, addl: int, route: str) -> list[Dose | Infusion]:
    """The administrations of one dose record (data row ``row``): ``addl + 1`` doses of
    ``amt_mg`` mg every ``ii_h`` h from ``time_h`` h, infused over ``amt_mg / rate_mg_h`` h
    when ``rate_mg_h`` > 0 (mg/h). A dose the regimen refuses (an infusion lasting longer
    than ``MAX_DURATION_H``, an additional dose later than that) is a one-line error naming
    the row and the column at fault (RATE, ADDL)."""
    from ..units import DoseAmount

    a = DoseAmount(amt_mg, per_kg=False)
    if rate_mg_h > 0:
        dur = amt_mg / rate_mg_h
        if not (np.isfinite(dur) and dur <= MAX_DURATION_H):
            raise _err(source, row, "RATE", f"an infusion of {amt_mg:g} mg at {rate_mg_h:g} "
                       f"mg/h would last {dur:g} h, longer than {MAX_DURATION_H:g} h")
    last = time_h + addl * ii_h
    if addl and not last <= MAX_DURATION_H:
        raise _err(source, row, "ADDL", f"{addl} additional doses every {ii_h:g} h reach "
                   f"{last:g} h, beyond {MAX_DURATION_H:g} h")
    out: list[Dose | Infusion] = []
    for k in range(addl + 1):
        t = time_h + k * ii_h
        out.append(Infusion(t, a, amt_mg / rate_mg_h, route=route) if rate_mg_h > 0
                   else Dose(t, a, route=route))
    return out


def _first(a: np.ndarray) -> float | None:
    f = a[np.isfinite(a)]
    return float(f[0]) if f.size else None


def _text_cov(df: pd.DataFrame, col: str, idx: np.ndarray, mapping: dict, default: str) -> str:
    if col not in df.columns:
        return default
    vals = [str(v).strip().lower() for v in df[col].iloc[idx] if isinstance(v, str) and v.strip()]
    if not vals:
        return default
    v = vals[0]
    return mapping.get(v.rstrip("0").rstrip(".") if v.replace(".", "").isdigit() else v,
                       mapping.get(v, v))


def _quantity(v: str, source: str, row: int, col: str) -> str:
    s = v.strip().lower()
    if s.replace(".", "").isdigit():
        k = int(float(s))
        if 1 <= k <= len(QUANTITIES):
            return QUANTITIES[k - 1]
    s = QUANTITY_ALIASES.get(s, s)
    if s not in QUANTITIES:
        raise _err(source, row, col, f"unknown observed quantity {v!r}",
                   ", ".join(QUANTITIES) + " or 1–5")
    return s


def to_csv_table(subjects: list[dict]) -> pd.DataFrame:
    """Build a NONMEM-style table from ``[{"id", "regimen", "weight_kg", "obs": [(t, dv, q)]}]``.

    Dose rows use :meth:`Regimen.to_event_table` (uncompressed); observation rows have EVID 0.
    An observation may be ``(t, dv, q, cens)``: with ``cens`` 1 it is below the limit of
    quantification and ``dv`` is that limit (ng/mL); the table then has a Monolix-style
    ``CENS`` column (0 on every other row), which :func:`read_dataset` reads back.
    """
    with_cens = any(len(o) > 3 for s in subjects for o in s["obs"])
    rows = []
    for s in subjects:
        w = s.get("weight_kg", 70.0)
        ev = s["regimen"].to_event_table(w, subject_id=s["id"], compress=False)
        for rec in ev.to_dict("records"):
            rec.update({"DV": np.nan, "MDV": 1, "DVID": "", "WT": w, "CENS": 0})
            rows.append(rec)
        for o in s["obs"]:
            t, y, q = o[:3]
            rows.append({"ID": s["id"], "TIME": t, "EVID": 0, "AMT": 0.0, "RATE": 0.0, "CMT": 1,
                         "II": 0.0, "ADDL": 0, "ROUTE": "", "DV": y, "MDV": 0, "DVID": q,
                         "WT": w, "CENS": int(o[3]) if len(o) > 3 else 0})
    df = pd.DataFrame(rows)
    df = df.sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False], kind="stable")
    cols = ["ID", "TIME", "EVID", "AMT", "RATE", "CMT", "II", "ADDL", "ROUTE", "DV", "MDV",
            "DVID", "WT"]
    if with_cens:
        cols.insert(cols.index("MDV"), "CENS")
    else:
        df = df.drop(columns="CENS", errors="ignore")
    return df[cols].reset_index(drop=True)
