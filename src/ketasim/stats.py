"""Small, explicit statistics for virtual-trial endpoints.

Every function takes plain arrays and returns plain floats (NaN where a quantity is not
defined, e.g. an SD from one patient). Conventions:

* confidence intervals are two-sided 95 % unless ``level`` says otherwise;
* a mean's CI is t-based (n − 1 degrees of freedom);
* a difference of means uses Welch's unequal-variance t (Welch–Satterthwaite df);
* a difference of proportions uses Newcombe's hybrid score interval (method 10 of Newcombe
  1998, built from the Wilson score intervals of the two proportions; never of zero width,
  and it stays within [−1, 1]);
* Cohen's d divides the difference of means by the pooled SD;
* a median of visit times is the lower median (a visit time, never the mean of two).
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


def welch(x, y, level: float = 0.95) -> dict[str, float | tuple[float, float]]:
    """Difference of means ``mean(x) − mean(y)`` with Welch's CI, SE, df and two-sided p.

    With fewer than two values in either group only the difference is defined (the rest is
    NaN). With a standard error of zero (no spread in either group) the t statistic is not
    defined: the CI, df and p are NaN (``se`` is 0)."""
    a, b = _arr(x), _arr(y)
    out: dict[str, float | tuple[float, float]] = {
        "difference": NAN, "ci95": (NAN, NAN), "se": NAN, "df": NAN, "p_value": NAN}
    if a.size == 0 or b.size == 0:
        return out
    d = float(a.mean() - b.mean())
    out["difference"] = d
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(math.sqrt(va + vb))
    if se == 0.0:
        out["se"] = 0.0
        return out
    df = float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)))
    q = float(_st.t.ppf(0.5 + level / 2, df))
    p = float(2 * _st.t.sf(abs(d) / se, df))
    out.update(ci95=(d - q * se, d + q * se), se=se, df=df, p_value=p)
    return out


def wald_diff(k1: int, n1: int, k2: int, n2: int,
              level: float = 0.95) -> dict[str, float | tuple[float, float]]:
    """Difference of proportions ``k1/n1 − k2/n2`` with the Wald CI (kept for comparison; the
    trial summaries use :func:`newcombe_diff`: the Wald interval has zero width at 0/n1 vs
    0/n2 and poor coverage near 0 or 1)."""
    if n1 == 0 or n2 == 0:
        return {"difference": NAN, "ci95": (NAN, NAN), "se": NAN}
    p1, p2 = k1 / n1, k2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = float(_st.norm.ppf(0.5 + level / 2))
    d = p1 - p2
    return {"difference": d, "ci95": (d - z * se, d + z * se), "se": se}


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k/n`` (no continuity correction); NaN for
    ``n = 0``."""
    if n <= 0:
        return NAN, NAN
    z = float(_st.norm.ppf(0.5 + level / 2))
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff(k1: int, n1: int, k2: int, n2: int,
                  level: float = 0.95) -> dict[str, float | tuple[float, float]]:
    """Difference of proportions ``k1/n1 − k2/n2`` with Newcombe's hybrid score CI (method 10
    of Newcombe 1998, Stat Med 17:873): with Wilson intervals ``(l1, u1)`` and ``(l2, u2)``,
    ``d − √((p1 − l1)² + (u2 − p2)²)`` to ``d + √((u1 − p1)² + (p2 − l2)²)``.
    E.g. 0/25 − 0/47: [−0.076, 0.133]; 56/70 − 48/80: [0.0524, 0.3339]."""
    if n1 == 0 or n2 == 0:
        return {"difference": NAN, "ci95": (NAN, NAN)}
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, level)
    l2, u2 = wilson(k2, n2, level)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"difference": d, "ci95": (lo, hi)}


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
    """Median of ``x`` (the mean of the two middle values for an even count), or None when
    empty. For visit times use :func:`lower_median`."""
    a = _arr(x)
    return float(np.median(a)) if a.size else None


def lower_median(x) -> float | None:
    """Lower median of ``x``: the ⌈n/2⌉-th smallest value, so always one of the values (a
    visit time, not the mean of two; the same convention as :func:`event_median`). None when
    empty."""
    a = np.sort(_arr(x))
    if a.size == 0:
        return None
    return float(a[math.ceil(a.size / 2) - 1])


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
