"""Premise check for an exponential integrator with a diagonal linear part (twelfth pass,
docs/benchmarks.md): along the shipped fast path's own steps (bench patients, RODAS4,
FAST_RTOL), how stiff is each state relative to the step taken (h·|J_ii|), how stiff is the
whole Jacobian (h·max|Re λ(J)|), and would a diagonal exponential method be stable there:
spectral radius of the linear amplification matrix of exponential Euler and of the ETD3RK
scheme of benchmarks/exp_kernel.py with D = diag(J) frozen, N = J − D.

    python benchmarks/exp_stiffness.py --n 5
"""

from __future__ import annotations

import argparse
import types

import numpy as np
import scipy.linalg as sl

import ketasim.batch as B
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.mechanism import STATE_NAMES, jac_into

TIGHT = {"rtol": 1e-10, "atol": 1e-12, "block_atol_factor": 1.0}


def _capture():
    """Shim of the kernel module that runs the real kernel and keeps its arguments."""
    real = B._kernels()
    shim = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real)
                                    if not k.startswith("__")})
    box = {}

    def serial(*args):
        real._run_serial(*args)
        box["args"] = args
    shim._run_serial = serial
    return shim, box


def phis(z):
    """φ0..φ3 of a real array z (Taylor near 0)."""
    z = np.asarray(z, dtype=float)
    e = np.exp(z)
    small = np.abs(z) < 0.5
    zs = np.where(small, 1.0, z)
    p1 = np.where(small, 0.0, np.expm1(zs) / zs)
    p2 = np.where(small, 0.0, (p1 - 1.0) / zs)
    p3 = np.where(small, 0.0, (p2 - 0.5) / zs)
    # Taylor: φk(z) = Σ z^m/(m+k)!
    from math import factorial
    t1 = sum(z ** m / factorial(m + 1) for m in range(14))
    t2 = sum(z ** m / factorial(m + 2) for m in range(14))
    t3 = sum(z ** m / factorial(m + 3) for m in range(14))
    return e, np.where(small, t1, p1), np.where(small, t2, p2), np.where(small, t3, p3)


def amp_etd3(h, D, N):
    """Linear amplification matrix of Cox–Matthews ETD3RK with diagonal D, remainder N."""
    n = len(D)
    eh, p1, p2, p3 = phis(h * D)
    e2, q1, _, _ = phis(0.5 * h * D)
    Idm = np.eye(n)
    A2 = np.diag(e2) + 0.5 * h * q1[:, None] * N
    A3 = np.diag(eh) + h * p1[:, None] * (2 * N @ A2 - N)
    b1, b2, b3 = p1 - 3 * p2 + 4 * p3, 4 * p2 - 8 * p3, 4 * p3 - p2
    return (np.diag(eh) + h * (b1[:, None] * N + b2[:, None] * (N @ A2)
                               + b3[:, None] * (N @ A3))), Idm


def phim(A):
    """φ0..φ3 of a square matrix A from one exponential of an augmented matrix."""
    n = A.shape[0]
    Z = np.zeros((4 * n, 4 * n))
    Z[:n, :n] = A
    for k in range(3):
        Z[k * n:(k + 1) * n, (k + 1) * n:(k + 2) * n] = np.eye(n)
    E = sl.expm(Z)
    return E[:n, :n], E[:n, n:2 * n], E[:n, 2 * n:3 * n], E[:n, 3 * n:]


def amp_etd3_mat(h, L, J):
    """ETD3RK amplification with a full (block) linear part L; N = J − L."""
    N = J - L
    e, p1, p2, p3 = phim(h * L)
    e2, q1, _, _ = phim(0.5 * h * L)
    A2 = e2 + 0.5 * h * q1 @ N
    A3 = e + h * p1 @ (2 * N @ A2 - N)
    b1, b2, b3 = p1 - 3 * p2 + 4 * p3, 4 * p2 - 8 * p3, 4 * p3 - p2
    return e + h * (b1 @ N + b2 @ N @ A2 + b3 @ N @ A3)


def amp_ee(h, D, N):
    eh, p1, _, _ = phis(h * D)
    return np.diag(eh) + h * p1[:, None] * N


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    a = ap.parse_args()
    arm, v, pts = bench_arm(), visits_h(), bench_patients(max(a.n, 5), 0)
    names = None
    bad_states = {}
    rblk = []
    offd = []
    hstab = []
    rows = []
    orig = B.simulate_batch
    for ip in range(a.n):
        shim, box = _capture()
        tr = np.zeros((20000, 4))
        B._KERNELS = shim
        B.simulate_batch = lambda *x, tr=tr, **kw: orig(*x, **kw, trace=tr)
        try:
            B._fast_run(arm, [pts[ip]], v, threads=1)
        finally:
            B.simulate_batch = orig
        nat = int(np.count_nonzero(tr[:, 1]))
        t, h = tr[:nat, 0], tr[:nat, 1]
        acc = np.append(t[1:] > t[:-1], True)  # attempt followed by a later start: accepted
        ta, ha = t[acc], h[acc]
        # states at the accepted steps' starts from a tight solve (same set-up, other times)
        args = list(box["args"])
        grid = np.unique(np.round(ta, 9))
        B._KERNELS = None
        B.simulate_batch = lambda *x, grid=grid, **kw: orig(x[0], grid, *x[2:],
                                                            **{**kw, **TIGHT})
        box2 = {}
        shim2, box2 = _capture()
        B._KERNELS = shim2
        try:
            B._fast_run(arm, [pts[ip]], v, threads=1)
        except Exception:
            pass
        finally:
            B.simulate_batch = orig
            B._KERNELS = None
        args = box2["args"]
        (bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf, P, y0,
         t_out) = args[:16]
        ys, xs = args[32], args[33]
        mc, mpat = args[-2], args[-1]
        nblk = kd0.shape[0]
        nmech = nblk + len(STATE_NAMES)
        ny = ys.shape[2]
        if names is None:
            names = [f"block_{i}" for i in range(nblk)] + list(STATE_NAMES) + list(
                B.MOOD_STATE_NAMES)
        for k, tk in enumerate(grid):
            y = ys[0, k]
            conc = np.zeros(nblk)
            for q in range(len(f_idx)):
                conc[f_blk[q]] += f_scale[0, q] * max(xs[0, k, f_idx[q]], 0.0)
            J = np.zeros((ny, ny))
            jac_into(tk, y, conc, kd0, kesc, mgf, P, J)
            B._kernels().mood_jac(y, nmech, mc, mpat[0], J)
            hk = ha[np.searchsorted(np.round(ta, 9), tk)]
            D = np.minimum(np.diag(J).copy(), 0.0)
            N = J - np.diag(D)
            ev = np.linalg.eigvals(J)
            r_ee = np.max(np.abs(np.linalg.eigvals(amp_ee(hk, D, N))))
            r_e3 = np.max(np.abs(np.linalg.eigvals(amp_etd3(hk, D, N)[0])))
            # Jacobi ratio on the stiff states (h|D| > 1)
            st = hk * np.abs(D) > 1.0
            jr = 0.0
            if st.sum() > 0:
                Ns = N[np.ix_(st, st)]
                jr = np.max(np.abs(np.linalg.eigvals(Ns / (-D[st])[:, None])))
            iM, iZ = names.index("mtorc1"), names.index("mtor_feedback")
            Lb = np.diag(D)
            for i_ in (iM, iZ):
                for j_ in (iM, iZ):
                    Lb[i_, j_] = J[i_, j_]
            r_blk = np.max(np.abs(np.linalg.eigvals(amp_etd3_mat(hk, Lb, J))))
            rblk.append(r_blk)
            if r_e3 > 1 + 1e-9:
                lo, hi = 0.0, hk
                for _ in range(30):
                    mid = 0.5 * (lo + hi)
                    if np.max(np.abs(np.linalg.eigvals(amp_etd3(mid, D, N)[0]))) <= 1 + 1e-9:
                        lo = mid
                    else:
                        hi = mid
                hstab.append(lo / hk)
                w, vec = np.linalg.eig(amp_etd3(hk, D, N)[0])
                kx = np.argmax(np.abs(w))
                comp = np.abs(vec[:, kx]) / np.abs(vec[:, kx]).max()
                top = [names[i] for i in np.argsort(-comp)[:4] if comp[i] > 0.05]
                bad_states[tuple(top)] = bad_states.get(tuple(top), 0) + 1
            offd.append(hk * np.abs(N - np.diag(np.diag(N))))
            rows.append((ip, tk, hk, hk * np.max(-ev.real), hk * np.abs(np.diag(J)), r_ee, r_e3,
                         jr, hk * np.max(np.abs(ev.imag))))
        print(f"patient {ip}: {nat} attempts, {acc.sum()} accepted", flush=True)
    hJ = np.array([r[3] for r in rows])
    hD = np.array([r[4] for r in rows])
    ree = np.array([r[5] for r in rows])
    re3 = np.array([r[6] for r in rows])
    jr = np.array([r[7] for r in rows])
    tt = np.array([r[1] for r in rows]) % 84.0
    print(f"accepted steps examined: {len(rows)}")
    print(f"h·max(-Re eig J): median {np.median(hJ):.3g}, p90 {np.percentile(hJ, 90):.3g}, "
          f"max {hJ.max():.3g}; steps with h·ρ > 3 (stiff for explicit RK): "
          f"{np.mean(hJ > 3):.2%}")
    print("per state h·|J_ii|: median / p90 / max; fraction of steps with h|J_ii| > 1")
    for i, nm in enumerate(names):
        x = hD[:, i]
        print(f"  {nm:22s} {np.median(x):9.3g} {np.percentile(x, 90):9.3g} {x.max():9.3g} "
              f"{np.mean(x > 1):6.1%}")
    print(f"spectral radius of amplification, exp. Euler: median {np.median(ree):.4f} "
          f"max {ree.max():.4f} (>1: {np.mean(ree > 1 + 1e-9):.2%})")
    print(f"spectral radius of amplification, ETD3RK:    median {np.median(re3):.4f} "
          f"max {re3.max():.4f} (>1: {np.mean(re3 > 1 + 1e-9):.2%})")
    print(f"Jacobi ratio rho(D^-1 N) on the stiff states: median {np.median(jr):.3g} "
          f"max {jr.max():.3g}")
    bad = re3 > 1 + 1e-9
    if bad.any():
        print("ETD3RK unstable at τ (h into dose interval):", np.round(tt[bad][:20], 3))
    rblk = np.array(rblk)
    od = np.array(offd)  # steps × ny × ny, h·|J_ij| (i ≠ j)
    med = np.median(od, axis=0)
    print("off-diagonal couplings h·|J_ij| (row i driven by state j): the 12 largest by "
          "median over the steps; median / p90 / fraction of steps > 1")
    for q in np.argsort(-med.ravel())[:12]:
        i, j = divmod(int(q), med.shape[0])
        x = od[:, i, j]
        print(f"  d{names[i]}/d{names[j]:22s} {np.median(x):9.3g} {np.percentile(x, 90):9.3g} "
              f"{np.mean(x > 1):6.1%}")
    nstiff = (od > 1).any(axis=2).sum(axis=1)
    print(f"states with some off-diagonal h·|J_ij| > 1, per step: median {np.median(nstiff):.0f}, "
          f"max {nstiff.max()}")
    print(f"ETD3RK with the mTORC1–feedback 2x2 block in the linear part: max rho "
          f"{rblk.max():.4f} (>1: {np.mean(rblk > 1 + 1e-9):.2%})")
    if hstab:
        print(f"diagonal ETD3RK at its unstable steps: largest stable h / h taken: median "
              f"{np.median(hstab):.3f}, min {np.min(hstab):.3f}")
    print("states of the unstable mode (amplitude > 5% of the largest):", bad_states)
    np.savez("/tmp/exp_stiff.npz", hJ=hJ, hD=hD, ree=ree, re3=re3, jr=jr, tt=tt,
             h=np.array([r[2] for r in rows]))


if __name__ == "__main__":
    main()
