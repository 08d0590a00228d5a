"""Driver of the code-generated RODAS4 step (``kernel="codegen"``, :mod:`ketasim._codegen`).

Not imported on its own: :func:`ketasim._codegen.codegen_kernels` appends this text to the
generated step (which defines ``step8``, one RODAS4 attempt of all :data:`LANES` lanes as
vector code) and loads the result as one module (cached under a hash of both texts). The
lane bookkeeping, events, outputs, kink cuts and step control are those of
:func:`ketasim._batch_kernels._course_lanes`, copied; only the numerical core of an attempt
(f(t, y), Jacobian, ∂f/∂t, factorisation, six stages, new state, error norm) is the
generated ``step8``, which recomputes f(t, y) and the Jacobian at every attempt (after a
rejection they are those of the same point: the same values).
"""

import numpy as np
from numba import njit, prange

from ketasim._batch_kernels import (
    H_RESTART,
    KINK_TAIL,
    LANES,
    MAX_STEPS,
    THETA_H,
    _conc_lane,
    _interval_peak,
    _kink_frac,
    _pk_at,
)


@njit(cache=True, nogil=True, error_model="numpy")
def _course_cg(p0, p1, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0,
                  kesc, mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols,
                  mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace,
                  nmood, mc, mpat):
    """Patients ``p0 … p1−1`` as :func:`ketasim._batch_kernels._course_lanes` (same arguments
    and outputs), each attempt's numerical core by the generated ``step8``.
    """
    NL = LANES
    s = lam.shape[1]
    ny = y0.shape[0]
    nmech = order.shape[0]
    nf = f_idx.shape[0]
    nblk = kd0.shape[0]
    T = t_out.shape[0]
    nb = bps.shape[0]
    ns = M.shape[0]
    expo = -1.0 / meth[1]
    theta_h = P[THETA_H]
    # per-lane PK of the current interval
    x0 = np.zeros((NL, s))
    rate = np.zeros((NL, s))
    xss = np.zeros((NL, s))
    cm = np.zeros((NL, s))
    tmp = np.zeros(s)
    xs_f = np.zeros((NL, nf))
    W_f = np.zeros((NL, nf, s))
    ework = np.zeros(s)
    conc = np.zeros((NL, nblk))
    samp = np.zeros((17, nblk))
    pk = np.zeros((NL, nblk))
    # states (lane × state), f(t, y) of the last attempt (for the kink test)
    y = np.zeros((NL, ny))
    ynew = np.zeros((NL, ny))
    f0 = np.zeros((NL, ny))
    J = np.zeros((NL, ny, ny))  # (reset per patient by the shared bookkeeping; unused)
    mpT = np.zeros((3, NL))
    # per-lane scalars
    pid = np.zeros(NL, dtype=np.int64)
    phase = np.full(NL, 2, dtype=np.int64)  # 0 begin interval, 1 stepping, 2 need a patient
    act = np.zeros(NL, dtype=np.bool_)
    kk = np.zeros(NL, dtype=np.int64)
    k_out = np.zeros(NL, dtype=np.int64)
    n_acc = np.zeros(NL, dtype=np.int64)
    n_rej = np.zeros(NL, dtype=np.int64)
    n_jac = np.zeros(NL, dtype=np.int64)
    status = np.zeros(NL, dtype=np.int64)
    since_jac = np.zeros(NL, dtype=np.int64)
    f0_ok = np.zeros(NL, dtype=np.bool_)
    cut = np.zeros(NL, dtype=np.bool_)
    need_jac = np.zeros(NL, dtype=np.bool_)
    last = np.zeros(NL, dtype=np.bool_)
    t = np.zeros(NL)
    h = np.zeros(NL)
    ta = np.zeros(NL)
    tb = np.zeros(NL)
    tw = np.zeros(NL)
    cc = np.zeros(NL)
    t_end = np.zeros(NL)
    h_prop = np.zeros(NL)
    h_kink = np.zeros(NL)
    tau = np.zeros(NL)
    en = np.zeros(NL)
    # inputs and outputs of the generated step (lane index last)
    Yg = np.zeros((ny, NL))
    MPg = np.ones((3, NL))
    TAUg = np.zeros(NL)
    Hg = np.ones(NL)
    LAMg = np.full((s, NL), -1.0)
    XSFg = np.zeros((nf, NL))
    WFg = np.zeros((nf, s, NL))
    FSg = np.zeros((nf, NL))
    C0g = np.zeros((nblk, NL))
    F0g = np.zeros((ny, NL))
    Ug = np.zeros((ns, ny, NL))
    YNg = np.zeros((ny, NL))
    ENg = np.zeros(NL)
    C1g = np.zeros((nblk, NL))
    EXg = np.zeros((1, NL))
    cn_t = np.zeros(NL)
    cn_c = np.zeros((nblk, NL))
    for ln in range(NL):
        for i in range(ny):
            Yg[i, ln] = y0[i]
    nxt = p0
    while True:
        # bring every lane to its next step attempt: new patients, events, interval ends
        nact = 0
        for ln in range(NL):
            while True:
                if phase[ln] == 2:
                    if nxt >= p1:
                        act[ln] = False
                        break
                    p = nxt
                    nxt += 1
                    pid[ln] = p
                    act[ln] = True
                    for i in range(3):
                        mpT[i, ln] = mpat[p, i]
                        MPg[i, ln] = mpat[p, i]
                    for i in range(s):
                        x0[ln, i] = 0.0
                        rate[ln, i] = 0.0
                    for i in range(ny):
                        y[ln, i] = y0[i]
                        for j in range(ny):
                            J[ln, i, j] = 0.0
                    for b in range(nblk):
                        pk[ln, b] = 0.0
                    n_acc[ln] = 0
                    n_rej[ln] = 0
                    n_jac[ln] = 0
                    status[ln] = 0
                    k_out[ln] = 0
                    kk[ln] = 0
                    h[ln] = 1e-3
                    phase[ln] = 0
                p = pid[ln]
                if phase[ln] == 0:
                    k = kk[ln]
                    tak = bps[k]
                    for i in range(s):
                        rate[ln, i] += drate[p, k, i]
                        x0[ln, i] += dbol[p, k, i]
                    while k_out[ln] < T and t_out[k_out[ln]] <= tak:
                        for i in range(ny):
                            ys[p, k_out[ln], i] = y[ln, i]
                        for i in range(s):
                            xs[p, k_out[ln], i] = x0[ln, i]
                        k_out[ln] += 1
                    if k + 1 >= nb:
                        status[ln] = 0
                        phase[ln] = 3  # done
                    else:
                        ta[ln] = tak
                        tb[ln] = bps[k + 1]
                        tw[ln] = wmid[k]
                        lp = lam[p]
                        Vp = V[p]
                        Vi = Vinv[p]
                        for j in range(s):
                            a = 0.0
                            for i in range(s):
                                a += Vi[j, i] * rate[ln, i]
                            tmp[j] = -a / lp[j]
                        for i in range(s):
                            a = 0.0
                            for j in range(s):
                                a += Vp[i, j] * tmp[j]
                            xss[ln, i] = a
                        for j in range(s):
                            a = 0.0
                            for i in range(s):
                                a += Vi[j, i] * (x0[ln, i] - xss[ln, i])
                            cm[ln, j] = a
                        for q in range(nf):
                            xs_f[ln, q] = xss[ln, f_idx[q]]
                            XSFg[q, ln] = xs_f[ln, q]
                            FSg[q, ln] = f_scale[p, q]
                            for j in range(s):
                                W_f[ln, q, j] = Vp[f_idx[q], j] * cm[ln, j]
                                WFg[q, j, ln] = W_f[ln, q, j]
                        for j in range(s):
                            LAMg[j, ln] = lp[j]
                        t[ln] = tak
                        cc[ln] = np.nan
                        f0_ok[ln] = False
                        cut[ln] = False
                        h_kink[ln] = 0.0
                        need_jac[ln] = True
                        since_jac[ln] = 0
                        h[ln] = min(h[ln], H_RESTART)
                        phase[ln] = 1
                if phase[ln] == 1:
                    if status[ln] != 0:
                        phase[ln] = 3
                    elif t[ln] < tb[ln]:
                        break
                    else:
                        # interval done: exact peak, PK state advanced exactly to tb
                        L_ = tb[ln] - ta[ln]
                        _interval_peak(L_, lam[p], xs_f[ln], W_f[ln], f_blk, f_scale[p],
                                       conc[ln], ework, pk[ln], samp)
                        _pk_at(L_, lam[p], V[p], xss[ln], cm[ln], tmp)
                        for i in range(s):
                            x0[ln, i] = tmp[i]
                        kk[ln] += 1
                        phase[ln] = 0
                        continue
                if phase[ln] == 3:
                    for b in range(nblk):
                        peak[p, b] = pk[ln, b]
                    stats[p, 0] = n_acc[ln]
                    stats[p, 1] = n_rej[ln]
                    stats[p, 2] = n_jac[ln]
                    stats[p, 3] = status[ln]
                    phase[ln] = 2
            if act[ln]:
                nact += 1
        if nact == 0:
            break
        # per lane: step size for this attempt, concentrations at τ, step inputs
        for ln in range(NL):
            if not act[ln]:
                continue
            p = pid[ln]
            te = tb[ln]
            if k_out[ln] < T and t_out[k_out[ln]] < tb[ln]:
                te = t_out[k_out[ln]]
            t_end[ln] = te
            last[ln] = False
            h_prop[ln] = h[ln]
            if t[ln] + (1.0 if cut[ln] else 1.05) * h[ln] >= te:
                h[ln] = te - t[ln]
                last[ln] = True
            tu = t[ln] - ta[ln]
            tau[ln] = tu
            if not abs(tu - cc[ln]) <= 1e-14 * (1.0 + tu):
                _conc_lane(tu, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
                cc[ln] = tu
                for b in range(nblk):
                    C0g[b, ln] = conc[ln, b]
            for i in range(ny):
                Yg[i, ln] = y[ln, i]
            TAUg[ln] = tu
            Hg[ln] = h[ln]
            if need_jac[ln]:
                n_jac[ln] += 1
                need_jac[ln] = False
                since_jac[ln] = 0
        step8(Yg, MPg, TAUg, Hg, LAMg, XSFg, WFg, FSg, C0g, F0g, Ug, YNg, ENg, C1g,  # noqa: F821
              EXg)
        for ln in range(NL):
            if not act[ln]:
                continue
            for i in range(ny):
                f0[ln, i] = F0g[i, ln]
                ynew[ln, i] = YNg[i, ln]
            e = ENg[ln]
            en[ln] = e if np.isfinite(e) else np.inf
            # the concentrations at τ + h (the last stage's), kept for the next attempt
            tq = tau[ln] + h[ln]
            cn_t[ln] = tq
            for b in range(nblk):
                cn_c[b, ln] = C1g[b, ln]
        # per lane: trace, kink cut, accept / reject, outputs, step-size control
        for ln in range(NL):
            if not act[ln]:
                continue
            p = pid[ln]
            e = en[ln]
            nt = n_acc[ln] + n_rej[ln]
            if p == 0 and nt < trace.shape[0]:
                trace[nt, 0] = t[ln]
                trace[nt, 1] = h[ln]
                trace[nt, 2] = e
                trace[nt, 3] = float(since_jac[ln])
            cut[ln] = False
            if np.isfinite(e):
                fr = _kink_frac(y, ynew, f0, h[ln], ln, nmech, nmood, nblk, theta_h, mc[9])
                if fr < 1.0 and (1.0 - fr) * h[ln] > KINK_TAIL:
                    if h_kink[ln] == 0.0:
                        h_kink[ln] = h[ln]
                    h[ln] = fr * h[ln] + 0.5 * KINK_TAIL
                    n_rej[ln] += 1
                    cut[ln] = True
                    continue
            if e <= 1.0:
                n_acc[ln] += 1
                since_jac[ln] += 1
                tn = t_end[ln] if last[ln] else t[ln] + h[ln]
                t[ln] = tn
                f0_ok[ln] = False
                cc[ln] = cn_t[ln]
                for b in range(nblk):
                    C0g[b, ln] = cn_c[b, ln]
                for i in range(ny):
                    y[ln, i] = ynew[ln, i]
                if since_jac[ln] >= jac_every:
                    need_jac[ln] = True
                fac = 5.0 if e == 0.0 else min(5.0, max(0.2, 0.9 * e ** expo))
                h_next = h[ln] * fac
                ko = k_out[ln]
                if last[ln] and ko < T and t_out[ko] == tn and tn < tb[ln]:
                    for i in range(ny):
                        ys[p, ko, i] = y[ln, i]
                    _pk_at(tn - ta[ln], lam[p], V[p], xss[ln], cm[ln], tmp)
                    for i in range(s):
                        xs[p, ko, i] = tmp[i]
                    k_out[ln] = ko + 1
                h[ln] = max(h_next, h_prop[ln]) if last[ln] else h_next
                if h_kink[ln] > 0.0:
                    h[ln] = max(h[ln], h_kink[ln])
                    h_kink[ln] = 0.0
            else:
                n_rej[ln] += 1
                if since_jac[ln] > 0:
                    need_jac[ln] = True
                if not np.isfinite(e):
                    h[ln] *= 0.25
                else:
                    h[ln] *= max(0.2, 0.9 * e ** expo)
            if h[ln] < 1e-12 or n_acc[ln] + n_rej[ln] > MAX_STEPS:
                status[ln] = 1


@njit(cache=True, parallel=True, error_model="numpy")
def _run_batch_cg(ng, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                  mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr,
                  mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood,
                  mc, mpat):
    """:func:`_course_cg` on ``ng`` contiguous groups of patients in parallel."""
    n = lam.shape[0]
    for g in prange(ng):
        _course_cg(g * n // ng, (g + 1) * n // ng, bps, wmid, drate, dbol, lam, V, Vinv,
                   f_idx, f_blk, f_scale, kd0, kesc, mgf, P, y0, t_out, rtol, atol,
                   jac_every, order, bptr, lptr, lcols, mptr, mcols, AT, CT, M, E, ALPHA,
                   GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat)


@njit(cache=True, nogil=True, error_model="numpy")
def _run_serial_cg(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                   mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols,
                   mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace,
                   nmood, mc, mpat):
    _course_cg(0, lam.shape[0], bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk,
               f_scale, kd0, kesc, mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr,
               lptr, lcols, mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak,
               stats, trace, nmood, mc, mpat)
