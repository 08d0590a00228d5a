"""Parameter-perturbation audit of the three computational paths (shared by
tests/test_param_paths.py and scripts/param_paths_audit.py).

Every parameter of the mechanism-stage cards (brain, receptor, signalling, interventions,
hypotheses, clinic) is perturbed in memory (the cached card object is replaced for the duration
of the run, so every path reads the perturbed value exactly as it would read an edited card) and
short courses are run through

* ``ref``  — the reference path: :func:`ketasim.engine.simulate` (LSODA) per patient through
  :func:`ketasim.mood.mechanism_run`, then :func:`ketasim.mood.scores_batch` on the mood grid;
* ``fast`` — the batched clinic path: :func:`ketasim.batch.scores_at_visits` for the scores and
  :func:`ketasim.batch.scores_and_stages` for the mechanism readouts;
* ``sbml`` — the SBML export (:func:`ketasim.sbml.export_arm`) in libRoadRunner: noise-free MADRS
  and the mechanism states (drug arms only; the export has no suicidality or side-effect
  scales).

For each parameter and case the change of every output against the unperturbed run is recorded
per path. A parameter is *dead* when nothing changes in any path and case; a *mismatch* when
one path moves an output that another path also computes and the other does not, or when the
perturbed outputs of two paths differ by more than :data:`TOL` (relative to the output's
scale, the tolerance of the default-parameter tests).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from ketasim import batch, mood
from ketasim.bench_sbml import reference_grid
from ketasim.cards import load_param_card, load_param_cards
from ketasim.engine import simulate
from ketasim.population import sample_arm
from ketasim.sbml import course_setup, export_arm, patient_parameters, without_noise
from ketasim.scenario import ArmSpec, PopulationSpec

TOL = 1e-4
#: the reference path's solver tolerances (tests/test_batch_fast.py)
REF_TOL = {"rtol": 1e-9, "atol": 1e-13}
SCORE_KEYS = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi")
#: an output "changed" when it moves by more than this fraction of its scale
MOVED = 1e-9
CARDS = ("brain", "receptor", "signalling", "interventions", "hypotheses", "clinic")
SCORES = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi", "cadss", "peak_cadss",
          "bprs_positive", "sbp_change_mmhg", "sedation", "effect_site_ng_per_ml")
#: mechanism readouts compared (the SBML export has them as states ``y_<name>``)
STATES = ("lhb_burst", "synaptic_proteins", "spine_density", "bdnf", "glutamate", "trkb",
          "eef2k", "pyramidal_rate")
#: readouts of the reference and fast paths only (derived, or rodent)
READOUTS_ONLY = ("p_eef2", "mtorc1", "synaptic_strength", "fst_immobility", "block_H",
                 "block_E2B", "block_Esyn", "block_I")
VISITS = np.array([0.0, 40 / 60, 2.0, 4.0, 24.0, 72.0, 168.0])
VISITS_SERIES = np.array([0.0, 2.0, 24.0, 96.0, 170.0, 240.0, 336.0])


@dataclass(frozen=True)
class Case:
    """One course: the arm, its visits, which paths run it and the patients' kind."""

    name: str
    arm: ArmSpec
    visits: np.ndarray = field(default_factory=lambda: VISITS)
    sbml: bool = True
    noisy: bool = False


def _arm(name: str, **kw) -> ArmSpec:
    base = {"drug": "ketamine", "route": "iv-infusion", "dose": "0.5 mg/kg",
            "duration": "40 min"}
    base.update(kw)
    return ArmSpec(name=name, **base)


#: the courses; acute interventions start 1 h after t = 0 so their window (from −0.5 h of the
#: first dose) lies after t = 0, as the SBML export needs
CASES: dict[str, Case] = {c.name: c for c in (
    Case("single", _arm("single", background="oral-antidepressant")),
    Case("series", _arm("series", schedule=["0 d", "2 d", "4 d", "7 d"]),
         visits=VISITS_SERIES),
    Case("esketamine", _arm("esketamine", drug="esketamine", route="intranasal",
                            model="perez-ruixo-2021", dose="56 mg", duration=None)),
    Case("noisy", _arm("noisy"), sbml=False, noisy=True),
    Case("midazolam", ArmSpec(name="midazolam", control="active-placebo"), sbml=False),
    Case("saline", ArmSpec(name="saline", control="saline"), sbml=False),
    *(Case(f"+{iv}", _arm(f"with {iv}", interventions=iv,
                          **({"schedule": ["1 h"]} if iv in ("rapamycin", "anisomycin", "nbqx")
                             else {})))
      for iv in ("glun2b-deletion", "eef2k-knockout", "bdnf-knockout", "trkb-block",
                 "rapamycin", "anisomycin", "nbqx", "spine-blockade")),
)}
#: cases each interventions-card parameter is audited on (the switch that uses it)
INTERVENTION_CASES = {
    "rapamycin_inhibition": ("+rapamycin",), "anisomycin_inhibition": ("+anisomycin",),
    "nbqx_inhibition": ("+nbqx",), "trkb_inhibition": ("+trkb-block",),
    "glun2b_deletion_relief": ("+glun2b-deletion",),
    "spine_block_fraction": ("+spine-blockade",),
    "drug_window_start_h": ("+rapamycin", "+anisomycin", "+nbqx"),
    "drug_window_end_h": ("+rapamycin", "+anisomycin", "+nbqx"),
}
#: the cases every other parameter is audited on
BASE_CASES = ("single", "series", "esketamine", "noisy", "midazolam", "saline")


def perturbed_value(card: str, name: str, v: float) -> float:
    """×1.2, or +0.2 for a zero value (weights), or −0.2 for a fraction that ×1.2 would push to
    1 or above (caps, inhibitions, block fractions)."""
    if v == 0.0:
        return 0.2
    if 0.0 < v < 1.0 and v * 1.2 >= 1.0:
        return v - 0.2
    return v * 1.2


@contextmanager
def perturbed(card: str, name: str, value: float):
    """The card ``card`` with ``name`` set to ``value`` for every reader (restored on exit)."""
    cards = load_param_cards()
    old = cards[card]
    params = dict(old.parameters)
    params[name] = params[name].model_copy(update={"value": float(value)})
    cards[card] = old.model_copy(update={"parameters": params})
    try:
        yield
    finally:
        cards[card] = old


def patients(case: Case) -> list:
    """A TRD, an MDD and a bipolar patient (clinic card constants read now)."""
    nv = len(case.visits)
    pts = [replace(sample_arm(PopulationSpec(disorder=d, n=1, seed=3 + i), 0, 1,
                              n_visits=nv)[0], index=i)
           for i, d in enumerate(("trd", "mdd", "bipolar"))]
    return pts if case.noisy else without_noise(pts)


def _tight_simulate(*a, **kw):
    return simulate(*a, **kw, **REF_TOL)


def run_ref(case: Case, pts: list) -> dict[str, np.ndarray]:
    """Reference path: scores and readouts (patients × visits), as the default-parameter tests
    run it (tests/test_batch_fast.py): LSODA at rtol 1e-9 on the refined mood grid."""
    arm, visits = case.arm, case.visits
    t = reference_grid(arm, visits) if mood.arm_regimen(arm) is not None \
        else mood._grid(visits, None)
    idx = np.searchsorted(t, np.round(visits, 9))
    old = mood.simulate
    mood.simulate = _tight_simulate
    try:
        runs = [mood.mechanism_run(arm, p, t) for p in pts]
    finally:
        mood.simulate = old
    comp = {k: np.stack([r[1][k] for r in runs]) for k in runs[0][1]}
    s = mood.scores_batch(arm, pts, t, visits, comp)
    out = {k: np.asarray(s[k], dtype=float) for k in SCORES}
    if runs[0][0] is not None:
        for k in STATES + READOUTS_ONLY:
            out[k] = np.stack([r[0].readouts[k][idx] for r in runs])
    return out


def run_fast(case: Case, pts: list) -> dict[str, np.ndarray]:
    """Fast path: scores of :func:`scores_at_visits`, readouts of :func:`scores_and_stages`."""
    s = batch.scores_at_visits(case.arm, pts, case.visits)
    out = {k: np.asarray(s[k], dtype=float) for k in SCORES}
    _, res = batch.scores_and_stages(case.arm, pts, case.visits)
    if res is not None:
        for k in STATES + READOUTS_ONLY:
            out[k] = np.asarray(res.readouts[k], dtype=float)
    return out


def run_sbml(case: Case, pts: list) -> dict[str, np.ndarray]:
    """SBML export in libRoadRunner: MADRS and the mechanism states (patients × visits)."""
    from ketasim.bench_sbml import quiet_solver, roadrunner_model, roadrunner_run

    em = export_arm(case.arm, pts[0])
    rr = roadrunner_model(em.sbml)
    sel = ["time", em.madrs] + [f"y_{k}" for k in STATES]
    with quiet_solver():
        rows = [roadrunner_run(rr, patient_parameters(course_setup(case.arm, p)), case.visits,
                               sel) for p in pts]
    arr = np.stack(rows)
    out = {"madrs": arr[:, :, 1]}
    for i, k in enumerate(STATES):
        out[k] = arr[:, :, 2 + i]
    return out


def run_case(case: Case, paths=("ref", "fast", "sbml")) -> dict[str, dict[str, np.ndarray]]:
    """Every path of ``case`` (patients drawn with the cards as they are now)."""
    pts = patients(case)
    fns = {"ref": run_ref, "fast": run_fast, "sbml": run_sbml}
    return {p: fns[p](case, pts) for p in paths if p != "sbml" or case.sbml}


def _scale(*arrs: np.ndarray) -> float:
    return max(max(float(np.max(np.abs(a))) for a in arrs), 1e-6)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b|`` over patients and visits, relative to the larger array's scale."""
    return float(np.max(np.abs(a - b))) / _scale(a, b)


def gap(k: str, a: np.ndarray, b: np.ndarray) -> float:
    """Disagreement of two paths on output ``k`` in units of the default-parameter tests'
    tolerance (tests/test_batch_fast.py; > 1 fails): ``max |a − b| / (1e-4·|b| + floor)`` with
    the floor 1e-3 score points for scores and 1e-6 × the course maximum otherwise; peaks (the
    reference path's is the maximum on its grid, the fast path's the exact one) at 1e-3."""
    if k.startswith("peak_"):
        return float(np.max(np.abs(a - b) / (1e-3 * np.abs(b) + 1e-9)))
    floor = 1e-3 if k in SCORE_KEYS else 1e-6 * max(float(np.max(np.abs(b))), 1e-6)
    return float(np.max(np.abs(a - b) / (TOL * np.abs(b) + floor)))


@dataclass
class Result:
    """What one parameter's perturbation did: per case, path and output the relative change;
    the largest relative disagreement between paths on the perturbed run."""

    card: str
    name: str
    value: float
    new: float
    cases: tuple[str, ...]
    moved: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # case → path → outputs
    change: dict[str, float] = field(default_factory=dict)  # "path:output" → max rel change
    disagree: list[tuple[str, str, str, float]] = field(default_factory=list)
    one_sided: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def dead(self) -> bool:
        return not any(o for paths in self.moved.values() for o in paths.values())

    @property
    def mismatch(self) -> bool:
        return bool(self.disagree or self.one_sided)

    def outputs(self, path: str) -> set[str]:
        return set().union(*(p.get(path, set()) for p in self.moved.values()))


_BASE: dict[str, dict] = {}


def baseline(case: str) -> dict[str, dict[str, np.ndarray]]:
    """The unperturbed run of a case (memoised)."""
    if case not in _BASE:
        _BASE[case] = run_case(CASES[case])
    return _BASE[case]


def audit(card: str, name: str, cases: tuple[str, ...] | None = None,
          new: float | None = None, sbml: bool = True) -> Result:
    """Perturb one parameter and compare the paths (see the module docstring); ``sbml=False``
    leaves the SBML export out (for constants it does not carry)."""
    v = load_param_card(card).value(name)
    new = perturbed_value(card, name, v) if new is None else new
    if cases is None:
        cases = INTERVENTION_CASES.get(name, BASE_CASES) if card == "interventions" \
            else BASE_CASES
    r = Result(card, name, v, new, cases)
    for cn in cases:
        base = baseline(cn)
        with perturbed(card, name, new):
            pert = run_case(CASES[cn], ("ref", "fast", "sbml") if sbml else ("ref", "fast"))
        r.moved[cn] = {}
        for path, out in pert.items():
            moved = set()
            for k, a in out.items():
                d = rel(a, base[path][k])
                r.change[f"{path}:{k}"] = max(r.change.get(f"{path}:{k}", 0.0), d)
                if d > MOVED:
                    moved.add(k)
            r.moved[cn][path] = moved
        # the perturbed outputs of every pair of paths must agree, and an output that moves
        # in one path must move in every path that computes it
        for p1, p2 in (("fast", "ref"), ("sbml", "ref"), ("sbml", "fast")):
            if p1 not in pert or p2 not in pert:
                continue
            for k in set(pert[p1]) & set(pert[p2]):
                d = gap(k, pert[p1][k], pert[p2][k])
                if d > 1.0:
                    r.disagree.append((cn, f"{p1}/{p2}", k, d))
                m1, m2 = k in r.moved[cn][p1], k in r.moved[cn][p2]
                # an effect within the paths' own agreement is not judged one-sided
                big = max(gap(k, pert[p][k], base[p][k]) for p in (p1, p2)) > 1.0
                if m1 != m2 and big:
                    r.one_sided.append((cn, k, p1 if m1 else p2))
    return r


def hypothesis_arm_audit(h: str, cases: tuple[str, ...] = ("single", "series")) -> Result:
    """A hypothesis weight set on the arm (``hypotheses="<h>=w+0.2"``), not on the card."""
    from ketasim.mechanism import Hypotheses

    w = getattr(Hypotheses.default(), h)
    new = w + 0.2
    r = Result("arm.hypotheses", f"w_{h}", w, new, cases)
    for cn in cases:
        base = baseline(cn)
        c = CASES[cn]
        pert = run_case(replace(c, arm=c.arm.model_copy(update={"hypotheses": f"{h}={new:g}"})))
        r.moved[cn] = {p: {k for k, a in out.items() if rel(a, base[p][k]) > MOVED}
                       for p, out in pert.items()}
        for p1, p2 in (("fast", "ref"), ("sbml", "ref")):
            if p2 in pert and p1 in pert:
                for k in set(pert[p1]) & set(pert[p2]):
                    d = gap(k, pert[p1][k], pert[p2][k])
                    if d > 1.0:
                        r.disagree.append((cn, f"{p1}/{p2}", k, d))
    return r


def all_parameters() -> list[tuple[str, str]]:
    """(card, name) of every parameter of the audited cards."""
    return [(c, n) for c in CARDS for n in load_param_card(c).parameters]


# --------------------------------------------------------------------------- entry points
def override_entry_audit(name: str, case: str = "single") -> dict[str, float]:
    """A receptor/signalling value given as ``overrides`` (engine.simulate through
    mood.mechanism_run, as validate and sensitivity pass them; batch.simulate_batch) against
    the same value on the card: the largest relative difference of any component/readout."""
    from ketasim.engine import Course
    from ketasim.mechanism import Hypotheses, Interventions
    from ketasim.pk import resolve_model

    c = CASES[case]
    arm, visits = c.arm, c.visits
    card = "receptor" if name in load_param_card("receptor").parameters else "signalling"
    new = perturbed_value(card, name, load_param_card(card).value(name))
    pts = patients(c)
    t = mood._grid(visits, mood.arm_regimen(arm))
    via_override = [mood.mechanism_run(arm, p, t, overrides={name: new})[1] for p in pts]
    reg = mood.arm_regimen(arm)
    mcard = resolve_model(arm.drug, arm.model, reg.routes)
    covs = [batch.Covariates(weight_kg=p.weight_kg, age_years=p.age_years, sex=p.sex,
                             race=p.race) for p in pts]
    kw = {"hypotheses": Hypotheses.parse(arm.hypotheses),
          "interventions": Interventions.parse(arm.interventions)}
    iiv = {k: np.array([p.pk_factor_cl for p in pts]) for k in mood._CL_NAMES
           if k in mcard.parameters}
    iiv.update({k: np.array([p.pk_factor_v for p in pts]) for k in mood._V_NAMES
                if k in mcard.parameters})
    course = [Course(arm.drug, reg, mcard.id, iiv)]
    b_override = batch.simulate_batch(course, visits, covs, overrides={name: new}, **kw)
    with perturbed(card, name, new):
        via_card = [mood.mechanism_run(arm, p, t)[1] for p in pts]
        b_card = batch.simulate_batch(course, visits, covs, **kw)
    out = {"engine": max(rel(a[k], b[k]) for a, b in zip(via_override, via_card, strict=True)
                         for k in a),
           "simulate_batch": max(rel(b_override.readouts[k], b_card.readouts[k])
                                 for k in b_card.readouts)}
    return out


def clinic_dict_audit(name: str, case: str) -> tuple[float, float]:
    """A clinic value given as the constants dict ``c`` of mood.scores_batch (as validate,
    sensitivity and the clinic calibration pass them), on components and patients computed
    from the cards, against the same value on the card (components and patients recomputed):
    (largest gap in test-tolerance units over the scores, largest relative change by the
    card)."""
    from ketasim.mood import scores_batch

    cs = CASES[case]
    arm, visits = cs.arm, cs.visits
    t = mood._grid(visits, mood.arm_regimen(arm))

    def comps(pts):
        cc = [mood.mechanism_components(arm, p, t) for p in pts]
        return {k: np.stack([x[k] for x in cc]) for k in cc[0]}

    v = load_param_card("clinic").value(name)
    new = perturbed_value("clinic", name, v)
    c = {k: p.value for k, p in load_param_card("clinic").parameters.items()}
    pts = patients(cs)
    base = scores_batch(arm, pts, t, visits, comps(pts), c)
    via_dict = scores_batch(arm, pts, t, visits, comps(pts), {**c, name: new})
    with perturbed("clinic", name, new):
        pts2 = patients(cs)
        via_card = scores_batch(arm, pts2, t, visits, comps(pts2))
    g = max(gap(k, via_dict[k], via_card[k]) for k in SCORES)
    moved = max(rel(via_card[k], base[k]) for k in SCORES)
    return g, moved


def sensitivity_audit(name: str, metric: str = "madrs_change@24h", n: int = 6
                      ) -> tuple[float, float]:
    """The sensitivity endpoint model (ketasim.sensitivity.EndpointModel) at the nominal values
    and with ``name`` perturbed, against the same endpoint with the value on the card (patients
    and typical drive recomputed): (change seen by the endpoint model, change by the card)."""
    from ketasim.sensitivity import EndpointModel, resolve_parameters

    params = resolve_parameters([name, "drug_emax" if name != "drug_emax" else "a_fast"])
    card = params[0][0]
    v = load_param_card(card).value(name)
    new = perturbed_value(card, name, v)
    x0 = np.array([load_param_card(c).value(nm) for c, nm in params])
    m = EndpointModel(metric, params, n, 0)
    y0 = m(x0)
    y1 = m(np.array([new, x0[1]]))
    with perturbed(card, name, new):
        m2 = EndpointModel(metric, params, n, 0)
        y2 = m2(np.array([new, x0[1]]))
    return abs(y1 - y0), abs(y2 - y0)


MEMANTINE_PARAMS = (("brain", "fu_memantine"), ("receptor", "Kd0_memantine"),
                    ("receptor", "kesc_memantine"), ("receptor", "mgc_memantine"))


def memantine_audit(card: str, name: str) -> tuple[float, float]:
    """Memantine is no clinic arm (ketamine or esketamine only), so its constants reach only
    engine.simulate and the batched kernel (batch.simulate_batch): oral 20 mg daily for 3 days
    through both, perturbed on the card: (largest relative change of a readout, largest
    disagreement of the two paths relative to that readout's scale)."""
    from ketasim.engine import Course
    from ketasim.pk import Covariates
    from ketasim.regimen import Regimen

    reg = Regimen.build("oral", "20 mg", schedule="daily for 3 days")
    t = np.array([0.0, 2.0, 6.0, 24.0, 50.0, 72.0])
    keys = ("block_E2B", "block_Esyn", "block_I", "block_H", "p_eef2", "mtorc1",
            "synaptic_proteins", "lhb_burst")

    def both():
        course = [Course("memantine", reg, "memantine-label")]
        e = simulate(course, t, Covariates(), **REF_TOL).readouts
        b = batch.simulate_batch(course, t, [Covariates()]).readouts
        return {k: np.asarray(e[k]) for k in keys}, {k: np.asarray(b[k][0]) for k in keys}

    e0, _ = both()
    with perturbed(card, name, perturbed_value(card, name, load_param_card(card).value(name))):
        e1, b1 = both()
    moved = max(rel(e1[k], e0[k]) for k in keys)
    return moved, max(float(np.max(np.abs(b1[k] - e1[k]))) / _scale(e1[k] - e0[k], e1[k])
                      for k in keys)
