"""The batched compiled engine (ketasim.batch) pinned to the SciPy reference (engine.simulate).

Agreement criterion, on every reported output (plasma per species, free brain µM per blocker,
every readout incl. block per population and blocker): ``|batch − ref| ≤ 1e-4·|ref| + floor``
with the absolute floor ``1e-6 × max|ref|`` of that output's time course (plus 1e-12 for
outputs that stay exactly 0), so values that have decayed to a millionth of their peak are
compared absolutely. The reference runs with tight tolerances (rtol 1e-9, atol 1e-13) so that
the comparison measures the batched engine's error, not LSODA's.
"""

from __future__ import annotations

import numpy as np
import pytest

from _mech_cases import MECHANISM_CASES
from ketasim.batch import (
    ATOL,
    RTOL,
    components_batch,
    simulate_arm_batched,
    simulate_batch,
)
from ketasim.engine import Course, simulate
from ketasim.errors import KetasimError
from ketasim.mechanism import Hypotheses, Interventions
from ketasim.pk import Covariates
from ketasim.regimen import Regimen

REL = 1e-4
FLOOR = 1e-6
REF_TOL = {"rtol": 1e-9, "atol": 1e-13}


def _course_grid(end_h: float, doses_h=(0.0,)) -> np.ndarray:
    pts = [np.arange(0.0, end_h + 1e-9, 1.0)]
    for d in doses_h:
        pts.append(d + np.arange(0.0, 6.0, 1.0 / 6.0))
    g = np.unique(np.round(np.concatenate(pts), 9))
    return g[g <= end_h]


def _assert_close(batch, i: int, ref, label: str = "") -> None:
    pairs = [(f"plasma {k}", batch.plasma_ng_per_ml[k][i], v)
             for k, v in ref.plasma_ng_per_ml.items()]
    pairs += [(f"brain {k}", batch.brain_free_uM[k][i], v) for k, v in ref.brain_free_uM.items()]
    pairs += [(k, batch.readouts[k][i], v) for k, v in ref.readouts.items()]
    assert set(batch.readouts) == set(ref.readouts)
    assert set(batch.plasma_ng_per_ml) == set(ref.plasma_ng_per_ml)
    assert set(batch.brain_free_uM) == set(ref.brain_free_uM)
    for name, a, b in pairs:
        assert a.shape == b.shape, name
        tol = REL * np.abs(b) + FLOOR * np.max(np.abs(b)) + 1e-12
        bad = np.abs(a - b) > tol
        assert not bad.any(), (
            f"{label} {name}: max |diff|/tol = {np.max(np.abs(a - b) / tol):.3g} at "
            f"t = {ref.time_h[np.argmax(np.abs(a - b) / tol)]:g} h")


def _check(courses, t, cov=None, **kw) -> None:
    b = simulate_batch(courses, t, cov or Covariates(weight_kg=70.0), **kw)
    r = simulate(courses, t, cov or Covariates(weight_kg=70.0), **kw, **REF_TOL)
    _assert_close(b, 0, r)


def test_single_iv_infusion():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    _check([Course("ketamine", reg)], _course_grid(72.0))


def test_alternative_integrator_ros34pw2():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    t = _course_grid(72.0)
    b = simulate_batch([Course("ketamine", reg)], t, method="ros34pw2", rtol=1e-5, atol=1e-9)
    r = simulate([Course("ketamine", reg)], t, Covariates(weight_kg=70.0), **REF_TOL)
    _assert_close(b, 0, r)
    assert "ROS34PW2" in b.metadata["solver"]
    with pytest.raises(KetasimError, match="method"):
        simulate_batch([Course("ketamine", reg)], t, method="euler")


def test_alternative_integrator_rodas5p():
    """Rodas5P (8 stages, order 5) meets the reference criterion, in fewer steps than RODAS4
    at the same tolerances (a wrong coefficient costs its order: more steps, or a miss)."""
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    t = _course_grid(72.0)
    tol = {"rtol": 1e-6, "atol": 1e-10}
    b = simulate_batch([Course("ketamine", reg)], t, method="rodas5p", **tol)
    r = simulate([Course("ketamine", reg)], t, Covariates(weight_kg=70.0), **REF_TOL)
    _assert_close(b, 0, r)
    assert "RODAS5P" in b.metadata["solver"]
    b4 = simulate_batch([Course("ketamine", reg)], t, method="rodas4", **tol)
    assert b.stats[0, 0] < 0.8 * b4.stats[0, 0]


def test_eight_infusions_over_28_days():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", schedule="twice weekly for 4 weeks")
    t = np.arange(0.0, 673.0, 1.0)
    b = simulate_batch([Course("ketamine", reg)], t, Covariates(weight_kg=70.0))
    r = simulate([Course("ketamine", reg)], t, Covariates(weight_kg=70.0), **REF_TOL)
    _assert_close(b, 0, r)
    # the drug did something measurable, so the comparison is not of flat lines
    assert b.readouts["spine_density"][0, -1] > 1.01
    assert b.stats[0, 0] > 100


@pytest.mark.parametrize("dose", ["56 mg", "84 mg"])
def test_intranasal_esketamine(dose):
    reg = Regimen.build("intranasal", dose)
    _check([Course("esketamine", reg, "perez-ruixo-2021")], _course_grid(48.0))


def test_oral_racemic():
    reg = Regimen.build("oral", "1 mg/kg")
    _check([Course("ketamine", reg)], _course_grid(48.0))


def test_rapamycin_window_and_hypotheses():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    t = _course_grid(48.0)
    _check([Course("ketamine", reg)], t, interventions=Interventions.parse("rapamycin"))
    for h in ("only:c", "d=1"):
        _check([Course("ketamine", reg)], t, hypotheses=Hypotheses.parse(h))


def test_genetic_intervention_baseline():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    _check([Course("ketamine", reg)], _course_grid(24.0),
           interventions=Interventions.parse(["glun2b-deletion", "nbqx"]))


def test_batch_of_different_patients_matches_each_reference():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", schedule="every 3.5 d x 2")
    t = _course_grid(120.0, (0.0, 84.0))
    covs = [Covariates(weight_kg=55.0, age_years=30.0, sex="female"),
            Covariates(weight_kg=70.0, age_years=45.0),
            Covariates(weight_kg=98.0, age_years=66.0, sex="female", race="asian"),
            Covariates(weight_kg=120.0, age_years=52.0)]
    f_cl = np.array([0.7, 1.0, 1.25, 1.6])
    f_v = np.array([1.3, 1.0, 0.8, 1.1])
    iiv = {"CL": f_cl, "k10": f_cl, "V1": f_v, "V": f_v, "Vc": f_v}
    b = simulate_batch([Course("ketamine", reg, iiv=iiv)], t, covs, threads=2)
    for i, cov in enumerate(covs):
        one = {k: float(v[i]) for k, v in iiv.items()}
        r = simulate([Course("ketamine", reg, iiv=one)], t, cov, **REF_TOL)
        _assert_close(b, i, r, label=f"patient {i}")
    peaks = b.plasma_ng_per_ml["ketamine"].max(axis=1)
    assert np.ptp(peaks) > 0.1 * peaks.mean()  # patients really differ
    # the serial kernel gives the same numbers as the parallel one
    s = simulate_batch([Course("ketamine", reg, iiv=iiv)], t, covs, threads=1)
    np.testing.assert_array_equal(s.readouts["spine_density"], b.readouts["spine_density"])


def test_tolerances_are_stated_and_used():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    t = _course_grid(24.0)
    loose = simulate_batch([Course("ketamine", reg)], t, rtol=1e-3, atol=1e-7)
    tight = simulate_batch([Course("ketamine", reg)], t)
    assert RTOL <= 1e-4 and ATOL <= 1e-8
    assert loose.stats[0, 0] < tight.stats[0, 0]
    assert f"rtol={RTOL:g}" in tight.metadata["solver"]


def test_peak_is_the_exact_maximum():
    """The peak is the maximum of the exactly known concentration (safeguarded Newton per
    dose interval), not of the output or step grid: it equals the maximum on a 1-s grid to
    1e-7 for both blockers, with outputs only at two times."""
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    fine = np.arange(0.0, 24.0 + 1e-9, 1.0 / 3600.0)
    b = simulate_batch([Course("ketamine", reg)], [0.0, 24.0])
    ref = simulate_batch([Course("ketamine", reg)], fine, outputs=True)
    for bl in ("ketamine", "norketamine"):
        on_grid = ref.brain_free_uM[bl][0].max()
        assert b.peak_brain_free_uM[bl][0] >= on_grid * (1 - 1e-12)
        assert b.peak_brain_free_uM[bl][0] <= on_grid * (1 + 1e-7)


def test_bad_threads_is_one_line_error():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    with pytest.raises(KetasimError, match="threads"):
        simulate_batch([Course("ketamine", reg)], [0.0, 1.0], threads=0)


def test_bad_iiv_length_is_one_line_error():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    with pytest.raises(KetasimError, match="iiv"):
        simulate_batch([Course("ketamine", reg, iiv={"CL": np.ones(3)})], [0.0, 1.0],
                       Covariates(weight_kg=np.array([60.0, 70.0])))


# ------------------------------------------------------------------ clinic layer
@pytest.fixture(scope="module")
def arm_and_patients():
    from ketasim.population import sample_arm
    from ketasim.scenario import ArmSpec, PopulationSpec

    arm = ArmSpec(name="ketamine", drug="ketamine", route="iv-infusion", dose="0.5 mg/kg",
                  duration="40 min", schedule="twice weekly for 2 weeks")
    pop = PopulationSpec(n=5, seed=7, female_fraction=0.5, weight_kg_sd=20.0)
    return arm, sample_arm(pop, 0, 5)


def test_components_batch_matches_mood(arm_and_patients, monkeypatch):
    from ketasim import mood

    # the reference path of mood, with LSODA at tight tolerances (its default rtol 1e-5 is
    # itself off by more than 1e-4 on the small differences 1 − lhb_burst)
    monkeypatch.setattr(mood, "simulate", lambda *a, **kw: simulate(*a, **kw, **REF_TOL))
    arm, patients = arm_and_patients
    visits = np.array([0.0, 4.0, 24.0, 168.0, 336.0])
    t = mood._grid(visits, mood.arm_regimen(arm))
    comp = components_batch(arm, patients, t)
    ref = {k: np.array([mood.mechanism_components(arm, p, t)[k] for p in patients])
           for k in ("fast", "proteins", "spines", "ce")}
    for k, v in ref.items():
        assert comp[k].shape == v.shape
        tol = REL * np.abs(v) + FLOOR * np.max(np.abs(v)) + 1e-12
        assert np.all(np.abs(comp[k] - v) <= tol), (k, np.max(np.abs(comp[k] - v) / tol))


def test_simulate_arm_batched_matches_simulate_arm(arm_and_patients):
    from ketasim import mood

    arm, patients = arm_and_patients
    visits = np.array([0.0, 4.0, 24.0, 168.0, 336.0])
    got = simulate_arm_batched(arm, patients, visits)
    ref = mood.simulate_arm(arm, patients, visits)
    assert list(got.columns) == list(ref.columns)
    assert len(got) == len(ref)
    for col in ref.columns:
        if ref[col].dtype.kind in "fi":
            np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float),
                                       rtol=1e-4, atol=1e-6, err_msg=col)
        else:
            assert (got[col].to_numpy() == ref[col].to_numpy()).all(), col
    assert got["madrs"].std() > 0


def test_control_arm_batched():
    from ketasim import mood
    from ketasim.population import sample_arm
    from ketasim.scenario import ArmSpec, PopulationSpec

    arm = ArmSpec(name="saline", control="saline")
    patients = sample_arm(PopulationSpec(n=3, seed=1), 1, 3)
    visits = np.array([0.0, 24.0, 168.0])
    got = simulate_arm_batched(arm, patients, visits)
    ref = mood.simulate_arm(arm, patients, visits)
    np.testing.assert_allclose(got["madrs"], ref["madrs"], rtol=1e-12)


# ------------------------------------------------------------------ benchmark command
def test_bench_engine_cli_smoke(capsys):
    import json

    from ketasim.cli import main

    rc = main(["bench", "engine", "--n", "3", "--reference", "1", "--courses", "4", "--chunk",
               "3", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(cap.out)
    for key in ("us_per_course_1_thread", "scipy_reference_ms_per_course",
                "interactive_one_course_ms", "chunked_wall_s", "peak_rss_mb"):
        assert d[key] > 0, key
    assert d["max_rel_diff_vs_tight_reference"] < 1e-4
    assert d["threads_identical"] is True
    assert d["chunked_courses"] == 4


def test_bench_engine_cli_bad_input(capsys):
    from ketasim.cli import main

    assert main(["bench", "engine", "--n", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: n") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------ analytic Jacobian, block solve
def _fd_jacobian(f, y, eps=1e-7):
    """Central differences of ``f`` at ``y`` (columns scaled to each state's size)."""
    out = np.zeros((len(f(y)), len(y)))
    for j in range(len(y)):
        e = eps * max(abs(y[j]), 1e-3)
        yp, ym = y.copy(), y.copy()
        yp[j] += e
        ym[j] -= e
        out[:, j] = (f(yp) - f(ym)) / (2 * e)
    return out


@pytest.mark.parametrize("blockers,hyp,intv", MECHANISM_CASES)
def test_analytic_jacobian_matches_finite_differences(blockers, hyp, intv):
    """mechanism.jac_into (used by the batched engine) equals central differences of rhs_nb at
    random states, and writes nothing outside the sparsity pattern the block solve relies on."""
    from ketasim.batch import _block_structure, _jacobian_pattern
    from ketasim.mechanism import MechanismParams, jac_into, rhs_nb

    mp = MechanismParams.from_cards(blockers, Hypotheses.parse(hyp), Interventions.parse(intv))
    kd0, kesc, mgf = mp.blocker_arrays()
    mgf = np.ascontiguousarray(mgf)
    P = mp.packed()
    y0 = mp.baseline()
    nb, ny = len(blockers), len(y0)
    pattern = _jacobian_pattern(mp)
    rng = np.random.default_rng(7)
    for _ in range(20):
        y = y0 * np.exp(0.3 * rng.standard_normal(ny)) + 0.05 * rng.random(ny)
        y[:nb] = rng.random(nb) * 0.2 / nb
        conc = rng.random(nb) * 2.0
        t = float(rng.uniform(-1.0, 12.0))
        J = np.zeros((ny, ny))
        jac_into(t, y, conc, kd0, kesc, mgf, P, J)
        Jfd = _fd_jacobian(lambda v, t=t, c=conc: rhs_nb(t, v, c, kd0, kesc, mgf, P), y)
        scale = np.abs(Jfd) + 1e-6 * np.abs(Jfd).max() + 1e-12
        assert np.max(np.abs(J - Jfd) / scale) < 1e-4
        assert not np.any((J != 0.0) & ~pattern)
    # the permuted pattern is block lower triangular with small diagonal blocks
    order, bptr, lptr, lcols = _block_structure(pattern)
    assert sorted(order) == list(range(ny))
    perm = pattern[np.ix_(order, order)]
    blk = np.repeat(np.arange(len(bptr) - 1), np.diff(bptr))
    assert not np.any(perm & (blk[None, :] > blk[:, None]))
    assert np.diff(bptr).max() <= 4
    for a in range(ny):
        cols = set(lcols[lptr[a]:lptr[a + 1]])
        assert cols == {c for c in range(ny) if perm[a, c] and blk[c] < blk[a]}


def test_mood_jacobian_matches_finite_differences():
    """The mood layer's analytic Jacobian (kernel mood_jac) equals central differences of
    mood_rhs, above and below the consolidation threshold."""
    from ketasim.batch import _kernels

    k = _kernels()
    nmech = 16
    rng = np.random.default_rng(3)
    mc = np.array([3.0, 2.0, 1.5, 0.4, 0.05, 0.8, 0.01, 0.003, 2.0, 0.3])
    for it in range(20):
        y = np.concatenate([rng.random(nmech) + 0.5, rng.random(4)])
        y[nmech + 2] = 0.1 if it % 2 else 0.6  # priming below / above θ_c
        mpat = np.array([1.0 + rng.random(), 0.5 + rng.random(), 1.0 if it % 3 else 0.7])

        def f(v, mpat=mpat):
            dy = np.zeros(nmech + 4)
            k.mood_rhs(v, nmech, mc, mpat, dy)
            return dy[nmech:]

        J = np.zeros((nmech + 4, nmech + 4))
        k.mood_jac(y, nmech, mc, mpat, J)
        Jfd = _fd_jacobian(f, y)
        np.testing.assert_allclose(J[nmech:], Jfd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("hyp, intv", [(None, None), ("only:a", "eef2k-knockout"),
                                       (None, "rapamycin,glun2b-deletion")])
def test_block_solve_equals_dense_solve(hyp, intv):
    """The kernel's block factor and solve (size-1 blocks as reciprocals, flat lower entries,
    sparse mood rows) give ``(I/(hγ) − J)⁻¹ b`` of a dense solve, for Jacobians of the
    mechanism and the mood layer at random states and step sizes from 1e-6 to 10 h."""
    from ketasim.batch import _block_structure, _jacobian_pattern, _kernels, _mood_rows
    from ketasim.mechanism import MechanismParams, jac_into

    k = _kernels()
    mp = MechanismParams.from_cards(("ketamine", "norketamine"), Hypotheses.parse(hyp),
                                    Interventions.parse(intv))
    kd0, kesc, mgf = mp.blocker_arrays()
    mgf = np.ascontiguousarray(mgf)
    P = mp.packed()
    y0 = mp.baseline()
    nmech = len(y0)
    ny = nmech + k.N_MOOD
    order, bptr, lptr, lcols = _block_structure(_jacobian_pattern(mp))
    mptr, mcols = _mood_rows(nmech, k.N_MOOD)
    rng = np.random.default_rng(11)
    mc = np.array([3.0, 2.0, 1.5, 0.4, 0.05, 0.8, 0.01, 0.003, 2.0, 0.3])
    for it in range(30):
        y = np.concatenate([y0 * np.exp(0.3 * rng.standard_normal(nmech)), rng.random(4)])
        y[:2] = rng.random(2) * 0.1
        y[nmech + 2] = 0.1 if it % 2 else 0.6
        conc = rng.random(2) * 2.0
        J = np.zeros((ny, ny))
        jac_into(1.0, y, conc, kd0, kesc, mgf, P, J)
        k.mood_jac(y, nmech, mc, np.array([1.2, 0.8, 1.0]), J)
        inv = 1.0 / (10.0 ** rng.uniform(-6, 1) * 0.25)
        Wp = np.zeros((ny, ny))
        piv = np.zeros(ny, dtype=np.int64)
        lval = np.zeros(len(lcols))
        dinv = np.zeros(ny)
        bfirst = np.zeros(nmech, dtype=np.int64)
        blast = np.zeros(nmech, dtype=np.int64)
        k._blk_rows(bptr, bfirst, blast)
        assert k._blk_factor(J, inv, order, bptr, bfirst, blast, lptr, lcols, Wp, piv, lval,
                             dinv, nmech)
        b = rng.standard_normal(ny)
        x = b.copy()
        k._blk_solve(Wp, piv, order, bfirst, blast, lptr, lcols, lval, dinv, J, x, np.zeros(ny),
                     nmech, mptr, mcols)
        want = np.linalg.solve(inv * np.eye(ny) - J, b)
        assert np.allclose(x, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
