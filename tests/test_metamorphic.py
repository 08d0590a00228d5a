"""Metamorphic tests of the model's science: relations between two runs that must hold
whatever the parameter values are, so they catch plumbing and modelling bugs without a
reference answer.

Already covered elsewhere (not repeated here): closed forms, mass balance per route and
card, IV-referenced F for clements1981/kamp2020 (im, intranasal, sublingual, rectal, oral)
and for esketamine (tests/test_pk_exact.py, tests/test_routes.py); batch = one at a time;
superposition of repeated boluses on a toy card; lower Mg2+ → more E2B block at one level;
more block with a larger i.p. dose; each hypothesis switch changes something; no hypothesis
→ no new spines; saline has no drug effect; same seed → same trial; chunking and executors
do not change results; ``same_patients_in_every_arm`` draws the same patients.
"""

from __future__ import annotations

import tomllib
import warnings

import numpy as np
import pytest

from ketasim.batch import simulate_arm_fast
from ketasim.cards import load_pk_card, load_pk_cards
from ketasim.engine import Course, simulate
from ketasim.mechanism import POPULATIONS, Hypotheses, Interventions, MechanismParams, fast_blocks
from ketasim.pk import Covariates, assemble, simulate_pk, solve
from ketasim.population import sample_arm
from ketasim.regimen import Regimen
from ketasim.scenario import ArmSpec, PopulationSpec, parse_scenario
from ketasim.trial import run_trial, summarise

warnings.simplefilter("ignore")

MOUSE = Covariates(weight_kg=0.03, age_years=0.25, species="mouse")
#: output grid with times exact at the solver's 1e-9 h break-point resolution
T_PK = np.round(np.concatenate([[0.0], np.linspace(0.05, 48.0, 97)]), 6)


# ====================================================================== PK helpers
def _covariates(card) -> tuple[Covariates, float]:
    """A subject inside the card's studied range (70 kg adult, child or rodent)."""
    if card.species in ("mouse", "rat"):
        w = {"mouse": 0.03, "rat": 0.3}[card.species]
        return Covariates(weight_kg=w, age_years=0.25, species=card.species), w
    lo_age, hi_age = card.population.age_years
    lo_w, hi_w = card.population.weight_kg
    w = float(np.clip(70.0, lo_w, hi_w)) if hi_w >= 70 else 0.5 * (lo_w + hi_w)
    age = float(np.clip(40.0, lo_age, hi_age))
    return Covariates(weight_kg=w, age_years=age), w


def _base_mg(card, w: float) -> float:
    """A dose of ordinary size; for esketamine small enough that 3.7 times it stays below one
    28-mg device (the intranasal device dose effect, a documented nonlinearity, then does
    not enter)."""
    return {"esketamine": 7.0, "memantine": 10.0}.get(card.drug, 0.3 * w)


def _kw(route: str) -> dict:
    return {"duration": "40 min"} if route == "iv-infusion" else {}


def _pk(card, reg: Regimen, t=T_PK, cov: Covariates | None = None, enantiomers=None):
    c = cov or _covariates(card)[0]
    if enantiomers is None:
        enantiomers = card.enantiomers is not None \
            and card.enantiomers.elimination_parameter is not None
    return simulate_pk(reg, t, drug=card.drug, model=card.id, covariates=c,
                       enantiomers=enantiomers)


def _all_series(res) -> dict[str, np.ndarray]:
    """Every concentration time course of a PK result: parent, metabolites, enantiomers,
    effect site."""
    out = {f"plasma {k}": v for k, v in res.plasma_ng_per_ml.items()}
    out.update({f"effect {k}": v for k, v in res.effect_ng_per_ml.items()})
    return out


def _route_cases(exclude=()):
    for cid, card in sorted(load_pk_cards().items()):
        for route in card.routes:
            if (cid, route) not in exclude:
                yield pytest.param(cid, route, id=f"{cid}-{route}")


def _assert_close_series(a: dict, b: dict, rtol: float, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(float(np.max(np.abs(b[k]))), 1e-300)
        err = float(np.max(np.abs(a[k] - b[k]))) / scale
        assert err <= rtol, f"{what}: {k} differs by {err:.2e} of its peak"


# ====================================================================== PK relations
@pytest.mark.parametrize(("cid", "route"), list(_route_cases()))
def test_dose_linearity_every_card_and_route(cid, route):
    """Linear PK: multiplying the dose by 3.7 multiplies every plasma, metabolite,
    enantiomer and effect-site concentration at every time, Cmax and every AUC by 3.7, and
    leaves Tmax and the terminal half-life unchanged. Every card is a linear compartment
    system, so this must hold to rounding for any parameter values (a hidden dose-dependent
    term, e.g. a weight or dose used twice, breaks it). Esketamine intranasal is given below
    one 28-mg device, where the documented device dose effect is constant."""
    card = load_pk_card(cid)
    _, w = _covariates(card)
    d = _base_mg(card, w)
    lo = _pk(card, Regimen.build(route, f"{d} mg", **_kw(route)))
    hi = _pk(card, Regimen.build(route, f"{3.7 * d} mg", **_kw(route)))
    scaled = {k: 3.7 * v for k, v in _all_series(lo).items()}
    _assert_close_series(_all_series(hi), scaled, 1e-12, "3.7 × dose")
    for key, v in lo.summary.items():
        if key in ("tmax_h", "t_half_terminal_h"):
            assert hi.summary[key][0] == pytest.approx(v[0], rel=1e-12), key
        elif key != "anaesthetic_range":
            assert hi.summary[key][0] == pytest.approx(3.7 * v[0], rel=1e-12), key


_SPLIT_EXCLUDED = {("perez-ruixo-2021", "intranasal")}


@pytest.mark.parametrize(("cid", "route"), list(_route_cases(_SPLIT_EXCLUDED)))
def test_split_dose_equals_whole_dose(cid, route):
    """Superposition: a dose given as two unequal parts at the same moment (two sprays,
    two tablets, two concurrent infusions) gives the same concentrations as the whole dose.
    It checks that coincident events are added, not overwritten or dropped, by the schedule
    compiler. Not for esketamine intranasal: there a dose of n × 28 mg is one event with the
    per-dose nasal fraction of n devices (the card's documented dose effect), so two
    separate events differ from one by design."""
    card = load_pk_card(cid)
    _, w = _covariates(card)
    d = _base_mg(card, w)
    whole = _pk(card, Regimen.build(route, f"{d} mg", start="2 h", **_kw(route)))
    split = (Regimen.build(route, f"{0.3 * d} mg", start="2 h", **_kw(route))
             + Regimen.build(route, f"{0.7 * d} mg", start="2 h", **_kw(route)))
    assert len(split) == 2
    parts = _pk(card, split)
    _assert_close_series(_all_series(parts), _all_series(whole), 1e-10, "split dose")
    assert parts.summary["auc_0_inf_ng_h_per_ml"][0] == pytest.approx(
        whole.summary["auc_0_inf_ng_h_per_ml"][0], rel=1e-10)


@pytest.mark.parametrize(("cid", "route"), list(_route_cases()))
def test_time_shift_invariance(cid, route):
    """The model is time-invariant: starting the same regimen 24 h later gives, 24 h later,
    the same concentrations (every species and the effect site), the same Cmax and AUC(0–∞),
    a Tmax 24 h later, and zero before the first dose. A break point, output time or AUC
    horizon measured from 0 instead of from the dose would break it."""
    card = load_pk_card(cid)
    _, w = _covariates(card)
    d = f"{_base_mg(card, w)} mg"
    t = np.round(np.linspace(0.0, 30.0, 61), 6)  # 0.5-h steps
    now = _pk(card, Regimen.build(route, d, schedule="at 0, 5 h", **_kw(route)), t)
    late = _pk(card, Regimen.build(route, d, schedule="at 0, 5 h", start="24 h", **_kw(route)),
               np.round(np.concatenate([[0.0, 3.0, 23.5], t + 24.0]), 6))
    a, b = _all_series(now), _all_series(late)
    for k in a:
        np.testing.assert_array_equal(b[k][:, :3], 0.0, err_msg=f"{k} before the first dose")
    _assert_close_series({k: v[:, 3:] for k, v in b.items()}, a, 1e-9, "shifted 24 h")
    s0, s1 = now.summary, late.summary
    assert s1["cmax_ng_per_ml"][0] == pytest.approx(s0["cmax_ng_per_ml"][0], rel=1e-9)
    assert s1["tmax_h"][0] == pytest.approx(s0["tmax_h"][0] + 24.0, abs=1e-9)
    assert s1["auc_0_inf_ng_h_per_ml"][0] == pytest.approx(s0["auc_0_inf_ng_h_per_ml"][0],
                                                           rel=1e-9)


@pytest.mark.parametrize("cid", sorted(load_pk_cards()))
def test_auc_of_bolus_equals_auc_of_infusion(cid):
    """AUC(0–∞) is independent of the input rate in a linear system: an IV bolus, a 40-min and
    a 6-h infusion of the same dose give the same parent AUC(0–∞) (summary), and the same
    metabolite AUC (integrated to 5000 h, where every metabolite is gone)."""
    card = load_pk_card(cid)
    cov, w = _covariates(card)
    d = f"{_base_mg(card, w)} mg"
    regs = [Regimen.build("iv-bolus", d), Regimen.build("iv-infusion", d, duration="40 min"),
            Regimen.build("iv-infusion", d, duration="6 h")]
    aucs = [_pk(card, r, np.array([1.0]), enantiomers=False).summary["auc_0_inf_ng_h_per_ml"][0]
            for r in regs]
    assert aucs[1] == pytest.approx(aucs[0], rel=1e-9)
    assert aucs[2] == pytest.approx(aucs[0], rel=1e-9)
    for r in regs[1:]:
        system = assemble(card, cov, routes=("iv-bolus", "iv-infusion"))
        ref = solve(system, regs[0], np.array([5000.0]), w)
        sol = solve(system, r, np.array([5000.0]), w)
        for sp in system.plasma:
            assert sol.integral(f"auc_{sp}")[0, -1] == pytest.approx(
                ref.integral(f"auc_{sp}")[0, -1], rel=1e-8), sp


def _bioavailability(card, route: str) -> float:
    """F of an extravascular route, written by hand from the card (systemic parent / dose)."""
    p = {k: v.value for k, v in card.parameters.items()}
    if card.id in ("mouse-ip", "rat-ip"):
        return p["F_ip"]
    if card.id == "memantine-label":
        return p["F"]
    if route == "oral":  # gut wall, then one hepatic pass (the extracted part → metabolite)
        return p["Fgut_oral"] * (1.0 - p["E_h"])
    return p[{"im": "F_im", "sc": "F_sc", "intranasal": "F_in", "sublingual": "F_sl",
              "rectal": "F_rectal"}[route]]


def _f_cases():
    for cid, card in sorted(load_pk_cards().items()):
        if card.drug == "esketamine":  # covered in tests/test_pk_exact.py
            continue
        for route in card.routes:
            if route in ("iv-bolus", "iv-infusion"):
                continue
            yield pytest.param(cid, route, id=f"{cid}-{route}")


@pytest.mark.parametrize(("cid", "route"), list(_f_cases()))
def test_auc_ratio_to_iv_is_the_cards_bioavailability(cid, route):
    """AUC(0–∞) after an extravascular dose ÷ AUC(0–∞) after the same IV bolus = F on the card
    (parent drug), for every racemic disposition model (the routes are shared parts), SC
    included, memantine and the rodent i.p. cards. Absorption rates must not change F."""
    card = load_pk_card(cid)
    _, w = _covariates(card)
    d = f"{_base_mg(card, w)} mg"
    t = np.array([1.0])
    iv = _pk(card, Regimen.build("iv-bolus", d), t, enantiomers=False)
    ev = _pk(card, Regimen.build(route, d), t, enantiomers=False)
    ratio = ev.summary["auc_0_inf_ng_h_per_ml"][0] / iv.summary["auc_0_inf_ng_h_per_ml"][0]
    assert ratio == pytest.approx(_bioavailability(card, route), rel=1e-9)


@pytest.mark.parametrize("cid", ["clements1981", "herd2007", "perez-ruixo-2021",
                                 "memantine-label"])
def test_mg_per_kg_is_mg_times_each_patients_weight(cid):
    """A dose in mg/kg for a batch of patients of different weights equals, patient by
    patient, the mg dose weight × mg/kg (every route of the card; esketamine intranasal
    included: its device count must use the resolved mg). Catches a batch resolving mg/kg
    with one weight for all, or a weight used twice."""
    card = load_pk_card(cid)
    lo, hi = card.population.weight_kg
    weights = np.round(np.linspace(max(lo, 15.0), min(hi, 110.0), 3), 1)
    ages = np.full(3, float(np.clip(40.0, *card.population.age_years)))
    per_kg = 0.2 if card.drug != "ketamine" else 0.5
    t = np.round(np.linspace(0.1, 24.0, 25), 6)
    for route in card.routes:
        batch = _pk(card, Regimen.build(route, f"{per_kg} mg/kg", **_kw(route)), t,
                    cov=Covariates(weight_kg=weights, age_years=ages), enantiomers=False)
        for i, (wi, ai) in enumerate(zip(weights, ages, strict=True)):
            one = _pk(card, Regimen.build(route, f"{float(per_kg * wi)!r} mg", **_kw(route)), t,
                      cov=Covariates(weight_kg=wi, age_years=ai), enantiomers=False)
            for k, v in _all_series(one).items():
                np.testing.assert_allclose(_all_series(batch)[k][i], v[0], rtol=1e-10,
                                           atol=1e-12, err_msg=f"{route} {k} {wi} kg")


# ====================================================================== mechanism
T_MECH = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 12.0, 24.0, 72.0])
_SIGNALLING = ("p_eef2", "eef2k", "bdnf", "trkb", "mtorc1", "synaptic_proteins",
               "spine_density", "synaptic_strength", "glutamate", "pyramidal_rate")


def _mouse(dose="10 mg/kg", t=T_MECH, start=0.0, **kw):
    return simulate([Course("ketamine", Regimen.build("ip", dose, start=start))], t, MOUSE,
                    **kw)


def test_concentration_to_block_is_monotone_and_bounded():
    """Open-channel block rises strictly with the blocker concentration in every fast
    population, starts at 0 without drug and stays below 1; a second blocker added on top
    never lowers the total block (competition for one site)."""
    mp = MechanismParams.from_cards(("ketamine", "norketamine"))
    c = np.geomspace(1e-4, 1e3, 60)
    ket = fast_blocks(np.vstack([c, np.zeros_like(c)]), mp)
    both = fast_blocks(np.vstack([c, np.full_like(c, 0.5)]), mp)
    zero = fast_blocks(np.zeros((2, 1)), mp)
    for pop in ("E2B", "Esyn", "I"):
        b = ket[f"block_{pop}"]
        assert zero[f"block_{pop}"][0] == 0.0
        assert np.all(np.diff(b) > 0) and np.all((b > 0) & (b < 1)), pop
        assert np.all(both[f"block_{pop}"] >= b), pop
        # each blocker's own share falls when the other competes
        assert np.all(both[f"block_{pop}_ketamine"] <= b), pop


def test_more_magnesium_less_block_in_every_population():
    """Mg2+ competes with the blocker for the pore (entry ∝ 1/(1 + [Mg]/K_Mg(V))), so raising
    extracellular Mg2+ lowers block in every population, the slow LHb one included, at every
    time the drug is present; memantine's Mg2+ factor goes the same way."""
    levels = [0.0, 0.3, 1.0, 2.0, 5.0]
    runs = [_mouse(interventions=Interventions.parse(f"mg={m}")) for m in levels]
    for pop in POPULATIONS:  # T_MECH[1:6], 0.25–4 h: drug present
        b = np.array([r.readouts[f"block_{pop}"][1:6] for r in runs])
        assert np.all(np.diff(b, axis=0) < 0), pop
    for blocker in ("ketamine", "memantine"):
        c = np.array([[1.0], [0.0]]) if blocker == "ketamine" else np.array([[0.0], [1.0]])
        blocks = [fast_blocks(c, MechanismParams.from_cards(
            ("ketamine", "memantine"), intv=Interventions.parse(f"mg={m}")))["block_E2B"][0]
            for m in levels]
        assert np.all(np.diff(blocks) < 0), blocker


def test_block_follows_dose_at_every_time():
    """Linear PK makes brain concentration proportional to dose, and block is monotone in
    concentration, so a larger dose gives at least as much block in every fast population at
    every time (strictly more while drug is present), and its brain concentration is exactly
    proportional."""
    lo, hi = _mouse("3 mg/kg"), _mouse("9 mg/kg")
    c_lo, c_hi = lo.brain_free_uM["ketamine"], hi.brain_free_uM["ketamine"]
    # the engine solves PK with LSODA alongside the mechanism: proportional to its tolerance
    np.testing.assert_allclose(c_hi, 3 * c_lo, rtol=0, atol=1e-5 * c_hi.max())
    for pop in ("E2B", "Esyn", "I"):
        a, b = lo.readouts[f"block_{pop}"], hi.readouts[f"block_{pop}"]
        assert np.all(b >= a - 1e-8), pop  # LSODA leaves ~1e-11 once the drug is gone
        assert np.all(b[1:6] > a[1:6]), pop


@pytest.mark.parametrize("hyp", ["default", "only:e", "a,b"])
def test_drug_free_subject_stays_at_baseline(hyp):
    """Before the first dose nothing drives the system: with the dose 24 h after t = 0 every
    readout stays exactly at its baseline (fold readouts 1, blocks 0, immobility at I0) until
    the dose. Checks that the baseline is a true steady state of the equations and that no
    input leaks in early."""
    t = np.array([0.0, 1.0, 6.0, 12.0, 23.9, 26.0])
    r = _mouse(t=t, start="24 h", hypotheses=Hypotheses.parse(hyp))
    mp = MechanismParams.from_cards(("ketamine", "norketamine"))
    for k, v in r.readouts.items():
        pre = v[:5]
        if k.startswith("block_"):
            np.testing.assert_array_equal(pre, 0.0, err_msg=k)
        elif k == "fst_immobility":
            np.testing.assert_allclose(pre, mp.s["fst_immobility0"], rtol=1e-12)
        else:
            np.testing.assert_allclose(pre, 1.0, rtol=0, atol=1e-12, err_msg=k)
    assert r.readouts["block_I"][5] > 0.01  # and the dose then acts


@pytest.mark.parametrize("intv", ["glun2b-deletion", "eef2k-knockout", "trkb-block",
                                  "bdnf-knockout"])
def test_genetic_baseline_is_settled(intv):
    """Genetic interventions start from their own settled (drug-free) steady state, so with
    no drug the readouts do not drift over the day before the dose. The BDNF knockout
    approaches a state with synaptic proteins → 0 only asymptotically (≈ 5e-6 left), hence
    the absolute tolerance."""
    t = np.array([0.0, 6.0, 12.0, 23.9])
    r = _mouse(t=t, start="24 h", interventions=Interventions.parse(intv))
    for k, v in r.readouts.items():
        assert np.max(np.abs(v - v[0])) <= 1e-3 * max(1.0, abs(v[0])), k


@pytest.mark.parametrize("intv", [None, "glun2b-deletion", "eef2k-knockout", "trkb-block",
                                  "spine-blockade", "mg=0.5"])
def test_mechanism_time_shift_invariance(intv):
    """The mechanism is autonomous: dosing 24 h later shifts every readout by 24 h (to
    solver tolerance). Left out on purpose: pharmacological interventions (rapamycin,
    anisomycin, NBQX), whose window (−0.5 h to +6 h) is fixed to t = 0, the first dose's
    time, not to the dose itself; and the BDNF knockout, whose drug-free state is still
    decaying after the 60-day settling (synaptic proteins ≈ 5e-6 and falling, so synaptic
    strength, ≈ 0.0025, drifts ≈ 10% a day; see test_genetic_baseline_is_settled)."""
    iv = Interventions.parse(intv) if intv else None
    late = _mouse(t=np.concatenate([[0.0], T_MECH + 24.0]), start="24 h", interventions=iv)
    now = _mouse(interventions=iv)
    for k, v in now.readouts.items():
        np.testing.assert_allclose(late.readouts[k][1:], v, rtol=1e-4, atol=1e-5, err_msg=k)


def _vehicle_and_drug(intv: str, hyp: str | None = None):
    iv = Interventions.parse(intv) if intv else None
    h = Hypotheses.parse(hyp) if hyp else None
    # a vanishing dose stands for vehicle (a regimen needs a positive dose)
    return (_mouse("1e-9 mg/kg", interventions=iv, hypotheses=h),
            _mouse("10 mg/kg", interventions=iv, hypotheses=h))


def test_bdnf_knockout_abolishes_the_downstream_response():
    """BDNF knockout: no BDNF synthesis, so ketamine cannot raise BDNF, TrkB, mTORC1,
    synaptic proteins or spines above the knockout's own (vehicle) level, although it still
    blocks receptors, raises glutamate and silences the LHb."""
    veh, ket = _vehicle_and_drug("bdnf-knockout")
    for k in ("bdnf", "trkb", "mtorc1", "synaptic_proteins", "spine_density",
              "synaptic_strength"):
        np.testing.assert_allclose(ket.readouts[k], veh.readouts[k], rtol=1e-3, atol=1e-5,
                                   err_msg=k)
    assert ket.readouts["glutamate"].max() > 1.2
    assert ket.readouts["lhb_burst"].min() < 0.5


def test_eef2k_knockout_abolishes_branch_a():
    """eEF2K knockout: no kinase, so p-eEF2 is 0 with or without ketamine (branch (a) has
    nothing to act on)."""
    veh, ket = _vehicle_and_drug("eef2k-knockout")
    for k in ("eef2k", "p_eef2"):
        np.testing.assert_allclose(ket.readouts[k], veh.readouts[k], atol=1e-9, err_msg=k)
    np.testing.assert_allclose(ket.readouts["p_eef2"], 0.0, atol=1e-9)


@pytest.mark.parametrize(("hyp", "unchanged"), [
    # (e) alone: LHb only; nothing upstream of synapses moves
    ("only:e", _SIGNALLING),
    # (a) off: the eEF2K → BDNF translation chain does not move
    ("a=0", ("p_eef2", "eef2k")),
    # (c) and (d) off: no disinhibition, no glutamate surge
    ("c=0", ("glutamate", "pyramidal_rate")),
    # (f) off: no new spines (synaptic proteins still rise)
    ("f=0", ("spine_density",)),
    # (a), (b), (c) off: nothing drives BDNF release, TrkB or mTORC1
    ("only:e,f", _SIGNALLING),
])
def test_switched_off_branches_leave_their_readouts_at_baseline(hyp, unchanged):
    """A hypothesis branch with weight 0 is switched off: its readouts stay at baseline
    (× 1) through a 10 mg/kg dose, while the receptor block is unchanged by the switch."""
    _, ket = _vehicle_and_drug("", hyp)
    default = _mouse()
    for k in unchanged:
        np.testing.assert_allclose(ket.readouts[k], 1.0, atol=1e-6, err_msg=f"{hyp}: {k}")
    for pop in POPULATIONS:
        np.testing.assert_allclose(ket.readouts[f"block_{pop}"], default.readouts[
            f"block_{pop}"], rtol=1e-4, atol=1e-6)


def test_mg_per_kg_in_the_mechanism_engine():
    """The end-to-end engine resolves mg/kg with the subject's weight: 0.5 mg/kg at 62 kg is
    31 mg, readout for readout."""
    cov = Covariates(weight_kg=62.0)
    t = np.array([0.5, 2.0, 24.0])
    a = simulate([Course("ketamine", Regimen.build("iv-infusion", "0.5 mg/kg",
                                                   duration="40 min"))], t, cov)
    b = simulate([Course("ketamine", Regimen.build("iv-infusion", "31 mg",
                                                   duration="40 min"))], t, cov)
    for k, v in a.readouts.items():
        np.testing.assert_allclose(b.readouts[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


# ====================================================================== clinic and trials
VIS = np.array([0.0, 40 / 60, 4.0, 24.0, 168.0])
POP = PopulationSpec(disorder="trd", n=6, seed=21)


def _arm(**kw) -> ArmSpec:
    base = {"name": "k", "drug": "ketamine", "route": "iv-infusion", "dose": "0.5 mg/kg",
            "duration": "40 min"}
    if "control" in kw:
        base = {"name": "c"}
    return ArmSpec(**{**base, **kw})


def test_larger_dose_larger_peak_exposure_and_side_effects_per_patient():
    """Same patients, doses 0.25 → 0.5 → 1 mg/kg: each patient's peak effect-site
    concentration doubles exactly with the dose (linear PK through the fast clinic path), and
    peak dissociation (CADSS) and blood-pressure rise never fall."""
    pts = sample_arm(POP, 0, 4, len(VIS))
    runs = [simulate_arm_fast(_arm(dose=d), pts, VIS) for d in ("0.25 mg/kg", "0.5 mg/kg",
                                                                  "1 mg/kg")]
    peak = [r.groupby("patient")["peak_effect_site_ng_per_ml"].first().to_numpy() for r in runs]
    np.testing.assert_allclose(peak[1], 2 * peak[0], rtol=1e-6)
    np.testing.assert_allclose(peak[2], 2 * peak[1], rtol=1e-6)
    for col in ("peak_cadss", "peak_sbp_change_mmhg"):
        v = [r.groupby("patient")[col].first().to_numpy() for r in runs]
        assert np.all(v[1] >= v[0]) and np.all(v[2] >= v[1]), col


def test_clinic_mg_per_kg_uses_each_patients_weight():
    """A patient given 0.5 mg/kg scores exactly as the same patient given 0.5 × weight mg."""
    pts = sample_arm(POP, 0, 3, len(VIS))
    per_kg = simulate_arm_fast(_arm(), pts, VIS)
    for p in pts:
        mg = simulate_arm_fast(_arm(dose=f"{0.5 * p.weight_kg!r} mg"), [p], VIS)
        a = per_kg[per_kg["patient"] == p.index].reset_index(drop=True)
        num = [c for c in mg.columns if c not in ("patient", "arm")]
        np.testing.assert_allclose(mg[num].to_numpy(float), a[num].to_numpy(float),
                                   rtol=1e-7, atol=1e-9)


def test_control_arm_ignores_mechanism_settings():
    """A saline arm has no drug: its scores cannot depend on the mechanism hypotheses or
    interventions written on the arm (no drug effect, no dissociation, identical scores)."""
    pts = sample_arm(POP, 1, 3, len(VIS))
    plain = simulate_arm_fast(_arm(control="saline"), pts, VIS)
    odd = simulate_arm_fast(_arm(control="saline", hypotheses="only:c",
                                 interventions="rapamycin,mg=0.2"), pts, VIS)
    num = [c for c in plain.columns if c not in ("patient", "arm")]
    np.testing.assert_allclose(odd[num].to_numpy(float), plain[num].to_numpy(float),
                               rtol=0, atol=1e-12)
    assert np.all(plain["drug_effect"] == 0) and np.all(plain["cadss"] == 0)


_ARMS = {
    "ket": 'name = "ket"\ndrug = "ketamine"\nroute = "iv-infusion"\ndose = "0.5 mg/kg"\n'
           'duration = "40 min"\n',
    "sal": 'name = "sal"\ncontrol = "saline"\n',
    "esk": 'name = "esk"\ndrug = "esketamine"\nroute = "intranasal"\ndose = "56 mg"\n',
}


def _scenario(order: str, same: bool):
    text = (f"[population]\nn = 9\nseed = 11\nsame_patients_in_every_arm = "
            f"{'true' if same else 'false'}\n"
            + "".join("[[arm]]\n" + _ARMS[a] for a in order.split(","))
            + '[endpoints]\nat = ["4 h", "24 h", "7 d"]\n')
    return parse_scenario(tomllib.loads(text))


def test_arm_order_does_not_change_an_arm_with_the_same_patients():
    """With ``population.same_patients_in_every_arm`` every arm's patient i is the same
    person, so an arm's results cannot depend on where it is listed: reordering the arms
    leaves each arm's per-patient table and its summary identical. Response and remission
    rates stay within [0, 1]."""
    a = run_trial(_scenario("ket,sal,esk", True))
    b = run_trial(_scenario("esk,ket,sal", True))
    full_a, full_b = summarise(a), summarise(b)
    sa, sb = full_a["arm_summary"], full_b["arm_summary"]
    for name in ("ket", "sal", "esk"):
        da = a.data[a.data["arm"] == name].drop(columns="arm_index").reset_index(drop=True)
        db = b.data[b.data["arm"] == name].drop(columns="arm_index").reset_index(drop=True)
        assert len(da) == 3 * 4
        num = da.select_dtypes("number").columns
        np.testing.assert_array_equal(da[num].to_numpy(), db[num].to_numpy())
        assert sa[name] == sb[name]
        assert full_a["arms"][name] == full_b["arms"][name]
        for visit in full_a["arms"][name].values():
            for key in ("response_rate", "remission_rate"):
                if visit.get(key) is not None:
                    assert 0.0 <= visit[key] <= 1.0


def test_schedule_list_equals_schedule_text():
    """Dose lists and schedules are two spellings of one regimen: an arm written with
    ``schedule = ["0 d", "3.5 d"]`` and one with ``schedule = "every 3.5 d x 2"`` give the
    same patients the same scores."""
    pts = sample_arm(POP, 0, 2, len(VIS))
    a = simulate_arm_fast(_arm(schedule=["0 d", "3.5 d"]), pts, VIS)
    b = simulate_arm_fast(_arm(schedule="every 3.5 d x 2"), pts, VIS)
    num = [c for c in a.columns if c not in ("patient", "arm")]
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("intv", ["rapamycin", "anisomycin", "nbqx"])
def test_acute_intervention_window_follows_the_first_dose(intv):
    """Rapamycin, anisomycin and NBQX act from 0.5 h before to 6 h after the dose (a
    pretreatment design). The window was counted from t = 0 whatever the regimen, so a first
    dose at 24 h got no inhibitor at all. Starting the regimen 24 h later now shifts every
    readout by 24 h, in the reference engine and in the batched engine."""
    from ketasim.batch import simulate_batch

    cov = Covariates()
    t = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 24.0, 72.0])
    iv = Interventions.parse(intv)
    now = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min")
    later = Regimen.build("iv-infusion", "0.5 mg/kg", "40 min", start="1 d")
    a = simulate([Course("ketamine", now)], t, cov, interventions=iv, rtol=1e-9, atol=1e-12)
    b = simulate([Course("ketamine", later)], t + 24.0, cov, interventions=iv, rtol=1e-9,
                 atol=1e-12)
    bb = simulate_batch([Course("ketamine", later)], t + 24.0, cov, interventions=iv)
    for k in ("mtorc1", "synaptic_proteins", "spine_density", "bdnf"):
        if k not in a.readouts:
            continue
        np.testing.assert_allclose(b.readouts[k], a.readouts[k], rtol=1e-5, atol=1e-7,
                                   err_msg=k)
        np.testing.assert_allclose(bb.readouts[k][0], a.readouts[k], rtol=1e-4, atol=1e-6,
                                   err_msg=k)
