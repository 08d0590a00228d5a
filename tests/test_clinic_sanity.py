"""Clinic- and side-effect-level sanity relations: what a pharmacologist expects of any version
of the model, checked on seeded random inputs (doses, routes, schedules, populations) rather
than on calibrated numbers.

Not repeated here (tests/test_metamorphic.py, tests/test_clinic.py, tests/test_trial.py,
tests/test_scaleout.py): PK linearity and superposition, peak exposure doubling with dose at
0.25/0.5/1 mg/kg, saline ignoring mechanism settings, arm order with common patients, chunking
and executors. Every relation here runs on noise-free patients (:func:`quiet`) unless it is
about the scales' bounds, so that an inequality is a property of the model and not of a draw.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from ketasim.batch import scores_at_visits
from ketasim.cards import load_param_card
from ketasim.engine import Course, simulate
from ketasim.experiments import MOUSE, _mouse_ketamine, _run
from ketasim.mechanism import Hypotheses
from ketasim.mood import _grid, arm_regimen, components_from, mechanism_components, scores_batch
from ketasim.pk import Covariates, simulate_pk
from ketasim.population import sample_arm
from ketasim.regimen import Regimen
from ketasim.sbml import without_noise
from ketasim.scenario import ArmSpec, PopulationSpec

warnings.simplefilter("ignore")

C = {k: v.value for k, v in load_param_card("clinic").parameters.items()}
#: dense visits over the first 6 h (2-min steps), then days
V = np.round(np.concatenate([[0.0], np.arange(2.0, 361.0, 2.0) / 60.0,
                             [8.0, 12.0, 24.0, 48.0, 96.0, 168.0]]), 9)
SIDE = ("cadss", "sbp_change_mmhg", "sedation", "bprs_positive", "effect_site_ng_per_ml")
#: routes of racemic ketamine other than IV (every route of the default card)
EXTRAVASCULAR = ("im", "sc", "intranasal", "oral", "sublingual", "rectal")


def quiet(patients):
    """Patients without visit noise (MADRS residual and suicidality noise)."""
    return [dataclasses.replace(p, residual=np.zeros_like(p.residual),
                                residual_suicidality=np.zeros_like(p.residual_suicidality))
            for p in patients]


def _pop(rng, n=6, **kw) -> PopulationSpec:
    disorder = str(rng.choice(["trd", "mdd", "bipolar"]))
    comed = ["oral-antidepressant"] if rng.random() < 0.3 else []
    return PopulationSpec(disorder=disorder, n=n, seed=int(rng.integers(1 << 30)),
                          weight_kg_sd=25.0, comedication=comed, **kw)


def _ket(dose="0.5 mg/kg", route="iv-infusion", **kw) -> ArmSpec:
    if route == "iv-infusion" and "duration" not in kw:
        kw["duration"] = "40 min"
    return ArmSpec(name="k", drug="ketamine", route=route, dose=dose, **kw)


def _peak(r: dict, key: str) -> np.ndarray:
    return r[key].max(axis=1)


# ====================================================================== no drug, no effect
@pytest.mark.parametrize("seed", range(4))
def test_control_arms_have_no_drug_and_order_the_placebo(seed):
    """Saline and active placebo (midazolam): no drug effect, effect-site concentration,
    dissociation, blood-pressure or BPRS rise at any visit, whatever the disorder or
    background; saline gives no sedation, midazolam at most its card peak. Noise-free, the
    same patient scores ketamine ≤ midazolam ≤ saline at every visit (the active infusion adds
    expectancy; the drug effect is ≥ 0), and nothing rises above the baseline."""
    rng = np.random.default_rng(100 + seed)
    pts = quiet(sample_arm(_pop(rng), 0, 6, len(V)))
    sal = scores_at_visits(ArmSpec(name="s", control="saline"), pts, V)
    mid = scores_at_visits(ArmSpec(name="m", control="active-placebo"), pts, V)
    ket = scores_at_visits(_ket(f"{rng.uniform(0.1, 1.0):.3f} mg/kg"), pts, V)
    for r in (sal, mid):
        for k in ("drug_effect", "cadss", "sbp_change_mmhg", "bprs_positive",
                  "effect_site_ng_per_ml", "peak_cadss", "peak_sbp_change_mmhg"):
            np.testing.assert_array_equal(r[k], 0.0, err_msg=k)
    np.testing.assert_array_equal(sal["sedation"], 0.0)
    assert np.all(mid["sedation"] <= C["midazolam_sedation_peak"] + 1e-12)
    base = np.array([p.baseline_madrs for p in pts])[:, None]
    for k in ("madrs", "madrs_item10", "ssi"):
        assert np.all(ket[k] <= mid[k] + 1e-9), k
        assert np.all(mid[k] <= sal[k] + 1e-9), k
    for r in (sal, mid, ket):
        assert np.all(r["madrs"] <= base + 1e-9)
        assert np.all(r["madrs_item10"] <= C["item10_baseline"] + 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_nothing_before_the_first_dose_and_nothing_negative_after(seed):
    """With the first dose at a random time 3–48 h after the start, drug effect, effect-site
    concentration, CADSS, ΔSBP, BPRS and sedation are exactly 0 at every visit before it, and
    never negative after it (random drug, route, dose, hypotheses and pharmacological
    interventions; genetic interventions move the drug-free baseline, see
    docs/limitations.md)."""
    rng = np.random.default_rng(200 + seed)
    start = float(np.round(rng.uniform(3.0, 48.0), 2))
    drug = str(rng.choice(["ketamine", "esketamine"]))
    if drug == "ketamine":
        route = str(rng.choice(["iv-infusion", "iv-bolus", *EXTRAVASCULAR]))
        dose = f"{rng.uniform(0.05, 3.0):.3f} mg/kg"
    else:
        route = str(rng.choice(["intranasal", "oral", "iv-infusion"]))
        dose = f"{rng.choice([28, 56, 84])} mg"
    hyp = str(rng.choice(["default", "only:c", "e=0", "a,b,c,d,e,f", "f=0"]))
    intv = str(rng.choice(["", "rapamycin", "nbqx", "anisomycin", "spine-blockade", "mg=0.4"]))
    arm = ArmSpec(name="k", drug=drug, route=route, dose=dose, schedule=[f"{start} h", "3 d"],
                  hypotheses=hyp, interventions=intv)
    v = np.unique(np.round(np.concatenate([V, start + V[V <= 72.0]]), 9))
    pts = quiet(sample_arm(_pop(rng, 4), 0, 4, len(v)))
    r = scores_at_visits(arm, pts, v)
    pre, post = v < start, v >= start
    for k in ("drug_effect", *SIDE):
        np.testing.assert_array_equal(r[k][:, pre], 0.0, err_msg=f"{k} before the dose")
        assert np.all(r[k][:, post] >= 0.0), k
    assert np.all(r["effect_site_ng_per_ml"][:, post].max(axis=1) > 0.0)


@pytest.mark.parametrize("seed", range(4))
def test_every_score_stays_on_its_scale_with_noise(seed):
    """With visit noise on, every score stays on its scale (MADRS 0–60, HAM-D17 0–52, HAM-D6
    0–22, item 10 0–6, SSI 0–38), CADSS within 0–E_CADSS, sedation 0–1, BPRS 0–24, ΔSBP ≥ 0,
    and the drug and placebo fractions within [0, 1), for random regimens up to anaesthetic
    doses and series."""
    rng = np.random.default_rng(300 + seed)
    pts = sample_arm(_pop(rng, 8), 0, 8, len(V))
    for _ in range(3):
        route = str(rng.choice(["iv-infusion", "iv-bolus", "im", "oral", "intranasal"]))
        sched = str(rng.choice(["", "every 2 d x 3", "every 1 d x 6"]))
        arm = _ket(f"{rng.uniform(0.05, 8.0):.3f} mg/kg", route, schedule=sched or None)
        r = scores_at_visits(arm, pts, V)
        for k, hi in (("madrs", 60), ("hamd17", 52), ("hamd6", 22), ("madrs_item10", 6),
                      ("ssi", 38), ("cadss", C["cadss_emax"]), ("sedation", 1),
                      ("bprs_positive", 24)):
            assert np.all((r[k] >= 0.0) & (r[k] <= hi)), k
        assert np.all(r["sbp_change_mmhg"] >= 0.0)
        for k in ("drug_effect", "placebo_effect"):
            assert np.all((r[k] >= 0.0) & (r[k] < 1.0)), k


# ====================================================================== dose and rate
@pytest.mark.parametrize("seed", range(4))
def test_side_effects_rise_with_dose_up_to_anaesthesia(seed):
    """Same patients, six increasing doses from 0.05 to 10 mg/kg (analgesic to anaesthetic) by
    a random route: each patient's peak CADSS, ΔSBP, BPRS and sedation never fall, the peak
    effect-site concentration and ΔSBP rise strictly, the anaesthetic flag once set stays set,
    and the highest IV doses reach the anaesthetic band."""
    rng = np.random.default_rng(400 + seed)
    route = str(rng.choice(["iv-infusion", "iv-bolus", "im", "intranasal", "oral"]))
    doses = np.sort(rng.uniform(0.05, 10.0, 6))
    pts = quiet(sample_arm(_pop(rng), 0, 6, len(V)))
    runs = [scores_at_visits(_ket(f"{d:.4f} mg/kg", route), pts, V) for d in doses]
    for k in ("cadss", "sbp_change_mmhg", "bprs_positive", "sedation"):
        p = np.array([_peak(r, k) for r in runs])
        assert np.all(np.diff(p, axis=0) >= 0.0), k
    for k in ("peak_effect_site_ng_per_ml", "peak_sbp_change_mmhg", "peak_cadss",
              "anaesthetic_band"):
        p = np.array([r[k][:, 0] for r in runs]).astype(float)
        assert np.all(np.diff(p, axis=0) >= 0.0), k
        if k in ("peak_effect_site_ng_per_ml", "peak_sbp_change_mmhg"):
            assert np.all(np.diff(p, axis=0) > 0.0), k
    if route.startswith("iv") and doses[-1] > 4.0:
        assert np.all(runs[-1]["anaesthetic_band"][:, 0])


@pytest.mark.parametrize("seed", range(4))
def test_side_effect_peaks_by_route(seed):
    """Timing and size of the side-effect peak by route, same patients and mg/kg: after an IV
    infusion the effect-site (hence CADSS and ΔSBP) peak lies between the end of the infusion
    and 15 min after it (ke0 t½ ≈ 6 min); after an IV bolus within 18 min; every extravascular
    route peaks later than the bolus and lower (F < 1, slower input)."""
    rng = np.random.default_rng(500 + seed)
    dose = f"{rng.uniform(0.1, 2.0):.3f} mg/kg"
    dur = float(np.round(rng.uniform(10.0, 120.0)))
    pts = quiet(sample_arm(_pop(rng), 0, 6, len(V)))
    inf = scores_at_visits(_ket(dose, duration=f"{dur} min"), pts, V)
    for k in ("effect_site_ng_per_ml", "cadss", "sbp_change_mmhg"):
        t_pk = V[inf[k].argmax(axis=1)]
        if k == "cadss" and np.any(_peak(inf, k) == 0.0):
            continue  # no dissociation at all at a small dose: no peak to time
        assert np.all((t_pk >= dur / 60 - 1e-9) & (t_pk <= dur / 60 + 0.25 + 1e-9)), (k, t_pk)
    bolus = scores_at_visits(_ket(dose, "iv-bolus"), pts, V)
    t_bolus = V[bolus["effect_site_ng_per_ml"].argmax(axis=1)]
    # ≈ 16 min with clements1981 (slow distribution) and the card's provisional ke0
    assert np.all(t_bolus <= 0.3)
    for route in EXTRAVASCULAR:
        ev = scores_at_visits(_ket(dose, route), pts, V)
        t_ev = V[ev["effect_site_ng_per_ml"].argmax(axis=1)]
        assert np.all(t_ev > t_bolus), route
        for k in ("peak_effect_site_ng_per_ml", "peak_cadss", "peak_sbp_change_mmhg"):
            assert np.all(ev[k][:, 0] <= bolus[k][:, 0]), (route, k)


@pytest.mark.parametrize("seed", range(4))
def test_slower_infusion_lower_side_effect_peaks(seed):
    """The same mg/kg infused over a longer time (40 vs 100 min, and a random pair) gives each
    patient a lower peak effect-site concentration, CADSS, ΔSBP, BPRS and sedation."""
    rng = np.random.default_rng(600 + seed)
    dose = f"{rng.uniform(0.1, 4.0):.3f} mg/kg"
    pts = quiet(sample_arm(_pop(rng), 0, 6, len(V)))
    short, long_ = sorted(np.round(rng.uniform(5.0, 180.0, 2)))
    for a, b in ((40.0, 100.0), (short, long_ + 5.0)):
        fast = scores_at_visits(_ket(dose, duration=f"{a} min"), pts, V)
        slow = scores_at_visits(_ket(dose, duration=f"{b} min"), pts, V)
        assert np.all(slow["peak_effect_site_ng_per_ml"][:, 0]
                      < fast["peak_effect_site_ng_per_ml"][:, 0])
        for k in ("peak_cadss", "peak_sbp_change_mmhg"):
            assert np.all(slow[k][:, 0] <= fast[k][:, 0]), k
        for k in ("sedation", "bprs_positive"):
            assert np.all(_peak(slow, k) <= _peak(fast, k)), k


# ====================================================================== esketamine
def test_esketamine_side_effects_and_mood_as_the_cards_say():
    """Given the same mechanism inputs, an esketamine arm and a racemic arm get identical side
    effects (the card applies them to racemic-equivalent Ce; the potency factor is already in
    Ce), and the esketamine drug effect is the racemic one with the mood drive × the
    calibrated ``esketamine_clinical_factor`` (< 1, so never larger). In the full chain an
    esketamine arm's Ce is the potency factor × its (effect-site-free) plasma level."""
    rng = np.random.default_rng(7)
    pts = quiet(sample_arm(_pop(rng, 5), 0, 5, len(V)))
    ket = _ket()
    esk = ArmSpec(name="e", drug="esketamine", route="intranasal", dose="56 mg")
    t = _grid(V, arm_regimen(ket))
    comps = [mechanism_components(ket, p, t) for p in pts]
    comp = {k: np.array([c[k] for c in comps]) for k in comps[0]}
    rk = scores_batch(ket, pts, t, V, comp)
    re = scores_batch(esk, pts, t, V, comp)
    for k in (*SIDE, "peak_cadss", "peak_sbp_change_mmhg", "anaesthetic_band"):
        np.testing.assert_array_equal(re[k], rk[k], err_msg=k)
    assert C["esketamine_clinical_factor"] < 1.0
    assert np.all(re["drug_effect"] <= rk["drug_effect"] + 1e-12)
    assert np.any(re["drug_effect"] < rk["drug_effect"])
    scaled = {**comp, "fast": comp["fast"] * C["esketamine_clinical_factor"],
              "proteins": comp["proteins"] * C["esketamine_clinical_factor"],
              "spines": comp["spines"] * C["esketamine_clinical_factor"]}
    direct = scores_batch(ket, pts, t, V, scaled)
    # a single dose stays below the consolidation threshold, so d = d0 in both
    np.testing.assert_allclose(re["drug_effect"], direct["drug_effect"], rtol=1e-9, atol=1e-12)

    reg = Regimen.build("iv-infusion", "20 mg", duration="40 min")
    cov = Covariates(weight_kg=70.0, age_years=40.0)
    tt = np.array([0.25, 0.5, 2.0 / 3.0, 1.0, 2.0])
    pk = simulate_pk(reg, tt, drug="esketamine", covariates=cov, enantiomers=False)
    mech = simulate([Course("esketamine", reg)], tt, cov)
    ce = components_from(ArmSpec(name="e", drug="esketamine", route="iv-infusion", dose="20 mg"),
                         mech.readouts, mech.brain_free_uM)["ce"]
    np.testing.assert_allclose(ce, C["esketamine_potency_factor"]
                               * pk.plasma_ng_per_ml["esketamine"][0], rtol=1e-4)


# ====================================================================== suicidality
@pytest.mark.parametrize("seed", range(4))
def test_suicidality_moves_with_madrs(seed):
    """Noise-free, after ketamine (random dose, route, schedule): item 10 and SSI stay within
    0 and their baseline, fall by the same fraction as each other, and by at least the MADRS
    fraction (suicidality_gain ≥ 1: a fall beyond the depression change, Wilkinson 2018) until
    the card's suicidality_cap binds; so
    whenever MADRS is below baseline so are both suicidality scores, and a patient's larger
    drug effect gives lower suicidality at the same visit."""
    rng = np.random.default_rng(700 + seed)
    pts = quiet(sample_arm(_pop(rng, 8), 0, 8, len(V)))
    route = str(rng.choice(["iv-infusion", "im", "intranasal", "oral"]))
    sched = str(rng.choice(["", "every 3.5 d x 2", "every 2 d x 6"]))
    arm = _ket(f"{rng.uniform(0.05, 2.0):.3f} mg/kg", route, schedule=sched or None)
    r = scores_at_visits(arm, pts, V)
    base = np.array([p.baseline_madrs for p in pts])[:, None]
    f_madrs = r["madrs"] / base
    f_item = r["madrs_item10"] / C["item10_baseline"]
    f_ssi = r["ssi"] / C["ssi_baseline"]
    assert C["suicidality_gain"] >= 1.0
    assert np.all((f_item >= 0.0) & (f_item <= 1.0 + 1e-12))
    np.testing.assert_allclose(f_item, f_ssi, rtol=1e-12, atol=1e-12)
    # the suicidality fall is capped (suicidality_cap 0.99, documented on the card: keeps
    # the scores above 0); MADRS has no such cap on the direct effect, so beyond g·d > cap
    # (d > 0.47) MADRS may fall further than suicidality (seen at d > 0.99 after a series)
    uncapped = C["suicidality_gain"] * r["drug_effect"] <= C["suicidality_cap"]
    assert np.all(f_item[uncapped] <= f_madrs[uncapped] + 1e-9)
    below = f_madrs < 1.0 - 1e-9
    assert np.all(f_item[below] < 1.0)
    # same patients, half the dose: less drug effect → higher (or equal) suicidality
    half = scores_at_visits(_ket(f"{0.5 * float(arm.dose.split()[0]):.4f} mg/kg", route,
                                 schedule=sched or None), pts, V)
    assert np.all(half["drug_effect"] <= r["drug_effect"] + 1e-9)
    assert np.all(half["madrs_item10"] >= r["madrs_item10"] - 1e-9)
    assert np.all(half["madrs"] >= r["madrs"] - 1e-9)


def test_without_noise_removes_the_suicidality_noise_too():
    """``ketasim.sbml.without_noise`` gives noise-free patients: MADRS residual and the
    suicidality visit noise are both zero, so item 10 follows its closed form."""
    pts = without_noise(sample_arm(PopulationSpec(n=3, seed=4), 0, 3, len(V)))
    for p in pts:
        assert not np.any(p.residual) and not np.any(p.residual_suicidality)
    r = scores_at_visits(_ket(), pts, V)
    s = ((1.0 - r["placebo_effect"])
         * (1.0 - np.minimum(C["suicidality_gain"] * r["drug_effect"], C["suicidality_cap"])))
    np.testing.assert_allclose(r["madrs_item10"], C["item10_baseline"] * s, rtol=1e-12)


# ====================================================================== batch composition
def test_a_patients_scores_do_not_depend_on_the_other_patients():
    """The fast path integrates a batch of patients together (grouped by sex and race); a
    patient's scores must be the same alone, in the batch, or with the batch reversed."""
    rng = np.random.default_rng(9)
    pts = sample_arm(_pop(rng, 7, female_fraction=0.5), 0, 7, len(V))
    arm = _ket("0.7 mg/kg", schedule="every 2 d x 3")
    both = scores_at_visits(arm, pts, V)
    rev = scores_at_visits(arm, pts[::-1], V)
    for k, v in both.items():
        if k == "time_h":
            continue
        np.testing.assert_array_equal(rev[k][::-1], v, err_msg=k)
    for i in (0, 4):
        one = scores_at_visits(arm, [pts[i]], V)
        for k in ("madrs", "drug_effect", "cadss", "madrs_item10"):
            np.testing.assert_allclose(one[k][0], both[k][i], rtol=1e-6, atol=1e-6,
                                       err_msg=k)


# ====================================================================== rodent and human
T_MOUSE = np.array([0.5, 1.0, 2.0, 4.0, 24.0, 72.0])
V_HUMAN = np.array([0.0, 2.0 / 3.0, 2.0, 4.0, 24.0, 72.0])


def _mouse_fst_effect(hyp: str | None = None, intv: str | None = None) -> np.ndarray:
    """Ketamine's fall of forced-swim immobility (s) against vehicle, 10 mg/kg i.p."""
    h = Hypotheses.parse(hyp) if hyp else None
    iv = [intv] if intv else None
    veh = _run([], MOUSE, T_MOUSE, iv, h).readouts["fst_immobility"]
    ket = _run(_mouse_ketamine(), MOUSE, T_MOUSE, iv, h).readouts["fst_immobility"]
    return veh - ket


def _human_drug_effect(pts, hyp: str = "default", intv: str = "") -> np.ndarray:
    r = scores_at_visits(_ket(hypotheses=hyp, interventions=intv), pts, V_HUMAN)
    return r["drug_effect"].mean(axis=0)[1:]


@pytest.fixture(scope="module")
def human_pts():
    return quiet(sample_arm(PopulationSpec(n=4, seed=3), 0, 4, len(V_HUMAN)))


def test_lhb_switch_moves_mouse_and_human_rapid_effect_together(human_pts):
    """Hypothesis (e) is the LHb branch that 'carries the rapid (hours) behavioural effect'
    (hypotheses card). Its weight scales the fast term of the rodent forced-swim readout; it
    must scale the fast term of the human mood drive too. Bug fixed in the tenth session: the
    mood drive ignored ``w_e``, so switching (e) off (or ``only:a`` … ``only:f`` other than
    e) left every human score unchanged while the mouse lost its rapid effect. Now the
    rapid effect falls in both with e = 0, rises in both with e = 2, and each species is
    monotone in the weight."""
    weights = (0.0, 0.5, 1.0, 2.0)
    mouse = np.array([_mouse_fst_effect(f"e={w}")[:4] for w in weights])  # 0.5–4 h
    human = np.array([_human_drug_effect(human_pts, f"e={w}")[:3] for w in weights])  # ≤ 4 h
    assert np.all(np.diff(mouse, axis=0) > 0.0)
    assert np.all(np.diff(human, axis=0) > 0.0)
    # e = 0 leaves no rapid effect in either species within the first hour
    assert human[0, 0] < 0.2 * human[2, 0] and mouse[0, 0] < 0.2 * mouse[2, 0]


@pytest.mark.parametrize("intv", ["rapamycin", "anisomycin", "nbqx", "spine-blockade",
                                  "mg=3", "mg=0.3"])
def test_intervention_moves_mouse_fst_and_human_madrs_the_same_way(human_pts, intv):
    """An intervention that removes part of ketamine's forced-swim effect in the mouse at 24 h
    and 3 d (the four-arm experiments' readout) removes part of the human drug effect at the
    same times, and one that adds (lower Mg²⁺: more block) adds in both. Rodent (10 mg/kg
    i.p.) and human (0.5 mg/kg IV) exposures differ, so only the sign is compared, at the
    times the experiments score."""
    m0, h0 = _mouse_fst_effect()[4:], _human_drug_effect(human_pts)[3:]
    m, h = _mouse_fst_effect(intv=intv)[4:], _human_drug_effect(human_pts, intv=intv)[3:]
    dm, dh = m - m0, h - h0
    assert np.all(np.abs(dm) > 1e-3 * np.abs(m0)) and np.all(np.abs(dh) > 1e-3 * h0)
    np.testing.assert_array_equal(np.sign(dm), np.sign(dh))


def test_lhb_weight_is_the_same_in_every_mood_path():
    """The (e) weight enters the reference path (``scores_batch``), the fast path
    (``scores_at_visits``) and the SBML export alike: with e = 0.4 the three give the same
    MADRS for a noise-free patient, and differ from the default weight."""
    from ketasim import bench_sbml as B
    from ketasim.sbml import export_arm

    pt = without_noise(sample_arm(PopulationSpec(n=1, seed=12), 0, 1, 8))[0]
    v = np.array([0.0, 2.0 / 3.0, 2.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    arm = _ket(hypotheses="e=0.4")
    t = B.reference_grid(arm, v)
    comp = {k: x[None] for k, x in mechanism_components(arm, pt, t).items()}
    ref = scores_batch(arm, [pt], t, v, comp)["madrs"][0]
    fast = scores_at_visits(arm, [pt], v)["madrs"][0]
    np.testing.assert_allclose(fast, ref, rtol=2e-4, atol=1e-3)
    d04 = scores_at_visits(arm, [pt], v)["drug_effect"][0]
    d1 = scores_at_visits(_ket(), [pt], v)["drug_effect"][0]
    assert np.all(d04[1:3] < 0.8 * d1[1:3])  # less rapid effect with e = 0.4 (40 min, 2 h)
    em = export_arm(arm, pt, seed=0)
    assert "w_e" in em.sbml
    rr = pytest.importorskip("roadrunner")
    del rr
    madrs = B.roadrunner_run(B.roadrunner_model(em.sbml), em.patient_parameters, v,
                             ["time", em.madrs])[:, 1]
    np.testing.assert_allclose(madrs, ref, rtol=2e-4, atol=1e-3)
