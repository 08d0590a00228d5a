"""Mechanism: receptor block, hypothesis branches, interventions, timing targets, experiments."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from ketasim.calibration import experiment_checks, timing_checks, timing_values
from ketasim.cli import main
from ketasim.engine import Course, simulate
from ketasim.errors import KetasimError
from ketasim.experiments import EXPERIMENTS, run_experiment
from ketasim.mechanism import HYPOTHESES, Hypotheses, Interventions, MechanismParams, qss_block
from ketasim.pk import Covariates
from ketasim.regimen import Regimen

warnings.simplefilter("ignore")
MOUSE = Covariates(weight_kg=0.03, age_years=0.25, species="mouse")
T = np.array([0.5, 1.0, 2.0, 4.0, 24.0, 72.0, 168.0])


@pytest.fixture(scope="module")
def timing():
    return timing_checks(timing_values())


@pytest.fixture(scope="module")
def experiments():
    return experiment_checks()


def test_every_timing_target_says_what_it_rests_on(timing):
    """Each timing target is labelled data (a READ time course) or assumed; the human-course
    ones are all assumptions, and Li 2010's UNCONFIRMED times are never labelled data."""
    from ketasim.calibration import TIMING_BASIS, timing_basis

    for k in timing:
        assert k.partition(": ")[2] in TIMING_BASIS, k
        basis = timing_basis(k)
        assert basis.startswith(("data:", "assumed:")), k
        if k.startswith("human"):
            assert basis.startswith("assumed:"), k
        if "mTORC1" in k or "synaptic proteins" in k:
            assert basis.startswith("assumed:"), k
    assert any(timing_basis(k).startswith("data:") for k in timing)


def test_timing_targets_met(timing):
    missed = [k for k, ok in timing.items() if not ok]
    assert not missed, missed
    assert len(timing) >= 20


def test_experiment_acceptance_met(experiments):
    missed = {k: v for k, (v, ok) in experiments.items() if not ok}
    assert not missed, missed
    names = " ".join(experiments)
    for e in ("rapamycin", "anisomycin", "nbqx", "bdnf-knockout", "glun2b-deletion",
              "spine-blockade", "memantine", "glutamate"):
        assert e in names


def test_qss_matches_ode_steady_state():
    """The fast-population block equals the steady state of the full binding ODE."""
    from scipy.integrate import solve_ivp

    conc = np.array([0.8, 3.0])
    kd0 = np.array([1.0, 8.2])
    kesc = np.array([4.54, 4.54])
    mg = np.array([17.7, 17.7])
    kon, po = 36000.0, 0.02

    def f(_t, b):
        free = 1.0 - b.sum()
        return kon * conc * po / mg * free - (kon * kd0 * po + kesc * (1 - po)) * b

    ss = solve_ivp(f, (0, 50), [0.0, 0.0], method="LSODA", rtol=1e-10, atol=1e-12).y[:, -1]
    np.testing.assert_allclose(qss_block(conc, kd0, kesc, mg, kon, po), ss, rtol=1e-6)


def test_magnesium_competition_and_lower_mg_more_block():
    mp = MechanismParams.from_cards(("ketamine",))
    f = mp.mg_matrix()
    # more Mg2+ competition at rest for pyramidal populations than for GluN2C/2D interneurons
    assert f[0, 0] > f[2, 0] > 1.0
    reg = [Course("ketamine", Regimen.build("ip", "10 mg/kg"))]
    lo = simulate(reg, T, MOUSE, interventions=Interventions.parse("mg=0.1"))
    hi = simulate(reg, T, MOUSE)
    assert lo.readouts["block_E2B"][0] > 2 * hi.readouts["block_E2B"][0]


def test_block_grows_with_dose_and_trapping_outlasts_drug():
    r10 = simulate([Course("ketamine", Regimen.build("ip", "10 mg/kg"))], T, MOUSE)
    r3 = simulate([Course("ketamine", Regimen.build("ip", "3 mg/kg"))], T, MOUSE)
    assert r10.readouts["block_I"][0] > r3.readouts["block_I"][0]
    # the drug is gone by 4 h (t½ 13 min) but LHb block persists (trapping; Ma 2023)
    assert r10.brain_free_uM["ketamine"][3] < 0.01 * r10.brain_free_uM["ketamine"][0]
    assert r10.readouts["block_H"][3] > 0.3
    assert r10.readouts["block_E2B"][3] < 0.01


@pytest.mark.parametrize("h", list(HYPOTHESES))
def test_each_hypothesis_switches(h):
    reg = [Course("ketamine", Regimen.build("ip", "10 mg/kg"))]
    on = simulate(reg, T, MOUSE, hypotheses=Hypotheses.default())
    off = simulate(reg, T, MOUSE, hypotheses=Hypotheses.parse(f"{h}=0"))
    if h == "d":  # HNK branch: no HNK input yet, so switching it changes nothing
        assert on.readouts["synaptic_strength"] == pytest.approx(off.readouts[
            "synaptic_strength"])
    elif h == "e":
        assert on.readouts["fst_immobility"][0] < off.readouts["fst_immobility"][0]
    else:
        assert not np.allclose(on.readouts["synaptic_strength"],
                               off.readouts["synaptic_strength"], rtol=1e-6)


def test_no_hypothesis_no_synaptic_effect():
    reg = [Course("ketamine", Regimen.build("ip", "10 mg/kg"))]
    none = simulate(reg, T, MOUSE, hypotheses=Hypotheses(0, 0, 0, 0, 0, 0))
    np.testing.assert_allclose(none.readouts["spine_density"], 1.0, atol=1e-9)


@pytest.mark.parametrize("text", ["x", "only:z", "a=abc", "a=-1"])
def test_bad_hypotheses(text):
    with pytest.raises(KetasimError, match="hypotheses"):
        Hypotheses.parse(text)


@pytest.mark.parametrize("text", ["magic", "mg=lots", "mg=50"])
def test_bad_interventions(text):
    with pytest.raises(KetasimError, match="interventions"):
        Interventions.parse(text)


def test_experiment_contract_and_list(capsys):
    assert main(["experiment", "rapamycin", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"name", "species", "finding", "readouts"} <= set(d)
    r = d["readouts"][0]
    assert set(r["arms"]) == {"vehicle", "ketamine", "intervention", "intervention+ketamine"}
    assert main(["experiment", "--list", "--json"]) == 0
    names = {e["name"] for e in json.loads(capsys.readouterr().out)}
    assert names == set(EXPERIMENTS)
    assert main(["experiment", "nope"]) == 2
    assert "experiment" in capsys.readouterr().err


def test_experiment_findings_cite_identified_sources_carried_by_the_cards():
    """Every published finding names its paper by PMID or DOI, and each identifier is also
    cited by a mechanism card's source, so an experiment's description and the constants it
    runs on point at the same, checkable paper (hypothesis-compare cites the calibration data
    file, not a paper)."""
    import re

    from ketasim.cards import load_param_cards

    card_text = " ".join(p.source or "" for c in load_param_cards().values()
                         for p in c.parameters.values())
    ident = re.compile(r"PMID \d+|doi:10\.\S+?(?=[),;\s]|$)")
    for e in EXPERIMENTS.values():
        ids = ident.findall(e.finding)
        if e.name == "hypothesis-compare":
            assert not ids and "rodent_timecourses.yaml" in e.finding
            continue
        assert ids, f"{e.name}: finding cites no PMID or DOI"
        for i in ids:
            assert i in card_text, f"{e.name}: {i} is cited by no mechanism card"


def test_memantine_arms():
    d = run_experiment("memantine-vs-ketamine")
    assert set(d["readouts"][0]["arms"]) == {"vehicle", "ketamine", "memantine"}


def test_hypothesis_compare_scores():
    d = run_experiment("hypothesis-compare")
    s = d["scores"]
    assert set(s) == set(HYPOTHESES) | {"default"}
    # the default combination meets every timing target, no single branch does
    assert s["default"]["targets_met"] == s["default"]["targets"]
    assert all(s[h]["targets_met"] < s["default"]["targets_met"] for h in HYPOTHESES)


def test_simulate_cli_json_and_out(capsys, tmp_path):
    assert main(["simulate", "--days", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("block_E2B", "p_eef2", "mtorc1", "synaptic_proteins", "spine_density",
              "synaptic_strength"):
        assert len(d["readouts"][k]) == len(d["time_h"])
    assert d["metadata"]["hypotheses"]["a"] == 1.0
    assert "card_hashes" in d["metadata"]
    assert main(["simulate", "--days", "2", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "timecourse.parquet").exists()
    meta = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    assert meta["species"] == "human"
    assert main(["simulate", "--hypotheses", "only:q"]) == 2


def test_cards_evidence_counts(capsys):
    from ketasim.cards import all_parameters

    assert main(["cards", "--evidence", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sum(d["total"].values()) == d["n_parameters"] == len(all_parameters())
    assert all(v > 0 for v in d["total"].values())


def test_every_mechanism_parameter_has_provenance():
    from ketasim.cards import load_param_cards

    for card in load_param_cards().values():
        for name, p in card.parameters.items():
            assert p.source and len(p.source) > 10, name
            if p.evidence != "read":
                assert p.note, name


def test_calibration_fit_is_rerunnable():
    from ketasim.calibration import FIT_PARAMETERS, fit

    f = fit(max_evaluations=2)
    assert set(f["best"]) == set(FIT_PARAMETERS)
    assert f["penalty_best"] <= f["penalty_start"]
    assert min(f["margins"]) >= 0.0  # the card values meet every target


def test_simulate_metadata_records_inputs():
    """Covariates, overrides, output times and the regimen: enough to rerun the numbers."""
    reg = Regimen.build("ip", "10 mg/kg", schedule="daily x 2")
    iiv = {"kel": 1.2}
    base = simulate([Course("ketamine", reg, iiv=iiv)], T, MOUSE)
    over = simulate([Course("ketamine", reg, iiv=iiv)], T, MOUSE, overrides={"theta_H": 0.3})
    assert base.metadata != over.metadata
    m = over.metadata
    assert m["overrides"] == {"theta_H": 0.3} and base.metadata["overrides"] == {}
    assert m["covariates"] == {"weight_kg": 0.03, "age_years": 0.25, "sex": "male",
                               "race": "caucasian", "species": "mouse"}
    assert m["times"]["values_h"] == T.tolist() and m["times"]["n"] == len(T)
    c = m["courses"][0]
    assert c["regimen"] == [{"time_h": t, "amount": 10.0, "unit": "mg/kg", "duration_h": 0.0,
                             "route": "ip"} for t in (0.0, 24.0)]
    assert c["iiv"] == {"kel": 1.2}
    json.dumps(m)  # JSON-ready
    assert {"ketasim_version", "species", "weight_kg", "card_hashes", "solver"} <= set(m)


def test_experiment_metadata_cli_and_library(capsys):
    from ketasim import __version__
    from ketasim.cards import card_versions

    d = run_experiment("memantine-vs-ketamine")
    m = d["metadata"]
    assert m["ketasim_version"] == __version__ and m["card_hashes"] == card_versions()
    assert m["experiment"] == "memantine-vs-ketamine" and m["settings"] == {}
    assert main(["experiment", "rapamycin", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metadata"]
    assert m["experiment"] == "rapamycin" and m["card_hashes"] == card_versions()
    assert m["ketasim_version"] == __version__


def test_outputs_carry_units(capsys, tmp_path):
    """Every simulate column and experiment readout says its unit: fold change, fraction
    blocked, seconds of immobility, ng/mL, µM."""
    from ketasim.mechanism import readout_unit

    assert main(["experiment", "rapamycin", "--json"]) == 0
    units = {r["readout"]: r["units"] for r in json.loads(capsys.readouterr().out)["readouts"]}
    assert units["fst_immobility"] == "s" and units["synaptic_strength"] == "× baseline"
    assert main(["experiment", "rapamycin"]) == 0
    text = capsys.readouterr().out
    assert "baseline" in text and "…" not in text  # nothing cut off at 80 columns
    assert run_experiment("dose-response")["readouts"][0]["units"] == "% change from vehicle"
    assert main(["simulate", "--days", "1", "--step-h", "12", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    cols = (tmp_path / "timecourse.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert set(meta["units"]) == set(cols) and all(meta["units"][c] for c in cols)
    assert meta["units"]["ketamine_plasma_ng_per_ml"] == "ng/mL"
    assert meta["units"]["block_H_norketamine"].startswith("fraction")
    assert readout_unit("no_such_readout") == ""
