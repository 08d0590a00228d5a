"""Figures and reports (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import KetasimError  # noqa: E402


def plot_pk(res, path: str) -> None:
    """Plasma, metabolite and effect-site concentrations (ng/mL) against time (h) as a PNG."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    t = res.time_h
    for sp, c in res.plasma_ng_per_ml.items():
        ax.plot(t, c[0], label=f"{sp} plasma")
    for sp, c in res.effect_ng_per_ml.items():
        ax.plot(t, c[0], "--", label=f"{sp} effect site")
    ax.set_xlabel("time after first dose (h)")
    ax.set_ylabel("concentration (ng/mL)")
    ax.set_title(f"{res.card.drug} · {res.card.id} ({res.card.sampling} sampling)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.text(0.99, 0.01, "ketasim — research tool, not medical advice", ha="right",
             fontsize=7, color="grey")
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise KetasimError("plot", f"cannot write {path}: {exc.strerror}") from exc
    finally:
        plt.close(fig)


def plot_mechanism(res, path: str) -> None:
    """Every stage of a mechanism simulation as a multi-panel PNG."""
    fig, axes = plt.subplots(3, 2, figsize=(10, 8), dpi=110, sharex=True)
    t = res.time_h / 24.0
    ax = axes[0, 0]
    for k, v in res.plasma_ng_per_ml.items():
        ax.plot(t, v, label=k)
    ax.set_ylabel("plasma (ng/mL)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for k in ("block_E2B", "block_Esyn", "block_I", "block_H"):
        ax.plot(t, res.readouts[k], label=k.replace("block_", ""))
    ax.set_ylabel("NMDAR block (fraction)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for k in ("p_eef2", "bdnf", "trkb", "mtorc1"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("signalling (× baseline)")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for k in ("glutamate", "lhb_burst"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("glutamate, LHb bursting")
    ax.legend(fontsize=7)
    ax = axes[2, 0]
    for k in ("synaptic_proteins", "spine_density", "synaptic_strength"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("synapses (× baseline)")
    ax.legend(fontsize=7)
    ax.set_xlabel("days")
    ax = axes[2, 1]
    ax.plot(t, res.readouts["fst_immobility"])
    ax.set_ylabel("FST immobility (s, rodent readout)")
    ax.set_xlabel("days")
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.suptitle("ketasim — dose to synapse (research tool, not medical advice)", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise KetasimError("plot", f"cannot write {path}: {exc.strerror}") from exc
    finally:
        plt.close(fig)
