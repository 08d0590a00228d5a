"""Dynamic parameter-perturbation audit of the three computational paths (reference
engine/SciPy, fast batched clinic path, SBML export in libRoadRunner): every parameter of the
brain, receptor, signalling, interventions, hypotheses and clinic cards is perturbed (×1.2;
+0.2 from 0; −0.2 for fractions near 1) on the short course where it can act, and each path
must move the outputs it computes, by the same amount (the default-parameter tests'
tolerance). The helpers are in tests/_param_paths.py; scripts/param_paths_audit.py prints the
full table (every parameter on every course, ~2 min). Also the entry points that take
parameter values (``overrides``, the clinic constants dict, the sensitivity endpoint model)."""

from __future__ import annotations

import pytest

import _param_paths as P
from ketasim.cards import load_param_card
from ketasim.errors import KetasimError
from ketasim.sbml import MOOD_UNUSED_KEYS

#: constants no course of the shipped software can reach: HNK and R-ketamine are produced by
#: no PK card (brain card note; hypothesis (d) is off for that reason), so their Kd0, the HNK
#: AMPA constants and the weight of (d) act on nothing; memantine is no clinic arm (audited on
#: the engine and batched kernel by test_memantine_constants_reach_engine_and_batched_kernel)
UNREACHABLE = {"Kd0_arketamine", "Kd0_hnk", "E_HNK", "EC50_HNK", "w_d"}
MEMANTINE = {n for _, n in P.MEMANTINE_PARAMS}
#: the course on which each clinic constant can act (default: "single", one 0.5 mg/kg IV
#: infusion on an oral-antidepressant background, visits to day 7)
CLINIC_CASE = {
    "consolidation_gain": "series", "consolidation_threshold": "series",
    "consolidation_cap": "series", "consolidation_tau_d": "series", "priming_tau_d": "series",
    "esketamine_clinical_factor": "esketamine", "esketamine_potency_factor": "esketamine",
    "midazolam_sedation_peak": "midazolam", "midazolam_half_life_h": "midazolam",
    "residual_sd": "noisy", "suicidality_residual_sd": "noisy",
}
MECH_CASE = {"Kd0_esketamine": "esketamine", "Kd0_noresketamine": "esketamine"}


def _case(card: str, name: str) -> str:
    if card == "interventions":
        return P.INTERVENTION_CASES[name][0]
    if card == "clinic":
        return CLINIC_CASE.get(name, "single")
    return MECH_CASE.get(name, "single")


AUDITED = [(c, n) for c, n in P.all_parameters() if n not in MEMANTINE]


def test_every_parameter_is_audited_somewhere():
    """The audit covers every parameter of the audited cards, in particular every constant
    the fast kernel and the SBML export take (sbml MOOD_* keys, MechanismParams.packed)."""
    from ketasim.mechanism import _SIG_KEYS
    from ketasim.sbml import MOOD_CARD_KEYS, MOOD_PATIENT_KEYS, MOOD_UNUSED_KEYS

    names = {n for _, n in AUDITED} | MEMANTINE
    assert set(MOOD_CARD_KEYS) | set(MOOD_PATIENT_KEYS) | set(MOOD_UNUSED_KEYS) <= names
    assert set(_SIG_KEYS) <= names
    assert set(load_param_card("receptor").parameters) <= names


#: clinic constants the SBML export does not carry and that do not act through the patients
#: it is given (suicidality, side effects, other scales, noise, midazolam): reference and fast
#: paths only
NOT_IN_SBML = set(MOOD_UNUSED_KEYS) - {"pk_iiv_cv", "madrs_baseline_trd", "madrs_baseline_mdd",
                                      "madrs_baseline_bipolar", "madrs_baseline_sd"}


@pytest.mark.parametrize(("card", "name"), AUDITED, ids=[n for _, n in AUDITED])
def test_parameter_moves_every_path_alike(card, name):
    r = P.audit(card, name, cases=(_case(card, name),), sbml=name not in NOT_IN_SBML)
    # the paths agree on the perturbed course, and an output that one path moves by more than
    # the tolerance moves in every other path that computes it (MADRS and the mechanism
    # states in the SBML export)
    assert not r.disagree, r.disagree
    assert not r.one_sided, r.one_sided
    if name in UNREACHABLE:
        assert r.dead, (name, r.change)
        return
    assert not r.dead, f"{card}.{name} changes nothing on {r.cases}"


@pytest.mark.parametrize("h", "abcef")
def test_hypothesis_weight_on_the_arm_reaches_every_path(h):
    r = P.hypothesis_arm_audit(h, cases=("single",))
    assert not r.dead and not r.disagree, r.disagree
    assert "madrs" in r.outputs("sbml") and "madrs" in r.outputs("fast")


@pytest.mark.parametrize(("card", "name"), P.MEMANTINE_PARAMS)
def test_memantine_constants_reach_engine_and_batched_kernel(card, name):
    moved, gap = P.memantine_audit(card, name)
    assert moved > 1e-6
    assert gap < 1e-3


MECH_NAMES = [n for c in ("receptor", "signalling") for n in load_param_card(c).parameters]


def test_mechanism_overrides_equal_card_values():
    """``overrides`` (engine.simulate through mood.mechanism_run, as validate and sensitivity
    pass them; batch.simulate_batch) give exactly what the same value on the card gives."""
    for name in MECH_NAMES:
        got = P.override_entry_audit(name)
        assert max(got.values()) < 1e-12, (name, got)


#: clinic constants a constants dict cannot carry: they act when patients are drawn
#: (population.sample_arm), before the dict is used
POPULATION = {"pk_iiv_cv", "madrs_baseline_trd", "madrs_baseline_mdd",
              "madrs_baseline_bipolar", "madrs_baseline_sd"}


@pytest.mark.parametrize("case", ["single", "esketamine", "midazolam"])
def test_clinic_constants_dict_equals_card_values(case):
    """mood.scores_batch's constants dict ``c`` (validate, sensitivity, the clinic calibration)
    acts as the card value would, for every constant other than the population draws."""
    for name in load_param_card("clinic").parameters:
        if name in POPULATION:
            continue
        g, _ = P.clinic_dict_audit(name, case)
        assert g <= 1e-6, (name, case, g)


@pytest.mark.parametrize("name", ["madrs_baseline_trd", "madrs_baseline_sd"])
def test_sensitivity_baseline_constants_act(name):
    """The sensitivity endpoint model draws patients once; their baseline MADRS comes from
    these two constants, so varying them must move the endpoint as the card value does."""
    seen, card = P.sensitivity_audit(name)
    assert card > 1e-3
    assert seen == pytest.approx(card, rel=1e-9)


def test_sensitivity_refuses_constants_its_design_cannot_vary():
    """pk_iiv_cv acts only through per-patient PK, which the sensitivity design replaces by a
    typical patient's drive: refused rather than reported with a zero index."""
    from ketasim.sensitivity import resolve_parameters

    with pytest.raises(KetasimError, match="pk_iiv_cv"):
        resolve_parameters(["pk_iiv_cv", "drug_emax"])


def test_full_audit_table_runs_on_a_subset(capsys, monkeypatch):
    """scripts/param_paths_audit.py's table on two parameters (the full run takes ~2 min)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "param_paths_audit.py"
    spec = importlib.util.spec_from_file_location("param_paths_audit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(sys, "argv", ["param_paths_audit.py", "--only", "a_fast", "q"])
    assert mod.main() == 0
    out = capsys.readouterr().out
    assert "2 perturbations, 0 dead" in out and "0 path mismatches" in out
