"""Tutorial: one 0.5 mg/kg ketamine infusion over 40 min (Zarate 2006, Murrough 2013a).

Simulates the Murrough 2013a design — ketamine vs midazolam (active placebo), 2:1, in
treatment-resistant depression — with extra early visits, and the plasma concentration of one
70-kg patient, then sets the results beside the published numbers read from
``shared/literature/calibration/clinical/{zarate2006,murrough2013a}.yaml``.

Run: ``.venv/bin/python tutorials/single_infusion.py`` (``KETASIM_TUTORIAL_N`` = patients).
"""

from __future__ import annotations

import numpy as np
from _common import cite, fmt, n_patients, observation, save, study, value, write_table

from ketasim.pk import simulate_pk
from ketasim.regimen import Regimen
from ketasim.scenario import parse_scenario
from ketasim.trial import run_trial, summarise

VISITS = ["40 min", "2 h", "4 h", "24 h", "3 d", "7 d"]


def main() -> None:
    """Run the tutorial: trial, PK, figure and table."""
    scenario = parse_scenario({
        "title": "Murrough 2013a design: ketamine vs midazolam (2:1)",
        "population": {"disorder": "trd", "n": n_patients(90), "seed": 2013},
        "arm": [{"name": "ketamine", "drug": "ketamine", "route": "iv-infusion",
                 "dose": "0.5 mg/kg", "duration": "40 min", "ratio": 2},
                {"name": "midazolam", "control": "active-placebo", "ratio": 1}],
        "endpoints": {"scale": "madrs", "at": VISITS},
    })
    summary = summarise(run_trial(scenario))
    reg = Regimen.build("iv-infusion", "0.5 mg/kg", duration="40 min")
    t_h = np.linspace(0.0, 4.0, 97)
    pk = simulate_pk(reg, times_h=t_h)
    plasma = pk.to_frame()["ketamine_plasma_ng_per_ml"].to_numpy()
    c_eoi = float(np.interp(40 / 60, t_h, plasma))

    zar, mur = study("clinical/zarate2006.yaml"), study("clinical/murrough2013a.yaml")
    p_cmax = value(observation(zar, metric="plasma_ketamine_cmax"))
    p_chg_k = value(observation(mur, metric="change_from_baseline", arm="ketamine"))
    p_chg_m = value(observation(mur, metric="change_from_baseline", arm="midazolam"))
    p_rr_k = value(observation(mur, metric="response_rate", arm="ketamine"))
    p_rr_m = value(observation(mur, metric="response_rate", arm="midazolam"))
    p_diff = value(observation(mur, metric="madrs_difference_adjusted"))

    arms = summary["arms"]
    k24, m24 = arms["ketamine"]["24 h"], arms["midazolam"]["24 h"]
    rows = [
        ["plasma ketamine at end of infusion (ng/mL)", fmt(c_eoi), fmt(p_cmax),
         "Zarate 2006 (secondary: Zanos 2018)"],
        ["MADRS change at 24 h, ketamine", fmt(k24["change"]), fmt(p_chg_k), "Murrough 2013a"],
        ["MADRS change at 24 h, midazolam", fmt(m24["change"]), fmt(p_chg_m), "Murrough 2013a"],
        ["difference ketamine − midazolam at 24 h", fmt(k24["change"] - m24["change"]),
         fmt(p_diff), "Murrough 2013a (adjusted)"],
        ["response at 24 h, ketamine (%)", fmt(100 * k24["response_rate"], 0), fmt(p_rr_k, 0),
         "Murrough 2013a"],
        ["response at 24 h, midazolam (%)", fmt(100 * m24["response_rate"], 0),
         fmt(p_rr_m, 0), "Murrough 2013a"],
    ]
    write_table("single_infusion", ["quantity", f"simulated (n = {scenario.population.n})",
                                    "published", "study"], rows, [cite(zar), cite(mur)])

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(t_h * 60, plasma, label="simulated (70 kg, default model)")
    if p_cmax is not None:
        ax[0].plot([40], [p_cmax], "o", color="C3", label="published ≈ end of infusion")
    ax[0].set(xlabel="time after start of infusion (min)", ylabel="plasma ketamine (ng/mL)",
              title="0.5 mg/kg IV over 40 min")
    ax[0].legend()
    for name, color in (("ketamine", "C0"), ("midazolam", "C7")):
        th = [arms[name][v]["time_h"] for v in VISITS]
        ch = [arms[name][v]["change"] for v in VISITS]
        lo = [arms[name][v]["ci95"][0] for v in VISITS]
        hi = [arms[name][v]["ci95"][1] for v in VISITS]
        ax[1].plot(th, ch, "-o", color=color, label=f"{name} (simulated, 95% CI)")
        ax[1].fill_between(th, lo, hi, color=color, alpha=0.15)
    for pub, color, lab in ((p_chg_k, "C3", "ketamine"), (p_chg_m, "C1", "midazolam")):
        if pub is not None:
            ax[1].plot([24], [pub], "D", color=color,
                       markersize=8, label=f"{lab}, Murrough 2013a")
    ax[1].set_xscale("log")
    ax[1].set(xlabel="time after infusion start (h, log scale)",
              ylabel="MADRS change from baseline", title="Depression score")
    ax[1].legend(fontsize=8)
    save(fig, "single_infusion")


if __name__ == "__main__":
    main()
