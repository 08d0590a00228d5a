"""Batched compiled engine: the whole model for N patients at once (numba).

Same model and outputs as :func:`ketasim.engine.simulate` (the SciPy LSODA reference), for a
batch of patients that share the regimen *structure* (dose times, routes, durations) and the
output times, each with its own covariates, inter-individual PK factors and dose amounts
(mg/kg dosing). Units as in :mod:`ketasim.engine`: time h, PK amounts mg, plasma ng/mL, free
brain concentrations µM, readouts normalised to the drug-free baseline.

Design (why it is fast, and why it stays exact where it can):

* **Linear PK solved exactly.** Between two dose events the input is constant, so every PK
  state is ``x(t_k + τ) = x_ss + V·diag(e^{λτ})·V⁻¹·(x_k − x_ss)`` with ``K = V Λ V⁻¹`` (one
  batched eigen-decomposition per patient and course, ``x_ss = −K⁻¹ r``). The concentration at
  any stage time of the integrator is evaluated from the interval start (a few exponentials),
  never integrated; after each interval the state is advanced with the same formula, so no
  error accumulates. Compartment matrices have real eigenvalues; a complex or ill-conditioned
  eigenbasis (repeated rates) is detected and reported as an error naming the patient.
* **Only the nonlinear mechanism is integrated**, with the compiled right-hand side
  :func:`ketasim.mechanism.rhs_nb` (the reference definition of the equations; the lanes kernel
  evaluates them for 8 patients at once with :func:`ketasim.mechanism.rhs_lanes`, pinned to it
  bit for bit by the tests). These states are
  stiff (LHb channel block relaxes at ``kon·Kd0·Po_H`` ≈ 700–6000 /h while the synaptic states
  move over days), so explicit Runge–Kutta needs ~10⁶ steps per course (measured with SciPy's
  RK45: 1.2 million). The integrator is a linearly implicit (Rosenbrock) method: by default
  RODAS4 (Hairer & Wanner; L-stable, stiffly accurate, order 4 with an embedded order-3 error
  estimate), alternatively the Rosenbrock–W method ROS34PW2 (Rang & Angermann 2005, order 3(2)),
  ``method="ros34pw2"``. The Jacobian is analytic (:func:`ketasim.mechanism.jac_into` and the
  mood layer's :func:`ketasim._batch_kernels.mood_jac`, pinned to finite differences in the
  tests), and ``∂f/∂t`` comes from a forward difference through the exact concentrations.
  The linear systems ``(I/(hγ) − J) u = b`` are solved in block lower-triangular form
  (:func:`_block_structure`: the strongly connected components of the Jacobian's sparsity
  pattern in topological order, here blocks of at most three states), i.e. a forward
  substitution over ~40 non-zeros instead of a dense LU. A lagged Jacobian (``jac_every`` >
  1; refreshed after rejected steps and at events) is legal for the W-method but measured on
  the 28-day course it costs more than it saves: the stiff entries track the drug
  concentration, so errors grow and steps get rejected. The default refreshes both at every
  step. The small kernels are inlined into the step loop (numba ``inline="always"``) and
  compiled with ``error_model="numpy"`` (no zero-division checks): together with the
  analytic Jacobian this made a step about 1.7× cheaper than the colored finite-difference
  version (about 5 µs CPU per step on the loaded 2-core machine; same step count).
* **Adaptive step control** with a mixed error norm ``‖err_i / (atol + rtol·|y_i|)‖₂/√n ≤ 1``
  (defaults :data:`RTOL` = 5e-6, :data:`ATOL` = 1e-8 on states normalised to 1, and
  ATOL × :data:`BLOCK_ATOL_FACTOR` on the small LHb block fractions). Measured on the 28-day
  course (virtual patients of ``ketasim bench engine``), the largest relative deviation of any
  output from a tight LSODA reference was 3.8e-5 (6.1e-5 at the former default 2e-5, on LHb
  block fractions of ~1e-8, a millionth of their peak, 84 h after a dose; 2.3e-4 at 1e-4).
  The default was 2e-5 until a random sweep over the accepted inputs
  (``scripts/robustness_sweep.py``, 880 full-chain cases: 11 seeds × 80) put 15 extreme cases
  1.4–6.0× outside the 1e-4 agreement (LHb block and bursting as the block falls through θ_H,
  e.g. at Mg²⁺ 0; immobility weeks after a 0.5-kg subject's dose); at 5e-6, 5 cases remain
  (1.1–5.2×; all agree at rtol 1e-7, atol 1e-10; docs/limitations.md). It costs ~60% more
  steps (967 → 1,570 per course) on this full-chain path only: the clinic path (trials, web,
  ``ketasim bench``) has its own tolerances (:data:`FAST_RTOL`).
  Controller ``h·min(5, max(0.2, 0.9·err^(−1/q)))``, q the order of the error estimate.
* **Steps land exactly** on every dose, infusion start and stop, intervention window edge and
  output time; the intervention window is evaluated on the open interval so a stage at the
  window's end does not see the next regime. A step that would cross a kink of the
  right-hand side (LHb block total = θ_H, where bursting switches off; with the mood states,
  priming = θ_c, where consolidation switches on) more than ``KINK_TAIL`` (1e-3 h) before its
  end is shortened to end half that past it (the crossing located on the quadratic through
  the switching function's start value, start slope and end value), also when its error test
  failed; the next step starts on the far side with that side's Jacobian, and the step size
  that first met the kink applies again. So no step's error estimate spans more than a sliver
  across a kink, and a kink costs ~3 attempts (it cost ~24 when steps ended just before it
  and grew back from ~1e-7 h; docs/benchmarks.md, "Ninth pass").
* **Mood layer as ODE states** (optional, ``mood=``; :func:`scores_at_visits`): the two
  effect compartments, the priming trace and consolidation of :mod:`ketasim.mood` are four
  more states (:func:`ketasim._batch_kernels.mood_rhs`), so the scores need outputs only at
  the visits instead of a fine grid.
* **Patients in lock-step lanes** (:data:`KERNEL` = "lanes", two or more patients):
  :func:`ketasim._batch_kernels._course_lanes` integrates ``LANES`` patients at once, each lane
  with its own time, step size, events, outputs, kink cuts, accept/reject and Jacobian
  refresh; the right-hand sides, Jacobians and concentrations are one call per lane, while the
  factorisation, the block solves, the stage sums and the error norm run with the lane index
  innermost, so the latency-bound chains of different patients overlap (~1.25× less CPU per
  course). A finished lane takes the next patient of its queue. Per lane the floating-point
  operations are those of the one-at-a-time kernel (``kernel="course"``) in the same order:
  the results are identical.
* Patients run in parallel (``prange``) on ``numba.get_num_threads()`` threads (lanes: one
  group of patients per thread).

Readouts, plasma and free-brain outputs are computed from the states with the same functions
as the reference (:func:`ketasim.mechanism.readouts`).
"""

from __future__ import annotations

import functools
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
import pandas as pd

from . import __version__, mechanism
from .cards import card_versions, load_drug, load_param_card
from .engine import Course, _free_map
from .errors import KetasimError
from .mechanism import STATE_NAMES, Hypotheses, Interventions, MechanismParams, readouts, rhs_nb
from .pk import Covariates, resolve_model
from .pk.model import assemble
from .pk.solve import _TIME_DECIMALS, check_times, compile_schedule

__all__ = ["BatchResult", "simulate_batch", "components_batch", "simulate_arm_batched",
           "scores_at_visits", "scores_and_stages", "simulate_arm_fast", "RTOL", "ATOL"]

#: default relative and absolute tolerances of the mechanism integrator (states are
#: normalised to 1 at baseline; channel-block fractions are 0–1). 5e-6, not 2e-5: the
#: agreement with the reference (≤ 1e-4 on every output) must hold over the accepted inputs,
#: and at 2e-5 a random sweep found 15 of 880 extreme cases outside it, at 5e-6 5 (module notes)
RTOL = 5e-6
ATOL = 1e-8
#: the LHb channel-block states are fractions that stay ≲ 0.1 and decay to ~1e-7 between doses,
#: and block is reported relative to its own size: their absolute tolerance is ATOL × this
BLOCK_ATOL_FACTOR = 1e-3
#: tolerances of the fast clinic path (:func:`scores_at_visits`), whose outputs are the
#: scores (MADRS etc.) and exact concentrations, not the tiny LHb block fractions. Measured on
#: the 28-day course (200 patients of ``ketasim bench``; MADRS against a tight solution, rtol
#: 1e-10): rtol 5e-5 / 7e-5 / 1e-4 / 1.5e-4 (atol 1e-6) took 466 / 447 / 428 / 406 attempts
#: per course with MADRS within 1.5e-5 / 1.8e-5 / 3.0e-5 / 6.0e-5; rtol 1e-4 with atol 2e-6,
#: 398 attempts and 4.2e-5. Before the kink handling of the ninth pass (docs/benchmarks.md)
#: the error was not monotone in rtol (5e-5: 4.5e-5, 1e-4: 1.2e-4) and 5e-5 was the default
#: (562 attempts); 1e-4 is now as accurate as that was, on 400 patients of a trial population
#: too (largest MADRS difference 9.8e-5 points, against 1.07e-4 before). Steps never straddle
#: the right-hand side's kinks by more than ``KINK_TAIL`` (the kernel's ``_kink_frac``).
#: Pinned in the tests against libRoadRunner and the refined-grid reference.
FAST_RTOL = 1e-4
FAST_ATOL = 1e-6
#: per-state absolute tolerances of the fast path, relative to ``FAST_ATOL``, set by what the
#: reported scores need (goal-oriented; docs/benchmarks.md, "Eighth pass"): the LHb block
#: fractions and LHb bursting (both 0–1) to 1e-4 absolute, every other state to 1e-6. With
#: 1e-6 on all, steps went into resolving block and bursting values of 1e-6–1e-4 that the
#: scores do not see: 10% fewer step attempts (624 → 562 per course at rtol 5e-5, before the
#: ninth pass), MADRS within 4.5e-5 of a tight solution on 200 bench patients (3.6e-5
#: before). The fast mood compartment stays at 1e-6: 1e-5 saved another 11% but moved a
#: near-zero MADRS (0.62 points) by 1.0e-4. LHb bursting went back to 1e-6 in the ninth
#: session: at 1e-4 its errors, small on the bench course, reached the scores of other
#: regimens (fast path against libRoadRunner, MADRS of 3 noise-free patients per arm, random
#: arms, `scripts/robustness_sweep.py --rr-arms 40`, seeds 21–22, and the bench course: 6 of
#: 60 beyond 1e-4 relative, worst 6.8e-3, e.g. a single SC dose 4.7e-2 on a MADRS of 0.9;
#: with bursting at 1e-6, 1 of 60, worst 1.5e-4, and 2 of 66 with seeds 23–24 (worst 1.8e-4,
#: against 4 and 3.2e-3), for 440
#: instead of 428 step attempts per bench course. The block fractions' 1e-4 costs no accuracy
#: there (block at 1e-6 as well: 476 attempts, 1 of 60, worst 3.9e-4).
FAST_BLOCK_ATOL_FACTOR = 100.0
FAST_STATE_ATOL_FACTOR: dict[str, float] | None = None
#: names of the four mood states of the kernel (after the mechanism states)
MOOD_STATE_NAMES = ("he_fast", "he_slow", "priming", "consolidation")
METHOD = "rodas4"  # Rosenbrock method of the mechanism integrator (see METHODS)
JAC_EVERY = 1  # accepted steps between Jacobian refreshes (1: every step; see the docstring)
#: compiled kernel of :func:`simulate_batch` for two or more patients: "lanes" integrates
#: :data:`ketasim._batch_kernels.LANES` patients in lock-step (:func:`_course_lanes`; the same
#: algorithm and results per patient, faster), "course" one patient at a time (:func:`_course`),
#: "codegen" the lanes kernel with each step attempt's numerical core generated for the run's
#: configuration as vector code (:mod:`ketasim._codegen`; the lanes kernel where it does not
#: apply; each attempt equal to rounding, so the same steps until a rounding difference
#: flips an accept or a kink cut; results within the integration tolerance, not to the bit)
KERNEL = "lanes"
KERNELS = ("lanes", "course", "codegen")

# ---------------------------------------------------------------- ROS34PW2 (Rang & Angermann)
# Published form: (I − γhJ) k_i = h f(t + α_i h, y + Σ a_ij k_j) + hJ Σ Γ_ij k_j + γ_i h² f_t,
# y₁ = y + Σ b_i k_i, embedded ŷ₁ = y + Σ b̂_i k_i. Transformed below to the form without
# Jacobian–vector products (Hairer & Wanner, Solving ODEs II, §IV.7).
_GAM = 4.3586652150845900e-01
_A = np.array([[0.0, 0.0, 0.0, 0.0],
               [8.7173304301691801e-01, 0.0, 0.0, 0.0],
               [8.4457060015369423e-01, -1.1299064236484185e-01, 0.0, 0.0],
               [0.0, 0.0, 1.0, 0.0]])
_G = np.array([[_GAM, 0.0, 0.0, 0.0],
               [-8.7173304301691801e-01, _GAM, 0.0, 0.0],
               [-9.0338057013044082e-01, 5.4180672388095326e-02, _GAM, 0.0],
               [2.4212380706095346e-01, -1.2232505839045147e+00, 5.4526025533510214e-01, _GAM]])
_B = np.array([2.4212380706095346e-01, -1.2232505839045147e+00, 1.5452602553351020e+00,
               4.3586652150845900e-01])
_BHAT = np.array([3.7810903145819369e-01, -9.6042292212423178e-02, 5.0e-01,
                  2.1793326075422950e-01])
_GINV = np.linalg.inv(_G)
ROS34PW2 = {
    "AT": _A @ _GINV,  # stage arguments from transformed increments u
    "CT": -np.tril(_GINV, -1),  # coupling of earlier u into stage right-hand sides (÷ h)
    "M": _B @ _GINV,  # solution weights
    "E": (_B - _BHAT) @ _GINV,  # error-estimate weights
    "ALPHA": _A.sum(axis=1),  # stage times
    "GSUM": _G.sum(axis=1),  # f_t weights
    "meth": np.array([_GAM, 3.0]),  # γ; error estimate O(h^3)
}


def _lower(vals: list[float], n: int) -> np.ndarray:
    out = np.zeros((n, n))
    out[np.tril_indices(n, -1)] = vals
    return out


# RODAS4 (Hairer & Wanner, Solving ODEs II, §IV.7), stiffly accurate, order 4 with an embedded
# order-3 estimate, in the transformed form (coefficients as tabulated in KPP's Rosenbrock
# integrator, Sandu et al.). Needs an accurate Jacobian, which the refresh-every-step default
# gives.
_RA = [1.544, 0.9466785280815826, 0.2557011698983284, 3.314825187068521, 2.896124015972201,
       0.9986419139977817, 1.221224509226641, 6.019134481288629, 12.53708332932087,
       -0.6878860361058950]
_RA += _RA[6:10] + [1.0]
RODAS4 = {
    "AT": _lower(_RA, 6),
    "CT": _lower([-5.6688, -2.430093356833875, -0.2063599157091915, -0.1073529058151375,
                  -9.594562251023355, -20.47028614809616, 7.496443313967647,
                  -10.24680431464352, -33.99990352819905, 11.70890893206160,
                  8.083246795921522, -7.981132988064893, -31.52159432874371,
                  16.31930543123136, -6.058818238834054], 6),
    "M": np.array(_RA[6:10] + [1.0, 1.0]),
    "E": np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
    "ALPHA": np.array([0.0, 0.386, 0.21, 0.63, 1.0, 1.0]),
    "GSUM": np.array([0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0]),
    "meth": np.array([0.25, 4.0]),
}

# Rodas5P (Steinebach, BIT Numer. Math. 63:27, 2023, doi:10.1007/s10543-023-00967-x):
# 8 stages, stiffly accurate, order 5 with an embedded order-4 estimate (the last stage's
# increment), coefficients as tabulated in OrdinaryDiffEq.jl. Stages 7 and 8 are evaluated at
# y + Σ a_6j u_j + u_6 (+ u_7), the solution adds u_8.
_R5A = [3.0,
        2.849394379747939, 0.45842242204463923,
        -6.954028509809101, 2.489845061869568, -10.358996098473584,
        2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641,
        -7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
        0.030198172008377946]
_R5A6 = _R5A[10:15]
RODAS5P = {
    "AT": _lower(_R5A + _R5A6 + [1.0] + _R5A6 + [1.0, 1.0], 8),
    "CT": _lower([-14.155112264123755,
                  -17.97296035885952, -2.859693295451294,
                  147.12150275711716, -1.41221402718213, 71.68940251302358,
                  165.43517024871676, -0.4592823456491126, 42.90938336958603,
                  -5.961986721573306,
                  24.854864614690072, -3.0009227002832186, 47.4931110020768,
                  5.5814197821558125, -0.6610691825249471,
                  30.91273214028599, -3.1208243349937974, 77.79954646070892,
                  34.28646028294783, -19.097331116725623, -28.087943162872662,
                  37.80277123390563, -3.2571969029072276, 112.26918849496327,
                  66.9347231244047, -40.06618937091002, -54.66780262877968,
                  -9.48861652309627], 8),
    "M": np.array(_R5A6 + [1.0, 1.0, 1.0]),
    "E": np.array([0.0] * 7 + [1.0]),
    "ALPHA": np.array([0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716,
                       0.4288403609558664, 1.0, 1.0, 1.0]),
    "GSUM": np.array([0.21193756319429014, -0.42387512638858027, -0.3384627126235924,
                      1.8046452872882734, 2.325825639765069, 0.0, 0.0, 0.0]),
    "meth": np.array([0.21193756319429014, 5.0]),
}
METHODS = {"ros34pw2": ROS34PW2, "rodas4": RODAS4, "rodas5p": RODAS5P}


# --------------------------------------------------------------------------- kernels
_KERNELS: ModuleType | None = None


def _kernels() -> ModuleType:
    """The compiled kernels (:mod:`ketasim._batch_kernels`), loaded from a copy named by a hash
    of the kernel and mechanism sources so numba's disk cache never serves a kernel compiled
    against older equations. The copy lives in ``KETASIM_CACHE_DIR`` (else
    ``$XDG_CACHE_HOME``/``~/.cache``/ketasim); if that is not writable the kernels compile in
    memory, uncached."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    from .pk.fast import generated_module

    here = Path(__file__).with_name("_batch_kernels.py")
    text = here.read_text(encoding="utf-8")
    mech = Path(mechanism.__file__).read_text(encoding="utf-8")
    mod = generated_module("ketasim_batch_kernels", text, salt=mech)
    if mod is None:
        spec = importlib.util.spec_from_loader("ketasim_batch_kernels", loader=None)
        mod = importlib.util.module_from_spec(spec)
        code = compile(text.replace("cache=True", "cache=False"), str(here), "exec")
        exec(code, mod.__dict__)  # our own source file, not user input
    _KERNELS = mod
    return mod


# --------------------------------------------------------------------------- Python layer
@dataclass
class BatchResult:
    """Outputs for N patients at the shared output times: every array is (N, T).

    ``plasma_ng_per_ml`` per PK species, ``brain_free_uM`` per blocker, ``readouts`` as in
    :func:`ketasim.mechanism.readouts`; ``peak_brain_free_uM`` (N,) per blocker is the maximum
    of the exactly known concentration over the course (safeguarded Newton per interval
    between break points); ``stats`` (N, 3): accepted and rejected steps and Jacobian
    evaluations per patient; ``mood_states`` (N, T, 4): he_fast, he_slow, priming,
    consolidation when the mood ODE was integrated, else None.
    """

    time_h: np.ndarray
    plasma_ng_per_ml: dict[str, np.ndarray]
    brain_free_uM: dict[str, np.ndarray]
    readouts: dict[str, np.ndarray]
    peak_brain_free_uM: dict[str, np.ndarray]
    stats: np.ndarray
    metadata: dict = field(default_factory=dict)
    mood_states: np.ndarray | None = None


@dataclass(frozen=True)
class _CovariateGroups:
    """Patients already grouped by sex, race and species: (batched Covariates, indices)."""

    groups: tuple[tuple[Covariates, np.ndarray], ...]


def _per_patient_covariates(covariates, n: int | None) -> list[tuple[Covariates, np.ndarray]]:
    """Groups of patients sharing sex, race and species: (batched Covariates, indices)."""
    if covariates is None:
        covariates = Covariates()
    if isinstance(covariates, _CovariateGroups):
        return list(covariates.groups)
    if isinstance(covariates, Covariates):
        w = np.atleast_1d(covariates.weight_kg)
        a = np.atleast_1d(covariates.age_years)
        m = max(w.size, a.size, n or 1)
        cov = Covariates(np.broadcast_to(w, (m,)).copy(), np.broadcast_to(a, (m,)).copy(),
                         covariates.race, covariates.sex, covariates.species)
        return [(cov, np.arange(m))]
    covs = list(covariates)
    if not covs:
        raise KetasimError("covariates", "need at least one patient")
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, c in enumerate(covs):
        if np.size(c.weight_kg) != 1 or np.size(c.age_years) != 1:
            raise KetasimError("covariates", "a list of covariates needs one patient each")
        groups.setdefault((c.sex, c.race, c.species), []).append(i)
    out = []
    for (sex, race, species), idx in groups.items():
        w = np.array([float(np.atleast_1d(covs[i].weight_kg)[0]) for i in idx])
        a = np.array([float(np.atleast_1d(covs[i].age_years)[0]) for i in idx])
        out.append((Covariates(w, a, race, sex, species), np.asarray(idx)))
    return out


def _iiv_for(course: Course, card, n: int, idx: np.ndarray) -> dict[str, np.ndarray] | None:
    if not course.iiv:
        return None
    out = {}
    for k, v in course.iiv.items():
        if k not in card.parameters:
            continue
        arr = np.asarray(v, dtype=float)
        if arr.ndim == 0:
            out[k] = np.full(len(idx), float(arr))
        elif arr.shape == (n,):
            out[k] = arr[idx]
        else:
            raise KetasimError("iiv", f"factor {k!r} must be a number or one value per patient "
                               f"({n}), got shape {arr.shape}")
    return out or None


def _modal(K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real eigen-decomposition of every patient's K (N, s, s), checked."""
    lam, V = np.linalg.eig(K)
    if np.iscomplexobj(lam):
        bad = np.nonzero(np.any(np.abs(np.imag(lam)) > 0, axis=1))[0]
        if bad.size:
            raise KetasimError("model", f"PK matrix of patient {int(bad[0])} has complex "
                               "eigenvalues; use ketasim.engine.simulate for this model")
        lam, V = lam.real, V.real
    if np.any(lam >= 0):
        bad = int(np.nonzero(np.any(lam >= 0, axis=1))[0][0])
        raise KetasimError("model", f"PK matrix of patient {bad} has a non-decaying mode; "
                           "use ketasim.engine.simulate")
    cond = np.linalg.cond(V)
    if np.any(~np.isfinite(cond) | (cond > 1e10)):
        bad = int(np.nonzero(~np.isfinite(cond) | (cond > 1e10))[0][0])
        raise KetasimError("model", f"PK rates of patient {bad} (nearly) coincide (eigenbasis "
                           f"condition {cond[bad]:.2g}); use ketasim.engine.simulate")
    Vinv = np.linalg.inv(V)
    return np.ascontiguousarray(lam), np.ascontiguousarray(V), np.ascontiguousarray(Vinv)


def _jacobian_pattern(mp: MechanismParams, samples: int = 40) -> np.ndarray:
    """Sparsity pattern of the mechanism Jacobian (``pattern[i, j]``: ``f_i`` depends on
    ``y_j``), for the block structure of the linear solves (:func:`_block_structure`).

    The pattern is the union of the non-zeros of finite-difference Jacobians of
    :func:`~ketasim.mechanism.rhs_nb` at the baseline and at ``samples`` random states around it
    (fixed seed, positive concentrations, intervention window on and off), plus the diagonal.
    The analytic Jacobian (:func:`ketasim.mechanism.jac_into`) writes only inside this pattern
    (tested), so the block solve is exact.
    """
    kd0, kesc, mgf = mp.blocker_arrays()
    P = mp.packed()
    y0 = mp.baseline()
    key = (P.tobytes(), kd0.tobytes(), kesc.tobytes(), mgf.tobytes(), y0.tobytes(), samples)
    if key in _PATTERN:
        return _PATTERN[key]
    ny, nb = len(y0), len(mp.blockers)
    rng = np.random.default_rng(12345)
    pat = np.eye(ny, dtype=bool)
    for it in range(samples + 1):
        if it == 0:
            y, conc, t = y0.copy(), np.full(nb, 0.5), 0.0
        else:
            y = y0 * np.exp(0.3 * rng.standard_normal(ny)) + 0.05 * rng.random(ny)
            y[:nb] = rng.random(nb) * 0.2 / nb
            conc = rng.random(nb) * 2.0
            t = float(rng.uniform(-1.0, 12.0))
        f0 = rhs_nb(t, y, conc, kd0, kesc, mgf, P)
        for j in range(ny):
            yy = y.copy()
            yy[j] += 1e-6 * max(abs(y[j]), 1e-3)
            pat[:, j] |= rhs_nb(t, yy, conc, kd0, kesc, mgf, P) != f0
    _PATTERN[key] = pat
    return pat


_PATTERN: dict[tuple, np.ndarray] = {}


def _block_structure(pattern: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Block lower-triangular form of a Jacobian sparsity pattern (``pattern[i, j]``: ``f_i``
    depends on ``y_j``), for the linear solves of the kernel
    (:func:`ketasim._batch_kernels._blk_factor`).

    The strongly connected components of the dependency graph (for the shipped mechanism: the
    LHb block states with LHb bursting, mTORC1 with its adaptation, and single states) are put
    in a topological order, so ``W = I/(hγ) − J`` permuted to that order is block lower
    triangular: a solve is a forward substitution over ~40 non-zeros with small dense diagonal
    blocks, instead of a dense 16 × 16 LU. Returns ``order`` (states in that order), ``bptr``
    (block boundaries in ``order``), and the strictly-lower non-zeros of each permuted row as
    ``lcols[lptr[a]:lptr[a+1]]`` (permuted column positions)."""
    key = (pattern.shape, pattern.tobytes())
    if key in _BLOCKS:
        return _BLOCKS[key]
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = pattern.shape[0]
    ncomp, lab = connected_components(csr_matrix(pattern), directed=True, connection="strong")
    # condensation graph: edge comp(j) → comp(i) when f_i depends on y_j; Kahn's algorithm
    succ: list[set[int]] = [set() for _ in range(ncomp)]
    indeg = np.zeros(ncomp, dtype=np.int64)
    for i, j in zip(*np.nonzero(pattern), strict=True):
        a, b = lab[j], lab[i]
        if a != b and b not in succ[a]:
            succ[a].add(b)
            indeg[b] += 1
    ready = sorted(g for g in range(ncomp) if indeg[g] == 0)
    topo: list[int] = []
    while ready:
        g = ready.pop(0)
        topo.append(g)
        for h in sorted(succ[g]):
            indeg[h] -= 1
            if indeg[h] == 0:
                ready.append(h)
    if len(topo) != ncomp:  # cannot happen for a condensation graph
        raise RuntimeError("Jacobian pattern: cyclic condensation graph")
    order = np.concatenate([np.nonzero(lab == g)[0] for g in topo]).astype(np.int64)
    sizes = [int(np.sum(lab == g)) for g in topo]
    bptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    block_of = np.repeat(np.arange(len(topo)), sizes)
    lcols_l: list[int] = []
    lptr = [0]
    for a in range(n):
        cols = sorted(int(pos[j]) for j in np.nonzero(pattern[order[a]])[0]
                      if block_of[pos[j]] < block_of[a])
        lcols_l.extend(cols)
        lptr.append(len(lcols_l))
    out = (order, bptr, np.array(lptr, dtype=np.int64), np.array(lcols_l, dtype=np.int64))
    _BLOCKS[key] = out
    return out


_BLOCKS: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


@functools.cache
def _mood_rows(nmech: int, nmood: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns left of the diagonal that the mood rows of the Jacobian can fill (row
    ``nmech + r``: ``mcols[mptr[r]:mptr[r+1]]``), for the kernel's forward substitution.

    Read off :func:`ketasim._batch_kernels.mood_jac` at a state where every branch is active
    (LHb bursting below 1, proteins and spines above baseline, priming above threshold), so
    each entry it can write is non-zero there; ``tests/test_batch.py`` checks the solve
    against a dense one on Jacobians at random states."""
    if nmood == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    k = _kernels()
    ny = nmech + nmood
    nb = nmech - 14
    y = np.full(ny, 0.5)
    y[nb + 7] = y[nb + 10] = 1.5  # proteins, spines above baseline
    y[nmech + 2] = 0.9  # priming above θ_c (0.3 below)
    mc = np.ones(10)
    mc[9] = 0.3
    J = np.zeros((ny, ny))
    k.mood_jac(y, nmech, mc, np.ones(3), J)
    ptr, cols = [0], []
    for i in range(nmech, ny):
        cols.extend(int(j) for j in np.nonzero(J[i, :i])[0])
        ptr.append(len(cols))
    return np.array(ptr, dtype=np.int64), np.array(cols, dtype=np.int64)


def simulate_batch(courses: list[Course], times_h, covariates=None,
                   hypotheses: Hypotheses | None = None,
                   interventions: Interventions | None = None,
                   overrides: dict[str, float] | None = None, rtol: float = RTOL,
                   atol: float = ATOL, threads: int | None = None,
                   n_patients: int | None = None, jac_every: int = JAC_EVERY,
                   outputs: bool = True, trace: np.ndarray | None = None,
                   method: str = METHOD,
                   mood: tuple[np.ndarray, np.ndarray] | None = None,
                   block_atol_factor: float = BLOCK_ATOL_FACTOR,
                   state_atol_factor: dict[str, float] | None = None,
                   kernel: str | None = None) -> BatchResult:
    """Simulate N patients end to end (plasma → brain → receptor → signalling → synapses).

    ``courses``: drugs and regimens as for :func:`ketasim.engine.simulate`; a course's ``iiv``
    maps card parameter names to a factor or an array of one factor per patient.
    ``times_h``: shared output times (h after the first dose, increasing, ≥ 0).
    ``covariates``: a batched :class:`Covariates` (weight/age arrays; one sex and race), or a
    sequence of one-patient :class:`Covariates` (any mix of sex and race).
    ``threads``: numba threads (default: numba's setting); 1 runs the serial kernel.
    ``outputs=False`` skips computing readouts (states only; for summaries).
    ``trace``: optional (steps, 4) array filled with (t h, step h, error norm, steps since the
    Jacobian) for every attempted step of patient 0 (diagnostics).
    ``mood``: optional (shared constants (10,), per-patient constants (N, 3)) of the mood ODE
    (:func:`ketasim._batch_kernels.mood_rhs`, built by :func:`_mood_constants`); its four
    states at the output times come back in ``BatchResult.mood_states`` (N, T, 4).
    ``block_atol_factor``: absolute tolerance of the LHb block states relative to ``atol``.
    ``state_atol_factor``: absolute tolerances of other states relative to ``atol``, by name
    (:data:`ketasim.mechanism.STATE_NAMES`, and :data:`MOOD_STATE_NAMES` with ``mood``).
    ``kernel``: "lanes" (lock-step lanes of patients, used for two or more patients) or
    "course" (one patient at a time); default :data:`KERNEL`. Both give the same results.
    "codegen": the lanes kernel with a generated vector step (:mod:`ketasim._codegen`) where
    the configuration allows it (Jacobian every step, no windowed intervention, mood states),
    also for one patient (a lane's results do not depend on the other lanes), else as
    "lanes"; each attempt equal to rounding, so results within the integration tolerance of
    "lanes" (not to the bit).
    """
    t0 = time.perf_counter()
    t_out = np.asarray(times_h, dtype=float)
    check_times(t_out)
    if threads is not None and not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise KetasimError("threads", f"must be 1..{numba.config.NUMBA_NUM_THREADS}, "
                           f"got {threads}")
    if not courses:
        raise KetasimError("courses", "need at least one drug course")
    kernel = KERNEL if kernel is None else kernel
    if kernel not in KERNELS:
        raise KetasimError("kernel", f"unknown kernel {kernel!r}", ", ".join(KERNELS))
    groups = _per_patient_covariates(covariates, n_patients)
    n = sum(len(idx) for _, idx in groups)
    for c in courses:
        if c.iiv:
            for k, v in c.iiv.items():
                if np.ndim(v) == 1 and len(v) != n:
                    raise KetasimError("iiv", f"factor {k!r} has {len(v)} values for {n} "
                                       "patients")
    # assemble every course for every group; scatter into batch arrays
    lams, Vs, Vinvs = [], [], []
    f_entries: list[tuple[str, int]] = []  # (blocker, state index in the stacked PK vector)
    f_scale_cols: list[np.ndarray] = []
    plasma_idx: list[tuple[str, int, np.ndarray]] = []
    events: dict[float, list[tuple[str, int, np.ndarray]]] = {}
    dose_starts: list[float] = []  # every bolus and infusion start (h), for the first dose
    offset = 0
    cards = []
    n_states = []
    for c in courses:
        species = groups[0][0].species
        card = resolve_model(c.drug, c.model, c.regimen.routes, species)
        cards.append(card)
        K = None
        frees: list | None = None
        vols: dict[str, np.ndarray] = {}
        scale_cols: dict[int, np.ndarray] = {}
        bol: dict[tuple[float, int], np.ndarray] = {}
        inf: dict[tuple[float, float, int], np.ndarray] = {}
        for cov, idx in groups:
            system = assemble(card, cov, routes=c.regimen.routes, n=len(idx),
                              iiv=_iiv_for(c, card, n, idx))
            sched = compile_schedule(system, c.regimen, cov.weight_kg)
            s = len(system.states)
            if K is None:
                K = np.zeros((n, s, s))
                states = system.states
            elif system.states != states:  # pragma: no cover - same card and routes
                raise KetasimError("covariates", "patients need the same PK structure")
            K[idx] = system.K
            fm = _free_map(system, 0)
            if frees is None:
                frees = [(b, i) for b, i, _ in fm]
            for q, (_, i, sc) in enumerate(fm):
                col = scale_cols.setdefault(q, np.zeros(n))
                if i - 0 in system.effect.values():
                    col[idx] = sc
                else:
                    sp = next(sp for sp, (pi, _) in system.plasma.items() if pi == i)
                    col[idx] = sc * float(system.plasma[sp][1][0]) / system.plasma[sp][1]
            for sp, (_pi, vol) in system.plasma.items():
                vols.setdefault(sp, np.zeros(n))[idx] = np.broadcast_to(vol, (len(idx),))
            dose_starts += [tb for tb, _, _ in sched.boluses]
            dose_starts += [ta for ta, _, _, _ in sched.infusions]
            for tb, si, a in sched.boluses:
                bol.setdefault((round(tb, _TIME_DECIMALS), si), np.zeros(n))[idx] += a
            for ta, tb, si, r in sched.infusions:
                key = (round(ta, _TIME_DECIMALS), round(tb, _TIME_DECIMALS), si)
                inf.setdefault(key, np.zeros(n))[idx] += r
        lam, V, Vinv = _modal(K)
        lams.append(lam)
        Vs.append(V)
        Vinvs.append(Vinv)
        for q, (b, i) in enumerate(frees):
            f_entries.append((b, offset + i))
            f_scale_cols.append(scale_cols[q])
        for sp, (pi, _) in system.plasma.items():
            plasma_idx.append((sp, offset + pi, vols[sp]))
        for (tb, si), a in bol.items():
            events.setdefault(tb, []).append(("bolus", offset + si, a))
        for (ta, tb, si), r in inf.items():
            events.setdefault(ta, []).append(("rate", offset + si, r))
            events.setdefault(tb, []).append(("rate", offset + si, -r))
        n_states.append(len(states))
        offset += len(states)
    s_tot = offset
    # block-diagonal modal data over courses
    lam = np.zeros((n, s_tot))
    V = np.zeros((n, s_tot, s_tot))
    Vinv = np.zeros((n, s_tot, s_tot))
    o = 0
    for li, Vi_, Wi, si in zip(lams, Vs, Vinvs, n_states, strict=True):
        lam[:, o:o + si] = li
        V[:, o:o + si, o:o + si] = Vi_
        Vinv[:, o:o + si, o:o + si] = Wi
        o += si
    blockers = tuple(dict.fromkeys(b for b, _ in f_entries))
    if not blockers:
        raise KetasimError("drug", "no NMDA receptor blocker in the simulated courses")
    # the acute intervention window is counted from the first dose (pretreatment before it)
    mp = MechanismParams.from_cards(blockers, hypotheses, interventions, overrides).anchored(
        min(dose_starts, default=0.0))
    bidx = {b: i for i, b in enumerate(blockers)}
    f_blk = np.array([bidx[b] for b, _ in f_entries], dtype=np.int64)
    f_idx = np.array([i for _, i in f_entries], dtype=np.int64)
    f_scale = np.ascontiguousarray(np.stack(f_scale_cols, axis=1))

    # break points: events, intervention window edges, start, last output
    win = any(nm in mp.intv for nm in ("rapamycin", "anisomycin", "nbqx"))
    iv_start, iv_end = mp.iv["drug_window_start_h"], mp.iv["drug_window_end_h"]
    t_start = min(0.0, iv_start) if win else 0.0
    extra = [iv_start, iv_end] if win else []
    t_last = round(float(t_out[-1]), _TIME_DECIMALS)
    bps = sorted({round(t_start, _TIME_DECIMALS), *events,
                  *(round(x, _TIME_DECIMALS) for x in extra), t_last})
    bps = np.array([b for b in bps if t_start - 1e-12 <= b <= t_last + 1e-12])
    nb = len(bps)
    drate = np.zeros((n, nb, s_tot))
    dbol = np.zeros((n, nb, s_tot))
    pos = {float(b): k for k, b in enumerate(bps)}
    for tb, evs in events.items():
        if float(tb) not in pos:
            continue
        k = pos[float(tb)]
        for kind, si, a in evs:
            (dbol if kind == "bolus" else drate)[:, k, si] += a
    wmid = np.append(0.5 * (bps[:-1] + bps[1:]), bps[-1])
    t_keys = np.round(t_out, _TIME_DECIMALS)

    kd0, kesc, mgf = mp.blocker_arrays()
    packed = mp.packed()
    y0 = mp.baseline()
    ny_mech = len(y0)
    nmood = 0
    if mood is not None:
        nmood = _kernels().N_MOOD
        mc = np.ascontiguousarray(mood[0], dtype=float)
        mpat = np.ascontiguousarray(mood[1], dtype=float)
        if mpat.shape != (n, 3) or mc.shape != (10,):
            raise KetasimError("mood", f"need (10,) and ({n}, 3) constants, got {mc.shape} "
                               f"and {mpat.shape}")
        y0 = np.concatenate([y0, np.zeros(nmood)])
    else:
        mc, mpat = np.zeros(10), np.zeros((n, 3))
    ny = len(y0)
    if method not in METHODS:
        raise KetasimError("method", f"unknown integrator {method!r}", ", ".join(METHODS))
    co = METHODS[method]
    atol_vec = np.full(ny, float(atol))
    atol_vec[:len(blockers)] *= block_atol_factor
    names = [*STATE_NAMES, *(MOOD_STATE_NAMES if nmood else ())]
    for name, fac in (state_atol_factor or {}).items():
        if name not in names:
            raise KetasimError("state_atol_factor", f"unknown state {name!r}", ", ".join(names))
        if not (np.isfinite(fac) and fac > 0):
            raise KetasimError("state_atol_factor", f"{name}: need a factor > 0, got {fac}")
        atol_vec[len(blockers) + names.index(name)] *= fac
    pattern = _jacobian_pattern(mp)
    order, bptr, lptr, lcols = _block_structure(pattern)
    mptr, mcols = _mood_rows(len(order), nmood)
    T = len(t_out)
    ys = np.zeros((n, T, ny))
    xs = np.zeros((n, T, s_tot))
    peak = np.zeros((n, len(blockers)))
    stats = np.zeros((n, 4), dtype=np.int64)
    args = (bps, wmid, drate, dbol, lam, V, Vinv, f_idx, f_blk, f_scale, kd0, kesc,
            np.ascontiguousarray(mgf), packed, y0, t_keys, float(rtol), atol_vec,
            int(jac_every), order, bptr, lptr, lcols, mptr, mcols, co["AT"], co["CT"],
            co["M"], co["E"], co["ALPHA"], co["GSUM"], co["meth"], ys, xs, peak, stats,
            trace if trace is not None else np.zeros((0, 4)), nmood, mc, mpat)
    old = numba.get_num_threads()
    used = "course"
    try:
        kern = _kernels()
        cg = None
        if kernel == "codegen":
            from ._codegen import codegen_kernels

            cg = codegen_kernels(args)
        lanes = kernel in ("lanes", "codegen") and n >= 2
        used = "codegen" if cg is not None else "lanes" if lanes else "course"
        if threads == 1:
            if cg is not None:
                cg._run_serial_cg(*args)
            else:
                (kern._run_serial_lanes if lanes else kern._run_serial)(*args)
        else:
            if threads is not None:
                numba.set_num_threads(threads)
            if lanes or cg is not None:
                ng = max(1, min(numba.get_num_threads(), -(-n // kern.LANES)))
                (cg._run_batch_cg if cg is not None else kern._run_batch_lanes)(ng, *args)
            else:
                kern._run_batch(*args)
    finally:
        numba.set_num_threads(old)
    if np.any(stats[:, 3] != 0):
        bad = int(np.nonzero(stats[:, 3])[0][0])
        raise KetasimError("integration", f"step size collapsed for patient {bad}")
    plasma: dict[str, np.ndarray] = {}
    brain: dict[str, np.ndarray] = {}
    reads: dict[str, np.ndarray] = {}
    if outputs:
        plasma = {sp: np.maximum(xs[:, :, i] / vol[:, None] * 1000.0, 0.0)
                  for sp, i, vol in plasma_idx}
        conc = np.zeros((len(blockers), n, T))
        for q in range(len(f_idx)):
            conc[f_blk[q]] += f_scale[:, q, None] * np.maximum(xs[:, :, f_idx[q]], 0.0)
        brain = {b: conc[bidx[b]] for b in blockers}
        flat = readouts(np.moveaxis(ys[:, :, :ny_mech], 2, 0).reshape(ny_mech, n * T),
                        conc.reshape(-1, n * T), mp)
        reads = {k: v.reshape(n, T) for k, v in flat.items()}
    meta = {
        "ketasim_version": __version__, "n_patients": n,
        "courses": [{"drug": c.drug, "model": cd.id, "routes": list(c.regimen.routes),
                     "n_doses": len(c.regimen)} for c, cd in zip(courses, cards, strict=True)],
        "hypotheses": mp.hyp.as_dict(), "interventions": mp.intv.label(),
        "solver": (f"exact modal PK + {method.upper()} Rosenbrock on the mechanism, "
                   f"rtol={rtol:g} atol={atol:g}, Jacobian refreshed every {jac_every} steps"),
        "card_hashes": card_versions(), "wall_ms": (time.perf_counter() - t0) * 1000.0,
        "threads": 1 if threads == 1 else (threads or old),
        "kernel": used,
    }
    return BatchResult(t_out, plasma, brain, reads,
                       {b: peak[:, i] for i, b in enumerate(blockers)}, stats[:, :3], meta,
                       ys[:, :, ny_mech:] if nmood else None)


# --------------------------------------------------------------------------- clinic layer
def components_batch(arm, patients: Sequence, t: np.ndarray,
                     hypotheses: Hypotheses | None = None, threads: int | None = None
                     ) -> dict[str, np.ndarray]:
    """Batched :func:`ketasim.mood.mechanism_components`: arrays (patients, len(t)) for
    ``fast``, ``proteins``, ``spines`` and ``ce`` (ng/mL, potency-adjusted)."""
    from . import mood

    t = np.asarray(t, dtype=float)
    npt = len(patients)
    regimen = mood.arm_regimen(arm)
    if regimen is None or npt == 0:
        z = np.zeros((npt, len(t)))
        return {"fast": z, "proteins": z.copy(), "spines": z.copy(), "ce": z.copy()}
    card = resolve_model(arm.drug, arm.model, regimen.routes)
    f_cl = np.array([p.pk_factor_cl for p in patients])
    f_v = np.array([p.pk_factor_v for p in patients])
    iiv = {k: f_cl for k in mood._CL_NAMES if k in card.parameters}
    iiv.update({k: f_v for k in mood._V_NAMES if k in card.parameters})
    covs = [Covariates(weight_kg=p.weight_kg, age_years=p.age_years, sex=p.sex, race=p.race)
            for p in patients]
    res = simulate_batch([Course(arm.drug, regimen, card.id, iiv)], t, covs,
                         hypotheses=hypotheses or Hypotheses.parse(arm.hypotheses),
                         interventions=Interventions.parse(arm.interventions), threads=threads)
    return mood.components_from(arm, res.readouts, res.brain_free_uM, hypotheses)


def simulate_arm_batched(arm, patients: Sequence, visits_h: np.ndarray,
                         hypotheses: Hypotheses | None = None,
                         threads: int | None = None) -> pd.DataFrame:
    """The table of :func:`ketasim.mood.simulate_arm` (one row per patient and visit), with the
    mechanism of all patients in one batched call."""
    from . import mood

    visits_h = np.asarray(visits_h, dtype=float)
    t = mood._grid(visits_h, mood.arm_regimen(arm))
    comp = components_batch(arm, patients, t, hypotheses, threads=threads)
    out = mood.scores_batch(arm, list(patients), t, visits_h, comp)
    return _long_table(arm, patients, out, len(visits_h))


def _long_table(arm, patients: Sequence, out: dict[str, np.ndarray], nv: int) -> pd.DataFrame:
    """The long table of :func:`ketasim.mood.simulate_arm` from per-visit score arrays."""
    npt = len(patients)
    cols: dict[str, np.ndarray] = {
        "patient": np.repeat([p.index for p in patients], nv),
        "arm": np.full(npt * nv, arm.name, dtype=object),
    }
    for k, v in out.items():
        v = np.asarray(v)
        cols[k] = np.tile(v, npt) if v.ndim == 1 else v.reshape(-1)
    cols["baseline_madrs"] = np.repeat([p.baseline_madrs for p in patients], nv)
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------- fast path
def _mood_constants(arm, patients: Sequence, c: dict[str, float],
                    hypotheses: Hypotheses | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Constants of :func:`ketasim._batch_kernels.mood_rhs` from the clinic card: shared
    (a_fast, a_proteins, a_spines, k_mood /h, k_mood_slow /h, drive50, 1/τ_π /h, 1/τ_c /h,
    g_c, θ_c) and per patient (fast factor: bipolar factor × the weight ``w_e`` of hypothesis
    (e) from ``hypotheses``, else the arm's; E_i; esketamine clinical factor), as
    :func:`ketasim.mood.scores_batch` (and :func:`ketasim.sbml._mood_patient`) derive them."""
    from . import mood

    shared = np.array([c["a_fast"], c["a_proteins"], c["a_spines"], c["k_mood"],
                       c["k_mood_slow"], c["drive50"], 1.0 / (24.0 * c["priming_tau_d"]),
                       1.0 / (24.0 * c["consolidation_tau_d"]), c["consolidation_gain"],
                       c["consolidation_threshold"]])
    bip = np.array([p.disorder == "bipolar" for p in patients])
    esk = (c["esketamine_clinical_factor"]
           if arm.drug == "esketamine" and arm.control is None else 1.0)
    w_e = (hypotheses or Hypotheses.parse(arm.hypotheses)).e
    per = np.stack([np.where(bip, c["bipolar_fast_factor"], 1.0) * w_e,
                    mood.drug_emax_i(list(patients), c), np.full(len(patients), esk)], axis=1)
    return shared, per


def _fast_run(arm, patients: Sequence, visits_h: np.ndarray,
              hypotheses: Hypotheses | None = None, threads: int | None = None,
              stages: bool = False, kernel: str | None = None
              ) -> tuple[dict[str, np.ndarray], BatchResult | None]:
    """Scores at the visits with the mood layer integrated with the mechanism (mood ODE
    states in the batched kernel; steps land only on doses and visits) and the engine
    result (None for a control arm). ``stages``: the engine result's readouts (LHb block and
    bursting among them) are reported too, so those states keep ``FAST_ATOL`` instead of the
    scores-only :data:`FAST_BLOCK_ATOL_FACTOR` / :data:`FAST_STATE_ATOL_FACTOR`.
    ``kernel``: that of :func:`simulate_batch` (default :data:`KERNEL`)."""
    from . import mood

    visits_h = np.asarray(visits_h, dtype=float)
    c = {k: v.value for k, v in load_param_card("clinic").parameters.items()}
    patients = list(patients)
    npt, nv = len(patients), len(visits_h)
    regimen = mood.arm_regimen(arm)
    if regimen is None or npt == 0:
        z = np.zeros((npt, nv))
        return mood.visit_scores(arm, patients, visits_h, z, z, np.zeros(npt), c), None
    card = resolve_model(arm.drug, arm.model, regimen.routes)
    f_cl = np.array([p.pk_factor_cl for p in patients])
    f_v = np.array([p.pk_factor_v for p in patients])
    iiv = {k: f_cl for k in mood._CL_NAMES if k in card.parameters}
    iiv.update({k: f_v for k in mood._V_NAMES if k in card.parameters})
    covs = _patient_covariates(patients)
    shared, per = _mood_constants(arm, patients, c, hypotheses)
    res = simulate_batch([Course(arm.drug, regimen, card.id, iiv)], visits_h, covs,
                         hypotheses=hypotheses or Hypotheses.parse(arm.hypotheses),
                         interventions=Interventions.parse(arm.interventions),
                         threads=threads, mood=(shared, per), rtol=FAST_RTOL,
                         atol=FAST_ATOL,
                         block_atol_factor=1.0 if stages else FAST_BLOCK_ATOL_FACTOR,
                         state_atol_factor=None if stages else FAST_STATE_ATOL_FACTOR,
                         kernel=kernel)
    parent = "esketamine" if arm.drug == "esketamine" else "ketamine"
    fu = load_param_card("brain").value("fu_ketamine")
    scale = load_drug(parent).constant("molar_mass") / fu
    if parent == "esketamine":
        scale *= c["esketamine_potency_factor"]
    ce = res.brain_free_uM[parent] * scale
    peak = res.peak_brain_free_uM[parent] * scale
    ms = res.mood_states
    # the effect compartments and consolidation follow non-negative drives; integration noise
    # (≲ 1e-8, within the states' absolute tolerance) can leave them a hair below 0 when the
    # drive is ~0 (microgram doses), which would make the drug effect negative
    he = per[:, 2, None] * np.maximum(ms[:, :, 0] + ms[:, :, 1], 0.0)
    d_direct = per[:, 1, None] * he / (c["drive50"] + he)
    d = mood.drug_effect(d_direct, np.maximum(ms[:, :, 3], 0.0), c)
    return mood.visit_scores(arm, patients, visits_h, d, ce, peak, c), res


def _patient_covariates(patients: Sequence) -> _CovariateGroups:
    """Covariates of the patients, one batched object per (sex, race) group."""
    idx: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(patients):
        idx.setdefault((p.sex, p.race), []).append(i)
    return _CovariateGroups(tuple(
        (Covariates(weight_kg=np.array([patients[i].weight_kg for i in ii]),
                    age_years=np.array([patients[i].age_years for i in ii]), sex=sex, race=race),
         np.asarray(ii)) for (sex, race), ii in idx.items()))


def scores_at_visits(arm, patients: Sequence, visits_h, hypotheses: Hypotheses | None = None,
                     threads: int | None = None, kernel: str | None = None
                     ) -> dict[str, np.ndarray]:
    """Every key of :func:`ketasim.mood.scores_batch` (arrays patients × visits, ``time_h``
    the visits in h), computed with the mood layer's dynamic states (two effect compartments,
    priming, consolidation) integrated together with the mechanism in the batched kernel, so
    the integrator lands only on dose events and visits (no fine output grid). Effect-site
    concentrations (ng/mL) at the visits are exact; their peak is the exact maximum of the
    known sum of exponentials over every dose interval. ``kernel``: that of
    :func:`simulate_batch` (default :data:`KERNEL`; ``"codegen"`` for large batches, see
    :data:`KERNEL`)."""
    return _fast_run(arm, patients, visits_h, hypotheses, threads, kernel=kernel)[0]


def scores_and_stages(arm, patients: Sequence, times_h, hypotheses: Hypotheses | None = None,
                      threads: int | None = None
                      ) -> tuple[dict[str, np.ndarray], BatchResult | None]:
    """One run of the fast path giving both the scores of :func:`scores_at_visits` and the
    engine result at the same times (plasma ng/mL, free brain µM, readouts; None for a
    control arm), at the fast path's tolerances (:data:`FAST_RTOL`, :data:`FAST_ATOL` on every
    state, as the readouts are reported too): what the web app draws for one patient."""
    return _fast_run(arm, patients, np.asarray(times_h, dtype=float), hypotheses, threads,
                     stages=True)


def simulate_arm_fast(arm, patients: Sequence, visits_h, hypotheses: Hypotheses | None = None,
                      threads: int | None = None, kernel: str | None = None) -> pd.DataFrame:
    """The table of :func:`ketasim.mood.simulate_arm` (one row per patient and visit) from
    :func:`scores_at_visits` (``kernel`` as there)."""
    visits_h = np.asarray(visits_h, dtype=float)
    out = scores_at_visits(arm, patients, visits_h, hypotheses, threads, kernel=kernel)
    return _long_table(arm, patients, out, len(visits_h))
