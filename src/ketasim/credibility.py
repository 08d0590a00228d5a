"""The credibility report: one self-contained HTML file (no network, figures as base64 PNG).

Sections: context of use; model diagram (inline SVG with the active hypotheses); verification
(checks run now, not read from the test suite: exact PK solver vs LSODA, mass balance, and
libRoadRunner agreement when ``ketasim.sbml`` is importable); parameters with evidence tags;
calibration fits (observed vs predicted); the validation scorecard with in- and out-of-sample
summaries and the reasons for misses; sensitivity indices; known limitations and assumed
parameters. ``build_report`` returns the HTML text.
"""

from __future__ import annotations

import base64
import functools
import math
import time
from collections.abc import Callable
from html import escape

import numpy as np

from . import __version__

DISCLAIMER = "ketasim is a research tool, not medical advice."

CONTEXT_OF_USE = (
    "ketasim simulates ketamine and esketamine for depression from dose to mood: plasma and "
    "brain concentrations for many routes and published PK models, NMDA receptor block by "
    "neuronal population, a signalling chain to synapses with switchable mechanism hypotheses, "
    "and depression (MADRS, HAM-D), suicidality and side-effect scores in virtual patients and "
    "trials. Intended use: research and teaching — comparing regimens, mechanism hypotheses and "
    "trial designs in silico, generating hypotheses, and checking what the published record "
    "implies. Not intended for: individual dosing, clinical decisions, or regulatory claims. "
    "Decision consequence if wrong: low (no patient-facing use); model influence: the model is "
    "the only evidence in a simulation study, so every number here should be read with the "
    "scorecard and the limitations below.")

LIMITATIONS = [
    "Clinical constants (placebo, drug effect, consolidation) are fitted to a small set of "
    "trials and meta-analyses; some pooled numbers combine trials outside the calibration set.",
    "Scales other than MADRS use fixed linear mappings (HAM-D17 = 0.75·MADRS, HAM-D6 = "
    "0.36·MADRS) or scale-free comparisons (standardised change, significance at the study's "
    "n); HDRS-21/25, QIDS and BDI have no mapping of their own.",
    "Suicidality scores (MADRS item 10, SSI) have an assumed baseline; their spread is one "
    "mean-preserving visit noise fitted to Price 2014 within-group d, not a model of baseline "
    "heterogeneity or item-level ratings.",
    "Side effects follow the effect-site concentration directly (no tolerance, no hysteresis "
    "beyond ke0). CADSS is a sigmoid Emax with a patient EC50 (incidence < 100%), but a "
    "patient's sensitivity is the same at every dose, so the dissociation incidence does not "
    "grow with the number of doses (week-1 16.7% and 4-week 41% cannot both be met); blood "
    "pressure is linear in Ce with no between-patient variability, so outlier fractions are "
    "not model outputs and the rise outlasts the infusion.",
    "The saline placebo has a session (infusion-day) expectancy and a sustained part, both "
    "from the first dose only: later doses of a series do not renew the expectancy.",
    "Crossover trials are simulated as parallel arms (a conservative choice for the "
    "significance checks).",
    "Mechanism constants are calibrated to rodent and cellular timing targets; their effect in "
    "humans is only seen through the clinic layer's drive weights.",
    "Prediction intervals include between-patient variability and the assumed uncertainty of "
    "the calibrated clinic constants (card 'uncertainty'); PK and mechanism constants are held "
    "at their card values.",
]


# --------------------------------------------------------------------------- helpers
def _seed_of(scorecard: dict) -> int | None:
    """The scorecard's seed (its ``meta``), if recorded."""
    seed = (scorecard.get("meta") or {}).get("seed")
    return int(seed) if isinstance(seed, int) else None


def _png_b64(fig, seed: int | None = None) -> str:
    """A figure as base64 PNG, with the provenance text chunk of
    :func:`ketasim.report.png_metadata` (version, card hashes, ``seed``)."""
    import io

    import matplotlib.pyplot as plt

    from .report import png_metadata

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=90, metadata=png_metadata(seed))
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    h = "".join(f"<th>{escape(str(x))}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _f(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return escape(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_f(x, nd) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    return f"{v:.{nd}g}"


# --------------------------------------------------------------------------- diagram
def model_diagram_svg() -> str:
    """Inline SVG: dose → PK → brain → NMDAR block → hypotheses → synapses → mood."""
    from .mechanism import HYPOTHESES, Hypotheses

    w = Hypotheses.default().as_dict()
    boxes = [("regimen", "(route, dose)"), ("PK", "plasma, metabolites"),
             ("brain", "free conc. (ke0)"), ("NMDAR block", "per population"),
             ("BDNF → TrkB", "→ mTORC1"), ("synapses", "proteins, spines"),
             ("mood", "MADRS, suicidality")]
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 330" width="1000" '
             'height="330" role="img" aria-label="model diagram" id="diagram-svg">',
             '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="7" refY="4" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
    x = 10
    for i, (title, sub) in enumerate(boxes):
        parts.append(f'<rect x="{x}" y="20" width="122" height="50" rx="6" fill="#e8f0fb" '
                     f'stroke="#4a72b0"/><text x="{x + 61}" y="41" font-size="12" '
                     f'font-weight="bold" text-anchor="middle">{escape(title)}</text>'
                     f'<text x="{x + 61}" y="59" font-size="10" text-anchor="middle">'
                     f'{escape(sub)}</text>')
        if i < len(boxes) - 1:
            parts.append(f'<line x1="{x + 122}" y1="45" x2="{x + 140}" y2="45" stroke="#555" '
                         f'marker-end="url(#arr)"/>')
        x += 142
    parts.append('<text x="10" y="240" font-size="12" font-weight="bold">mechanism '
                 'hypotheses (right) link receptor</text><text x="10" y="256" font-size="12" '
                 'font-weight="bold">block to BDNF/mTORC1 and synapses;</text><text x="10" '
                 'y="272" font-size="12" font-weight="bold">green = active by default '
                 '(hypotheses card)</text>')
    y = 115
    for k, text in HYPOTHESES.items():
        on = w.get(f"w_{k}", w.get(k, 0.0)) > 0
        fill, stroke = ("#e3f6e3", "#2e8b2e") if on else ("#f3f3f3", "#999")
        parts.append(f'<line x1="497" y1="70" x2="560" y2="{y + 12}" stroke="#bbb"/>')
        parts.append(f'<rect x="560" y="{y}" width="430" height="24" rx="4" fill="{fill}" '
                     f'stroke="{stroke}"/><text x="568" y="{y + 16}" font-size="10.5">'
                     f'({k}) {escape(text)}{"" if on else " — off"}</text>')
        y += 32
    parts.append('<text x="10" y="140" font-size="11">side effects (CADSS, BPRS, SBP, '
                 'sedation)</text><text x="10" y="156" font-size="11">follow the brain '
                 'concentration directly;</text><text x="10" y="172" font-size="11">'
                 'placebo, active placebo and oral-AD</text><text x="10" y="188" '
                 'font-size="11">background act on the mood layer.</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- verification
@functools.lru_cache(maxsize=1)
def verification_checks() -> dict:
    """Exact PK solver vs LSODA and mass balance for every human PK card and route (run now;
    computed once per process: the result depends on the cards only)."""
    from .cards import load_pk_cards
    from .pk import Covariates
    from .pk.model import assemble
    from .pk.solve import solve, solve_reference
    from .regimen import Regimen

    t = np.array([0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 6.0, 6.5, 8.0, 12.0, 24.0, 48.0])
    rows = []
    for cid, card in sorted(load_pk_cards().items()):
        if card.species != "human":
            continue
        for route in card.routes:
            dose = "56 mg" if card.drug == "esketamine" else (
                "20 mg" if card.drug == "memantine" else "0.5 mg/kg")
            kw = {"duration": "40 min"} if route == "iv-infusion" else {}
            try:
                reg = Regimen.build(route, dose, schedule="at 0, 6 h", **kw)
                system = assemble(card, Covariates(weight_kg=70.0), routes=reg.routes)
                sol = solve(system, reg, t, 70.0)
                ref = solve_reference(system, reg, t, 70.0)
            except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
                rows.append({"card": cid, "route": route, "error": str(exc)[:120]})
                continue
            cp = sol.plasma_mg_per_l()[0]
            cr = ref.plasma_mg_per_l()[0]
            rel = float(np.max(np.abs(cp - cr)) / max(float(np.max(np.abs(cr))), 1e-300))
            total = reg.total_mg(70.0)
            bal = float(np.max(np.abs(sol.mass_in_body_mg()[0] + sol.eliminated_mg()[0]
                                      - sol.dosed_by()[0])) / total)
            rows.append({"card": cid, "route": route, "max_rel_diff_vs_lsoda": rel,
                         "mass_balance_rel_error": bal})
    ok = [r for r in rows if "error" not in r]
    sbml = sbml_status()
    return {"rows": rows, "max_rel_diff_vs_lsoda": max(r["max_rel_diff_vs_lsoda"] for r in ok),
            "max_mass_balance_error": max(r["mass_balance_rel_error"] for r in ok),
            "n_checks": len(rows), "n_errors": len(rows) - len(ok), "sbml": sbml}


def sbml_status(n_patients: int = 3) -> dict:
    """libRoadRunner agreement of the SBML export: ``ketasim export-sbml``'s model of the bench
    course (``ketasim bench``) run in libRoadRunner for ``n_patients`` patients, MADRS and
    plasma at every visit compared with ketasim (the bar is 1e-4 relative); "not available"
    when libRoadRunner or python-libsbml cannot be imported."""
    try:
        import roadrunner

        from .bench_sbml import run_side_by_side
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        return {"available": False,
                "text": f"not available ({exc.__class__.__name__}: {exc})"}
    try:
        r = run_side_by_side(n_patients=n_patients, n_scipy=1, kernel="lanes",
                             both_kernels=False)
    except Exception as exc:  # noqa: BLE001 - reported in the report, not raised
        return {"available": True, "text": f"the agreement check failed: {exc}"}
    d = r["max_rel_diff_vs_roadrunner"]
    return {"available": True, "max_rel_diff_vs_roadrunner": d, "met": bool(d <= 1e-4),
            "text": f"the exported SBML model run in libRoadRunner "
                    f"{roadrunner.__version__} for {n_patients} patients of the `ketasim "
                    f"bench` course: MADRS and plasma at every visit within {d:.2g} "
                    f"relative of ketasim (bar 1e-4: {'met' if d <= 1e-4 else 'NOT met'}); "
                    f"the timed comparison is `ketasim bench`"}


# --------------------------------------------------------------------------- figures
def fit_figure(scorecard: dict) -> str:
    """Observed vs predicted (with 90 % PI) for every quantitative endpoint, per metric family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = {"MADRS change / difference (points)": ("mean_change", "difference"),
            "rates (fraction)": ("response_rate", "remission_rate", "responded_any",
                                 "rate_difference", "fraction_at_most", "peak_incidence"),
            "standardised effects (d)": ("cohens_d", "improvement_d")}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    for ax, (title, metrics) in zip(axes, fams.items(), strict=True):
        lo_all, hi_all = [], []
        for c in scorecard["cases"]:
            for e in c["endpoints"]:
                if e["metric"] not in metrics or not isinstance(e["observed"], int | float):
                    continue
                if e["predicted"] is None or isinstance(e["observed"], bool):
                    continue
                o, p = float(e["observed"]), float(e["predicted"])
                pi = e["pi90"]
                yerr = None
                if pi[0] is not None:
                    yerr = [[max(p - pi[0], 0)], [max(pi[1] - p, 0)]]
                ax.errorbar(o, p, yerr=yerr, fmt="o", ms=4, alpha=0.8,
                            color="#2e8b2e" if e["within"] else "#c0392b")
                lo_all += [o, p]
                hi_all += [o, p]
        if lo_all:
            lo, hi = min(lo_all), max(hi_all)
            pad = 0.1 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("observed")
        ax.set_ylabel("predicted (90% PI)")
    fig.suptitle("calibration fits: green = within tolerance, red = outside", fontsize=10)
    fig.tight_layout()
    return _png_b64(fig, _seed_of(scorecard))


def residual_figure(scorecard: dict) -> str:
    """Prediction minus observation in units of the tolerance half-width, per endpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, vals, cols = [], [], []
    for c in scorecard["cases"]:
        for e in c["endpoints"]:
            iv = e["tolerance"]["interval"]
            if iv is None or e["predicted"] is None:
                continue
            mid, half = (iv[0] + iv[1]) / 2.0, max((iv[1] - iv[0]) / 2.0, 1e-12)
            vals.append(max(-4.0, min(4.0, (e["predicted"] - mid) / half)))
            labels.append(f"{c['id']}: {e['name']}"[:60])
            cols.append("#2e8b2e" if e["within"] else "#c0392b")
    fig, ax = plt.subplots(figsize=(9, 0.18 * len(vals) + 1.2))
    y = np.arange(len(vals))
    ax.barh(y, vals, color=cols)
    ax.axvline(-1, color="k", lw=0.6, ls="--")
    ax.axvline(1, color="k", lw=0.6, ls="--")
    ax.set_yticks(y, labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("(predicted − centre of accepted interval) / half-width (clipped at ±4)")
    fig.tight_layout()
    return _png_b64(fig, _seed_of(scorecard))


# --------------------------------------------------------------------------- sections
def _why(e: dict) -> str:
    iv = e["tolerance"]["interval"]
    p = e["predicted"]
    if p is None:
        return "the model gives no value (e.g. no responders)"
    if iv is None:
        return f"qualitative check failed ({e['tolerance']['rule']}; model statistic {p:.3g})"
    side = "above" if p > iv[1] else "below"
    return f"model {p:.3g} is {side} the accepted [{iv[0]:.3g}, {iv[1]:.3g}]"


def miss_theme(case: dict, e: dict) -> str:
    """A coarse, data-driven grouping of a missed endpoint (for the summary of misses)."""
    from .units import parse_duration

    if e["scale"] in ("cadss", "sbp_change_mmhg", "bprs_positive", "sedation"):
        return "side effects (time course, incidence)"
    if e["scale"] in ("madrs_item10", "ssi"):
        return "suicidality scores"
    if case["kind"] == "pk":
        return "pharmacokinetics"
    at = e["at"] if isinstance(e["at"], str) else (e["at"] or ["0 h"])[0]
    try:
        early = parse_duration(at, allow_zero=True) <= 4.0
    except Exception:  # noqa: BLE001
        early = False
    if early:
        return "onset within 4 h"
    control = any(k in (e["arm"] or "") for k in ("placebo", "saline", "control", "midazolam"))
    if control and e["vs"] is None:
        return "placebo / control arms"
    return "drug effect size and durability"


def _scorecard_html(sc: dict) -> str:
    rows = []
    for c in sc["cases"]:
        if not c["endpoints"]:
            rows.append([escape(c["id"]), escape(c["set"]), "<i>no endpoints</i>", "", "", "",
                         "", escape(c["reason"] or "")])
            continue
        for e in c["endpoints"]:
            acc = e["tolerance"]["interval"] or e["tolerance"]["rule"]
            # ~: the verdict is within the Monte Carlo error (another seed may flip it), as
            # `ketasim validate` marks it
            tilde = "" if e.get("mc_stable", True) else "~"
            mark = (f'<span class="ok">yes{tilde}</span>' if e["within"]
                    else f'<span class="bad">no{tilde}</span>')
            rows.append([escape(c["id"]), escape(c["set"]), escape(e["name"]),
                         _f(e["observed"]), _f(e["predicted"]), _f(e["pi90"]), _f(acc), mark])
    summ = []
    for s, v in sc["summary"].items():
        if v["endpoints"]:
            summ.append(f"<li><b>{s}</b> ({'in' if s == 'calibration' else 'out of'} sample):"
                        f" {v['within']} / {v['endpoints']} endpoints within tolerance "
                        f"({100 * v['fraction_within']:.0f}%), {v['cases']} cases; "
                        f"{v.get('mc_unstable', 0)} verdicts (~) within the Monte Carlo error "
                        f"of {sc['meta']['n_per_arm']} patients per arm (another seed may "
                        "flip them)</li>")
        else:
            summ.append(f"<li><b>{s}</b>: no endpoints (add cases with --cases)</li>")
    misses = [[escape(c["id"]), escape(e["name"]), escape(_why(e)), escape(e.get("note") or "")]
              for c in sc["cases"] for e in c["endpoints"] if not e["within"]]
    themes: dict[str, int] = {}
    for c in sc["cases"]:
        for e in c["endpoints"]:
            if not e["within"]:
                t = miss_theme(c, e)
                themes[t] = themes.get(t, 0) + 1
    theme_html = ("<p>Misses by theme: " + "; ".join(
        f"{escape(k)}: {v}" for k, v in sorted(themes.items(), key=lambda x: -x[1]))
        + ".</p>") if themes else ""
    return ("<ul>" + "".join(summ) + "</ul>" + theme_html
            + _table(["case", "set", "endpoint", "observed", "predicted", "PI90", "accepted",
                      "within"], rows, "scorecard")
            + "<h3>Endpoints outside tolerance, and why</h3>"
            + (_table(["case", "endpoint", "why", "note"], misses) if misses
               else "<p>none</p>"))


def _parameters_html() -> tuple[str, list[dict]]:
    from .cards import all_parameters

    rows = all_parameters()
    tags = ("read", "derived", "calibrated", "assumed")
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["card"], dict.fromkeys(tags, 0))[r["evidence"]] += 1
    total = {t: sum(c[t] for c in counts.values()) for t in tags}
    ctab = _table(["card", *tags], [[escape(k), *[str(v[t]) for t in tags]]
                                    for k, v in counts.items()]
                  + [["<b>total</b>", *[f"<b>{total[t]}</b>" for t in tags]]])
    full = _table(["card", "name", "value", "units", "evidence", "source", "note"],
                  [[escape(r["card"]), escape(r["name"]), _f(r["value"], 4), escape(r["units"]),
                    escape(r["evidence"]), escape(r["source"][:80]), escape(r["note"][:120])]
                   for r in rows], "params")
    html = (f"<p>{len(rows)} parameters in {len(counts)} cards.</p>{ctab}"
            f"<details><summary>all parameters</summary>{full}</details>")
    return html, rows


def _cases_text(scorecard: dict, cases_dir: str | None, include_shipped: bool) -> str:
    """The scorecard's case selection in words: shipped cases or not, the extra folder, the
    chosen case ids (from the scorecard's ``meta.options`` where it records them)."""
    opts = (scorecard.get("meta") or {}).get("options") or {}
    folder = opts.get("cases_dir", cases_dir)
    shipped = opts.get("include_shipped", include_shipped)
    only = opts.get("only")
    parts = ["shipped cases" if shipped else "no shipped cases"]
    if folder:
        parts.append(f"cases from {folder}")
    if only:
        parts.append("only " + ", ".join(map(str, only if isinstance(only, list) else [only])))
    return "; ".join(parts)


def build_report(n: int = 100, seed: int = 0, replicates: int = 100,
                 cases_dir: str | None = None, sensitivity_samples: int = 8,
                 scorecard: dict | None = None, sensitivity: dict | None = None,
                 include_shipped: bool = True,
                 progress: Callable[[str], None] | None = None) -> str:
    """The credibility report as one HTML string (runs scorecard and Morris unless given).
    ``progress``: optional callable given a one-line message per case, model evaluation and
    section."""
    from .cards import card_versions
    from .sensitivity import plot_indices, run_sensitivity
    from .validate import run_validation

    say = progress or (lambda message: None)
    t0 = time.perf_counter()
    sc = scorecard or run_validation(
        cases_dir, n=n, seed=seed, replicates=replicates, include_shipped=include_shipped,
        progress=lambda i, total, cid: say(f"scorecard, case {i + 1}/{total} ({cid})"))
    sens = sensitivity or run_sensitivity(
        "madrs_change@24h", method="morris", samples=sensitivity_samples, n=min(n, 100),
        seed=seed, progress=lambda d, total: say(f"sensitivity, evaluation {d}/{total}"))
    say("verification checks")
    ver = verification_checks()
    p_html, prows = _parameters_html()
    assumed = [r for r in prows if r["evidence"] == "assumed"]
    sens_png = base64.b64encode(plot_indices(sens)).decode("ascii")
    if sens["method"] == "sobol":
        srows = [[escape(p["name"]), escape(p["card"]), _f(p["S1"]), _f(p["S1_conf"]),
                  _f(p["ST"]), _f(p["ST_conf"])] for p in sens["parameters"]]
        stab = _table(["parameter", "card", "S1", "±", "ST", "±"], srows)
    else:
        srows = [[escape(p["name"]), escape(p["card"]), _f(p["mu_star"]),
                  _f(p["mu_star_conf"]), _f(p["sigma"])] for p in sens["parameters"]]
        stab = _table(["parameter", "card", "mu*", "± (95%)", "sigma"], srows)
    vrows = [[escape(r["card"]), escape(r["route"]),
              _f(r.get("max_rel_diff_vs_lsoda")), _f(r.get("mass_balance_rel_error")),
              escape(r.get("error", ""))] for r in ver["rows"]]
    versions = card_versions()
    # the scorecard's own seed when one is given (as its figures record it), not the default
    sc_seed = _seed_of(sc)
    meta_rows = [["ketasim version", __version__],
                 ["seed", str(seed if sc_seed is None else sc_seed)],
                 ["virtual patients per arm", str(sc["meta"]["n_per_arm"])],
                 ["replicates", str(sc["meta"]["replicates"])],
                 # what reruns it: the case selection (the scorecard's own record when given)
                 ["cases", escape(_cases_text(sc, cases_dir, include_shipped))],
                 ["sensitivity", escape(f"{sens.get('method', 'morris')}, "
                                        f"{sens.get('samples', sensitivity_samples)} samples")],
                 ["generated in", f"{time.perf_counter() - t0:.0f} s"]]
    sections = [
        ("context", "Context of use", f"<p>{escape(CONTEXT_OF_USE)}</p>"),
        ("diagram", "Model diagram", model_diagram_svg()),
        ("verification", "Verification",
         f"<p>Checks run while this report was generated (independent of the test suite): "
         f"the exact linear PK solver against SciPy LSODA (rtol 1e-10) and mass balance "
         f"(entered = in body + eliminated) for every human PK card and route, two doses each."
         f" {ver['n_checks']} checks, {ver['n_errors']} errors; largest relative difference "
         f"exact vs LSODA <b>{ver['max_rel_diff_vs_lsoda']:.2e}</b>; largest mass-balance "
         f"error <b>{ver['max_mass_balance_error']:.2e}</b> of the dose. Golden tests against "
         f"closed forms and published model outputs are in tests/test_pk_exact.py.</p>"
         f"<p>libRoadRunner agreement (SBML export): {escape(ver['sbml']['text'])}"
         + (f" — {escape(str(ver['sbml'].get('result'))[:400])}" if 'result' in ver['sbml']
            else "") + "</p>"
         + "<details><summary>per card and route</summary>"
         + _table(["card", "route", "max rel diff vs LSODA", "mass balance error", "error"],
                  vrows)
         + "</details>"),
        ("parameters", "Parameters and evidence", p_html),
        ("calibration", "Calibration fits",
         "<p>Every shipped case is calibration data (the studies in "
         "shared/literature/calibration); user cases are validation (out of sample). "
         "Prediction intervals (90%) come from virtual-trial replicates at each study's size, "
         "with the calibrated clinic constants drawn from their uncertainty distribution "
         "(card <code>uncertainty</code>) in every replicate.</p>"
         + _img(fit_figure(sc), "observed vs predicted")
         + _img(residual_figure(sc), "residuals in tolerance units")),
        ("scorecard", "Validation scorecard", _scorecard_html(sc)),
        ("sensitivity", "Sensitivity",
         f"<p>{escape(sens['method'])} indices of {escape(sens['endpoint'])} "
         f"(nominal {sens['nominal']:.3g}; {sens['evaluations']} evaluations; bounds = card "
         f"value × (1 ± {sens['spread']:g}); {escape(sens['design'])}).</p>"
         + _img(sens_png, "sensitivity indices") + stab),
        ("limitations", "Known limitations and assumed parameters",
         "<ul>" + "".join(f"<li>{escape(x)}</li>" for x in LIMITATIONS) + "</ul>"
         + f"<p>{len(assumed)} parameters are tagged <i>assumed</i>:</p>"
         + _table(["card", "name", "value", "units", "why"],
                  [[escape(r["card"]), escape(r["name"]), _f(r["value"], 4),
                    escape(r["units"]), escape(r["note"][:140])] for r in assumed])),
    ]
    nav = " · ".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{content}</section>'
                   for sid, title, content in sections)
    card_list = _table(["card", "sha256 prefix"], [[escape(k), escape(v)]
                                                   for k, v in versions.items()])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ketasim credibility report</title>
<style>
body{{font-family:system-ui,Helvetica,Arial,sans-serif;max-width:1150px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}}
h1{{font-size:1.5em}}h2{{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}}
table{{border-collapse:collapse;margin:.5em 0 1em;font-size:.82em}}
th,td{{border:1px solid #ddd;padding:.2em .45em;text-align:left;vertical-align:top}}
th{{background:#f3f3f3}}.ok{{color:#1e7b1e;font-weight:600}}.bad{{color:#b02a1e;font-weight:600}}
.disclaimer{{background:#fff4e5;border:1px solid #f0b36b;padding:.5em 1em;border-radius:4px}}
img{{max-width:100%;border:1px solid #eee;display:block;margin:.5em 0}}
nav{{font-size:.9em;margin:.6em 0}}svg{{max-width:100%;height:auto}}
</style></head><body>
<h1>ketasim credibility report</h1>
<p class="disclaimer">{escape(DISCLAIMER)}</p>
<nav>{nav}</nav>
{_table(["item", "value"], [[escape(a), escape(b)] for a, b in meta_rows])}
{body}
<section id="versions"><h2>Card hashes</h2>
<details><summary>{len(versions)} cards</summary>{card_list}</details></section>
</body></html>
"""
