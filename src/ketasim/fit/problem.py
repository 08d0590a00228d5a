"""Problems: a model, a data set and an error model bound together (as in pints).

A :class:`PKProblem` predicts the observed concentrations of every subject at once from the
card's exact linear solution: the system matrix ``K`` of each subject is diagonalised
(``K = V Λ V⁻¹``) and each dose adds its exact response (bolus: ``e^{λ(t−t₀)}``, zero-order
input over ``D`` h: ``(e^{λ(t−t₀)} − e^{λ(t−t₀−D)⁺})/(λD)``), summed over doses — superposition
is exact for a linear system. Predictions are batched over subjects (arrays (subjects, obs)).
A reset (EVID 3, or EVID 4 before its dose) at time r empties the system as in NONMEM: at
times ≥ r only doses given at or after r contribute.

Parameters to estimate are named as on the card (``CL``, ``V1``, ``Q2`` …). Each subject's
parameter is ``p_i = p_card(covariates) · (θ/θ_card) · e^{η_i}``: ``θ`` is the typical value
(card units, for the card's 70-kg reference where the card scales with weight) and ``η_i`` the
subject's log-normal random effect. Parameters not estimated stay as on the card.

Units: time h, amounts mg, concentrations ng/mL (= µg/L).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..cards import PKCard, load_pk_card
from ..errors import KetasimError
from ..pk.model import Covariates, assemble, factor, nasal_fraction, resolve_parameters
from ..units import quantity_to_base
from .data import Dataset, Subject

ERROR_MODELS = ("additive", "proportional", "combined")
#: handling of observations below the limit of quantification (BLQ): Beal's M3 (their
#: likelihood, the probability of being below the limit) or M1 (discard them)
BLQ_METHODS = ("m3", "m1")


def check_blq(blq: object) -> str:
    """The BLQ method ``blq`` (``None``: ``"m3"``) checked; a wrong one is a
    :class:`KetasimError` naming ``blq``."""
    if blq is None:
        return "m3"
    if not isinstance(blq, str) or blq.lower() not in BLQ_METHODS:
        raise KetasimError("blq", f"unknown BLQ method {blq!r}",
                           "m3 (likelihood of being below the limit), m1 (discard BLQ rows)")
    return blq.lower()


#: the observed quantities of a PK problem, in the order of its ``qidx`` (0 parent, 1 metabolite)
QUANTITIES = ("plasma", "metabolite")
#: the base names of the residual-error parameters (a per-quantity one adds ``_<quantity>``)
SIGMA_BASE = ("sigma_add", "sigma_prop")


@dataclass(frozen=True)
class ErrorModel:
    """Residual error: additive (SD ``a``, ng/mL), proportional (CV ``b``, fraction of the
    prediction) or combined.

    Variance ``R = a² + (b·f)²`` (ng²/mL²); only the named parts are estimated (log scale).

    ``by_quantity``: each observed quantity of ``quantities`` (plasma = the parent drug,
    metabolite; in the order of a problem's ``qidx``) has its own parameters of the same kind,
    named with the quantity as suffix (``sigma_prop_plasma``, ``sigma_prop_metabolite``;
    combined: ``sigma_add_plasma``, ``sigma_prop_plasma``, ``sigma_add_metabolite``,
    ``sigma_prop_metabolite``) — NONMEM's separate EPS per DVID. The variance then needs each
    observation's quantity (``qidx``: 0 plasma, 1 metabolite, the shape of ``f``);
    :class:`PKProblem` binds ``quantities`` to those its data observe
    (:meth:`PKProblem.variance` passes ``qidx``).
    """

    kind: str = "proportional"
    by_quantity: bool = False
    quantities: tuple[str, ...] = QUANTITIES

    def __post_init__(self) -> None:
        if self.kind not in ERROR_MODELS:
            raise KetasimError("error model", f"unknown {self.kind!r}", ", ".join(ERROR_MODELS))
        if not isinstance(self.by_quantity, bool | np.bool_):
            raise KetasimError("error_by_quantity", f"must be true or false, got "
                               f"{self.by_quantity!r}")
        for q in self.quantities:
            if q not in QUANTITIES:
                raise KetasimError("error model quantities", f"unknown quantity {q!r}",
                                   ", ".join(QUANTITIES))

    @property
    def base_names(self) -> list[str]:
        """Names of the parameters of this kind, without a quantity suffix."""
        return {"additive": ["sigma_add"], "proportional": ["sigma_prop"],
                "combined": ["sigma_add", "sigma_prop"]}[self.kind]

    @property
    def names(self) -> list[str]:
        """Names of the residual-error parameters of this error model (per quantity: grouped
        by quantity, e.g. ``sigma_add_plasma, sigma_prop_plasma, sigma_add_metabolite, …``)."""
        if not self.by_quantity:
            return self.base_names
        return [f"{b}_{q}" for q in self.quantities for b in self.base_names]

    def describe(self) -> str:
        """The error model in words (e.g. for a report)."""
        if not self.by_quantity:
            return self.kind
        return f"{self.kind}, one per observed quantity ({', '.join(self.quantities)})"

    def _per_obs(self, base: str, sig: dict[str, float], qidx: np.ndarray | None
                 ) -> np.ndarray:
        """The parameter ``base`` (e.g. ``sigma_prop``) of each observation's quantity."""
        if qidx is None:
            raise KetasimError("qidx", "a per-quantity error model needs each observation's "
                               "quantity (use PKProblem.variance)")
        vals = np.array([sig.get(f"{base}_{q}", 0.0) if q in self.quantities else np.nan
                         for q in QUANTITIES])
        return vals[np.asarray(qidx, dtype=int)]

    def variance(self, f: np.ndarray, sig: dict[str, float],
                 qidx: np.ndarray | None = None) -> np.ndarray:
        """Residual variance (ng²/mL², units² of the observation) at predictions ``f``
        (ng/mL). ``qidx`` (the shape of ``f``; 0 plasma, 1 metabolite): each observation's
        quantity, needed (and only used) with ``by_quantity``."""
        if not self.by_quantity:
            a = sig.get("sigma_add", 0.0)
            b = sig.get("sigma_prop", 0.0)
            floor = 1e-6 * (1.0 if a > 0 else 0.0)
            return a * a + (b * f) ** 2 + floor + (1e-12 if a == 0 else 0.0)
        a = self._per_obs("sigma_add", sig, qidx)
        b = self._per_obs("sigma_prop", sig, qidx)
        return a * a + (b * f) ** 2 + np.where(a > 0, 1e-6, 1e-12)

    def dvariance(self, f: np.ndarray, sig: dict[str, float],
                  qidx: np.ndarray | None = None) -> np.ndarray:
        """dR/df (ng/mL); ``qidx`` as for :meth:`variance`."""
        if not self.by_quantity:
            b = sig.get("sigma_prop", 0.0)
            return 2.0 * b * b * f
        b = self._per_obs("sigma_prop", sig, qidx)
        return 2.0 * b * b * f

    def initial(self, y: np.ndarray, qidx: np.ndarray | None = None) -> dict[str, float]:
        """Starting values from the observed (uncensored) values ``y`` (ng/mL; estimator
        settings, not model numbers), in the order of :attr:`names`; per quantity (``qidx``,
        the shape of ``y``) from that quantity's values."""
        def start(v: np.ndarray) -> dict[str, float]:
            scale = float(np.median(np.abs(v))) if v.size else 1.0
            return {"sigma_add": 0.1 * max(scale, 1e-3), "sigma_prop": 0.2}

        if not self.by_quantity:
            out = start(y)
            return {k: out[k] for k in self.names}
        if qidx is None:
            raise KetasimError("qidx", "a per-quantity error model needs each observation's "
                               "quantity")
        res = {}
        for q in self.quantities:
            out = start(y[np.asarray(qidx) == QUANTITIES.index(q)])
            res.update({f"{b}_{q}": out[b] for b in self.base_names})
        return res


class PKProblem:
    """Binds a PK card, a data set (plasma and metabolite observations) and an error model.

    ``estimate``: card parameter names to estimate (typical values); ``iiv``: the subset with
    inter-individual variability (default: all estimated). Observations of scores are ignored
    here (see :mod:`ketasim.fit.forecast`).

    ``blq``: observations below the limit of quantification (censored, see
    :func:`~ketasim.fit.data.read_dataset`) enter by Beal's M3 (``"m3"``, the default: the
    likelihood ``Φ((LLOQ − f)/sd(f))`` of being below the limit) or are dropped (``"m1"``; a
    subject left without observations is dropped too). ``cens`` marks the censored
    observations (``y`` holds their limit), ``n_censored`` counts those of the data set
    (whether used or dropped; for :meth:`take`, those of the subjects taken).

    ``error_by_quantity`` (or an :class:`ErrorModel` with ``by_quantity=True``): a separate
    residual error of the same kind for each observed quantity (plasma, metabolite), its
    parameters named with the quantity as suffix (``sigma_prop_plasma`` …); refused (one line
    naming ``error_by_quantity``) when the observations to fit are of one quantity only.
    Every residual variance goes through :meth:`variance`, which knows each observation's
    quantity (``qidx``).
    """

    def __init__(self, card: PKCard | str, data: Dataset, estimate: list[str],
                 error: ErrorModel | str = "proportional", iiv: list[str] | None = None,
                 quantities: tuple[str, ...] = ("plasma", "metabolite"),
                 blq: str | None = None, error_by_quantity: bool = False) -> None:
        self.blq = check_blq(blq)
        self.card = load_pk_card(card) if isinstance(card, str) else card
        self.data = data
        if not isinstance(error_by_quantity, bool | np.bool_):
            raise KetasimError("error_by_quantity", f"must be true or false, got "
                               f"{error_by_quantity!r}")
        self.error = ErrorModel(error) if isinstance(error, str) else error
        if error_by_quantity and not self.error.by_quantity:
            self.error = replace(self.error, by_quantity=True)
        if not estimate:
            raise KetasimError("estimate", "name at least one parameter", ", ".join(
                self.card.parameters))
        for name in estimate:
            if name not in self.card.parameters:
                raise KetasimError("estimate", f"{name!r} is not a parameter of model "
                                   f"{self.card.id}", ", ".join(self.card.parameters))
        if len(set(estimate)) != len(estimate):
            raise KetasimError("estimate", "a parameter is named twice")
        self.estimate = list(estimate)
        self.iiv = list(estimate if iiv is None else iiv)
        for name in self.iiv:
            if name not in self.estimate:
                raise KetasimError("iiv", f"{name!r} must also be estimated", ", ".join(estimate))
        self.quantities = quantities
        self.n_censored = int(sum((np.isin(s.obs_quantity, quantities)
                                   & s.obs_censored).sum() for s in data.subjects))
        subs = [s for s in data.subjects if self._used(s).any()]
        if not subs:
            raise KetasimError("data", f"no {' or '.join(quantities)} observations to fit"
                               + (" (BLQ rows dropped by --blq m1)" if self.n_censored
                                  and self.blq == "m1" else ""))
        routes = sorted({r for s in subs for r in s.regimen.routes})
        for r in routes:
            if r not in self.card.routes:
                raise KetasimError("route", f"model {self.card.id} does not support {r!r}",
                                   ", ".join(self.card.routes))
        if self.error.kind == "proportional":
            _check_zero_predictions(data, subs, quantities)
        self.subjects: list[Subject] = subs
        self.routes = tuple(routes)
        self._setup()
        if self.error.by_quantity:
            present = tuple(q for k, q in enumerate(QUANTITIES)
                            if (self.qidx[self.mask] == k).any())
            if len(present) < 2:
                raise KetasimError("error_by_quantity", "a residual error per observed "
                                   f"quantity needs observations of two quantities; the data "
                                   f"to fit have {' and '.join(present) or 'none'} only (the "
                                   "second sigma would be unidentifiable)",
                                   "one shared residual error (leave the option off)")
            self.error = replace(self.error, quantities=present)

    def variance(self, f: np.ndarray, sig: dict[str, float],
                 qidx: np.ndarray | None = None) -> np.ndarray:
        """Residual variance (ng²/mL²) at predictions ``f`` (ng/mL) of this problem's
        observations (``qidx``: each value's quantity, 0 plasma, 1 metabolite, default the
        problem's own, the shape of ``f``)."""
        if not self.error.by_quantity:
            return self.error.variance(f, sig)
        return self.error.variance(f, sig, self.qidx if qidx is None else qidx)

    def dvariance(self, f: np.ndarray, sig: dict[str, float],
                  qidx: np.ndarray | None = None) -> np.ndarray:
        """dR/df (ng/mL) at predictions ``f``; ``qidx`` as for :meth:`variance`."""
        if not self.error.by_quantity:
            return self.error.dvariance(f, sig)
        return self.error.dvariance(f, sig, self.qidx if qidx is None else qidx)

    def initial_sigma(self) -> dict[str, float]:
        """Starting values of the residual-error parameters (in the order of
        ``error.names``), from the observed (uncensored) values in the likelihood — per
        quantity from that quantity's values."""
        m = self.mask & ~self.cens
        if not self.error.by_quantity:
            return self.error.initial(self.y[m])
        return self.error.initial(self.y[m], self.qidx[m])

    def _used(self, s: Subject) -> np.ndarray:
        """Which of a subject's observations enter the likelihood: the fitted quantities,
        without the censored ones under M1."""
        m = np.isin(s.obs_quantity, self.quantities)
        return m & ~s.obs_censored if self.blq == "m1" else m

    @property
    def any_censored(self) -> bool:
        """Whether any observation in the likelihood is censored (M3 terms present)."""
        return bool(self.cens.any())

    def normal_counts(self) -> np.ndarray:
        """(n,) number of each subject's uncensored observations in the likelihood (the
        normal-density terms, each with its log 2π)."""
        return (self.mask & ~self.cens).sum(axis=1)

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        subs = self.subjects
        n = len(subs)
        self.n = n
        card = self.card
        # base parameters per subject (covariates applied), grouped by sex/race
        cols: dict[str, np.ndarray] = {k: np.zeros(n) for k in card.parameters}
        groups: dict[tuple[str, str], list[int]] = {}
        for i, s in enumerate(subs):
            groups.setdefault((s.sex, s.race), []).append(i)
        for (sex, race), idx in groups.items():
            cov = Covariates(weight_kg=np.array([subs[i].weight_kg for i in idx]),
                             age_years=np.array([subs[i].age_years for i in idx]),
                             sex=sex, race=race)
            p = resolve_parameters(card, cov, len(idx))
            for k, v in p.items():
                cols[k][idx] = v
        self.base_params = cols
        # card values in base units (to scale typical values) and in card units
        self.card_value = {k: float(card.parameters[k].value) for k in self.estimate}
        # structure from one assembled system
        sysm = assemble(card, Covariates(), routes=self.routes, n=1)
        self.states = sysm.states
        self._idx = {s: i for i, s in enumerate(self.states)}
        comps = {c.name: c for c in card.compartments}
        self._comps = comps
        parent = card.drug if card.drug in sysm.plasma else next(iter(sysm.plasma))
        metab = [sp for sp in sysm.plasma if sp != parent]
        self.species = {"plasma": parent, "metabolite": metab[0] if metab else None}
        self._plasma_state = {sp: (i, next(c.volume for c in card.compartments
                                           if c.role == "plasma" and c.species == sp))
                              for sp, (i, _) in sysm.plasma.items()}
        # observations, padded (n, T)
        T = max(int(self._used(s).sum()) for s in subs)
        self.T = T
        self.t_obs = np.zeros((n, T))
        self.y = np.zeros((n, T))
        self.mask = np.zeros((n, T), bool)
        self.cens = np.zeros((n, T), bool)  # censored (y is the limit), within mask
        self.qidx = np.zeros((n, T), int)  # 0 parent, 1 metabolite
        for i, s in enumerate(subs):
            m = self._used(s)
            k = int(m.sum())
            self.t_obs[i, :k] = s.obs_time_h[m]
            self.y[i, :k] = s.obs_value[m]
            self.mask[i, :k] = True
            self.cens[i, :k] = s.obs_censored[m]
            q = s.obs_quantity[m]
            if np.any(q == "metabolite") and self.species["metabolite"] is None:
                raise KetasimError("data", f"model {card.id} has no metabolite output")
            self.qidx[i, :k] = (q == "metabolite").astype(int)
        self.n_obs = int(self.mask.sum())
        # keep only the states the observed outputs depend on (smaller eigenproblems)
        from ..pk.fast import _needed_states

        targets = [self._plasma_state[self.species["plasma"]][0]]
        if self.species["metabolite"] is not None and (self.qidx[self.mask] == 1).any():
            targets.append(self._plasma_state[self.species["metabolite"]][0])
        Kb = self._K_full(self.base_params)
        self.keep = _needed_states(np.abs(Kb).sum(axis=0, keepdims=True), targets)
        self._pos = {s_: k for k, s_ in enumerate(self.keep)}
        # doses, padded (n, E)
        E = max(len(s.regimen) for s in subs) or 1
        self.ev_t = np.zeros((n, E))
        self.ev_amt = np.zeros((n, E))
        self.ev_dur = np.zeros((n, E))  # infusion duration h (0: not an infusion)
        self.ev_route = np.full((n, E), -1)
        for i, s in enumerate(subs):
            for j, d in enumerate(s.regimen):
                self.ev_t[i, j] = d.time_h
                self.ev_amt[i, j] = d.amount.mg(s.weight_kg)
                self.ev_dur[i, j] = d.duration_h
                self.ev_route[i, j] = self.routes.index(d.route)
        # resets (EVID 3/4), padded with -inf (n, R)
        R = max((s.reset_times_h.size for s in subs), default=0)
        self.resets = np.full((n, R), -np.inf)
        for i, s in enumerate(subs):
            self.resets[i, :s.reset_times_h.size] = s.reset_times_h

    # ------------------------------------------------------------- parameters
    def params(self, theta: dict[str, float], eta: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
        """Subject parameters (base units, (n,)) for typical values ``theta`` (card units) and
        random effects ``eta`` ((n, len(iiv)), log scale)."""
        out = dict(self.base_params)
        for k in self.estimate:
            f = theta[k] / self.card_value[k]
            if eta is not None and k in self.iiv:
                f = f * np.exp(np.clip(eta[:, self.iiv.index(k)], -30.0, 30.0))
            out[k] = self.base_params[k] * f
        return out

    def _K(self, p: dict[str, np.ndarray]) -> np.ndarray:
        """The reduced system matrices (states the outputs depend on), (n, s', s')."""
        K = self._K_full(p)
        return K[:, self.keep][:, :, self.keep]

    def _K_full(self, p: dict[str, np.ndarray]) -> np.ndarray:
        """System matrices (n, s, s) 1/h from subject parameters (as :func:`pk.model.assemble`)."""
        n, s = self.n, len(self.states)
        K = np.zeros((n, s, s))
        comps, idx = self._comps, self._idx
        for f in self.card.flows:
            if f.source not in idx:
                continue
            k = p[f.rate] if f.rate is not None else p[f.clearance] / p[comps[f.source].volume]
            k = k * factor(p, f.fraction)
            i = idx[f.source]
            K[:, i, i] -= k
            if f.to in idx:
                K[:, idx[f.to], i] += k
        if self.card.effect_site:
            sp = comps[self.card.effect_site.of].species
            ke0 = p[self.card.effect_site.ke0]
            pi, vname = self._plasma_state[sp]
            ei = idx[f"effect_site_{sp}"]
            K[:, ei, pi] += ke0 / p[vname]
            K[:, ei, ei] -= ke0
        return K

    def predict(self, theta: dict[str, float], eta: np.ndarray | None = None,
                t: np.ndarray | None = None, qidx: np.ndarray | None = None) -> np.ndarray:
        """Predicted concentrations (ng/mL), (n, T), at the observation times (or ``t``)."""
        p = self.params(theta, eta)
        return self._predict(p, self.t_obs if t is None else t,
                             self.qidx if qidx is None else qidx)

    def _predict(self, p: dict[str, np.ndarray], t: np.ndarray, qidx: np.ndarray) -> np.ndarray:
        n = self.n
        with np.errstate(all="ignore"):
            K = self._K(p)
        bad = ~np.isfinite(K).all(axis=(1, 2))
        if bad.any():  # a diverging trial point: predict NaN for that subject
            K[bad] = -np.eye(K.shape[1])
        lam, V = np.linalg.eig(K)
        lam = lam.real
        V = V.real
        Vinv = np.linalg.inv(V)
        # output rows: conc of species q = x[state]/vol
        outs = []
        for key in ("plasma", "metabolite"):
            sp = self.species[key]
            if sp is None:
                outs.append(np.zeros((n, K.shape[1])))
                continue
            si, vname = self._plasma_state[sp]
            if si not in self._pos:
                outs.append(np.zeros((n, K.shape[1])))
                continue
            outs.append(V[:, self._pos[si], :] / p[vname][:, None])
        left = np.stack(outs, axis=1)  # (n, 2, s)
        L = np.take_along_axis(left, qidx[:, :, None], axis=1)  # (n, T, s)
        y = np.zeros(t.shape)
        card = self.card
        for r, route in enumerate(self.routes):
            on = self.ev_route == r
            if not on.any():
                continue
            amt = np.where(on, self.ev_amt, 0.0)  # (n, E)
            extra = {}
            if card.nasal_devices is not None:
                pp = {k: v[:, None] for k, v in p.items()}
                extra[card.nasal_devices.name] = nasal_fraction(card, pp, np.maximum(amt, 1e-12))
            for inp in card.routes[route].inputs:
                pp = {k: v[:, None] for k, v in p.items()}
                frac = np.broadcast_to(factor(pp, inp.fraction, extra), amt.shape)
                a = amt * frac  # (n, E) mg into state
                si = self._idx[inp.to]
                if si not in self._pos:
                    continue
                R = Vinv[:, :, self._pos[si]]  # (n, s)
                if inp.duration is not None:
                    dur = np.where(self.ev_dur > 0, self.ev_dur, p[inp.duration][:, None])
                else:
                    dur = self.ev_dur
                dt = t[:, :, None] - self.ev_t[:, None, :]  # (n, T, E)
                lt = lam[:, None, None, :]  # (n,1,1,s)
                d4 = dur[:, None, :, None]
                dt4 = dt[..., None]
                with np.errstate(over="ignore", invalid="ignore"):
                    bol = np.where(dt4 >= 0, np.exp(lt * np.maximum(dt4, 0.0)), 0.0)
                    te = np.maximum(dt4 - d4, 0.0)
                    inf = np.where(dt4 > 0, (np.exp(lt * np.maximum(dt4, 0.0))
                                             - np.exp(lt * te)) / (lt * np.where(d4 > 0, d4,
                                                                                  1.0)), 0.0)
                g = np.where(d4 > 0, inf, bol)  # (n, T, E, s)
                if self.resets.shape[1]:  # a dose before the last reset at or before t: gone
                    last = np.where(self.resets[:, None, :] <= t[:, :, None],
                                    self.resets[:, None, :], -np.inf).max(axis=2)  # (n, T)
                    g = g * (self.ev_t[:, None, :] >= last[:, :, None])[..., None]
                M = a[:, :, None] * R[:, None, :]  # (n, E, s)
                y += np.einsum("nts,ntes->nt", L, np.einsum("ntes,nes->ntes", g, M))
        y[bad] = np.nan
        return np.where(self.mask if t is self.t_obs else True, y * 1000.0, 0.0)

    def take(self, idx: np.ndarray) -> PKProblem:
        """A problem over subjects ``idx`` (repeats allowed: MCMC walkers share a subject)."""
        import copy

        idx = np.asarray(idx, dtype=int)
        new = copy.copy(self)
        new.base_params = {k: v[idx] for k, v in self.base_params.items()}
        for name in ("t_obs", "y", "mask", "cens", "qidx", "ev_t", "ev_amt", "ev_dur",
                     "ev_route", "resets"):
            setattr(new, name, getattr(self, name)[idx])
        new.subjects = [self.subjects[i] for i in idx]
        new.n_censored = int(sum((np.isin(s.obs_quantity, self.quantities)
                                  & s.obs_censored).sum() for s in new.subjects))
        new.n = len(idx)
        new.n_obs = int(new.mask.sum())
        return new

    def theta0(self) -> dict[str, float]:
        """Card values of the estimated parameters (card units): the starting point."""
        return dict(self.card_value)

    def units(self, name: str) -> str:
        """Units of a card parameter, as on the card."""
        return self.card.parameters[name].units


def _check_zero_predictions(data: Dataset, subjects: list[Subject],
                            quantities: tuple[str, ...]) -> None:
    """Refuse (one line naming the row and column DV) a concentration > 0 ng/mL where every
    model predicts exactly 0: before the subject's first dose, or at its time unless an IV
    bolus is given then. Under a proportional error model the residual variance there is 0,
    so −2LL is ~1e13 per such observation and swamps the fit (no convergence, no SEs)."""
    for s in subjects:
        for t, y, q, row, c in zip(s.obs_time_h, s.obs_value, s.obs_quantity, s.rows,
                                   s.obs_censored, strict=True):
            # doses that count at t: none before the last reset at or before t
            since = max((r for r in s.reset_times_h if r <= t), default=-np.inf)
            doses = [d for d in s.regimen if d.time_h >= since]
            t_first = min((d.time_h for d in doses), default=np.inf)
            bolus_at_first = any(d.time_h == t_first and d.route == "iv-bolus" for d in doses)
            # a censored one is fine there: below its limit with probability 1 (M3)
            if q in quantities and y > 0 and not c and (t < t_first or (
                    t == t_first and not bolus_at_first)):
                when = ("the subject has no dose" if not s.regimen else
                        f"at or before the first dose ({t_first:g} h)" if since == -np.inf
                        else f"after the reset (EVID 3/4) at {since:g} h, at or before the "
                        "next dose")
                raise KetasimError(f"{data.source} row {int(row)} column DV",
                                   f"{q} {y:g} ng/mL where the model predicts 0 ({when}); a "
                                   "proportional error model cannot fit it",
                                   "--error combined or additive, or MDV 1 on that row")


def card_value_base(card: PKCard, name: str) -> float:
    """A card parameter in base units (per kg where the card says so)."""
    p = card.parameters[name]
    return quantity_to_base(p.value, p.units, f"card {card.id} {name}")[0]


def simulate_dataset(model: str, n: int, regimen, times_h: np.ndarray,
                     theta: dict[str, float] | None = None,
                     omega_sd: dict[str, float] | None = None,
                     error: str = "proportional", sigma: dict[str, float] | None = None,
                     seed: int = 1, weight_kg: tuple[float, float] = (75.0, 12.0),
                     weight_range_kg: tuple[float, float] = (45.0, 120.0),
                     metabolite: bool = False, lloq: float | None = None):
    """Simulate a NONMEM-style PK data set with ketasim's exact PK solver (``simulate_pk``).

    ``theta``: typical values (card units) of named parameters (others as on the card);
    ``omega_sd``: log-normal SDs of η per parameter; residual error ``error`` with ``sigma``
    (``sigma_add`` ng/mL, ``sigma_prop`` fraction; none given = noise-free data, on which a
    fit's residual error runs to its bound); weights normal(mean, sd) kg clipped to
    ``weight_range_kg``. Returns a DataFrame (TIME h, AMT mg, DV ng/mL, WT kg). Seeded.

    ``sigma`` may also hold per-quantity values, the name with the quantity as suffix
    (``sigma_prop_plasma``, ``sigma_add_metabolite`` …): for that quantity they replace the
    plain one (a metabolite key needs ``metabolite=True``). The random draws are the same
    whichever keys are given; with the plain keys only, the data are as before. Another key
    is refused (one line naming ``sigma``).

    ``lloq`` (ng/mL, > 0): a simulated value below it becomes a censored row (DV = ``lloq``,
    ``CENS`` 1; the table then has a ``CENS`` column). The random draws are the same with or
    without it.
    """
    import pandas as pd

    from ..pk import simulate_pk
    from .data import to_csv_table

    if lloq is not None and not (isinstance(lloq, int | float | np.number)
                                 and np.isfinite(lloq) and lloq > 0):
        raise KetasimError("lloq", f"must be a finite number > 0 ng/mL, got {lloq!r}")
    card = load_pk_card(model)
    rng = np.random.default_rng(seed)
    theta = theta or {}
    omega_sd = omega_sd or {}
    sigma = dict(sigma or {})
    allowed = [*SIGMA_BASE, *(f"{b}_{q}" for q in QUANTITIES for b in SIGMA_BASE)]
    for k in sigma:
        if k not in allowed:
            raise KetasimError("sigma", f"unknown residual-error parameter {k!r}",
                               ", ".join(allowed))
        if k.endswith("_metabolite") and not metabolite:
            raise KetasimError("sigma", f"{k} given but metabolite=False (no metabolite "
                               "observations are simulated)")
    w = np.clip(rng.normal(weight_kg[0], weight_kg[1], n), *weight_range_kg)
    iiv = {}
    for k in sorted(set(theta) | set(omega_sd)):
        if k not in card.parameters:
            raise KetasimError("theta", f"{k!r} is not a parameter of model {model}")
        ratio = theta.get(k, card.parameters[k].value) / card.parameters[k].value
        iiv[k] = ratio * np.exp(rng.normal(0.0, omega_sd.get(k, 0.0), n))
    t = np.asarray(times_h, dtype=float)
    res = simulate_pk(regimen, t, drug=card.drug, model=model,
                      covariates=Covariates(weight_kg=w), iiv=iiv, amounts=False)
    em = ErrorModel(error)
    outs = [("plasma", res.plasma_ng_per_ml[res.parent])]
    if metabolite:
        sp = next(k for k in res.plasma_ng_per_ml if k != res.parent)
        outs.append(("metabolite", res.plasma_ng_per_ml[sp]))
    subs = []
    noise = {q: rng.standard_normal((n, len(t))) for q, _ in outs}
    # each quantity's σ: the plain keys, replaced by that quantity's own where given
    sig_q = {q: {**{k: v for k, v in sigma.items() if k in SIGMA_BASE},
                 **{b: sigma[f"{b}_{q}"] for b in SIGMA_BASE if f"{b}_{q}" in sigma}}
             for q, _ in outs}
    for i in range(n):
        obs = []
        for q, c in outs:
            f = c[i]
            y = f + np.sqrt(em.variance(f, sig_q[q])) * noise[q][i]
            if lloq is None:
                obs += [(float(a), float(b), q) for a, b in zip(t, y, strict=True)]
            else:
                obs += [(float(a), float(lloq), q, 1) if b < lloq else (float(a), float(b), q, 0)
                        for a, b in zip(t, y, strict=True)]
        obs.sort(key=lambda o: o[0])
        subs.append({"id": i + 1, "regimen": regimen, "weight_kg": float(w[i]), "obs": obs})
    df: pd.DataFrame = to_csv_table(subs)
    # the realised individual parameters (card units), for checks against the truth
    df.attrs["individual"] = {k: (card.parameters[k].value * v).tolist() for k, v in iiv.items()}
    return df
