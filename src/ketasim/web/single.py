"""One patient, every stage, for the page: plasma → brain → receptor block → signalling →
synapses → scores and side effects, on one time grid.

The engine is run once; the score model (:func:`ketasim.mood.scores_from_components`) is fed the
same drug-dependent components that :func:`ketasim.mood.mechanism_components` derives, so the
scores equal :func:`ketasim.mood.simulate_patient`'s for a typical patient (random effects 0,
no visit noise); ``tests/test_web_api.py`` checks that equality.

Times are hours from the first dose. The grid is a display choice (no model number): 5-min
steps over the 2 h after each dose, 30-min steps to 12 h after it, and a coarse step elsewhere
(2 h up to 14 days, then 4 h, then 6 h beyond 28 days), capped so that a request stays fast.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import KetasimError
from ..scenario import ArmSpec

DISCLAIMER = "ketasim is a research tool, not medical advice."
MAX_DAYS = 120.0
MAX_DOSES = 60
MAX_POINTS = 1500


class PatientSpec(BaseModel):
    """One typical virtual patient (no random effects): covariates and disorder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    weight_kg: float = Field(70.0, ge=40.0, le=200.0, description="body weight, kg")
    age_years: float = Field(40.0, ge=18.0, le=90.0, description="age, years")
    sex: Literal["male", "female"] = "male"
    race: Literal["caucasian", "black", "asian", "japanese", "other"] = "caucasian"
    disorder: Literal["mdd", "trd", "bipolar"] = "trd"
    baseline_madrs: float | None = Field(None, ge=20.0, le=60.0, description="baseline MADRS "
                                         "(default: the clinic card's mean for the disorder)")


class SimulateRequest(BaseModel):
    """One arm (the scenario file's ``[[arm]]`` table) given to one patient for ``days``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arm: ArmSpec
    patient: PatientSpec = Field(default_factory=PatientSpec)
    days: float = Field(14.0, ge=1.0, le=MAX_DAYS, description="simulated days after the first "
                        "dose")


class SimulateResponse(BaseModel):
    """Time courses of every stage (``None`` where a value is not finite)."""

    time_h: list[float]
    plasma_ng_per_ml: dict[str, list[float | None]]
    brain_free_uM: dict[str, list[float | None]]
    readouts: dict[str, list[float | None]]
    scores: dict[str, list[float | None]]
    bands_ng_per_ml: dict[str, float]
    summary: dict[str, float | bool | str | None]
    metadata: dict[str, object]
    disclaimer: str


def _grid(regimen, horizon_h: float) -> np.ndarray:
    coarse = 2.0 if horizon_h <= 14 * 24 else (4.0 if horizon_h <= 28 * 24 else 6.0)
    pts = [np.arange(0.0, horizon_h + 1e-9, coarse), np.array([horizon_h])]
    starts = [d.time_h for d in regimen] if regimen is not None else [0.0]
    for s in starts:
        pts.append(s + np.arange(0.0, 2.0, 1.0 / 12.0))
        pts.append(s + np.arange(2.0, 12.0, 0.5))
    g = np.unique(np.round(np.concatenate(pts), 6))
    g = g[(g >= 0.0) & (g <= horizon_h)]
    if len(g) > MAX_POINTS:
        raise KetasimError("arm.schedule", f"{len(g)} time points needed; at most "
                           f"{MAX_POINTS}", "fewer doses or fewer days")
    return g


def typical_patient(spec: PatientSpec, n_points: int):
    """A :class:`~ketasim.population.Patient` with every random effect at 0."""
    from ..cards import load_param_card
    from ..population import Patient

    base = spec.baseline_madrs
    if base is None:
        base = load_param_card("clinic").value(f"madrs_baseline_{spec.disorder}")
    return Patient(0, spec.weight_kg, spec.age_years, spec.sex, spec.race, spec.disorder,
                   float(base), 0.0, 0.0, 1.0, 1.0, np.zeros(n_points), (), (0, 0, 0))


def check_arm(arm: ArmSpec, field: str = "arm"):
    """Resolve the arm's regimen, PK model, hypotheses and interventions (errors name the key).

    Returns ``(regimen or None, PK card or None)``."""
    from ..mechanism import Hypotheses, Interventions
    from ..mood import arm_regimen
    from ..pk import resolve_model

    try:
        reg = arm_regimen(arm)
        card = None
        if reg is not None:
            if len(reg) > MAX_DOSES:
                raise KetasimError("schedule", f"{len(reg)} doses; at most {MAX_DOSES}")
            card = resolve_model(arm.drug, arm.model, reg.routes)
        Hypotheses.parse(arm.hypotheses)
        Interventions.parse(arm.interventions)
    except KetasimError as exc:
        raise KetasimError(f"{field}.{exc.field}", exc.problem, exc.allowed) from exc
    return reg, card


def _clean(a) -> list[float | None]:
    x = np.asarray(a, dtype=float)
    r = np.round(x, 6)
    return [float(v) if math.isfinite(v) else None for v in r.tolist()]


def simulate_one(req: SimulateRequest) -> dict:
    """Every stage for one typical patient; JSON-ready (see :class:`SimulateResponse`)."""
    from ..cards import card_versions, load_drug
    from ..mood import _grid as mood_grid
    from ..mood import mechanism_run, scores_from_components

    t0 = time.perf_counter()
    arm = req.arm
    regimen, card = check_arm(arm)
    t = _grid(regimen, req.days * 24.0)
    patient = typical_patient(req.patient, len(t))
    plasma: dict = {}
    brain: dict = {}
    reads: dict = {}
    meta: dict = {}
    # the score layer integrates on the library's mood grid (accuracy); the page shows ``t``
    full = mood_grid(t, regimen)
    idx = np.searchsorted(full, np.round(t, 9))
    res, comp = mechanism_run(arm, patient, full)
    if res is not None:
        plasma = {k: v[idx] for k, v in res.plasma_ng_per_ml.items()}
        brain = {k: v[idx] for k, v in res.brain_free_uM.items()}
        reads = {k: v[idx] for k, v in res.readouts.items()}
        meta = {k: res.metadata[k] for k in ("courses", "hypotheses", "interventions",
                                            "solver")}
    sc = scores_from_components(arm, patient, full, t, comp)
    keys = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi", "cadss", "bprs_positive",
            "sbp_change_mmhg", "sedation", "effect_site_ng_per_ml", "drug_effect",
            "placebo_effect")
    scores = {k: _clean(sc[k]) for k in keys}
    bands = {k: float(v.value) for k, v in load_drug("ketamine").bands.items()}
    peak = float(np.max(sc["effect_site_ng_per_ml"])) if len(t) else 0.0
    madrs = np.asarray(sc["madrs"])
    summary = {
        "baseline_madrs": patient.baseline_madrs,
        "madrs_24h": float(np.interp(24.0, t, madrs)) if t[-1] >= 24.0 else None,
        "madrs_min": float(madrs.min()),
        "madrs_end": float(madrs[-1]),
        "peak_effect_site_ng_per_ml": peak,
        "peak_cadss": float(np.max(sc["cadss"])),
        "peak_sbp_change_mmhg": float(np.max(sc["sbp_change_mmhg"])),
        "anaesthetic_band": bool(peak >= bands.get("anaesthetic_ng_per_ml", math.inf)),
        "analgesic_band": bool(peak >= bands.get("analgesic_ng_per_ml", math.inf)),
        "n_doses": 0 if regimen is None else len(regimen),
        "model": None if card is None else card.id,
    }
    meta.update({"ketasim_version": __version__, "card_hashes": card_versions(),
                 "patient": "typical (random effects 0, no visit noise)",
                 "n_points": len(t), "wall_ms": round((time.perf_counter() - t0) * 1e3, 2)})
    return {"time_h": [float(x) for x in t], "plasma_ng_per_ml": {k: _clean(v) for k, v in
                                                                   plasma.items()},
            "brain_free_uM": {k: _clean(v) for k, v in brain.items()},
            "readouts": {k: _clean(v) for k, v in reads.items()}, "scores": scores,
            "bands_ng_per_ml": bands, "summary": summary, "metadata": meta,
            "disclaimer": DISCLAIMER}
