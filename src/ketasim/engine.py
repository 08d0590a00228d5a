"""Assemble PK and mechanism into one system and solve it for one subject (SciPy reference path).

The PK part is linear (``dx/dt = K x + u(t)``, amounts in mg, h); the mechanism is nonlinear
(:mod:`ketasim.mechanism`). Both are integrated together with LSODA, restarting at every dose
event so discontinuities are hit exactly. Free brain concentrations (µM) are
``f_u × C / M`` with ``C`` the effect-site (ketamine species, ke0 from the PK card) or plasma
concentration in ng/mL and ``M`` the molar mass (g/mol).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import odeint

from . import __version__
from .cards import card_versions, load_drug, load_param_card
from .errors import KetasimError
from .mechanism import Hypotheses, Interventions, MechanismParams, combined_rhs, readouts
from .pk import Covariates, resolve_model
from .pk.model import PKSystem, as_plain, assemble
from .pk.solve import _TIME_DECIMALS, as_times, compile_schedule, describe_times
from .regimen import Regimen

#: PK species → (blocker name, free-fraction parameter in the brain card, drug card for M)
SPECIES_BLOCKER = {
    "ketamine": ("ketamine", "fu_ketamine", "ketamine"),
    "esketamine": ("esketamine", "fu_ketamine", "esketamine"),
    "norketamine": ("norketamine", "fu_norketamine", "norketamine"),
    "noresketamine": ("noresketamine", "fu_norketamine", "norketamine"),
    "memantine": ("memantine", "fu_memantine", "memantine"),
}


@dataclass
class Course:
    """One drug's regimen for the subject (a PK card and its doses)."""

    drug: str
    regimen: Regimen
    model: str | None = None
    iiv: dict[str, float] | None = None  # multiplicative factors on named card parameters


@dataclass
class MechanismResult:
    """Time courses of every stage for one subject (``time_h`` plus named arrays)."""

    time_h: np.ndarray
    plasma_ng_per_ml: dict[str, np.ndarray]
    brain_free_uM: dict[str, np.ndarray]
    readouts: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)

    def at(self, name: str, t_h: float) -> float:
        """Readout ``name`` interpolated at ``t_h`` (h)."""
        return float(np.interp(t_h, self.time_h, self.readouts[name]))


def _free_map(system: PKSystem, offset: int):
    """(blocker, state index, scale) so that free µM = scale × state."""
    brain = load_param_card("brain")
    out = []
    for sp, (pi, vol) in system.plasma.items():
        if sp not in SPECIES_BLOCKER:
            continue
        blocker, fu_name, drug = SPECIES_BLOCKER[sp]
        mw = load_drug(drug).constant("molar_mass")
        fu = brain.value(fu_name)
        if sp in system.effect:  # effect-site concentration state is already mg/L
            out.append((blocker, offset + system.effect[sp], fu * 1000.0 / mw))
        else:
            out.append((blocker, offset + pi, fu * 1000.0 / mw / float(vol[0])))
    return out


_ARG_TYPES: dict[str, tuple[type, str]] = {
    "covariates": (Covariates, "a Covariates"),
    "hypotheses": (Hypotheses, "a Hypotheses (Hypotheses.parse(text))"),
    "interventions": (Interventions, "an Interventions (Interventions.parse(text))"),
    "overrides": (dict, "a dict of parameter name → value"),
    "iiv": (dict, "a dict of parameter name → factor(s)"),
}


def check_types(**args: object) -> None:
    """:class:`KetasimError` naming the first argument (of ``covariates``, ``hypotheses``,
    ``interventions``, ``overrides``, ``iiv``) that is neither ``None`` nor of its type."""
    for name, value in args.items():
        cls, what = _ARG_TYPES[name]
        if value is not None and not isinstance(value, cls):
            raise KetasimError(name, f"must be {what} or None, got {type(value).__name__}")


def simulate(courses: list[Course], times_h, covariates: Covariates | None = None,
             hypotheses: Hypotheses | None = None, interventions: Interventions | None = None,
             overrides: dict[str, float] | None = None, rtol: float = 1e-5,
             atol: float = 1e-8) -> MechanismResult:
    """Simulate one subject end to end (plasma → brain → receptor → signalling → synapses).

    ``courses``: one or more drugs with their regimens (e.g. ketamine, or memantine).
    ``times_h``: output times (h after the first dose, increasing, ≥ 0).
    """
    t0 = time.perf_counter()
    check_types(covariates=covariates, hypotheses=hypotheses, interventions=interventions,
                overrides=overrides)
    cov = covariates or Covariates()
    t_out = as_times(times_h)
    if np.atleast_1d(cov.weight_kg).size != 1 or np.atleast_1d(cov.age_years).size != 1:
        raise KetasimError("covariates", "simulate takes one subject (one weight and age); "
                           "use ketasim.batch for many")
    if not (isinstance(rtol, int | float) and 0 < rtol < 1 and isinstance(atol, int | float)
            and 0 < atol < 1):
        raise KetasimError("rtol", f"rtol and atol must be within (0, 1), got {rtol!r}, "
                           f"{atol!r}")
    w = float(np.atleast_1d(cov.weight_kg)[0])
    systems, schedules, frees, plasma_idx = [], [], [], []
    offset = 0
    if not isinstance(courses, list | tuple) or not courses:
        raise KetasimError("courses", "need a list of one or more Course objects")
    for c in courses:
        if not isinstance(c, Course):
            raise KetasimError("courses", f"must be Course objects, got {type(c).__name__}")
        if not isinstance(c.regimen, Regimen) or len(c.regimen) == 0:
            raise KetasimError("regimen", f"the {c.drug} course has no doses")
        check_types(iiv=c.iiv)
        card = resolve_model(c.drug, c.model, c.regimen.routes, cov.species)
        # a virtual patient's factors cover the parameters of several models: only those of
        # this course's model apply (as in the batched engine)
        iiv = {k: np.array([v]) for k, v in (c.iiv or {}).items() if k in card.parameters}
        system = assemble(card, cov, routes=c.regimen.routes, n=1, iiv=iiv or None)
        sched = compile_schedule(system, c.regimen, np.array([w]))
        systems.append(system)
        schedules.append((offset, sched))
        frees += _free_map(system, offset)
        for sp, (pi, vol) in system.plasma.items():
            plasma_idx.append((sp, offset + pi, float(vol[0])))
        offset += len(system.states)
    n_pk = offset
    blockers = tuple(dict.fromkeys(f[0] for f in frees))
    if not blockers:
        raise KetasimError("drug", "no NMDA receptor blocker in the simulated courses")
    mp = MechanismParams.from_cards(blockers, hypotheses, interventions, overrides)
    Kbig = np.zeros((n_pk, n_pk))
    for (off, _), system in zip(schedules, systems, strict=True):
        s = len(system.states)
        Kbig[off:off + s, off:off + s] = system.K[0]
    bidx = {b: i for i, b in enumerate(blockers)}
    f_blk = np.array([bidx[f[0]] for f in frees], dtype=int)
    f_idx = np.array([f[1] for f in frees], dtype=int)
    f_scale = np.array([f[2] for f in frees])

    # break points and inputs
    boluses: dict[float, list[tuple[int, float]]] = {}
    changes: dict[float, list[tuple[int, float]]] = {}
    for off, sched in schedules:
        for tb, si, a in sched.boluses:
            boluses.setdefault(round(tb, _TIME_DECIMALS), []).append((off + si, float(a[0])))
        for ta, tb, si, r in sched.infusions:
            changes.setdefault(round(ta, _TIME_DECIMALS), []).append((off + si, float(r[0])))
            changes.setdefault(round(tb, _TIME_DECIMALS), []).append((off + si, -float(r[0])))
    # the acute intervention window is counted from the first dose (pretreatment before it)
    mp = mp.anchored(min([tb for _, sch in schedules for tb, _, _ in sch.boluses]
                         + [ta for _, sch in schedules for ta, _, _, _ in sch.infusions],
                         default=0.0))
    iv_start = mp.iv["drug_window_start_h"]
    iv_end = mp.iv["drug_window_end_h"]
    acute = any(n in mp.intv for n in ("rapamycin", "anisomycin", "nbqx"))
    # both window edges are break points (the start lies after t = 0 when the first dose does)
    extra = [round(iv_start, _TIME_DECIMALS), round(iv_end, _TIME_DECIMALS)] if acute else []
    t_start = min(0.0, round(iv_start, _TIME_DECIMALS)) if acute else 0.0
    # the last output time as a rounded key too, as the output keys are (an unrounded
    # 816.0009999999999 matched no key 816.001 and left that output all zeros)
    t_last = round(float(t_out[-1]), _TIME_DECIMALS)
    bps = sorted({t_start, *boluses, *changes, *extra, t_last})
    bps = [b for b in bps if b <= t_last]

    kd0, kesc, mgf = mp.blocker_arrays()
    packed = mp.packed()
    nblk = len(blockers)

    y = np.concatenate([np.zeros(n_pk), mp.baseline()])
    rate = np.zeros(n_pk)
    ys = np.zeros((len(y), len(t_out)))
    keys = np.round(t_out, _TIME_DECIMALS)
    for k, t in enumerate(bps):
        for si, dr in changes.get(t, []):
            rate[si] += dr
        for si, a in boluses.get(t, []):
            y[si] += a
        hit = np.nonzero(keys == t)[0]
        if hit.size:
            ys[:, hit[0]] = y
        if k + 1 >= len(bps):
            break
        t_next = bps[k + 1]
        inside = (keys > t) & (keys < t_next)
        t_eval = np.concatenate([[t], t_out[inside], [t_next]])
        sol, info = odeint(combined_rhs, y, t_eval, tfirst=True, rtol=rtol, atol=atol,
                           args=(Kbig, rate.copy(), f_blk, f_idx, f_scale, nblk, kd0, kesc, mgf,
                                 packed), full_output=True, mxstep=50000)
        if info["message"] != "Integration successful.":  # pragma: no cover
            raise RuntimeError(f"integration failed at t={t} h: {info['message']}")
        ys[:, inside] = sol[1:-1].T
        y = sol[-1].copy()
    conc_t = np.zeros((nblk, len(t_out)))
    for blk, i, sc in frees:
        conc_t[bidx[blk]] += sc * np.maximum(ys[i], 0.0)
    # LSODA leaves ~1e-12 negative amounts once a drug is gone: report them as 0
    plasma = {sp: np.maximum(ys[i] / vol * 1000.0, 0.0) for sp, i, vol in plasma_idx}
    brain = {b: conc_t[bidx[b]] for b in blockers}
    reads = readouts(ys[n_pk:], conc_t, mp)
    meta = {
        "ketasim_version": __version__, "species": cov.species, "weight_kg": w,
        "courses": [{"drug": c.drug, "model": s.card.id, "routes": list(c.regimen.routes),
                     "n_doses": len(c.regimen), "regimen": c.regimen.as_dict(),
                     "iiv": {k: as_plain(v) for k, v in (c.iiv or {}).items()}}
                    for c, s in zip(courses, systems, strict=True)],
        "covariates": cov.as_dict(), "times": describe_times(t_out),
        "overrides": {k: as_plain(v) for k, v in (overrides or {}).items()},
        "hypotheses": mp.hyp.as_dict(), "interventions": mp.intv.label(),
        "solver": f"LSODA (scipy odeint) rtol={rtol:g} atol={atol:g}",
        "card_hashes": card_versions(), "wall_ms": (time.perf_counter() - t0) * 1000.0,
    }
    return MechanismResult(t_out, plasma, brain, reads, meta)

