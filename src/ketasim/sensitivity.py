"""Global sensitivity analysis (SALib: Sobol, Morris) of one clinical endpoint.

The endpoint (``METRIC@TIME``, e.g. ``madrs_change@24h``) is computed on the reference design:
ketamine 0.5 mg/kg IV over 40 min vs midazolam in TRD (the ``default`` scenario's arms), with
``n`` virtual patients per arm. Metrics: ``madrs_change`` (mean MADRS change, ketamine arm),
``madrs_difference`` (ketamine minus midazolam change), ``response_rate``, ``remission_rate``,
``item10_change`` and ``ssi_change``.

Parameters (:data:`DEFAULT_PARAMETERS`, a documented subset; see docs/validation.md): the
calibrated and assumed constants of the clinic card that act on a ketamine arm, and the
mechanism constants (receptor and signalling cards) that set the LHb/synaptic drive. Bounds are
the card value × (1 ± spread) (default ±50 %), fractions kept inside (0, 1).

How one evaluation runs: clinic constants act through the cached per-patient components
(cheap). Mechanism constants need the mechanism re-simulated: to keep thousands of evaluations
affordable, the drive of a *typical* patient (population-typical PK) is simulated with the
sampled mechanism constants and applied to every virtual patient, whose placebo response,
maximal drug effect, baseline and visit noise still vary. The same rule is used for every
evaluation (nominal included), so indices compare like with like. The baseline-MADRS
constants (``madrs_baseline_trd``, ``madrs_baseline_sd``) redraw the virtual patients (same
random numbers) with the sampled values; ``pk_iiv_cv``, which acts only through per-patient PK,
is refused (the typical patient's drive cannot vary it).
"""

from __future__ import annotations

import numbers
import re
import time
from collections.abc import Callable

import numpy as np

from . import __version__
from .errors import MAX_SEED, KetasimError, check_callable, check_int

#: (card, parameter): clinic constants acting on a ketamine arm, then mechanism constants
DEFAULT_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("clinic", "drug_emax"), ("clinic", "drug_emax_iiv_sd"), ("clinic", "drive50"),
    ("clinic", "a_fast"), ("clinic", "a_proteins"), ("clinic", "a_spines"),
    ("clinic", "k_mood"), ("clinic", "placebo_active"), ("clinic", "placebo_iiv_sd"),
    ("clinic", "placebo_tau_h"), ("clinic", "consolidation_gain"),
    ("clinic", "consolidation_threshold"), ("clinic", "residual_sd"),
    ("receptor", "Kd0_ketamine"), ("receptor", "kesc_lhb_factor"),
    ("signalling", "theta_H"), ("signalling", "tau_b"),
)
MECHANISM_CARDS = ("receptor", "signalling")
METHODS = ("sobol", "morris")
#: the largest Sobol base sample (N·(D + 2) model evaluations: ~20 million for 17 parameters)
MAX_SOBOL_SAMPLES = 2**20
ENDPOINT_METRICS = ("madrs_change", "madrs_difference", "response_rate", "remission_rate",
                    "item10_change", "ssi_change")
#: clinic constants that set the patients' baseline MADRS (population draws): the endpoint
#: model redraws its patients (same random numbers) with the sampled values
_BASELINE = {"madrs_baseline_trd": "baseline_madrs_mean", "madrs_baseline_sd": "baseline_madrs_sd"}
#: clinic constants the design cannot vary: they act only through per-patient PK, which the
#: design replaces by a typical patient's drive (a zero index would be an artefact)
_REFUSED = {"pk_iiv_cv": "it acts through per-patient PK, and the design applies a typical "
                         "patient's drive to every patient"}
_FRACTIONS = {"drug_emax", "placebo_active", "placebo_saline", "consolidation_threshold",
              "theta_H", "ad_background_max"}


def parse_endpoint(text: str) -> tuple[str, str]:
    """``madrs_change@24h`` → ("madrs_change", "24 h")."""
    if text is not None and not isinstance(text, str):
        raise KetasimError("endpoint", f"must be text METRIC@TIME, got {type(text).__name__}",
                           "e.g. madrs_change@24h")
    m = re.fullmatch(r"\s*([a-z0-9_]+)\s*@\s*([0-9.]+)\s*([a-z]+)\s*", text or "")
    if not m or m.group(1) not in ENDPOINT_METRICS:
        raise KetasimError("endpoint", f"cannot read {text!r}",
                           "METRIC@TIME with METRIC one of " + ", ".join(ENDPOINT_METRICS)
                           + " (e.g. madrs_change@24h)")
    at = f"{m.group(2)} {m.group(3)}"
    from .units import parse_duration

    h = parse_duration(at, field="endpoint")
    if not 0 < h <= 24 * 60:
        raise KetasimError("endpoint", f"time {at} outside 0–60 days")
    return m.group(1), at


def _bounds(card: str, name: str, spread: float) -> tuple[float, float, float]:
    from .cards import load_param_card

    try:
        v = load_param_card(card).value(name)
    except KeyError as exc:
        raise KetasimError("params", f"unknown parameter {name!r} in card {card}") from exc
    lo, hi = sorted((v * (1 - spread), v * (1 + spread)))
    if name in _FRACTIONS:
        lo, hi = max(lo, 0.01), min(hi, 0.99)
    if lo == hi:
        raise KetasimError("params", f"{name} = 0 has no relative range")
    return v, lo, hi


def resolve_parameters(names: list[str] | None) -> list[tuple[str, str]]:
    """(card, name) for the given names (clinic, receptor or signalling cards)."""
    if names is not None and not isinstance(names, list | tuple):
        raise KetasimError("params", f"must be a list of parameter names, got "
                           f"{type(names).__name__}", "e.g. ['drug_emax', 'theta_H']")
    if not names:
        return list(DEFAULT_PARAMETERS)
    from .cards import load_param_card

    out = []
    for raw in names:
        if not isinstance(raw, str):
            raise KetasimError("params", f"must be parameter names (strings), got {raw!r}")
        name = raw.strip()
        card = next((c for c in ("clinic", *MECHANISM_CARDS)
                     if name in load_param_card(c).parameters), None)
        if card is None:
            raise KetasimError("params", f"unknown parameter {name!r}",
                               "names from the clinic, receptor or signalling cards")
        if name in _REFUSED:
            raise KetasimError("params", f"{name} cannot be varied here: {_REFUSED[name]}")
        out.append((card, name))
    if len(set(out)) != len(out):
        raise KetasimError("params", "a parameter is listed twice")
    if len(out) < 2:
        raise KetasimError("params", "need at least two parameters")
    return out


class EndpointModel:
    """The endpoint as a function of a parameter vector (see the module docstring)."""

    def __init__(self, endpoint: str, params: list[tuple[str, str]], n: int, seed: int):
        from .mood import _grid, arm_regimen
        from .population import sample_arm
        from .scenario import parse_scenario
        from .validate import clinic_values

        self.metric, self.at = parse_endpoint(endpoint)
        self.params = params
        self.c0 = clinic_values()
        sc = parse_scenario({"population": {"disorder": "trd", "n": 2 * n, "seed": seed},
                             "arm": [{"name": "ketamine", "drug": "ketamine",
                                      "route": "iv-infusion", "dose": "0.5 mg/kg",
                                      "duration": "40 min"},
                                     {"name": "midazolam", "control": "active-placebo"}],
                             "endpoints": {"at": [self.at]}})
        from .units import parse_duration

        self.visits = np.array([parse_duration(self.at)])
        self.arms = sc.arms
        self.population = sc.population
        self.n = n
        self.patients = [sample_arm(sc.population, i, n, 1) for i in range(2)]
        self._drawn: tuple[tuple, list] = ((), self.patients)
        self.t = [_grid(self.visits, arm_regimen(a)) for a in self.arms]
        from .population import Patient

        typical = Patient(0, sc.population.weight_kg_mean, sc.population.age_mean, "male",
                          sc.population.race, "trd", 30.0, 0.0, 0.0, 1.0, 1.0, np.zeros(1),
                          (), (seed, 0, 0))
        self.typical = typical
        self.evaluations = 0
        self.simulations = 0
        self._memo: dict[tuple, dict[str, np.ndarray]] = {}

    def _components(self, overrides: dict[str, float]) -> dict[str, np.ndarray]:
        """Typical-patient drive for these mechanism values (memoised: Sobol and Morris
        designs repeat the mechanism part of many rows where only a clinic value changes)."""
        from .validate import simulate_components

        key = tuple(sorted(overrides.items()))
        if key not in self._memo:
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[key] = simulate_components(self.arms[0], [self.typical], self.t[0],
                                                  overrides or None)
            self.simulations += 1
        return self._memo[key]

    def _patients(self, c: dict[str, float]) -> list:
        """Both arms' patients, redrawn (same random numbers) when a sampled value of a
        baseline-MADRS constant (:data:`_BASELINE`) differs from the card's."""
        from .population import sample_arm

        upd = {f: c[k] for k, f in _BASELINE.items()
               if any(name == k for _, name in self.params)}
        key = tuple(sorted(upd.items()))
        if key != self._drawn[0]:
            spec = self.population.model_copy(update=upd)
            self._drawn = (key, [sample_arm(spec, i, self.n, 1) for i in range(2)])
        return self._drawn[1]

    def __call__(self, x: np.ndarray) -> float:
        from .mood import scores_batch

        c = dict(self.c0)
        mech = {}
        for (card, name), v in zip(self.params, x, strict=True):
            if card == "clinic":
                c[name] = float(v)
            else:
                mech[name] = float(v)
        pts = self._patients(c)
        comp = self._components(mech)
        n = len(pts[0])
        comps = {k: np.repeat(v, n, axis=0) for k, v in comp.items()}
        s_k = scores_batch(self.arms[0], pts[0], self.t[0], self.visits, comps, c)
        self.evaluations += 1
        base = np.array([p.baseline_madrs for p in pts[0]])
        m = self.metric
        if m == "madrs_change":
            return float((s_k["madrs"][:, 0] - base).mean())
        if m == "response_rate":
            return float((s_k["madrs"][:, 0] <= 0.5 * base).mean())
        if m == "remission_rate":
            return float((s_k["madrs"][:, 0] <= 10.0).mean())
        if m == "item10_change":
            return float(s_k["madrs_item10"][:, 0].mean() - c["item10_baseline"])
        if m == "ssi_change":
            return float(s_k["ssi"][:, 0].mean() - c["ssi_baseline"])
        zero = {k: np.zeros((n, len(self.t[1]))) for k in comps}
        s_m = scores_batch(self.arms[1], pts[1], self.t[1], self.visits, zero, c)
        base_m = np.array([p.baseline_madrs for p in pts[1]])
        return float((s_k["madrs"][:, 0] - base).mean() - (s_m["madrs"][:, 0] - base_m).mean())


def _evaluate(model, X: np.ndarray, progress: Callable[[int, int], None] | None) -> np.ndarray:
    """The endpoint at every row of the design ``X``, reporting progress."""
    Y = np.empty(len(X))
    for i, x in enumerate(X):
        Y[i] = model(x)
        if progress is not None:
            progress(i + 1, len(X))
    return Y


def run_sensitivity(endpoint: str = "madrs_change@24h", method: str = "morris",
                    samples: int | None = None, n: int = 100, seed: int = 0,
                    spread: float = 0.5, params: list[str] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Sobol (first-order and total indices with 95 % CIs) or Morris (mu*, sigma).
    ``progress(done, total)``: optional, called after each model evaluation of the design.

    Every argument is checked before any work starts: ``n`` 5..5000, ``seed`` 0..2⁶³ − 1,
    ``samples`` a power of two 8..2²⁰ (Sobol) or 2..1000 trajectories (Morris), ``spread``
    in (0, 1); a wrong type or value raises :class:`KetasimError` naming the argument."""
    from SALib.analyze import morris as morris_analyze
    from SALib.analyze import sobol as sobol_analyze
    from SALib.sample import morris as morris_sample
    from SALib.sample import sobol as sobol_sample

    # every argument is checked before any work starts (KetasimError naming the argument)
    if not isinstance(method, str) or method not in METHODS:
        raise KetasimError("method", f"unknown method {method!r}", ", ".join(METHODS))
    parse_endpoint(endpoint)
    if isinstance(spread, bool) or not isinstance(spread, numbers.Real) \
            or not 0.0 < spread < 1.0:
        raise KetasimError("spread", f"must be a number between 0 and 1, got {spread!r}")
    n = check_int("n", n, 5, 5000)
    seed = check_int("seed", seed, 0, MAX_SEED)
    if samples is None:
        samples = 128 if method == "sobol" else 10
    if method == "sobol":
        samples = check_int("samples", samples, 8, MAX_SOBOL_SAMPLES)
        if samples & (samples - 1):
            raise KetasimError("samples", "Sobol needs a power of two ≥ 8")
    else:
        samples = check_int("samples", samples, 2, 1000)
    check_callable("progress", progress)
    plist = resolve_parameters(params)
    rows = [(card, name, *_bounds(card, name, spread)) for card, name in plist]
    problem = {"num_vars": len(rows), "names": [r[1] for r in rows],
               "bounds": [[r[3], r[4]] for r in rows]}
    t0 = time.perf_counter()
    model = EndpointModel(endpoint, plist, n, seed)
    nominal = model(np.array([r[2] for r in rows]))
    if method == "sobol":
        X = sobol_sample.sample(problem, samples, calc_second_order=False, seed=seed)
        Y = _evaluate(model, X, progress)
        res = sobol_analyze.analyze(problem, Y, calc_second_order=False, seed=seed)
        out_p = [{"name": nm, "card": r[0], "value": r[2], "bounds": [r[3], r[4]],
                  "S1": float(res["S1"][i]), "S1_conf": float(res["S1_conf"][i]),
                  "ST": float(res["ST"][i]), "ST_conf": float(res["ST_conf"][i])}
                 for i, (nm, r) in enumerate(zip(problem["names"], rows, strict=True))]
        # CI of the sum: the half-widths added in quadrature (indices estimated jointly)
        extra = {"sum_S1": float(np.sum(res["S1"])),
                 "sum_S1_conf": float(np.sqrt(np.sum(np.square(res["S1_conf"]))))}
        out_p.sort(key=lambda p: -p["ST"])
    else:
        X = morris_sample.sample(problem, samples, num_levels=4, seed=seed)
        Y = _evaluate(model, X, progress)
        res = morris_analyze.analyze(problem, X, Y, num_levels=4, seed=seed)
        out_p = [{"name": nm, "card": r[0], "value": r[2], "bounds": [r[3], r[4]],
                  "mu_star": float(res["mu_star"][i]),
                  "mu_star_conf": float(res["mu_star_conf"][i]),
                  "mu": float(res["mu"][i]), "sigma": float(res["sigma"][i])}
                 for i, (nm, r) in enumerate(zip(problem["names"], rows, strict=True))]
        extra = {}
        out_p.sort(key=lambda p: -p["mu_star"])
    from .cards import card_versions

    return {"endpoint": endpoint, "metric": model.metric, "at": model.at, "method": method,
            "samples": samples, "evaluations": int(len(Y) + 1),
            "mechanism_simulations": model.simulations, "nominal": float(nominal),
            "output_sd": float(np.std(Y)), "spread": spread, "n": n, "seed": seed,
            "parameters": out_p, **extra, "wall_s": round(time.perf_counter() - t0, 2),
            "design": "ketamine 0.5 mg/kg IV over 40 min vs midazolam, TRD; mechanism "
                      "constants act through a typical patient's drive",
            "ketasim_version": __version__, "card_hashes": card_versions()}


def plot_indices(r: dict) -> bytes:
    """Bar chart of the indices (Sobol S1/ST with CIs, or Morris mu* with CI) as PNG bytes."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = r["parameters"]
    names = [p["name"] for p in ps]
    y = np.arange(len(ps))
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * len(ps) + 1.4), dpi=100)
    if r["method"] == "sobol":
        ax.barh(y - 0.2, [p["S1"] for p in ps], 0.4, xerr=[p["S1_conf"] for p in ps],
                label="first order S1")
        ax.barh(y + 0.2, [p["ST"] for p in ps], 0.4, xerr=[p["ST_conf"] for p in ps],
                label="total ST")
        ax.set_xlabel("Sobol index (95% CI)")
        ax.legend(loc="lower right")
    else:
        ax.barh(y, [p["mu_star"] for p in ps], 0.6, xerr=[p["mu_star_conf"] for p in ps])
        ax.set_xlabel(f"Morris mu* of {r['metric']} (95% CI)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_title(f"{r['method']} sensitivity: {r['endpoint']}")
    fig.tight_layout()
    from .report import _fig_png

    return _fig_png(fig, r.get("seed"))
