"""Assemble a PK card into a linear compartment system for a batch of patients.

Internal units: time h, amount mg (parent-equivalent mg for metabolites, as in the source
models, which transfer mass without a molar-mass correction), volume L, concentration mg/L.

The assembled system is ``dx/dt = K x + u(t)`` where ``x`` holds the *dynamic* states
(compartment amounts in mg, and effect-site concentrations in mg/L) and ``u`` is piecewise
constant (zero-order inputs). Alongside it, *integral* quantities are linear functionals of
``x`` integrated over time: the amount eliminated per species (mg) and the plasma AUC per
species (mg·h/L).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..cards import PKCard, load_pk_card
from ..errors import KetasimError, StudiedRangeWarning
from ..units import quantity_to_base

RACES = ("caucasian", "black", "asian", "japanese", "other")
SEXES = ("male", "female")
WEIGHT_RANGE_KG = (0.5, 300.0)
AGE_RANGE_Y = (0.0, 120.0)
#: accepted weight ranges by species (kg); human is the default
SPECIES_WEIGHT_KG = {"human": WEIGHT_RANGE_KG, "mouse": (0.005, 0.1), "rat": (0.05, 1.5)}


@dataclass(frozen=True)
class Covariates:
    """Patient covariates for a batch (arrays broadcast to the batch size).

    weight in kg, age in years; race one of :data:`RACES` (Japanese counts as Asian too);
    sex ``male``/``female``.
    """

    weight_kg: np.ndarray | float = 70.0
    age_years: np.ndarray | float = 40.0
    race: str = "caucasian"
    sex: str = "male"
    species: str = "human"

    def __post_init__(self) -> None:
        try:
            w = np.atleast_1d(np.asarray(self.weight_kg, dtype=float))
        except (TypeError, ValueError):
            raise KetasimError("weight", f"must be a number (kg), got {self.weight_kg!r}") \
                from None
        try:
            a = np.atleast_1d(np.asarray(self.age_years, dtype=float))
        except (TypeError, ValueError):
            raise KetasimError("age", f"must be a number (years), got {self.age_years!r}") \
                from None
        if w.ndim != 1 or w.size == 0:
            raise KetasimError("weight", "need one value, or one per patient")
        if a.ndim != 1 or a.size == 0 or (a.size != 1 and w.size != 1 and a.size != w.size):
            raise KetasimError("age", f"{a.size} ages for {w.size} weights")
        for name in ("race", "sex", "species"):
            if not isinstance(getattr(self, name), str):
                raise KetasimError(name, f"must be a name, got {getattr(self, name)!r}")
        if self.species not in SPECIES_WEIGHT_KG:
            raise KetasimError("species", f"unknown species {self.species!r}",
                               ", ".join(SPECIES_WEIGHT_KG))
        lo, hi = SPECIES_WEIGHT_KG[self.species]
        if not np.all(np.isfinite(w)) or np.any((w < lo) | (w > hi)):
            raise KetasimError("weight", f"must be within {lo:g}–{hi:g} kg, got {_show(w)}",
                               f"{lo:g}–{hi:g} kg")
        lo, hi = AGE_RANGE_Y
        if not np.all(np.isfinite(a)) or np.any((a < lo) | (a > hi)):
            raise KetasimError("age", f"must be within {lo:g}–{hi:g} years, got {_show(a)}",
                               f"{lo:g}–{hi:g} years")
        race = self.race.lower()
        if race == "white":
            race = "caucasian"
        if race not in RACES:
            raise KetasimError("race", f"unknown race {self.race!r}", ", ".join(RACES))
        sex = self.sex.lower()
        if sex not in SEXES:
            raise KetasimError("sex", f"unknown sex {self.sex!r}", ", ".join(SEXES))
        object.__setattr__(self, "weight_kg", w)
        object.__setattr__(self, "age_years", a)
        object.__setattr__(self, "race", race)
        object.__setattr__(self, "sex", sex)

    def as_dict(self) -> dict[str, object]:
        """The covariates as plain JSON values for run metadata (a number for one patient,
        a list for a batch)."""
        return {"weight_kg": as_plain(self.weight_kg), "age_years": as_plain(self.age_years),
                "sex": self.sex, "race": self.race, "species": self.species}

    def races(self) -> set[str]:
        """Race labels that apply (a Japanese patient is also Asian)."""
        return {self.race, "asian"} if self.race == "japanese" else {self.race}


def as_plain(a: np.ndarray | float) -> float | list[float]:
    """One value as a float, several as a list of floats."""
    v = np.atleast_1d(np.asarray(a, dtype=float))
    return float(v[0]) if v.size == 1 else v.tolist()


def _show(a: np.ndarray) -> str:
    return f"{a[0]:g}" if a.size == 1 else f"{a.min():g}..{a.max():g}"


@dataclass
class PKSystem:
    """A card assembled for ``n`` patients: matrices in internal units."""

    card: PKCard
    states: list[str]  # dynamic states
    K: np.ndarray  # (n, s, s) 1/h
    params: dict[str, np.ndarray]  # base units, (n,)
    plasma: dict[str, tuple[int, np.ndarray]]  # species -> (state index, volume L (n,))
    effect: dict[str, int]  # species -> state index of effect-site conc (mg/L)
    integrals: list[str]  # names of integral quantities
    G: np.ndarray  # (n, q, s): d(integral)/dt = G x
    mass_states: list[int]  # indices of states holding mass (mg)
    routes: dict[str, object] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of patients in the batch."""
        return self.K.shape[0]

    def index(self, name: str) -> int:
        """Index of a dynamic state by name."""
        return self.states.index(name)


def resolve_parameters(card: PKCard, cov: Covariates, n: int,
                       iiv: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Parameter values in base units (arrays of length ``n``) after weight scaling,
    covariate effects and optional multiplicative inter-individual factors ``iiv``."""
    w = np.broadcast_to(cov.weight_kg, (n,)).astype(float)
    age = np.broadcast_to(cov.age_years, (n,)).astype(float)
    out: dict[str, np.ndarray] = {}
    for name, p in card.parameters.items():
        val, per_kg = quantity_to_base(p.value, p.units, f"card {card.id} {name}")
        arr = np.full(n, val)
        if per_kg:
            arr = arr * w
        if p.scaling:
            ref = p.scaling.get("reference_kg", 70.0)
            arr = arr * (w / ref) ** p.scaling.get("exponent", 1.0)
        out[name] = arr
    races = cov.races()
    for c in card.covariates:
        if c.covariate == "age_years" and c.effect == "linear_above":
            out[c.parameter] = out[c.parameter] + out[c.slope] * np.maximum(0.0, age - c.threshold)
        elif c.effect == "multiply":
            applies = (c.equals in races) if c.covariate == "race" else (c.equals == cov.sex)
            if applies:
                out[c.parameter] = out[c.parameter] * out[c.factor]
    for name, factor in (iiv or {}).items():
        if name not in out:
            raise KetasimError("iiv", f"unknown parameter {name!r} for model {card.id}")
        try:
            f = np.asarray(factor, dtype=float)
        except (TypeError, ValueError):
            raise KetasimError("iiv", f"{name}: factors must be numbers") from None
        if f.ndim > 1 or (f.ndim == 1 and f.size not in (1, n)):
            raise KetasimError("iiv", f"{name}: {f.size} factors for {n} patients")
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise KetasimError("iiv", f"{name}: factors must be finite and > 0", "> 0")
        out[name] = out[name] * np.broadcast_to(f, (n,))
    for name, arr in out.items():
        if not np.all(np.isfinite(arr)):
            raise KetasimError(f"parameter {name}", "is not finite for these covariates")
    return out


def check_studied_range(card: PKCard, cov: Covariates) -> list[str]:
    """Warn (not fail) when covariates fall outside the card's studied population."""
    msgs = []
    for label, arr, (lo, hi), unit in (
        ("weight", cov.weight_kg, card.population.weight_kg, "kg"),
        ("age", cov.age_years, card.population.age_years, "years"),
    ):
        arr = np.atleast_1d(arr)
        if np.any(arr < lo) or np.any(arr > hi):
            msgs.append(f"{label} {_show(arr)} {unit} is outside the range model {card.id} was "
                        f"estimated in ({lo:g}–{hi:g} {unit})")
    for m in msgs:
        warnings.warn(m, StudiedRangeWarning, stacklevel=3)
    return msgs


def factor(params: dict[str, np.ndarray], factors: list[str], extra: dict | None = None):
    """Product of named factors; ``"1-p"`` is the complement of ``p``."""
    val = 1.0
    extra = extra or {}
    for f in factors:
        comp = f.startswith("1-")
        name = f[2:] if comp else f
        v = extra[name] if name in extra else params[name]
        val = val * ((1.0 - v) if comp else v)
    return val


def assemble(card: PKCard | str, cov: Covariates | None = None, routes: tuple[str, ...] = (),
             n: int | None = None, iiv: dict[str, np.ndarray] | None = None) -> PKSystem:
    """Build the linear system of ``card`` for the compartments reachable from ``routes``.

    Only compartments that the given routes can reach are kept (unused absorption depots are
    dropped), which keeps the system small and its eigenvalues distinct.
    """
    card = load_pk_card(card) if isinstance(card, str) else card
    cov = cov or Covariates()
    if n is None:
        n = max(np.size(cov.weight_kg), np.size(cov.age_years))
    for r in routes:
        if r not in card.routes:
            raise KetasimError("route", f"model {card.id} does not support route {r!r}",
                               ", ".join(card.routes))
    params = resolve_parameters(card, cov, n, iiv)
    comps = {c.name: c for c in card.compartments}
    # reachability from the dosed compartments
    start = {i.to for r in (routes or tuple(card.routes)) for i in card.routes[r].inputs}
    plasma_comps = [c.name for c in card.compartments if c.role == "plasma"]
    start |= {plasma_comps[0]} if plasma_comps else set()
    reach, frontier = set(start), list(start)
    while frontier:
        s = frontier.pop()
        for f in card.flows:
            if f.source == s and f.to != "out" and f.to not in reach:
                reach.add(f.to)
                frontier.append(f.to)
    states = [c.name for c in card.compartments if c.name in reach]
    effect: dict[str, int] = {}
    if card.effect_site:
        sp = comps[card.effect_site.of].species
        effect[sp] = len(states)
        states.append(f"effect_site_{sp}")
    s = len(states)
    idx = {name: i for i, name in enumerate(states)}
    K = np.zeros((n, s, s))
    species = [sp for sp in card.compounds if any(comps[c].species == sp for c in reach)]
    integrals = [f"eliminated_{sp}" for sp in species] + [f"auc_{sp}" for sp in species
                                                            if any(comps[c].role == "plasma"
                                                                   and comps[c].species == sp
                                                                   for c in reach)]
    G = np.zeros((n, len(integrals), s))
    for f in card.flows:
        if f.source not in idx:
            continue
        if f.rate is not None:
            k = params[f.rate]
        else:
            k = params[f.clearance] / params[comps[f.source].volume]
        k = k * factor(params, f.fraction)
        i = idx[f.source]
        K[:, i, i] -= k
        if f.to == "out":
            G[:, integrals.index(f"eliminated_{comps[f.source].species}"), i] += k
        elif f.to in idx:
            K[:, idx[f.to], i] += k
        else:  # pragma: no cover - reachability guarantees this
            raise AssertionError(f.to)
    plasma: dict[str, tuple[int, np.ndarray]] = {}
    for c in card.compartments:
        if c.role == "plasma" and c.name in idx and c.species not in plasma:
            vol = params[c.volume]
            plasma[c.species] = (idx[c.name], vol)
            G[:, integrals.index(f"auc_{c.species}"), idx[c.name]] = 1.0 / vol
    if card.effect_site:
        sp = comps[card.effect_site.of].species
        ke0 = params[card.effect_site.ke0]
        pi, vol = plasma[sp]
        K[:, effect[sp], pi] += ke0 / vol
        K[:, effect[sp], effect[sp]] -= ke0
    mass_states = [idx[c] for c in states if c in comps]
    return PKSystem(card=card, states=states, K=K, params=params, plasma=plasma, effect=effect,
                    integrals=integrals, G=G, mass_states=mass_states)


def nasal_fraction(card: PKCard, params: dict[str, np.ndarray], dose_mg: np.ndarray):
    """Per-dose effective nasal fraction FRn·(1 + (n−1)·r)/n, n = max(1, dose/device)."""
    nd = card.nasal_devices
    base = params[nd.base]
    r = params[nd.later_device_factor]
    ndev = np.maximum(1.0, dose_mg / params[nd.device_mg])
    return base * (1.0 + (ndev - 1.0) * r) / ndev
