"""The PK engine against closed forms, an independent solver, mass balance and published F."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.linalg import expm

from ketasim.cards import PKCard, load_pk_card, load_pk_cards
from ketasim.errors import KetasimError, StudiedRangeWarning
from ketasim.pk import Covariates, assemble, simulate_pk, solve, solve_reference
from ketasim.pk.model import check_studied_range
from ketasim.regimen import Dose, Infusion, Regimen
from ketasim.units import DoseAmount

MIN = 1.0 / 60.0  # h


def _rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ====================================================================== (a) closed forms
W_1CMT = 55.0
V_PER_KG, CL_REF, KA, F_ORAL, KE0, D_ZO = 0.6, 10.0, 1.3, 0.7, 2.0, 0.75


def _one_compartment_card() -> PKCard:
    src = "test card"
    return PKCard.model_validate({
        "id": "one-cmt-test",
        "drug": "ketamine",
        "title": "1-compartment test model",
        "citation": "written in the test suite",
        "doi": "10.0000/test",
        "sampling": "unknown",
        "population": {"description": "test", "age_years": [18, 65], "weight_kg": [40, 120]},
        "parameters": {
            "V": {"value": V_PER_KG, "units": "L/kg", "evidence": "read", "source": src},
            "CL": {"value": CL_REF, "units": "L/h", "evidence": "read", "source": src,
                   "scaling": {"reference_kg": 70, "exponent": 0.75}},
            "ka": {"value": KA * 60.0 / 60.0, "units": "1/h", "evidence": "read", "source": src},
            "F": {"value": F_ORAL, "units": "", "evidence": "read", "source": src},
            "ke0": {"value": KE0 / 60.0, "units": "1/min", "evidence": "read", "source": src},
            "D": {"value": D_ZO * 60.0, "units": "min", "evidence": "read", "source": src},
        },
        "compartments": [
            {"name": "depot", "species": "ketamine", "role": "depot"},
            {"name": "central", "species": "ketamine", "volume": "V", "role": "plasma"},
        ],
        "flows": [
            {"from": "depot", "to": "central", "rate": "ka"},
            {"from": "central", "to": "out", "clearance": "CL"},
        ],
        "routes": {
            "iv-bolus": {"inputs": [{"to": "central"}]},
            "iv-infusion": {"inputs": [{"to": "central"}]},
            "oral": {"inputs": [{"to": "depot", "fraction": ["F"]}]},
            "rectal": {"inputs": [{"to": "central", "duration": "D"}]},
        },
        "effect_site": {"of": "central", "ke0": "ke0"},
    })


@pytest.fixture(scope="module")
def one_cmt():
    card = _one_compartment_card()
    v = V_PER_KG * W_1CMT
    cl = CL_REF * (W_1CMT / 70.0) ** 0.75
    return card, v, cl, cl / v


def _solve_1cmt(card, regimen, t):
    system = assemble(card, Covariates(weight_kg=W_1CMT), routes=regimen.routes)
    return solve(system, regimen, t, W_1CMT)


def _grid(t0: float, t1: float, n: int) -> np.ndarray:
    """Output times with at most 6 decimals (h).

    The solver rounds break points to 1e-9 h (3.6 µs) to merge coincident events, so a time
    such as 1/7 h is solved at 0.142857143 h: a relative error up to |d ln C/dt|·5e-10 h,
    about 3e-9 early in an infusion. Times exact at 1e-9 h isolate the solver's own error.
    """
    return np.round(np.linspace(t0, t1, n), 6)


T_1CMT = np.concatenate([[0.0], _grid(0.05, 48.0, 240)])


def test_one_compartment_parameters_scaled(one_cmt):
    card, v, cl, _ = one_cmt
    system = assemble(card, Covariates(weight_kg=W_1CMT), routes=("iv-bolus",))
    assert system.params["V"][0] == pytest.approx(v, rel=1e-14)
    assert system.params["CL"][0] == pytest.approx(cl, rel=1e-14)
    assert system.params["ke0"][0] == pytest.approx(KE0, rel=1e-14)
    assert system.params["D"][0] == pytest.approx(D_ZO, rel=1e-14)


def test_iv_bolus_closed_form(one_cmt):
    card, v, cl, k = one_cmt
    dose = 25.0
    sol = _solve_1cmt(card, Regimen.build("iv-bolus", f"{dose} mg"), T_1CMT)
    c = sol.plasma_mg_per_l()[0]
    expect = dose / v * np.exp(-k * T_1CMT)
    assert _rel(c, expect) <= 1e-9
    assert c[0] == pytest.approx(dose / v, rel=1e-12)  # the bolus is in the t=0 state
    # AUC and eliminated amount: AUC(t) = D/CL (1 - e^{-kt}), eliminated = CL * AUC
    auc = sol.integral("auc_ketamine")[0][1:]
    assert _rel(auc, dose / cl * (1 - np.exp(-k * T_1CMT[1:]))) <= 1e-9
    elim = sol.integral("eliminated_ketamine")[0][1:]
    assert _rel(elim, dose * (1 - np.exp(-k * T_1CMT[1:]))) <= 1e-9
    # effect site: Ce = D/V · ke0/(ke0-k) · (e^{-kt} - e^{-ke0 t})
    ce = sol.effect_mg_per_l()[0][1:]
    tt = T_1CMT[1:]
    assert _rel(ce, dose / v * KE0 / (KE0 - k) * (np.exp(-k * tt) - np.exp(-KE0 * tt))) <= 1e-9


def test_iv_bolus_weight_scaled_dose(one_cmt):
    card, v, _, k = one_cmt
    sol = _solve_1cmt(card, Regimen.build("iv-bolus", "0.5 mg/kg"), T_1CMT)
    assert _rel(sol.plasma_mg_per_l()[0], 0.5 * W_1CMT / v * np.exp(-k * T_1CMT)) <= 1e-9


def test_repeated_bolus_superposition(one_cmt):
    card, v, _, k = one_cmt
    reg = Regimen.build("iv-bolus", "10 mg", schedule="every 7.5 h x 5")
    t = _grid(0.1, 60.0, 300)
    c = _solve_1cmt(card, reg, t).plasma_mg_per_l()[0]
    expect = sum(10.0 / v * np.exp(-k * (t - tk)) * (t >= tk) for tk in 7.5 * np.arange(5))
    assert _rel(c, expect) <= 1e-9


def _infusion_closed_form(t, dose, dur, v, cl, k, t0=0.0):
    rate = dose / dur
    tau = t - t0
    during = rate / cl * (1 - np.exp(-k * np.clip(tau, 0, None)))
    end = rate / cl * (1 - np.exp(-k * dur))
    after = end * np.exp(-k * (tau - dur))
    return np.where(tau <= 0, 0.0, np.where(tau <= dur, during, after))


def test_iv_infusion_closed_form(one_cmt):
    card, v, cl, k = one_cmt
    t = _grid(0.02, 48.0, 400)
    reg = Regimen.build("iv-infusion", "35 mg", duration="45 min")
    c = _solve_1cmt(card, reg, t).plasma_mg_per_l()[0]
    assert _rel(c, _infusion_closed_form(t, 35.0, 0.75, v, cl, k)) <= 1e-9


def test_iv_infusion_started_late_closed_form(one_cmt):
    card, v, cl, k = one_cmt
    t = _grid(3.05, 30.0, 200)
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="2 h", start="3 h")
    c = _solve_1cmt(card, reg, t).plasma_mg_per_l()[0]
    assert _rel(c, _infusion_closed_form(t, 0.5 * W_1CMT, 2.0, v, cl, k, t0=3.0)) <= 1e-9
    early = _solve_1cmt(card, reg, np.array([0.5, 2.9])).plasma_mg_per_l()[0]
    assert np.all(early == 0.0)


def test_arbitrary_output_times_close_to_closed_form(one_cmt):
    """Times not on the 1e-9 h grid (e.g. whole minutes) are within the rounding error."""
    card, v, cl, k = one_cmt
    t = np.arange(1, 600) * MIN
    reg = Regimen.build("iv-infusion", "35 mg", duration="40 min")
    c = _solve_1cmt(card, reg, t).plasma_mg_per_l()[0]
    expect = _infusion_closed_form(t, 35.0, 40 * MIN, v, cl, k)
    # |d ln C/dt| <= 1/t during the infusion and = k after it; output times and the infusion
    # end are each rounded by at most 5e-10 h
    assert np.all(np.abs(c / expect - 1) <= 1e-9 / t + 1e-9)


def test_route_zero_order_input_closed_form(one_cmt):
    """A route with a zero-order duration on the card behaves as an infusion over D."""
    card, v, cl, k = one_cmt
    t = _grid(0.02, 24.0, 200)
    c = _solve_1cmt(card, Regimen.build("rectal", "20 mg"), t).plasma_mg_per_l()[0]
    assert _rel(c, _infusion_closed_form(t, 20.0, D_ZO, v, cl, k)) <= 1e-9


def test_first_order_absorption_bateman(one_cmt):
    card, v, _, k = one_cmt
    dose = 50.0
    t = _grid(0.02, 48.0, 300)
    sol = _solve_1cmt(card, Regimen.build("oral", f"{dose} mg"), t)
    c = sol.plasma_mg_per_l()[0]
    expect = F_ORAL * dose * KA / (v * (KA - k)) * (np.exp(-k * t) - np.exp(-KA * t))
    assert _rel(c, expect) <= 1e-9
    assert sol.schedule.presystemic_mg[0] == pytest.approx(dose * (1 - F_ORAL), rel=1e-12)
    # depot amount: F·D·e^{-ka t}
    depot = sol.x[0, :, sol.system.index("depot")]
    assert _rel(depot, F_ORAL * dose * np.exp(-KA * t)) <= 1e-9


# ====================================================================== (b, c) 3-compartment
T_MIN = np.arange(5, 360, 1.0)  # 5..359 min


def _reference_3cmt_mg_per_l(model: str, weight: float, dose_mg: float, dur_min: float,
                             t_min: np.ndarray) -> np.ndarray:
    """Independent mammillary 3-compartment model from the published constants (per min)."""
    if model == "kamp2020":
        s = weight / 70.0
        v1, v2, v3 = 25.0 * s, 56.0 * s, 157.0 * s  # L
        cl, q2, q3 = 84.0 * s / 60, 161.0 * s / 60, 79.0 * s / 60  # L/min
        k10, k12, k21, k13, k31 = cl / v1, q2 / v1, q2 / v2, q3 / v1, q3 / v3
    elif model == "domino":
        v1 = 0.063 * weight
        k10, k12, k21, k13, k31 = 0.4381, 0.5921, 0.2470, 0.5900, 0.0146
    else:
        raise AssertionError(model)
    K = np.array([
        [-(k10 + k12 + k13), k21, k31],
        [k12, -k21, 0.0],
        [k13, 0.0, -k31],
    ])
    rate = dose_mg / dur_min
    aug = np.zeros((4, 4))
    aug[:3, :3] = K
    aug[0, 3] = rate  # constant input as a 4th state held at 1
    x_end = expm(aug * dur_min)[:3, 3]
    out = np.empty(len(t_min))
    for i, tm in enumerate(t_min):
        if tm <= dur_min:
            out[i] = expm(aug * tm)[0, 3]
        else:
            out[i] = (expm(K * (tm - dur_min)) @ x_end)[0]
    return out / v1


@pytest.mark.parametrize("model", ["kamp2020", "domino"])
def test_exact_solver_matches_scipy_reference(model):
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    system = assemble(model, Covariates(weight_kg=70.0), routes=reg.routes)
    t = T_MIN * MIN
    exact = solve(system, reg, t, 70.0)
    ref = solve_reference(system, reg, t, 70.0)
    assert _rel(exact.plasma_mg_per_l(), ref.plasma_mg_per_l()) <= 1e-6
    assert _rel(exact.effect_mg_per_l(), ref.effect_mg_per_l()) <= 1e-6
    nk_e, nk_r = exact.plasma_mg_per_l("norketamine"), ref.plasma_mg_per_l("norketamine")
    assert _rel(nk_e, nk_r) <= 1e-6


@pytest.mark.parametrize("model", ["kamp2020", "domino"])
@pytest.mark.parametrize("weight", [70.0, 55.0])
def test_three_compartment_independent(model, weight):
    dose = 0.5 * weight
    expect = _reference_3cmt_mg_per_l(model, weight, dose, 40.0, T_MIN)
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    system = assemble(model, Covariates(weight_kg=weight), routes=reg.routes)
    got = solve(system, reg, T_MIN * MIN, weight).plasma_mg_per_l()[0]
    assert _rel(got, expect) <= 1e-6
    # the public entry point reports the same, in ng/mL
    res = simulate_pk(reg, T_MIN * MIN, model=model, covariates=Covariates(weight_kg=weight))
    assert _rel(res.plasma_ng_per_ml["ketamine"][0], 1000.0 * expect) <= 1e-6


@pytest.mark.parametrize("model", ["kamp2020", "domino"])
def test_infusion_peak_at_end_of_infusion(model):
    """For a mammillary model, plasma rises during a constant infusion and falls after it."""
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    res = simulate_pk(reg, T_MIN * MIN, model=model)
    assert res.summary["tmax_h"][0] == pytest.approx(40 * MIN, abs=1e-9)
    c_end = 1000.0 * _reference_3cmt_mg_per_l(model, 70.0, 35.0, 40.0, np.array([40.0]))[0]
    assert res.summary["cmax_ng_per_ml"][0] == pytest.approx(c_end, rel=1e-6)


def test_auc_inf_equals_dose_over_clearance_kamp():
    """Linear model, elimination from central only: AUC_0-inf = dose / CL."""
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    for w in (55.0, 70.0, 90.0):
        res = simulate_pk(reg, np.linspace(0.1, 48.0, 50), model="kamp2020",
                          covariates=Covariates(weight_kg=w))
        cl = 84.0 * w / 70.0  # L/h
        assert res.summary["auc_0_inf_ng_h_per_ml"][0] == pytest.approx(
            0.5 * w / cl * 1000.0, rel=1e-6)


# ====================================================================== (d) mass balance
def _route_cases():
    for cid, card in sorted(load_pk_cards().items()):
        for route in card.routes:
            yield pytest.param(cid, route, id=f"{cid}-{route}")


def _expected_presystemic_fraction(card: PKCard, route: str, dose_mg: float) -> float:
    """1 − bioavailable fraction, written from the card parameters by hand."""
    p = {k: v.value for k, v in card.parameters.items()}
    if route in ("iv-bolus", "iv-infusion"):
        return 0.0
    if card.id == "perez-ruixo-2021":
        if route == "oral":
            return 1.0 - p["Fgut"]
        n = max(1.0, dose_mg / p["device_mg"])
        frn = p["FRn"] * (1 + (n - 1) * p["FRn_dose_effect"]) / n
        return (1.0 - frn) * (1.0 - p["Fgut"])
    if card.id == "memantine-label":
        return 1.0 - p["F"]
    if card.id in ("mouse-ip", "rat-ip"):
        return 1.0 - p["F_ip"]
    key = {"im": "F_im", "sc": "F_sc", "intranasal": "F_in", "oral": "Fgut_oral",
           "sublingual": "F_sl", "rectal": "F_rectal"}[route]
    return 1.0 - p[key]


@pytest.mark.parametrize(("cid", "route"), list(_route_cases()))
def test_mass_balance_every_route(cid, route):
    card = load_pk_card(cid)
    weight = {"mouse": 0.03, "rat": 0.3}.get(card.species, 70.0)
    dose = "56 mg" if card.drug == "esketamine" else "0.5 mg/kg"
    kw = {"duration": "40 min"} if route == "iv-infusion" else {}
    reg = Regimen.build(route, dose, schedule="at 0, 6 h, 30 h", **kw)
    t = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 6.0, 6.2, 6.5, 12.0, 30.0, 30.3,
                  48.0, 96.0, 400.0])
    system = assemble(card, Covariates(weight_kg=weight, species=card.species),
                      routes=reg.routes)
    sol = solve(system, reg, t, weight)
    total = reg.total_mg(weight)
    in_body = sol.mass_in_body_mg()[0]
    elim = sol.eliminated_mg()[0]
    entered = sol.dosed_by()[0]
    pre = sol.schedule.presystemic_mg[0]
    # conservation at every time: what entered = what is inside + what has left
    np.testing.assert_allclose(in_body + elim, entered, rtol=0, atol=1e-9 * total)
    # the books close: dosed = in body + eliminated + presystemic
    assert sol.schedule.dosed_mg[0] == pytest.approx(total, rel=1e-12)
    assert in_body[-1] + elim[-1] + pre == pytest.approx(total, rel=1e-9)
    # the presystemic loss is the card's bioavailability, independently written
    per_dose = total / 3.0
    assert pre == pytest.approx(3 * per_dose * _expected_presystemic_fraction(card, route,
                                                                              per_dose),
                                rel=1e-9, abs=1e-12 * total)
    # amounts are never negative
    assert np.all(sol.x[0][:, system.mass_states] >= -1e-12 * total)
    # everything has entered by the end and almost all of it has left after 400 h... or is
    # still in the slow compartments: in any case, elimination never decreases
    assert np.all(np.diff(elim) >= -1e-12 * total)


# ====================================================================== (e) esketamine F
def _published_f_intranasal(dose_mg: float) -> float:
    p = {k: v.value for k, v in load_pk_card("perez-ruixo-2021").parameters.items()}
    n = max(1.0, dose_mg / p["device_mg"])
    frn_eff = p["FRn"] * (1 + (n - 1) * p["FRn_dose_effect"]) / n
    cl_h = p["Vh"] * (p["kel"] + p["kmet"])
    e = cl_h / (p["Qh"] + cl_h)
    return frn_eff + (1 - frn_eff) * p["Fgut"] * (1 - e)


def test_published_f_values():
    """Sanity of the formula itself against the rounded values quoted for SPRAVATO doses."""
    for dose, f in ((28, 0.62), (56, 0.54), (84, 0.51)):
        assert _published_f_intranasal(dose) == pytest.approx(f, abs=0.01)


T_ESK = np.linspace(0.05, 72.0, 60)


@pytest.fixture(scope="module")
def esk_iv_auc_per_mg():
    res = simulate_pk(Regimen.build("iv-bolus", "28 mg"), T_ESK, drug="esketamine")
    return res.summary["auc_0_inf_ng_h_per_ml"][0] / 28.0


@pytest.mark.parametrize("dose", [28, 56, 84])
def test_esketamine_intranasal_bioavailability(dose, esk_iv_auc_per_mg):
    res = simulate_pk(Regimen.build("intranasal", f"{dose} mg"), T_ESK, drug="esketamine")
    assert res.card.id == "perez-ruixo-2021"
    f_model = res.summary["auc_0_inf_ng_h_per_ml"][0] / dose / esk_iv_auc_per_mg
    assert f_model == pytest.approx(_published_f_intranasal(dose), rel=1e-6)


def test_esketamine_oral_bioavailability(esk_iv_auc_per_mg):
    p = {k: v.value for k, v in load_pk_card("perez-ruixo-2021").parameters.items()}
    cl_h = p["Vh"] * (p["kel"] + p["kmet"])
    f_po = p["Fgut"] * (1 - cl_h / (p["Qh"] + cl_h))
    res = simulate_pk(Regimen.build("oral", "84 mg"), T_ESK, drug="esketamine")
    f_model = res.summary["auc_0_inf_ng_h_per_ml"][0] / 84.0 / esk_iv_auc_per_mg
    assert f_model == pytest.approx(f_po, rel=1e-6)


def test_esketamine_iv_auc_by_integration(esk_iv_auc_per_mg):
    """AUC_0-inf from the summary equals the solver's running AUC integral far out."""
    reg = Regimen.build("iv-bolus", "28 mg")
    system = assemble("perez-ruixo-2021", Covariates(), routes=reg.routes)
    sol = solve(system, reg, np.array([1.0, 2000.0]), 70.0)
    auc = sol.integral("auc_esketamine")[0, -1] * 1000.0
    assert auc / 28.0 == pytest.approx(esk_iv_auc_per_mg, rel=1e-6)


def test_esketamine_auc_inf_independent_of_output_grid():
    reg = Regimen.build("intranasal", "56 mg")
    long = simulate_pk(reg, T_ESK, drug="esketamine")
    short = simulate_pk(reg, np.linspace(0.05, 0.25, 5), drug="esketamine")
    assert short.summary["auc_0_inf_ng_h_per_ml"][0] == pytest.approx(
        long.summary["auc_0_inf_ng_h_per_ml"][0], rel=1e-6)


# ====================================================================== (f) batch
WEIGHTS = np.array([45.0, 58.5, 70.0, 96.0, 140.0])


@pytest.mark.parametrize("model", ["kamp2020", "hornik2018", "clements1981"])
def test_batch_equals_one_at_a_time(model):
    # absolute doses: with per-kg doses a model linear in weight gives identical concentrations
    reg = (Regimen.build("iv-infusion", "35 mg", duration="40 min")
           + Regimen.build("im", "0.25 mg/kg", start="5 h"))
    t = np.linspace(0.05, 24.0, 97)
    batch_sys = assemble(model, Covariates(weight_kg=WEIGHTS), routes=reg.routes)
    assert batch_sys.n == len(WEIGHTS)
    batch = solve(batch_sys, reg, t, WEIGHTS)
    assert batch.x.shape[0] == len(WEIGHTS)
    for i, w in enumerate(WEIGHTS):
        one_sys = assemble(model, Covariates(weight_kg=w), routes=reg.routes)
        one = solve(one_sys, reg, t, w)
        np.testing.assert_allclose(batch.x[i], one.x[0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(batch.integrals[i], one.integrals[0], rtol=1e-10,
                                   atol=1e-14)
    # different weights really give different answers (the batch is not one patient copied)
    assert len({round(float(c), 6) for c in batch.plasma_mg_per_l()[:, 10]}) == len(WEIGHTS)


def test_batch_simulate_pk_equals_one_at_a_time():
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    t = np.linspace(5, 359, 60) * MIN
    batch = simulate_pk(reg, t, model="kamp2020", covariates=Covariates(weight_kg=WEIGHTS))
    for i, w in enumerate(WEIGHTS):
        one = simulate_pk(reg, t, model="kamp2020", covariates=Covariates(weight_kg=w))
        np.testing.assert_allclose(batch.plasma_ng_per_ml["ketamine"][i],
                                   one.plasma_ng_per_ml["ketamine"][0], rtol=1e-10)
        for key in ("cmax_ng_per_ml", "tmax_h", "auc_0_inf_ng_h_per_ml"):
            assert batch.summary[key][i] == pytest.approx(one.summary[key][0], rel=1e-10)


def test_batch_of_ages_esketamine():
    """Age covariate on Qh (linear above 60 y), batched."""
    ages = np.array([30.0, 60.0, 70.0, 85.0])
    reg = Regimen.build("intranasal", "56 mg")
    t = np.linspace(0.1, 24, 40)
    batch = simulate_pk(reg, t, drug="esketamine", covariates=Covariates(age_years=ages))
    for i, a in enumerate(ages):
        one = simulate_pk(reg, t, drug="esketamine", covariates=Covariates(age_years=a))
        np.testing.assert_allclose(batch.plasma_ng_per_ml["esketamine"][i],
                                   one.plasma_ng_per_ml["esketamine"][0], rtol=1e-10)
    system = assemble("perez-ruixo-2021", Covariates(age_years=ages))
    np.testing.assert_allclose(system.params["Qh"],
                               151.0 - 2.19 * np.maximum(0.0, ages - 60.0), rtol=1e-12)


# ====================================================================== (g) errors, warnings
@pytest.mark.parametrize("weight", [0.0, 0.49, 300.1, 1000.0, -70.0, float("nan"),
                                    [70.0, 400.0]])
def test_weight_outside_limits(weight):
    with pytest.raises(KetasimError) as exc:
        Covariates(weight_kg=weight)
    assert exc.value.field == "weight"


@pytest.mark.parametrize("weight", [0.5, 300.0])
def test_weight_limits_inclusive(weight):
    assert Covariates(weight_kg=weight).weight_kg[0] == weight


@pytest.mark.parametrize("route", ["im", "sc", "sublingual", "rectal"])
def test_unsupported_route_for_model(route):
    reg = Regimen.build(route, "28 mg")
    with pytest.raises(KetasimError) as exc:
        simulate_pk(reg, [1.0], drug="esketamine", model="perez-ruixo-2021")
    assert exc.value.field == "route"
    assert route in str(exc.value)
    with pytest.raises(KetasimError):
        assemble("perez-ruixo-2021", routes=(route,))
    system = assemble("perez-ruixo-2021", routes=("iv-bolus",))
    with pytest.raises(KetasimError):
        solve(system, reg, np.array([1.0]), 70.0)


def test_route_not_assembled_gives_ketasim_error():
    system = assemble("kamp2020", routes=("iv-bolus",))
    with pytest.raises(KetasimError):
        solve(system, Regimen.build("oral", "50 mg"), np.array([1.0]), 70.0)


def test_model_for_other_drug():
    with pytest.raises(KetasimError) as exc:
        simulate_pk(Regimen.build("iv-bolus", "28 mg"), [1.0], drug="esketamine",
                    model="kamp2020")
    assert exc.value.field == "model"


@pytest.mark.parametrize("times", [[0.0, 1.0, 1.0], [1.0, 0.5], [-1.0, 1.0], [],
                                   [0.0, float("nan")], [[0.0, 1.0]]])
def test_bad_times(times):
    reg = Regimen.build("iv-bolus", "10 mg")
    system = assemble("kamp2020", routes=reg.routes)
    with pytest.raises(KetasimError) as exc:
        solve(system, reg, np.array(times, dtype=float), 70.0)
    assert exc.value.field == "times"
    with pytest.raises(KetasimError):
        solve_reference(system, reg, np.array(times, dtype=float), 70.0)
    with pytest.raises(KetasimError):
        simulate_pk(reg, times, model="kamp2020")


def test_empty_regimen():
    with pytest.raises(KetasimError):
        simulate_pk(Regimen(), [1.0])


def test_studied_range_warnings():
    kamp = load_pk_card("kamp2020")  # adults 18–65 y, 45–120 kg
    with pytest.warns(StudiedRangeWarning, match="weight"):
        msgs = check_studied_range(kamp, Covariates(weight_kg=150.0))
    assert len(msgs) == 1 and "kamp2020" in msgs[0]
    with pytest.warns(StudiedRangeWarning, match="age"):
        check_studied_range(kamp, Covariates(age_years=80.0))
    with pytest.warns(StudiedRangeWarning, match="weight"):
        check_studied_range(kamp, Covariates(weight_kg=[70.0, 30.0]))
    hornik = load_pk_card("hornik2018")  # children 1–18 y
    with pytest.warns(StudiedRangeWarning, match="age"):
        check_studied_range(hornik, Covariates(age_years=40.0))
    # inside the range: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", StudiedRangeWarning)
        assert check_studied_range(kamp, Covariates(weight_kg=70.0, age_years=40.0)) == []
        assert check_studied_range(kamp, Covariates(weight_kg=45.0, age_years=65.0)) == []


def test_simulate_pk_reports_out_of_range_covariates():
    res = simulate_pk(Regimen.build("iv-bolus", "10 mg"), [1.0], model="kamp2020",
                      covariates=Covariates(weight_kg=150.0))
    assert any("outside the range" in m for m in res.warnings)
    res = simulate_pk(Regimen.build("iv-bolus", "10 mg"), [1.0], model="kamp2020")
    assert not any("outside the range" in m for m in res.warnings)


def test_dose_objects_feed_the_solver_directly():
    """Dose/Infusion built by hand and from strings give the same answer."""
    a = Regimen((Dose(0.0, DoseAmount(35.0, False), "iv-bolus"),
                 Infusion(2.0, DoseAmount(0.5, True), 40 * MIN)))
    b = Regimen.build("iv-bolus", "35 mg") + Regimen.build("iv", "0.5 mg/kg",
                                                          duration="40 min", start="2 h")
    t = np.linspace(0.1, 12, 30)
    ra = simulate_pk(a, t, model="kamp2020").plasma_ng_per_ml["ketamine"]
    rb = simulate_pk(b, t, model="kamp2020").plasma_ng_per_ml["ketamine"]
    np.testing.assert_array_equal(ra, rb)


def test_metadata_records_covariates_regimen_times_and_iiv():
    """A batch's covariates and factors, the regimen and the output times are in the metadata."""
    reg = Regimen((Infusion(0.0, DoseAmount(0.5, True), 40 / 60), Dose(24.0, DoseAmount(20, False),
                                                                      "iv-bolus")))
    cov = Covariates(weight_kg=np.array([60.0, 90.0]), age_years=50.0, sex="female")
    res = simulate_pk(reg, [0.5, 1.0, 25.0], model="kamp2020", covariates=cov,
                      iiv={"CL": np.array([0.8, 1.25])})
    m = res.metadata
    assert m["covariates"] == {"weight_kg": [60.0, 90.0], "age_years": 50.0, "sex": "female",
                               "race": "caucasian", "species": "human"}
    assert m["regimen"] == [
        {"time_h": 0.0, "amount": 0.5, "unit": "mg/kg", "duration_h": 40 / 60,
         "route": "iv-infusion"},
        {"time_h": 24.0, "amount": 20.0, "unit": "mg", "duration_h": 0.0, "route": "iv-bolus"}]
    assert m["times"] == {"n": 3, "first_h": 0.5, "last_h": 25.0, "values_h": [0.5, 1.0, 25.0]}
    assert m["iiv"] == {"CL": [0.8, 1.25]}
    assert m["enantiomers"] is False and m["model"] == "kamp2020"


def test_metadata_times_of_a_long_grid_are_summarised():
    from ketasim.pk.solve import describe_times

    t = np.arange(0.0, 5000.0) * 0.1
    d = describe_times(t)
    assert d["n"] == 5000 and d["step_h"] == pytest.approx(0.1) and "values_h" not in d
    assert len(d["sha256"]) == 64 and describe_times(t + 0.0)["sha256"] == d["sha256"]
