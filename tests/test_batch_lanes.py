"""The lock-step lanes kernel (``_course_lanes``) against the one-patient-at-a-time kernel
(``_course``): the same algorithm per patient, the same floating-point operations in the same
order, so the outputs agree to rounding (here: exactly) and the step counts are equal."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from _mech_cases import MECHANISM_CASES
from ketasim import batch
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.engine import Course
from ketasim.errors import KetasimError
from ketasim.mechanism import Hypotheses, Interventions
from ketasim.pk import Covariates
from ketasim.regimen import Regimen

RTOL = 1e-12


def _close(a, b, name):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, name
    if not np.issubdtype(a.dtype, np.floating):
        assert np.array_equal(a, b), name
        return
    scale = np.maximum(np.abs(b), 1e-300)
    assert np.all(np.abs(a - b) <= RTOL * scale + 1e-300), (
        f"{name}: max rel diff {np.max(np.abs(a - b) / scale):.3g}")


def _same(ra, rb):
    assert np.array_equal(ra.stats, rb.stats)
    for k in ra.readouts:
        _close(rb.readouts[k], ra.readouts[k], k)
    for k in ra.plasma_ng_per_ml:
        _close(rb.plasma_ng_per_ml[k], ra.plasma_ng_per_ml[k], f"plasma {k}")
    for k in ra.brain_free_uM:
        _close(rb.brain_free_uM[k], ra.brain_free_uM[k], f"brain {k}")
    for k in ra.peak_brain_free_uM:
        _close(rb.peak_brain_free_uM[k], ra.peak_brain_free_uM[k], f"peak {k}")
    if ra.mood_states is not None:
        _close(rb.mood_states, ra.mood_states, "mood states")


@pytest.mark.parametrize("threads", [1, 2])
def test_lanes_equal_course_kernel_on_bench_patients(monkeypatch, threads):
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs 2 numba threads")
    arm, v, pts = bench_arm(), visits_h(), bench_patients(20, 0)
    out = {}
    for k in ("course", "lanes"):
        monkeypatch.setattr(batch, "KERNEL", k)
        out[k] = batch._fast_run(arm, pts, v, threads=threads)
    (sa, ra), (sb, rb) = out["course"], out["lanes"]
    assert ra.metadata["kernel"] == "course" and rb.metadata["kernel"] == "lanes"
    _same(ra, rb)
    for k in sa:
        _close(sb[k], sa[k], k)


def test_lanes_equal_course_with_interventions_hypotheses_and_ragged_n():
    """11 patients (not a multiple of the lane count), mixed sex (two covariate groups),
    per-patient PK factors, the rapamycin window (break points before the first dose) and a
    hypothesis; two threads where available (two queues), plus the trace of patient 0."""
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", schedule="every 3.5 d x 3")
    t = np.unique(np.round(np.concatenate([np.arange(0.0, 200.0, 2.5),
                                           np.arange(0.0, 3.0, 0.25)]), 9))
    n = 11
    rng = np.random.default_rng(7)
    covs = [Covariates(weight_kg=float(w), age_years=float(a), sex=("female" if i % 3 else "male"))
            for i, (w, a) in enumerate(zip(rng.uniform(50, 100, n), rng.uniform(20, 70, n),
                                           strict=True))]
    iiv = {"k10": np.exp(0.3 * rng.standard_normal(n)),
           "V1": np.exp(0.2 * rng.standard_normal(n))}
    threads = 2 if numba.config.NUMBA_NUM_THREADS >= 2 else 1
    res, tr = {}, {}
    for k in ("course", "lanes"):
        tr[k] = np.zeros((3000, 4))
        res[k] = batch.simulate_batch(
            [Course("ketamine", reg, iiv=iiv)], t, covs,
            hypotheses=Hypotheses.parse("d=1"), interventions=Interventions.parse("rapamycin"),
            threads=threads, kernel=k, trace=tr[k])
    assert res["lanes"].metadata["kernel"] == "lanes"
    _same(res["course"], res["lanes"])
    assert np.array_equal(tr["course"], tr["lanes"])
    assert tr["lanes"][0, 1] > 0.0
    # one patient always runs the one-at-a-time kernel
    one = batch.simulate_batch([Course("ketamine", reg)], t, covs[0], kernel="lanes")
    assert one.metadata["kernel"] == "course"
    with pytest.raises(KetasimError, match="kernel"):
        batch.simulate_batch([Course("ketamine", reg)], t, covs[0], kernel="simd")


@pytest.mark.parametrize("blockers,hyp,intv", MECHANISM_CASES)
def test_rhs_across_lanes_is_rhs_into_bit_for_bit(blockers, hyp, intv):
    """mechanism.rhs_lanes and the kernel's mood_rhs_lanes (the second, lane-vectorised
    definition of the equations) give, lane by lane, exactly the values of rhs_into and
    mood_rhs, on random states that put every max/min on both sides (LHb block above 1,
    proteins below baseline, Z below its floor, zero concentrations) and on times inside and
    outside the intervention window."""
    from ketasim.mechanism import _I, MechanismParams, rhs_into, rhs_lanes

    k = batch._kernels()
    mp = MechanismParams.from_cards(blockers, Hypotheses.parse(hyp), Interventions.parse(intv))
    kd0, kesc, mgf = mp.blocker_arrays()
    mgf = np.ascontiguousarray(mgf)
    P = mp.packed()
    y0 = np.concatenate([mp.baseline(), np.zeros(4)])
    nb, ny = len(blockers), len(y0)
    nmech = ny - 4
    mc = np.array([3.0, 2.0, 1.5, 0.4, 0.05, 0.8, 0.01, 0.003, 2.0, 0.3])
    rng = np.random.default_rng(11)
    for rep in range(6):
        L = 8 + rep  # also lane counts that are not a multiple of the vector width
        Y = np.zeros((ny, L))
        C = np.zeros((nb, L))
        mpT = rng.uniform(0.2, 2.0, (3, L))
        t = rng.uniform(-1.0, 12.0, L)
        t[0] = P[_I["win_start"]] if P[_I["win_start"]] > -1e29 else 0.0  # window edge
        for ln in range(L):
            y = y0 * np.exp(0.3 * rng.standard_normal(ny)) + 0.05 * rng.random(ny)
            y[:nb] = rng.random(nb) * 0.2 / nb
            y[nmech:] = rng.uniform(0.0, 0.6, 4)
            if ln % 4 == 1:
                y[:nb] = 0.6  # LHb block total above 1 (free fraction clamped)
            if ln % 4 == 2:
                y[nb + 7] = 0.9  # synaptic proteins below baseline
                y[nb + 12] = -1.0  # Z below its floor
                y[nb + 11] = 1.2  # LHb bursting above 1
            Y[:, ln] = y
            C[:, ln] = rng.random(nb) * 2.0 * (ln % 5 != 3)
        dyL = np.full((ny, L), np.nan)
        k._rhs_lanes(t, Y, C, kd0, kesc, mgf, P, nmech, 4, mc, mpT, dyL, np.zeros((12, L)))
        for ln in range(L):
            d = np.full(ny, np.nan)
            k._rhs(t[ln], Y[:, ln].copy(), C[:, ln].copy(), kd0, kesc, mgf, P, nmech, 4, mc,
                   mpT[:, ln].copy(), d)
            assert np.array_equal(d, dyL[:, ln]), (ln, np.nonzero(d != dyL[:, ln]))
        d = np.zeros(nmech)
        rhs_into(t[0], Y[:nmech, 0].copy(), C[:, 0].copy(), kd0, kesc, mgf, P, d)
        dm = np.zeros((nmech, L))
        rhs_lanes(t, Y[:nmech].copy(), C, kd0, kesc, mgf, P, dm, np.zeros((12, L)))
        assert np.array_equal(d, dm[:, 0])
