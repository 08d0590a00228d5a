"""Tutorial: the rodent experiments — rapamycin, GluN2B deletion, spine blockade.

Runs the named in-silico experiments (``ketasim experiment <name>``) in mice given ketamine
10 mg/kg i.p.: each has four arms (vehicle, ketamine, intervention, intervention + ketamine).
The published findings are qualitative; the table sets the model's "fraction of ketamine's
effect removed" beside the findings and timings read from
``shared/literature/calibration/pd/rodent_timecourses.yaml``.

Run: ``.venv/bin/python tutorials/rodent.py``.
"""

from __future__ import annotations

from _common import cite, observation, save, study, write_table

from ketasim.experiments import effect_removed, run_experiment

ARMS = ("vehicle", "ketamine", "intervention", "intervention+ketamine")


def _at(result: dict, readout: str, time_h: float) -> dict[str, float]:
    return next(r["arms"] for r in result["readouts"]
                if r["readout"] == readout and r["time_h"] == time_h)


def main() -> None:
    """Run the tutorial: three experiments, figure and table."""
    rapa = run_experiment("rapamycin")
    glun2b = run_experiment("glun2b-deletion")
    spines = run_experiment("spine-blockade")

    data = study("pd/rodent_timecourses.yaml")

    def finding(readout: str) -> str:
        obs = observation(data, readout=readout)
        if obs is None:
            return "–"
        time = f" ({obs['time']})" if obs.get("time") else ""
        return f"{obs.get('finding', '')}{time} — {obs.get('source', '')}"

    rows = []
    for name, res, readout in (("rapamycin", rapa, "mtor_synaptogenesis"),
                               ("glun2b-deletion", glun2b, "cortical_GluN2B_deletion")):
        for r in ("synaptic_strength", "fst_immobility"):
            rows.append([name, f"{r} at 24 h",
                         f"{100 * effect_removed(_at(res, r, 24.0)):.0f}%", finding(readout)])
    for th in (2.0, 168.0):
        rows.append(["spine-blockade", f"fst_immobility at {th:g} h",
                     f"{100 * effect_removed(_at(spines, 'fst_immobility', th)):.0f}%",
                     finding("spine_formation_timing")])
    write_table("rodent", ["experiment", "readout", "ketamine effect removed (model)",
                           "published finding"], rows, [cite(data)])

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    colors = ["C7", "C0", "C1", "C3"]
    for k, (title, res) in enumerate((("Rapamycin (Li 2010)", rapa),
                                      ("GluN2B deletion (Miller 2014)", glun2b))):
        arms = _at(res, "synaptic_strength", 24.0)
        ax[k].bar(range(4), [arms[a] for a in ARMS], color=colors)
        ax[k].set_xticks(range(4), [a.replace("+", "+\n") for a in ARMS], fontsize=8)
        ax[k].axhline(1.0, color="k", lw=0.5)
        vals = [arms[a] for a in ARMS]
        if max(vals) / max(min(vals), 1e-9) > 5:
            ax[k].set_yscale("log")
        else:
            ax[k].set_ylim(min(vals) - 0.02, max(vals) + 0.02)
        ax[k].set(ylabel="synaptic strength at 24 h (baseline = 1)", title=title)
    times = sorted({r["time_h"] for r in spines["readouts"] if r["readout"] == "fst_immobility"})
    for a, c in zip(ARMS, colors, strict=True):
        ax[2].plot(times, [_at(spines, "fst_immobility", t)[a] for t in times], "-o", color=c,
                   label=a)
    ax[2].set_xscale("log")
    ax[2].set(xlabel="time after dose (h)", ylabel="forced-swim immobility (s)",
              title="Spine blockade (Moda-Sava 2019)")
    ax[2].axvspan(12, 24, color="C2", alpha=0.15, label="published: new spines at 12–24 h")
    ax[2].legend(fontsize=7)
    save(fig, "rodent")


if __name__ == "__main__":
    main()
