"""Documentation generated from the code and the cards.

* :func:`model_page` – the model page (``docs/model.md``): every state and equation of every
  stage in LaTeX (PK per model and route, generated from the PK cards' structure; brain, receptor,
  hypothesis branches, downstream chain, readouts, mood and side effects, written out here from
  the equations stated in the module docstrings of :mod:`ketasim.mechanism`,
  :mod:`ketasim.mood` and :mod:`ketasim.pk.model`, which are quoted verbatim beside them) and a
  parameter table per card: value, units, evidence tag, source (PMID/DOI linked) and what it was
  derived from, calibrated to or why it was assumed.
* :func:`cli_reference` – the command-line reference, walked from the typer app.
* :func:`api_modules` – the public modules for the Python API reference (mkdocstrings).

The model page is committed; ``tests/test_docs.py`` fails when it differs from a fresh
:func:`model_page` (regenerate with ``ketasim docs model --out docs/model.md``).
"""

from __future__ import annotations

import html
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

from .cards import (
    Param,
    PKCard,
    card_versions,
    load_drugs,
    load_param_cards,
    load_pk_cards,
)

#: placeholder sources that do not count as a source
PLACEHOLDER_SOURCES = {"tbd", "todo", "none", "unknown", "n/a", "na", "?", "-", "xxx"}

#: LaTeX symbol per mechanism / clinic parameter name (fallback: the name in roman type)
SYMBOLS: dict[str, str] = {
    # brain
    "fu_ketamine": r"f_{u,\mathrm{K}}", "fu_norketamine": r"f_{u,\mathrm{NK}}",
    "fu_memantine": r"f_{u,\mathrm{mem}}",
    # receptor
    "kon": r"k_{on}", "Kd0_ketamine": r"K_{d0,\mathrm{K}}",
    "Kd0_esketamine": r"K_{d0,\mathrm{S}}", "Kd0_arketamine": r"K_{d0,\mathrm{R}}",
    "Kd0_norketamine": r"K_{d0,\mathrm{NK}}", "Kd0_noresketamine": r"K_{d0,\mathrm{NSK}}",
    "Kd0_memantine": r"K_{d0,\mathrm{mem}}", "Kd0_hnk": r"K_{d0,\mathrm{HNK}}",
    "kesc_ketamine": r"k_{esc,\mathrm{K}}", "kesc_memantine": r"k_{esc,\mathrm{mem}}",
    "kesc_lhb_factor": r"\phi_{esc,H}", "mgc_memantine": r"c_{Mg,\mathrm{mem}}",
    "Mg_mM": r"[\mathrm{Mg}^{2+}]", "K_Mg0_mM": r"K_{Mg,0}", "gamma_Mg": r"\gamma_{Mg}",
    "s_Mg_interneuron": r"s_{Mg,I}", "V_pyramidal": r"V_E", "V_interneuron": r"V_I",
    "V_lhb": r"V_H", "Po_E2B": r"P_{o,E2B}", "Po_Esyn": r"P_{o,Esyn}", "Po_I": r"P_{o,I}",
    "Po_H_rest": r"P_{o,H,rest}", "pi_H": r"\pi_H",
    # signalling
    "tau_K": r"\tau_K", "k_PP": r"k_{PP}", "pE0": r"pE_0", "g_b": r"g_b", "n_I": r"n_I",
    "g_dis": r"g_{dis}", "zeta": r"\zeta", "tau_r": r"\tau_r", "tau_G": r"\tau_G",
    "E_HNK": r"E_{HNK}", "EC50_HNK": r"EC_{50,HNK}", "k_BDNF": r"k_{BDNF}", "tau_T": r"\tau_T",
    "K_T": r"K_T", "k_Moff": r"k_{M,off}", "M0": r"M_0", "h_M": r"h_M", "tau_P": r"\tau_P",
    "k_P": r"k_P", "tau_mat": r"\tau_{mat}", "beta": r"\beta", "tau_S": r"\tau_S", "q": r"q",
    "tau_b": r"\tau_b", "h_H": r"h_H", "fst_E_fast": r"E_{fast}", "fst_E_syn": r"E_{syn}",
    "fst_immobility0": r"I_0", "theta_H": r"\theta_H", "tau_Z": r"\tau_Z",
    "kappa_Z": r"\kappa", "tau_Q": r"\tau_Q",
    # hypotheses
    **{f"w_{h}": f"w_{h}" for h in "abcdef"},
    # interventions
    "rapamycin_inhibition": r"\rho_{rapa}", "anisomycin_inhibition": r"\rho_{aniso}",
    "nbqx_inhibition": r"\rho_{NBQX}", "trkb_inhibition": r"\rho_{TrkB}",
    "glun2b_deletion_relief": r"\rho_{del}",
    "spine_block_fraction": r"\rho_{spine}", "drug_window_start_h": r"t_{win,0}",
    "drug_window_end_h": r"t_{win,1}",
    # clinic
    "pk_iiv_cv": r"\omega_{PK}", "madrs_baseline_trd": r"B_{TRD}",
    "madrs_baseline_mdd": r"B_{MDD}", "madrs_baseline_bipolar": r"B_{bip}",
    "madrs_baseline_sd": r"\sigma_B", "placebo_saline": r"P_{saline}",
    "placebo_active": r"P_{active}", "placebo_tau_h": r"\tau_p", "placebo_decay_d": r"\tau_{fade}",
    "placebo_iiv_sd": r"\omega_P", "drug_emax": r"E", "drug_emax_iiv_sd": r"\omega_E",
    "drive50": r"h_{50}", "a_fast": r"a_{fast}", "a_proteins": r"a_{P}", "a_spines": r"a_{S}",
    "k_mood": r"k_{mood}", "k_mood_slow": r"k_{mood,slow}", "consolidation_gain": r"g_c",
    "consolidation_threshold": r"\theta_c", "consolidation_tau_d": r"\tau_c",
    "consolidation_cap": r"C_{max}", "suicidality_cap": r"s_{max}",
    "priming_tau_d": r"\tau_\pi",
    "esketamine_clinical_factor": r"f_{S}",
    # uncertainty (validation scorecard)
    "calibrated_transformed_sd": r"\sigma_{\theta}",
    "bipolar_fast_factor": r"f_d", "ad_background_max": r"A",
    "ad_background_tau_d": r"\tau_{AD}", "residual_sd": r"\sigma",
    "hamd17_per_madrs": r"c_{17}", "hamd6_per_madrs": r"c_{6}", "item10_baseline": r"B_{10}",
    "ssi_baseline": r"B_{SSI}", "suicidality_gain": r"g", "suicidality_residual_sd": r"\sigma_s",
    "cadss_emax": r"E_{CADSS}", "cadss_ec50_ng_per_ml": r"EC_{50,C}", "cadss_hill": r"\gamma_C",
    "cadss_ec50_iiv_sd": r"\omega_C", "placebo_session": r"X",
    "placebo_session_tau_h": r"\tau_x", "placebo_active_decay_d": r"\tau_A",
    "sbp_per_ng_ml": r"s_{SBP}", "bprs_per_ng_ml": r"s_{BPRS}",
    "sedation_per_ng_ml": r"s_{sed}", "midazolam_sedation_peak": r"S_{mdz}",
    "midazolam_half_life_h": r"t_{1/2,mdz}", "esketamine_potency_factor": r"\pi_{S}",
}

_HEADER = """# Model reference

<!-- GENERATED by `ketasim docs model --out docs/model.md` from src/ketasim/cards/**.yaml and
the module docstrings. Do not edit by hand: tests/test_docs.py fails when this page is stale. -->

!!! warning "Research tool, not medical advice"
    ketasim simulates how ketamine may act in depression for research and teaching. Nothing
    here is a dosing recommendation.

This page is generated from the code and the parameter cards. Every parameter of every card
appears in a table with its value, units, **evidence tag** and **source**:

| tag | meaning |
|---|---|
| `read` | the number is in the cited paper (or a named public transcription of it) |
| `derived` | computed from read values; the note says how |
| `calibrated` | fitted by ketasim to data in `shared/literature/calibration`; note: to what |
| `assumed` | a guess; the note says why |

Internal units: time in hours, amounts in mg, volumes in L, plasma concentrations in mg/L
(reported as ng/mL), free brain concentrations in µM, voltages in mV, Mg²⁺ in mM. States of the
mechanism are normalised so that 1 is the drug-free baseline unless stated.

The pipeline: **regimen → PK (plasma, metabolites, effect site) → free brain concentration →
NMDA receptor block per neuronal population → hypothesis branches (a)–(f) → BDNF/TrkB/mTORC1 →
synaptic proteins, spines → mood scores and side effects.**
"""


# ----------------------------------------------------------------------------- helpers
def _md_escape(text: str) -> str:
    """Escape text for a Markdown table cell (pipes, HTML, emphasis markers, math dollars)."""
    t = html.escape(str(text), quote=False).replace("|", r"\|").replace("\n", " ")
    return re.sub(r"([*_`$\\\[\]])", r"\\\1", t.replace("\\|", "\x00")).replace("\x00", r"\|")


def _linkify(text: str) -> str:
    """Escaped text with PMIDs and DOIs turned into links."""
    out = _md_escape(text)
    out = re.sub(r"(PMID:?\s*)(\d{6,9})",
                 lambda m: f"[{m.group(1)}{m.group(2)}](https://pubmed.ncbi.nlm.nih.gov/"
                           f"{m.group(2)}/)", out)

    def doi(m: re.Match) -> str:
        raw = m.group(2).replace("\\", "").rstrip(".,;:)")
        tail = m.group(2)[len(m.group(2).rstrip(".,;:)")):]
        return f"[{m.group(1)}{_md_escape(raw)}](https://doi.org/{raw}){tail}"

    return re.sub(r"(doi:?\s*)(10\.\d{4,9}/[^\s\]]+)", doi, out, flags=re.IGNORECASE)


def _fmt(v: float) -> str:
    """A parameter value as written on the card (no rounding beyond 6 significant digits)."""
    return f"{v:.6g}"


def symbol(name: str) -> str:
    """LaTeX symbol of a parameter (:data:`SYMBOLS`, else a generic rendering of the name)."""
    if name in SYMBOLS:
        return SYMBOLS[name]
    m = re.fullmatch(r"k([a-z]*\d*)(?:_(\w+))?", name)  # ka_im, ke0, kel → k_{a,im}, k_{e0}
    if m and m.group(1):
        sub = m.group(1)
        if m.group(2):
            sub += r",\mathrm{" + m.group(2).replace("_", r"\_") + "}"
        return f"k_{{{sub}}}"
    m = re.fullmatch(r"([A-Za-z]+?)(\d+)", name)
    if m:
        base, sub = m.groups()
        base = base if len(base) == 1 else rf"\mathrm{{{base}}}"
        return f"{base}_{{{sub}}}"
    if "_" in name:
        base, rest = name.split("_", 1)
        base = base if len(base) == 1 else rf"\mathrm{{{base}}}"
        rest = rest.replace("_", r"\_")
        return rf"{base}_{{\mathrm{{{rest}}}}}"
    return name if len(name) == 1 else rf"\mathrm{{{name}}}"


def _note_col(p: Param) -> str:
    label = {"read": "", "derived": "derived: ", "calibrated": "calibrated to: ",
             "assumed": "assumed: "}[p.evidence]
    return (_md_escape(label) + _linkify(p.note)) if p.note else ""


def param_table(params: dict[str, Param], card_label: str) -> str:
    """Markdown table of a card's parameters."""
    rows = ["| parameter | symbol | value | units | evidence | source | derivation / calibration "
            "target / reason |", "|---|---|---|---|---|---|---|"]
    for name, p in params.items():
        extra = []
        if p.scaling:
            extra.append(f"scaled (W/{p.scaling.get('reference_kg', 70):g} kg)^"
                         f"{p.scaling.get('exponent', 1):g}")
        if p.iiv_cv is not None:
            extra.append(f"IIV CV {p.iiv_cv:g}")
        note = _note_col(p)
        if extra:
            note = (note + " " if note else "") + _md_escape("; ".join(extra))
        rows.append(f"| `{name}` | ${symbol(name)}$ | {_fmt(p.value)} | {_md_escape(p.units)} | "
                    f"`{p.evidence}` | {_linkify(p.source)} | {note} |")
    return f"Card `{card_label}`:\n\n" + "\n".join(rows) + "\n"


def _docstring_block(obj, title: str) -> str:
    doc = inspect.getdoc(obj) or ""
    body = "\n".join("    " + line if line else "" for line in doc.splitlines())
    return f'??? quote "{title}"\n    ```text\n{body}\n    ```\n'


# ----------------------------------------------------------------------------- PK
def _tex_comp(name: str) -> str:
    return r"A_{\text{" + name.replace("_", r"\_") + "}}"


def _tex_factor(f: str) -> str:
    return f"(1-{symbol(f[2:])})" if f.startswith("1-") else symbol(f)


def _flow_rate(card: PKCard, f) -> str:
    comps = {c.name: c for c in card.compartments}
    if f.rate is not None:
        k = symbol(f.rate)
    else:
        k = rf"\frac{{{symbol(f.clearance)}}}{{{symbol(comps[f.source].volume)}}}"
    factors = "".join(r"\," + _tex_factor(x) for x in f.fraction)
    return k + factors


def pk_equations(card: PKCard) -> str:
    """LaTeX ODEs of a PK card's compartments, generated from its flows and routes."""
    lines = []
    for c in card.compartments:
        terms = []
        for f in card.flows:
            if f.to == c.name:
                terms.append(f"+ {_flow_rate(card, f)}\\,{_tex_comp(f.source)}")
        for f in card.flows:
            if f.source == c.name:
                terms.append(f"- {_flow_rate(card, f)}\\,{_tex_comp(c.name)}")
        dosed = [r for r, route in card.routes.items() if any(i.to == c.name for i in
                                                                route.inputs)]
        if dosed:
            terms.append(r"+ u_{\text{" + c.name.replace("_", r"\_") + "}}(t)")
        rhs = " ".join(terms).lstrip("+ ") if terms else "0"
        if rhs.startswith("- "):
            rhs = "-" + rhs[2:]
        lines.append(rf"\frac{{d{_tex_comp(c.name)}}}{{dt}} &= {rhs}")
    if card.effect_site:
        es = card.effect_site
        vol = next(c.volume for c in card.compartments if c.name == es.of)
        lines.append(rf"\frac{{dC_e}}{{dt}} &= {symbol(es.ke0)}\left(\frac{{{_tex_comp(es.of)}}}"
                     rf"{{{symbol(vol)}}} - C_e\right)")
    return "$$\n\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}\n$$\n"


def _route_lines(card: PKCard) -> str:
    rows = ["| route | input | note |", "|---|---|---|"]
    for rname, r in card.routes.items():
        parts = []
        for i in r.inputs:
            frac = r"\,".join(_tex_factor(x) for x in i.fraction)
            dur = rf", zero-order over ${symbol(i.duration)}$" if i.duration else ""
            target = i.to.replace("_", r"\_")
            pre = frac + r"\cdot" if frac else ""
            parts.append(rf"${pre}\mathrm{{dose}} \to \text{{{target}}}${dur}")
        rows.append(f"| `{rname}` | {'; '.join(parts)} | {_md_escape(r.note)} |")
    return "\n".join(rows) + "\n"


def pk_section(card: PKCard) -> str:
    """The model page section of one PK card."""
    refs = []
    if card.pmid:
        refs.append(f"[PMID {card.pmid}](https://pubmed.ncbi.nlm.nih.gov/{card.pmid}/)")
    if card.doi:
        refs.append(f"[doi {card.doi}](https://doi.org/{card.doi})")
    refs += [f"<{u}>" for u in card.urls]
    pop = card.population
    range_note = "; " + _md_escape(pop.range_note) if pop.range_note else ""
    out = [f"### `{card.id}` — {_md_escape(card.title)}\n",
           f"*{_md_escape(card.citation)}*" + (f" ({'; '.join(refs)})" if refs else "") + "\n",
           f"- drug: **{card.drug}**, species: {card.species}, sampling: {card.sampling}"
           + (f", default for: {', '.join(card.default_for)}" if card.default_for else ""),
           f"- studied population: {_md_escape(pop.description)}; age {pop.age_years[0]:g}–"
           f"{pop.age_years[1]:g} y, weight {pop.weight_kg[0]:g}–{pop.weight_kg[1]:g} kg "
           f"(range `{pop.range_evidence}`{range_note})"]
    if card.transcription:
        out.append(f"- transcription: {_md_escape(card.transcription)}")
    out.append("")
    species = ", ".join(f"{c.name} ({c.species})" for c in card.compartments)
    out.append(f"States (amounts, mg parent-equivalent): {_md_escape(species)}"
               + ("; effect-site concentration $C_e$ (mg/L)." if card.effect_site else ".")
               + "\n")
    out.append(pk_equations(card))
    out.append("Dosing by route (bolus doses enter as an impulse, infusions as a constant "
               "rate $u = \\mathrm{dose}/T_{inf}$):\n")
    out.append(_route_lines(card))
    extra = []
    for cv in card.covariates:
        p = symbol(cv.parameter)
        if cv.effect == "linear_above":
            cov = cv.covariate.replace("_", r"\_")
            extra.append(rf"- ${p} \leftarrow {p} + {symbol(cv.slope)}\cdot\max(0, "
                         rf"\mathrm{{{cov}}} - {cv.threshold:g})$")
        else:
            extra.append(rf"- ${p} \leftarrow {p}\cdot{symbol(cv.factor)}$ if "
                         f"{cv.covariate} = {cv.equals}")
    if card.nasal_devices:
        nd = card.nasal_devices
        extra.append(rf"- nasal fraction per dose ${symbol(nd.name)} = {symbol(nd.base)}\cdot"
                     rf"\frac{{1 + (n-1)\,{symbol(nd.later_device_factor)}}}{{n}}$, "
                     rf"$n = \max(1, \mathrm{{dose}}/{symbol(nd.device_mg)})$")
    if card.enantiomers:
        en = card.enantiomers
        el = symbol(en.elimination_parameter) if en.elimination_parameter else "elimination"
        extra.append(rf"- enantiomers: each gets half of a racemic dose; ${el}$ is multiplied "
                     rf"by ${symbol(en.s_factor)}$ (S) and ${symbol(en.r_factor)}$ (R)")
    scaled = [n for n, p in card.parameters.items() if p.scaling]
    if scaled:
        extra.append(r"- weight scaling $P = P_{ref}\,(W/W_{ref})^{e}$ for "
                     + ", ".join(f"${symbol(n)}$" for n in scaled))
    if extra:
        out.append("Covariates and special inputs:\n\n" + "\n".join(extra) + "\n")
    if card.notes:
        out.append("Notes:\n\n" + "\n".join(f"- {_md_escape(n)}" for n in card.notes) + "\n")
    out.append(param_table(card.parameters, f"pk/{card.id}"))
    return "\n".join(out)


# ----------------------------------------------------------------------------- mechanism
_BRAIN_EQ = r"""
$$
C_{free,j}(t) = \frac{f_{u,j}\; C_{p,j}(t)}{MW_j}
\qquad\text{(µM; ng/mL ÷ g/mol)},\qquad
C_{p,\mathrm{K}} \to C_e \text{ for ketamine (effect site, } k_{e0}\text{)}
$$
"""

_RECEPTOR_EQ = r"""
For population $p \in \{E2B, Esyn, I, H\}$ and blocker $j$, with total block
$B_p = \sum_j b_{pj}$:

$$
\frac{db_{pj}}{dt} = \frac{k_{on}\,C_j\,P_{o,p}\,(1 - B_p)}{m_{pj}}
  - \left(k_{on}\,K_{d0,j}\,P_{o,p} + k_{esc,j}\,(1 - P_{o,p})\right) b_{pj},
\qquad
m_{pj} = 1 + \frac{c_{Mg,j}\,[\mathrm{Mg}^{2+}]}{K_{Mg}(V_p)}
$$

$$
K_{Mg}(V) = K_{Mg,0}\, e^{\gamma_{Mg} V}\quad(\times\, s_{Mg,I}\text{ for interneurons})
$$

The fast populations ($E2B$, $Esyn$, $I$) are at quasi-steady state:

$$
b_{pj} = \frac{\mathrm{on}_j/\mathrm{off}_j}{1 + \sum_k \mathrm{on}_k/\mathrm{off}_k},\qquad
\mathrm{on}_j = \frac{k_{on} C_j P_{o,p}}{m_{pj}},\quad
\mathrm{off}_j = k_{on} K_{d0,j} P_{o,p} + k_{esc,j}(1-P_{o,p})
$$

The lateral habenula block $b_{Hj}$ is a state (slow, trapped), with escape scaled by
$\phi_{esc,H}$ and open probability rising with bursting: $P_{o,H} = P_{o,H,rest} + \pi_H R_b$.
Memantine competes with Mg²⁺ ($c_{Mg,\mathrm{mem}}$); the ketamines use $c_{Mg} = 1$.
"""

_HYPOTHESES_EQ = {
    "a": r"""
$$
\frac{dK}{dt} = \frac{(1 - w_a B_{Esyn})^+ - K}{\tau_K},\qquad
\frac{dpE}{dt} = k_K\,K\,(1 - pE) - k_{PP}\,pE,\quad k_K = \frac{k_{PP}\,pE_0}{1 - pE_0},\qquad
T = 1 + w_a\left(\frac{1 - pE}{1 - pE_0} - 1\right)
$$
""",
    "b": r"""
$$
u_b = w_b\, B_{E2B}\quad(u_b = w_b\,\rho_{del} \text{ after GluN2B deletion})
$$
""",
    "c": r"""
$$
r_I = (1 - B_I)^{n_I},\qquad
\frac{dr_E}{dt} = \frac{\left(1 + w_c\left[(1 + g_{dis}(1 - r_I))\,(1 - \zeta B_{Esyn})^+
  - 1\right]\right)^+ - r_E}{\tau_r},\qquad
\frac{dG}{dt} = \frac{r_E - G}{\tau_G}
$$
""",
    "d": r"""
$$
A = \left(1 + (G - Q) + w_d\,\frac{E_{HNK}\,C_{HNK}}{EC_{50,HNK} + C_{HNK}}\right)^{+}
  (1 - \rho_{NBQX}),\qquad
\frac{dQ}{dt} = \frac{G - Q}{\tau_Q}
$$
""",
    "e": r"""
$$
\frac{dR_b}{dt} = \frac{\left[(1 - B_H/\theta_H)^{+}\right]^{h_H} - R_b}{\tau_b},\qquad
P_{o,H} = P_{o,H,rest} + \pi_H R_b
$$
""",
    "f": r"""
$$
\frac{dN_1}{dt} = \frac{\beta\,w_f\,(P - 1)^{+} - N_1}{\tau_{mat}},\qquad
\frac{dN_2}{dt} = \frac{N_1 - N_2}{\tau_{mat}}
$$
""",
}

_DOWNSTREAM_EQ = r"""
$$
\begin{aligned}
\frac{d\mathrm{BDNF}}{dt} &= k_{BDNF}\left(T\,(1 - \rho_{aniso}) - \mathrm{BDNF}\right),
  \qquad R = \mathrm{BDNF}\cdot A \\
\frac{dX}{dt} &= \frac{\frac{R\,(1 + K_T)}{K_T + R}\,(1 - \rho_{TrkB}) - X}{\tau_T} \\
D &= X\,(1 + g_b\,u_b)\,A \\
\frac{dM}{dt} &= k_M \left(\frac{D}{Z^{\kappa}}\right)^{h_M} (1 - \rho_{rapa})\,(1 - M)
  - k_{M,off}\,M,\qquad k_M = \frac{k_{M,off} M_0}{1 - M_0} \\
\frac{dZ}{dt} &= \frac{M/M_0 - Z}{\tau_Z} \\
\frac{dP}{dt} &= \frac{\left(1 + k_P\,(M/M_0 - 1)\right)(1 - \rho_{aniso}) - P}{\tau_P} \\
\frac{dS}{dt} &= \frac{1 + N_2\,(1 - \rho_{spine}) - S}{\tau_S},\qquad W = S\,P^{q}
\end{aligned}
$$

Acute inhibitors ($\rho_{rapa}$, $\rho_{aniso}$, $\rho_{NBQX}$) act only inside the drug window
$t_{win,0} \le t < t_{win,1}$; genetic interventions (GluN2B deletion, eEF2K and BDNF
knockouts, TrkB block) are permanent and the baseline is re-settled for 60 days before dosing.
"""

_READOUTS_EQ = r"""
Readouts (normalised to baseline unless stated): p-eEF2 $pE/pE_0$, BDNF, TrkB $X$, mTORC1
$M/M_0$, synaptic proteins $P$, spine density $S$, synaptic strength $W = S P^q$, glutamate $G$,
LHb burst rate $R_b$ and, in rodents, forced-swim immobility (s):

$$
\mathrm{FST} = \mathrm{clip}\left(I_0\left(1 - E_{fast}\,w_e\,(1 - R_b)^{+}
  - E_{syn}\,(W - 1)\right),\ 0,\ 2 I_0\right)
$$
"""

_MOOD_EQ = r"""
For patient $i$ at time $t$ (h after the first dose):

$$
\begin{aligned}
h(t) &= f_d\,w_e\,a_{fast}\,(1 - R_b)^{+} + a_P\,(P - 1)^{+} + a_S\,(S - 1)^{+} \\
\frac{dh_e}{dt} &= k\,(h - h_e),\qquad k = k_{mood}\ \text{(fast term)},\;
  k_{mood,slow}\ \text{(synaptic terms)} \\
d_0 &= \frac{E_i\,h_e}{h_{50} + h_e},\qquad
  E_i = \mathrm{logistic}(\mathrm{logit}(E) + \omega_E\,\eta_{E,i}) \\
\frac{d\pi}{dt} &= \frac{h_{e,f}/(h_{50} + h_{e,f}) - \pi}{\tau_\pi},\qquad
  h_{e,f}:\ \text{the fast-term part of } h_e \\
\frac{dC}{dt} &= \frac{g_c\,d_0\,(\pi - \theta_c)^{+} - C}{\tau_c},\qquad
  d = 1 - (1 - d_0)(1 - \min(C, C_{max})) \\
p(t) &= 1 - \left(1 - P_i\,o(t)\,e^{-t/\tau_{fade}}\right)
  \left(1 - X_i\,o(t)\,e^{-t/\tau_x}\right)\left(1 - \alpha\,Q_i\,o(t)\,e^{-t/\tau_A}\right),
  \qquad o(t) = 1 - e^{-t/\tau_p} \\
P_i &= \mathrm{logistic}(\mathrm{logit}(P_{saline}) + \omega_P\,\eta_{P,i}),\
  X_i = \mathrm{logistic}(\mathrm{logit}(X) + \omega_P\,\eta_{P,i}),\
  Q_i = \mathrm{logistic}(\mathrm{logit}(P_{active}) + \omega_P\,\eta_{P,i}) \\
a(t) &= A\,(1 - e^{-t/\tau_{AD}}) \\
\mathrm{MADRS}_i(t) &= \mathrm{clip}\left(B_i\,(1 - p)(1 - d)(1 - a) + \varepsilon,\ 0,\ 60\right),
  \qquad \varepsilon \sim N(0, \sigma^2) \\
\mathrm{HAMD}_{17} &= c_{17}\,\mathrm{MADRS},\qquad \mathrm{HAMD}_6 = c_6\,\mathrm{MADRS} \\
\text{item 10} &= \mathrm{clip}\left(B_{10}\,[(1 - p)\,(1 - \min(g\,d, s_{max}))\,(1 - a)
  + \sigma_s\,\varepsilon_s],\ 0,\ 6\right) \\
\mathrm{SSI} &= \mathrm{clip}\left(B_{SSI}\,[(1 - p)\,(1 - \min(g\,d, s_{max}))\,(1 - a)
  + \sigma_s\,\varepsilon_s],\ 0,\ 38\right),\qquad \varepsilon_s \sim N(0, 1)\ \text{per visit}
\end{aligned}
$$

- $h$: the drive from the synaptic state — LHb burst suppression (hours), synaptic proteins
  (days), spines (sustained); $f_d$ is the disorder factor (bipolar > 1), $w_e$ the weight of
  hypothesis (e), as in the forced-swim readout. $h_e$: the drive
  after the effect compartments (exact for piecewise-linear $h$).
- $d_0$: direct drug effect (fraction of the baseline score) with a logit-normal maximum
  $E_i$ (for esketamine arms $h_e$ is multiplied by the calibrated $f_S$); $\pi$: priming,
  a slow trace of the acute drive that counts recent doses; $C$: consolidation, building
  while $\pi > \theta_c$ (a series, not one dose) and fading after the last dose.
- $p$: placebo/expectancy and natural course: a sustained part $P_{saline}$ in every arm, a
  session (infusion-day) expectancy $X$ that fades within hours ($\tau_x$) and, for arms whose
  infusion feels active (ketamine, midazolam; $\alpha = 1$, saline $\alpha = 0$), an extra
  expectancy $P_{active}$ fading over days ($\tau_A$); all share the patient's placebo draw
  $\eta_{P,i}$.
- $\sigma_s$: visit-level noise of the suicidality scores, as a fraction of their baseline.
- $a$: oral-antidepressant background; $B_i \sim N(B_{disorder}, \sigma_B^2)$: baseline by
  disorder (TRD, MDD, bipolar); $\eta$ standard normal per patient.
"""

_SIDE_EQ = r"""
From the effect-site (brain-equilibrated) concentration $C_e$ in ng/mL racemic equivalents
(esketamine scaled by its potency factor $\pi_S$):

$$
\mathrm{CADSS}_i = \frac{E_{CADSS}\,C_e^{\gamma_C}}{EC_{50,C,i}^{\gamma_C} + C_e^{\gamma_C}},\quad
EC_{50,C,i} = EC_{50,C}\,e^{\omega_C\,\eta_{C,i}},\quad \mathrm{BPRS}_+ = s_{BPRS}\,C_e,\quad
\Delta\mathrm{SBP} = s_{SBP}\,C_e,\quad \mathrm{sedation} = \min(1, s_{sed}\,C_e)
$$

Active placebo (midazolam) sedation: $S_{mdz}\,\min(1, t/T_{inf})\,
e^{-\ln 2\,(t - T_{inf})^{+}/t_{1/2,mdz}}$. Exposure bands (analgesic, anaesthetic) compare the
peak $C_e$ with the drug card's bands.
"""

_MOOD_SIDE = ("cadss_emax", "cadss_ec50_ng_per_ml", "cadss_hill", "cadss_ec50_iiv_sd",
              "sbp_per_ng_ml", "bprs_per_ng_ml", "sedation_per_ng_ml",
              "midazolam_sedation_peak", "midazolam_half_life_h", "esketamine_potency_factor")


def _mechanism_sections() -> list[str]:
    from . import mechanism, mood
    from .pk import model as pk_model

    cards = load_param_cards()
    out = ["## 2. Free brain concentration\n", _BRAIN_EQ]
    if "brain" in cards:
        out.append(param_table(cards["brain"].parameters, "mechanism/brain"))
    out += ["## 3. NMDA receptor block\n", _RECEPTOR_EQ,
            "Populations: " + ", ".join(f"`{p}`" for p in mechanism.POPULATIONS)
            + "; blockers: " + ", ".join(f"`{b}`" for b in mechanism.BLOCKERS) + ".\n"]
    if "receptor" in cards:
        out.append(param_table(cards["receptor"].parameters, "mechanism/receptor"))
    out.append("## 4. Hypothesis branches\n")
    out.append("Each branch is weighted by $w_a \\dots w_f$ (0 = off, 1 = on), switched by name "
               "(`--hypotheses 'only:c'`, `'a,b,f'`, `'d=1,c=0'`).\n")
    for h, text in mechanism.HYPOTHESES.items():
        out.append(f"### ({h}) {_md_escape(text)}\n")
        out.append(_HYPOTHESES_EQ.get(h, "*(no equation written out for this branch yet: see "
                                         "the module docstring below)*\n"))
    if "hypotheses" in cards:
        out.append(param_table(cards["hypotheses"].parameters, "mechanism/hypotheses"))
    out += ["## 5. Shared downstream chain\n", _DOWNSTREAM_EQ,
            "States (in order): " + ", ".join(f"`{s}`" for s in mechanism.STATE_NAMES) + ".\n"]
    if "signalling" in cards:
        out.append(param_table(cards["signalling"].parameters, "mechanism/signalling"))
    out.append("### Interventions\n")
    out.append("| name | effect |\n|---|---|\n" + "\n".join(
        f"| `{k}` | {_md_escape(v)} |" for k, v in mechanism.INTERVENTIONS.items()) + "\n")
    if "interventions" in cards:
        out.append(param_table(cards["interventions"].parameters, "mechanism/interventions"))
    out += ["## 6. Readouts\n", _READOUTS_EQ,
            _docstring_block(mechanism, "As stated in the code: ketasim.mechanism")]
    clinic = cards.get("clinic")
    out += ["## 7. Mood and the clinic\n", _MOOD_EQ]
    if clinic is not None:
        mood_params = {k: v for k, v in clinic.parameters.items() if k not in _MOOD_SIDE}
        out.append(param_table(mood_params, "mechanism/clinic (scores)"))
    out += ["## 8. Side effects\n", _SIDE_EQ]
    if clinic is not None:
        side = {k: v for k, v in clinic.parameters.items() if k in _MOOD_SIDE}
        out.append(param_table(side, "mechanism/clinic (side effects)"))
        if clinic.notes:
            out.append("Notes (clinic card):\n\n"
                       + "\n".join(f"- {_md_escape(n)}" for n in clinic.notes) + "\n")
    out.append(_docstring_block(mood, "As stated in the code: ketasim.mood"))
    others = [c for cid, c in cards.items()
              if cid not in ("brain", "receptor", "hypotheses", "signalling", "interventions",
                             "clinic")]
    if others:
        out.append("## Other parameter cards\n")
        for c in others:
            out.append(f"### `{c.id}` — {_md_escape(c.title)}\n\n{_md_escape(c.description)}\n")
            out.append(param_table(c.parameters, f"mechanism/{c.id}"))
    out.append("## 9. Drug constants\n")
    for did, d in load_drugs().items():
        out.append(f"### `{did}` — {_md_escape(d.name)}\n")
        out.append(param_table({**d.constants, **d.bands}, f"drugs/{did}"))
    out.append("## Card hashes\n")
    out.append("SHA-256 prefixes of the card files this page was generated from (also written to "
               "every run's metadata):\n")
    out.append("| card | hash |\n|---|---|\n" + "\n".join(
        f"| `{k}` | `{v}` |" for k, v in sorted(card_versions().items())) + "\n")
    out.insert(0, "")
    pk_doc = _docstring_block(pk_model, "As stated in the code: ketasim.pk.model")
    return [pk_doc, *out]


def model_page() -> str:
    """The full model page (Markdown with LaTeX math), deterministic for given code and cards."""
    pk_intro = r"""## 1. Pharmacokinetics

Every PK model is a linear compartment system assembled from its card:

$$
\frac{d\mathbf{x}}{dt} = K\,\mathbf{x} + \mathbf{u}(t),\qquad
C_p = \frac{A_{plasma}}{V_{plasma}}
$$

with $\mathbf{x}$ the compartment amounts (mg) and effect-site concentrations (mg/L) and
$\mathbf{u}$ piecewise-constant inputs; it is solved exactly (matrix exponential per step). A flow
by clearance has rate constant $CL/V_{from}$; a `fraction` multiplies it (e.g. a metabolite
formation fraction). Metabolite amounts are in parent-equivalent mg, as in the source models.
The sections below are generated from each card's compartments, flows and routes.
"""
    cards = load_pk_cards()
    index = "| model | drug | species | routes |\n|---|---|---|---|\n" + "\n".join(
        f"| [`{c.id}`](#{_anchor(c)}) | {c.drug} | {c.species} | "
        f"{', '.join(c.routes)} |" for c in cards.values()) + "\n"
    mech = _mechanism_sections()
    parts = [_HEADER, pk_intro, index, mech[0]]
    parts += [pk_section(c) for c in cards.values()]
    parts += mech[1:]
    text = "\n".join(parts)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip() + "\n"


def _anchor(card: PKCard) -> str:
    """The heading anchor mkdocs (toc, default slugify) gives a PK card section."""
    title = f"{card.id} — {card.title}"
    slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[-\s]+", "-", slug)


def write_model_page(path: str | Path) -> Path:
    """Write :func:`model_page` to ``path`` (parent folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(model_page(), encoding="utf-8")
    tmp.replace(p)  # atomic: a failed write leaves the old page
    return p


def model_page_is_stale(path: str | Path) -> bool:
    """True when the committed page at ``path`` differs from a fresh :func:`model_page`."""
    p = Path(path)
    return not p.is_file() or p.read_text(encoding="utf-8", errors="replace") != model_page()


def parameters_without_source() -> list[str]:
    """``card:name`` of every card parameter whose source is missing or a placeholder, and of
    every non-``read`` parameter without a note saying how/why (should be empty)."""
    from .cards import all_parameters

    bad = []
    for row in all_parameters():
        src = (row["source"] or "").strip()
        if len(src) < 3 or src.lower().strip(". ") in PLACEHOLDER_SOURCES:
            bad.append(f"{row['card']}:{row['name']} (no source)")
        elif row["evidence"] != "read" and not (row["note"] or "").strip():
            bad.append(f"{row['card']}:{row['name']} ({row['evidence']} without a note)")
    return bad


# ----------------------------------------------------------------------------- CLI reference
def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands") and isinstance(cmd.commands, dict)


def _type_name(param) -> str:
    """Type of a click/typer parameter as a short word (str, int, float, bool, ...)."""
    t = getattr(param, "type", None)
    if t is not None and hasattr(t, "name"):
        return str(t.name)
    td = getattr(param, "type_descriptor", None)
    ann = getattr(td, "annotation", None)
    if ann is not None:
        return getattr(ann, "__name__", str(ann)).replace("typing.", "")
    return ""


def _param_row(param) -> str:
    if type(param).__name__.endswith("Argument"):
        name = f"`{(param.name or '').upper()}`"
        kind = "argument"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        kind = "flag" if getattr(param, "is_flag", False) else "option"
    default = param.default
    if callable(default) or default in (None, "", ()) or kind == "argument":
        dflt = ""
    else:
        dflt = f"`{default}`"
    helptext = _md_escape(getattr(param, "help", "") or "")
    typ = _type_name(param)
    return f"| {name} | {kind} | {typ} | {dflt} | {helptext} |"


def _command_md(cmd, path: list[str], level: int) -> list[str]:
    out = [f"{'#' * level} `{' '.join(path)}`\n"]
    helptext = inspect.cleandoc(cmd.help or "")
    if helptext:
        out.append(_md_escape(helptext).replace("\\n", "\n") + "\n")
    params = [p for p in cmd.params if p.name not in ("help",)]
    if params:
        out.append("| name | kind | type | default | help |\n|---|---|---|---|---|")
        out += [_param_row(p) for p in params]
        out.append("")
    if _is_group(cmd):
        for name in sorted(cmd.commands):
            out += _command_md(cmd.commands[name], [*path, name], min(level + 1, 4))
    return out


def cli_reference() -> str:
    """Markdown reference of every ``ketasim`` command, generated from the typer app."""
    import typer

    from .cli import app

    root = typer.main.get_command(app)
    lines = ["# Command-line reference\n",
             "<!-- GENERATED at docs build time from the typer app (ketasim.cli). -->\n",
             "Every command prints errors as one line on stderr and exits with status 2. "
             "Commands with `--json` print machine-readable output (keys are kept stable).\n",
             "| command | summary |\n|---|---|"]
    def walk(cmd, path):
        if _is_group(cmd):
            for n in sorted(cmd.commands):
                yield from walk(cmd.commands[n], [*path, n])
        else:
            yield path, cmd

    for path, cmd in walk(root, ["ketasim"]):
        summary = (cmd.help or "").strip().split("\n")[0]
        lines.append(f"| `{' '.join(path)}` | {_md_escape(summary)} |")
    lines.append("")
    if _is_group(root):
        for name in sorted(root.commands):
            lines += _command_md(root.commands[name], ["ketasim", name], 2)
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- API reference
def api_modules() -> list[str]:
    """Public modules of the package (no leading underscore), sorted, for the API reference."""
    import ketasim

    names = ["ketasim"]
    for info in pkgutil.walk_packages(ketasim.__path__, prefix="ketasim."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.name.startswith("ketasim.cards.") or info.name.startswith("ketasim.scenarios"):
            continue
        names.append(info.name)
    return sorted(names)


def api_page(module: str) -> str:
    """The mkdocstrings page of one module."""
    return (f"# `{module}`\n\n::: {module}\n"
            "    options:\n      show_root_heading: false\n      show_root_toc_entry: false\n")


def api_index() -> str:
    """Index page of the Python API reference."""
    rows = ["# Python API reference\n",
            "<!-- GENERATED at docs build time from the docstrings (mkdocstrings). -->\n",
            "The whole path is one call: `ketasim.simulate(...)` for one patient or many, "
            "`ketasim.run_trial(scenario)` for arms of virtual patients, "
            "`ketasim.simulate_pk(...)` for concentrations only. Every module:\n",
            "| module | summary |\n|---|---|"]
    for m in api_modules():
        mod = importlib.import_module(m)
        first = (inspect.getdoc(mod) or "").strip().split("\n")[0]
        rows.append(f"| [`{m}`]({m}.md) | {_md_escape(first)} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------- validation
def validation_page(docs_dir: str | Path = "docs") -> str:
    """Calibration results page (``validation-results.md`` on the site) from the committed
    calibration reports in ``docs_dir``
    (``calibration-*.json``, written by ``ketasim calibrate ... --write``)."""
    import json

    d = Path(docs_dir)
    lines = ["# Calibration results\n",
             "<!-- GENERATED at docs build time from docs/calibration-*.json. -->\n",
             "The targets below come from `shared/literature/calibration/` (timings, "
             "experiment findings, clinical summary statistics), except the mechanism timings "
             "marked *assumed*: the project's own choices where the literature time is "
             "UNCONFIRMED, and every human-course timing (rodent timing carried over). Targets "
             "used to *calibrate* "
             "parameters are not independent validation; the literature scorecard with "
             "held-out cases and the credibility report are produced by `ketasim validate` and "
             "`ketasim report credibility` (see the [how-to](guides/validation-case.md)).\n",
             "Re-run the reports with:\n",
             "```bash\n.venv/bin/ketasim calibrate mechanism\n.venv/bin/ketasim calibrate clinic"
             "\n```\n"]
    reports = sorted(d.glob("calibration-*.json"))
    if not reports:
        lines.append("*No calibration report is committed yet.*\n")
    for p in reports:
        data = json.loads(p.read_text(encoding="utf-8"))
        name = p.stem.removeprefix("calibration-")
        met, total = data.get("met"), data.get("total")
        head = f"## {name.capitalize()}"
        if met is not None and total is not None:
            head += f": {met} / {total} targets met"
        lines.append(head + "\n")
        lines.append(f"From `docs/{p.name}` (ketasim {data.get('ketasim_version', '?')}).\n")
        for section in ("timing", "experiments", "targets", "open_checks"):
            block = data.get(section)
            if not isinstance(block, dict) or not block:
                continue
            if section == "open_checks":
                lines.append("### Checked but not fitted\n")
                lines.append("Published findings no constant was searched to meet, reported so "
                             "that a known discrepancy stays visible (not counted above).\n")
            else:
                lines.append(f"### {section.capitalize()}\n")
            basis = data.get(f"{section}_basis") if section == "timing" else None
            if isinstance(basis, dict):
                lines.append("| target | value | met | rests on |\n|---|---|---|---|")
            else:
                lines.append("| target | value | met |\n|---|---|---|")
            for k, v in block.items():
                if isinstance(v, dict):
                    val, ok = v.get("value"), v.get("met")
                else:
                    val, ok = None, v
                vtxt = f"{val:.3g}" if isinstance(val, int | float) else ""
                mark = "yes" if ok else "**no**"
                row = f"| {_md_escape(k)} | {vtxt} | {mark} |"
                if isinstance(basis, dict):
                    row += f" {_md_escape(str(basis.get(k, '')))} |"
                lines.append(row)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
