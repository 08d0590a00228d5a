"""Data cards: every model parameter with units, source and evidence tag.

Cards are YAML files under ``ketasim/cards/`` (``drugs/`` and ``pk/``), validated with pydantic.
Evidence tags:

* ``read`` – the number is in the cited paper (or in a public transcription of it, named);
* ``derived`` – computed from read values; the card says how;
* ``calibrated`` – fitted by ketasim to data in ``shared/literature/calibration``; says to what;
* ``assumed`` – a guess, with the reason.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import CardError, KetasimError

Evidence = Literal["read", "derived", "calibrated", "assumed"]


class Param(BaseModel):
    """One parameter value with provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    units: str = ""
    evidence: Evidence
    source: str = Field(min_length=3)
    note: str = ""
    scaling: dict[str, float] | None = None  # {"reference_kg": 70, "exponent": 0.75}
    iiv_cv: float | None = None  # inter-individual variability, CV (fraction), log-normal

    @model_validator(mode="after")
    def _needs_how(self) -> Param:
        if self.evidence in ("derived", "calibrated", "assumed") and not self.note:
            raise ValueError(f"evidence '{self.evidence}' needs a note saying how/why")
        return self


class Compartment(BaseModel):
    """A PK compartment: name, chemical species, volume parameter (L) and role."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    species: str
    volume: str | None = None  # parameter name
    role: Literal["plasma", "depot", "tissue", "liver"] = "tissue"


class Flow(BaseModel):
    """A first-order transfer. ``to: out`` is elimination. Exactly one of clearance / rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(alias="from")
    to: str
    clearance: str | None = None  # parameter name, volume/time: rate = CL / V(from)
    rate: str | None = None  # parameter name, 1/time
    fraction: list[str] = Field(default_factory=list)  # product of factors "p" or "1-p"

    @model_validator(mode="after")
    def _one_of(self) -> Flow:
        if (self.clearance is None) == (self.rate is None):
            raise ValueError("a flow needs exactly one of 'clearance' or 'rate'")
        return self


class RouteInput(BaseModel):
    """Where a dose of one route goes: compartment, bioavailability factors, optional
    zero-order duration parameter (h)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    to: str
    fraction: list[str] = Field(default_factory=list)
    duration: str | None = None  # parameter name: zero-order input over this duration


class Route(BaseModel):
    """A dosing route of a PK card: its inputs and a note."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: list[RouteInput]
    note: str = ""


class EffectSite(BaseModel):
    """An effect-site compartment linked to a plasma compartment by ``ke0`` (1/h)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    of: str  # plasma compartment
    ke0: str  # parameter name


class Covariate(BaseModel):
    """A covariate effect on a parameter, its numbers referenced from ``parameters``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    parameter: str
    covariate: Literal["age_years", "race", "sex"]
    effect: Literal["linear_above", "multiply"]
    threshold: float | None = None  # for linear_above, in the covariate's units
    slope: str | None = None  # parameter name (per covariate unit)
    equals: str | None = None  # for race / sex
    factor: str | None = None  # parameter name


class NasalDevices(BaseModel):
    """Per-dose effective nasal fraction: FRn·(1 + (n−1)·r)/n for n devices of ``device_mg``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    base: str
    later_device_factor: str
    device_mg: str


class Enantiomers(BaseModel):
    """Racemate split: each enantiomer gets half the dose and its own elimination factor."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    elimination_parameter: str | None = None
    s_factor: str
    r_factor: str


class Population(BaseModel):
    """The population a PK model was estimated in (ages in years, weights in kg)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str
    n: int | None = None
    age_years: tuple[float, float]
    weight_kg: tuple[float, float]
    range_evidence: Literal["read", "assumed"] = "read"
    range_note: str = ""


class PKCard(BaseModel):
    """A PK model: structure, parameters, routes, covariates, provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    version: str = "1"
    drug: str
    species: Literal["human", "mouse", "rat"] = "human"
    title: str
    citation: str
    pmid: str | None = None
    doi: str | None = None
    urls: list[str] = Field(default_factory=list)  # pages read, for sources without PMID/DOI
    transcription: str = ""
    sampling: Literal["arterial", "venous", "unknown"]
    population: Population
    notes: list[str] = Field(default_factory=list)
    parameters: dict[str, Param]
    compartments: list[Compartment]
    flows: list[Flow]
    routes: dict[str, Route]
    effect_site: EffectSite | None = None
    covariates: list[Covariate] = Field(default_factory=list)
    nasal_devices: NasalDevices | None = None
    enantiomers: Enantiomers | None = None
    default_for: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> PKCard:
        names = {c.name for c in self.compartments}
        pnames = set(self.parameters)
        derived = {self.nasal_devices.name} if self.nasal_devices else set()

        def need(p: str | None, what: str) -> None:
            if p is not None and p not in pnames:
                raise ValueError(f"{what} refers to unknown parameter {p!r}")

        def need_factor(f: str, what: str) -> None:
            p = f[2:] if f.startswith("1-") else f
            if p not in pnames and p not in derived:
                raise ValueError(f"{what} refers to unknown parameter {p!r}")

        for c in self.compartments:
            need(c.volume, f"compartment {c.name}")
        for f in self.flows:
            if f.source not in names or (f.to != "out" and f.to not in names):
                raise ValueError(f"flow {f.source}->{f.to} names an unknown compartment")
            need(f.clearance, "flow")
            need(f.rate, "flow")
            for x in f.fraction:
                need_factor(x, "flow fraction")
            if f.clearance and not next(c for c in self.compartments if c.name == f.source).volume:
                raise ValueError(f"flow from {f.source} by clearance needs a volume")
        for rname, r in self.routes.items():
            for i in r.inputs:
                if i.to not in names:
                    raise ValueError(f"route {rname} doses unknown compartment {i.to}")
                need(i.duration, f"route {rname}")
                for x in i.fraction:
                    need_factor(x, f"route {rname}")
        for cv in self.covariates:
            need(cv.parameter, "covariate")
            need(cv.slope, "covariate slope")
            need(cv.factor, "covariate factor")
        if self.effect_site:
            need(self.effect_site.ke0, "effect site")
            if self.effect_site.of not in names:
                raise ValueError(f"effect site of unknown compartment {self.effect_site.of!r}")
        if self.nasal_devices:
            nd = self.nasal_devices
            for pname in (nd.base, nd.later_device_factor, nd.device_mg):
                need(pname, "nasal_devices")
        if self.enantiomers:
            need(self.enantiomers.elimination_parameter, "enantiomers")
            need(self.enantiomers.s_factor, "enantiomers")
            need(self.enantiomers.r_factor, "enantiomers")
        return self

    @property
    def compounds(self) -> list[str]:
        """Chemical species (parent, metabolites) in compartment order."""
        seen: list[str] = []
        for c in self.compartments:
            if c.species not in seen:
                seen.append(c.species)
        return seen

    def hash(self) -> str:
        """SHA-256 prefix of the card file (run metadata)."""
        return _card_hashes()[("pk", self.id)]


class DrugCard(BaseModel):
    """A drug's constants (molar mass g/mol, salt fractions) and exposure bands (ng/mL)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    constants: dict[str, Param]
    bands: dict[str, Param] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def constant(self, name: str) -> float:
        """Value of a named constant, in the card's units."""
        return self.constants[name].value


class ParamCard(BaseModel):
    """A card of model parameters for one stage (brain, receptor, mechanism, readouts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    version: str = "1"
    title: str
    description: str = ""
    parameters: dict[str, Param]
    notes: list[str] = Field(default_factory=list)

    def value(self, name: str) -> float:
        """Value of a named parameter, in the card's units."""
        return self.parameters[name].value

    def hash(self) -> str:
        """SHA-256 prefix of the card file (run metadata)."""
        return _card_hashes()[("mechanism", self.id)]


@functools.cache
def load_param_cards() -> dict[str, ParamCard]:
    """All mechanism-stage parameter cards (``cards/mechanism/*.yaml``), by id."""
    cards = {}
    for p in _card_files("mechanism"):
        card = _validate(ParamCard, _read_yaml(p), p.name)
        if card.id != p.name[:-5]:
            raise CardError(f"card {p.name}", f"id {card.id!r} must equal the file name")
        cards[card.id] = card
    return cards


def _lookup(cards: dict, name: str, field: str, what: str):
    if name not in cards:
        raise KetasimError(field, f"unknown {what} {name!r}", ", ".join(sorted(cards)))
    return cards[name]


def load_param_card(name: str) -> ParamCard:
    """One mechanism-stage parameter card by id (``brain``, ``receptor``, ``clinic``, ...)."""
    return _lookup(load_param_cards(), name, "card", "card")


def _card_files(kind: str):
    root = resources.files("ketasim.cards").joinpath(kind)
    return sorted((p for p in root.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


#: libyaml's safe loader where PyYAML was built with it (the same safe constructors, ~10× faster
#: than the pure-Python one: card loading was ~0.5 s of every command's start-up)
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path) -> dict:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)  # noqa: S506
    except yaml.YAMLError as exc:
        raise CardError(f"card {path.name}", f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CardError(f"card {path.name}", "must be a mapping")
    return data


@functools.lru_cache(maxsize=1)
def _card_hashes() -> dict[tuple[str, str], str]:
    out = {}
    for kind in ("pk", "pk_parts", "drugs", "mechanism"):
        for p in _card_files(kind):
            out[(kind, p.name[:-5])] = hashlib.sha256(p.read_bytes()).hexdigest()[:12]
    return out


def _validate(cls, data: dict, name: str):
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise CardError(f"card {name} {loc}".strip(), err["msg"]) from exc


def _merge_parts(data: dict, name: str) -> dict:
    """Merge shared parts (``include:``) into a card and apply elimination splits.

    A part contributes ``parameters``, ``compartments``, ``flows``, ``routes`` (the card's own
    routes win), ``notes``, an ``effect_site`` and ``split_elimination`` entries
    ``{from, to, fraction}``: every flow from ``from`` to ``out`` is split so that the given
    fraction goes to compartment ``to`` (metabolite formation) and the rest leaves.
    """
    parts_root = resources.files("ketasim.cards").joinpath("pk_parts")
    splits = list(data.pop("split_elimination", []))
    for part_name in data.pop("include", []):
        path = parts_root.joinpath(f"{part_name}.yaml")
        if not path.is_file():
            raise CardError(f"card {name} include", f"unknown part {part_name!r}")
        part = _read_yaml(path)
        for key, value in part.items():
            if key == "parameters":
                clash = set(value) & set(data.get("parameters", {}))
                if clash:
                    raise CardError(f"card {name}", f"part {part_name} redefines {sorted(clash)}")
                data.setdefault("parameters", {}).update(value)
            elif key in ("compartments", "flows", "notes"):
                data.setdefault(key, []).extend(value)
            elif key == "routes":
                data["routes"] = {**value, **data.get("routes", {})}
            elif key == "split_elimination":
                splits.extend(value)
            elif key in ("effect_site", "nasal_devices"):
                data.setdefault(key, value)
            elif key == "enantiomers":
                data["enantiomers"] = {**value, **data.get("enantiomers", {})}
            elif key not in ("id", "description"):
                raise CardError(f"part {part_name}", f"unknown key {key!r}")
    for sp in splits:
        new_flows = []
        for f in data.get("flows", []):
            if f.get("from") == sp["from"] and f.get("to") == "out":
                stay = dict(f, fraction=[*f.get("fraction", []), f"1-{sp['fraction']}"])
                go = dict(f, to=sp["to"], fraction=[*f.get("fraction", []), sp["fraction"]])
                new_flows += [stay, go]
            else:
                new_flows.append(f)
        data["flows"] = new_flows
    return data


@functools.cache
def load_pk_cards() -> dict[str, PKCard]:
    """All PK model cards, by id."""
    cards = {}
    for p in _card_files("pk"):
        card = _validate(PKCard, _merge_parts(_read_yaml(p), p.name), p.name)
        if card.id != p.name[:-5]:
            raise CardError(f"card {p.name}", f"id {card.id!r} must equal the file name")
        cards[card.id] = card
    return cards


@functools.cache
def load_drugs() -> dict[str, DrugCard]:
    """All drug cards (``cards/drugs/*.yaml``), by id."""
    cards = {}
    for p in _card_files("drugs"):
        card = _validate(DrugCard, _read_yaml(p), p.name)
        cards[card.id] = card
    return cards


def load_drug(drug: str) -> DrugCard:
    """One drug card by id (``ketamine``, ``esketamine``, ``norketamine``, ``memantine``)."""
    return _lookup(load_drugs(), drug, "drug", "drug")


def load_pk_card(model: str) -> PKCard:
    """One PK model card by id (see ``ketasim models``)."""
    return _lookup(load_pk_cards(), model, "model", "PK model")


def default_pk_model(drug: str, route: str | None = None, species: str = "human") -> PKCard:
    """The documented default PK model card for a drug (and route) in a species."""
    cands = [c for c in load_pk_cards().values()
             if drug in c.default_for and c.species == species]
    if route is not None:
        with_route = [c for c in cands if route in c.routes]
        cands = with_route or cands
    if not cands:
        drugs = sorted({d for c in load_pk_cards().values() for d in c.default_for})
        raise KetasimError("drug", f"no default PK model for {drug!r}", ", ".join(drugs))
    return cands[0]


def card_versions() -> dict[str, str]:
    """``{"pk/kamp2020": "<sha256 prefix>", ...}`` for run metadata: the first 12 hex digits of
    the SHA-256 of every card file (not a version string). Outputs record it under the key
    ``card_hashes``."""
    return {f"{k}/{n}": h for (k, n), h in _card_hashes().items()}


def all_parameters() -> list[dict]:
    """Every parameter of every card: card, name, value, units, evidence, source."""
    rows = []
    for cid, c in load_pk_cards().items():
        for n, p in c.parameters.items():
            rows.append({"card": f"pk/{cid}", "name": n, "value": p.value, "units": p.units,
                         "evidence": p.evidence, "source": p.source, "note": p.note})
    for cid, c in load_drugs().items():
        for n, p in {**c.constants, **c.bands}.items():
            rows.append({"card": f"drugs/{cid}", "name": n, "value": p.value, "units": p.units,
                         "evidence": p.evidence, "source": p.source, "note": p.note})
    for cid, c in load_param_cards().items():
        for n, p in c.parameters.items():
            rows.append({"card": f"mechanism/{cid}", "name": n, "value": p.value,
                         "units": p.units, "evidence": p.evidence, "source": p.source,
                         "note": p.note})
    return rows
