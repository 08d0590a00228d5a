"""Tutorial: the hypotheses compared — each branch alone against the rodent timing targets.

Simulates a mouse given ketamine 10 mg/kg i.p. with each hypothesis branch alone
(``--hypotheses only:a`` … ``only:f``) and with the default combination, draws synaptic
strength and forced-swim immobility over a week, and counts how many of the timing targets of
the calibration data each one meets (``ketasim experiment hypothesis-compare``). The targets
are timings read from ``shared/literature/calibration/pd/rodent_timecourses.yaml`` (listed in
the table with their source).

Run: ``.venv/bin/python tutorials/hypotheses.py``.
"""

from __future__ import annotations

import numpy as np
from _common import cite, observation, save, study, write_table

from ketasim.engine import Course, simulate
from ketasim.experiments import MOUSE, run_experiment
from ketasim.mechanism import HYPOTHESES, Hypotheses
from ketasim.regimen import Regimen


def main() -> None:
    """Run the tutorial: time courses per hypothesis, target counts, figure and table."""
    compare = run_experiment("hypothesis-compare")
    scores = compare["scores"]
    data = study("pd/rodent_timecourses.yaml")
    rows = [[h, HYPOTHESES.get(h, "all default branches"),
             f"{s['targets_met']} / {s['targets']}"] for h, s in scores.items()]
    sources = [cite(data)]
    for readout in ("p_mTOR_p70S6K_4EBP1", "synaptic_proteins", "spine_formation_timing",
                    "spine_density_MFC_persistence", "lhb_block_duration_trapping"):
        obs = observation(data, readout=readout)
        if obs is not None:
            t = obs.get("time") or (f"{obs['value']} {obs.get('units', '')}"
                                    if obs.get("value") is not None else "")
            sources.append(f"timing target `{readout}`: {t} — {obs.get('source', '')} "
                           f"({obs.get('evidence', '')})")
    write_table("hypotheses", ["hypothesis", "account", "timing targets met"], rows, sources)

    t = np.concatenate([np.linspace(0.05, 24, 80), np.linspace(25, 168, 60)])
    course = [Course("ketamine", Regimen.build("ip", "10 mg/kg"))]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for k, h in enumerate([*HYPOTHESES, "default"]):
        hyp = Hypotheses.default() if h == "default" else Hypotheses.parse(f"only:{h}")
        res = simulate(course, t, MOUSE, hypotheses=hyp)
        style = dict(color="k", lw=2.2) if h == "default" else dict(color=f"C{k}", lw=1.2)
        ax[0].plot(t, res.readouts["synaptic_strength"], label=h, **style)
        ax[1].plot(t, res.readouts["fst_immobility"], label=h, **style)
    for a in ax[:2]:
        a.set_xscale("log")
        a.set_xlabel("time after 10 mg/kg i.p. (h)")
        a.axvspan(12, 24, color="C2", alpha=0.12)
    ax[0].set(ylabel="synaptic strength (baseline = 1)",
              title="Synaptic strength (green: new spines, 12–24 h)")
    ax[1].set(ylabel="forced-swim immobility (s)", title="Behaviour")
    ax[0].legend(fontsize=7, title="only")
    names = list(scores)
    ax[2].barh(names, [scores[h]["targets_met"] for h in names], color="C0")
    ax[2].barh(names, [scores[h]["targets"] for h in names], color="C7", alpha=0.3)
    ax[2].set(xlabel="timing targets met", title="Against the calibration timings")
    save(fig, "hypotheses")


if __name__ == "__main__":
    main()
