"""One patient, every stage, for the page: plasma → brain → receptor block → signalling →
synapses → scores and side effects, on one time grid.

The page's path runs the compiled batched engine for the one patient on the display grid:
:func:`ketasim.batch.scores_and_stages` (serial kernel), one run giving the stages and the
scores (the mood layer integrated together with the mechanism, so no fine grid is needed).
``simulate_one(req, engine="reference")`` keeps the
SciPy reference path (:func:`ketasim.mood.mechanism_run` on the library's mood grid and
:func:`ketasim.mood.scores_from_components`); ``tests/test_web_api.py`` pins the agreement of
the two (1e-4 of each curve's peak for infusions) and the scores' equality with
:func:`ketasim.mood.simulate_patient` for a typical patient (random effects 0, no visit noise).

Times are hours from the first dose. The grid is a display choice (no model number): 5-min
steps over the 2 h after each dose, 30-min steps to 12 h after it, and a coarse step elsewhere
(2 h up to 14 days, then 4 h, then 6 h beyond 28 days), capped so that a request stays fast.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..errors import KetasimError
from ..scenario import ArmSpec

DISCLAIMER = "ketasim is a research tool, not medical advice."
MAX_DAYS = 120.0
MAX_DOSES = 60
MAX_POINTS = 1500
#: digits sent, relative to each curve's peak (a step of 1e-6 of the peak: far below the
#: engine's 1e-4 agreement with the reference, and below a pixel of any plot)
SIG_DIGITS = 7


class PatientSpec(BaseModel):
    """One typical virtual patient (no random effects): covariates and disorder."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    weight_kg: float = Field(70.0, ge=40.0, le=200.0, description="body weight, kg")
    age_years: float = Field(40.0, ge=18.0, le=90.0, description="age, years")
    sex: Literal["male", "female"] = "male"
    race: Literal["caucasian", "black", "asian", "japanese", "other"] = "caucasian"
    disorder: Literal["mdd", "trd", "bipolar"] = "trd"
    baseline_madrs: float | None = Field(None, ge=20.0, le=60.0, description="baseline MADRS "
                                         "(default: the clinic card's mean for the disorder)")


class SimulateRequest(BaseModel):
    """One arm (the scenario file's ``[[arm]]`` table) given to one patient for ``days``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
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


def _round_rows(X: np.ndarray, digits: int = SIG_DIGITS) -> np.ndarray:
    """Each row of ``X`` (2-D) rounded to a step of 10^-(digits-1) of its largest magnitude,
    rounded down to a power of ten (``digits`` significant digits at the peak; a curve's
    decaying tail keeps the same absolute resolution, not ever more digits). Non-finite values
    are kept; ``-0.0`` becomes ``0.0``.

    The step is an exact power of ten applied by multiplication or division, so each value's
    shortest ``repr`` is the short decimal; the change is far below the engine's 1e-4
    agreement. All rows in one numpy call per step (one call per curve cost more than the
    simulation of a typical request)."""
    Y = X.astype(float, copy=True)
    if Y.size == 0:
        return Y
    peak = np.max(np.where(np.isfinite(Y), np.abs(Y), 0.0), axis=1)
    up, down, p_up, p_down = [], [], [], []
    for r, pk in enumerate(peak.tolist()):
        if pk == 0.0:
            continue
        k = digits - 1 - math.floor(math.log10(pk))
        if k >= 0:
            up.append(r)
            p_up.append(10.0 ** min(k, 300))
        else:
            down.append(r)
            p_down.append(10.0 ** min(-k, 300))
    if up:
        p10 = np.array(p_up)[:, None]
        Y[up] = np.round(Y[up] * p10) / p10
    if down:
        p10 = np.array(p_down)[:, None]
        Y[down] = np.round(Y[down] / p10) * p10
    Y += 0.0  # no -0.0
    return Y


def _round_to_peak(x: np.ndarray, digits: int = SIG_DIGITS) -> np.ndarray:
    """One curve rounded as by :func:`_round_rows`."""
    x = np.asarray(x, dtype=float)
    return _round_rows(x.reshape(1, -1), digits).reshape(x.shape)


def _as_list(row: np.ndarray) -> list[float | None]:
    out = row.tolist()
    if np.isfinite(row).all():
        return out
    return [v if math.isfinite(v) else None for v in out]


def _clean(a) -> list[float | None]:
    """One curve for JSON: rounded (:func:`_round_rows`), non-finite values as None."""
    return _as_list(_round_to_peak(a))


def _clean_all(curves: dict) -> dict[str, list[float | None]]:
    """:func:`_clean` of every curve in ``curves``, the curves of one length rounded together
    as the rows of one array."""
    groups: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for k, v in curves.items():
        a = np.asarray(v, dtype=float)
        groups.setdefault(a.shape, []).append((k, a))
    out: dict[str, list[float | None]] = {}
    for shape, items in groups.items():
        if len(shape) != 1:
            out.update((k, _clean(a)) for k, a in items)
            continue
        Y = _round_rows(np.stack([a for _, a in items]))
        out.update((k, _as_list(Y[r])) for r, (k, _) in enumerate(items))
    return {k: out[k] for k in curves}


def _stages_reference(arm: ArmSpec, regimen, patient, t: np.ndarray):
    """Stages and scores from the SciPy reference (:func:`ketasim.mood.mechanism_run` on the
    library's mood grid, :func:`ketasim.mood.scores_from_components`); for checks."""
    from ..mood import _grid as mood_grid
    from ..mood import mechanism_run, scores_from_components

    # the score layer integrates on the library's mood grid (accuracy); the page shows ``t``
    full = mood_grid(t, regimen)
    idx = np.searchsorted(full, np.round(t, 9))
    res, comp = mechanism_run(arm, patient, full)
    plasma: dict = {}
    brain: dict = {}
    reads: dict = {}
    meta: dict = {}
    if res is not None:
        plasma = {k: v[idx] for k, v in res.plasma_ng_per_ml.items()}
        brain = {k: v[idx] for k, v in res.brain_free_uM.items()}
        reads = {k: v[idx] for k, v in res.readouts.items()}
        meta = res.metadata
    sc = scores_from_components(arm, patient, full, t, comp)
    return plasma, brain, reads, meta, sc


SCORE_KEYS = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi", "cadss", "bprs_positive",
              "sbp_change_mmhg", "sedation", "effect_site_ng_per_ml", "drug_effect",
              "placebo_effect")


def simulate_one(req: SimulateRequest, engine: Literal["batched", "reference"] = "batched"
                 ) -> dict:
    """Every stage for one typical patient; JSON-ready (see :class:`SimulateResponse`).

    ``engine="batched"`` (the page's): stages and scores from one run of
    :func:`ketasim.batch.scores_and_stages` (the mood layer integrated with the mechanism),
    on the display grid; ``"reference"``: the SciPy reference path. The two
    agree to 1e-4 of each curve's range (``tests/test_web_api.py``)."""
    from ..cards import card_versions, load_drug
    from ..mechanism import readout_unit

    t0 = time.perf_counter()
    arm = req.arm
    regimen, card = check_arm(arm)
    t = _grid(regimen, req.days * 24.0)
    patient = typical_patient(req.patient, len(t))
    plasma: dict = {}
    brain: dict = {}
    reads: dict = {}
    meta: dict = {}
    if engine == "reference":
        plasma, brain, reads, rmeta, sc = _stages_reference(arm, regimen, patient, t)
        peak = float(np.max(sc["effect_site_ng_per_ml"])) if len(t) else 0.0
    else:
        from ..batch import scores_and_stages

        rmeta = {}
        sc_all, res = scores_and_stages(arm, [patient], t, threads=1)
        if res is not None:
            plasma = {k: v[0] for k, v in res.plasma_ng_per_ml.items()}
            brain = {k: v[0] for k, v in res.brain_free_uM.items()}
            reads = {k: v[0] for k, v in res.readouts.items()}
            rmeta = res.metadata
        sc = {k: v[0] if np.ndim(v) == 2 else v for k, v in sc_all.items()}
        # the exact maximum over the course (not only at the grid's times)
        peak = float(sc["peak_effect_site_ng_per_ml"][0])
    if rmeta:
        meta = {k: rmeta[k] for k in ("courses", "hypotheses", "interventions", "solver")}
    scores = _clean_all({k: sc[k] for k in SCORE_KEYS})
    bands = {k: float(v.value) for k, v in load_drug("ketamine").bands.items()}
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
                 # the validated request (arm, patient, days): what reruns this response
                 "request": req.model_dump(mode="json"),
                 "patient": "typical (random effects 0, no visit noise)", "engine": engine,
                 "n_points": len(t), "wall_ms": round((time.perf_counter() - t0) * 1e3, 2),
                 "readout_units": {k: readout_unit(k) for k in reads}})
    return {"time_h": t.tolist(), "plasma_ng_per_ml": _clean_all(plasma),
            "brain_free_uM": _clean_all(brain), "readouts": _clean_all(reads),
            "scores": scores,
            "bands_ng_per_ml": bands, "summary": summary, "metadata": meta,
            "disclaimer": DISCLAIMER}


class ResponseCache:
    """Thread-safe LRU of response bodies (JSON bytes) by canonical request, bounded by
    entries and bytes. A typical patient's result depends only on the request and the
    installed cards and code, so a repeated request (a page reload, a shared link, toggling a
    setting back) costs a dictionary look-up."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        """The cached body for ``key`` (most recently used now), or None."""
        with self._lock:
            body = self._d.get(key)
            if body is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return body

    def put(self, key: str, body: bytes) -> None:
        """Store ``body``; evict the least recently used entries beyond the limits."""
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._d[key] = body
            self._bytes += len(body)
            while len(self._d) > self.max_entries or self._bytes > self.max_bytes:
                _, gone = self._d.popitem(last=False)
                self._bytes -= len(gone)

    def __len__(self) -> int:
        return len(self._d)


def _json_default(obj):
    """numpy scalars as Python numbers; anything else is a bug, not a silent string."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def simulate_json(req: SimulateRequest, cache: ResponseCache | None = None
                  ) -> tuple[bytes, bool]:
    """:func:`simulate_one` as compact JSON bytes, through ``cache`` when given; returns
    ``(body, cache hit)``."""
    key = req.model_dump_json() if cache is not None else ""
    if cache is not None:
        body = cache.get(key)
        if body is not None:
            return body, True
    # compact; ~10× faster than the json module for ~15,000 floats
    body = orjson.dumps(simulate_one(req), default=_json_default,
                        option=orjson.OPT_SERIALIZE_NUMPY)
    if cache is not None:
        cache.put(key, body)
    return body, False
