"""The literature scorecard: study cases (YAML) run as virtual trials or PK checks.

A *case* is one study file of ``shared/literature/calibration`` (or a user's study) written as
a runnable design plus expected values (format: ``docs/validation.md``). Shipped cases live in
``ketasim/cases/`` (``set: calibration``); a user drops more files into a folder and passes it
with ``--cases`` (``set: validation``, out of sample).

For every endpoint the scorecard gives the observed value, the model's point prediction (all
simulated patients, card values), a 90 % prediction interval and whether the prediction lies
inside the tolerance. The prediction interval comes from virtual-trial replicates of the
study's own size: each replicate draws the calibrated clinic constants from their uncertainty
distribution (card ``uncertainty``) and resamples the study's number of patients per arm from
the simulated population, so it holds parameter uncertainty and between-patient variability,
conditional on that simulated pool of ``n`` patients per arm: the point prediction's own
Monte Carlo error at ``n`` is not in it. That error is reported separately (``mc_se``, a
bootstrap of the ``n`` simulated patients per arm, and ``mc_stable``, whether the verdict
survives it): at ``--n 100`` the number of endpoints within tolerance moves by several between
seeds, so the shipped scorecard is run at a larger ``n`` (docs/validation.md).

Tolerance rules (the numbers are the case file's; the defaults and their reasons are in
``docs/validation.md``):

* ``se``: observed ± max(2·SE, floor); SE from ``se``, else ``sd/√n``, else the CI half-width/1.96;
* ``ci95``: the study's 95 % CI, widened to at least observed ± floor;
* ``binomial``: the Wilson 95 % interval of the observed proportion at the study's n, widened to
  at least ± floor;
* ``range``: the interval given, widened by floor on each side;
* ``rel``: observed × (1 ± rel) (ordered, also for a negative observation);
* ``sd``: observed ± max(SD, floor) (a spread of individuals, when n is not reported);
* qualitative (``expect``): a stated direction or significance check, see :data:`METRICS`.

All drug-dependent simulation goes through :func:`simulate_components` (the one place to swap
in a faster engine); its per-patient results are cached in memory and on disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import __version__
from .errors import KetasimError

SETS = ("calibration", "validation")
#: trial metrics (patients × visits) and what they compute
METRICS = {
    "mean_change": "mean of (score − baseline) in ARM",
    "mean_score": "mean score in ARM (with vs: ARM minus VS)",
    "relative_change": "mean score / mean baseline − 1 in ARM",
    "improvement_d": "within-arm standardised improvement −mean(change)/SD(change)",
    "response_rate": "fraction with score ≤ (1 − response_fraction) × baseline",
    "remission_rate": "fraction with score ≤ threshold",
    "fraction_at_most": "fraction with score ≤ threshold",
    "responded_any": "fraction meeting response at any of the visits in 'at'",
    "difference": "mean change ARM minus mean change VS",
    "cohens_d": "(mean change ARM − mean change VS) / pooled SD (negative favours ARM)",
    "rate_difference": "response (or remission, with of: remission) rate ARM minus VS",
    "odds_ratio": "crude odds ratio of response (or remission) ARM vs VS (0.5 added to each "
                  "cell only when a cell is empty)",
    "separation_z": "Welch t of the change difference at the study's n, as its z-equivalent "
                    "(qualitative)",
    "response_separation_z": "two-proportion z of response (of: remission) at the study's n",
    "change_significant_z": "one-sample t of the change in ARM at the study's n, as its "
                            "z-equivalent",
    "dissociation_present": "mean CADSS in ARM ≥ 4 at the visit (qualitative)",
    "peak_mean": "mean over patients of the scale's peak column (e.g. peak SBP change)",
    "peak_incidence": "fraction of patients whose peak CADSS ≥ threshold",
    "relapse_median_days": "median days from the last dose to loss of response, responders at "
                           "the first visit ('at'); never relapsing = beyond follow-up",
}
PK_METRICS = {
    "cmax": "peak plasma concentration (ng/mL), mean over subjects",
    "conc_at": "plasma concentration at 'at' (ng/mL), mean over subjects",
    "tmax_min": "time of the peak (min), mean over subjects",
    "t_half": "terminal half-life of the parent (h), mean over subjects",
    "bioavailability": "AUC·dose_ref / (AUC_ref·dose) against an IV reference regimen",
    "clearance": "dose / AUC_0-inf (L/h) after an IV regimen",
    "clearance_per_kg": "dose / AUC_0-inf / weight (mL/min/kg)",
}
SCALES = ("madrs", "hamd17", "hamd6", "madrs_item10", "ssi", "cadss", "sbp_change_mmhg",
          "bprs_positive", "sedation")
PEAK_COLS = {"sbp_change_mmhg": "peak_sbp_change_mmhg", "cadss": "peak_cadss"}
Z_CRIT = 1.96  # two-sided 5 % significance for the qualitative separation checks
QUALITATIVE = ("separation_z", "response_separation_z", "change_significant_z",
               "dissociation_present")
DISSOCIATION_CADSS = 4.0
#: bootstrap resamples of the simulated patients for each point prediction's Monte Carlo error
MC_BOOTSTRAP = 100
#: a verdict is "stable" when at least this share of the bootstrap resamples agrees with it:
#: the prediction is then ≳ 2.3 Monte Carlo SE from the edge, and since two seeds' predictions
#: differ by √2 SE, another seed at the same n flips it with probability ≲ 5 %
MC_STABLE = 0.99


# --------------------------------------------------------------------------- case schema
class Tolerance(BaseModel):
    """How far a prediction may lie from the observation (rules in the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    rule: Literal["se", "ci95", "binomial", "range", "rel", "sd", "abs"]
    floor: float = Field(0.0, ge=0.0)
    rel: float | None = Field(None, gt=0.0)
    abs: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _complete(self) -> Tolerance:
        for rule in ("rel", "abs"):  # the two rules that take their width from a number
            if self.rule == rule and getattr(self, rule) is None:
                raise ValueError(f"rule {rule} needs '{rule}' (a number > 0)")
        return self


class Endpoint(BaseModel):
    """One observed number or finding and how the model computes it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str = Field(min_length=1, max_length=120)
    metric: str
    arm: str | None = None
    vs: str | None = None
    at: str | list[str] | None = None
    scale: str = "madrs"
    of: Literal["response", "remission"] = "response"
    threshold: float | None = None
    response_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    observed: float | bool | None = None
    observed_range: list[float] | None = None
    n: int | None = Field(None, ge=1)
    n_vs: int | None = Field(None, ge=1)
    se: float | None = Field(None, gt=0.0)
    sd: float | None = Field(None, gt=0.0)
    ci95: list[float] | None = None
    tolerance: Tolerance | None = None
    expect: Literal["significant", "not significant", "present", "absent", "negative",
                    "positive"] | None = None
    regimen: dict | None = None  # PK endpoints: {drug, route, dose, duration, model, ...}
    reference: dict | None = None  # PK bioavailability: the IV reference regimen
    evidence: str = ""
    mapping: str = ""
    note: str = ""

    @model_validator(mode="after")
    def _complete(self) -> Endpoint:
        if self.metric not in METRICS and self.metric not in PK_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; allowed: "
                             + ", ".join([*METRICS, *PK_METRICS]))
        if self.scale not in SCALES:
            raise ValueError(f"unknown scale {self.scale!r}; allowed: " + ", ".join(SCALES))
        if self.expect is None:
            if self.observed is None and self.observed_range is None:
                raise ValueError("needs 'observed' (or 'observed_range', or 'expect')")
            if self.tolerance is None:
                raise ValueError("needs 'tolerance' (or 'expect' for a qualitative finding)")
        for key in ("ci95", "observed_range"):
            v = getattr(self, key)
            if v is not None and (len(v) != 2 or v[0] > v[1]):
                raise ValueError(f"'{key}' must be [low, high]")
        if isinstance(self.at, list) and not self.at:
            raise ValueError("'at' needs at least one time")
        if self.metric == "conc_at" and self.at is None:
            raise ValueError("metric conc_at needs 'at' (the time of the concentration)")
        return self


class Skipped(BaseModel):
    """A literature observation the case does not check, with the reason."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    observation: str
    reason: str


class Case(BaseModel):
    """A study as a runnable case (see docs/validation.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
    set: Literal["calibration", "validation"]
    source: str = ""
    citation: str = ""
    description: str = ""
    kind: Literal["trial", "pk", "none"] = "trial"
    population: dict = Field(default_factory=dict)
    arms: list[dict] = Field(default_factory=list)
    study_n: dict[str, int] = Field(default_factory=dict)
    followup: list[str] = Field(default_factory=list)
    mapping: str = ""
    endpoints: list[Endpoint] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    reason: str = ""
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.kind == "none" or not self.endpoints:
            if not self.reason:
                raise ValueError("a case without endpoints needs a 'reason'")
            return self
        if self.kind == "trial":
            if not self.arms:
                raise ValueError("a trial case needs 'arms'")
            names = [a.get("name") for a in self.arms]
            for e in self.endpoints:
                if e.metric in PK_METRICS:
                    raise ValueError(f"endpoint {e.name!r}: PK metric in a trial case")
                for key in ("arm", "vs"):
                    v = getattr(e, key)
                    if v is not None and v not in names:
                        raise ValueError(f"endpoint {e.name!r}: unknown {key} {v!r}")
                if e.arm is None:
                    raise ValueError(f"endpoint {e.name!r}: needs 'arm'")
                if e.at is None:
                    raise ValueError(f"endpoint {e.name!r}: needs 'at'")
        else:
            for e in self.endpoints:
                if e.metric not in PK_METRICS or e.regimen is None:
                    raise ValueError(f"endpoint {e.name!r}: a pk case needs PK metrics and "
                                     "a 'regimen'")
        return self


def _case_error(path: str, exc: ValidationError) -> KetasimError:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "case"
    return KetasimError(f"case {os.path.basename(path)} {loc}",
                        err["msg"].removeprefix("Value error, "))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML itself keeps
    the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_case(path: str | Path) -> Case:
    """Read and validate one case file (clear one-line errors naming file and field)."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError as exc:
        raise KetasimError("cases", f"file not found: {path}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise KetasimError(f"case {os.path.basename(path)}", f"not valid YAML: {first}") from exc
    if not isinstance(data, dict):
        raise KetasimError(f"case {os.path.basename(path)}", "must be a mapping (YAML keys)")
    try:
        case = Case.model_validate(data)
    except ValidationError as exc:
        raise _case_error(path, exc) from exc
    if case.kind == "trial" and case.endpoints:
        try:
            trial_scenario(case, n=2, seed=0)
        except KetasimError as exc:
            raise KetasimError(f"case {os.path.basename(path)} {exc.field}", exc.problem,
                               exc.allowed) from exc
    return case


def shipped_cases_dir() -> str:
    """Folder of the case files shipped with ketasim (the calibration studies)."""
    return str(resources.files("ketasim") / "cases")


def case_hash(case: Case) -> str:
    """SHA-256 prefix (12 hex digits, as the card hashes) of a case's validated content
    (canonical JSON, sorted keys): recorded with every scorecard."""
    text = json.dumps(case.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def load_cases(folder: str | None = None, include_shipped: bool = True) -> list[Case]:
    """Shipped calibration cases plus every ``*.yaml`` in ``folder`` (sorted by file name)."""
    paths: list[str] = []
    if include_shipped:
        d = shipped_cases_dir()
        paths += sorted(os.path.join(d, p) for p in os.listdir(d) if p.endswith(".yaml"))
    if folder is not None:
        if not os.path.isdir(folder):
            raise KetasimError("cases", f"not a folder: {folder}")
        extra = sorted(os.path.join(folder, p) for p in os.listdir(folder)
                       if p.endswith((".yaml", ".yml")))
        if not extra:
            raise KetasimError("cases", f"no .yaml case files in {folder}")
        paths += extra
    cases = [load_case(p) for p in paths]
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise KetasimError("cases", f"duplicate case id(s): {', '.join(dup)}")
    return cases


# --------------------------------------------------------------------------- scenarios
def _hours(v: str) -> float:
    from .units import parse_duration

    return parse_duration(v, field="at", allow_zero=True)


def _visit_labels(case: Case) -> list[str]:
    labels: dict[float, str] = {}
    for e in case.endpoints:
        for v in ([e.at] if isinstance(e.at, str) else e.at or []):
            labels.setdefault(round(_hours(v), 6), v)
    for v in case.followup:
        labels.setdefault(round(_hours(v), 6), v)
    return [labels[h] for h in sorted(labels)]


def trial_scenario(case: Case, n: int, seed: int, hypotheses: str | None = None):
    """The case's design as a validated :class:`~ketasim.scenario.Scenario` (n per arm)."""
    from .scenario import parse_scenario

    arms = []
    for a in case.arms:
        a = dict(a)
        if hypotheses is not None and a.get("control") is None:
            a["hypotheses"] = hypotheses
        a.pop("ratio", None)
        arms.append(a)
    pop = {**case.population, "n": n * len(arms), "seed": seed + int(case.population.get(
        "seed", 0))}
    return parse_scenario({"title": case.id, "population": pop, "arm": arms,
                           "endpoints": {"at": _visit_labels(case)}})


# --------------------------------------------------------------------------- simulation
def _cache_dir() -> str | None:
    d = os.environ.get("KETASIM_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                     "ketasim"))
    return None if d in ("", "0", "off") else os.path.join(d, "validate")


def _cache_key(arm, spec, arm_index: int, n: int, t: np.ndarray,
               overrides: dict | None) -> str:
    from .cards import card_versions

    blob = json.dumps({"arm": arm.model_dump(mode="json"), "pop": spec.model_dump(mode="json"),
                       "i": arm_index, "n": n, "t": hashlib.sha256(t.tobytes()).hexdigest(),
                       "o": overrides or {}, "cards": card_versions(), "v": __version__,
                       # 2: the fast component carries the hypothesis (e) weight (tenth
                       # session); older cached components of non-default arms are stale
                       "components": 2},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


_MEM: dict[str, dict[str, np.ndarray]] = {}
_MEM_MAX = 64  # arms kept in memory (oldest dropped first); the disk cache keeps the rest


def _remember(key: str, value: dict[str, np.ndarray]) -> None:
    _MEM[key] = value
    while len(_MEM) > _MEM_MAX:
        _MEM.pop(next(iter(_MEM)))


def simulate_components(arm, patients: list, t: np.ndarray, overrides: dict | None = None,
                        cache_key: str | None = None) -> dict[str, np.ndarray]:
    """Drug-dependent inputs of the score model for every patient, stacked (patients, len(t)).

    The single place where the per-patient mechanism simulation is called (reference engine:
    :func:`ketasim.mood.mechanism_components`; ``overrides`` = mechanism-card values passed to
    :func:`ketasim.engine.simulate`). Results are cached by ``cache_key`` (memory and disk)."""
    if cache_key is not None and cache_key in _MEM:
        return _MEM[cache_key]
    d = _cache_dir()
    path = os.path.join(d, f"{cache_key}.npz") if (d and cache_key) else None
    if path and os.path.exists(path):
        try:
            with np.load(path) as z:
                out = {k: z[k] for k in z.files}
            _remember(cache_key, out)
            return out
        except (OSError, ValueError):
            pass
    if overrides:
        comps = [_components_with_overrides(arm, p, t, overrides) for p in patients]
    else:
        from .mood import mechanism_components

        comps = [mechanism_components(arm, p, t) for p in patients]
    out = {k: np.array([c[k] for c in comps]) for k in comps[0]}
    if cache_key is not None:
        _remember(cache_key, out)
    if path:
        try:
            os.makedirs(d, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"
            np.savez_compressed(tmp, **out)
            os.replace(tmp, path)
        except OSError:
            pass
    return out


def _components_with_overrides(arm, patient, t: np.ndarray, overrides: dict
                               ) -> dict[str, np.ndarray]:
    """:func:`ketasim.mood.mechanism_components` with mechanism-card overrides."""
    from .mood import mechanism_run

    return mechanism_run(arm, patient, t, overrides=overrides)[1]


@dataclass
class ArmSim:
    """One simulated arm: the spec, its patients, the grid, visits and mechanism components."""

    arm: Any
    patients: list
    t: np.ndarray
    visits_h: np.ndarray
    comps: dict[str, np.ndarray]


def simulate_design(scenario, n: int, overrides: dict | None = None,
                    cache: bool = True) -> list[ArmSim]:
    """Every arm of ``scenario`` with ``n`` patients (components through the one engine call)."""
    from .mood import _grid, arm_regimen
    from .population import sample_arm

    visits = np.array([_hours(v) for v in scenario.endpoints.at])
    out = []
    for i, arm in enumerate(scenario.arms):
        pts = sample_arm(scenario.population, i, n, len(visits))
        t = _grid(visits, arm_regimen(arm))
        key = _cache_key(arm, scenario.population, i, n, t, overrides) if cache else None
        out.append(ArmSim(arm, pts, t, visits, simulate_components(arm, pts, t, overrides,
                                                                   key)))
    return out


def clinic_values() -> dict[str, float]:
    """The clinic card's values by name."""
    from .cards import load_param_card

    return {k: v.value for k, v in load_param_card("clinic").parameters.items()}


def arm_scores(sim: ArmSim, c: dict[str, float]) -> dict[str, np.ndarray]:
    """Scores (patients × visits) plus ``base_<scale>`` baselines (patients,)."""
    from .mood import scores_batch

    s = scores_batch(sim.arm, sim.patients, sim.t, sim.visits_h, sim.comps, c)
    base = np.array([p.baseline_madrs for p in sim.patients])
    s["base_madrs"] = base
    s["base_hamd17"] = np.clip(base * c["hamd17_per_madrs"], 0.0, 52.0)
    s["base_hamd6"] = np.clip(base * c["hamd6_per_madrs"], 0.0, 22.0)
    s["base_madrs_item10"] = np.full(len(base), c["item10_baseline"])
    s["base_ssi"] = np.full(len(base), c["ssi_baseline"])
    for k in ("cadss", "sbp_change_mmhg", "bprs_positive", "sedation"):
        s[f"base_{k}"] = np.zeros(len(base))
    return s


# --------------------------------------------------------------------------- parameter draws
def draw_clinic(rng: np.random.Generator, base: dict[str, float] | None = None
                ) -> dict[str, float]:
    """One draw of the calibrated clinic constants from their uncertainty distribution."""
    from .cards import load_param_card
    from .clinic_calibration import FIT

    c = dict(base or clinic_values())
    sd = load_param_card("uncertainty").value("calibrated_transformed_sd")
    for name, p in load_param_card("clinic").parameters.items():
        if p.evidence != "calibrated":
            continue
        z = rng.normal(0.0, sd)
        v = c[name]
        if FIT.get(name) == "logit" and 0.0 < v < 1.0:
            c[name] = float(1.0 / (1.0 + np.exp(-(math.log(v / (1.0 - v)) + z))))
        elif v > 0.0:
            c[name] = float(v * math.exp(z))
    return c


# --------------------------------------------------------------------------- statistics
def _visit_index(sim: ArmSim, at: str) -> int:
    h = _hours(at)
    return int(np.argmin(np.abs(sim.visits_h - h)))


def _threshold(e: Endpoint) -> float:
    from .trial import REMISSION_DEFAULT

    if e.threshold is not None:
        return e.threshold
    if e.scale in REMISSION_DEFAULT:
        return REMISSION_DEFAULT[e.scale]
    raise KetasimError(f"endpoint {e.name}", "needs 'threshold' for this scale")


def _change(S: dict, scale: str, j: int, idx: np.ndarray) -> np.ndarray:
    return S[scale][idx, j] - S[f"base_{scale}"][idx]


def _flags(e: Endpoint, S: dict, j: int, idx: np.ndarray, of: str | None = None) -> np.ndarray:
    score = S[e.scale][idx, j]
    if (of or e.of) == "remission":
        return score <= _threshold(e)
    return score <= (1.0 - e.response_fraction) * S[f"base_{e.scale}"][idx]


def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def _pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled SD of two samples, each variance weighted by its degrees of freedom."""
    na, nb = len(a), len(b)
    return math.sqrt(((na - 1) * _sd(a) ** 2 + (nb - 1) * _sd(b) ** 2) / max(na + nb - 2, 1))


def _odds_ratio(xa: int, na: int, xb: int, nb: int) -> float:
    """Crude odds ratio of ``xa/na`` against ``xb/nb``; 0.5 is added to every cell only when
    a cell is empty (Haldane–Anscombe), so that a zero or full rate gives a finite ratio."""
    k = 0.5 if min(xa, na - xa, xb, nb - xb) == 0 else 0.0
    return float(((xa + k) / (na - xa + k)) / ((xb + k) / (nb - xb + k)))


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN where the denominator is 0 (identical scores, one patient): a
    standardised statistic is then undefined, not ±10¹²."""
    return num / den if den > 0.0 else float("nan")


def _z_equivalent(t: float, df: float) -> float:
    """The standard-normal quantile with the same one-sided p-value as Student's ``t`` with
    ``df`` degrees of freedom, so a "z ≤ −1.96" check is a two-sided 5% t test at small n."""
    from scipy.stats import norm
    from scipy.stats import t as student

    if not math.isfinite(t) or not df > 0:
        return t
    return float(norm.ppf(student.cdf(t, df)) if t < 0 else -norm.ppf(student.cdf(-t, df)))


def _stat(e: Endpoint, sims: dict[str, ArmSim], S: dict[str, dict], idx: dict[str, np.ndarray],
          n_study: dict[str, int]) -> float:
    """The endpoint's statistic on the patients ``idx`` of each arm."""
    a = e.arm
    sim = sims[a]
    at = e.at if isinstance(e.at, str) else e.at[0]
    j = _visit_index(sim, at)
    Sa, ia = S[a], idx[a]
    m = e.metric
    if m == "mean_change":
        return float(_change(Sa, e.scale, j, ia).mean())
    if m == "mean_score":
        v = float(Sa[e.scale][ia, j].mean())
        if e.vs is not None:
            v -= float(S[e.vs][e.scale][idx[e.vs], _visit_index(sims[e.vs], at)].mean())
        return v
    if m == "relative_change":
        return float(Sa[e.scale][ia, j].mean() / max(Sa[f"base_{e.scale}"][ia].mean(), 1e-12)
                     - 1.0)
    if m == "improvement_d":
        ch = _change(Sa, e.scale, j, ia)
        return float(_ratio(-ch.mean(), _sd(ch)))
    if m in ("response_rate", "remission_rate"):
        return float(_flags(e, Sa, j, ia, "remission" if m == "remission_rate" else "response"
                            ).mean())
    if m == "fraction_at_most":
        return float((Sa[e.scale][ia, j] <= _threshold(e)).mean())
    if m == "responded_any":
        js = [_visit_index(sim, v) for v in ([e.at] if isinstance(e.at, str) else e.at)]
        hit = np.zeros(len(ia), bool)
        for jj in js:
            hit |= _flags(e, Sa, jj, ia, "response")
        return float(hit.mean())
    if m == "peak_mean":
        return float(Sa[PEAK_COLS.get(e.scale, e.scale)][ia, 0].mean())
    if m == "peak_incidence":
        thr = e.threshold if e.threshold is not None else DISSOCIATION_CADSS
        return float((Sa[PEAK_COLS.get(e.scale, e.scale)][ia, 0] >= thr).mean())
    if m == "dissociation_present":
        return float(Sa["cadss"][ia, j].mean())
    if m == "change_significant_z":
        # one-sample t at the study's n, as its z-equivalent (df = n − 1)
        ch = _change(Sa, e.scale, j, ia)
        t = _ratio(float(ch.mean()), _sd(ch) / math.sqrt(n_study[a]))
        return _z_equivalent(t, n_study[a] - 1)
    if m == "relapse_median_days":
        return _relapse_median(e, sim, Sa, ia, j)
    # two-arm metrics
    b = e.vs
    if b is None:
        raise KetasimError(f"endpoint {e.name}", f"metric {m} needs 'vs'")
    jb = _visit_index(sims[b], at)
    Sb, ib = S[b], idx[b]
    if m in ("difference", "cohens_d", "separation_z"):
        ca = _change(Sa, e.scale, j, ia)
        cb = _change(Sb, e.scale, jb, ib)
        diff = float(ca.mean() - cb.mean())
        if m == "difference":
            return diff
        if m == "cohens_d":
            return _ratio(diff, _pooled_sd(ca, cb))
        # Welch's t at the study's n, as its z-equivalent (Welch–Satterthwaite df)
        va, vb = _sd(ca) ** 2 / n_study[a], _sd(cb) ** 2 / n_study[b]
        t = _ratio(diff, math.sqrt(va + vb))
        dfd = (va * va / max(n_study[a] - 1, 1) + vb * vb / max(n_study[b] - 1, 1))
        return _z_equivalent(t, (va + vb) ** 2 / dfd if dfd > 0 else float("nan"))
    fa = _flags(e, Sa, j, ia).mean()
    fb = _flags(e, Sb, jb, ib).mean()
    if m == "rate_difference":
        return float(fa - fb)
    if m == "odds_ratio":
        # crude odds ratio; 0.5 is added to every cell only when a cell is empty
        # (Haldane–Anscombe), so that a zero rate gives a finite ratio
        na, nb = len(ia), len(ib)
        return _odds_ratio(round(fa * na), na, round(fb * nb), nb)
    if m == "response_separation_z":
        na, nb = n_study[a], n_study[b]
        p = (fa * na + fb * nb) / (na + nb)
        se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / na + 1 / nb))
        return float((fb - fa) / se)  # negative = ARM has more responders (like the change z)
    raise KetasimError(f"endpoint {e.name}", f"metric {m} is not a trial metric")


def _relapse_median(e: Endpoint, sim: ArmSim, Sa: dict, ia: np.ndarray, j: int) -> float:
    from .mood import arm_regimen

    reg = arm_regimen(sim.arm)
    last = max(d.time_h for d in reg) if reg is not None else 0.0
    score = Sa[e.scale][ia]
    ok = score <= (1.0 - e.response_fraction) * Sa[f"base_{e.scale}"][ia][:, None]
    times = []
    for k in np.nonzero(ok[:, j])[0]:
        lost = np.nonzero(~ok[k, j + 1:])[0]
        times.append((sim.visits_h[j + 1 + lost[0]] - last) / 24.0 if lost.size else math.inf)
    return _lower_median(times)


def _lower_median(times: list[float]) -> float:
    """The lower median (a value that occurs, e.g. a visit time, as the trial summary's
    Kaplan–Meier median; not the mean of the two middle values): +inf when half or more are
    +inf ("not reached"), NaN for no values."""
    if not times:
        return float("nan")
    return float(np.sort(np.asarray(times, dtype=float))[math.ceil(len(times) / 2) - 1])


# --------------------------------------------------------------------------- tolerance
def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def tolerance_interval(e: Endpoint) -> tuple[float, float] | None:
    """The accepted interval for the prediction (None for qualitative endpoints)."""
    if e.expect is not None:
        return None
    t = e.tolerance
    obs = float(e.observed) if e.observed is not None else None
    f = t.floor
    if t.rule == "range":
        lo, hi = e.observed_range or e.ci95 or (obs, obs)
        return lo - f, hi + f
    if obs is None:
        raise KetasimError(f"endpoint {e.name}", f"rule {t.rule} needs 'observed'")
    if t.rule == "se":
        se = e.se
        if se is None and e.sd is not None and e.n:
            se = e.sd / math.sqrt(e.n)
        if se is None and e.ci95 is not None:
            se = (e.ci95[1] - e.ci95[0]) / (2 * 1.96)
        if se is None:
            raise KetasimError(f"endpoint {e.name}", "rule se needs se, sd with n, or ci95")
        h = max(2.0 * se, f)
        return obs - h, obs + h
    if t.rule == "ci95":
        if e.ci95 is None:
            raise KetasimError(f"endpoint {e.name}", "rule ci95 needs 'ci95'")
        return min(e.ci95[0], obs - f), max(e.ci95[1], obs + f)
    if t.rule == "binomial":
        if not e.n:
            raise KetasimError(f"endpoint {e.name}", "rule binomial needs 'n'")
        lo, hi = _wilson(obs, e.n)
        return min(lo, obs - f), max(hi, obs + f)
    if t.rule == "rel":
        lo, hi = sorted((obs * (1 - t.rel), obs * (1 + t.rel)))  # also for a negative observed
        return lo, hi
    if t.rule == "sd":
        h = max(e.sd or 0.0, f)
        return obs - h, obs + h
    if t.rule == "abs":
        return obs - t.abs, obs + t.abs
    raise KetasimError(f"endpoint {e.name}", f"unknown rule {t.rule}")  # pragma: no cover


def judge(e: Endpoint, predicted: float) -> bool:
    """Whether the prediction meets the endpoint (tolerance or qualitative rule)."""
    if not math.isfinite(predicted):
        return False
    if e.expect is None:
        lo, hi = tolerance_interval(e)
        return lo <= predicted <= hi
    if e.expect in ("significant", "not significant"):
        sig = predicted <= -Z_CRIT
        return sig if e.expect == "significant" else not sig
    if e.expect in ("present", "absent"):
        pres = predicted >= DISSOCIATION_CADSS
        return pres if e.expect == "present" else not pres
    return predicted < 0 if e.expect == "negative" else predicted > 0


def _rule_text(e: Endpoint) -> str:
    if e.expect in ("significant", "not significant"):
        return f"{e.expect} at the study's n: significant = z ≤ −{Z_CRIT}"
    if e.expect in ("present", "absent"):
        return f"{e.expect}: mean CADSS ≥ {DISSOCIATION_CADSS:g} = present"
    if e.expect is not None:
        return f"sign: {e.expect}"
    t = e.tolerance
    return t.rule + (f", floor {t.floor:g}" if t.floor else "") + (
        f", rel {t.rel:g}" if t.rel else "") + (f", ±{t.abs:g}" if t.abs else "")


# --------------------------------------------------------------------------- running
def _case_seed(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])


def _percentiles(x: list[float]) -> list[float | None]:
    """5th and 95th percentiles of the replicates (the 90% prediction interval). NaN
    replicates (undefined: no responders) are left out; +inf ones ("not reached") count as the
    largest values, and a percentile that falls on them is None (unbounded)."""
    a = np.sort(np.asarray([v for v in x if not math.isnan(v)], dtype=float))
    if not a.size:
        return [None, None]
    if np.isfinite(a).all():
        lo, hi = np.percentile(a, [5.0, 95.0])
        return [float(lo), float(hi)]
    out: list[float | None] = []
    for q in (5.0, 95.0):  # no interpolation towards +inf
        v = float(np.percentile(a, q, method="inverted_cdf"))
        out.append(v if math.isfinite(v) else None)
    return out


def run_trial_case(case: Case, n: int, seed: int, replicates: int,
                   hypotheses: str | None = None, cache: bool = True) -> list[dict]:
    """Endpoints of a trial case: point prediction, 90 % PI, tolerance, within."""
    sc = trial_scenario(case, n, seed, hypotheses)
    sims_list = simulate_design(sc, n, cache=cache)
    sims = {s.arm.name: s for s in sims_list}
    c0 = clinic_values()
    S0 = {k: arm_scores(s, c0) for k, s in sims.items()}
    all_idx = {k: np.arange(n) for k in sims}
    # the study's patients per arm: study_n, else an endpoint's n for that arm, else --n
    n_study = {k: int(v) for k, v in case.study_n.items() if k in sims}
    for e in case.endpoints:
        if e.n and e.arm:
            n_study.setdefault(e.arm, e.n)
        if e.n_vs and e.vs:
            n_study.setdefault(e.vs, e.n_vs)
    for k in sims:
        n_study.setdefault(k, n)
    point = {e.name: _stat(e, sims, S0, all_idx, n_study) for e in case.endpoints}
    rng = _case_seed(seed, case.id)
    reps: dict[str, list[float]] = {e.name: [] for e in case.endpoints}
    n_theta = max(1, int(math.ceil(math.sqrt(replicates))))
    per_theta = max(1, int(math.ceil(replicates / n_theta)))
    for _ in range(n_theta):
        c = draw_clinic(rng, c0)
        S = {k: arm_scores(s, c) for k, s in sims.items()}
        for _ in range(per_theta):
            idx = {k: rng.integers(0, n, size=min(n_study[k], 10_000)) for k in sims}
            for e in case.endpoints:
                reps[e.name].append(_stat(e, sims, S, idx, n_study))
    # Monte Carlo error of the point prediction: bootstrap of the n simulated patients per arm
    # at the card values (its own stream, so the prediction intervals do not change)
    boot: dict[str, list[float]] = {e.name: [] for e in case.endpoints}
    brng = _mc_seed(seed, case.id)
    for _ in range(MC_BOOTSTRAP):
        idx = {k: brng.integers(0, n, size=n) for k in sims}
        for e in case.endpoints:
            boot[e.name].append(_stat(e, sims, S0, idx, n_study))
    return [_row(e, point[e.name], _percentiles(reps[e.name]), boot[e.name])
            for e in case.endpoints]


def _mc_seed(seed: int, case_id: str) -> np.random.Generator:
    """The bootstrap stream of the Monte Carlo error (apart from the replicates' stream)."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), 1])


def mc_error(e: Endpoint, predicted: float, boot: list[float]) -> dict:
    """Monte Carlo error of a point prediction from its bootstrap over the simulated patients:
    ``mc_se`` (SD of the finite bootstrap values; None when fewer than two),
    ``verdict_agreement`` (share of bootstrap values with the prediction's verdict) and
    ``mc_stable`` (agreement ≥ :data:`MC_STABLE`: another seed at the same n changes this
    verdict with probability ≲ 5 %)."""
    b = np.asarray(boot, dtype=float)
    fin = b[np.isfinite(b)]
    se = float(np.std(fin, ddof=1)) if fin.size >= 2 else None
    verdict = judge(e, predicted)
    agree = float(np.mean([judge(e, float(v)) == verdict for v in b])) if b.size else None
    return {"mc_se": se, "verdict_agreement": agree,
            "mc_stable": bool(agree is not None and agree >= MC_STABLE)}


def _row(e: Endpoint, predicted: float, pi90: list, boot: list[float]) -> dict:
    interval = tolerance_interval(e)
    obs: Any = e.observed if e.observed is not None else (e.observed_range or e.expect)
    return {"name": e.name, "metric": e.metric, "arm": e.arm, "vs": e.vs, "at": e.at,
            "scale": e.scale, "observed": obs, "predicted": predicted if math.isfinite(
                predicted) else None, "pi90": pi90,
            "tolerance": {"rule": _rule_text(e), "interval": list(interval) if interval
                          else None},
            "within": bool(judge(e, predicted)), **mc_error(e, predicted, boot),
            "evidence": e.evidence, "mapping": e.mapping, "note": e.note}


def _pk_regimen(r: dict):
    from .regimen import Regimen

    route = r.get("route", "iv-infusion")
    duration = r.get("duration")
    if duration is None and route in ("iv", "iv-infusion"):
        duration = "40 min"
    return Regimen.build(route, r["dose"], duration=duration, schedule=r.get("schedule"),
                         salt=r.get("salt"))


def _pk_run(r: dict, population: dict, n: int, seed: int, t_end_h: float = 72.0):
    """simulate_pk for n virtual subjects of ``population`` (weights, ages, PK variability)."""
    from .mood import _CL_NAMES, _V_NAMES
    from .pk import Covariates, resolve_model, simulate_pk
    from .population import sample_arm
    from .scenario import PopulationSpec

    try:
        spec = PopulationSpec.model_validate({**population, "n": n, "seed": seed})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise KetasimError("population." + ".".join(str(x) for x in err["loc"]),
                           err["msg"]) from exc
    pts = sample_arm(spec, 0, n, 1)
    reg = _pk_regimen(r)
    drug = r.get("drug", "ketamine")
    card = resolve_model(drug, r.get("model"), reg.routes)
    iiv = {k: np.array([p.pk_factor_cl for p in pts]) for k in _CL_NAMES if k in card.parameters}
    iiv.update({k: np.array([p.pk_factor_v for p in pts]) for k in _V_NAMES
                if k in card.parameters})
    cov = Covariates(weight_kg=np.array([p.weight_kg for p in pts]),
                     age_years=np.array([p.age_years for p in pts]), race=spec.race)
    times = np.union1d(np.linspace(0.0, t_end_h, 433), [reg.end_h])
    times = times[times > 0]
    res = simulate_pk(reg, times, drug=drug, model=r.get("model"), covariates=cov, iiv=iiv or None,
                      amounts=False)
    weights = np.array([p.weight_kg for p in pts])
    return res, reg, weights


def _dose_mg(reg, weights: np.ndarray) -> np.ndarray:
    total = np.zeros(len(weights))
    for d in reg:
        total += np.array([d.amount.mg(w) for w in weights])
    return total


def _pk_values(e: Endpoint, population: dict, n: int, seed: int) -> np.ndarray:
    """Per-subject values of a PK endpoint."""
    res, reg, w = _pk_run(e.regimen, population, n, seed)
    s = res.summary
    if e.metric == "cmax":
        return np.asarray(s["cmax_ng_per_ml"], float)
    if e.metric == "tmax_min":
        return np.asarray(s["tmax_h"], float) * 60.0
    if e.metric == "t_half":
        return np.broadcast_to(np.asarray(s["t_half_terminal_h"], float), (len(w),)).copy()
    if e.metric == "conc_at":
        h = _hours(e.at if isinstance(e.at, str) else e.at[0])
        cp = res.plasma_ng_per_ml[res.parent]
        return np.array([np.interp(h, res.time_h, row) for row in cp])
    auc = np.asarray(s["auc_0_inf_ng_h_per_ml"], float)  # ng·h/mL
    dose = _dose_mg(reg, w)
    if e.metric == "clearance":
        return dose / auc * 1000.0  # mg / (ng·h/mL) = 1000 L/h
    if e.metric == "clearance_per_kg":
        return dose / auc * 1000.0 * 1000.0 / 60.0 / w
    if e.metric == "bioavailability":
        if e.reference is None:
            raise KetasimError(f"endpoint {e.name}", "bioavailability needs 'reference'")
        ref, rreg, rw = _pk_run(e.reference, population, n, seed)
        auc_ref = np.asarray(ref.summary["auc_0_inf_ng_h_per_ml"], float)
        return (auc / dose) / (auc_ref / _dose_mg(rreg, rw))
    raise KetasimError(f"endpoint {e.name}", f"unknown PK metric {e.metric}")  # pragma: no cover


def run_pk_case(case: Case, n: int, seed: int, replicates: int) -> list[dict]:
    """PK endpoints: mean over n virtual subjects; 90 % PI of the mean at the study's n."""
    rows = []
    rng = _case_seed(seed, case.id)
    for e in case.endpoints:
        try:
            vals = _pk_values(e, case.population, n, seed)
        except KetasimError as exc:
            raise KetasimError(f"case {case.id} endpoint {e.name!r} {exc.field}",
                               exc.problem, exc.allowed) from exc
        k = min(e.n or case.study_n.get("subjects", 12), 10_000)
        means = [float(np.mean(rng.choice(vals, size=k))) for _ in range(replicates)]
        brng = _mc_seed(seed, f"{case.id}/{e.name}")
        boot = [float(np.mean(brng.choice(vals, size=len(vals)))) for _ in range(MC_BOOTSTRAP)]
        rows.append(_row(e, float(np.mean(vals)), _percentiles(means), boot))
    return rows


def run_case(case: Case, n: int = 100, seed: int = 0, replicates: int = 100,
             hypotheses: str | None = None, cache: bool = True) -> dict:
    """One case → ``{"id", "set", "endpoints": [...], ...}``."""
    t0 = time.perf_counter()
    if case.kind == "none" or not case.endpoints:
        eps: list[dict] = []
    elif case.kind == "pk":
        eps = run_pk_case(case, max(n, 20), seed, replicates)
    else:
        try:
            eps = run_trial_case(case, n, seed, replicates, hypotheses, cache)
        except KetasimError as exc:
            if exc.field.startswith("case "):
                raise
            raise KetasimError(f"case {case.id} {exc.field}", exc.problem, exc.allowed) from exc
    return {"id": case.id, "set": case.set, "kind": case.kind, "source": case.source,
            "citation": case.citation, "used_for_calibration": case.set == "calibration",
            "mapping": case.mapping, "reason": case.reason or None,
            "skipped": [s.model_dump() for s in case.skipped], "endpoints": eps,
            "wall_s": round(time.perf_counter() - t0, 2)}


def summarise(cases: list[dict]) -> dict:
    """Endpoints and how many are within tolerance, per set (calibration / validation)."""
    out = {}
    for s in SETS:
        eps = [e for c in cases if c["set"] == s for e in c["endpoints"]]
        k = sum(e["within"] for e in eps)
        out[s] = {"cases": sum(c["set"] == s for c in cases), "endpoints": len(eps),
                  "within": k, "fraction_within": (k / len(eps)) if eps else None,
                  "mc_unstable": sum(not e.get("mc_stable", True) for e in eps)}
    return out


def run_validation(cases_dir: str | None = None, n: int = 100, seed: int = 0,
                   replicates: int = 100, hypotheses: str | None = None,
                   only: list[str] | None = None, include_shipped: bool = True,
                   cache: bool = True, progress=None) -> dict:
    """Run every case; the JSON contract of ``ketasim validate --json``."""
    from .cards import card_versions

    if not 2 <= n <= 5000:
        raise KetasimError("n", f"must be 2..5000 patients per arm, got {n}")
    if not 1 <= replicates <= 5000:
        raise KetasimError("replicates", f"must be 1..5000, got {replicates}")
    if hypotheses is not None:
        from .mechanism import Hypotheses

        Hypotheses.parse(hypotheses)
    cases = load_cases(cases_dir, include_shipped)
    if only:
        unknown = sorted(set(only) - {c.id for c in cases})
        if unknown:
            raise KetasimError("case", f"unknown case id(s): {', '.join(unknown)}",
                               ", ".join(c.id for c in cases))
        cases = [c for c in cases if c.id in only]
    t0 = time.perf_counter()
    results = []
    for i, c in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), c.id)
        results.append(run_case(c, n, seed, replicates, hypotheses, cache))
    return {"cases": results, "summary": summarise(results),
            "meta": {"seed": seed, "n_per_arm": n, "replicates": replicates,
                     "hypotheses": hypotheses or "default", "ketasim_version": __version__,
                     "card_hashes": card_versions(),
                     # what else reruns this scorecard: the case selection and each case's
                     # content (an extra folder's files can change between runs)
                     "options": {"cases_dir": cases_dir, "include_shipped": include_shipped,
                                 "only": list(only) if only else None},
                     "case_hashes": {c.id: case_hash(c) for c in cases},
                     "wall_s": round(time.perf_counter() - t0, 2),
                     "uncertainty": "calibrated clinic constants drawn per replicate "
                                    "(card 'uncertainty'); patients resampled at the study's n",
                     "monte_carlo": f"mc_se and verdict_agreement from {MC_BOOTSTRAP} "
                                    "bootstrap resamples of the n simulated patients per arm "
                                    "at the card values; mc_stable = agreement ≥ "
                                    f"{MC_STABLE:g}",
                     "disclaimer": "ketasim is a research tool, not medical advice."}}


def hypothesis_sets() -> list[str]:
    """The default combination plus each hypothesis branch alone (``only:x``)."""
    from .mechanism import HYPOTHESES

    return ["default", *[f"only:{k}" for k in HYPOTHESES]]


def compare_hypotheses(cases_dir: str | None = None, n: int = 100, seed: int = 0,
                       replicates: int = 50, only: list[str] | None = None,
                       include_shipped: bool = True, cache: bool = True,
                       sets: list[str] | None = None, progress=None) -> dict:
    """The scorecard once per hypothesis set: which account fits which data best."""
    out = {}
    for h in sets or hypothesis_sets():
        r = run_validation(cases_dir, n, seed, replicates, None if h == "default" else h, only,
                           include_shipped, cache, progress)
        out[h] = r
    table = {h: {c["id"]: sum(e["within"] for e in c["endpoints"]) for c in r["cases"]}
             for h, r in out.items()}
    best = {}
    first = next(iter(out.values()))
    for c in first["cases"]:
        if not c["endpoints"]:
            continue
        scores = {h: table[h][c["id"]] for h in out}
        top = max(scores.values())
        best[c["id"]] = [h for h, v in scores.items() if v == top]
    # the first set's run metadata, naming every set compared (not only the first's)
    meta = {**first["meta"], "hypotheses": "all", "hypothesis_sets": list(out)}
    return {"hypotheses": {h: {"summary": r["summary"], "cases": r["cases"]}
                           for h, r in out.items()},
            "within_by_case": table, "best_by_case": best, "meta": meta}

