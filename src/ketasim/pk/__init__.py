"""Pharmacokinetics: from a regimen to plasma, metabolite and effect-site concentrations.

One call, :func:`simulate_pk`, for one patient or a batch. Internally: the card is assembled
into a linear compartment system (:mod:`ketasim.pk.model`) and solved exactly for
piecewise-constant input (:mod:`ketasim.pk.solve`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .. import __version__
from ..cards import PKCard, card_versions, default_pk_model, load_drug, load_pk_card
from ..errors import KetasimError, StudiedRangeWarning
from ..regimen import Regimen
from .model import Covariates, PKSystem, as_plain, assemble, check_studied_range
from .solve import MAX_OUTPUT_TIMES, Solution, as_times, describe_times, solve, solve_reference

__all__ = ["Covariates", "PKResult", "simulate_pk", "solve", "solve_reference", "assemble",
           "resolve_model"]

_SUMMARY_STEP_H = 1.0 / 60.0  # Cmax/Tmax are found on a 1-min grid (plus all event times)
_SUMMARY_WINDOW_H = 24.0  # ... within 24 h after each dose start


def resolve_model(drug: str, model: str | None, routes: tuple[str, ...] = (),
                  species: str = "human") -> PKCard:
    """The card for ``model``, or the drug's default; checks drug and species match the card."""
    load_drug(drug)
    if model is None:
        return default_pk_model(drug, routes[0] if routes else None, species)
    card = load_pk_card(model)
    if card.drug != drug:
        raise KetasimError("model", f"model {model!r} is for {card.drug}, not {drug}",
                           "models for " + drug)
    if card.species != species:
        raise KetasimError("model", f"model {model!r} is for {card.species}, not {species}",
                           f"models for {species}")
    return card


@dataclass
class PKResult:
    """Concentrations at the requested times and exposure summaries (one or many patients).

    Concentrations are ng/mL (= µg/L); times in h (``time_min`` for convenience).
    """

    card: PKCard
    time_h: np.ndarray
    plasma_ng_per_ml: dict[str, np.ndarray]  # species -> (n, T)
    effect_ng_per_ml: dict[str, np.ndarray]
    amounts_mg: pd.DataFrame | None
    summary: dict[str, np.ndarray]  # per patient
    warnings: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def parent(self) -> str:
        """The parent drug (first species with a plasma concentration)."""
        return next(iter(self.plasma_ng_per_ml))

    def to_frame(self) -> pd.DataFrame:
        """Long table: one row per patient and time, unit-suffixed columns."""
        n, t = next(iter(self.plasma_ng_per_ml.values())).shape
        df = pd.DataFrame({"patient": np.repeat(np.arange(n), t),
                           "time_h": np.tile(self.time_h, n)})
        for sp, c in self.plasma_ng_per_ml.items():
            df[f"{sp}_plasma_ng_per_ml"] = c.ravel()
        for sp, c in self.effect_ng_per_ml.items():
            df[f"{sp}_effect_site_ng_per_ml"] = c.ravel()
        return df


def _summary_step_h(n_doses: int) -> float:
    """Step (h) of the Cmax/Tmax grid: 1 min, coarser where the 24-h windows of many doses
    would need more than :data:`MAX_OUTPUT_TIMES` points (a few hundred doses and up)."""
    return max(_SUMMARY_STEP_H, _SUMMARY_WINDOW_H * n_doses / MAX_OUTPUT_TIMES)


def _dense_grid(regimen: Regimen, t_out: np.ndarray) -> np.ndarray:
    step = _summary_step_h(len(regimen))
    pts = [t_out]
    for d in regimen:
        pts.append(np.arange(d.time_h, d.time_h + _SUMMARY_WINDOW_H, step))
        pts.append(np.array([d.time_h, d.time_h + d.duration_h]))
    grid = np.unique(np.round(np.concatenate(pts), 9))
    return grid[grid >= 0]


def terminal_half_life_h(system: PKSystem, species: str) -> np.ndarray:
    """ln 2 / slowest rate of the ``species`` states (depots included: flip-flop), per patient."""
    comps = {c.name: c for c in system.card.compartments}
    idx = [i for i, s in enumerate(system.states) if s in comps and comps[s].species == species]
    sub = system.K[:, idx][:, :, idx]
    lam = np.linalg.eigvals(sub).real
    slow = np.max(np.where(lam < 0, lam, -np.inf), axis=1)
    return np.log(2.0) / -slow


def simulate_pk(regimen: Regimen, times_h, drug: str = "ketamine", model: str | None = None,
                covariates: Covariates | None = None, iiv: dict | None = None,
                amounts: bool = True, reference: bool = False,
                enantiomers: bool = False) -> PKResult:
    """Simulate plasma (and effect-site) concentrations for a regimen.

    ``times_h``: output times (h after the first dose, strictly increasing). ``covariates``:
    weight (kg), age (y), race, sex; arrays give a batch. ``iiv``: multiplicative factors per
    parameter name (arrays of the batch size). ``reference=True`` uses the SciPy ODE path.

    Summary per patient (ng/mL, h): ``cmax``, ``tmax`` (1-min grid within 24 h of each dose,
    plus event and output times), ``auc_0_inf`` (exact, all doses), ``auc_0_24``,
    ``auc_0_last`` (to the last output time), ``t_half_terminal`` (slowest mode of the parent).
    """
    if covariates is not None and not isinstance(covariates, Covariates):
        raise KetasimError("covariates", f"must be a Covariates or None, got "
                           f"{type(covariates).__name__}")
    if iiv is not None and not isinstance(iiv, dict):
        raise KetasimError("iiv", f"must be a dict of parameter name → factor(s) or None, got "
                           f"{type(iiv).__name__}")
    cov = covariates or Covariates()
    if not isinstance(regimen, Regimen):
        raise KetasimError("regimen", f"must be a Regimen, got {type(regimen).__name__}")
    if not isinstance(drug, str):
        raise KetasimError("drug", f"must be a drug name, got {drug!r}")
    t_out = as_times(times_h)
    if len(regimen) == 0:
        raise KetasimError("regimen", "has no doses")
    card = resolve_model(drug, model, regimen.routes, cov.species)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StudiedRangeWarning)
        range_msgs = check_studied_range(card, cov)
    del caught
    system = assemble(card, cov, routes=regimen.routes, iiv=iiv)
    n = system.n
    w = np.broadcast_to(cov.weight_kg, (n,))
    solver = solve_reference if reference else solve
    from .solve import compile_schedule

    sched = compile_schedule(system, regimen, w)
    input_end = max([regimen.end_h, *[inf[1] for inf in sched.infusions]])
    horizon = max(float(t_out[-1]), input_end)  # AUC tail is exact only after the last input
    dense = _dense_grid(regimen, np.union1d(t_out, [horizon, 24.0]))
    # the internal grid may exceed the user limit on output times (t_out plus ≤ that many
    # summary points plus two per dose): bounded by construction
    sol_dense: Solution = solver(system, regimen, dense, w, max_times=dense.size)
    pos = np.searchsorted(dense, np.round(t_out, 9))
    plasma = {sp: sol_dense.plasma_mg_per_l(sp)[:, pos] * 1000.0 for sp in system.plasma}
    effect = {sp: sol_dense.effect_mg_per_l(sp)[:, pos] * 1000.0 for sp in system.effect}
    parent = card.drug if card.drug in system.plasma else next(iter(system.plasma))
    cp_dense = sol_dense.plasma_mg_per_l(parent) * 1000.0
    imax = np.argmax(cp_dense, axis=1)
    auc = sol_dense.integral(f"auc_{parent}") * 1000.0  # ng·h/mL
    i_h = int(np.searchsorted(dense, round(horizon, 9)))
    pi, vol = system.plasma[parent]
    # exact tail beyond the last input: ∫ e^{Kτ} x dτ = -K^{-1} x
    x_end = sol_dense.x[:, i_h, :]
    tail = -np.linalg.solve(system.K, x_end[:, :, None])[:, pi, 0] / vol * 1000.0
    i24 = int(np.searchsorted(dense, 24.0))
    summary = {
        "cmax_ng_per_ml": cp_dense[np.arange(n), imax],
        "tmax_h": dense[imax],
        "auc_0_inf_ng_h_per_ml": auc[:, i_h] + tail,
        "auc_0_24_ng_h_per_ml": auc[:, i24],
        "auc_0_last_ng_h_per_ml": auc[:, pos[-1]],
        "t_half_terminal_h": terminal_half_life_h(system, parent),
    }
    for sp in system.plasma:
        if sp != parent:
            c = sol_dense.plasma_mg_per_l(sp) * 1000.0
            summary[f"{sp}_cmax_ng_per_ml"] = c.max(axis=1)
            summary[f"{sp}_auc_0_24_ng_h_per_ml"] = sol_dense.integral(f"auc_{sp}")[:, i24] * 1000
    if enantiomers:
        if card.enantiomers is None or card.enantiomers.elimination_parameter is None:
            raise KetasimError("enantiomers", f"model {card.id} has no enantiomer split",
                               "racemic ketamine models")
        en = card.enantiomers
        for label, fac in (("s-ketamine", en.s_factor), ("r-ketamine", en.r_factor)):
            mult = dict(iiv or {})
            p = en.elimination_parameter
            mult[p] = np.asarray(mult.get(p, 1.0)) * system.params[fac]
            sys_e = assemble(card, cov, routes=regimen.routes, iiv=mult)
            sol_e = solver(sys_e, regimen, dense, w, max_times=dense.size)
            c = 0.5 * sol_e.plasma_mg_per_l(parent) * 1000.0  # half the racemic dose
            plasma[label] = c[:, pos]
            summary[f"{label}_cmax_ng_per_ml"] = c.max(axis=1)
            summary[f"{label}_auc_0_24_ng_h_per_ml"] = (
                0.5 * sol_e.integral(f"auc_{parent}")[:, i24] * 1000.0)
    drug_card = load_drug(card.drug)
    msgs = list(range_msgs)
    step = _summary_step_h(len(regimen))
    if step > _SUMMARY_STEP_H:
        msgs.append(f"Cmax/Tmax found on a {step * 60:.3g}-min grid (not 1 min) within 24 h "
                    f"of each of the {len(regimen)} doses, plus every event and output time")
    band = drug_card.bands.get("anaesthetic_ng_per_ml")
    if band is not None:
        summary["anaesthetic_range"] = summary["cmax_ng_per_ml"] >= band.value
        if np.any(summary["anaesthetic_range"]):
            msgs.append(f"exposure in the anaesthetic range: Cmax ≥ {band.value:g} ng/mL")
    amounts_df = None
    if amounts and n == 1:
        amounts_df = pd.DataFrame(sol_dense.x[0][pos], columns=[f"{s}_mg" if not
                                  s.startswith("effect_site") else f"{s}_mg_per_l"
                                  for s in system.states])
        amounts_df.insert(0, "time_h", t_out)
        for q, name in enumerate(system.integrals):
            col = f"{name}_mg" if name.startswith("eliminated") else f"{name}_mg_h_per_l"
            amounts_df[col] = sol_dense.integrals[0][pos, q]
    meta = {"ketasim_version": __version__, "model": card.id, "drug": card.drug,
            "sampling": card.sampling, "card_hashes": {k: v for k, v in card_versions().items()
                                                        if k.startswith(("pk", "drugs"))},
            "solver": "scipy-lsoda-reference" if reference else "exact-expm",
            "n_patients": n, "dosed_mg": sol_dense.schedule.dosed_mg,
            "presystemic_mg": sol_dense.schedule.presystemic_mg,
            "covariates": cov.as_dict(), "regimen": regimen.as_dict(),
            "times": describe_times(t_out),
            "iiv": {k: as_plain(v) for k, v in (iiv or {}).items()},
            "enantiomers": bool(enantiomers)}
    return PKResult(card, t_out, plasma, effect, amounts_df, summary, msgs, meta)
