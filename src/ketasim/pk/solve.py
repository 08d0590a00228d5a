"""Exact solution of the linear PK system for piecewise-constant input, batched over patients.

For every interval between break points (doses, infusion starts and ends, output times) the
augmented system ``y = [x, integrals]`` with ``dy/dt = A y + r`` is advanced exactly:
``y(t+h) = Φ(h) y(t) + Ψ(h) r`` with ``Φ = e^{Ah}`` and ``Ψ = ∫_0^h e^{Aτ} dτ``, both read off
one matrix exponential of ``[[A, I], [0, 0]]·h`` (Van Loan), computed once per distinct step
length and reused. The SciPy ODE integrator on the same system is the reference in the tests
(:func:`solve_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

from ..errors import KetasimError
from ..regimen import Infusion, Regimen
from ..units import MAX_DURATION_H
from .model import PKSystem, factor, nasal_fraction

#: most output times one simulation returns (memory guard; the CLI's limit too)
MAX_OUTPUT_TIMES = 200_000
_TIME_DECIMALS = 9  # break points are rounded to 1e-9 h (3.6 µs) to merge coincident events


@dataclass
class Schedule:
    """A regimen compiled against a system: bolus and zero-order inputs per patient."""

    boluses: list[tuple[float, int, np.ndarray]]  # (time h, state index, amount mg (n,))
    infusions: list[tuple[float, float, int, np.ndarray]]  # (start h, end h, state, rate mg/h)
    dosed_mg: np.ndarray  # (n,) total administered (mg base)
    presystemic_mg: np.ndarray  # (n,) never reaching a compartment (route bioavailability)


def compile_schedule(system: PKSystem, regimen: Regimen, weight_kg: np.ndarray) -> Schedule:
    """Turn doses into inputs to the system's states (route fractions and durations applied)."""
    card = system.card
    n = system.n
    w = np.broadcast_to(np.asarray(weight_kg, dtype=float), (n,))
    boluses, infusions = [], []
    dosed = np.zeros(n)
    pre = np.zeros(n)
    for d in regimen:
        if d.route not in card.routes:
            raise KetasimError("route", f"model {card.id} does not support route {d.route!r}",
                               ", ".join(card.routes))
        amt = np.asarray(d.amount.mg(w), dtype=float) * np.ones(n)
        dosed += amt
        extra = {}
        if card.nasal_devices is not None:
            extra[card.nasal_devices.name] = nasal_fraction(card, system.params, amt)
        absorbed = np.zeros(n)
        for inp in card.routes[d.route].inputs:
            frac = np.broadcast_to(factor(system.params, inp.fraction, extra), (n,))
            absorbed += frac
            a = amt * frac
            if inp.to not in system.states:
                raise KetasimError("route", f"the system was assembled without route "
                                   f"{d.route!r}; assemble it with routes={regimen.routes}")
            si = system.index(inp.to)
            if isinstance(d, Infusion):
                dur = np.full(n, d.duration_h)
            elif inp.duration is not None:
                dur = system.params[inp.duration]
            else:
                boluses.append((round(d.time_h, _TIME_DECIMALS), si, a))
                continue
            if np.ptp(dur) > 0:
                raise KetasimError("duration", "zero-order input durations must be equal "
                                   "across a batch of patients")
            t0 = round(d.time_h, _TIME_DECIMALS)
            t1 = round(d.time_h + float(dur[0]), _TIME_DECIMALS)
            if t1 <= t0:
                # shorter than the time resolution of break points (1e-9 h = 3.6 µs): the
                # input is a bolus (as a rate over zero time it was inf and gave NaN)
                boluses.append((t0, si, a))
                continue
            infusions.append((t0, t1, si, a / (t1 - t0)))
        pre += amt * (1.0 - absorbed)
    return Schedule(boluses, infusions, dosed, pre)


@dataclass
class Solution:
    """States and integrals of a batch at the output times (internal units)."""

    system: PKSystem
    schedule: Schedule
    time_h: np.ndarray  # (T,)
    x: np.ndarray  # (n, T, s) dynamic states (mg, or mg/L for effect sites)
    integrals: np.ndarray  # (n, T, q) eliminated mg and AUC mg·h/L

    def plasma_mg_per_l(self, species: str | None = None) -> np.ndarray:
        """Plasma concentration (mg/L = µg/mL) of ``species`` (default: the parent), (n, T)."""
        sp = species or next(iter(self.system.plasma))
        if sp not in self.system.plasma:
            raise KetasimError("species", f"no plasma output for {sp!r}",
                               ", ".join(self.system.plasma))
        i, vol = self.system.plasma[sp]
        return self.x[:, :, i] / vol[:, None]

    def effect_mg_per_l(self, species: str | None = None) -> np.ndarray:
        """Effect-site concentration (mg/L), shape (patients, times), of ``species``
        (default: the first with an effect site)."""
        sp = species or next(iter(self.system.effect))
        return self.x[:, :, self.system.effect[sp]]

    def integral(self, name: str) -> np.ndarray:
        """An integral quantity by name (``eliminated_<species>`` mg, ``auc_<species>``
        mg·h/L), shape (patients, times)."""
        return self.integrals[:, :, self.system.integrals.index(name)]

    def mass_in_body_mg(self) -> np.ndarray:
        """Total drug amount in the body (mg parent-equivalent), (patients, times)."""
        return self.x[:, :, self.system.mass_states].sum(axis=2)

    def eliminated_mg(self) -> np.ndarray:
        """Cumulative amount eliminated (mg parent-equivalent), (patients, times)."""
        idx = [i for i, q in enumerate(self.system.integrals) if q.startswith("eliminated_")]
        return self.integrals[:, :, idx].sum(axis=2)

    def dosed_by(self, t: np.ndarray | None = None) -> np.ndarray:
        """Amount that has entered the system (mg) by each output time (n, T)."""
        t = self.time_h if t is None else t
        out = np.zeros((self.system.n, len(t)))
        for tb, _, a in self.schedule.boluses:
            out += a[:, None] * (t[None, :] >= tb)
        for t0, t1, _, r in self.schedule.infusions:
            out += r[:, None] * np.clip(t[None, :] - t0, 0.0, t1 - t0)
        return out


def _breakpoints(schedule: Schedule, t_out: np.ndarray) -> np.ndarray:
    pts = [0.0, *t_out.tolist()]
    pts += [b[0] for b in schedule.boluses]
    pts += [p for inf in schedule.infusions for p in inf[:2]]
    return np.unique(np.round(np.asarray(pts, dtype=float), _TIME_DECIMALS))


def _augmented(system: PKSystem) -> np.ndarray:
    n, s, q = system.n, len(system.states), len(system.integrals)
    A = np.zeros((n, s + q, s + q))
    A[:, :s, :s] = system.K
    A[:, s:, :s] = system.G
    return A


def _phi_psi(A: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    n, m, _ = A.shape
    M = np.zeros((n, 2 * m, 2 * m))
    M[:, :m, :m] = A * h
    M[:, :m, m:] = np.eye(m) * h
    E = expm(M)
    return E[:, :m, :m], E[:, :m, m:]


def solve(system: PKSystem, regimen: Regimen, t_out_h: np.ndarray,
          weight_kg: np.ndarray | float, max_times: int = MAX_OUTPUT_TIMES) -> Solution:
    """Exact states of all patients at ``t_out_h`` (h, increasing, ≥ 0; at most
    ``max_times``, the user limit unless an internal grid needs more).

    At a time where a bolus is given the reported state includes that bolus.
    """
    t_out = np.asarray(t_out_h, dtype=float)
    check_times(t_out, max_times=max_times)
    w = np.broadcast_to(np.asarray(weight_kg, dtype=float), (system.n,))
    schedule = compile_schedule(system, regimen, w)
    A = _augmented(system)
    n, m = A.shape[0], A.shape[1]
    s = len(system.states)
    bp = _breakpoints(schedule, t_out)
    t_keys = np.round(t_out, _TIME_DECIMALS)
    out_pos = {t: i for i, t in enumerate(t_keys)}
    y = np.zeros((n, m))
    xs = np.zeros((n, len(t_out), m))
    cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    bol = {}
    for tb, si, a in schedule.boluses:
        bol.setdefault(round(tb, _TIME_DECIMALS), []).append((si, a))
    changes: dict[float, list[tuple[int, np.ndarray]]] = {}
    for t0, t1, si, r in schedule.infusions:
        changes.setdefault(round(t0, _TIME_DECIMALS), []).append((si, r))
        changes.setdefault(round(t1, _TIME_DECIMALS), []).append((si, -r))
    rate = np.zeros((n, m))
    t_prev = 0.0
    for t in bp:
        h = round(t - t_prev, _TIME_DECIMALS)
        if h > 0:
            if h not in cache:
                cache[h] = _phi_psi(A, h)
            Phi, Psi = cache[h]
            y = np.einsum("nij,nj->ni", Phi, y) + np.einsum("nij,nj->ni", Psi, rate)
        for si, dr in changes.get(t, []):
            rate[:, si] += dr
        for si, a in bol.get(t, []):
            y[:, si] += a
        if t in out_pos:
            xs[:, out_pos[t], :] = y
        t_prev = t
    return Solution(system, schedule, t_out, xs[:, :, :s], xs[:, :, s:])



def as_times(times_h, field: str = "times") -> np.ndarray:
    """``times_h`` as a float array checked by :func:`check_times` (numbers, not text)."""
    try:
        t = np.asarray(times_h, dtype=float)
    except (TypeError, ValueError):
        raise KetasimError(field, "must be numbers (h)") from None
    check_times(t, field)
    return t


#: most output times listed one by one in run metadata (longer grids: count, ends, hash)
_META_TIMES_LISTED = 2000


def describe_times(t: np.ndarray) -> dict[str, object]:
    """The output times (h) for run metadata: count, first, last, the step of a uniform grid,
    and every value (up to 2000 times) or else a SHA-256 of the float64 values."""
    import hashlib

    t = np.asarray(t, dtype=float)
    out: dict[str, object] = {"n": int(t.size), "first_h": float(t[0]), "last_h": float(t[-1])}
    d = np.diff(t)
    if d.size and np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        out["step_h"] = float(d[0])
    if t.size <= _META_TIMES_LISTED:
        out["values_h"] = t.tolist()
    else:
        out["sha256"] = hashlib.sha256(np.ascontiguousarray(t, dtype="<f8").tobytes()
                                       ).hexdigest()
    return out


def check_times(t: np.ndarray, field: str = "times",
                max_times: int = MAX_OUTPUT_TIMES) -> None:
    """Raise :class:`KetasimError` unless ``t`` (h) is non-empty, finite, ≥ 0, strictly
    increasing and at most ``max_times`` long."""
    if t.ndim != 1:
        raise KetasimError(field, "must be a list of times (h), got " + (
            "a single value" if t.ndim == 0 else f"a {t.ndim}-D array"))
    if t.size == 0:
        raise KetasimError(field, "need at least one time")
    if t.size > max_times:
        raise KetasimError(field, f"{t.size} times; at most {max_times}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise KetasimError(field, "must be finite and ≥ 0")
    if np.any(t > MAX_DURATION_H):
        raise KetasimError(field, f"must lie within 10 years ({MAX_DURATION_H:g} h)")
    if np.any(np.diff(t) <= 0):
        raise KetasimError(field, "must be strictly increasing")


def solve_reference(system: PKSystem, regimen: Regimen, t_out_h: np.ndarray,
                    weight_kg: np.ndarray | float, rtol: float = 1e-10, atol: float = 1e-12,
                    max_times: int = MAX_OUTPUT_TIMES) -> Solution:
    """SciPy ``solve_ivp`` (LSODA) on the same system, one patient at a time; the reference.

    Integration restarts at every break point so discontinuities are hit exactly.
    """
    from scipy.integrate import solve_ivp

    t_out = np.asarray(t_out_h, dtype=float)
    check_times(t_out, max_times=max_times)
    w = np.broadcast_to(np.asarray(weight_kg, dtype=float), (system.n,))
    schedule = compile_schedule(system, regimen, w)
    A = _augmented(system)
    n, m = A.shape[0], A.shape[1]
    s = len(system.states)
    bp = _breakpoints(schedule, t_out)
    xs = np.zeros((n, len(t_out), m))
    t_keys = np.round(t_out, _TIME_DECIMALS)
    for p in range(n):
        y = np.zeros(m)
        t_prev = 0.0
        for t in bp:
            if t > t_prev:
                rate = np.zeros(m)
                mid = 0.5 * (t_prev + t)
                for t0, t1, si, r in schedule.infusions:
                    if t0 <= mid < t1:
                        rate[si] += r[p]
                Ap = A[p]
                sol = solve_ivp(lambda _t, yy, Ap=Ap, rate=rate: Ap @ yy + rate, (t_prev, t), y,
                                method="LSODA", rtol=rtol, atol=atol, jac=lambda *_a, Ap=Ap: Ap)
                y = sol.y[:, -1]
            for tb, si, a in schedule.boluses:
                if round(tb, _TIME_DECIMALS) == t:
                    y[si] += a[p]
            hit = np.nonzero(t_keys == t)[0]
            if hit.size:
                xs[p, hit[0], :] = y
            t_prev = t
    return Solution(system, schedule, t_out, xs[:, :, :s], xs[:, :, s:])
