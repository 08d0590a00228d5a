"""Experimental kernel (twelfth pass, docs/benchmarks.md): an explicit exponential Runge–Kutta
integrator for the batched engine's mechanism + mood states, with the same arguments and
outputs as :func:`ketasim._batch_kernels._course` (so :func:`ketasim.batch.simulate_batch`
prepares everything and reads the results back unchanged; see ``benchmarks/exp_kernel.py``).

Scheme: Cox & Matthews' ETD3RK (2002), order 3, stages at c = 0, 1/2, 1, with the linear part
L = diag(∂f/∂y) (each state's own relaxation rate, negative part only) frozen at the step's
start and N(t, y) = f(t, y) − L·y treated explicitly::

    Y2 = e^{hL/2} y + h/2 φ1(hL/2) N1
    Y3 = e^{hL} y + h φ1(hL) (2 N2 − N1)
    y1 = e^{hL} y + h [(φ1 − 3φ2 + 4φ3) N1 + (4φ2 − 8φ3) N2 + (4φ3 − φ2) N3]

Error estimate: y1 − ŷ with the order-2 ŷ = e^{hL} y + h[(φ1 − φ2) N1 + φ2 N4], N4 = N at
(t + h, y1) (a fourth right-hand side, reused as the next step's f(t, y) when the step is
accepted: FSAL). In the stiff limit ŷ is the quasi-steady value at the new state, so stiff
states are checked too; the embedded weights h(4φ3 − 2φ2)(N1 − 2N2 + N3) of the stages alone
vanish like 1/(hλ)² there and let 0.16 MADRS error through (docs/benchmarks.md, twelfth pass).
No Jacobian factorisation and no linear solve; per attempt 4 right-hand sides, 2 new
concentration evaluations and, after an accepted step, one Jacobian (only its diagonal is
used). Optionally (``blk2``) the
mTORC1 ↔ mTOR-feedback pair is a 2×2 block of L (φ-functions of a 2×2 matrix, closed form).
Time in h, rates in 1/h.
"""

import numpy as np
from numba import njit, prange

from ketasim._batch_kernels import (
    H_RESTART,
    KINK_TAIL,
    MAX_STEPS,
    THETA_H,
    _conc,
    _interval_peak,
    _kink_frac,
    _pk_at,
    _rhs,
    mood_jac,
)
from ketasim.mechanism import jac_into


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _phis(z):
    """(e^z, φ1(z), φ2(z), φ3(z)) for real z ≤ 0: Taylor series of φ3 (12 terms) and the
    recurrence φ_{k−1} = 1/(k−1)! + z φ_k upward for |z| < 1/2, else e^z and the recurrence
    φ_k = (φ_{k−1} − 1/(k−1)!)/z downward (relative error ≲ 1e-15 on both branches)."""
    if z > -0.5:
        p3 = 1.0 / 6227020800.0  # 1/13!
        p3 = 1.0 / 479001600.0 + z * p3
        p3 = 1.0 / 39916800.0 + z * p3
        p3 = 1.0 / 3628800.0 + z * p3
        p3 = 1.0 / 362880.0 + z * p3
        p3 = 1.0 / 40320.0 + z * p3
        p3 = 1.0 / 5040.0 + z * p3
        p3 = 1.0 / 720.0 + z * p3
        p3 = 1.0 / 120.0 + z * p3
        p3 = 1.0 / 24.0 + z * p3
        p3 = 1.0 / 6.0 + z * p3
        p2 = 0.5 + z * p3
        p1 = 1.0 + z * p2
        e = 1.0 + z * p1
    else:
        e = np.exp(z)
        p1 = (e - 1.0) / z
        p2 = (p1 - 1.0) / z
        p3 = (p2 - 0.5) / z
    return e, p1, p2, p3


#: 1/k! for k = 0..16
_INVF = np.array([1.0 / np.prod(np.arange(1.0, k + 1.0)) for k in range(17)])


@njit(cache=True, nogil=True, error_model="numpy")
def _phis2(a, b, c, d, out):
    """φ0..φ3 of the real 2×2 matrix A = [[a, b], [c, d]] into ``out`` (4, 2, 2), from its
    eigenvalues (complex if need be): f(A) = f(μ2) I + f[μ1, μ2] (A − μ2 I), the divided
    difference by its midpoint expansion where μ1 ≈ μ2."""
    tr = a + d
    det = a * d - b * c
    disc = complex(tr * tr - 4.0 * det)
    sq = np.sqrt(disc)
    m1 = 0.5 * (tr + sq)
    m2 = 0.5 * (tr - sq)
    dm = m1 - m2
    # scalar φ_0..φ_4 at the (complex) eigenvalues, or at their midpoint if they are close
    f1 = np.zeros(5, dtype=np.complex128)
    f2 = np.zeros(5, dtype=np.complex128)
    dd = np.zeros(4, dtype=np.complex128)
    close = abs(dm) < 1e-4 * (1.0 + abs(m1))
    mm = 0.5 * (m1 + m2)
    for which in range(2):
        z = m1 if which == 0 else m2
        if close:
            z = mm
        f = f1 if which == 0 else f2
        if abs(z) < 0.5:
            q = complex(_INVF[16])
            for m in range(15, 3, -1):  # φ4 = Σ z^m/(m+4)!
                q = _INVF[m] + z * q
            f[4] = q
            f[3] = 1.0 / 6.0 + z * f[4]
            f[2] = 0.5 + z * f[3]
            f[1] = 1.0 + z * f[2]
            f[0] = 1.0 + z * f[1]
        else:
            f[0] = np.exp(z)
            f[1] = (f[0] - 1.0) / z
            f[2] = (f[1] - 1.0) / z
            f[3] = (f[2] - 0.5) / z
            f[4] = (f[3] - 1.0 / 6.0) / z
    for k in range(4):
        if close:
            dd[k] = f1[k] - (k + 0.0) * f1[k + 1] if k > 0 else f1[0]
        else:
            dd[k] = (f1[k] - f2[k]) / dm
    for k in range(4):
        g2 = f2[k] if not close else f1[k] - dd[k] * (0.5 * dm)
        # f(A) = g2 I + dd (A − μ2 I)
        out[k, 0, 0] = (g2 + dd[k] * (a - m2)).real
        out[k, 0, 1] = (dd[k] * b).real
        out[k, 1, 0] = (dd[k] * c).real
        out[k, 1, 1] = (g2 + dd[k] * (d - m2)).real


@njit(cache=True, nogil=True, error_model="numpy")
def _etd_course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                mgf, P, y0, t_out, rtol, atol, ys, xs, peak, stats, trace, nmood, mc, mpat,
                blk2, ia, ib):
    """One patient-course with ETD3RK (module docstring); outputs as ``_course``."""
    s = lam.shape[1]
    ny = y0.shape[0]
    nblk = kd0.shape[0]
    nmech = ny - nmood
    nf = f_idx.shape[0]
    T = t_out.shape[0]
    nb = bps.shape[0]
    theta_h = P[THETA_H]
    expo = -1.0 / 3.0
    lp = lam[p]
    Vp = V[p]
    Vi = Vinv[p]
    fs = f_scale[p]
    mp = mpat[p]
    x0 = np.zeros(s)
    rate = np.zeros(s)
    xss = np.zeros(s)
    cm = np.zeros(s)
    tmp = np.zeros(s)
    xs_f = np.zeros(nf)
    W_f = np.zeros((nf, s))
    ework = np.zeros(s)
    conc = np.zeros(nblk)
    samp = np.zeros((17, nblk))
    pk = np.zeros(nblk)
    y = np.zeros((1, ny))
    ynew = np.zeros((1, ny))
    f0 = np.zeros((1, ny))
    J = np.zeros((ny, ny))
    L = np.zeros(ny)
    N1 = np.zeros(ny)
    N2 = np.zeros(ny)
    N3 = np.zeros(ny)
    Y = np.zeros(ny)
    F = np.zeros(ny)
    E1 = np.zeros(ny)
    P1 = np.zeros(ny)
    P2 = np.zeros(ny)
    P3 = np.zeros(ny)
    E2 = np.zeros(ny)
    Q1 = np.zeros(ny)
    F4 = np.zeros(ny)
    ERR = np.zeros(ny)
    ph = np.zeros((4, 2, 2))
    phh = np.zeros((4, 2, 2))
    for i in range(ny):
        y[0, i] = y0[i]
    n_acc = 0
    n_rej = 0
    n_jac = 0
    status = 0
    k_out = 0
    h = 1e-3
    for k in range(nb):
        tak = bps[k]
        for i in range(s):
            rate[i] += drate[p, k, i]
            x0[i] += dbol[p, k, i]
        while k_out < T and t_out[k_out] <= tak:
            for i in range(ny):
                ys[p, k_out, i] = y[0, i]
            for i in range(s):
                xs[p, k_out, i] = x0[i]
            k_out += 1
        if k + 1 >= nb:
            break
        ta = tak
        tb = bps[k + 1]
        tw = wmid[k]
        for j in range(s):
            a_ = 0.0
            for i in range(s):
                a_ += Vi[j, i] * rate[i]
            tmp[j] = -a_ / lp[j]
        for i in range(s):
            a_ = 0.0
            for j in range(s):
                a_ += Vp[i, j] * tmp[j]
            xss[i] = a_
        for j in range(s):
            a_ = 0.0
            for i in range(s):
                a_ += Vi[j, i] * (x0[i] - xss[i])
            cm[j] = a_
        for q in range(nf):
            xs_f[q] = xss[f_idx[q]]
            for j in range(s):
                W_f[q, j] = Vp[f_idx[q], j] * cm[j]
        t = ta
        cc = np.nan
        f0_ok = False
        cut = False
        h_kink = 0.0
        h = min(h, H_RESTART)
        while t < tb and status == 0:
            te = tb
            if k_out < T and t_out[k_out] < tb:
                te = t_out[k_out]
            last = False
            h_prop = h
            if t + (1.0 if cut else 1.05) * h >= te:
                h = te - t
                last = True
            tau = t - ta
            if not f0_ok:
                if not abs(tau - cc) <= 1e-14 * (1.0 + tau):
                    _conc(tau, lp, xs_f, W_f, f_blk, fs, conc, ework)
                    cc = tau
                _rhs(tw, y[0], conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp, F)
                jac_into(tw, y[0], conc, kd0, kesc, mgf, P, J)
                if nmood > 0:
                    mood_jac(y[0], nmech, mc, mp, J)
                n_jac += 1
                for i in range(ny):
                    f0[0, i] = F[i]
                    L[i] = min(J[i, i], 0.0)
                f0_ok = True
            # φ-functions of h·L and h·L/2
            for i in range(ny):
                e, p1, p2, p3 = _phis(h * L[i])
                E1[i] = e
                P1[i] = p1
                P2[i] = p2
                P3[i] = p3
                e, p1, p2, p3 = _phis(0.5 * h * L[i])
                E2[i] = e
                Q1[i] = p1
            for i in range(ny):
                N1[i] = f0[0, i] - L[i] * y[0, i]
            if blk2:
                a_, b_, c_, d_ = L[ia], J[ia, ib], J[ib, ia], L[ib]
                _phis2(h * a_, h * b_, h * c_, h * d_, ph)
                _phis2(0.5 * h * a_, 0.5 * h * b_, 0.5 * h * c_, 0.5 * h * d_, phh)
                N1[ia] = f0[0, ia] - a_ * y[0, ia] - b_ * y[0, ib]
                N1[ib] = f0[0, ib] - c_ * y[0, ia] - d_ * y[0, ib]
            # stage 2
            for i in range(ny):
                Y[i] = E2[i] * y[0, i] + 0.5 * h * Q1[i] * N1[i]
            if blk2:
                for r in range(2):
                    ir = ia if r == 0 else ib
                    Y[ir] = (phh[0, r, 0] * y[0, ia] + phh[0, r, 1] * y[0, ib]
                             + 0.5 * h * (phh[1, r, 0] * N1[ia] + phh[1, r, 1] * N1[ib]))
            t2 = tau + 0.5 * h
            _conc(t2, lp, xs_f, W_f, f_blk, fs, conc, ework)
            cc = t2
            _rhs(tw, Y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp, F)
            for i in range(ny):
                N2[i] = F[i] - L[i] * Y[i]
            if blk2:
                N2[ia] = F[ia] - a_ * Y[ia] - b_ * Y[ib]
                N2[ib] = F[ib] - c_ * Y[ia] - d_ * Y[ib]
            # stage 3
            for i in range(ny):
                Y[i] = E1[i] * y[0, i] + h * P1[i] * (2.0 * N2[i] - N1[i])
            if blk2:
                for r in range(2):
                    ir = ia if r == 0 else ib
                    Y[ir] = (ph[0, r, 0] * y[0, ia] + ph[0, r, 1] * y[0, ib]
                             + h * (ph[1, r, 0] * (2.0 * N2[ia] - N1[ia])
                                    + ph[1, r, 1] * (2.0 * N2[ib] - N1[ib])))
            t3 = tau + h
            _conc(t3, lp, xs_f, W_f, f_blk, fs, conc, ework)
            cc = t3
            _rhs(tw, Y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp, F)
            for i in range(ny):
                N3[i] = F[i] - L[i] * Y[i]
            if blk2:
                N3[ia] = F[ia] - a_ * Y[ia] - b_ * Y[ib]
                N3[ib] = F[ib] - c_ * Y[ia] - d_ * Y[ib]
            # new state; f at the new state (FSAL: the next step's f0 if accepted)
            for i in range(ny):
                p1, p2, p3 = P1[i], P2[i], P3[i]
                ynew[0, i] = E1[i] * y[0, i] + h * ((p1 - 3.0 * p2 + 4.0 * p3) * N1[i]
                                                    + (4.0 * p2 - 8.0 * p3) * N2[i]
                                                    + (4.0 * p3 - p2) * N3[i])
            if blk2:
                for r in range(2):
                    ir = ia if r == 0 else ib
                    yn = 0.0
                    for cidx in range(2):
                        jc = ia if cidx == 0 else ib
                        q1_ = ph[1, r, cidx]
                        q2_ = ph[2, r, cidx]
                        q3_ = ph[3, r, cidx]
                        yn += ph[0, r, cidx] * y[0, jc] + h * (
                            (q1_ - 3.0 * q2_ + 4.0 * q3_) * N1[jc]
                            + (4.0 * q2_ - 8.0 * q3_) * N2[jc] + (4.0 * q3_ - q2_) * N3[jc])
                    Y[ir] = yn
                ynew[0, ia] = Y[ia]
                ynew[0, ib] = Y[ib]
            _rhs(tw, ynew[0], conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp, F4)
            # error: ynew − ŷ, ŷ = e^{hL} y + h[(φ1 − φ2) N1 + φ2 N4] (order 2; in the stiff
            # limit the quasi-steady value at the new state, so stiff states are checked too)
            en = 0.0
            for i in range(ny):
                n4 = F4[i] - L[i] * ynew[0, i]
                er = ynew[0, i] - (E1[i] * y[0, i] + h * ((P1[i] - P2[i]) * N1[i] + P2[i] * n4))
                ERR[i] = er
            if blk2:
                n4a = F4[ia] - a_ * ynew[0, ia] - b_ * ynew[0, ib]
                n4b = F4[ib] - c_ * ynew[0, ia] - d_ * ynew[0, ib]
                for r in range(2):
                    ir = ia if r == 0 else ib
                    yh = ph[0, r, 0] * y[0, ia] + ph[0, r, 1] * y[0, ib] + h * (
                        (ph[1, r, 0] - ph[2, r, 0]) * N1[ia] + ph[2, r, 0] * n4a
                        + (ph[1, r, 1] - ph[2, r, 1]) * N1[ib] + ph[2, r, 1] * n4b)
                    ERR[ir] = ynew[0, ir] - yh
            for i in range(ny):
                sc = atol[i] + rtol * max(abs(y[0, i]), abs(ynew[0, i]))
                en += (ERR[i] / sc) ** 2
            en = np.sqrt(en / ny)
            if not np.isfinite(en):
                en = np.inf
            nt = n_acc + n_rej
            if p == 0 and nt < trace.shape[0]:
                trace[nt, 0] = t
                trace[nt, 1] = h
                trace[nt, 2] = en
                trace[nt, 3] = 0.0
            cut = False
            if np.isfinite(en):
                fr = _kink_frac(y, ynew, f0, h, 0, nmech, nmood, nblk, theta_h, mc[9])
                if fr < 1.0 and (1.0 - fr) * h > KINK_TAIL:
                    if h_kink == 0.0:
                        h_kink = h
                    h = fr * h + 0.5 * KINK_TAIL
                    n_rej += 1
                    cut = True
                    continue
            if en <= 1.0:
                n_acc += 1
                tn = te if last else t + h
                t = tn
                for i in range(ny):
                    y[0, i] = ynew[0, i]
                    f0[0, i] = F4[i]
                # f at the new state is F4 (same concentrations); refresh L there
                jac_into(tw, y[0], conc, kd0, kesc, mgf, P, J)
                if nmood > 0:
                    mood_jac(y[0], nmech, mc, mp, J)
                n_jac += 1
                for i in range(ny):
                    L[i] = min(J[i, i], 0.0)
                fac = 5.0 if en == 0.0 else min(5.0, max(0.2, 0.9 * en ** expo))
                h_next = h * fac
                if last and k_out < T and t_out[k_out] == tn and tn < tb:
                    for i in range(ny):
                        ys[p, k_out, i] = y[0, i]
                    _pk_at(tn - ta, lp, Vp, xss, cm, tmp)
                    for i in range(s):
                        xs[p, k_out, i] = tmp[i]
                    k_out += 1
                h = max(h_next, h_prop) if last else h_next
                if h_kink > 0.0:
                    h = max(h, h_kink)
                    h_kink = 0.0
            else:
                n_rej += 1
                if not np.isfinite(en):
                    h *= 0.25
                else:
                    h *= max(0.2, 0.9 * en ** expo)
            if h < 1e-12 or n_acc + n_rej > MAX_STEPS:
                status = 1
        # interval done: exact peak, PK state advanced exactly to tb
        L_ = tb - ta
        _interval_peak(L_, lp, xs_f, W_f, f_blk, fs, conc, ework, pk, samp)
        _pk_at(L_, lp, Vp, xss, cm, tmp)
        for i in range(s):
            x0[i] = tmp[i]
    for b in range(nblk):
        peak[p, b] = pk[b]
    stats[p, 0] = n_acc
    stats[p, 1] = n_rej
    stats[p, 2] = n_jac
    stats[p, 3] = status


@njit(cache=True, parallel=True, error_model="numpy")
def etd_run_batch(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf,
                  P, y0, t_out, rtol, atol, ys, xs, peak, stats, trace, nmood, mc, mpat, blk2,
                  ia, ib):
    """:func:`_etd_course` for every patient, in parallel over patients."""
    for p in prange(lam.shape[0]):
        _etd_course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0,
                    kesc, mgf, P, y0, t_out, rtol, atol, ys, xs, peak, stats, trace, nmood,
                    mc, mpat, blk2, ia, ib)


@njit(cache=True, nogil=True, error_model="numpy")
def etd_run_serial(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                   mgf, P, y0, t_out, rtol, atol, ys, xs, peak, stats, trace, nmood, mc, mpat,
                   blk2, ia, ib):
    """:func:`_etd_course` for every patient, one after another."""
    for p in range(lam.shape[0]):
        _etd_course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0,
                    kesc, mgf, P, y0, t_out, rtol, atol, ys, xs, peak, stats, trace, nmood,
                    mc, mpat, blk2, ia, ib)
