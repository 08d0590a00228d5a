"""Shared helpers of the tutorials: population size, output folder, published numbers.

Published numbers are read from ``shared/literature/calibration/`` (never typed in): set
``KETASIM_CALIBRATION_DIR`` to point elsewhere. Without that folder the tutorials still run and
draw their figures, and say that the published numbers are unavailable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("KETASIM_TUTORIAL_OUT", ROOT / "build" / "tutorials"))


def n_patients(default: int) -> int:
    """Virtual patients per trial: ``KETASIM_TUTORIAL_N`` if set (small in CI), else default."""
    return int(os.environ.get("KETASIM_TUTORIAL_N", default))


def calibration_dir() -> Path | None:
    """The calibration data folder (``shared/literature/calibration``), or None if absent."""
    env = os.environ.get("KETASIM_CALIBRATION_DIR")
    cands = [Path(env)] if env else []
    cands += [ROOT / "shared" / "literature" / "calibration",
              ROOT.parent / "shared" / "literature" / "calibration",
              Path("/work/shared/literature/calibration")]
    return next((c for c in cands if c.is_dir()), None)


def study(relpath: str) -> dict[str, Any] | None:
    """A calibration YAML file (e.g. ``clinical/murrough2013a.yaml``) as a dict, or None."""
    d = calibration_dir()
    if d is None or not (d / relpath).is_file():
        return None
    data = yaml.safe_load((d / relpath).read_text(encoding="utf-8"))
    data["_file"] = relpath
    return data


def cite(data: dict[str, Any] | None) -> str:
    """Short citation of a calibration file: citation text plus PMID/DOI where given."""
    if not data:
        return "(calibration data not available)"
    bits = [str(data.get("citation") or data.get("description") or data.get("id", ""))]
    if data.get("pmid"):
        bits.append(f"PMID {data['pmid']}")
    if data.get("doi"):
        bits.append(f"doi {data['doi']}")
    return "; ".join(bits) + f" (`{data.get('_file', '')}`)"


def observation(data: dict[str, Any] | None, **match: Any) -> dict[str, Any] | None:
    """First observation of a calibration file whose fields equal ``match`` (lists compared
    as lists), or None."""
    if not data:
        return None
    for obs in data.get("observations", data.get("entries", [])):
        if all(obs.get(k) == v for k, v in match.items()):
            return obs
    return None


def value(obs: dict[str, Any] | None) -> float | None:
    """The numeric value of an observation, or None."""
    v = None if obs is None else obs.get("value")
    return float(v) if isinstance(v, int | float) else None


def fmt(v: float | None, nd: int = 1, unit: str = "") -> str:
    """A number for a table (``–`` when missing)."""
    return "–" if v is None else f"{v:.{nd}f}{unit}"


def write_table(name: str, header: list[str], rows: list[list[str]], sources: list[str]) -> str:
    """Print a Markdown table and write it (with its sources) to ``OUT/<name>.md``."""
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n\nPublished numbers from `shared/literature/calibration/`:\n\n"
    text += "\n".join(f"- {s}" for s in sources) + "\n"
    (OUT / f"{name}.md").write_text(text, encoding="utf-8")
    print(text)
    return text


def save(fig: plt.Figure, name: str) -> Path:
    """Save a figure to ``OUT/<name>.png`` and close it."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")
    return path
