"""Small, explicit statistics for virtual-trial endpoints.

Every function takes plain arrays and returns plain floats (NaN where a quantity is not
defined, e.g. an SD from one patient). Conventions:

* confidence intervals are two-sided 95 % unless ``level`` says otherwise;
* a mean's CI is t-based (n − 1 degrees of freedom);
* a difference of means uses Welch's unequal-variance t (Welch–Satterthwaite df);
* a difference of proportions uses the Wald interval;
* Cohen's d divides the difference of means by the pooled SD.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

NAN = float("nan")


def _arr(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def mean_sd(x) -> tuple[float, float]:
    """Mean and sample SD (ddof 1); NaN where undefined."""
    a = _arr(x)
    if a.size == 0:
        return NAN, NAN
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else NAN


def mean_ci(x, level: float = 0.95) -> tuple[float, float]:
    """t-based CI of a mean."""
    a = _arr(x)
    if a.size < 2:
        return NAN, NAN
    m, s = float(a.mean()), float(a.std(ddof=1))
    half = float(_st.t.ppf(0.5 + level / 2, a.size - 1)) * s / math.sqrt(a.size)
    return m - half, m + half


def welch(x, y, level: float = 0.95) -> dict[str, float]:
    """Difference of means ``mean(x) − mean(y)`` with Welch's CI, SE, df and two-sided p."""
    a, b = _arr(x), _arr(y)
    out = {"difference": NAN, "ci95": (NAN, NAN), "se": NAN, "df": NAN, "p_value": NAN}
    if a.size == 0 or b.size == 0:
        return out
    d = float(a.mean() - b.mean())
    out["difference"] = d
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(math.sqrt(va + vb))
    if se == 0.0:
        out.update(ci95=(d, d), se=0.0, df=float(a.size + b.size - 2),
                   p_value=1.0 if d == 0 else 0.0)
        return out
    df = float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))
    q = float(_st.t.ppf(0.5 + level / 2, df))
    p = float(2 * _st.t.sf(abs(d) / se, df))
    out.update(ci95=(d - q * se, d + q * se), se=se, df=df, p_value=p)
    return out


def wald_diff(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> dict[str, float]:
    """Difference of proportions ``k1/n1 − k2/n2`` with the Wald CI."""
    if n1 == 0 or n2 == 0:
        return {"difference": NAN, "ci95": (NAN, NAN), "se": NAN}
    p1, p2 = k1 / n1, k2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = float(_st.norm.ppf(0.5 + level / 2))
    d = p1 - p2
    return {"difference": d, "ci95": (d - z * se, d + z * se), "se": se}


def cohens_d(x, y) -> float:
    """``(mean(x) − mean(y)) / pooled SD``; NaN if the pooled SD is zero or undefined."""
    a, b = _arr(x), _arr(y)
    if a.size < 2 or b.size < 2:
        return NAN
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size
                                                                              - 2)
    if pooled <= 0:
        return NAN
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def median_or_none(x) -> float | None:
    """Median of ``x``, or None when empty."""
    a = _arr(x)
    return float(np.median(a)) if a.size else None


def event_median(times, observed) -> float | None:
    """Median time to an event when everyone not observed is censored after the last event
    time (all censoring at the end of follow-up, so the Kaplan–Meier estimate equals the
    simple cumulative fraction). ``None`` when fewer than half have the event ("not
    reached")."""
    t = np.asarray(times, dtype=float)
    ev = np.asarray(observed, dtype=bool)
    n = t.size
    if n == 0:
        return None
    te = np.sort(t[ev])
    need = math.ceil(n / 2)
    if te.size < need:
        return None
    return float(te[need - 1])
