"""Thirteenth pass, stage 1: the generated RODAS4 attempt (``codegen13_gen.py``) against the
shipped kernel's operations for one attempt, on the same inputs (states and PK of 8 bench
patients taken from a real course), in isolation: agreement of the stages, new states and
error norms, and CPU ns per lane-attempt. Also the shipped kernel's whole cost per
lane-attempt (CPU per course / attempts per course, one thread, ``--n`` bench patients).

    python benchmarks/codegen13_step.py --reps 5 --calls 20000 [--variants fd:libm,exact:vec]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from numba import njit

import ketasim.batch as B
from ketasim import _codegen as G
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.pk.fast import generated_module

K = B._kernels()
_conc_lane = K._conc_lane
_rhs_lanes = K._rhs_lanes
_gather_lane = K._gather_lane
_blk_factor_lanes = K._blk_factor_lanes
_blk_solve_lanes = K._blk_solve_lanes
_blk_rows = K._blk_rows
mood_jac = K.mood_jac
jac_into = K.jac_into
NL = K.LANES


@njit(nogil=True, error_model="numpy")
def shipped_attempt(tau, h, lam, xs_f, W_f, f_blk, f_scale, c0, y, kd0, kesc, mgf, P, nmech,
                    nmood, mc, mpT, tw, order, bptr, lptr, lcols, mptr, mcols, AT, CT, M, E,
                    ALPHA, GSUM, gam, rtol, atol, U, f0, ynew, en, ncalls):
    """The operations of one attempt of ``_course_lanes`` for all 8 lanes (fresh Jacobian and
    f(t, y), the concentrations at τ known), copied from the kernel; repeated ``ncalls``
    times (work arrays allocated once)."""
    ny = y.shape[1]
    ns = M.shape[0]
    nblk = kd0.shape[0]
    eps_t = 1e-8
    conc = np.zeros((NL, nblk))
    ework = np.zeros(lam.shape[1])
    J = np.zeros((NL, ny, ny))
    Wm = np.zeros((nmech, nmech, NL))
    piv = np.zeros((nmech, NL), dtype=np.int64)
    uwork = np.zeros((ny, NL))
    acc_l = np.zeros(NL)
    en_l = np.zeros(NL)
    lval = np.zeros((lcols.shape[0], NL))
    mval = np.zeros((mcols.shape[0], NL))
    dinv = np.zeros((ny, NL))
    ok = np.zeros(NL, dtype=np.bool_)
    bfirst = np.zeros(nmech, dtype=np.int64)
    blast = np.zeros(nmech, dtype=np.int64)
    _blk_rows(bptr, bfirst, blast)
    YT = np.zeros((ny, NL))
    FT = np.zeros((ny, NL))
    EA = np.zeros((ny, NL))
    ftT = np.zeros((ny, NL))
    hgl = np.zeros(NL)
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
    inv = np.zeros(NL)
    hinv = np.zeros(NL)
    cc = np.zeros(NL)
    for _ in range(ncalls):
        for ln in range(NL):
            for b in range(nblk):
                conc[ln, b] = c0[b, ln]
            cc[ln] = tau[ln]
        for ln in range(NL):
            yl = y[ln]
            Jl = J[ln]
            for b in range(nblk):
                cvec[b] = conc[ln, b]
            jac_into(tw[ln], yl, cvec, kd0, kesc, mgf, P, Jl)
            for i in range(3):
                mpv[i] = mpT[i, ln]
            mood_jac(yl, nmech, mc, mpv, Jl)
            inv[ln] = 1.0 / (h[ln] * gam)
            hinv[ln] = 1.0 / h[ln]
        for ln in range(NL):
            _gather_lane(y, conc, ln, YT, CT_)
        _rhs_lanes(tw, YT, CT_, kd0, kesc, mgf, P, nmech, nmood, mc, mpT, FT, wr)
        for ln in range(NL):
            for i in range(ny):
                f0[ln, i] = FT[i, ln]
        for ln in range(NL):
            tu = tau[ln] + eps_t
            _conc_lane(tu, lam, ln, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
            cc[ln] = tu
            _gather_lane(y, conc, ln, YT, CT_)
        _rhs_lanes(tw, YT, CT_, kd0, kesc, mgf, P, nmech, nmood, mc, mpT, FT, wr)
        for ln in range(NL):
            for i in range(ny):
                ftT[i, ln] = (FT[i, ln] - f0[ln, i]) / eps_t
        _blk_factor_lanes(J, inv, order, bfirst, blast, lptr, lcols, Wm, piv, lval, dinv,
                          mval, nmech, mptr, mcols, ok)
        for st in range(ns):
            if st == 0:
                for ln in range(NL):
                    hg0 = h[ln] * GSUM[0]
                    for i in range(ny):
                        U[0, i, ln] = f0[ln, i] + hg0 * ftT[i, ln]
            else:
                for i in range(ny):
                    for ln in range(NL):
                        YT[i, ln] = y[ln, i]
                for j in range(st):
                    aj = AT[st, j]
                    for q in range(nyl):
                        YT1[q] += aj * U2[j, q]
                for ln in range(NL):
                    tq = tau[ln] + ALPHA[st] * h[ln]
                    if not abs(tq - cc[ln]) <= 1e-14 * (1.0 + tq):
                        _conc_lane(tq, lam, ln, xs_f, W_f, ln, f_blk, f_scale, conc, ework)
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


def default_config(n: int = 16):
    """The configuration and kernel arguments of ``ketasim bench``'s fast path (bench arm,
    default hypotheses, no interventions), captured from a call of the shipped kernel."""
    args = G.captured_args(bench_arm(), bench_patients(n, 0), visits_h())
    d = dict(zip(G.ARG_NAMES, args, strict=True))
    return G.config_of(d), d


def real_inputs(d, t_rel: float, h_lane, which: int, patients):
    """States and PK of 8 bench patients ``t_rel`` h after the start of dose ``which``
    (from a shipped run with an output there), in the layouts of both kernels."""
    bps = d["bps"]
    # dose starts: break points where some rate goes up
    starts = [k for k in range(len(bps)) if np.any(d["drate"][:, k] > 0)]
    k0 = starts[which]
    t_abs = float(bps[k0] + t_rel)
    k = int(np.searchsorted(bps, t_abs, side="right") - 1)
    vis = np.array([0.0, t_abs, float(bps[-1])])
    a = G.captured_args(bench_arm(), patients, vis)
    ys, xs = a[32], a[33]
    lamA, VA, ViA, drate, f_idx, f_scale = a[4], a[5], a[6], a[2], a[7], a[9]
    mpat = a[39]
    n = NL
    s = lamA.shape[1]
    nf = len(f_idx)
    y = ys[:n, 1].copy()
    lam = lamA[:n].copy()
    xs_f = np.zeros((n, nf))
    W_f = np.zeros((n, nf, s))
    for ln in range(n):
        rate = drate[ln, :k + 1].sum(axis=0)
        x0 = xs[ln, 1]
        tmp = -(ViA[ln] @ rate) / lam[ln]
        xss = VA[ln] @ tmp
        cm = ViA[ln] @ (x0 - xss)
        xs_f[ln] = xss[f_idx]
        W_f[ln] = VA[ln][f_idx, :] * cm[None, :]
    fsc = f_scale[:n].copy()
    tau = np.zeros(n)  # the interval restarts at the output time (same PK trajectory)
    h = np.asarray(h_lane, dtype=float)
    c0 = np.zeros((len(d["kd0"]), n))
    for ln in range(n):
        for i in range(nf):
            c0[d["f_blk"][i], ln] += fsc[ln, i] * max(xs_f[ln, i] + W_f[ln, i].sum(), 0.0)
    return dict(y=y, lam=lam, xs_f=xs_f, W_f=W_f, f_scale=fsc, tau=tau, h=h, c0=c0,
                mpT=np.ascontiguousarray(mpat[:n].T))


def run_shipped(d, inp, ncalls):
    ny = inp["y"].shape[1]
    ns = len(d["M"])
    nblk = len(d["kd0"])
    U = np.zeros((ns, ny, NL))
    f0 = np.zeros((NL, ny))
    ynew = np.zeros((NL, ny))
    en = np.zeros(NL)
    shipped_attempt(inp["tau"], inp["h"], inp["lam"], inp["xs_f"], inp["W_f"], d["f_blk"],
                    inp["f_scale"], inp["c0"], inp["y"], d["kd0"], d["kesc"],
                    np.ascontiguousarray(d["mgf"]), d["P"], nblk + 14, d["nmood"], d["mc"],
                    inp["mpT"], np.zeros(NL), d["order"], d["bptr"], d["lptr"], d["lcols"],
                    d["mptr"], d["mcols"], d["AT"], d["CT"], d["M"], d["E"], d["ALPHA"],
                    d["GSUM"], float(d["meth"][0]), d["rtol"], d["atol"], U, f0, ynew, en,
                    ncalls)
    return dict(U=U, f0=f0.T.copy(), ynew=ynew.T.copy(), en=en)


def gen_module(cfg, dfdt, exp):
    src = G.emit_ir(cfg, dfdt) if exp == "ir" else G.emit(cfg, dfdt, exp)
    src += '''

@njit(cache=True, nogil=True, error_model="numpy")
def loop(n, Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX):
    for _ in range(n):
        step8(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YNEW, EN, C1, EX)
        H[0] = H[0] + 0.0 * EN[0]  # a true dependence: no call can be hoisted or merged
'''
    return generated_module(f"codegen13_{dfdt}_{exp}", src)


def run_gen(mod, inp, ncalls, ns=6):
    y = np.ascontiguousarray(inp["y"].T)
    ny = y.shape[0]
    nblk = inp["c0"].shape[0]
    F0 = np.zeros((ny, NL))
    U = np.zeros((ns, ny, NL))
    YN = np.zeros((ny, NL))
    EN = np.zeros(NL)
    C1 = np.zeros((nblk, NL))
    EX = np.zeros((mod.NEXP, NL))
    args = (y, inp["mpT"], inp["tau"], inp["h"], np.ascontiguousarray(inp["lam"].T),
            np.ascontiguousarray(inp["xs_f"].T), np.ascontiguousarray(
                np.moveaxis(inp["W_f"], 0, 2)), np.ascontiguousarray(inp["f_scale"].T),
            inp["c0"], F0, U, YN, EN, C1, EX)
    mod.loop(ncalls, *args)
    return dict(U=U, f0=F0, ynew=YN, en=EN)


def rel(a, b):
    """Largest difference relative to the largest magnitude of the same array, per lane."""
    a, b = np.asarray(a), np.asarray(b)
    scale = np.max(np.abs(b), axis=tuple(range(b.ndim - 1)), keepdims=True) + 1e-300
    return float(np.max(np.abs(a - b) / scale))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--variants", default="fd:libm,fd:vec,exact:libm,exact:vec")
    ap.add_argument("--skip-course", action="store_true")
    a = ap.parse_args()
    cfg, d = default_config()
    pts = bench_patients(NL, 0)
    sets = {"infusion (0.3 h into dose 2, h 0.01–0.05 h)":
            real_inputs(d, 0.3, np.linspace(0.01, 0.05, NL), 1, pts),
            "recovery (30 h after dose 2, h 0.5–2 h)":
            real_inputs(d, 30.0, np.linspace(0.5, 2.0, NL), 1, pts)}
    variants = [tuple(v.split(":")) for v in a.variants.split(",")]
    mods = {}
    for dfdt, exp in variants:
        t0 = time.time()
        mods[dfdt, exp] = gen_module(cfg, dfdt, exp)
        run_gen(mods[dfdt, exp], next(iter(sets.values())), 1)
        print(f"generated {dfdt}/{exp}: loaded/compiled in {time.time() - t0:.1f} s", flush=True)
    run_shipped(d, next(iter(sets.values())), 1)
    print("\nagreement with the shipped attempt (largest |a − b| / max |b| over the states, "
          "per lane):")
    for nm, inp in sets.items():
        ref = run_shipped(d, inp, 1)
        print(f"  {nm}: shipped error norms {np.array2string(ref['en'], precision=3)}")
        for key, mod in mods.items():
            g = run_gen(mod, inp, 1)
            print(f"    {key[0]}/{key[1]}: f0 {rel(g['f0'], ref['f0']):.1e}, stages "
                  + ", ".join(f"{rel(g['U'][st], ref['U'][st]):.1e}" for st in range(6))
                  + f"; ynew {rel(g['ynew'], ref['ynew']):.1e}; en {rel(g['en'], ref['en']):.1e}")
    print("\nCPU ns per lane-attempt, isolated (median of reps; each rep "
          f"{a.calls} attempts of 8 lanes), load {os.getloadavg()[0]:.2f}:")
    inp = next(iter(sets.values()))
    res = {"shipped ops": []} | {f"gen {k[0]}/{k[1]}": [] for k in mods}
    for _ in range(a.reps):
        c = time.process_time()
        run_shipped(d, inp, a.calls)
        res["shipped ops"].append(1e9 * (time.process_time() - c) / (a.calls * NL))
        for k, mod in mods.items():
            c = time.process_time()
            run_gen(mod, inp, a.calls)
            res[f"gen {k[0]}/{k[1]}"].append(1e9 * (time.process_time() - c) / (a.calls * NL))
    base = np.array(res["shipped ops"])
    for k, r in res.items():
        r = np.array(r)
        print(f"  {k}: median {np.median(r):.0f} ns (min {r.min():.0f}); shipped ops / this, "
              f"paired median {np.median(base / r):.2f}")
    if not a.skip_course:
        arm, v, P = bench_arm(), visits_h(), bench_patients(a.n, 0)
        B._fast_run(arm, P[:16], v, threads=1)
        cpu = []
        for _ in range(a.reps):
            c = time.process_time()
            _, r = B._fast_run(arm, P, v, threads=1)
            cpu.append(1e6 * (time.process_time() - c) / a.n)
        att = float(np.mean(r.stats[:, 0] + r.stats[:, 1]))
        med = float(np.median(cpu))
        print(f"\nshipped kernel, whole course: CPU {med:.0f} µs per course (min {min(cpu):.0f}),"
              f" {att:.1f} attempts per course: {1e3 * med / att:.0f} ns per lane-attempt")


if __name__ == "__main__":
    main()
