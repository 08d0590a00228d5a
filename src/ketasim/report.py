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
