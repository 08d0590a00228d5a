"""Compensated-genotype readouts of the genetic experiments (eleventh session).

Genetic interventions act for life and move the model's drug-free baseline (eEF2K knockout
immobility 0 s, BDNF knockout 300 s). ``fst_immobility_compensated`` and
``<readout>_within_genotype`` take each genotype's own vehicle arm as its baseline; every
existing readout must stay as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ketasim.cards import load_param_card
from ketasim.cli import main
from ketasim.experiments import (
    EXPERIMENTS,
    GENETIC,
    SYNAPTIC,
    effect_removed,
    run_experiment,
)
from ketasim.mechanism import MechanismParams, fst_immobility_of

GENETIC_EXPERIMENTS = ("glun2b-deletion", "eef2k-knockout", "bdnf-knockout")
NEW = (*(f"{r}_within_genotype" for r in SYNAPTIC), "fst_immobility_compensated")


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return {n: run_experiment(n) for n in GENETIC_EXPERIMENTS}


def _readout(res: dict, name: str, t: float = 24.0) -> dict[str, float]:
    (r,) = [r for r in res["readouts"] if r["readout"] == name and r["time_h"] == t]
    return r["arms"]


def test_genetic_experiments_are_the_ones_with_a_genetic_intervention():
    assert set(GENETIC_EXPERIMENTS) <= set(GENETIC)
    assert set(GENETIC_EXPERIMENTS) == set(GENETIC) & set(EXPERIMENTS)


def test_existing_readouts_come_first_and_are_unchanged(runs):
    """The four original readouts keep their order and values (recorded before the change:
    the floor and ceiling of fst_immobility included); the new ones are appended."""
    before = {  # fst_immobility at 24 h, s (main at ae54da6)
        "glun2b-deletion": (150.0, 127.760503, 127.865612, 124.470624),
        "eef2k-knockout": (150.0, 127.760503, 0.0, 0.0),
        "bdnf-knockout": (150.0, 127.760503, 300.0, 300.0),
    }
    for name, res in runs.items():
        names = [r["readout"] for r in res["readouts"]]
        assert names == [*SYNAPTIC, "fst_immobility", *NEW], name
        arms = _readout(res, "fst_immobility")
        got = [arms[a] for a in ("vehicle", "ketamine", "intervention",
                                 "intervention+ketamine")]
        assert np.allclose(got, before[name], atol=1e-5), (name, got)


def test_non_genetic_experiments_get_no_new_readout():
    for name in ("rapamycin", "spine-blockade"):
        names = {r["readout"] for r in run_experiment(name)["readouts"]}
        assert not names & set(NEW), name


def test_fst_immobility_of_is_the_readout_formula():
    """The factored-out formula with the default baseline is the card formula, clip
    included; a given baseline replaces I_0 but not the clip (0 to 2·fst_immobility0)."""
    p = MechanismParams.from_cards(("ketamine",))
    s = {k: v.value for k, v in load_param_card("signalling").parameters.items()}
    i0, ef, es = s["fst_immobility0"], s["fst_E_fast"], s["fst_E_syn"]
    lhb = np.array([1.0, 0.4, 1.2, 1.0, 1.0])
    w = np.array([1.0, 1.02, 0.99, 5.0, -1.0])
    want = np.clip(i0 * (1 - ef * p.hyp.e * np.maximum(1 - lhb, 0) - es * (w - 1)), 0, 2 * i0)
    assert np.allclose(fst_immobility_of(lhb, w, p), want, rtol=0, atol=1e-12)
    got = fst_immobility_of(lhb, w, p, baseline_s=100.0)
    assert got[0] == 100.0 and got[3] == 0.0 and got[4] == 2 * i0  # clip at 2·I_0, not 200


def test_compensated_vehicle_arms_sit_at_the_wild_type_vehicle(runs):
    for name, res in runs.items():
        wt = _readout(res, "fst_immobility")["vehicle"]
        comp = _readout(res, "fst_immobility_compensated")
        assert abs(comp["vehicle"] - wt) <= 1e-9, name
        assert abs(comp["intervention"] - wt) <= 1e-9, name
        for r in SYNAPTIC:
            within = _readout(res, f"{r}_within_genotype")
            assert within["vehicle"] == 1.0 and within["intervention"] == 1.0, (name, r)


def test_compensated_wild_type_arms_match_fst_immobility(runs):
    """Wild-type arms are normalised by the wild-type vehicle, which differs from the
    drug-free state only by the vehicle's 1e-9 mg dose."""
    for name, res in runs.items():
        raw, comp = _readout(res, "fst_immobility"), _readout(res, "fst_immobility_compensated")
        assert abs(comp["ketamine"] - raw["ketamine"]) < 1e-6, name


def test_compensated_immobility_follows_the_within_genotype_strength(runs):
    """At 24 h the LHb burst rate is back at baseline (term < 1e-8 s), so the compensated
    immobility is the wild-type vehicle × (1 − E_syn·(W/W_vehicle − 1)), card E_syn."""
    e_syn = load_param_card("signalling").value("fst_E_syn")
    for name, res in runs.items():
        wt = _readout(res, "fst_immobility")["vehicle"]
        comp = _readout(res, "fst_immobility_compensated")
        within = _readout(res, "synaptic_strength_within_genotype")
        for a, v in comp.items():
            assert v == pytest.approx(wt * (1 - e_syn * (within[a] - 1)), abs=1e-6), (name, a)


def test_ketamine_lowers_compensated_immobility_in_wild_type_and_glun2b_deletion(runs):
    """GluN2B deletion: ketamine still lowers immobility within the genotype, by less than
    in wild type (occlusion, Miller 2014; measured 85% removed at 24 h)."""
    comp = _readout(runs["glun2b-deletion"], "fst_immobility_compensated")
    assert comp["ketamine"] < comp["vehicle"] - 10.0
    assert comp["intervention+ketamine"] < comp["intervention"] - 1.0
    assert 0.7 <= effect_removed(comp) <= 0.95


def test_bdnf_knockout_removes_the_whole_compensated_effect(runs):
    """Without BDNF synthesis ketamine cannot raise synaptic proteins, and spines do not move,
    so within the genotype ketamine leaves synaptic strength flat or a little lower (measured
    W/W_vehicle 0.9989, effect_removed 1.04): all of the effect is removed without the
    300-s ceiling."""
    res = runs["bdnf-knockout"]
    comp = _readout(res, "fst_immobility_compensated")
    assert effect_removed(comp) >= 0.95
    assert comp["intervention+ketamine"] >= comp["intervention"] - 1e-6
    assert _readout(res, "spine_density_within_genotype")["intervention+ketamine"] == \
        pytest.approx(1.0, abs=1e-9)


def test_eef2k_knockout_keeps_most_of_the_compensated_effect(runs):
    """A model limitation pinned on purpose: the knockout's 'resistance' on fst_immobility is
    the 0-s floor. Within the genotype ketamine still raises synaptic strength (measured
    1.018× its vehicle vs 1.025× in wild type) through the branches that bypass eEF2K, so only
    about 28% of the compensated effect is removed, short of the full resistance Adaikkan 2018
    report. A change to the eEF2K coupling that fixes this must update this test."""
    res = runs["eef2k-knockout"]
    comp = _readout(res, "fst_immobility_compensated")
    assert 0.1 <= effect_removed(comp) <= 0.5
    assert comp["intervention+ketamine"] < comp["intervention"] - 5.0
    assert _readout(res, "fst_immobility")["intervention+ketamine"] == 0.0  # the floor


def test_cli_shows_the_compensated_readouts(capsys):
    assert main(["experiment", "bdnf-knockout", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    new = {r["readout"]: r for r in d["readouts"] if r["readout"] in NEW}
    assert set(new) == set(NEW)
    assert new["fst_immobility_compensated"]["units"] == "s"
    assert "wild-type vehicle" in new["fst_immobility_compensated"]["definition"]
    assert new["synaptic_strength_within_genotype"]["units"] == "× genotype's vehicle"
    assert main(["experiment", "bdnf-knockout"]) == 0
    text = capsys.readouterr().out
    assert "compensated genotype" in text and "within_genotype" in text.replace("\n", "")
    assert main(["experiment", "rapamycin"]) == 0
    assert "compensated" not in capsys.readouterr().out


def test_knockout_calibration_criterion_uses_the_compensated_readouts():
    # before: the BDNF-knockout criterion ("removes >= 70% of ketamine's effect") was met on
    # fst_immobility, where both knockout arms sit at the 300-s ceiling, so it held by the
    # end of the scale alone
    from ketasim.calibration import experiment_checks

    ko = {k: v for k, v in experiment_checks().items() if k.startswith("bdnf-knockout")}
    assert set(ko) == {
        "bdnf-knockout: removes ≥70% of synaptic_strength_within_genotype effect at 24 h",
        "bdnf-knockout: removes ≥70% of fst_immobility_compensated effect at 24 h"}
    assert all(met and 0.7 <= value < 1.5 for value, met in ko.values())


def test_known_discrepancy_is_reported_but_not_counted(capsys):
    # the eEF2K-knockout resistance (Adaikkan 2018) is not a fitted target, but the report
    # and the CLI must show it, with the model's value, so the discrepancy is not hidden
    from ketasim.calibration import open_checks, report
    from ketasim.cli import main

    oc = open_checks()
    assert len(oc) == 2 and all(k.startswith("eef2k-knockout") for k in oc)
    assert all(0.1 < v < 0.5 and not met for v, met in oc.values())  # today's model
    r = report()
    assert set(r["open_checks"]) == set(oc)
    assert r["total"] == len(r["timing"]) + len(r["experiments"])  # not counted
    assert main(["calibrate", "mechanism"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Checked but not fitted" in out and "Adaikkan 2018" in out
