"""Named in-silico experiments: each runs arms with and without an intervention, as published.

Every experiment returns ``{"name", "species", "finding", "readouts": [{"readout", "time_h",
"arms": {arm: value}, "units"}], ..., "metadata"}`` (``metadata``: :func:`experiment_metadata`).
Readouts are normalised to the drug-free baseline (1 = no change) except ``fst_immobility``
(s) and ``glutamate_change_percent``.

Experiments with a genetic intervention (:data:`GENETIC`: the knockouts and GluN2B deletion,
which act for life and move the drug-free baseline) also give compensated-genotype readouts
(:func:`compensated_readouts`), listed after the others: each genotype's own drug-free state
is taken as its baseline, as if development had compensated for the gene, so only the drug's
change through the remaining pathways shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import __version__
from .cards import card_versions
from .engine import Course, MechanismResult, simulate
from .errors import KetasimError
from .mechanism import (
    HYPOTHESES,
    Hypotheses,
    Interventions,
    MechanismParams,
    fst_immobility_of,
    readout_unit,
)
from .pk import Covariates
from .regimen import Regimen

MOUSE = Covariates(weight_kg=0.03, age_years=0.25, species="mouse")
RAT = Covariates(weight_kg=0.3, age_years=0.25, species="rat")
HUMAN = Covariates(weight_kg=70.0, age_years=40.0)
SYNAPTIC = ("synaptic_strength", "spine_density", "synaptic_proteins")
#: interventions that act for life: the drug-free state is re-settled for 60 days before the
#: dose (:meth:`ketasim.mechanism.MechanismParams.baseline`), so they move the baseline
GENETIC = ("glun2b-deletion", "eef2k-knockout", "bdnf-knockout", "trkb-block")
#: each arm of a four-arm experiment → the vehicle arm of the same genotype
GENOTYPE_VEHICLE = {"vehicle": "vehicle", "ketamine": "vehicle", "intervention": "intervention",
                    "intervention+ketamine": "intervention"}
COMPENSATED_FST_DEFINITION = (
    "forced-swim immobility with each genotype's own drug-free state as its baseline "
    "(developmental compensation, a model assumption): wild-type vehicle immobility × (1 − "
    "E_fast·w_e·(1 − L/L_veh)⁺ − E_syn·(W/W_veh − 1)), clipped to 0–2·fst_immobility0 as "
    "fst_immobility, with LHb burst L and synaptic strength W divided by the same genotype's "
    "vehicle arm at the same time; the vehicle arms both equal the wild-type vehicle")
WITHIN_GENOTYPE_DEFINITION = (
    "arm / the same genotype's vehicle arm at the same time (vehicle and ketamine / vehicle; "
    "intervention and intervention+ketamine / intervention)")


@dataclass(frozen=True)
class Experiment:
    """A named in-silico experiment: species, the published finding, and its runner."""
    name: str
    species: str
    finding: str
    run: Callable[[], dict]


def _mouse_ketamine(dose: str = "10 mg/kg") -> list[Course]:
    return [Course("ketamine", Regimen.build("ip", dose))]


def _run(courses, cov, t, interventions=None, hypotheses=None) -> MechanismResult:
    if not courses:  # vehicle: a negligible dose keeps the same model structure
        courses = [Course("ketamine", Regimen.build("ip" if cov.species != "human" else
                                                    "iv-bolus", "1e-9 mg"))]
    return simulate(courses, t, cov, hypotheses=hypotheses,
                    interventions=Interventions.parse(interventions))


def _four_arms(intervention: str, times: tuple[float, ...] = (24.0,),
               readouts: tuple[str, ...] = (*SYNAPTIC, "fst_immobility")) -> dict:
    t = np.array(sorted({0.5, 1.0, 2.0, 4.0, *times}))
    arms = {
        "vehicle": _run([], MOUSE, t),
        "ketamine": _run(_mouse_ketamine(), MOUSE, t),
        "intervention": _run([], MOUSE, t, [intervention]),
        "intervention+ketamine": _run(_mouse_ketamine(), MOUSE, t, [intervention]),
    }
    out = [{"readout": r, "time_h": th, "arms": {a: res.at(r, th) for a, res in arms.items()}}
           for th in times for r in readouts]
    if intervention in GENETIC:
        out += compensated_readouts(arms, times, tuple(r for r in readouts if r in SYNAPTIC))
    return {"readouts": out}


def compensated_readouts(arms: dict[str, MechanismResult], times: tuple[float, ...],
                         synaptic: tuple[str, ...] = SYNAPTIC) -> list[dict]:
    """Compensated-genotype readouts of a four-arm genetic experiment (arms as in
    :data:`GENOTYPE_VEHICLE`), at each of ``times`` (h).

    * ``<readout>_within_genotype`` (× genotype's vehicle) for each of ``synaptic``: the arm
      divided by the same genotype's vehicle arm at the same time, so both vehicle arms are 1.
    * ``fst_immobility_compensated`` (s): :func:`ketasim.mechanism.fst_immobility_of` with the
      LHb burst rate and the synaptic strength divided by the genotype's vehicle arm, and the
      wild-type vehicle arm's ``fst_immobility`` as the no-change immobility; the clip (0 to
      2 × ``fst_immobility0``) and the card constants are those of ``fst_immobility``. Both
      vehicle arms therefore equal the wild-type vehicle immobility exactly, and the wild-type
      arms equal ``fst_immobility`` to within the vehicle's negligible dose (< 1e-6 s).

    This models full developmental/homeostatic compensation of the genotype's drug-free
    state (an assumption, not a mechanism of the model): it cannot show a genotype that
    mimics the drug without it, only what the drug adds in that genotype."""
    p = MechanismParams.from_cards(("ketamine",))
    out: list[dict] = []
    for th in times:
        for r in synaptic:
            out.append({"readout": f"{r}_within_genotype", "time_h": th,
                        "arms": {a: res.at(r, th) / arms[GENOTYPE_VEHICLE[a]].at(r, th)
                                 for a, res in arms.items()},
                        "definition": WITHIN_GENOTYPE_DEFINITION})
        base = arms["vehicle"].at("fst_immobility", th)
        fst = {}
        for a, res in arms.items():
            veh = arms[GENOTYPE_VEHICLE[a]]
            lhb = res.at("lhb_burst", th) / veh.at("lhb_burst", th)
            w = res.at("synaptic_strength", th) / veh.at("synaptic_strength", th)
            fst[a] = float(fst_immobility_of(lhb, w, p, baseline_s=base))
        out.append({"readout": "fst_immobility_compensated", "time_h": th, "arms": fst,
                    "definition": COMPENSATED_FST_DEFINITION})
    return out


def effect_removed(arms: dict, readout: str = "") -> float:
    """Fraction of ketamine's effect removed by the intervention (1 = all, 0 = none)."""
    k = arms["ketamine"] - arms["vehicle"]
    ki = arms["intervention+ketamine"] - arms["intervention"]
    return 1.0 - ki / k if k != 0 else float("nan")


def _spine_blockade() -> dict:
    times = (2.0, 4.0, 6.0, 72.0, 120.0, 168.0)
    return _four_arms("spine-blockade", times, ("fst_immobility", "synaptic_strength",
                                                 "spine_density"))


def _memantine() -> dict:
    """Single clinical doses: memantine 20 mg HCl orally vs ketamine 0.5 mg/kg over 40 min.

    A second block reports memantine at its clinical steady state (20 mg HCl daily × 28 d,
    read after the last dose), which the model does not treat as a rapid antidepressant but
    does let act slowly (see the limitations in the docs)."""
    from .cards import load_drug

    t = np.array([1.0, 4.0, 24.0])
    base_mg = 20.0 * load_drug("memantine").constant("base_fraction_of_hcl")
    res_mem = simulate([Course("memantine", Regimen.build("oral", f"{base_mg} mg"))], t, HUMAN)
    res_ket = simulate([Course("ketamine", Regimen.build("iv-infusion", "0.5 mg/kg", "40 min"))],
                       t, HUMAN)
    res_veh = simulate([Course("ketamine", Regimen.build("iv-bolus", "1e-9 mg"))], t, HUMAN)
    res_ss = simulate([Course("memantine", Regimen.build("oral", f"{base_mg} mg",
                                                         schedule="daily x 28"))],
                      t + 27 * 24.0, HUMAN)
    out, ss = [], []
    for r in ("synaptic_strength", "spine_density", "p_eef2", "mtorc1", "block_Esyn",
              "block_E2B"):
        for i, th in enumerate(t):
            out.append({"readout": r, "time_h": float(th), "arms": {
                "vehicle": float(res_veh.readouts[r][i]),
                "ketamine": float(res_ket.readouts[r][i]),
                "memantine": float(res_mem.readouts[r][i])}})
            ss.append({"readout": r, "time_h_after_last_dose": float(th),
                       "memantine_steady_state": float(res_ss.readouts[r][i])})
    return {"readouts": out, "exposure": {
        "memantine_single_dose_cmax_ng_per_ml": float(np.max(res_mem.plasma_ng_per_ml[
            "memantine"])),
        "memantine_steady_state_ng_per_ml": float(np.max(res_ss.plasma_ng_per_ml["memantine"])),
        "ketamine_plasma_ng_per_ml_at_1h": float(res_ket.plasma_ng_per_ml["ketamine"][0]),
        "doses": "memantine 20 mg HCl (16.6 mg base) orally once; ketamine 0.5 mg/kg IV over "
                 "40 min; both at t = 0, 1 mM Mg2+"},
        "memantine_steady_state": ss}


def _dose_response() -> dict:
    t = np.linspace(0.0, 2.0, 25)[1:]
    arms = {}
    for dose in (0.0, 10.0, 20.0, 30.0, 50.0, 200.0):
        courses = [] if dose == 0 else [Course("ketamine", Regimen.build("ip", f"{dose} mg/kg"))]
        res = _run(courses, RAT, t)
        arms["vehicle" if dose == 0 else f"{dose:g} mg/kg"] = float(
            100.0 * (np.mean(res.readouts["glutamate"]) - 1.0))
    return {"readouts": [{"readout": "glutamate_change_percent", "time_h": 2.0, "arms": arms,
                          "definition": "mean PFC extracellular glutamate change over 0-2 h "
                                        "(as pooled microdialysis samples)"}]}


def _hypothesis_compare() -> dict:
    from .calibration import timing_scores

    t = np.array([24.0, 168.0])
    arms_syn, arms_fst, scores = {}, {}, {}
    for h in HYPOTHESES:
        hyp = Hypotheses.parse(f"only:{h}")
        res = _run(_mouse_ketamine(), MOUSE, t, hypotheses=hyp)
        arms_syn[h] = res.at("synaptic_strength", 24.0)
        arms_fst[h] = res.at("fst_immobility", 24.0)
        scores[h] = timing_scores(hyp)
    res = _run(_mouse_ketamine(), MOUSE, t)
    arms_syn["default"] = res.at("synaptic_strength", 24.0)
    arms_fst["default"] = res.at("fst_immobility", 24.0)
    scores["default"] = timing_scores(Hypotheses.default())
    summary = {h: {"targets_met": sum(v.values()), "targets": len(v), "detail": v}
               for h, v in scores.items()}
    return {"readouts": [
        {"readout": "synaptic_strength", "time_h": 24.0, "arms": arms_syn},
        {"readout": "fst_immobility", "time_h": 24.0, "arms": arms_fst}],
        "scores": summary}


def _plain(name: str):
    def run():
        return _four_arms(name)
    return run


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("rapamycin", "mouse", "blocking mTOR signalling (rapamycin) blocks "
               "ketamine-induced synaptogenesis and the behavioural response in rats "
               "(Li N et al. Science 2010, PMID 20724638); simulated in the mouse, like the "
               "other four-arm experiments", _plain("rapamycin")),
    Experiment("anisomycin", "mouse", "ketamine's rapid antidepressant-like effect depends on "
               "rapid BDNF synthesis (Autry AE et al. Nature 2011, PMID 21677641); the "
               "protein-synthesis-inhibitor (anisomycin) arm itself is UNCONFIRMED in the "
               "sources read", _plain("anisomycin")),
    Experiment("nbqx", "mouse", "AMPA receptor blockade (NBQX pretreatment) attenuates "
               "ketamine's antidepressant-like effect in mice (Maeng S et al. Biol Psychiatry "
               "2008, PMID 17643398); NBQX preventing ketamine's mTOR activation (Li 2010) is "
               "UNCONFIRMED in the sources read", _plain("nbqx")),
    Experiment("glun2b-deletion", "mouse", "deleting GluN2B in cortical principal neurons "
               "mimics and occludes ketamine's effects on mTOR, synaptic proteins and behaviour "
               "(Miller OH et al. eLife 2014, PMID 25340958)", _plain("glun2b-deletion")),
    Experiment("eef2k-knockout", "mouse", "eEF2 kinase knockout mice are resistant, "
               "biochemically and behaviourally, to ketamine's antidepressant effects (Adaikkan "
               "C et al. Biol Psychiatry 2018, doi:10.1016/j.biopsych.2017.11.028); Autry 2011's "
               "abstract reports eEF2K inhibitors, not a knockout", _plain("eef2k-knockout")),
    Experiment("bdnf-knockout", "mouse", "BDNF is required: ketamine's rapid "
               "antidepressant-like effect depends on rapid BDNF synthesis (Autry 2011, PMID "
               "21677641); deleting BDNF in hippocampal CA3 or CA1 blocks ketamine-induced "
               "synaptic potentiation, and BDNF-TrkB signalling in CA1 is required for its rapid "
               "behavioural action (Lin PY et al. Cell Rep 2021, PMID 34407417)",
               _plain("bdnf-knockout")),
    Experiment("spine-blockade", "mouse", "deleting newly formed spines leaves the initial "
               "effect but abolishes its maintenance (Moda-Sava RN et al. Science 2019, "
               "doi:10.1126/science.aat8078)",
               _spine_blockade),
    Experiment("memantine-vs-ketamine", "human", "in physiological Mg2+ memantine, unlike "
               "ketamine, does not block NMDARs at rest, lower p-eEF2 or raise BDNF, and is not "
               "a rapid antidepressant (Gideons ES et al. PNAS 2014, PMID 24912158)", _memantine),
    Experiment("dose-response", "rat", "PFC glutamate outflow rises at 10-30 mg/kg, is "
               "unchanged at 50 and falls at 200 mg/kg (inverted U; Moghaddam B et al. "
               "J Neurosci 1997, doi:10.1523/JNEUROSCI.17-08-02921.1997)", _dose_response),
    Experiment("hypothesis-compare", "mouse", "each hypothesis alone, scored against the timing "
               "targets of the calibration data (rodent_timecourses.yaml)", _hypothesis_compare),
)}


def run_experiment(name: str) -> dict:
    """Run a named experiment; returns the JSON-ready result.

    Raises :class:`KetasimError` naming ``name`` (with the known names) for anything but the
    name of an experiment in :data:`EXPERIMENTS`."""
    if not isinstance(name, str):
        raise KetasimError("name", f"must be an experiment name (a string), got "
                           f"{type(name).__name__}", ", ".join(EXPERIMENTS))
    if name not in EXPERIMENTS:
        raise KetasimError("name", f"unknown experiment {name!r}", ", ".join(EXPERIMENTS))
    e = EXPERIMENTS[name]
    out = {"name": e.name, "species": e.species, "finding": e.finding}
    out.update(e.run())
    for r in out["readouts"]:
        r.setdefault("units", readout_unit(r["readout"]))
    out["metadata"] = experiment_metadata(e)
    return out


def experiment_metadata(e: Experiment) -> dict:
    """What reproduces an experiment's numbers: ketasim version, card hashes (every card; the
    experiments span PK, drug and mechanism cards), the experiment's name and settings.

    An experiment takes no arguments: its arms, doses, subjects and output times are fixed by
    its name and the ketasim version (``settings`` is empty, kept for a uniform shape)."""
    return {"ketasim_version": __version__, "experiment": e.name, "species": e.species,
            "settings": {}, "card_hashes": card_versions(),
            "solver": "LSODA (scipy odeint), ketasim.engine.simulate defaults"}
