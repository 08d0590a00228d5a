"""Tutorial: intranasal esketamine twice weekly with an oral antidepressant (TRANSFORM-2).

Runs the shipped ``transform2`` scenario (esketamine 56 mg on day 1, then 84 mg, twice weekly
for 4 weeks, plus a new oral antidepressant; vs placebo spray plus oral antidepressant) on a
small population, plots the plasma esketamine of one patient over the first week and the
response over four weeks, and compares day-28 outcomes with the published numbers in
``shared/literature/calibration/clinical/transform2_popova2019.yaml``.

Run: ``.venv/bin/python tutorials/esketamine.py`` (``KETASIM_TUTORIAL_N`` = patients).
"""

from __future__ import annotations

import re

import numpy as np
from _common import cite, fmt, n_patients, observation, save, study, value, write_table

from ketasim.pk import simulate_pk
from ketasim.regimen import Regimen
from ketasim.trial import resolve_scenario, run_trial, summarise, with_overrides


def main() -> None:
    """Run the tutorial: trial, PK, figure and table."""
    pub = study("clinical/transform2_popova2019.yaml")
    scenario = with_overrides(resolve_scenario("transform2"), n=n_patients(60), seed=2019)
    # remission as the paper defines it (e.g. "MADRS ≤12"), read from the calibration file
    m = re.search(r"≤\s*(\d+)", str((pub or {}).get("definitions", {}).get("remission", "")))
    if m:
        ep = scenario.endpoints.model_copy(update={"remission_threshold": float(m.group(1))})
        scenario = scenario.model_copy(update={"endpoints": ep})
    summary = summarise(run_trial(scenario))
    esk, pbo = (a.name for a in scenario.arms)
    A, P = summary["arms"][esk], summary["arms"][pbo]

    both = ["esketamine_ad", "placebo_ad"]
    p_diff = value(observation(pub, metric="ls_mean_difference", arm=both))
    p_resp_e = value(observation(pub, metric="response_rate", arm="esketamine_ad"))
    p_resp_p = value(observation(pub, metric="response_rate", arm="placebo_ad"))
    p_rem_e = value(observation(pub, metric="remission_rate", arm="esketamine_ad"))
    p_rem_p = value(observation(pub, metric="remission_rate", arm="placebo_ad"))
    d28 = "28 d"
    rows = [
        ["MADRS change difference at day 28 (esketamine − placebo)",
         fmt(A[d28]["change"] - P[d28]["change"]), fmt(p_diff)],
        ["response at day 28, esketamine + AD (%)", fmt(100 * A[d28]["response_rate"], 0),
         fmt(p_resp_e, 1)],
        ["response at day 28, placebo + AD (%)", fmt(100 * P[d28]["response_rate"], 0),
         fmt(p_resp_p, 1)],
        ["remission at day 28, esketamine + AD (%)", fmt(100 * A[d28]["remission_rate"], 0),
         fmt(p_rem_e, 1)],
        ["remission at day 28, placebo + AD (%)", fmt(100 * P[d28]["remission_rate"], 0),
         fmt(p_rem_p, 1)],
    ]
    write_table("esketamine", ["quantity", f"simulated (n = {scenario.population.n})",
                               "published"], rows, [cite(pub)])

    reg = Regimen.build("intranasal", "56 mg", schedule="at 0, 3 d")
    t_h = np.linspace(0.0, 7 * 24.0, 7 * 24 * 4 + 1)
    pk = simulate_pk(reg, drug="esketamine", times_h=t_h).to_frame()

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(t_h / 24, pk["esketamine_plasma_ng_per_ml"], label="esketamine")
    if "noresketamine_plasma_ng_per_ml" in pk:
        ax[0].plot(t_h / 24, pk["noresketamine_plasma_ng_per_ml"], label="noresketamine")
    ax[0].set(xlabel="day", ylabel="plasma (ng/mL)", title="56 mg nasal on days 0 and 3")
    ax[0].legend()
    labels = list(A)
    for arm, res, color in ((esk, A, "C0"), (pbo, P, "C7")):
        ax[1].plot([res[v]["time_h"] / 24 for v in labels],
                   [100 * res[v]["response_rate"] for v in labels], "-o", color=color,
                   label=f"{arm} (simulated)")
    for val, color, lab in ((p_resp_e, "C3", "esketamine + AD"), (p_resp_p, "C1",
                                                                    "placebo + AD")):
        if val is not None:
            ax[1].plot([28], [val], "D", color=color, markersize=8,
                       label=f"{lab}, TRANSFORM-2")
    ax[1].set(xlabel="day", ylabel="responders (%)", title="Response (MADRS ≥ 50% fall)")
    ax[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    save(fig, "esketamine")


if __name__ == "__main__":
    main()
