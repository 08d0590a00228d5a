"""Compiled kernels of the batched engine (:mod:`ketasim.batch`); see that module's docstring.

This file is loaded by :func:`ketasim.batch._kernels` through a copy whose name carries a hash
of this file and of :mod:`ketasim.mechanism`, so numba's on-disk cache is invalidated whenever
the mechanism equations change (numba itself only watches the file a function is defined in).
Imports are absolute for that reason.
"""

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic, models, register_model

from ketasim.mechanism import _I, jac_into, rhs_into, rhs_lanes

#: index of θ_H (LHb block at which bursting stops) in the packed mechanism parameters
THETA_H = _I["theta_H"]
MAX_STEPS = 2_000_000  # per patient-course, a guard against runaway step-size collapse
H_RESTART = 1e-2  # h, largest first step after a dose event
#: h, a step may end up to this far past a kink of the right-hand side (a cut aims at half of
#: it); measured on the fast path (200 bench patients): 1e-2 / 1e-3 / 1e-4 h took 463 / 466 /
#: 471 attempts per course, MADRS within 2.1e-5 / 1.5e-5 / 1.5e-5 of the tight solution
KINK_TAIL = 1e-3


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
def _conc_lane(tau, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework):
    """:func:`_conc` for lane ``ln`` (patient ``p``) of the lanes kernel, indexing the 2-D and
    3-D arrays directly (no per-call array views, whose reference counting is atomic)."""
    s = lam.shape[1]
    for j in range(s):
        ework[j] = np.exp(lam[p, j] * tau)
    for b in range(conc.shape[1]):
        conc[ln, b] = 0.0
    for i in range(f_blk.shape[0]):
        x = xs_f[ln, i]
        for j in range(s):
            x += W_f[ln, i, j] * ework[j]
        conc[ln, f_blk[i]] += f_scale[p, i] * max(x, 0.0)

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gather_lane(y, conc, ln, YT, C):
    """Lane ``ln``'s state (row of ``y``) and concentrations (row of ``conc``) into column
    ``ln`` of the across-lanes arrays ``YT`` (ny, L) and ``C`` (blockers, L)."""
    for i in range(y.shape[1]):
        YT[i, ln] = y[ln, i]
    for b in range(conc.shape[1]):
        C[b, ln] = conc[ln, b]

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
    ``he_fast' = k_mood·(a_fast·f_d·(1 − R_b)⁺ − he_fast)`` (``f_d`` includes ``w_e``),
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
def mood_rhs_lanes(y, nmech, mc, mpat, dy):
    """:func:`mood_rhs` for several lanes at once (``y``, ``dy`` (ny, L), ``mpat`` (3, L)),
    lane index innermost; per lane the same operations in the same order (pinned bit for bit
    in the tests)."""
    nb = nmech - 14
    for ln in range(y.shape[1]):
        rb = y[nb + 11, ln]
        pp = y[nb + 7, ln]
        sp = y[nb + 10, ln]
        hf = y[nmech, ln]
        hs = y[nmech + 1, ln]
        pr = y[nmech + 2, ln]
        cn = y[nmech + 3, ln]
        esk = mpat[2, ln]
        drive_fast = mc[0] * mpat[0, ln] * max(1.0 - rb, 0.0)
        drive_slow = mc[1] * max(pp - 1.0, 0.0) + mc[2] * max(sp - 1.0, 0.0)
        he = esk * (hf + hs)
        hfe = esk * hf
        d0 = mpat[1, ln] * he / (mc[5] + he)
        dy[nmech, ln] = mc[3] * (drive_fast - hf)
        dy[nmech + 1, ln] = mc[4] * (drive_slow - hs)
        dy[nmech + 2, ln] = mc[6] * (hfe / (mc[5] + hfe) - pr)
        dy[nmech + 3, ln] = mc[7] * (mc[8] * d0 * max(pr - mc[9], 0.0) - cn)

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


@njit(cache=True, nogil=True, error_model="numpy")
def _rhs_lanes(t, y, conc, kd0, kesc, mgf, P, nmech, nmood, mc, mpat, dy, w):
    """:func:`_rhs` for every lane at once (``y``, ``dy`` (ny, L), ``conc`` (blockers, L),
    ``mpat`` (3, L), ``w`` work (12, L))."""
    rhs_lanes(t, y, conc, kd0, kesc, mgf, P, dy, w)
    if nmood > 0:
        mood_rhs_lanes(y, nmech, mc, mpat, dy)

@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _cross_frac(g0, a, g1):
    """Where in a step (fraction 0–1) the switching function g crosses zero, given its values
    g0 ≠ 0 at the start and g1 (opposite sign) at the end and a = h·g′(0): the root of the
    quadratic through these three conditions (the linear interpolation where it has none in
    (0, 1))."""
    lin = g0 / (g0 - g1)
    b = g1 - g0 - a
    disc = a * a - 4.0 * b * g0
    if b == 0.0 or disc < 0.0:
        return lin
    q = -0.5 * (a + (np.sqrt(disc) if a >= 0.0 else -np.sqrt(disc)))
    fr = 2.0
    if q != 0.0:
        r1 = q / b
        r2 = g0 / q
        if 0.0 < r1 < 1.0:
            fr = r1
        if 0.0 < r2 < 1.0 and r2 < fr:
            fr = r2
    return fr if fr < 1.0 else lin


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kink_frac(y, ynew, f0, h, r, nmech, nmood, nblk, theta_h, theta_c):
    """Smallest fraction of a step of size ``h`` from ``y[r]`` to ``ynew[r]`` (rows of 2-D
    arrays: a lane, or row 0; ``f0[r]`` = f at the step's start) at which a switching
    function changes sign (2 if none): LHb block total B_H − θ_H, and priming π − θ_c. The
    crossing is located on the quadratic through the start value, start slope and end value
    (:func:`_cross_frac`), so a cut lands close to the kink in one try where the switching
    function is curved."""
    fr = 2.0
    b0 = 0.0
    b1 = 0.0
    d0 = 0.0
    for j in range(nblk):
        b0 += y[r, j]
        b1 += ynew[r, j]
        d0 += f0[r, j]
    g0 = b0 - theta_h
    g1 = b1 - theta_h
    if g0 * g1 < 0.0:
        fr = min(fr, _cross_frac(g0, h * d0, g1))
    if nmood > 0:
        g0 = y[r, nmech + 2] - theta_c
        g1 = ynew[r, nmech + 2] - theta_c
        if g0 * g1 < 0.0:
            fr = min(fr, _cross_frac(g0, h * f0[r, nmech + 2], g1))
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
    y2 = y.reshape((1, ny))  # row views for _kink_frac
    ynew2 = ynew.reshape((1, ny))
    Yst = np.zeros(ny)
    ns = M.shape[0]
    gam = meth[0]
    expo = -1.0 / meth[1]
    U = np.zeros((ns, ny))
    ft = np.zeros(ny)
    f0 = np.zeros(ny)
    f02 = f0.reshape((1, ny))
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
        cut = False  # the step was just shortened to end just past a kink
        h_kink = 0.0  # step size that first met the pending kink (0: none pending)
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
            if np.isfinite(en):
                # kinks of the right-hand side (max(π − θ_c, 0) of the mood layer,
                # (1 − B_H/θ_H)⁺ of LHb bursting): a step that crosses one more than
                # KINK_TAIL before its end is shortened to end KINK_TAIL/2 past it (crossing
                # located on a quadratic, :func:`_kink_frac`), so no step's error estimate
                # spans more than a sliver of the far side, and the next step starts there with
                # the far side's Jacobian (``cut`` keeps the shortened step from being
                # stretched to a nearby output or event time). Also when the error test failed:
                # that error is mostly the kink's, so cutting beats shrinking blindly. Once past
                # the kink, the step size that first met it applies again (``h_kink``). Before
                # (steps ended 1e-6 before the kink, crossed it in a ~1e-7 h step and grew back
                # ×5 per step) a kink took ~24 attempts; now ~3 (docs/benchmarks.md, "Ninth
                # pass").
                fr = _kink_frac(y2, ynew2, f02, h, 0, nmech, nmood, nblk, P[THETA_H], mc[9])
                if fr < 1.0 and (1.0 - fr) * h > KINK_TAIL:
                    if h_kink == 0.0:
                        h_kink = h
                    h = fr * h + 0.5 * KINK_TAIL
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
                if h_kink > 0.0:
                    # past the kink (or a cut that did not reach it): the step size before it
                    h = max(h, h_kink)
                    h_kink = 0.0
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




# ------------------------------------------------------------------ lock-step lanes
#: patients integrated in lock-step by :func:`_course_lanes` (one step attempt per lane per
#: iteration; the factorisation, block solves, stage sums and error norm run with the lane
#: index innermost, so the CPU overlaps the independent dependency chains of the lanes)
LANES = 8


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blk_factor_lanes(J, inv, order, bfirst, blast, lptr, lcols, Wp, piv, lval, dinv, mval,
                      nmech, mptr, mcols, ok):
    """:func:`_blk_factor` for every lane at once: ``J`` (lane, ny, ny), ``inv`` (lane,);
    flat lower entries ``lval`` (entry, lane), reciprocal pivots ``dinv`` (row, lane), the mood
    rows' lower entries ``mval`` (entry, lane); a larger diagonal block is LU-factored with
    partial pivoting in ``Wp`` (row, column, lane), pivots ``piv`` (row, lane); every lane is
    processed, active or not (values of an idle lane are not used). ``ok[lane]`` False where
    a pivot is zero or not finite. The same operations as :func:`_blk_factor` per lane (same
    results)."""
    for ln in range(LANES):
        ok[ln] = True
    n = order.shape[0]
    for a in range(n):
        ia = order[a]
        for q in range(lptr[a], lptr[a + 1]):
            jc = order[lcols[q]]
            for ln in range(LANES):
                lval[q, ln] = -J[ln, ia, jc]
        a0 = bfirst[a]
        if a0 == blast[a]:
            for ln in range(LANES):
                d = inv[ln] - J[ln, ia, ia]
                if d == 0.0 or not np.isfinite(d):
                    ok[ln] = False
                dinv[a, ln] = 1.0 / d
            continue
        if a != a0:
            continue
        a1 = blast[a] + 1
        for r in range(a0, a1):
            ir = order[r]
            for c in range(a0, a1):
                jc = order[c]
                for ln in range(LANES):
                    Wp[r, c, ln] = -J[ln, ir, jc]
            for ln in range(LANES):
                Wp[r, r, ln] += inv[ln]
        for k in range(a0, a1):
            for ln in range(LANES):
                p = k
                best = abs(Wp[k, k, ln])
                for i in range(k + 1, a1):
                    if abs(Wp[i, k, ln]) > best:
                        best = abs(Wp[i, k, ln])
                        p = i
                if best == 0.0 or not np.isfinite(best):
                    ok[ln] = False  # (this lane's values below are not used)
                piv[k, ln] = p
                if p != k:
                    for j in range(a0, a1):
                        tmp = Wp[k, j, ln]
                        Wp[k, j, ln] = Wp[p, j, ln]
                        Wp[p, j, ln] = tmp
                dinv[k, ln] = 1.0 / Wp[k, k, ln]
            for i in range(k + 1, a1):
                for ln in range(LANES):
                    f = Wp[i, k, ln] * dinv[k, ln]
                    Wp[i, k, ln] = f
                    if f != 0.0:
                        for j in range(k + 1, a1):
                            Wp[i, j, ln] -= f * Wp[k, j, ln]
    for i in range(nmech, dinv.shape[0]):
        for ln in range(LANES):
            d = inv[ln] - J[ln, i, i]
            if d == 0.0 or not np.isfinite(d):
                ok[ln] = False
            dinv[i, ln] = 1.0 / d
    for r in range(mptr.shape[0] - 1):
        i = nmech + r
        for q in range(mptr[r], mptr[r + 1]):
            j = mcols[q]
            for ln in range(LANES):
                mval[q, ln] = J[ln, i, j]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _blk_solve_lanes(Wp, piv, order, bfirst, blast, lptr, lcols, lval, dinv, mval, b, u, acc,
                     nmech, mptr, mcols):
    """:func:`_blk_solve` for every lane at once, in place on ``b`` (row, lane), with the
    factors of :func:`_blk_factor_lanes`; ``u`` (row, lane) and ``acc`` (lane,) work arrays.
    The same operations in the same order as :func:`_blk_solve` per lane."""
    for a in range(nmech):
        ia = order[a]
        for ln in range(LANES):
            acc[ln] = b[ia, ln]
        for q in range(lptr[a], lptr[a + 1]):
            cq = lcols[q]
            for ln in range(LANES):
                acc[ln] -= lval[q, ln] * u[cq, ln]
        a0 = bfirst[a]
        if a0 == blast[a]:
            for ln in range(LANES):
                u[a, ln] = acc[ln] * dinv[a, ln]
            continue
        for ln in range(LANES):
            u[a, ln] = acc[ln]
        if a != blast[a]:
            continue
        a1 = a + 1
        for k in range(a0, a1):
            for ln in range(LANES):
                p = piv[k, ln]
                if p != k:
                    tmp = u[k, ln]
                    u[k, ln] = u[p, ln]
                    u[p, ln] = tmp
        for i in range(a0, a1):
            for ln in range(LANES):
                acc[ln] = u[i, ln]
            for j in range(a0, i):
                for ln in range(LANES):
                    acc[ln] -= Wp[i, j, ln] * u[j, ln]
            for ln in range(LANES):
                u[i, ln] = acc[ln]
        for i in range(a1 - 1, a0 - 1, -1):
            for ln in range(LANES):
                acc[ln] = u[i, ln]
            for j in range(i + 1, a1):
                for ln in range(LANES):
                    acc[ln] -= Wp[i, j, ln] * u[j, ln]
            for ln in range(LANES):
                u[i, ln] = acc[ln] * dinv[i, ln]
    for a in range(nmech):
        ia = order[a]
        for ln in range(LANES):
            b[ia, ln] = u[a, ln]
    for r in range(mptr.shape[0] - 1):
        i = nmech + r
        for ln in range(LANES):
            acc[ln] = b[i, ln]
        for q in range(mptr[r], mptr[r + 1]):
            j = mcols[q]
            for ln in range(LANES):
                acc[ln] += mval[q, ln] * b[j, ln]
        for ln in range(LANES):
            b[i, ln] = acc[ln] * dinv[i, ln]


# ------------------------------------------------------------------ attempt cores
# The driver :func:`_course_lanes` keeps the lanes' bookkeeping (patients, dose events,
# outputs, kink cuts, step-size control); the numerical core of a step attempt (f(t, y),
# Jacobian, ∂f/∂t, factorisation, six stages, new state, error norm) and its work arrays are
# chosen by its last argument ``step``: None, the generic loops (``kernel="lanes"``);
# :func:`step_ref` of a compiled step, the vector step generated by :mod:`ketasim._codegen`
# for the run's configuration (``kernel="codegen"``). numba compiles the driver once per type
# of ``step``, and its dead-branch pruning (before typing) removes the sections of the other
# core (``if step is None`` / ``if step is not None``; for a step through
# :class:`StepRef`'s ``literal_type``), so each kernel types, compiles and allocates only its
# own core: the code of a hand-written driver with that core.


class StepRef(types.TypeRef):
    """The numba type of a generated step passed as the driver's ``step``: a reference to the
    step's dispatcher type, a compile-time value (:func:`_call_step` calls the dispatcher as a
    constant). ``literal_type`` is what numba's dead-branch pruning looks for on an argument
    to decide ``step is None`` before typing (the plain ``TypeRef`` has none, so numba would
    type and compile the generic core too and leave it to LLVM to drop)."""

    def __init__(self, instance_type):
        super().__init__(instance_type)
        self.name = f"stepref[{instance_type}]"

    @property
    def literal_type(self):
        """Itself: a step reference is its own literal, known at compile time."""
        return self


register_model(StepRef)(models.OpaqueModel)


def step_ref(fn):
    """The compiled vector step ``fn`` as the driver's ``step`` argument (a :class:`StepRef`:
    the dispatcher itself passed as a value would be a run-time pointer, which keeps numba
    from caching the entry points on disk)."""
    return StepRef(numba.typeof(fn))


@intrinsic
def _call_step(typingctx, step, Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX):
    """Call the generated step that ``step`` (a :class:`StepRef`) refers to: a direct call of
    its compiled function (as a call of ``step8`` written in the driver would be; an
    intrinsic rather than an overload, which numba would compile and inline as a function of
    its own)."""
    if not isinstance(step, StepRef):
        return None
    fnty = step.instance_type
    argtys = (Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX)
    inner = fnty.get_call_type(typingctx, argtys, {})  # compiles the step for these types

    def codegen(context, builder, sig, args):
        context.get_function(fnty, inner)(builder, args[1:])
        return context.get_dummy_value()

    return types.void(step, *argtys), codegen


# ------------------------------------------------------------------ the lanes driver
# (cache=False: it is compiled into the cached entry points, _run_*_lanes here and
# _run_*_cg in the generated module; an entry of its own with a generated step as argument
# type would tie this module's cache index to a generated module)
@njit(cache=False, nogil=True, error_model="numpy")
def _course_lanes(p0, p1, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0,
                  kesc, mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols,
                  mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace,
                  nmood, mc, mpat, step):
    """Patients ``p0 … p1−1`` as :func:`_course` (same arguments and outputs, same algorithm
    per patient), :data:`LANES` of them in lock-step; each attempt's numerical core by the
    generic loops (``step`` None) or by the generated vector step ``step`` (see "attempt
    cores" above).

    Each lane holds one patient with its own time, step size, interval, outputs, kink cuts,
    accept/reject and Jacobian refresh (every scalar of :func:`_course`'s step control is a
    per-lane array); every iteration makes one step attempt in each active lane. In the
    generic core, right-hand sides, Jacobians and concentrations are per-lane calls; the
    factorisation, the six block solves, the stage sums and the error norm run across lanes
    with the lane index innermost (layout row × lane), so the latency-bound chains of
    different patients overlap. A lane whose patient is done takes the next one (a queue), so
    lanes stay busy until the queue is empty. Per lane the floating-point operations of the
    generic core are those of :func:`_course`, in the same order."""
    NL = LANES
    s = lam.shape[1]
    ny = y0.shape[0]
    nmech = order.shape[0]
    nf = f_idx.shape[0]
    nblk = kd0.shape[0]
    T = t_out.shape[0]
    nb = bps.shape[0]
    ns = M.shape[0]
    gam = meth[0]
    expo = -1.0 / meth[1]
    eps_t = 1e-8
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
    # states (lane × state), f(t, y) of the last attempt (also for the kink test)
    y = np.zeros((NL, ny))
    ynew = np.zeros((NL, ny))
    f0 = np.zeros((NL, ny))
    mpT = np.zeros((3, NL))
    # each core's work arrays (only those of the core compiled: see "attempt cores")
    if step is None:
        # stages (U and the factors: row × lane)
        U = np.zeros((ns, ny, NL))
        J = np.zeros((NL, ny, ny))
        Wm = np.zeros((nmech, nmech, NL))
        piv = np.zeros((nmech, NL), dtype=np.int64)
        uwork = np.zeros((ny, NL))
        acc_l = np.zeros(NL)
        en_l = np.zeros(NL)
        lval = np.zeros((lcols.shape[0], NL))
        mval = np.zeros((mcols.shape[0], NL))
        dinv = np.zeros((ny, NL))
        bfirst = np.zeros(nmech, dtype=np.int64)
        blast = np.zeros(nmech, dtype=np.int64)
        _blk_rows(bptr, bfirst, blast)
        # the right-hand side across lanes (state × lane)
        YT = np.zeros((ny, NL))
        FT = np.zeros((ny, NL))
        EA = np.zeros((ny, NL))
        ftT = np.zeros((ny, NL))
        hgl = np.zeros(NL)
        # flat views (state × lane as one index) for the stage sums
        nyl = ny * NL
        YT1 = YT.reshape(nyl)
        EA1 = EA.reshape(nyl)
        U2 = U.reshape((ns, nyl))
        ACC = np.zeros((ny, NL))
        ACC1 = ACC.reshape(nyl)
        cthT = np.zeros(nyl)
        cvec = np.zeros(nblk)
        mpv = np.zeros(3)
        cthl = np.zeros(NL)
        CT_ = np.zeros((nblk, NL))
        wr = np.zeros((12, NL))
        need_f0 = np.zeros(NL, dtype=np.bool_)
        need_ft = np.zeros(NL, dtype=np.bool_)
        ok = np.zeros(NL, dtype=np.bool_)
        inv = np.ones(NL)
        hinv = np.ones(NL)
    else:
        # the generated core's inputs and outputs (lane index last)
        Yg = np.zeros((ny, NL))
        for ln in range(NL):
            for i in range(ny):
                Yg[i, ln] = y0[i]
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
        # τ + h of the last attempt per lane and the concentrations there (the last stage's)
        cn_t = np.zeros(NL)
        cn_c = np.zeros((nblk, NL))
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
                    for i in range(s):
                        x0[ln, i] = 0.0
                        rate[ln, i] = 0.0
                    for i in range(ny):
                        y[ln, i] = y0[i]
                    if step is None:
                        for i in range(ny):
                            for j in range(ny):
                                J[ln, i, j] = 0.0
                    else:
                        for i in range(3):
                            MPg[i, ln] = mpat[p, i]
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
                            for j in range(s):
                                W_f[ln, q, j] = Vp[f_idx[q], j] * cm[ln, j]
                        if step is not None:
                            for q in range(nf):
                                XSFg[q, ln] = xs_f[ln, q]
                                FSg[q, ln] = f_scale[p, q]
                                for j in range(s):
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
        # per lane: step size for this attempt
        for ln in range(NL):
            if not act[ln]:
                continue
            te = tb[ln]
            if k_out[ln] < T and t_out[k_out[ln]] < tb[ln]:
                te = t_out[k_out[ln]]
            t_end[ln] = te
            last[ln] = False
            h_prop[ln] = h[ln]
            if t[ln] + (1.0 if cut[ln] else 1.05) * h[ln] >= te:
                h[ln] = te - t[ln]
                last[ln] = True
            tau[ln] = t[ln] - ta[ln]
        # the attempt of every active lane: f0 (f(t, y)), ynew and the error norm en
        if step is None:
            # per lane: f(t, y), Jacobian and ∂f/∂t if due (f(t, y) and the Jacobian are kept after
            # a rejection: those of the same point)
            for ln in range(NL):
                if not act[ln]:
                    continue
                p = pid[ln]
                tu = tau[ln]
                need_f0[ln] = not f0_ok[ln]
                need_ft[ln] = need_jac[ln]
                if not f0_ok[ln] or need_jac[ln]:
                    if not abs(tu - cc[ln]) <= 1e-14 * (1.0 + tu):
                        _conc_lane(tu, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
                        cc[ln] = tu
                if need_jac[ln]:
                    yl = y[ln]
                    Jl = J[ln]
                    for b in range(nblk):
                        cvec[b] = conc[ln, b]
                    jac_into(tw[ln], yl, cvec, kd0, kesc, mgf, P, Jl)
                    if nmood > 0:
                        for i in range(3):
                            mpv[i] = mpT[i, ln]
                        mood_jac(yl, nmech, mc, mpv, Jl)
                inv[ln] = 1.0 / (h[ln] * gam)
                hinv[ln] = 1.0 / h[ln]
            # f(t, y) where due (after an accepted step), across lanes
            nf0 = 0
            for ln in range(NL):
                if act[ln] and need_f0[ln]:
                    nf0 += 1
                    _gather_lane(y, conc, ln, YT, CT_)
            if nf0 > 0:
                _rhs_lanes(tw, YT, CT_, kd0, kesc, mgf, P, nmech, nmood, mc, mpT, FT, wr)
                for ln in range(NL):
                    if act[ln] and need_f0[ln]:
                        for i in range(ny):
                            f0[ln, i] = FT[i, ln]
                        f0_ok[ln] = True
            # ∂f/∂t through the exact concentrations where the Jacobian is new, across lanes
            nft = 0
            for ln in range(NL):
                if act[ln] and need_ft[ln]:
                    nft += 1
                    p = pid[ln]
                    tu = tau[ln] + eps_t
                    _conc_lane(tu, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
                    cc[ln] = tu
                    _gather_lane(y, conc, ln, YT, CT_)
            if nft > 0:
                _rhs_lanes(tw, YT, CT_, kd0, kesc, mgf, P, nmech, nmood, mc, mpT, FT, wr)
                for ln in range(NL):
                    if act[ln] and need_ft[ln]:
                        for i in range(ny):
                            ftT[i, ln] = (FT[i, ln] - f0[ln, i]) / eps_t
            # W = I/(hγ) − J of every lane, factored across lanes
            _blk_factor_lanes(J, inv, order, bfirst, blast, lptr, lcols, Wm, piv, lval, dinv,
                              mval, nmech, mptr, mcols, ok)
            for st in range(ns):
                if st == 0:
                    for ln in range(NL):
                        if not act[ln] or not ok[ln]:
                            continue
                        hg0 = h[ln] * GSUM[0]
                        for i in range(ny):
                            U[0, i, ln] = f0[ln, i] + hg0 * ftT[i, ln]
                else:
                    # stage arguments across lanes (stage sums as for the new state below),
                    # concentrations per lane, the right-hand sides across lanes
                    for i in range(ny):
                        for ln in range(NL):
                            YT[i, ln] = y[ln, i]
                    for j in range(st):
                        aj = AT[st, j]
                        for q in range(nyl):
                            YT1[q] += aj * U2[j, q]
                    for ln in range(NL):
                        if not act[ln] or not ok[ln]:
                            continue
                        p = pid[ln]
                        tq = tau[ln] + ALPHA[st] * h[ln]
                        if not abs(tq - cc[ln]) <= 1e-14 * (1.0 + tq):
                            _conc_lane(tq, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
                            cc[ln] = tq
                        for b in range(nblk):
                            CT_[b, ln] = conc[ln, b]
                    _rhs_lanes(tw, YT, CT_, kd0, kesc, mgf, P, nmech, nmood, mc, mpT, FT, wr)
                    for ln in range(NL):
                        hgl[ln] = h[ln] * GSUM[st]
                    for i in range(ny):
                        for ln in range(NL):
                            ACC[i, ln] = FT[i, ln] + hgl[ln] * ftT[i, ln]
                    for j in range(st):
                        cj = CT[st, j]
                        for ln in range(NL):
                            cthl[ln] = cj * hinv[ln]
                        for q in range(nyl):
                            cthT[q] = cthl[q % NL]
                        for q in range(nyl):
                            ACC1[q] += cthT[q] * U2[j, q]
                    for q in range(nyl):
                        U2[st, q] = ACC1[q]
                _blk_solve_lanes(Wm, piv, order, bfirst, blast, lptr, lcols, lval, dinv, mval,
                                 U[st], uwork, acc_l, nmech, mptr, mcols)
            # new states and error norms, across lanes
            # (sums over the stages with the stage outermost and the lane innermost: the
            # additions per element keep _course's order, and the lanes' chains run side by side)
            for ln in range(NL):
                en_l[ln] = 0.0
            for i in range(ny):
                for ln in range(NL):
                    YT[i, ln] = y[ln, i]
                    EA[i, ln] = 0.0
            for j in range(ns):
                mj = M[j]
                ej = E[j]
                for q in range(nyl):
                    u = U2[j, q]
                    YT1[q] += mj * u
                    EA1[q] += ej * u
            for i in range(ny):
                ati = atol[i]
                for ln in range(NL):
                    a = YT[i, ln]
                    ynew[ln, i] = a
                    sc = ati + rtol * max(abs(y[ln, i]), abs(a))
                    en_l[ln] += (EA[i, ln] / sc) ** 2
            for ln in range(NL):
                en[ln] = np.sqrt(en_l[ln] / ny) if ok[ln] else np.inf
        else:
            # per lane: the concentrations at τ (unless kept), the step's inputs; the step
            # recomputes f(t, y) and the Jacobian at every attempt (after a rejection those of the
            # same point: the same values)
            for ln in range(NL):
                if not act[ln]:
                    continue
                p = pid[ln]
                tu = tau[ln]
                if not abs(tu - cc[ln]) <= 1e-14 * (1.0 + tu):
                    _conc_lane(tu, lam, p, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
                    cc[ln] = tu
                    for b in range(nblk):
                        C0g[b, ln] = conc[ln, b]
                for i in range(ny):
                    Yg[i, ln] = y[ln, i]
                TAUg[ln] = tu
                Hg[ln] = h[ln]
            _call_step(step, Yg, MPg, TAUg, Hg, LAMg, XSFg, WFg, FSg, C0g, F0g, Ug, YNg, ENg, C1g,
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
                cn_t[ln] = tau[ln] + h[ln]
                for b in range(nblk):
                    cn_c[b, ln] = C1g[b, ln]
        for ln in range(NL):
            if act[ln] and need_jac[ln]:  # the attempt's Jacobian was a new one
                n_jac[ln] += 1
                need_jac[ln] = False
                since_jac[ln] = 0
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
                if step is not None:  # the concentrations at t + h, kept
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


# ------------------------------------------------------------------ entry points
#: the attempt core of the entry points below (:func:`_course_lanes`' ``step``): None, the
#: generic loops. :func:`ketasim._codegen.codegen_kernels` compiles the same entry points
#: again (their source text, from here to the end of this file) in the generated module of a
#: configuration, where ``STEP`` is the generated vector step.
STEP = None


@njit(cache=True, parallel=True, error_model="numpy")
def _run_batch_lanes(ng, bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                     mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols, mptr,
                     mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace, nmood,
                     mc, mpat):
    """:func:`_course_lanes` on ``ng`` contiguous groups of patients in parallel (one group
    per thread: each its own queue)."""
    n = lam.shape[0]
    for g in prange(ng):
        _course_lanes(g * n // ng, (g + 1) * n // ng, bps, wmid, drate, dbol, lam, V, Vinv,
                      f_idx, f_blk, f_scale, kd0, kesc, mgf, P, y0, t_out, rtol, atol,
                      jac_every, order, bptr, lptr, lcols, mptr, mcols, AT, CT, M, E, ALPHA,
                      GSUM, meth, ys, xs, peak, stats, trace, nmood, mc, mpat, STEP)


@njit(cache=True, nogil=True, error_model="numpy")
def _run_serial_lanes(bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
                      mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr, lptr, lcols,
                      mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak, stats, trace,
                      nmood, mc, mpat):
    _course_lanes(0, lam.shape[0], bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk,
                  f_scale, kd0, kesc, mgf, P, y0, t_out, rtol, atol, jac_every, order, bptr,
                  lptr, lcols, mptr, mcols, AT, CT, M, E, ALPHA, GSUM, meth, ys, xs, peak,
                  stats, trace, nmood, mc, mpat, STEP)
