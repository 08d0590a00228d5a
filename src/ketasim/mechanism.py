"""Mechanism: NMDA receptor block per neuronal population → signalling → synapses.

Equations (time in hours, blocker concentrations in µM free brain, other states normalised so
that 1 is the drug-free baseline unless stated):

Receptor block (module :mod:`ketasim.receptor` for the constants), for population p and
blocker j, with total block ``B_p = Σ_j b_pj``::

    db_pj/dt = kon·C_j·Po_p·(1 − B_p)/m_pj − (kon·Kd0_j·Po_p + kesc_j·(1 − Po_p))·b_pj

with ``m_pj = 1 + mgc_j·[Mg]/K_Mg(V_p)`` the Mg2+ competition factor (apparent Kd = Kd0·m).

Populations: ``E2B`` (pyramidal, GluN2B, tonic), ``Esyn`` (pyramidal, spontaneous synaptic),
``I`` (interneuron, GluN2C/2D-rich), ``H`` (lateral habenula; Po rises with bursting).

Hypothesis branches, each weighted by ``w_a … w_f`` (:class:`Hypotheses`; 0 = off, 1 = on,
up to 10 amplifies; the targets of (a) and (c) are kept ≥ 0, which binds only for weights
above 1: a kinase activity or firing rate below zero has no meaning):

(a) ``dK/dt = ((1 − w_a·B_Esyn)⁺ − K)/τ_K`` (eEF2K activity); ``dpE/dt = k_K·K·(1 − pE) −
    k_PP·pE`` (phospho-eEF2); BDNF translation ``T = 1 + w_a·((1 − pE)/(1 − pE0) − 1)``.
(b) GluN2B brake relief ``u_b = w_b·B_E2B`` (``w_b·ρ_del`` after GluN2B deletion, ρ_del the
calibrated sustained relief on the interventions card) drives mTORC1.
(c) ``r_I = (1 − B_I)^n_I``; target pyramidal rate ``(1 + w_c·[(1 + g_dis(1 − r_I))(1 −
    ζ·B_Esyn)⁺ − 1])⁺``; ``dr_E/dt`` and ``dG/dt`` relax with τ_r, τ_G (glutamate ``G``).
(d) AMPA drive ``A = (1 + (G − Q) + w_d·E_HNK·C_HNK/(EC50 + C_HNK))·(1 − NBQX)``, where
    ``dQ/dt = (G − Q)/τ_Q`` is a slowly adapting glutamate reference (sustained rises fade).
(e) ``dR_b/dt = ((1 − B_H/θ_H)⁺^h_H − R_b)/τ_b`` (LHb bursting stops once
    block exceeds θ_H; bursting opens LHb channels, ``Po_H = Po_H,rest + π·R_b``).
(f) spine formation from synaptic proteins through two maturation stages, weighted by w_f.

Shared downstream: ``dBDNF/dt = k_BDNF·(T·(1 − aniso) − BDNF)``; release ``R = BDNF·A``;
TrkB ``dX/dt = (R(1+K_T)/(K_T+R)·(1 − trkb) − X)/τ_T``; mTORC1 ``dM/dt = k_M·(D/Z^κ)^h_M·(1 −
rapa)·(1 − M) − k_Moff·M`` with drive ``D = X·(1 + g_b·u_b)·A`` (TrkB gates the GluN2B
relief) and negative feedback ``dZ/dt = (M/M0 − Z)/τ_Z`` (S6K → upstream feedback, partial for
κ < 1); synaptic proteins ``dP/dt =
((1 + k_P(M/M0 − 1))(1 − aniso) − P)/τ_P``; precursors ``dN1/dt = (β·w_f·(P − 1)⁺ − N1)/τ_mat``,
``dN2/dt = (N1 − N2)/τ_mat``; spines ``dS/dt = (1 + N2·(1 − spine block) − S)/τ_S``;
synaptic strength ``W = S·P^q``.

Readouts: p-eEF2 (``pE/pE0``), BDNF, TrkB, mTORC1 (``M/M0``), synaptic proteins, spine density,
synaptic strength, glutamate, LHb burst rate, and forced-swim immobility (rodents)
``I0·(1 − E_fast·w_e·(1 − R_b)⁺ − E_syn·(W − 1))`` (clipped to [0, 2·I0]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
from numba import njit

from .cards import load_param_card
from .errors import KetasimError

POPULATIONS = ("E2B", "Esyn", "I", "H")
HYPOTHESES = {
    "a": "rest block → eEF2K ↓ → eEF2 dephosphorylation → BDNF translation ↑",
    "b": "cortical GluN2B receptors tonically brake mTORC1; block lifts the brake",
    "c": "disinhibition: interneuron block → glutamate surge → AMPA receptors",
    "d": "hydroxynorketamine → AMPA receptors without NMDA block",
    "e": "lateral habenula burst firing suppressed by trapped block",
    "f": "new spines carry the sustained effect",
}
#: blocker species → (Kd0 parameter, escape parameter, Mg-competition parameter or None)
BLOCKERS = {
    "ketamine": ("Kd0_ketamine", "kesc_ketamine", None),
    "esketamine": ("Kd0_esketamine", "kesc_ketamine", None),
    "s-ketamine": ("Kd0_esketamine", "kesc_ketamine", None),
    "r-ketamine": ("Kd0_arketamine", "kesc_ketamine", None),
    "norketamine": ("Kd0_norketamine", "kesc_ketamine", None),
    "noresketamine": ("Kd0_noresketamine", "kesc_ketamine", None),
    "memantine": ("Kd0_memantine", "kesc_memantine", "mgc_memantine"),
    "hnk": ("Kd0_hnk", "kesc_ketamine", None),
}
STATE_NAMES = ("eef2k", "p_eef2", "pyramidal_rate", "glutamate", "bdnf", "trkb", "mtorc1",
               "synaptic_proteins", "precursor1", "precursor2", "spine_density", "lhb_burst",
               "mtor_feedback", "glutamate_reference")


@dataclass(frozen=True)
class Hypotheses:
    """Weights of the hypothesis branches (0 = off, 1 = on); defaults from the card."""

    a: float = 1.0
    b: float = 1.0
    c: float = 1.0
    d: float = 0.0
    e: float = 1.0
    f: float = 1.0

    def __post_init__(self) -> None:
        for h in HYPOTHESES:
            w = getattr(self, h)
            if isinstance(w, bool) or not isinstance(w, int | float | np.number) \
                    or not 0.0 <= w <= 10.0:
                raise KetasimError("hypotheses", f"weight of {h} must be a number 0..10, got "
                                   f"{w!r}")

    @classmethod
    def default(cls) -> Hypotheses:
        """The default weights, from the ``hypotheses`` card."""
        card = load_param_card("hypotheses")
        return cls(**{h: card.value(f"w_{h}") for h in HYPOTHESES})

    @classmethod
    def parse(cls, text: str | None) -> Hypotheses:
        """``"default"``, ``"a,b,f"`` (only these on), ``"only:c"``, or ``"a=0.5,d=1"``
        (changes to the default)."""
        if text is not None and not isinstance(text, str):
            raise KetasimError("hypotheses", f"must be text such as 'a,b,f', got {text!r}")
        if text is None or text.strip() in ("", "default"):
            return cls.default()
        t = text.strip().replace(" ", "")
        if t.startswith("only:"):
            names = t[5:].split(",")
            _check_names(names)
            return cls(**{h: float(h in names) for h in HYPOTHESES})
        if "=" in t:
            out = cls.default()
            for item in t.split(","):
                name, _, val = item.partition("=")
                _check_names([name])
                try:
                    w = float(val)
                except ValueError as exc:
                    raise KetasimError("hypotheses", f"weight {val!r} is not a number") from exc
                if not 0.0 <= w <= 10.0:
                    raise KetasimError("hypotheses", f"weight of {name} must be 0..10")
                out = replace(out, **{name: w})
            return out
        names = t.split(",")
        _check_names(names)
        return cls(**{h: float(h in names) for h in HYPOTHESES})

    def as_dict(self) -> dict[str, float]:
        """``{branch: weight}`` for the six branches."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_names(names: list[str]) -> None:
    for n in names:
        if n not in HYPOTHESES:
            raise KetasimError("hypotheses", f"unknown hypothesis {n!r}", ", ".join(HYPOTHESES))


INTERVENTIONS = {
    "glun2b-deletion": "cortical GluN2B deletion (tonic brake lifted; sustained relief calibrated)",
    "eef2k-knockout": "eEF2 kinase knockout",
    "bdnf-knockout": "BDNF knockout (no BDNF synthesis)",
    "trkb-block": "TrkB receptor block",
    "rapamycin": "mTORC1 inhibitor (acute, around the first dose)",
    "anisomycin": "protein-synthesis inhibitor (acute, around the first dose)",
    "nbqx": "AMPA receptor antagonist (acute, around the first dose)",
    "spine-blockade": "new spine formation prevented",
    "mg": "extracellular Mg2+ changed: mg=<mM>",
}


@dataclass(frozen=True)
class Interventions:
    """Composable interventions by name (see :data:`INTERVENTIONS`)."""

    names: tuple[str, ...] = ()
    mg_mM: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not all(isinstance(n, str) for n in self.names):
            raise KetasimError("interventions", "names must be a tuple of strings")
        for n in self.names:
            if n not in INTERVENTIONS or n == "mg":
                raise KetasimError("interventions", f"unknown intervention {n!r}",
                                   ", ".join(INTERVENTIONS))
        if self.mg_mM is not None and not (isinstance(self.mg_mM, int | float)
                                           and 0.0 <= self.mg_mM <= 20.0):
            raise KetasimError("interventions", "mg must be within 0–20 mM")

    @classmethod
    def parse(cls, items: str | list[str] | tuple[str, ...] | None) -> Interventions:
        """Parse ``rapamycin,mg=0.5`` or a list of names; ``mg=<mM>`` sets extracellular
        Mg2+ (0–20 mM)."""
        if not items:
            return cls()
        if isinstance(items, str):
            items = [x for x in items.replace(" ", "").split(",") if x]
        names, mg = [], None
        for it in items:
            if not isinstance(it, str):
                raise KetasimError("interventions", f"must be names, got {it!r}",
                                   ", ".join(INTERVENTIONS))
            if it.startswith("mg="):
                try:
                    mg = float(it[3:])
                except ValueError as exc:
                    raise KetasimError("interventions", f"cannot read {it!r}", "mg=<mM>") from exc
                if not 0.0 <= mg <= 20.0:
                    raise KetasimError("interventions", "mg must be within 0–20 mM")
                continue
            if it not in INTERVENTIONS or it == "mg":
                raise KetasimError("interventions", f"unknown intervention {it!r}",
                                   ", ".join(INTERVENTIONS))
            names.append(it)
        return cls(tuple(sorted(set(names))), mg)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def label(self) -> str:
        """Short label such as ``rapamycin+mg=0.5`` (``none`` when empty)."""
        parts = list(self.names) + ([f"mg={self.mg_mM:g}"] if self.mg_mM is not None else [])
        return "+".join(parts) or "none"


@dataclass
class MechanismParams:
    """All mechanism constants as plain floats (internal units: h, µM, mM, mV)."""

    r: dict[str, float]
    s: dict[str, float]
    iv: dict[str, float]
    hyp: Hypotheses
    intv: Interventions
    blockers: tuple[str, ...]
    kd0: np.ndarray = field(init=False)
    kesc: np.ndarray = field(init=False)
    mgc: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        for b in self.blockers:
            if b not in BLOCKERS:
                raise KetasimError("blocker", f"no receptor card entry for {b!r}",
                                   ", ".join(BLOCKERS))
        self.kd0 = np.array([self.r[BLOCKERS[b][0]] for b in self.blockers])
        self.kesc = np.array([self.r[BLOCKERS[b][1]] for b in self.blockers])
        self.mgc = np.array([self.r[BLOCKERS[b][2]] if BLOCKERS[b][2] else 1.0
                             for b in self.blockers])

    @classmethod
    def from_cards(cls, blockers: tuple[str, ...], hyp: Hypotheses | None = None,
                   intv: Interventions | None = None,
                   overrides: dict[str, float] | None = None) -> MechanismParams:
        """Constants from the receptor, signalling and interventions cards for the given
        blockers, with optional ``overrides`` by parameter name (card units)."""
        r = {k: v.value for k, v in load_param_card("receptor").parameters.items()}
        s = {k: v.value for k, v in load_param_card("signalling").parameters.items()}
        iv = {k: v.value for k, v in load_param_card("interventions").parameters.items()}
        for k, v in (overrides or {}).items():
            if k not in r and k not in s:
                raise KetasimError("parameter", f"unknown mechanism parameter {k!r}")
            card_value = r[k] if k in r else s[k]
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise KetasimError("overrides", f"{k}: must be a number, got {v!r}") from None
            if not math.isfinite(v) or (card_value >= 0 > v):
                raise KetasimError("overrides", f"{k}: must be finite"
                                   + (" and ≥ 0 (the card value is)" if card_value >= 0 else "")
                                   + f", got {v!r}")
            (r if k in r else s)[k] = v
        return cls(r, s, iv, hyp or Hypotheses.default(), intv or Interventions(), blockers)

    # ------------------------------------------------------------------ derived constants
    def mg_matrix(self) -> np.ndarray:
        """Mg2+ competition factor ``1 + mgc·[Mg]/K_Mg(V)`` per population and blocker.

        Mg2+ occupying the pore slows ketamine's entry by this factor (apparent Kd =
        Kd0 × factor); the blocker's exit from open channels is unaffected."""
        r = self.r
        mg = self.intv.mg_mM if self.intv.mg_mM is not None else r["Mg_mM"]
        volts = {"E2B": r["V_pyramidal"], "Esyn": r["V_pyramidal"], "I": r["V_interneuron"],
                 "H": r["V_lhb"]}
        out = np.zeros((len(POPULATIONS), len(self.blockers)))
        for i, p in enumerate(POPULATIONS):
            kmg = r["K_Mg0_mM"] * np.exp(r["gamma_Mg"] * volts[p])
            if p == "I":
                kmg *= r["s_Mg_interneuron"]
            out[i] = 1.0 + self.mgc * mg / kmg
        return out

    def n_states(self) -> int:
        """Number of mechanism states: one LHb block per blocker plus the signalling states."""
        return len(self.blockers) + len(STATE_NAMES)

    def anchored(self, first_dose_h: float) -> MechanismParams:
        """A copy whose acute intervention window (rapamycin, anisomycin, NBQX: the
        interventions card's ``drug_window_start_h`` to ``drug_window_end_h``, h) is counted
        from the first dose at ``first_dose_h`` (h) rather than from t = 0: pretreatment
        before the first dose, as in the single-dose inhibitor studies."""
        if first_dose_h == 0.0:
            return self
        iv = dict(self.iv)
        iv["drug_window_start_h"] += first_dose_h
        iv["drug_window_end_h"] += first_dose_h
        return replace(self, iv=iv)

    def packed(self) -> np.ndarray:
        """All constants as one float array for the compiled right-hand side."""
        r, s, iv, h, intv = self.r, self.s, self.iv, self.hyp, self.intv
        win = any(n in intv for n in ("rapamycin", "anisomycin", "nbqx"))
        vals = {
            "kon": r["kon"], "Po_E2B": r["Po_E2B"], "Po_Esyn": r["Po_Esyn"], "Po_I": r["Po_I"],
            "Po_H_rest": r["Po_H_rest"], "pi_H": r["pi_H"], "kesc_lhb": r["kesc_lhb_factor"],
            **{k: s[k] for k in _SIG_KEYS},
            "w_a": h.a, "w_b": h.b, "w_c": h.c, "w_d": h.d, "w_e": h.e, "w_f": h.f,
            "ko_eef2k": float("eef2k-knockout" in intv),
            "del_2b": iv["glun2b_deletion_relief"] if "glun2b-deletion" in intv else 0.0,
            "ko_bdnf": float("bdnf-knockout" in intv),
            "trkb": iv["trkb_inhibition"] if "trkb-block" in intv else 0.0,
            "rapa": iv["rapamycin_inhibition"] if "rapamycin" in intv else 0.0,
            "aniso": iv["anisomycin_inhibition"] if "anisomycin" in intv else 0.0,
            "nbqx": iv["nbqx_inhibition"] if "nbqx" in intv else 0.0,
            "spine_block": iv["spine_block_fraction"] if "spine-blockade" in intv else 0.0,
            "win_start": iv["drug_window_start_h"] if win else -1e30,
            "win_end": iv["drug_window_end_h"] if win else 1e30,
            "hnk_index": float(self.blockers.index("hnk")) if "hnk" in self.blockers else -1.0,
        }
        return np.array([vals[k] for k in _PACK], dtype=float)

    def blocker_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Kd0 µM, escape rate 1/h, Mg factor per population × blocker)."""
        return self.kd0.copy(), self.kesc.copy(), self.mg_matrix()

    def baseline(self) -> np.ndarray:
        """Drug-free steady state (genetic interventions settle to their new steady state)."""
        y = np.zeros(self.n_states())
        nb = len(self.blockers)
        s = self.s
        m = dict(zip(STATE_NAMES, range(nb, nb + len(STATE_NAMES)), strict=True))
        ko = "eef2k-knockout" in self.intv
        y[m["eef2k"]] = 0.0 if ko else 1.0
        y[m["p_eef2"]] = 0.0 if ko else s["pE0"]
        for k in ("pyramidal_rate", "glutamate", "lhb_burst", "bdnf", "trkb",
                  "synaptic_proteins", "spine_density", "mtor_feedback",
                  "glutamate_reference"):
            y[m[k]] = 1.0
        y[m["mtorc1"]] = s["M0"]
        if any(n in self.intv for n in ("glun2b-deletion", "eef2k-knockout", "bdnf-knockout",
                                        "trkb-block")):
            y = self._settle(y)
        return y

    def _settle(self, y: np.ndarray) -> np.ndarray:
        """Integrate drug-free for 60 days so genetic changes reach their new steady state."""
        from scipy.integrate import odeint

        zero = np.zeros(len(self.blockers))
        kd0, kesc, mgf = self.blocker_arrays()
        pk = self.packed()
        sol = odeint(lambda yy, t: rhs_nb(t, yy, zero, kd0, kesc, mgf, pk),
                     y, [0.0, 1440.0], rtol=1e-8, atol=1e-10, mxstep=200000)
        return sol[-1]


_SIG_KEYS = ("tau_K", "k_PP", "pE0", "g_b", "n_I", "g_dis", "zeta", "tau_r", "tau_G", "E_HNK",
             "EC50_HNK", "k_BDNF", "tau_T", "K_T", "k_Moff", "M0", "h_M", "tau_P", "k_P",
             "tau_mat", "beta", "tau_S", "q", "tau_b", "h_H", "theta_H", "tau_Z", "kappa_Z",
             "tau_Q")
_PACK = ("kon", "Po_E2B", "Po_Esyn", "Po_I", "Po_H_rest", "pi_H", "kesc_lhb", *_SIG_KEYS,
         "w_a", "w_b", "w_c", "w_d", "w_e", "w_f", "ko_eef2k", "del_2b", "ko_bdnf", "trkb",
         "rapa", "aniso", "nbqx", "spine_block", "win_start", "win_end", "hnk_index")
_I = {k: i for i, k in enumerate(_PACK)}


@njit(cache=True, error_model="numpy")
def qss_block(conc, kd0, kesc, mg_row, kon, po):
    """Quasi-steady-state block of a fast population by several competing blockers.

    Solves ``on_j (1 − Σb) = off_j b_j`` with ``on_j = kon·C_j·Po/m_j`` and ``off_j =
    kon·Kd0_j·Po + kesc_j(1 − Po)``: ``b_j = (on_j/off_j)/(1 + Σ_k on_k/off_k)``.
    """
    n = conc.shape[0]
    ratio = np.empty(n)
    tot = 0.0
    for j in range(n):
        on = kon * max(conc[j], 0.0) * po / mg_row[j]
        off = kon * kd0[j] * po + kesc[j] * (1.0 - po)
        ratio[j] = on / off
        tot += ratio[j]
    return ratio / (1.0 + tot)


@njit(cache=True, error_model="numpy", inline="always")
def qss_total(conc, kd0, kesc, mg_row, kon, po):
    """Total quasi-steady-state block ``Σ_j b_j`` of :func:`qss_block`, without allocating."""
    tot = 0.0
    for j in range(conc.shape[0]):
        on = kon * max(conc[j], 0.0) * po / mg_row[j]
        off = kon * kd0[j] * po + kesc[j] * (1.0 - po)
        tot += on / off
    return tot / (1.0 + tot)


@njit(cache=True, inline="always", error_model="numpy")
def _pow(x, e):
    """``x ** e`` for ``x ≥ 0``, with the exponents the cards use (1, 2, 0.5) as a product or a
    square root (the same value to the last bit or so, a fraction of the cost of ``pow``)."""
    if e == 2.0:
        return x * x
    if e == 1.0:
        return x
    if e == 0.5:
        return np.sqrt(x)
    return x ** e


@njit(cache=True, error_model="numpy")
def rhs_nb(t, y, conc, kd0, kesc, mgf, P):
    """Compiled right-hand side (1/h).

    ``y`` = [LHb block per blocker, 12 signalling states (:data:`STATE_NAMES`)]; ``conc`` free
    brain µM per blocker; ``mgf`` Mg2+ factors (4 populations × blockers); ``P`` packed
    constants (:meth:`MechanismParams.packed`).
    """
    dy = np.empty_like(y)
    rhs_into(t, y, conc, kd0, kesc, mgf, P, dy)
    return dy


@njit(cache=True, error_model="numpy")
def rhs_into(t, y, conc, kd0, kesc, mgf, P, dy):
    """:func:`rhs_nb` writing into ``dy`` (no allocation; the reference definition of the
    equations, used by the LSODA reference and by the batched engine; :func:`rhs_lanes` is its
    lane-vectorised twin, pinned to it bit for bit in tests/test_batch_lanes.py: change both)."""
    nb = conc.shape[0]
    kon = P[0]
    bE2B = qss_total(conc, kd0, kesc, mgf[0], kon, P[1])
    bEsyn = qss_total(conc, kd0, kesc, mgf[1], kon, P[2])
    bI = qss_total(conc, kd0, kesc, mgf[2], kon, P[3])
    K, pE, rE, G, BD, X = y[nb], y[nb + 1], y[nb + 2], y[nb + 3], y[nb + 4], y[nb + 5]
    M, Pp, N1, N2, S, Rb = y[nb + 6], y[nb + 7], y[nb + 8], y[nb + 9], y[nb + 10], y[nb + 11]
    Z = y[nb + 12]
    Qg = y[nb + 13]
    # lateral habenula: slow, trapped block kept as an ODE (Po rises with bursting)
    BH = 0.0
    for j in range(nb):
        BH += y[j]
    poH = P[4] + P[5] * max(Rb, 0.0)
    free = min(max(1.0 - BH, 0.0), 1.0)
    for j in range(nb):
        dy[j] = (kon * max(conc[j], 0.0) / mgf[3, j] * poH * free
                 - (kon * kd0[j] * poH + P[6] * kesc[j] * (1.0 - poH)) * y[j])
    BH = min(max(BH, 0.0), 1.0)
    o = 7
    tau_K, k_PP, pE0, g_b, n_I = P[o], P[o + 1], P[o + 2], P[o + 3], P[o + 4]
    g_dis, zeta, tau_r, tau_G = P[o + 5], P[o + 6], P[o + 7], P[o + 8]
    E_HNK, EC50_HNK, k_BDNF, tau_T, K_T = P[o + 9], P[o + 10], P[o + 11], P[o + 12], P[o + 13]
    k_Moff, M0, h_M, tau_P, k_P = P[o + 14], P[o + 15], P[o + 16], P[o + 17], P[o + 18]
    tau_mat, beta, tau_S = P[o + 19], P[o + 20], P[o + 21]
    tau_b, h_H, theta_H = P[o + 23], P[o + 24], P[o + 25]
    tau_Z, kappa_Z, tau_Q = P[o + 26], P[o + 27], P[o + 28]
    o = 7 + 29
    w_a, w_b, w_c, w_d, w_f = P[o], P[o + 1], P[o + 2], P[o + 3], P[o + 5]
    ko_eef2k, del_2b, ko_bdnf, trkb = P[o + 6], P[o + 7], P[o + 8], P[o + 9]
    win = 1.0 if (P[o + 14] <= t < P[o + 15]) else 0.0
    rapa, aniso, nbqx, sblock = P[o + 10] * win, P[o + 11] * win, P[o + 12] * win, P[o + 13]
    hnk_i = int(P[o + 16])
    # (a) rest block → eEF2K → p-eEF2 → BDNF translation
    if ko_eef2k > 0.5:
        dK = -K / tau_K
        kK = 0.0
    else:
        dK = (max(1.0 - w_a * bEsyn, 0.0) - K) / tau_K
        kK = k_PP * pE0 / (1.0 - pE0)
    dpE = kK * K * (1.0 - pE) - k_PP * pE
    T = 1.0 + w_a * ((1.0 - pE) / (1.0 - pE0) - 1.0)
    # (b) GluN2B tonic brake on mTORC1
    u_b = w_b * (del_2b if del_2b > 0.0 else bE2B)
    # (c) disinhibition → pyramidal firing → glutamate
    r_I = _pow(max(1.0 - bI, 0.0), n_I)
    target = (1.0 + g_dis * (1.0 - r_I)) * max(1.0 - zeta * bEsyn, 0.0)
    dr = (max(1.0 + w_c * (target - 1.0), 0.0) - rE) / tau_r
    dG = (rE - G) / tau_G
    # (d) HNK → AMPA
    a_hnk = 0.0
    if hnk_i >= 0:
        c = max(conc[hnk_i], 0.0)
        a_hnk = E_HNK * c / (EC50_HNK + c)
    # AMPA drive: the glutamate rise above a slowly adapting reference (sustained rises fade)
    A = max(1.0 + (G - Qg) + w_d * a_hnk, 0.0) * (1.0 - nbqx)
    dQ = (G - Qg) / tau_Q
    # shared downstream
    syn = 0.0 if ko_bdnf > 0.5 else T * (1.0 - aniso)
    dBD = k_BDNF * (syn - BD)
    R = max(BD, 0.0) * A
    dX = (R * (1.0 + K_T) / (K_T + R) * (1.0 - trkb) - X) / tau_T
    D = max(X, 0.0) * (1.0 + g_b * u_b) * A
    kM = k_Moff * M0 / (1.0 - M0)
    dM = kM * _pow(D / _pow(max(Z, 1e-6), kappa_Z), h_M) * (1.0 - rapa) * (1.0 - M) - k_Moff * M
    dZ = (M / M0 - Z) / tau_Z
    dP = ((1.0 + k_P * (M / M0 - 1.0)) * (1.0 - aniso) - Pp) / tau_P
    # (f) spines through two maturation stages
    dN1 = (beta * w_f * max(Pp - 1.0, 0.0) - N1) / tau_mat
    dN2 = (N1 - N2) / tau_mat
    dS = (1.0 + N2 * (1.0 - sblock) - S) / tau_S
    # (e) LHb bursting stops once block exceeds theta_H
    drive_h = max(1.0 - BH / theta_H, 0.0)
    dRb = (_pow(drive_h, h_H) - Rb) / tau_b
    dy[nb] = dK
    dy[nb + 1] = dpE
    dy[nb + 2] = dr
    dy[nb + 3] = dG
    dy[nb + 4] = dBD
    dy[nb + 5] = dX
    dy[nb + 6] = dM
    dy[nb + 7] = dP
    dy[nb + 8] = dN1
    dy[nb + 9] = dN2
    dy[nb + 10] = dS
    dy[nb + 11] = dRb
    dy[nb + 12] = dZ
    dy[nb + 13] = dQ



@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _pow_lanes(w, src, e, dst):
    """``w[dst, ln] = _pow(w[src, ln], e)`` for every lane (one loop per exponent case, so the
    common cases compile to vector code; rows indexed, not viewed: a view's reference count is
    an atomic operation)."""
    n = w.shape[1]
    if e == 2.0:
        for ln in range(n):
            w[dst, ln] = w[src, ln] * w[src, ln]
    elif e == 1.0:
        for ln in range(n):
            w[dst, ln] = w[src, ln]
    elif e == 0.5:
        for ln in range(n):
            w[dst, ln] = np.sqrt(w[src, ln])
    else:
        for ln in range(n):
            w[dst, ln] = w[src, ln] ** e


@njit(cache=True, nogil=True, error_model="numpy")
def rhs_lanes(t, y, conc, kd0, kesc, mgf, P, dy, w):
    """:func:`rhs_into` for several patients ("lanes") at once, lane index innermost so the
    compiler emits vector code: ``t`` (L,), ``y`` (ny, L), ``conc`` (blockers, L), ``dy``
    (ny, L), ``w`` a work array (≥ 12, L).

    The same equations, and per lane the same floating-point operations in the same order, as
    :func:`rhs_into` (the tests pin the two bit for bit for every hypothesis and intervention
    switch): a change to one must be made in the other."""
    nb = conc.shape[0]
    L = y.shape[1]
    kon = P[0]
    # rows of w: 0–2 block of E2B, Esyn, I; 3 B_H; 4 r_I; 5 Z^κ; 6 LHb drive^h_H; 7 HNK drive;
    # 8 D/Z^κ; 9 its power; 10 scratch
    # quasi-steady-state block of the three fast populations (qss_total)
    for q in range(3):
        po = P[1 + q]
        for ln in range(L):
            w[q, ln] = 0.0
        for j in range(nb):
            off = kon * kd0[j] * po + kesc[j] * (1.0 - po)
            m = mgf[q, j]
            for ln in range(L):
                w[q, ln] += kon * max(conc[j, ln], 0.0) * po / m / off
        for ln in range(L):
            w[q, ln] = w[q, ln] / (1.0 + w[q, ln])
    # lateral habenula block per blocker
    for ln in range(L):
        w[3, ln] = 0.0
    for j in range(nb):
        for ln in range(L):
            w[3, ln] += y[j, ln]
    p4, p5, p6 = P[4], P[5], P[6]
    for j in range(nb):
        mj = mgf[3, j]
        kdj = kon * kd0[j]
        kej = p6 * kesc[j]
        for ln in range(L):
            poH = p4 + p5 * max(y[nb + 11, ln], 0.0)
            free = min(max(1.0 - w[3, ln], 0.0), 1.0)
            dy[j, ln] = (kon * max(conc[j, ln], 0.0) / mj * poH * free
                         - (kdj * poH + kej * (1.0 - poH)) * y[j, ln])
    o = 7
    tau_K, k_PP, pE0, g_b, n_I = P[o], P[o + 1], P[o + 2], P[o + 3], P[o + 4]
    g_dis, zeta, tau_r, tau_G = P[o + 5], P[o + 6], P[o + 7], P[o + 8]
    E_HNK, EC50_HNK, k_BDNF, tau_T, K_T = P[o + 9], P[o + 10], P[o + 11], P[o + 12], P[o + 13]
    k_Moff, M0, h_M, tau_P, k_P = P[o + 14], P[o + 15], P[o + 16], P[o + 17], P[o + 18]
    tau_mat, beta, tau_S = P[o + 19], P[o + 20], P[o + 21]
    tau_b, h_H, theta_H = P[o + 23], P[o + 24], P[o + 25]
    tau_Z, kappa_Z, tau_Q = P[o + 26], P[o + 27], P[o + 28]
    o = 7 + 29
    w_a, w_b, w_c, w_d, w_f = P[o], P[o + 1], P[o + 2], P[o + 3], P[o + 5]
    ko_eef2k, del_2b, ko_bdnf, trkb = P[o + 6], P[o + 7], P[o + 8], P[o + 9]
    w0, w1 = P[o + 14], P[o + 15]
    rapa0, aniso0, nbqx0, sblock = P[o + 10], P[o + 11], P[o + 12], P[o + 13]
    hnk_i = int(P[o + 16])
    # the powers (card exponents), each as its own loop
    for ln in range(L):
        w[10, ln] = max(1.0 - w[2, ln], 0.0)
    _pow_lanes(w, 10, n_I, 4)
    for ln in range(L):
        w[10, ln] = max(y[nb + 12, ln], 1e-6)
    _pow_lanes(w, 10, kappa_Z, 5)
    for ln in range(L):
        w[10, ln] = max(1.0 - min(max(w[3, ln], 0.0), 1.0) / theta_H, 0.0)
    _pow_lanes(w, 10, h_H, 6)
    if hnk_i >= 0:
        for ln in range(L):
            c = max(conc[hnk_i, ln], 0.0)
            w[7, ln] = E_HNK * c / (EC50_HNK + c)
    else:
        for ln in range(L):
            w[7, ln] = 0.0
    ko = ko_eef2k > 0.5
    kK = 0.0 if ko else k_PP * pE0 / (1.0 - pE0)
    kM = k_Moff * M0 / (1.0 - M0)
    has_del = del_2b > 0.0
    no_bdnf = ko_bdnf > 0.5
    for ln in range(L):
        win = 1.0 if (w0 <= t[ln] < w1) else 0.0
        aniso = aniso0 * win
        nbqx = nbqx0 * win
        bE2B, bEsyn = w[0, ln], w[1, ln]
        K, pE, rE, G = y[nb, ln], y[nb + 1, ln], y[nb + 2, ln], y[nb + 3, ln]
        BD, X, M, Pp = y[nb + 4, ln], y[nb + 5, ln], y[nb + 6, ln], y[nb + 7, ln]
        N1, N2, S, Rb = y[nb + 8, ln], y[nb + 9, ln], y[nb + 10, ln], y[nb + 11, ln]
        Z, Qg = y[nb + 12, ln], y[nb + 13, ln]
        dK = -K / tau_K if ko else (max(1.0 - w_a * bEsyn, 0.0) - K) / tau_K
        dpE = kK * K * (1.0 - pE) - k_PP * pE
        T = 1.0 + w_a * ((1.0 - pE) / (1.0 - pE0) - 1.0)
        u_b = w_b * (del_2b if has_del else bE2B)
        target = (1.0 + g_dis * (1.0 - w[4, ln])) * max(1.0 - zeta * bEsyn, 0.0)
        dr = (max(1.0 + w_c * (target - 1.0), 0.0) - rE) / tau_r
        dG = (rE - G) / tau_G
        A = max(1.0 + (G - Qg) + w_d * w[7, ln], 0.0) * (1.0 - nbqx)
        dQ = (G - Qg) / tau_Q
        syn = 0.0 if no_bdnf else T * (1.0 - aniso)
        dBD = k_BDNF * (syn - BD)
        R = max(BD, 0.0) * A
        dX = (R * (1.0 + K_T) / (K_T + R) * (1.0 - trkb) - X) / tau_T
        D = max(X, 0.0) * (1.0 + g_b * u_b) * A
        w[8, ln] = D / w[5, ln]
        dZ = (M / M0 - Z) / tau_Z
        dP = ((1.0 + k_P * (M / M0 - 1.0)) * (1.0 - aniso) - Pp) / tau_P
        dN1 = (beta * w_f * max(Pp - 1.0, 0.0) - N1) / tau_mat
        dN2 = (N1 - N2) / tau_mat
        dS = (1.0 + N2 * (1.0 - sblock) - S) / tau_S
        dRb = (w[6, ln] - Rb) / tau_b
        dy[nb, ln] = dK
        dy[nb + 1, ln] = dpE
        dy[nb + 2, ln] = dr
        dy[nb + 3, ln] = dG
        dy[nb + 4, ln] = dBD
        dy[nb + 5, ln] = dX
        dy[nb + 7, ln] = dP
        dy[nb + 8, ln] = dN1
        dy[nb + 9, ln] = dN2
        dy[nb + 10, ln] = dS
        dy[nb + 11, ln] = dRb
        dy[nb + 12, ln] = dZ
        dy[nb + 13, ln] = dQ
    _pow_lanes(w, 8, h_M, 9)
    for ln in range(L):
        win = 1.0 if (w0 <= t[ln] < w1) else 0.0
        M = y[nb + 6, ln]
        dy[nb + 6, ln] = kM * w[9, ln] * (1.0 - rapa0 * win) * (1.0 - M) - k_Moff * M

@njit(cache=True, nogil=True, error_model="numpy")
def jac_into(t, y, conc, kd0, kesc, mgf, P, J):
    """Analytic Jacobian ``∂f/∂y`` (1/h) of :func:`rhs_into` into the leading block of ``J``.

    Every entry of the structural pattern is written at each call (zeros included, where a
    ``max(·, 0)`` is inactive); the other entries of ``J`` are left alone. At the kinks of the
    right-hand side the one-sided derivative of the active branch is used. Pinned to finite
    differences of :func:`rhs_nb` in the tests."""
    nb = conc.shape[0]
    kon = P[0]
    bE2B = qss_total(conc, kd0, kesc, mgf[0], kon, P[1])
    iK, ipE, irE, iG, iBD, iX = nb, nb + 1, nb + 2, nb + 3, nb + 4, nb + 5
    iM, iP, iN1, iN2, iS, iRb = nb + 6, nb + 7, nb + 8, nb + 9, nb + 10, nb + 11
    iZ, iQ = nb + 12, nb + 13
    pE, G, BD, X = y[ipE], y[iG], y[iBD], y[iX]
    M, Pp, Rb, Z, Qg = y[iM], y[iP], y[iRb], y[iZ], y[iQ]
    K = y[iK]
    # lateral habenula block (one state per blocker) and bursting
    BH = 0.0
    for j in range(nb):
        BH += y[j]
    rb_on = 1.0 if Rb > 0.0 else 0.0
    poH = P[4] + P[5] * max(Rb, 0.0)
    free = min(max(1.0 - BH, 0.0), 1.0)
    dfree = -1.0 if 0.0 < 1.0 - BH < 1.0 else 0.0
    for j in range(nb):
        on = kon * max(conc[j], 0.0) / mgf[3, j]
        for k in range(nb):
            J[j, k] = on * poH * dfree
        J[j, j] -= kon * kd0[j] * poH + P[6] * kesc[j] * (1.0 - poH)
        J[j, iRb] = rb_on * P[5] * (on * free - (kon * kd0[j] - P[6] * kesc[j]) * y[j])
    o = 7
    tau_K, k_PP, pE0, g_b = P[o], P[o + 1], P[o + 2], P[o + 3]
    tau_r, tau_G = P[o + 7], P[o + 8]
    k_BDNF, tau_T, K_T = P[o + 11], P[o + 12], P[o + 13]
    k_Moff, M0, h_M, tau_P, k_P = P[o + 14], P[o + 15], P[o + 16], P[o + 17], P[o + 18]
    tau_mat, beta, tau_S = P[o + 19], P[o + 20], P[o + 21]
    tau_b, h_H, theta_H = P[o + 23], P[o + 24], P[o + 25]
    tau_Z, kappa_Z, tau_Q = P[o + 26], P[o + 27], P[o + 28]
    E_HNK, EC50_HNK = P[o + 9], P[o + 10]
    o = 7 + 29
    w_a, w_b, w_d, w_f = P[o], P[o + 1], P[o + 3], P[o + 5]
    ko_eef2k, del_2b, ko_bdnf, trkb = P[o + 6], P[o + 7], P[o + 8], P[o + 9]
    win = 1.0 if (P[o + 14] <= t < P[o + 15]) else 0.0
    rapa, aniso, nbqx, sblock = P[o + 10] * win, P[o + 11] * win, P[o + 12] * win, P[o + 13]
    hnk_i = int(P[o + 16])
    # (a) eEF2K → p-eEF2 → BDNF translation
    kK = 0.0 if ko_eef2k > 0.5 else k_PP * pE0 / (1.0 - pE0)
    J[iK, iK] = -1.0 / tau_K
    J[ipE, iK] = kK * (1.0 - pE)
    J[ipE, ipE] = -kK * K - k_PP
    dT_dpE = -w_a / (1.0 - pE0)
    # (c) pyramidal rate and glutamate
    J[irE, irE] = -1.0 / tau_r
    J[iG, irE] = 1.0 / tau_G
    J[iG, iG] = -1.0 / tau_G
    a_hnk = 0.0
    if hnk_i >= 0:
        c = max(conc[hnk_i], 0.0)
        a_hnk = E_HNK * c / (EC50_HNK + c)
    araw = 1.0 + (G - Qg) + w_d * a_hnk
    A = max(araw, 0.0) * (1.0 - nbqx)
    dA_dG = (1.0 - nbqx) if araw > 0.0 else 0.0
    J[iQ, iG] = 1.0 / tau_Q
    J[iQ, iQ] = -1.0 / tau_Q
    # shared downstream
    dsyn_dpE = 0.0 if ko_bdnf > 0.5 else dT_dpE * (1.0 - aniso)
    J[iBD, ipE] = k_BDNF * dsyn_dpE
    J[iBD, iBD] = -k_BDNF
    bdp = max(BD, 0.0)
    R = bdp * A
    gp = (1.0 + K_T) * K_T / ((K_T + R) * (K_T + R)) * (1.0 - trkb) / tau_T
    J[iX, iBD] = gp * (A if BD > 0.0 else 0.0)
    J[iX, iG] = gp * bdp * dA_dG
    J[iX, iQ] = -gp * bdp * dA_dG
    J[iX, iX] = -1.0 / tau_T
    u_b = w_b * (del_2b if del_2b > 0.0 else bE2B)
    gain = 1.0 + g_b * u_b
    xp = max(X, 0.0)
    D = xp * gain * A
    kM = k_Moff * M0 / (1.0 - M0)
    zc = max(Z, 1e-6)
    zk = _pow(zc, kappa_Z)
    q = D / zk
    F = _pow(q, h_M)
    dF_dq = h_M * _pow(q, h_M - 1.0)
    cM = kM * (1.0 - rapa) * (1.0 - M) * dF_dq
    J[iM, iX] = cM / zk * (gain * A if X > 0.0 else 0.0)
    J[iM, iG] = cM / zk * xp * gain * dA_dG
    J[iM, iQ] = -cM / zk * xp * gain * dA_dG
    J[iM, iM] = -kM * F * (1.0 - rapa) - k_Moff
    J[iM, iZ] = -cM * kappa_Z * q / zc if Z > 1e-6 else 0.0
    J[iZ, iM] = 1.0 / (M0 * tau_Z)
    J[iZ, iZ] = -1.0 / tau_Z
    J[iP, iM] = k_P * (1.0 - aniso) / (M0 * tau_P)
    J[iP, iP] = -1.0 / tau_P
    # (f) spines
    J[iN1, iP] = beta * w_f / tau_mat if Pp > 1.0 else 0.0
    J[iN1, iN1] = -1.0 / tau_mat
    J[iN2, iN1] = 1.0 / tau_mat
    J[iN2, iN2] = -1.0 / tau_mat
    J[iS, iN2] = (1.0 - sblock) / tau_S
    J[iS, iS] = -1.0 / tau_S
    # (e) LHb bursting
    bhc = min(max(BH, 0.0), 1.0)
    drive_h = max(1.0 - bhc / theta_H, 0.0)
    dd = 0.0
    if drive_h > 0.0 and 0.0 < BH < 1.0:
        dd = -h_H * _pow(drive_h, h_H - 1.0) / theta_H / tau_b
    for k in range(nb):
        J[iRb, k] = dd
    J[iRb, iRb] = -1.0 / tau_b

@njit(cache=True)
def combined_rhs(t, y, Kbig, rate, f_blk, f_idx, f_scale, nblk, kd0, kesc, mgf, packed):
    """PK (linear, ``Kbig @ x + rate``) and mechanism together; free brain µM of blocker
    ``f_blk[i]`` is ``f_scale[i] × y[f_idx[i]]`` (kept in this module so numba's cache is
    invalidated together with :func:`rhs_nb`)."""
    n_pk = Kbig.shape[0]
    dy = np.empty_like(y)
    dy[:n_pk] = Kbig @ y[:n_pk] + rate
    conc = np.zeros(nblk)
    for i in range(f_blk.shape[0]):
        conc[f_blk[i]] += f_scale[i] * max(y[f_idx[i]], 0.0)
    dy[n_pk:] = rhs_nb(t, y[n_pk:], conc, kd0, kesc, mgf, packed)
    return dy


def fast_blocks(conc: np.ndarray, p: MechanismParams) -> dict[str, np.ndarray]:
    """Quasi-steady-state block of the fast populations for concentrations (blockers, T);
    the vectorised form of :func:`qss_block`."""
    kd0, kesc, mgf = p.blocker_arrays()
    r = p.r
    out = {}
    c = np.maximum(conc, 0.0)
    for i, (pop, po) in enumerate((("E2B", r["Po_E2B"]), ("Esyn", r["Po_Esyn"]),
                                   ("I", r["Po_I"]))):
        on = r["kon"] * c * po / mgf[i][:, None]
        off = (r["kon"] * kd0 * po + kesc * (1.0 - po))[:, None]
        ratio = on / off
        b = ratio / (1.0 + ratio.sum(axis=0))
        out[f"block_{pop}"] = b.sum(axis=0)
        for j, bl in enumerate(p.blockers):
            out[f"block_{pop}_{bl}"] = b[j]
    return out


#: readouts given relative to the drug-free baseline (1 = no change)
_FOLD_READOUTS = frozenset({"p_eef2", "eef2k", "glutamate", "pyramidal_rate", "bdnf", "trkb",
                            "mtorc1", "synaptic_proteins", "spine_density",
                            "synaptic_strength", "lhb_burst"})


def readout_unit(name: str) -> str:
    """The unit of a named output column or readout (those of :func:`readouts`, the time
    courses' concentrations and the experiments' derived readouts); ``""`` if unknown."""
    if name == "time_h":
        return "h"
    if name.startswith("block_"):
        return "fraction blocked (0-1)"
    if name in ("fst_immobility", "fst_immobility_compensated"):
        return "s"
    if name.endswith("_within_genotype"):
        return "× genotype's vehicle"
    if name.endswith("_ng_per_ml"):
        return "ng/mL"
    if name.endswith("_uM"):
        return "µM"
    if name.endswith("_percent"):
        return "% change from vehicle"
    return "× baseline" if name in _FOLD_READOUTS else ""


def readouts(y: np.ndarray, conc: np.ndarray, p: MechanismParams) -> dict[str, np.ndarray]:
    """Named readouts from states ``y`` (n_states, T) and free concentrations (blockers, T);
    normalised to baseline = 1 unless stated (block fractions 0–1, immobility in s)."""
    nbk = len(p.blockers)
    st = dict(zip(STATE_NAMES, y[nbk:], strict=True))
    s = p.s
    out: dict[str, np.ndarray] = fast_blocks(conc, p)
    out["block_H"] = np.clip(y[:nbk].sum(axis=0), 0.0, 1.0)
    for j, bl in enumerate(p.blockers):
        out[f"block_H_{bl}"] = np.clip(y[j], 0.0, 1.0)
    out["p_eef2"] = st["p_eef2"] / s["pE0"]
    out["eef2k"] = st["eef2k"]
    out["glutamate"] = st["glutamate"]
    out["pyramidal_rate"] = st["pyramidal_rate"]
    out["bdnf"] = st["bdnf"]
    out["trkb"] = st["trkb"]
    out["mtorc1"] = st["mtorc1"] / s["M0"]
    out["synaptic_proteins"] = st["synaptic_proteins"]
    out["spine_density"] = st["spine_density"]
    out["synaptic_strength"] = st["spine_density"] * np.maximum(st["synaptic_proteins"],
                                                                0.0) ** s["q"]
    out["lhb_burst"] = st["lhb_burst"]
    out["fst_immobility"] = fst_immobility_of(st["lhb_burst"], out["synaptic_strength"], p)
    return out


def fst_immobility_of(lhb_burst: np.ndarray | float, synaptic_strength: np.ndarray | float,
                      p: MechanismParams, baseline_s: float | None = None) -> np.ndarray:
    """Forced-swim immobility (s) from the LHb burst rate and the synaptic strength, both
    relative to their drug-free value (1 = no change), with ``W`` the synaptic strength:
    ``clip(I_0·(1 − E_fast·w_e·(1 − lhb_burst)⁺ − E_syn·(W − 1)), 0, 2·fst_immobility0)``.

    ``baseline_s`` (s) is the immobility with no change, ``I_0``; by default the signalling
    card's ``fst_immobility0`` (the ``fst_immobility`` readout). The clip stays at 0 and
    2 × ``fst_immobility0`` whatever the baseline. The experiments' compensated-genotype
    readout passes the wild-type vehicle immobility and ratios to the genotype's own vehicle
    arm (:func:`ketasim.experiments.compensated_readouts`)."""
    s = p.s
    i0 = s["fst_immobility0"] if baseline_s is None else baseline_s
    eff = (s["fst_E_fast"] * p.hyp.e * np.maximum(1.0 - lhb_burst, 0.0)
           + s["fst_E_syn"] * (synaptic_strength - 1.0))
    return np.clip(i0 * (1.0 - eff), 0.0, 2.0 * s["fst_immobility0"])
