"""Compiled kernels of the batched engine (:mod:`ketasim.batch`); see that module's docstring.

This file is loaded by :func:`ketasim.batch._kernels` through a copy whose name carries a hash
of this file and of :mod:`ketasim.mechanism`, so numba's on-disk cache is invalidated whenever
the mechanism equations change (numba itself only watches the file a function is defined in).
Imports are absolute for that reason.
"""

import numpy as np
from numba import njit, prange

from ketasim.mechanism import _I, jac_into, rhs_into

#: index of θ_H (LHb block at which bursting stops) in the packed mechanism parameters
THETA_H = _I["theta_H"]
MAX_STEPS = 2_000_000  # per patient-course, a guard against runaway step-size collapse
H_RESTART = 1e-2  # h, largest first step after a dose event


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _pk_at(tau, lam, V, xss, c, out):
    """Exact PK state ``x(τ) = x_ss + V (e^{λτ} ∘ c)`` into ``out``."""
    s = lam.shape[0]
    for i in range(s):
        acc = xss[i]
        for j in range(s):
            acc += V[i, j] * c[j] * np.exp(lam[j] * tau)
        out[i] = acc


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _conc(tau, lam, xs_f, W_f, f_blk, f_scale, conc, ework):
    """Free brain µM per blocker at ``τ`` into the interval (only the states that feed it)."""
    s = lam.shape[0]
    for j in range(s):
        ework[j] = np.exp(lam[j] * tau)
    for b in range(conc.shape[0]):
        conc[b] = 0.0
    for i in range(f_blk.shape[0]):
        x = xs_f[i]
        for j in range(s):
            x += W_f[i, j] * ework[j]
        conc[f_blk[i]] += f_scale[i] * max(x, 0.0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blk_rows(bptr, bfirst, blast):
    """Per permuted row, the first and last position of its diagonal block (from ``bptr``)."""
    for g in range(bptr.shape[0] - 1):
        for a in range(bptr[g], bptr[g + 1]):
            bfirst[a] = bptr[g]
            blast[a] = bptr[g + 1] - 1


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blk_factor(J, inv, order, bptr, bfirst, blast, lptr, lcols, Wp, piv, lval, dinv, nmech):
    """Factor ``W = I/(hγ) − J`` in block lower-triangular form.

    ``order`` lists the mechanism states in a topological order of the strongly connected
    components of the Jacobian's sparsity pattern (:func:`ketasim.batch._block_structure`);
    component ``g`` occupies positions ``bptr[g] … bptr[g+1]−1`` (``bfirst``/``blast``: the
    same per row, :func:`_blk_rows`). Then ``W[order][:, order]`` is block lower triangular.
    A diagonal block of one state (most of them) is one number; a larger one (up to 4 states
    for the shipped mechanism) is LU-factored with partial pivoting in place in ``Wp``
    (permuted positions). ``dinv[a]`` holds the reciprocal of each pivot (a solve
    multiplies), and the strictly lower entries of permuted row ``a`` are
    ``lval[lptr[a]:lptr[a+1]]`` at columns ``lcols[…]`` (flat: one sweep in the solve). The
    trailing mood rows (``nmech …``, lower triangular among themselves) get
    ``dinv[i] = 1/(1/(hγ) − J[i, i])``. Returns False if a pivot is zero or not finite."""
    n = order.shape[0]
    for a in range(n):
        ia = order[a]
        for q in range(lptr[a], lptr[a + 1]):
            lval[q] = -J[ia, order[lcols[q]]]
        a0 = bfirst[a]
        if a0 == blast[a]:
            d = inv - J[ia, ia]
            if d == 0.0 or not np.isfinite(d):
                return False
            dinv[a] = 1.0 / d
            continue
        if a != a0:
            continue
        a1 = blast[a] + 1
        for r in range(a0, a1):
            ir = order[r]
            for c in range(a0, a1):
                Wp[r, c] = -J[ir, order[c]]
            Wp[r, r] += inv
        for k in range(a0, a1):
            p = k
            best = abs(Wp[k, k])
            for i in range(k + 1, a1):
                if abs(Wp[i, k]) > best:
                    best = abs(Wp[i, k])
                    p = i
            if best == 0.0 or not np.isfinite(best):
                return False
            piv[k] = p
            if p != k:
                for j in range(a0, a1):
                    tmp = Wp[k, j]
                    Wp[k, j] = Wp[p, j]
                    Wp[p, j] = tmp
            rinv = 1.0 / Wp[k, k]
            dinv[k] = rinv
            for i in range(k + 1, a1):
                f = Wp[i, k] * rinv
                Wp[i, k] = f
                if f != 0.0:
                    for j in range(k + 1, a1):
                        Wp[i, j] -= f * Wp[k, j]
    for i in range(nmech, dinv.shape[0]):
        d = inv - J[i, i]
        if d == 0.0 or not np.isfinite(d):
            return False
        dinv[i] = 1.0 / d
    return True


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blk_solve(Wp, piv, order, bfirst, blast, lptr, lcols, lval, dinv, J, b, u, nmech, mptr,
               mcols):
    """Solve ``W x = b`` in place with the factors of :func:`_blk_factor`: one forward sweep
    over the permuted mechanism rows (``u`` a work vector in permuted positions; a row of a
    one-state block is finished at once, a larger block by its LU factors at its last row),
    then the trailing mood rows (they read the mechanism, never the reverse; lower triangular
    among themselves) by forward substitution with ``W = I/(hγ) − J`` over their non-zero
    columns ``mcols[mptr[r]:mptr[r+1]]`` (row ``nmech + r``, columns below the diagonal)."""
    for a in range(nmech):
        acc = b[order[a]]
        for q in range(lptr[a], lptr[a + 1]):
            acc -= lval[q] * u[lcols[q]]
        a0 = bfirst[a]
        if a0 == blast[a]:
            u[a] = acc * dinv[a]
            continue
        u[a] = acc
        if a != blast[a]:
            continue
        a1 = a + 1
        for k in range(a0, a1):
            p = piv[k]
            if p != k:
                tmp = u[k]
                u[k] = u[p]
                u[p] = tmp
        for i in range(a0, a1):
            acc = u[i]
            for j in range(a0, i):
                acc -= Wp[i, j] * u[j]
            u[i] = acc
        for i in range(a1 - 1, a0 - 1, -1):
            acc = u[i]
            for j in range(i + 1, a1):
                acc -= Wp[i, j] * u[j]
            u[i] = acc * dinv[i]
    for a in range(nmech):
        b[order[a]] = u[a]
    for r in range(mptr.shape[0] - 1):
        i = nmech + r
        acc = b[i]
        for q in range(mptr[r], mptr[r + 1]):
            j = mcols[q]
            acc += J[i, j] * b[j]
        b[i] = acc * dinv[i]


#: number of mood states appended to the mechanism state vector (he_fast, he_slow, priming,
#: consolidation) and of the shared / per-patient mood constants (see :func:`mood_rhs`)
N_MOOD = 4


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mood_rhs(y, nmech, mc, mpat, dy):
    """The mood layer of :func:`ketasim.mood.scores_batch` as ODEs (the single compiled
    definition; pinned to ``scores_batch`` on a fine grid in the tests). Time in h.

    ``y[nmech:nmech+4]`` = (he_fast, he_slow, priming π, consolidation C); ``mc`` = (a_fast,
    a_proteins, a_spines, k_mood /h, k_mood_slow /h, drive50, 1/τ_π /h, 1/τ_c /h, g_c, θ_c);
    ``mpat`` = (fast factor f_d, E_i, esketamine clinical factor). Drives from the mechanism
    states LHb burst R_b, synaptic proteins P and spines S:
    ``he_fast' = k_mood·(a_fast·f_d·(1 − R_b)⁺ − he_fast)``,
    ``he_slow' = k_mood_slow·(a_P·(P − 1)⁺ + a_S·(S − 1)⁺ − he_slow)``,
    ``π' = (h_f/(h50 + h_f) − π)/τ_π`` with ``h_f = f_esk·he_fast``,
    ``C' = (g_c·d₀·(π − θ_c)⁺ − C)/τ_c`` with ``d₀ = E_i·h_e/(h50 + h_e)``,
    ``h_e = f_esk·(he_fast + he_slow)``."""
    nb = nmech - 14
    rb = y[nb + 11]
    pp = y[nb + 7]
    sp = y[nb + 10]
    hf = y[nmech]
    hs = y[nmech + 1]
    pr = y[nmech + 2]
    cn = y[nmech + 3]
    esk = mpat[2]
    drive_fast = mc[0] * mpat[0] * max(1.0 - rb, 0.0)
    drive_slow = mc[1] * max(pp - 1.0, 0.0) + mc[2] * max(sp - 1.0, 0.0)
    he = esk * (hf + hs)
    hfe = esk * hf
    d0 = mpat[1] * he / (mc[5] + he)
    dy[nmech] = mc[3] * (drive_fast - hf)
    dy[nmech + 1] = mc[4] * (drive_slow - hs)
    dy[nmech + 2] = mc[6] * (hfe / (mc[5] + hfe) - pr)
    dy[nmech + 3] = mc[7] * (mc[8] * d0 * max(pr - mc[9], 0.0) - cn)



@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mood_jac(y, nmech, mc, mpat, J):
    """Analytic Jacobian of :func:`mood_rhs` (rows ``nmech …``: the mood states' dependence on
    LHb bursting R_b, synaptic proteins P, spines S and on each other) into ``J``; pinned to
    finite differences in the tests."""
    nb = nmech - 14
    irb, ipp, isp = nb + 11, nb + 7, nb + 10
    rb = y[irb]
    pp = y[ipp]
    sp = y[isp]
    hf = y[nmech]
    hs = y[nmech + 1]
    pr = y[nmech + 2]
    esk = mpat[2]
    h50 = mc[5]
    he = esk * (hf + hs)
    hfe = esk * hf
    d0 = mpat[1] * he / (h50 + he)
    i0, i1, i2, i3 = nmech, nmech + 1, nmech + 2, nmech + 3
    J[i0, irb] = -mc[3] * mc[0] * mpat[0] if rb < 1.0 else 0.0
    J[i0, i0] = -mc[3]
    J[i1, ipp] = mc[4] * mc[1] if pp > 1.0 else 0.0
    J[i1, isp] = mc[4] * mc[2] if sp > 1.0 else 0.0
    J[i1, i1] = -mc[4]
    J[i2, i0] = mc[6] * esk * h50 / ((h50 + hfe) * (h50 + hfe))
    J[i2, i2] = -mc[6]
    above = pr - mc[9]
    dd0 = mpat[1] * h50 / ((h50 + he) * (h50 + he)) * esk
    J[i3, i0] = mc[7] * mc[8] * max(above, 0.0) * dd0
    J[i3, i1] = J[i3, i0]
    J[i3, i2] = mc[7] * mc[8] * d0 if above > 0.0 else 0.0
    J[i3, i3] = -mc[7]

@njit(cache=True, nogil=True, error_model="numpy")
def _rhs(t, y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mpat, dy):
    """Mechanism (:func:`ketasim.mechanism.rhs_into`) plus, if ``nmood``, the mood states."""
    rhs_into(t, y, conc, kd0, kesc, mgf, P, dy)
    if nmood > 0:
        mood_rhs(y, nmech, mc, mpat, dy)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kink_frac(y, ynew, nmech, nmood, nblk, theta_h, theta_c):
    """Smallest fraction of a step at which a switching function changes sign (linear
    interpolation; 2 if none): LHb block total B_H − θ_H, and priming π − θ_c."""
    fr = 2.0
    b0 = 0.0
    b1 = 0.0
    for j in range(nblk):
        b0 += y[j]
        b1 += ynew[j]
    g0 = b0 - theta_h
    g1 = b1 - theta_h
    if g0 * g1 < 0.0:
        fr = min(fr, g0 / (g0 - g1))
    if nmood > 0:
        g0 = y[nmech + 2] - theta_c
        g1 = ynew[nmech + 2] - theta_c
        if g0 * g1 < 0.0:
            fr = min(fr, g0 / (g0 - g1))
    return fr


@njit(cache=True, nogil=True, error_model="numpy")
def _dconc(tau, b, lam, xs_f, W_f, f_blk, f_scale):
    """First and second derivative in τ of blocker ``b``'s free brain µM (sum of exponentials
    of the states that feed it; a state clamped at 0 contributes nothing)."""
    s = lam.shape[0]
    d1 = 0.0
    d2 = 0.0
    for i in range(f_blk.shape[0]):
        if f_blk[i] != b:
            continue
        x = xs_f[i]
        a1 = 0.0
        a2 = 0.0
        for j in range(s):
            e = W_f[i, j] * np.exp(lam[j] * tau)
            x += e
            a1 += lam[j] * e
            a2 += lam[j] * lam[j] * e
        if x > 0.0:
            d1 += f_scale[i] * a1
            d2 += f_scale[i] * a2
    return d1, d2


@njit(cache=True, nogil=True, error_model="numpy")
def _interval_peak(L, lp, xs_f, W_f, f_blk, fs, conc, ework, pk, samp):
    """Raise ``pk`` to the maximum over ``τ ∈ [0, L]`` of each blocker's exactly known
    concentration (sum of exponentials): 17 samples shared by all blockers, then a
    safeguarded Newton iteration on ``dc/dτ = 0`` inside the bracket around each blocker's
    best sample (bisection whenever Newton would leave it; converged to 1e-12 of the
    interval)."""
    nblk = conc.shape[0]
    ns = samp.shape[0] - 1
    for q in range(ns + 1):
        _conc(L * q / ns, lp, xs_f, W_f, f_blk, fs, conc, ework)
        for b in range(nblk):
            samp[q, b] = conc[b]
    for b in range(nblk):
        ib = 0
        best = samp[0, b]
        for q in range(1, ns + 1):
            if samp[q, b] > best:
                best = samp[q, b]
                ib = q
        lo = L * max(ib - 1, 0) / ns
        hi = L * min(ib + 1, ns) / ns
        tau = L * ib / ns
        for _ in range(60):
            g, gp = _dconc(tau, b, lp, xs_f, W_f, f_blk, fs)
            if g > 0.0:
                lo = tau
            else:
                hi = tau
            nxt = 0.5 * (lo + hi)
            if gp < 0.0:
                newton = tau - g / gp
                if lo < newton < hi:
                    nxt = newton
            if abs(nxt - tau) <= 1e-12 * (1.0 + L) or hi - lo <= 1e-12 * (1.0 + L):
                tau = nxt
                break
            tau = nxt
        _conc(tau, lp, xs_f, W_f, f_blk, fs, conc, ework)
        best = max(best, conc[b])
        if best > pk[b]:
            pk[b] = best


@njit(cache=True, nogil=True, error_model="numpy")
def _course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf,
            P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr, mcols,
            AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat):
    """Integrate one patient-course; states at ``t_out`` into ``ys[p]`` (T, ny) and
    ``xs[p]`` (T, s); ``peak[p]`` max free µM per blocker on the step grid;
    ``stats[p]`` = (accepted steps, rejected steps, Jacobians, status). With ``nmood`` = 4
    the last four states are the mood layer (:func:`mood_rhs`, constants ``mc`` and
    ``mpat[p]``); ``peak`` is the exact maximum of the concentration over every interval.

    The Rosenbrock method is given in transformed form (Hairer & Wanner; KPP's convention):
    ``(I/(hγ) − J) u_i = f(t + α_i h, y + Σ_j AT_ij u_j) + Σ_j CT_ij u_j / h + GSUM_i h f_t``,
    ``y₁ = y + Σ M_i u_i``, error ``Σ E_i u_i``; ``meth`` = (γ, order of the error estimate)."""
    s = lam.shape[1]
    ny = y0.shape[0]
    nmech = order.shape[0]
    mp_p = mpat[p]
    nf = f_idx.shape[0]
    nblk = kd0.shape[0]
    T = t_out.shape[0]
    lp = lam[p]
    Vp = V[p]
    Vi = Vinv[p]
    fs = f_scale[p]
    x0 = np.zeros(s)
    rate = np.zeros(s)
    xss = np.zeros(s)
    c = np.zeros(s)
    tmp = np.zeros(s)
    xs_f = np.zeros(nf)
    W_f = np.zeros((nf, s))
    ework = np.zeros(s)
    conc = np.zeros(nblk)
    y = y0.copy()
    ynew = np.zeros(ny)
    Yst = np.zeros(ny)
    ns = M.shape[0]
    gam = meth[0]
    expo = -1.0 / meth[1]
    U = np.zeros((ns, ny))
    ft = np.zeros(ny)
    f0 = np.zeros(ny)
    fj = np.zeros(ny)
    J = np.zeros((ny, ny))
    Wm = np.zeros((ny, ny))
    piv = np.zeros(ny, dtype=np.int64)
    uwork = np.zeros(ny)
    lval = np.zeros(lcols.shape[0])
    dinv = np.zeros(ny)
    bfirst = np.zeros(nmech, dtype=np.int64)
    blast = np.zeros(nmech, dtype=np.int64)
    _blk_rows(bptr, bfirst, blast)
    cth = np.zeros(M.shape[0])
    samp = np.zeros((17, nblk))
    pk = np.zeros(nblk)
    n_acc = 0
    n_rej = 0
    n_jac = 0
    status = 0
    k_out = 0
    h = 1e-3
    nb = bps.shape[0]
    eps_t = 1e-8
    for k in range(nb):
        ta = bps[k]
        # events at ta: rate changes, boluses (an output at a bolus time includes it)
        for i in range(s):
            rate[i] += drate[p, k, i]
            x0[i] += dbol[p, k, i]
        while k_out < T and t_out[k_out] <= ta:
            for i in range(ny):
                ys[p, k_out, i] = y[i]
            for i in range(s):
                xs[p, k_out, i] = x0[i]
            k_out += 1
        if k + 1 >= nb:
            break
        tb = bps[k + 1]
        tw = wmid[k]
        # modal coefficients of this interval: x_ss = −V Λ⁻¹ V⁻¹ r, c = V⁻¹ (x0 − x_ss)
        for j in range(s):
            acc = 0.0
            for i in range(s):
                acc += Vi[j, i] * rate[i]
            tmp[j] = -acc / lp[j]
        for i in range(s):
            acc = 0.0
            for j in range(s):
                acc += Vp[i, j] * tmp[j]
            xss[i] = acc
        for j in range(s):
            acc = 0.0
            for i in range(s):
                acc += Vi[j, i] * (x0[i] - xss[i])
            c[j] = acc
        for q in range(nf):
            xs_f[q] = xss[f_idx[q]]
            for j in range(s):
                W_f[q, j] = Vp[f_idx[q], j] * c[j]
        t = ta
        cc = np.nan  # τ at which ``conc`` holds the concentrations (none yet)
        f0_ok = False  # f0 = f(t, y) still valid (after a rejected step)
        cut = False  # the step was just shortened to end before a kink
        need_jac = True
        since_jac = 0
        h = min(h, H_RESTART)
        while t < tb:
            t_end = tb
            if k_out < T and t_out[k_out] < tb:
                t_end = t_out[k_out]
            last = False
            h_prop = h
            if t + (1.0 if cut else 1.05) * h >= t_end:
                h = t_end - t
                last = True
            tau = t - ta
            if not f0_ok or need_jac:
                if not abs(tau - cc) <= 1e-14 * (1.0 + tau):
                    _conc(tau, lp, xs_f, W_f, f_blk, fs, conc, ework)
                    cc = tau
            if not f0_ok:
                _rhs(tw, y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp_p, f0)
                f0_ok = True
            if need_jac:
                # analytic Jacobian of the mechanism and of the mood layer
                jac_into(tw, y, conc, kd0, kesc, mgf, P, J)
                if nmood > 0:
                    mood_jac(y, nmech, mc, mp_p, J)
                # ∂f/∂t through the exact concentrations (the time column of the autonomised
                # Jacobian: a W-method may reuse it with the rest of J)
                _conc(tau + eps_t, lp, xs_f, W_f, f_blk, fs, conc, ework)
                cc = tau + eps_t
                _rhs(tw, y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp_p, fj)
                for i in range(ny):
                    ft[i] = (fj[i] - f0[i]) / eps_t
                n_jac += 1
                need_jac = False
                since_jac = 0
            # W = I/(hγ) − J, factored block by block (block lower-triangular structure)
            inv = 1.0 / (h * gam)
            hinv = 1.0 / h
            ok = _blk_factor(J, inv, order, bptr, bfirst, blast, lptr, lcols, Wm, piv, lval, dinv,
                             nmech)
            if ok:
                for st in range(ns):
                    if st == 0:
                        for i in range(ny):
                            U[0, i] = f0[i] + h * GSUM[0] * ft[i]
                    else:
                        for i in range(ny):
                            acc = y[i]
                            for j in range(st):
                                acc += AT[st, j] * U[j, i]
                            Yst[i] = acc
                        tq = tau + ALPHA[st] * h
                        if not abs(tq - cc) <= 1e-14 * (1.0 + tq):
                            # (stages at the same time, e.g. RODAS4's last two, share it)
                            _conc(tq, lp, xs_f, W_f, f_blk, fs, conc, ework)
                            cc = tq
                        _rhs(tw, Yst, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mp_p, fj)
                        hg = h * GSUM[st]
                        for j in range(st):
                            cth[j] = CT[st, j] * hinv
                        for i in range(ny):
                            acc = fj[i] + hg * ft[i]
                            for j in range(st):
                                acc += cth[j] * U[j, i]
                            U[st, i] = acc
                    _blk_solve(Wm, piv, order, bfirst, blast, lptr, lcols, lval, dinv, J, U[st],
                               uwork, nmech, mptr, mcols)
                en = 0.0
                for i in range(ny):
                    acc = y[i]
                    ea = 0.0
                    for j in range(ns):
                        acc += M[j] * U[j, i]
                        ea += E[j] * U[j, i]
                    ynew[i] = acc
                    sc = atol[i] + rtol * max(abs(y[i]), abs(acc))
                    en += (ea / sc) ** 2
                en = np.sqrt(en / ny)
            else:
                en = np.inf
            nt = n_acc + n_rej
            if p == 0 and nt < trace.shape[0]:
                trace[nt, 0] = t
                trace[nt, 1] = h
                trace[nt, 2] = en
                trace[nt, 3] = float(since_jac)
            cut = False
            if en <= 1.0:
                # kinks of the right-hand side (max(π − θ_c, 0) of the mood layer,
                # (1 − B_H/θ_H)⁺ of LHb bursting): a step that crosses one is shortened to end
                # just before it (linear interpolation of the switching function), so the kink
                # falls on a step boundary instead of inside a step's error estimate (also for
                # a step that would end on an output or event time: ``cut`` keeps the shortened
                # step from being stretched back to that time)
                fr = _kink_frac(y, ynew, nmech, nmood, nblk, P[THETA_H], mc[9])
                if fr < 1.0 and fr * h > 1e-7:
                    h = max(fr * h * (1.0 - 1e-6), 1e-7)
                    n_rej += 1
                    cut = True
                    continue
            if en <= 1.0:
                n_acc += 1
                since_jac += 1
                t = t_end if last else t + h
                f0_ok = False
                for i in range(ny):
                    y[i] = ynew[i]
                if since_jac >= jac_every:
                    need_jac = True
                fac = 5.0 if en == 0.0 else min(5.0, max(0.2, 0.9 * en ** expo))
                h_next = h * fac
                if last and k_out < T and t_out[k_out] == t and t < tb:
                    for i in range(ny):
                        ys[p, k_out, i] = y[i]
                    _pk_at(t - ta, lp, Vp, xss, c, tmp)
                    for i in range(s):
                        xs[p, k_out, i] = tmp[i]
                    k_out += 1
                h = max(h_next, h_prop) if last else h_next
            else:
                n_rej += 1
                if since_jac > 0:
                    need_jac = True
                if not np.isfinite(en):
                    h *= 0.25
                else:
                    h *= max(0.2, 0.9 * en ** expo)
            if h < 1e-12 or n_acc + n_rej > MAX_STEPS:
                status = 1
                break
        if status != 0:
            break
        _interval_peak(tb - ta, lp, xs_f, W_f, f_blk, fs, conc, ework, pk, samp)
        # advance the PK state exactly to tb
        _pk_at(tb - ta, lp, Vp, xss, c, tmp)
        for i in range(s):
            x0[i] = tmp[i]
    for b in range(nblk):
        peak[p, b] = pk[b]
    stats[p, 0] = n_acc
    stats[p, 1] = n_rej
    stats[p, 2] = n_jac
    stats[p, 3] = status


@njit(cache=True, parallel=True, error_model="numpy")
def _run_batch(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf, P,
               y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr, mcols, AT,
               CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat):
    for p in prange(lam.shape[0]):
        _course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf,
                P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr, mcols,
                AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat)


@njit(cache=True, nogil=True, error_model="numpy")
def _run_serial(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf, P,
                y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr, mcols,
                AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat):
    for p in range(lam.shape[0]):
        _course(p, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc, mgf,
                P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr, mcols,
                AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat)


