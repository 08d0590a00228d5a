"""Scenario files (TOML) for virtual trials, validated with pydantic.

One schema for files, CLI and web. Unknown keys, wrong units and missing arm fields fail with
one line naming the key (:func:`load_scenario` raises :class:`KetasimError`).
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import KetasimError
from .regimen import parse_schedule
from .units import parse_dose, parse_duration

#: a list of doses or dose times (one per dose; as many as a schedule may have)
_DoseList = Annotated[list[str], Field(max_length=10_000)]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+\-]{0,39}$")


class PopulationSpec(BaseModel):
    """Who is enrolled: disorder, size, seed and covariate distributions."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    disorder: Literal["mdd", "trd", "bipolar"] = "trd"
    n: int = Field(100, ge=1, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    weight_kg_mean: float = Field(80.0, ge=40.0, le=200.0)
    weight_kg_sd: float = Field(15.0, ge=0.0, le=60.0)
    age_mean: float = Field(45.0, ge=18.0, le=90.0)
    age_sd: float = Field(12.0, ge=0.0, le=30.0)
    female_fraction: float = Field(0.55, ge=0.0, le=1.0)
    race: Literal["caucasian", "black", "asian", "japanese", "other"] = "caucasian"
    comedication: list[Literal["lithium", "valproate", "oral-antidepressant"]] = Field(
        default_factory=list)
    #: baseline MADRS is drawn normal(mean, sd) clipped to 20–60 (20: the enrolment floor of
    #: depression trials; 60: the scale's top), so a mean below 20 is refused
    baseline_madrs_mean: float | None = Field(None, ge=20.0, le=60.0)
    baseline_madrs_sd: float | None = Field(None, ge=0.0, le=20.0)
    #: every arm's patient i is the same virtual patient (covariates, random effects, visit
    #: noise): common random numbers, for comparisons of arms that differ only in treatment
    #: or mechanism hypothesis; False (default) draws each arm's patients independently, as
    #: randomisation does
    same_patients_in_every_arm: bool = False


class ArmSpec(BaseModel):
    """One arm: a drug regimen or a control, optionally on an oral antidepressant background."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: str
    drug: Literal["ketamine", "esketamine"] | None = None
    route: str | None = None
    dose: str | _DoseList | None = None
    duration: str | None = None
    schedule: str | _DoseList | None = None
    model: str | None = None
    salt: Literal["base", "hcl"] | None = None
    control: Literal["saline", "active-placebo"] | None = None
    background: Literal["none", "oral-antidepressant"] = "none"
    ratio: float = Field(1.0, gt=0.0, le=10.0)
    hypotheses: str = "default"
    interventions: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("1–40 letters, digits, space, _ . + -")
        return v

    @model_validator(mode="after")
    def _complete(self) -> ArmSpec:
        if self.control is None:
            for key in ("drug", "route", "dose"):
                if getattr(self, key) is None:
                    raise ValueError(f"a drug arm needs '{key}' (or set 'control')")
            doses = [self.dose] if isinstance(self.dose, str) else list(self.dose)
            if not doses:
                raise ValueError("'dose' as a list needs at least one entry")
            for d in doses:
                parse_dose(d, field="dose")
            if isinstance(self.schedule, list):
                if not self.schedule:
                    raise ValueError("'schedule' as a list needs at least one time")
                times = [parse_duration(t, field="schedule", allow_zero=True)
                         for t in self.schedule]
                if any(b <= a for a, b in zip(times, times[1:], strict=False)):
                    raise ValueError("'schedule' times must increase")
                if isinstance(self.dose, list) and len(self.dose) != len(self.schedule):
                    raise ValueError("'dose' as a list needs one entry per 'schedule' time")
            else:
                if len(doses) > 1:
                    raise ValueError("several doses in 'dose' need 'schedule' as a list of "
                                     "times, one per dose")
                parse_schedule(self.schedule)
            if self.duration is not None:
                parse_duration(self.duration, field="duration")
        elif self.drug is not None:
            raise ValueError("a control arm has no 'drug'")
        elif self.duration is not None:  # an active placebo's (midazolam) infusion
            parse_duration(self.duration, field="duration")
        return self


class EndpointsSpec(BaseModel):
    """Visits and scale; response = ≥ response_fraction fall; remission = score ≤ threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    scale: Literal["madrs", "hamd17", "hamd6"] = "madrs"
    at: list[str] = Field(default_factory=lambda: ["40 min", "4 h", "24 h", "3 d", "7 d",
                                                   "14 d"], min_length=1, max_length=60)
    response_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    remission_threshold: float | None = Field(None, ge=0.0, le=60.0)
    relapse_followup: str | None = None

    @field_validator("relapse_followup")
    @classmethod
    def _followup(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v, field="endpoints.relapse_followup")
        return v

    @field_validator("at")
    @classmethod
    def _times(cls, v: list[str]) -> list[str]:
        hours = [parse_duration(t, field="endpoints.at", allow_zero=True) for t in v]
        if any(b <= a for a, b in zip(hours, hours[1:], strict=False)):
            raise ValueError("visit times must increase")
        if hours[-1] > 24 * 400:
            raise ValueError("visits beyond 400 days are not supported")
        return v


class Scenario(BaseModel):
    """A virtual trial: population, arms, endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)
    title: str = Field("", max_length=200)
    population: PopulationSpec = Field(default_factory=PopulationSpec)
    arms: list[ArmSpec] = Field(alias="arm", min_length=1, max_length=8)
    endpoints: EndpointsSpec = Field(default_factory=EndpointsSpec)

    @model_validator(mode="after")
    def _unique(self) -> Scenario:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        return self


def _loc(err: dict) -> str:
    parts = []
    for x in err["loc"]:
        if isinstance(x, int):
            parts[-1] = f"{parts[-1]}[{x}]" if parts else f"[{x}]"
        else:
            parts.append(str(x))
    return ".".join(parts) or "scenario"


def parse_scenario(data: dict) -> Scenario:
    """Validate a scenario given as a dict (TOML-parsed or JSON)."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise KetasimError(f"scenario {_loc(err)}", msg) from exc
    except KetasimError as exc:
        raise KetasimError(f"scenario {exc.field}", exc.problem, exc.allowed) from exc


def load_scenario(path: str) -> Scenario:
    """Read and validate a TOML scenario file."""
    if not isinstance(path, str | os.PathLike):
        raise KetasimError("scenario", f"must be a path to a TOML file, got {path!r}")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise KetasimError("scenario", f"file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise KetasimError("scenario", f"{path} is a folder, not a TOML file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise KetasimError("scenario", f"not valid TOML: {first}") from exc
    return parse_scenario(data)
