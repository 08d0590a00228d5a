"""Twelfth pass (docs/benchmarks.md): observed order of ETD3RK on the first 30 minutes of
bench patient 0's first infusion (mechanism + mood, 20 states), fixed steps, against a tight
Radau solution, with two choices of the linear part frozen at each step's start:

* ``diag``: L = diag(∂f/∂y) (negative part), as in benchmarks/_exp_etd.py;
* ``scc``: L = the diagonal blocks of ∂f/∂y over its strongly connected components (the
  LHb blocks with bursting, mTORC1 with its feedback, ...), couplings between them explicit;
* ``full``: L = ∂f/∂y, the whole Jacobian (an exponential Rosenbrock-type ETD3RK; φ-functions
  of the 20×20 matrix from one exponential of an augmented matrix; too costly for a kernel,
  here only to show where the order goes);
* ``rodas4``: for comparison, the shipped RODAS4 (order 4) with the same fixed steps.

    python benchmarks/exp_order.py
"""

from __future__ import annotations

import types

import numpy as np
import scipy.linalg as sl
from scipy.integrate import solve_ivp

import ketasim.batch as B
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.mechanism import STATE_NAMES, jac_into

T_END = 0.5  # h, inside the 40-min infusion (one PK interval)


def setup():
    real = B._kernels()
    ns = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real)
                                  if not k.startswith("__")})
    box = {}

    def serial(*a):
        real._run_serial(*a)
        box["a"] = a
    ns._run_serial = serial
    B._KERNELS = ns
    B._fast_run(bench_arm(), bench_patients(1, 0), visits_h(), threads=1)
    B._KERNELS = None
    return real, box["a"]


def main() -> None:
    K, a = setup()
    (bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf, P, y0) = a[:15]
    nmood, mc, mpat = a[37], a[38], a[39]
    ny = y0.shape[0]
    nmech = ny - nmood
    p = 0
    assert bps[0] == 0.0 and bps[1] > T_END
    rate = drate[p, 0]
    lp = lam[p]
    xss = V[p] @ (-(Vinv[p] @ rate) / lp)
    cm = Vinv[p] @ (dbol[p, 0] - xss)
    xs_f = xss[f_idx].copy()
    W_f = V[p][f_idx, :] * cm[None, :]
    nblk = kd0.shape[0]
    ework = np.zeros(len(lp))

    def conc(t):
        c = np.zeros(nblk)
        K._conc(t, lp, xs_f, W_f, f_blk, f_scale[p], c, ework)
        return c

    def f(t, y):
        dy = np.zeros(ny)
        K._rhs(wmid[0], np.ascontiguousarray(y), conc(t), kd0, kesc, mgf, P, nmech, nmood, mc,
               mpat[p], dy)
        return dy

    def jac(t, y):
        J = np.zeros((ny, ny))
        jac_into(wmid[0], np.ascontiguousarray(y), conc(t), kd0, kesc, mgf, P, J)
        K.mood_jac(np.ascontiguousarray(y), nmech, mc, mpat[p], J)
        return J

    ref = solve_ivp(f, (0.0, T_END), y0, method="Radau", jac=jac, rtol=1e-12, atol=1e-15).y[:, -1]

    def phim(A):
        n = A.shape[0]
        Z = np.zeros((4 * n, 4 * n))
        Z[:n, :n] = A
        for k in range(3):
            Z[k * n:(k + 1) * n, (k + 1) * n:(k + 2) * n] = np.eye(n)
        E = sl.expm(Z)
        return E[:n, :n], E[:n, n:2 * n], E[:n, 2 * n:3 * n], E[:n, 3 * n:]

    def etd3(h, nsteps, mode):
        y = y0.copy()
        t = 0.0
        for _ in range(nsteps):
            J = jac(t, y)
            if mode == "diag":
                L = np.diag(np.minimum(np.diag(J), 0.0))
            elif mode == "scc":
                L = np.where(same, J, 0.0)
            else:
                L = J
            e, p1, p2, p3 = phim(h * L)
            e2, q1, _, _ = phim(0.5 * h * L)
            N = lambda tt, yy, L=L: f(tt, yy) - L @ yy  # noqa: E731
            N1 = N(t, y)
            Y2 = e2 @ y + 0.5 * h * q1 @ N1
            N2 = N(t + 0.5 * h, Y2)
            Y3 = e @ y + h * p1 @ (2 * N2 - N1)
            N3 = N(t + h, Y3)
            y = e @ y + h * ((p1 - 3 * p2 + 4 * p3) @ N1 + (4 * p2 - 8 * p3) @ N2
                             + (4 * p3 - p2) @ N3)
            t += h
        return y

    # strongly connected components of the Jacobian's pattern (sampled along the reference)
    from scipy.sparse.csgraph import connected_components
    pat = np.zeros((ny, ny), dtype=bool)
    for tt in np.linspace(0.0, T_END, 6):
        yy = solve_ivp(f, (0.0, max(tt, 1e-9)), y0, method="Radau", jac=jac, rtol=1e-8,
                       atol=1e-12).y[:, -1]
        pat |= jac(tt, yy) != 0.0
    _, lab = connected_components(pat, directed=True, connection="strong")
    same = lab[:, None] == lab[None, :]
    def rodas4(h, nsteps):
        co = B.RODAS4
        gam = co["meth"][0]
        y = y0.copy()
        t = 0.0
        ns = len(co["M"])
        for _ in range(nsteps):
            J = jac(t, y)
            f0 = f(t, y)
            ft = (f(t + 1e-8, y) - f0) / 1e-8
            lu = sl.lu_factor(np.eye(ny) / (h * gam) - J)
            U = np.zeros((ns, ny))
            for i in range(ns):
                yi = y + co["AT"][i, :i] @ U[:i]
                rhs = (f0 if i == 0 else f(t + co["ALPHA"][i] * h, yi))
                rhs = rhs + co["CT"][i, :i] @ U[:i] / h + co["GSUM"][i] * h * ft
                U[i] = sl.lu_solve(lu, rhs)
            y = y + co["M"] @ U
            t += h
        return y

    names = [f"block_{i}" for i in range(nblk)] + list(STATE_NAMES) + list(B.MOOD_STATE_NAMES)
    show = ["block_1", "lhb_burst", "pyramidal_rate", "mtorc1", "he_fast", "priming"]
    sc = 1e-6 + np.abs(ref)
    groups = [[names[i] for i in np.nonzero(lab == g)[0]] for g in np.unique(lab)]
    print("strongly connected components with more than one state:",
          [g for g in groups if len(g) > 1])
    for mode in ("diag", "scc", "full", "rodas4"):
        print(f"L = {mode}: max over states of |error|/(1e-6 + |y|) at t = {T_END} h, and per "
              "state")
        print("  steps   h (min)     max    " + "  ".join(f"{s:>14s}" for s in show))
        prev = None
        for n in (4, 8, 16, 32, 64, 128, 256):
            y = rodas4(T_END / n, n) if mode == "rodas4" else etd3(T_END / n, n, mode)
            err = np.abs(y - ref) / sc
            line = "  ".join(f"{err[names.index(s)]:14.2e}" for s in show)
            order = "" if prev is None else f"  (order {np.log2(prev / err.max()):.2f})"
            print(f"  {n:5d} {60 * T_END / n:8.3f} {err.max():9.2e}  {line}{order}")
            prev = err.max()


if __name__ == "__main__":
    main()
