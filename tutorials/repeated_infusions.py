"""Tutorial: six ketamine infusions over 12 days and relapse afterwards (Murrough 2013b).

Runs the shipped ``murrough2013b`` scenario (0.5 mg/kg over 40 min on days 0, 2, 5, 7, 9, 11,
follow-up to day 95) on a small population and compares the response at the end of the series
and the median time to relapse with the published numbers in
``shared/literature/calibration/clinical/murrough2013b.yaml``.

Run: ``.venv/bin/python tutorials/repeated_infusions.py`` (``KETASIM_TUTORIAL_N`` = patients).
"""

from __future__ import annotations

from _common import cite, fmt, n_patients, observation, save, study, value, write_table

from ketasim.trial import resolve_scenario, run_trial, summarise, with_overrides


def main() -> None:
    """Run the tutorial: trial, figure and table."""
    scenario = with_overrides(resolve_scenario("murrough2013b"), n=n_patients(48), seed=2013)
    result = run_trial(scenario)
    summary = summarise(result)
    arm = scenario.arms[0].name
    visits = summary["arms"][arm]
    relapse = summary["arm_summary"][arm]["relapse"]

    pub = study("clinical/murrough2013b.yaml")
    p_resp = value(observation(pub, metric="response_rate"))
    p_relapse = value(observation(pub, metric="median_time_to_relapse"))
    end = "12 d"
    rows = [
        ["response at the end of the series (%)", fmt(100 * visits[end]["response_rate"], 0),
         fmt(p_resp, 0)],
        ["median time to relapse after the last infusion (d), responders",
         fmt(relapse.get("median_d")), fmt(p_relapse, 0)],
        ["responders at risk / relapsed", f"{relapse['n_at_risk']} / {relapse['n_relapsed']}",
         "–"],
    ]
    write_table("repeated_infusions", ["quantity", f"simulated (n = {scenario.population.n})",
                                       "published"], rows, [cite(pub)])

    import matplotlib.pyplot as plt

    data = result.data
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for _pid, g in data.groupby("patient"):
        ax[0].plot(g["time_h"] / 24, g["madrs"], color="C0", alpha=0.2, lw=0.8)
    mean = data.groupby("time_h")["madrs"].mean()
    ax[0].plot(mean.index / 24, mean.to_numpy(), color="k", lw=2, label="mean")
    for d in (0, 2, 5, 7, 9, 11):
        ax[0].axvline(d, color="C3", lw=0.6, alpha=0.5)
    ax[0].set(xlabel="day", ylabel="MADRS", title="Six infusions (red lines), then follow-up")
    ax[0].legend()
    labels = list(visits)
    ax[1].plot([visits[v]["time_h"] / 24 for v in labels],
               [100 * visits[v]["response_rate"] for v in labels], "-o", label="simulated")
    if p_resp is not None:
        ax[1].plot([12], [p_resp], "D", color="C3", markersize=8,
                   label="published, end of series")
    if p_relapse is not None:
        ax[1].axvline(11 + p_relapse, color="C1", ls="--",
                      label="published median relapse (after last infusion)")
    ax[1].set(xlabel="day", ylabel="responders (%)", title="Response and relapse")
    ax[1].legend(fontsize=8)
    save(fig, "repeated_infusions")


if __name__ == "__main__":
    main()
