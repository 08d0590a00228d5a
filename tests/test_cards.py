"""Data cards: every PK card loads, is consistent, and carries its provenance."""

from __future__ import annotations

import copy
import re
from importlib import resources

import pint
import pytest
import yaml
from pydantic import ValidationError

from ketasim.cards import (
    CardError,
    PKCard,
    _merge_parts,
    _validate,
    card_versions,
    default_pk_model,
    load_drug,
    load_drugs,
    load_pk_card,
    load_pk_cards,
)
from ketasim.errors import KetasimError
from ketasim.regimen import ROUTES
from ketasim.units import quantity_to_base

CARDS_ROOT = resources.files("ketasim.cards")
PK_FILES = sorted(p.name[:-5] for p in CARDS_ROOT.joinpath("pk").iterdir()
                  if p.name.endswith(".yaml"))
ALL_YAML = sorted(
    (kind, p.name) for kind in ("pk", "pk_parts", "drugs")
    for p in CARDS_ROOT.joinpath(kind).iterdir() if p.name.endswith(".yaml"))
CARDS = load_pk_cards()
PMID = re.compile(r"^\d{6,9}$")
DOI = re.compile(r"^10\.\d{4,9}/\S+$")


def _raw(kind: str, name: str) -> dict:
    return yaml.safe_load(CARDS_ROOT.joinpath(kind, name).read_text(encoding="utf-8"))


def _strings(obj) -> set[str]:
    """Every string value inside a nested dump (dict keys excluded)."""
    out: set[str] = set()
    if isinstance(obj, str):
        out.add(obj)
        if obj.startswith("1-"):
            out.add(obj[2:])
    elif isinstance(obj, dict):
        for v in obj.values():
            out |= _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            out |= _strings(v)
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise AssertionError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


# ------------------------------------------------------------------ loading
def test_all_pk_cards_load():
    assert set(CARDS) == set(PK_FILES)
    assert {"clements1981", "domino", "kamp2020", "perez-ruixo-2021"} <= set(CARDS)
    for cid, card in CARDS.items():
        assert isinstance(card, PKCard)
        assert card.id == cid
        assert load_pk_card(cid) is card


@pytest.mark.parametrize(("kind", "name"), ALL_YAML)
def test_yaml_files_have_no_duplicate_keys(kind, name):
    text = CARDS_ROOT.joinpath(kind, name).read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(data, dict)


def test_unknown_model_and_drug():
    with pytest.raises(KetasimError) as exc:
        load_pk_card("nonexistent")
    assert exc.value.field == "model"
    assert "kamp2020" in exc.value.allowed
    with pytest.raises(KetasimError) as exc:
        load_drug("cocaine")
    assert exc.value.field == "drug"


def test_drug_cards():
    drugs = load_drugs()
    assert {"ketamine", "esketamine", "norketamine"} <= set(drugs)
    ket = load_drug("ketamine")
    assert ket.constant("molar_mass") == pytest.approx(237.73)
    assert ket.constant("base_fraction_of_hcl") == pytest.approx(
        ket.constant("molar_mass") / ket.constant("molar_mass_hcl"), abs=5e-4)
    assert load_drug("esketamine").constant("molar_mass") == ket.constant("molar_mass")
    # C12H14ClNO: 12·12.011 + 14·1.008 + 35.45 + 14.007 + 15.999 = 223.70
    assert load_drug("norketamine").constant("molar_mass") == pytest.approx(223.70, abs=0.01)
    for d in drugs.values():
        for p in [*d.constants.values(), *d.bands.values()]:
            assert len(p.source) >= 3
            if p.evidence != "read":
                assert p.note


def test_card_versions_hash_every_file():
    v = card_versions()
    for kind, name in ALL_YAML:
        key = f"{kind}/{name[:-5]}"
        assert re.fullmatch(r"[0-9a-f]{12}", v[key])
    assert CARDS["kamp2020"].hash() == v["pk/kamp2020"]


# ------------------------------------------------------------------ provenance
@pytest.mark.parametrize("cid", PK_FILES)
def test_every_parameter_has_provenance(cid):
    card = CARDS[cid]
    assert card.parameters
    for name, p in card.parameters.items():
        assert isinstance(p.units, str), name
        assert p.evidence in ("read", "derived", "calibrated", "assumed"), name
        assert len(p.source.strip()) >= 3, name
        if p.evidence in ("derived", "calibrated", "assumed"):
            assert p.note.strip(), f"{cid}.{name}: evidence {p.evidence} needs a note"
        if p.iiv_cv is not None:
            assert p.iiv_cv > 0, name


@pytest.mark.parametrize(("kind", "name"), [k for k in ALL_YAML if k[0] != "drugs"])
def test_units_stated_explicitly_in_yaml(kind, name):
    """Every parameter states its units in the file (an empty string for dimensionless)."""
    for pname, p in _raw(kind, name).get("parameters", {}).items():
        assert "units" in p, f"{name}: {pname} has no units"
        assert "evidence" in p and "source" in p, f"{name}: {pname}"


@pytest.mark.parametrize("cid", PK_FILES)
def test_every_parameter_units_convert(cid):
    card = CARDS[cid]
    for name, p in card.parameters.items():
        value, per_kg = quantity_to_base(p.value, p.units, name)
        assert per_kg in (0, 1)
        assert value == value  # not NaN


_reg = pint.UnitRegistry()


def _dimension(units: str) -> dict:
    u = units.replace("µ", "u").replace("ug", "microgram")
    if u in ("", "%"):
        return {}
    q = _reg.Quantity(1.0, u)
    dim = dict(q.dimensionality)
    if dim.get("[mass]") == -1:  # per kg of body weight
        del dim["[mass]"]
    return dim


@pytest.mark.parametrize("cid", PK_FILES)
def test_parameter_dimensions_match_their_use(cid):
    """Volumes are volumes, rates 1/time, clearances volume/time, fractions in [0, 1]."""
    card = CARDS[cid]
    params = card.parameters
    volume, flow, rate, time = ({"[length]": 3}, {"[length]": 3, "[time]": -1},
                                {"[time]": -1}, {"[time]": 1})
    for c in card.compartments:
        if c.volume:
            assert _dimension(params[c.volume].units) == volume, c.volume
            assert params[c.volume].value > 0
    derived = {card.nasal_devices.name} if card.nasal_devices else set()
    fractions = set()
    for f in card.flows:
        if f.rate:
            assert _dimension(params[f.rate].units) == rate, f.rate
            assert params[f.rate].value > 0
        if f.clearance:
            assert _dimension(params[f.clearance].units) == flow, f.clearance
            assert params[f.clearance].value > 0
        fractions |= {x.removeprefix("1-") for x in f.fraction}
    for r in card.routes.values():
        for i in r.inputs:
            fractions |= {x.removeprefix("1-") for x in i.fraction}
            if i.duration:
                assert _dimension(params[i.duration].units) == time, i.duration
                assert params[i.duration].value > 0
    if card.nasal_devices:
        fractions |= {card.nasal_devices.base, card.nasal_devices.later_device_factor}
    for x in fractions - derived:
        assert _dimension(params[x].units) == {}, x
        assert 0.0 <= params[x].value <= 1.0, x


@pytest.mark.parametrize("cid", PK_FILES)
def test_no_unreferenced_parameters(cid):
    """Every parameter is used by the structure (flows, volumes, routes, covariates, ...)."""
    card = CARDS[cid]
    dump = card.model_dump(by_alias=True, exclude={"parameters", "notes", "title", "citation",
                                                   "transcription", "population"})
    used = _strings(dump)
    unused = set(card.parameters) - used
    assert not unused, f"{cid}: parameters never used: {sorted(unused)}"


@pytest.mark.parametrize("cid", PK_FILES)
def test_population_ranges(cid):
    pop = CARDS[cid].population
    assert pop.description.strip()
    lo, hi = pop.age_years
    assert 0 <= lo < hi <= 120
    lo, hi = pop.weight_kg
    from ketasim.pk.model import SPECIES_WEIGHT_KG

    wlo, whi = SPECIES_WEIGHT_KG[CARDS[cid].species]
    assert wlo <= lo < hi <= whi
    if pop.n is not None:
        assert pop.n > 0
    if pop.range_evidence == "assumed":
        assert pop.range_note.strip()


@pytest.mark.parametrize("cid", PK_FILES)
def test_citation_with_pmid_or_doi(cid):
    card = CARDS[cid]
    assert len(card.citation) > 20
    # drug labels have no PMID/DOI: they must name the pages read
    assert card.pmid or card.doi or card.urls
    if card.pmid:
        assert PMID.match(card.pmid), card.pmid
    if card.doi:
        assert DOI.match(card.doi), card.doi
    assert card.sampling in ("arterial", "venous", "unknown")


# ------------------------------------------------------------------ structure
@pytest.mark.parametrize("cid", PK_FILES)
def test_routes_dose_existing_compartments(cid):
    card = CARDS[cid]
    names = {c.name for c in card.compartments}
    assert card.routes
    assert "iv-bolus" in card.routes and "iv-infusion" in card.routes
    for rname, route in card.routes.items():
        assert rname in ROUTES
        assert route.inputs
        for i in route.inputs:
            assert i.to in names, f"{cid} route {rname} doses {i.to}"


@pytest.mark.parametrize("cid", PK_FILES)
def test_dosed_compartments_reach_plasma(cid):
    card = CARDS[cid]
    plasma = {c.name for c in card.compartments if c.role == "plasma"
              and c.species == card.drug}
    assert plasma, f"{cid} has no plasma compartment for {card.drug}"
    for rname, route in card.routes.items():
        for i in route.inputs:
            seen, todo = {i.to}, [i.to]
            while todo:
                s = todo.pop()
                for f in card.flows:
                    if f.source == s and f.to != "out" and f.to not in seen:
                        seen.add(f.to)
                        todo.append(f.to)
            assert seen & plasma, f"{cid} route {rname}: {i.to} never reaches plasma"


@pytest.mark.parametrize("cid", PK_FILES)
def test_compartments_unique_and_plasma_has_volume(cid):
    card = CARDS[cid]
    names = [c.name for c in card.compartments]
    assert len(names) == len(set(names))
    for c in card.compartments:
        if c.role in ("plasma", "liver"):
            assert c.volume, c.name
    if card.effect_site:
        assert card.effect_site.of in names
        assert next(c for c in card.compartments if c.name == card.effect_site.of).role == "plasma"


@pytest.mark.parametrize("cid", PK_FILES)
def test_flows_not_duplicated(cid):
    card = CARDS[cid]
    keys = [(f.source, f.to, f.clearance, f.rate, tuple(f.fraction)) for f in card.flows]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("cid", PK_FILES)
def test_included_parts_do_not_redefine_parameters(cid):
    raw = _raw("pk", f"{cid}.yaml")
    own = set(raw.get("parameters", {}))
    seen = set(own)
    total = len(own)
    for part in raw.get("include", []):
        pp = set(_raw("pk_parts", f"{part}.yaml").get("parameters", {}))
        assert not (pp & seen), f"{cid}: part {part} redefines {sorted(pp & seen)}"
        seen |= pp
        total += len(pp)
    assert len(CARDS[cid].parameters) == total == len(seen)


def test_merge_rejects_redefinition_and_unknown_part():
    data = _raw("pk", "kamp2020.yaml")
    data["parameters"]["F_im"] = dict(data["parameters"]["V1"])  # also in racemic-routes
    with pytest.raises(CardError) as exc:
        _merge_parts(copy.deepcopy(data), "kamp2020.yaml")
    assert "F_im" in str(exc.value)
    data = _raw("pk", "kamp2020.yaml")
    data["include"] = ["no-such-part"]
    with pytest.raises(CardError) as exc:
        _merge_parts(data, "kamp2020.yaml")
    assert "no-such-part" in str(exc.value)


def test_split_elimination_conserves_central_elimination():
    """The norketamine split keeps the total central elimination: fractions f and 1-f."""
    card = CARDS["kamp2020"]
    out = [f for f in card.flows if f.source == "central" and f.clearance == "CL"]
    assert sorted(f.to for f in out) == ["nk_central", "out"]
    assert sorted(tuple(f.fraction) for f in out) == [("1-fm_NK",), ("fm_NK",)]


def test_default_models():
    assert default_pk_model("ketamine").id == "clements1981"
    assert default_pk_model("esketamine").id == "perez-ruixo-2021"
    assert default_pk_model("ketamine", "intranasal").id == "clements1981"
    assert default_pk_model("esketamine", "intranasal").id == "perez-ruixo-2021"
    for drug in ("ketamine", "esketamine"):
        assert default_pk_model(drug).drug == drug
    with pytest.raises(KetasimError) as exc:
        default_pk_model("norketamine")
    assert exc.value.field == "drug"


def test_only_one_default_per_drug():
    for drug in ("ketamine", "esketamine", "memantine"):
        for species in ("human", "mouse"):
            ids = [c.id for c in CARDS.values()
                   if drug in c.default_for and c.species == species]
            assert len(ids) <= 1
            if ids:
                assert ids == [default_pk_model(drug, species=species).id]


# ------------------------------------------------------------------ malformed cards
def _valid() -> dict:
    return CARDS["kamp2020"].model_dump(by_alias=True, exclude_none=True)


def test_valid_dump_round_trips():
    assert PKCard.model_validate(_valid()) == CARDS["kamp2020"]


def _set_param(d, name, **kw):
    d["parameters"][name] = {**d["parameters"][name], **kw}


def _drop_key(d, name, key):
    d["parameters"][name] = {k: v for k, v in d["parameters"][name].items() if k != key}


_BREAKERS = {
    "no evidence": lambda d: _drop_key(d, "V1", "evidence"),
    "bad evidence tag": lambda d: _set_param(d, "V1", evidence="guessed"),
    "no source": lambda d: _drop_key(d, "V1", "source"),
    "empty source": lambda d: _set_param(d, "V1", source=""),
    "assumed without note": lambda d: _set_param(d, "CL", evidence="assumed", note=""),
    "derived without note": lambda d: _set_param(d, "V2", evidence="derived"),
    "calibrated without note": lambda d: _set_param(d, "V3", evidence="calibrated"),
    "value not a number": lambda d: _set_param(d, "V1", value="lots"),
    "extra param key": lambda d: _set_param(d, "V1", colour="red"),
    "extra card key": lambda d: d.update(colour="red"),
    "no citation": lambda d: d.pop("citation"),
    "no population": lambda d: d.pop("population"),
    "bad sampling": lambda d: d.update(sampling="capillary"),
    "flow to unknown compartment": lambda d: d["flows"].append(
        {"from": "central", "to": "nowhere", "rate": "CL"}),
    "flow with both clearance and rate": lambda d: d["flows"].append(
        {"from": "central", "to": "out", "rate": "CL", "clearance": "CL"}),
    "flow with neither": lambda d: d["flows"].append({"from": "central", "to": "out"}),
    "flow unknown parameter": lambda d: d["flows"].append(
        {"from": "central", "to": "out", "clearance": "CL_typo"}),
    "clearance from volume-less compartment": lambda d: d["flows"].append(
        {"from": "depot_im", "to": "central", "clearance": "CL"}),
    "volume unknown parameter": lambda d: d["compartments"].append(
        {"name": "extra", "species": "ketamine", "volume": "V9"}),
    "route to unknown compartment": lambda d: d["routes"].update(
        {"oral": {"inputs": [{"to": "stomach"}]}}),
    "route fraction unknown": lambda d: d["routes"].update(
        {"im": {"inputs": [{"to": "depot_im", "fraction": ["F_typo"]}]}}),
    "route duration unknown": lambda d: d["routes"].update(
        {"oral": {"inputs": [{"to": "depot_oral", "duration": "D_typo"}]}}),
    "effect site unknown ke0": lambda d: d.update(effect_site={"of": "central", "ke0": "ke9"}),
    "covariate unknown parameter": lambda d: d["covariates"].append(
        {"parameter": "CL9", "covariate": "race", "effect": "multiply", "equals": "asian",
         "factor": "V1"}),
    "population weight not a pair": lambda d: d["population"].update(weight_kg=[45]),
}


@pytest.mark.parametrize("breaker", sorted(_BREAKERS))
def test_malformed_card_fails(breaker):
    data = _valid()
    _BREAKERS[breaker](data)
    with pytest.raises(ValidationError):
        PKCard.model_validate(data)
    # through the loader's wrapper, the error is a CardError naming the card
    with pytest.raises(CardError) as exc:
        _validate(PKCard, data, "broken.yaml")
    assert "broken.yaml" in exc.value.field


def test_effect_site_of_unknown_compartment_fails():
    data = _valid()
    data["effect_site"] = {"of": "brain", "ke0": "ke0"}
    with pytest.raises(ValidationError):
        PKCard.model_validate(data)


@pytest.mark.parametrize("key", ["base", "later_device_factor", "device_mg"])
def test_nasal_devices_unknown_parameter_fails(key):
    data = CARDS["perez-ruixo-2021"].model_dump(by_alias=True, exclude_none=True)
    data["nasal_devices"][key] = "typo"
    with pytest.raises(ValidationError):
        PKCard.model_validate(data)


def test_minimal_bad_dict_fails():
    with pytest.raises(ValidationError):
        PKCard.model_validate({"id": "x", "drug": "ketamine"})
    with pytest.raises(ValidationError):
        PKCard.model_validate({})


# ------------------------------------------------------------------ provenance rules
# A `read` number must be traceable: its source names a PMID, DOI, PMC id, URL, a literature-folder
# file (*.yaml), a drug label/SmPC or an encyclopedia page; a `read` parameter defined in a PK card
# file may rely on the card's own pmid/doi/urls. A `derived` note must show the computation.
# A `read` parameter must not carry a computation (ln 2 / t½, a mean, a weighted mean).
PROV_YAML = sorted(
    (kind, p.name) for kind in ("pk", "pk_parts", "drugs", "mechanism")
    for p in CARDS_ROOT.joinpath(kind).iterdir() if p.name.endswith(".yaml"))
_SOURCE_ID = re.compile(
    r"PMID|\bdoi\b|\b10\.\d{4,9}/|\bPMC\d+|https?://|\.yaml\b|\blabel\b|SmPC|Wikipedia",
    re.IGNORECASE)
_HOW = re.compile(r"[=/×·*−+]|\bln\b|\bmean\b|\bratio\b|\bcomputed\b", re.IGNORECASE)
_COMPUTED = re.compile(r"\bln ?2\b|\bln\(|\bmean of\b|\baverage of\b|n-weighted", re.IGNORECASE)


def _raw_params(data: dict) -> dict:
    return {**data.get("parameters", {}), **data.get("constants", {}), **data.get("bands", {})}


def _provenance_problems(kind: str, data: dict) -> list[str]:
    """Provenance rule violations of one raw card file (empty list: none)."""
    card_ids = kind == "pk" and bool(data.get("pmid") or data.get("doi") or data.get("urls"))
    out = []
    for name, p in _raw_params(data).items():
        ev, src, note = p.get("evidence"), p.get("source", ""), p.get("note", "")
        if ev == "read":
            if not (_SOURCE_ID.search(src) or card_ids):
                out.append(f"{name}: read, but the source names no PMID/DOI/URL/label/file")
            if _COMPUTED.search(f"{src} {note}"):
                out.append(f"{name}: read, but source/note describe a computation (derived?)")
        if ev == "derived" and not _HOW.search(note):
            out.append(f"{name}: derived, but the note does not show the computation")
    return out


@pytest.mark.parametrize(("kind", "name"), PROV_YAML)
def test_read_and_derived_parameters_show_their_provenance(kind, name):
    assert _provenance_problems(kind, _raw(kind, name)) == []


_PROV_BREAKERS = {
    "read without identifier": ("mechanism", "receptor", "Kd0_memantine",
                                {"source": "Blanpied 1997: memantine IC50 1.4 µM"}),
    "read that is ln2/t½": ("pk", "mouse-ip", "kel", {"evidence": "read"}),
    "read that is a mean": ("mechanism", "clinic", "madrs_baseline_sd", {"evidence": "read"}),
    "derived without the how": ("pk_parts", "ketamine-cns", "ke0",
                                {"note": "from Olofsen 2012"}),
    "read in a part without identifier": ("pk_parts", "racemic-routes", "F_sl",
                                          {"source": "Rolan 2014 sublingual wafer"}),
}


@pytest.mark.parametrize("breaker", sorted(_PROV_BREAKERS))
def test_provenance_rules_catch_a_broken_card(breaker):
    kind, name, pname, change = _PROV_BREAKERS[breaker]
    data = copy.deepcopy(_raw(kind, f"{name}.yaml"))
    assert _provenance_problems(kind, data) == []
    params = data.get("parameters") or data.get("constants")
    params[pname] = {**params[pname], **change}
    problems = _provenance_problems(kind, data)
    assert problems and problems[0].startswith(f"{pname}:")


def test_pk_card_level_identifiers_cover_read_parameters_only_in_pk_files():
    """A PK card's pmid/doi covers its own parameters, not those of a shared part."""
    data = copy.deepcopy(_raw("pk", "kamp2020.yaml"))
    data["parameters"]["V1"]["source"] = "opentiva Klamp (R-code)"
    assert _provenance_problems("pk", data) == []
    data.pop("pmid"), data.pop("doi")
    assert _provenance_problems("pk", data)
