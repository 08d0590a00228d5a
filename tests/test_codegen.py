"""The code-generated vector step (``kernel="codegen"``, :mod:`ketasim._codegen`) against the
shipped equations and kernel: one generated RODAS4 attempt against the same attempt written
out in NumPy with the kernel's right-hand side and analytic Jacobian (dense solves), the whole
fast path against the lanes kernel, and the fallback where the generated step does not
apply."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from _mech_cases import MECHANISM_CASES
from ketasim import _codegen as G
from ketasim import batch
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.mechanism import Hypotheses, Interventions, MechanismParams, jac_into
from ketasim.pk.fast import generated_module

WINDOWED = {"rapamycin", "nbqx", "anisomycin"}


def _config(mp, s, mc):
    co = batch.METHODS["rodas4"]
    kd0, kesc, mgf = mp.blocker_arrays()
    nb = len(kd0)
    ny = len(mp.baseline()) + 4
    return G.Config(kd0=kd0, kesc=kesc, mgf=np.ascontiguousarray(mgf), P=mp.packed(), mc=mc,
                    f_blk=np.arange(nb), atol=np.full(ny, 1e-6), rtol=1e-4, AT=co["AT"],
                    CT=co["CT"], M=co["M"], E=co["E"], ALPHA=co["ALPHA"], GSUM=co["GSUM"],
                    meth=co["meth"], nmood=4, s=s)


def _attempt_numpy(k, cfg, mp_, y, lam, xsf, wf, fs, tau, h):
    """One RODAS4 attempt of one lane, written out: f, the analytic Jacobian (jac_into,
    mood_jac), ∂f/∂t by the kernel's forward difference, dense solves."""
    kd0, kesc, mgf, P, mc = cfg.kd0, cfg.kesc, np.ascontiguousarray(cfg.mgf), cfg.P, cfg.mc
    nb = len(kd0)
    ny = len(y)
    nmech = ny - 4

    def conc(tq):
        e = np.exp(lam * tq)
        c = np.zeros(nb)
        for i in range(len(xsf)):
            c[i] += fs[i] * max(xsf[i] + float(np.sum(wf[i] * e)), 0.0)
        return c

    def f(yv, c):
        d = np.zeros(ny)
        k._rhs(0.0, yv.copy(), c, kd0, kesc, mgf, P, nmech, 4, mc, mp_.copy(), d)
        return d

    c0 = conc(tau)
    f0 = f(y, c0)
    J = np.zeros((ny, ny))
    jac_into(0.0, y.copy(), c0, kd0, kesc, mgf, P, J)
    k.mood_jac(y.copy(), nmech, mc, mp_.copy(), J)
    ft = (f(y, conc(tau + 1e-8)) - f0) / 1e-8
    W = np.eye(ny) / (h * cfg.meth[0]) - J
    U = []
    for st in range(6):
        if st == 0:
            b = f0 + h * cfg.GSUM[0] * ft
        else:
            Y = y.copy()
            for j in range(st):
                Y = Y + cfg.AT[st, j] * U[j]
            b = f(Y, conc(tau + cfg.ALPHA[st] * h)) + h * cfg.GSUM[st] * ft
            for j in range(st):
                b = b + cfg.CT[st, j] / h * U[j]
        U.append(np.linalg.solve(W, b))
    ynew = y + sum(cfg.M[j] * U[j] for j in range(6))
    err = sum(cfg.E[j] * U[j] for j in range(6))
    sc = cfg.atol + cfg.rtol * np.maximum(np.abs(y), np.abs(ynew))
    return f0, np.array(U), ynew, np.sqrt(np.mean((err / sc) ** 2)), c0


@pytest.mark.parametrize("blockers,hyp,intv", MECHANISM_CASES)
def test_generated_attempt_equals_the_attempt_written_out(blockers, hyp, intv):
    """For every mechanism case whose configuration the generator accepts (no windowed
    intervention), 8 lanes of random states (LHb block above 1 and below θ_H, proteins below
    baseline, Z below its floor, bursting above 1), PK and step sizes from 0.003 to 3 h: f
    bit for bit; stages to ≤ 2e-8 of the stage's largest entry (measured ≤ 4.4e-9: the
    forward difference for ∂f/∂t turns the ulp differences between the generated exp and
    libm's, and between block and dense LU, into ~1e-8·h·|f_t|), new state to ≤ 1e-9 and
    error norm to ≤ 1e-8 relative. (On states of a real course the differences are
    1e-13–5e-11: benchmarks/codegen13_step.py.)"""
    k = batch._kernels()
    mp = MechanismParams.from_cards(blockers, Hypotheses.parse(hyp), Interventions.parse(intv))
    mc = np.array([3.0, 2.0, 1.5, 0.4, 0.05, 0.8, 0.01, 0.003, 2.0, 0.3])
    s = 3
    cfg = _config(mp, s, mc)
    if set((intv or "").split(",")) & WINDOWED:
        from ketasim.mechanism import _I

        assert any(cfg.P[_I[n]] != 0.0 for n in G._WINDOWED)
        return
    mod = generated_module("test_codegen_step", G.emit_ir(cfg, "fd", name="step8"))
    nb = len(blockers)
    y0 = np.concatenate([mp.baseline(), np.zeros(4)])
    ny = len(y0)
    nmech = ny - 4
    rng = np.random.default_rng(5)
    L = 8
    Y = np.zeros((ny, L))
    for ln in range(L):
        y = y0 * np.exp(0.3 * rng.standard_normal(ny)) + 0.05 * rng.random(ny)
        y[:nb] = rng.random(nb) * 0.2 / nb
        y[nmech:] = rng.uniform(0.0, 0.6, 4)
        if ln % 4 == 1:
            y[:nb] = 0.6
        if ln % 4 == 2:
            y[nb + 7] = 0.9
            y[nb + 12] = -1.0
            y[nb + 11] = 1.2
        Y[:, ln] = y
    MP = rng.uniform(0.2, 2.0, (3, L))
    TAU = rng.uniform(0.0, 10.0, L)
    H = np.geomspace(0.003, 3.0, L)
    LAM = -rng.uniform(0.05, 20.0, (s, L))
    XSF = rng.uniform(0.0, 0.5, (nb, L))
    XSF[:, 3] = -2.0  # a concentration clamped at zero
    WF = rng.uniform(-0.5, 1.0, (nb, s, L))
    FS = rng.uniform(0.5, 2.0, (nb, L))
    C0 = np.zeros((nb, L))
    ref = [_attempt_numpy(k, cfg, MP[:, ln], Y[:, ln], LAM[:, ln], XSF[:, ln], WF[:, :, ln],
                          FS[:, ln], TAU[ln], H[ln]) for ln in range(L)]
    for ln in range(L):
        C0[:, ln] = ref[ln][4]
    F0, U, YN, EN, C1 = (np.zeros((ny, L)), np.zeros((6, ny, L)), np.zeros((ny, L)),
                         np.zeros(L), np.zeros((nb, L)))
    mod.step8(Y, MP, TAU, H, LAM, XSF, WF, FS, C0, F0, U, YN, EN, C1, np.zeros((1, L)))
    for ln in range(L):
        f0, Ur, ynew, en, _ = ref[ln]
        assert np.array_equal(F0[:, ln], f0), ln
        for st in range(6):
            d = np.max(np.abs(U[st, :, ln] - Ur[st])) / np.max(np.abs(Ur[st]))
            assert d <= 2e-8, (ln, st, d)
        assert np.max(np.abs(YN[:, ln] - ynew) / (np.abs(ynew) + 1e-12)) <= 1e-9, ln
        assert abs(EN[ln] - en) <= 1e-8 * en, (ln, EN[ln], en)


def test_vector_exp():
    """The generated step's branch-free exponential: within 2 ulp of libm from −745 to 709,
    at most the smallest subnormal (5e-324) below."""
    from llvmlite import ir  # noqa: F401  (the generated module needs it)

    src = G._IR_HEAD.replace("{lanes}", "8").split("@intrinsic")[0] + '''
@intrinsic
def _vx(typingctx, X, OUT):
    sig = types.void(X, OUT)

    def codegen(context, b, signature, args):
        px = b.bitcast(context.make_array(signature.args[0])(context, b, args[0]).data,
                       _V.as_pointer())
        po = b.bitcast(context.make_array(signature.args[1])(context, b, args[1]).data,
                       _V.as_pointer())
        b.store(_vexp(b, b.load(px, align=8)), po, align=8)
        return context.get_dummy_value()
    return sig, codegen


@njit
def vx(X, OUT):
    for q in range(0, X.shape[0], 8):
        _vx(X[q:q + 8], OUT[q:q + 8])
'''
    mod = generated_module("test_codegen_vexp", src)
    x = np.concatenate([np.linspace(-745.0, 709.0, 200_000), -np.geomspace(1e-300, 700, 8000),
                        np.geomspace(1e-300, 700, 8000), [0.0, -0.0, -1e-20, 1e-20]])
    x = np.concatenate([x, np.zeros((-len(x)) % 8)])
    out = np.zeros_like(x)
    mod.vx(x, out)
    ref = np.exp(x)
    ulp = np.abs(out - ref) / np.spacing(ref)
    assert np.max(ulp[ref > 1e-300]) <= 2.0
    z = np.zeros(8)
    mod.vx(np.full(8, -800.0), z)
    assert np.all(z <= 5e-324)


@pytest.mark.parametrize("threads", [1, 2])
def test_codegen_kernel_follows_lanes_on_bench_patients(monkeypatch, threads):
    """The fast path with the generated step takes the same steps as the lanes kernel (to a
    step or two per course, where a rounding difference flips an accept or a kink cut) and
    gives the same scores to ≤ 1e-5 relative (measured: 5.4e-7 on 200 patients)."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs 2 numba threads")
    arm, v, pts = bench_arm(), visits_h(), bench_patients(27, 0)
    out = {}
    for kn in ("lanes", "codegen"):
        monkeypatch.setattr(batch, "KERNEL", kn)
        out[kn] = batch._fast_run(arm, pts, v, threads=threads)
    (sa, ra), (sb, rb) = out["lanes"], out["codegen"]
    assert ra.metadata["kernel"] == "lanes" and rb.metadata["kernel"] == "codegen"
    na, nb_ = ra.stats[:, :2].sum(1), rb.stats[:, :2].sum(1)
    assert np.max(np.abs(na - nb_)) <= 3
    assert abs(na.mean() - nb_.mean()) <= 0.5
    for key in ("madrs", "hamd"):
        if key in sa:
            a, b = np.asarray(sa[key]), np.asarray(sb[key])
            assert np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-3)) <= 1e-5, key
    for sp in ra.plasma_ng_per_ml:
        assert np.allclose(rb.plasma_ng_per_ml[sp], ra.plasma_ng_per_ml[sp], rtol=1e-12)


def test_codegen_falls_back_to_lanes_where_it_does_not_apply():
    """A windowed intervention (rapamycin) or no mood states: the lanes kernel runs (same
    results, to the bit); two patients with mood states: the generated step."""
    from ketasim.engine import Course
    from ketasim.pk import Covariates
    from ketasim.regimen import Regimen

    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", schedule="every 3.5 d x 2")
    t = np.arange(0.0, 170.0, 12.0)
    covs = Covariates(weight_kg=np.array([60.0, 80.0, 95.0]), age_years=np.array([30.0] * 3),
                      sex="female")
    for intv in ("rapamycin", ""):
        res = {kn: batch.simulate_batch([Course("ketamine", reg)], t, covs,
                                        interventions=Interventions.parse(intv), kernel=kn)
               for kn in ("lanes", "codegen")}
        assert res["codegen"].metadata["kernel"] == "lanes"  # no mood states either way
        assert np.array_equal(res["codegen"].stats, res["lanes"].stats)
        for key, v in res["lanes"].readouts.items():
            assert np.array_equal(res["codegen"].readouts[key], v), key
    # applicability of the kernel arguments
    args = _captured_args()
    assert G.applicable(args) is None
    bad = list(args)
    bad[18] = 2  # Jacobian every 2 steps
    assert "jac_every" in G.applicable(bad)
    bad = list(args)
    bad[37] = 0
    assert G.applicable(bad) is not None


def _captured_args():
    return G.captured_args(bench_arm(), bench_patients(2, 0), visits_h())


def test_codegen_results_do_not_depend_on_the_batch(monkeypatch):
    """Each lane's arithmetic is its own (the vector step is element-wise), so a patient's
    scores and steps are the same to the bit alone (one lane busy, seven idle) and in a batch
    of 9 on two threads."""
    monkeypatch.setattr(batch, "KERNEL", "codegen")
    arm, v, pts = bench_arm(), visits_h(), bench_patients(9, 0)
    threads = 2 if numba.config.NUMBA_NUM_THREADS >= 2 else 1
    s9, r9 = batch._fast_run(arm, pts, v, threads=threads)
    s1, r1 = batch._fast_run(arm, [pts[6]], v, threads=1)
    assert r9.metadata["kernel"] == "codegen" and r1.metadata["kernel"] == "codegen"
    assert np.array_equal(r1.stats[0], r9.stats[6])
    assert np.array_equal(s1["madrs"][0], s9["madrs"][6])
