"""Fast exact batched PK on a shared time grid (numba), for large virtual populations.

Units: time h, amount mg (parent-equivalent mg for metabolites), volume L, concentration mg/L,
AUC mg·h/L — the internal units of :mod:`ketasim.pk.model`.

Method and why
--------------
The same mathematics as :func:`ketasim.pk.solve.solve`: for piecewise-constant input the
linear system is advanced *exactly* between break points (output times, doses, zero-order
input starts and ends, all shared by the batch) with matrix exponentials, one per distinct
step length, reused over the whole grid. The 28-day hourly grid of an 8-dose infusion regimen
has only three distinct step lengths (1 h, the infusion length, and the rest of that hour).

Per patient, the exponentials are computed by a compiled Padé approximant with scaling and
squaring, vectorised over a chunk of patients (patient index innermost, so LLVM emits SIMD
code) and parallel over chunks (``prange``). We chose this over an eigen (modal) decomposition:

* it has no failure mode at (near-)repeated eigenvalues — with inter-individual variability
  the effect-site, parent and metabolite rates can coincide for some patients, where modal
  formulas lose accuracy and need a fallback; Padé needs none and no per-patient LAPACK call;
* it is generic: any card, any route (first-order depots, zero-order inputs, boluses, the
  esketamine liver/metabolite structure) is handled by the same code, so there is no IV-only
  special case and no fallback path to keep in step with :mod:`ketasim.pk.solve`.

Accuracy: the scaled matrix ``A = M·h/2^s`` has ``‖A‖∞ ≤ θ₇ ≈ 0.95`` (Higham 2005), where the
degree-7 Padé approximant has backward error below double-precision unit roundoff. At that norm
the Padé denominator ``q₇(A)`` is strictly diagonally dominant (``‖q₇(A) − I‖∞ < 0.6``), so
Gaussian elimination without pivoting — which vectorises over patients — is stable. The result
agrees with the SciPy-expm solver to ~1e-12 relative.

Before exponentiating, the system is pruned to the states the outputs depend on (the parent
and metabolite plasma compartments and their ancestors in the flow graph; an effect site is
dropped) and augmented with one row for the parent plasma AUC (``d AUC/dt = x_c / V``) and
one constant "rate" column per zero-order input target, so one exponential gives both the
homogeneous propagator and the exact response to the infusion over the step.

Propagation walks the shared break-point grid once per chunk: a small matrix–vector product
per step (SIMD over patients), boluses and rate changes applied at their break points (in the
order :func:`~ketasim.pk.solve.solve` uses: rate changes, then boluses, then the output, so
an output at a bolus time includes the bolus), and plasma concentrations written at output
times.

Cmax is the maximum of the parent plasma concentration over all break points (the output grid
plus every dose, infusion start and end). For IV boluses and infusions into the plasma
compartment the peak lies on a break point (concentration rises while an infusion runs and
falls after), so it is exact there; for first-order absorption routes it is a grid maximum.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from ..errors import KetasimError
from ..regimen import Regimen
from .model import PKSystem
from .solve import _TIME_DECIMALS, check_times, compile_schedule

__all__ = ["FastResult", "solve_batch", "take_patients", "CHUNK"]

CHUNK = 16  # patients per SIMD chunk (patient index innermost in the work arrays)

_THETA7 = 0.9504178996162932  # Higham 2005: degree-7 Padé backward error ≤ 2^-53 below this
_PADE7 = (17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0)


class FastResult(NamedTuple):
    """Outputs of :func:`solve_batch` (unpacks as ``plasma, auc, cmax``).

    ``plasma``: species → (N, T) plasma concentration, mg/L (the system's species order).
    ``auc``: parent plasma AUC from 0, mg·h/L: (N,) at the last grid time, or (N, T) on the
    grid with ``auc_on_grid=True``.
    ``cmax``: (N,) parent plasma Cmax over 0..last grid time, mg/L.
    """

    plasma: dict[str, np.ndarray]
    auc: np.ndarray
    cmax: np.ndarray


# --------------------------------------------------------------------------- compiled kernels
@numba.njit(cache=True, inline="always")
def _matmul(A, B, out, m):
    for i in range(m):
        for j in range(m):
            for c in range(CHUNK):
                out[i, j, c] = 0.0
            for k in range(m):
                for c in range(CHUNK):
                    out[i, j, c] += A[i, k, c] * B[k, j, c]


@numba.njit(cache=True)
def _expm_chunk(M, h, E):
    """E[:, :, c] = exp(M[:, :, c]·h) for every lane c: Padé(7) with scaling and squaring."""
    m = M.shape[0]
    C = M.shape[2]
    # scaling: one s for the chunk, the largest any patient needs
    nrm = 0.0
    for c in range(CHUNK):
        for i in range(m):
            r = 0.0
            for j in range(m):
                r += abs(M[i, j, c])
            r *= h
            if r > nrm:
                nrm = r
    s = 0
    while nrm > _THETA7:
        nrm *= 0.5
        s += 1
    f = h / (2.0 ** s)
    A = np.empty((m, m, C))
    for i in range(m):
        for j in range(m):
            for c in range(CHUNK):
                A[i, j, c] = M[i, j, c] * f
    A2 = np.empty((m, m, C))
    A4 = np.empty((m, m, C))
    A6 = np.empty((m, m, C))
    _matmul(A, A, A2, m)
    _matmul(A2, A2, A4, m)
    _matmul(A4, A2, A6, m)
    b0, b1, b2, b3, b4, b5, b6, b7 = _PADE7
    W = np.empty((m, m, C))
    V = np.empty((m, m, C))
    for i in range(m):
        for j in range(m):
            d = 1.0 if i == j else 0.0
            for c in range(CHUNK):
                W[i, j, c] = b7 * A6[i, j, c] + b5 * A4[i, j, c] + b3 * A2[i, j, c] + b1 * d
                V[i, j, c] = b6 * A6[i, j, c] + b4 * A4[i, j, c] + b2 * A2[i, j, c] + b0 * d
    U = A2  # reuse
    _matmul(A, W, U, m)
    Q = A4  # Q = V - U (diagonally dominant), P = V + U
    P = E
    for i in range(m):
        for j in range(m):
            for c in range(CHUNK):
                Q[i, j, c] = V[i, j, c] - U[i, j, c]
                P[i, j, c] = V[i, j, c] + U[i, j, c]
    # Gaussian elimination without pivoting (stable: Q strictly diagonally dominant)
    for k in range(m):
        for i in range(k + 1, m):
            for c in range(CHUNK):
                Q[i, k, c] = Q[i, k, c] / Q[k, k, c]
            for j in range(k + 1, m):
                for c in range(CHUNK):
                    Q[i, j, c] -= Q[i, k, c] * Q[k, j, c]
            for j in range(m):
                for c in range(CHUNK):
                    P[i, j, c] -= Q[i, k, c] * P[k, j, c]
    for i in range(m - 1, -1, -1):
        for j in range(m):
            for k in range(i + 1, m):
                for c in range(CHUNK):
                    P[i, j, c] -= Q[i, k, c] * P[k, j, c]
            for c in range(CHUNK):
                P[i, j, c] = P[i, j, c] / Q[i, i, c]
    # squaring
    T = A6
    for _ in range(s):
        _matmul(E, E, T, m)
        for i in range(m):
            for j in range(m):
                for c in range(CHUNK):
                    E[i, j, c] = T[i, j, c]


@numba.njit(parallel=True, cache=True)
def _kernel(K, idx, grow, in_state, hs, step_of, nz_ptr, nz_col, ev_ptr, ev_kind, ev_target,
            ev_vals, out_pos, plasma_idx, inv_vol, auc_grid, out, auc_traj, auc_final, cmax):
    """All patients: exponentials per chunk, then propagation over the break points.

    ``ev_vals`` and ``inv_vol`` are padded to a whole number of chunks. Row ``i`` of the
    propagator has its structurally non-zero columns ``nz_col[nz_ptr[i]:nz_ptr[i+1]]``
    (diagonal first); the others are exact zeros (block-triangular structure).
    """
    C = CHUNK
    n = K.shape[0]
    nd = idx.shape[0]
    n_in = in_state.shape[0]
    m = nd + 1 + n_in  # states, parent AUC, input rates
    r = nd + 1  # rows that evolve
    nnz = nz_col.shape[0]
    n_u = hs.shape[0]
    n_bp = out_pos.shape[0]
    n_sp = plasma_idx.shape[0]
    pi = plasma_idx[0]
    n_chunks = (n + C - 1) // C
    for ch in numba.prange(n_chunks):
        p0 = ch * C
        cw = min(C, n - p0)
        M = np.zeros((m, m, C))
        for c in range(cw):
            p = p0 + c
            for a in range(nd):
                for b in range(nd):
                    M[a, b, c] = K[p, idx[a], idx[b]]
                M[nd, a, c] = grow[p, a]
        for j in range(n_in):
            for c in range(C):
                M[in_state[j], nd + 1 + j, c] = 1.0
        Phi = np.empty((n_u, nnz, C))
        E = np.empty((m, m, C))
        for u in range(n_u):
            _expm_chunk(M, hs[u], E)
            for i in range(r):
                for q in range(nz_ptr[i], nz_ptr[i + 1]):
                    j = nz_col[q]
                    for c in range(C):
                        Phi[u, q, c] = E[i, j, c]
        y = np.zeros((m, C))
        y2 = np.zeros((m, C))
        cm = np.zeros(C)
        for k in range(n_bp):
            if k > 0:
                u = step_of[k - 1]
                for i in range(r):
                    q0 = nz_ptr[i]
                    j0 = nz_col[q0]
                    for c in range(C):
                        y2[i, c] = Phi[u, q0, c] * y[j0, c]
                    for q in range(q0 + 1, nz_ptr[i + 1]):
                        j = nz_col[q]
                        for c in range(C):
                            y2[i, c] += Phi[u, q, c] * y[j, c]
                y, y2 = y2, y
            for e in range(ev_ptr[k], ev_ptr[k + 1]):
                tgt = ev_target[e]
                if ev_kind[e] == 0:  # rate change: kept in both buffers
                    tgt = nd + 1 + tgt
                    for c in range(C):
                        y[tgt, c] += ev_vals[e, p0 + c]
                        y2[tgt, c] = y[tgt, c]
                else:
                    for c in range(C):
                        y[tgt, c] += ev_vals[e, p0 + c]
            for c in range(C):
                cm[c] = max(cm[c], y[pi, c] * inv_vol[0, p0 + c])
            t = out_pos[k]
            if t >= 0:
                for sp in range(n_sp):
                    si = plasma_idx[sp]
                    for c in range(cw):
                        out[sp, p0 + c, t] = y[si, c] * inv_vol[sp, p0 + c]
                if auc_grid:
                    for c in range(cw):
                        auc_traj[p0 + c, t] = y[nd, c]
        for c in range(cw):
            auc_final[p0 + c] = y[nd, c]
            cmax[p0 + c] = cm[c]


# --------------------------------------------------------------------------- Python driver
def _needed_states(K: np.ndarray, targets: list[int]) -> list[int]:
    """Targets and their ancestors in the flow graph (j feeds i when K[:, i, j] ≠ 0)."""
    feeds = np.any(K != 0.0, axis=0)
    need, frontier = set(targets), list(targets)
    while frontier:
        i = frontier.pop()
        for j in np.nonzero(feeds[i])[0].tolist():
            if j not in need:
                need.add(j)
                frontier.append(j)
    return sorted(need)


def _propagator_pattern(K: np.ndarray, idx: np.ndarray, grow: np.ndarray,
                        in_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structurally non-zero entries of the evolving rows of exp(M·h), as CSR (diagonal first).

    ``exp(M·h)[i, j]`` can be non-zero only if j reaches i in the graph of M (or i == j); the
    Padé/squaring arithmetic keeps the other entries exactly zero, so they are skipped.
    """
    nd, n_in = len(idx), len(in_state)
    m = nd + 1 + n_in
    g = np.zeros((m, m), dtype=bool)
    g[:nd, :nd] = np.any(K[:, idx][:, :, idx] != 0.0, axis=0)
    g[nd, :nd] = np.any(grow != 0.0, axis=0)
    g[in_state, nd + 1 + np.arange(n_in)] = True
    reach = g | np.eye(m, dtype=bool)
    for _ in range(m):  # transitive closure
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    ptr, cols = [0], []
    for i in range(nd + 1):
        row = [i] + [j for j in np.nonzero(reach[i])[0].tolist() if j != i]
        cols += row
        ptr.append(len(cols))
    return np.asarray(ptr, dtype=np.int64), np.asarray(cols, dtype=np.int64)


def parent_species(system: PKSystem) -> str:
    """The parent drug's species name (the card's drug if it has a plasma output)."""
    drug = system.card.drug
    return drug if drug in system.plasma else next(iter(system.plasma))


def solve_batch(system: PKSystem, regimen: Regimen, t_grid_h: np.ndarray,
                weight_kg: np.ndarray | float, *, auc_on_grid: bool = False) -> FastResult:
    """Exact plasma concentrations of every patient of ``system`` on a shared grid, fast.

    ``t_grid_h``: output times (h after the first dose, strictly increasing, ≥ 0), shared by
    all patients; ``weight_kg``: (N,) or scalar, kg, for mg/kg doses. Doses after the last
    grid time are ignored. Returns :class:`FastResult`: plasma (mg/L) per species (N, T),
    parent AUC (mg·h/L) from 0 to the last grid time (or on the grid), parent Cmax (mg/L).

    Same solution as :func:`ketasim.pk.solve.solve` (exact for the linear system, including
    every route the card supports), computed with compiled, patient-vectorised Padé matrix
    exponentials; see the module docstring.
    """
    t_out = np.asarray(t_grid_h, dtype=float)
    check_times(t_out)
    if len(regimen) == 0:
        raise KetasimError("regimen", "has no doses")
    n = system.n
    w = np.broadcast_to(np.asarray(weight_kg, dtype=float), (n,))
    schedule = compile_schedule(system, regimen, w)
    K = np.ascontiguousarray(system.K, dtype=float)

    species = list(system.plasma)
    parent = parent_species(system)
    species.remove(parent)
    species.insert(0, parent)
    p_state = [system.plasma[sp][0] for sp in species]
    keep = _needed_states(K, p_state)
    pos = {s: i for i, s in enumerate(keep)}
    idx = np.asarray(keep, dtype=np.int64)
    auc_row = system.integrals.index(f"auc_{parent}")
    grow = np.ascontiguousarray(system.G[:, auc_row, :][:, idx])
    plasma_idx = np.asarray([pos[s] for s in p_state], dtype=np.int64)
    inv_vol = np.ascontiguousarray(
        np.stack([1.0 / np.broadcast_to(system.plasma[sp][1], (n,)) for sp in species]))

    # break points, shared by the batch (rounded as in solve)
    t_end = round(float(t_out[-1]), _TIME_DECIMALS)
    infusions = [(t0, t1, si, rate) for t0, t1, si, rate in schedule.infusions
                 if si in pos and t0 < t_end]
    boluses = [(tb, si, a) for tb, si, a in schedule.boluses if si in pos and tb <= t_end]
    pts = [0.0, *t_out.tolist(), *(b[0] for b in boluses)]
    pts += [p for inf in infusions for p in inf[:2]]
    bp = np.unique(np.round(np.asarray(pts, dtype=float), _TIME_DECIMALS))
    bp = bp[bp <= t_end]
    steps = np.round(np.diff(bp), _TIME_DECIMALS)
    hs, step_of = np.unique(steps, return_inverse=True)
    bp_pos = {float(t): k for k, t in enumerate(bp)}

    def at(t: float) -> int:  # break-point index of a time, rounded exactly as bp was
        return bp_pos[float(np.round(t, _TIME_DECIMALS))]

    out_pos = np.full(len(bp), -1, dtype=np.int64)
    for i, t in enumerate(t_out):
        out_pos[at(t)] = i

    in_targets = sorted({si for _, _, si, _ in infusions})
    in_state = np.asarray([pos[s] for s in in_targets], dtype=np.int64)
    events: list[tuple[int, int, int, int, np.ndarray]] = []  # (bp, order, kind, target, vals)
    for t0, t1, si, rate in infusions:
        col = in_targets.index(si)
        events.append((at(t0), 0, 0, col, rate))
        if t1 <= t_end:
            events.append((at(t1), 0, 0, col, -rate))
    for tb, si, a in boluses:
        events.append((at(tb), 1, 1, pos[si], a))
    events.sort(key=lambda e: (e[0], e[1]))
    ev_ptr = np.zeros(len(bp) + 1, dtype=np.int64)
    for e in events:
        ev_ptr[e[0] + 1] += 1
    ev_ptr = np.cumsum(ev_ptr)
    ev_kind = np.asarray([e[2] for e in events], dtype=np.int64)
    ev_target = np.asarray([e[3] for e in events], dtype=np.int64)
    n_pad = -(-n // CHUNK) * CHUNK  # per-patient inputs padded to whole chunks
    ev_vals = np.zeros((len(events), n_pad))
    for i, e in enumerate(events):
        ev_vals[i, :n] = e[4]
    inv_vol_pad = np.zeros((len(species), n_pad))
    inv_vol_pad[:, :n] = inv_vol
    nz_ptr, nz_col = _propagator_pattern(K, idx, grow, in_state)

    T = len(t_out)
    out = np.empty((len(species), n, T))
    auc_traj = np.empty((n, T)) if auc_on_grid else np.empty((1, 1))
    auc_final = np.empty(n)
    cmax = np.empty(n)
    _kernel(K, idx, grow, in_state, hs.astype(float), step_of.astype(np.int64), nz_ptr, nz_col,
            ev_ptr, ev_kind, ev_target, ev_vals, out_pos, plasma_idx, inv_vol_pad, auc_on_grid,
            out, auc_traj, auc_final, cmax)
    plasma = {sp: out[i] for i, sp in enumerate(species)}
    plasma = {sp: plasma[sp] for sp in system.plasma}  # the system's order (parent first)
    return FastResult(plasma, auc_traj if auc_on_grid else auc_final, cmax)


def take_patients(system: PKSystem, which: np.ndarray | slice) -> PKSystem:
    """A system holding only the selected patients (for checks against the exact solver)."""
    sel = np.arange(system.n)[which]
    return PKSystem(card=system.card, states=list(system.states), K=system.K[sel],
                    params={k: np.broadcast_to(v, (system.n,))[sel]
                            for k, v in system.params.items()},
                    plasma={sp: (i, np.broadcast_to(v, (system.n,))[sel])
                            for sp, (i, v) in system.plasma.items()},
                    effect=dict(system.effect), integrals=list(system.integrals),
                    G=system.G[sel], mass_states=list(system.mass_states),
                    routes=dict(system.routes))
