"""Figures and reports (matplotlib, Agg backend)."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .errors import KetasimError  # noqa: E402


def png_metadata(seed: int | None = None, run: dict | None = None) -> dict[str, str]:
    """PNG text chunks recording provenance, for ``savefig(..., metadata=...)``.

    ``Description`` is JSON: ketasim version, card hashes (every card), ``seed`` when the
    figure comes from a seeded run and ``run`` (the run's inputs: model, covariates, regimen,
    options) when given (read back with ``PIL.Image.open(path).text``)."""
    import json

    from . import __version__
    from .cards import card_versions

    info: dict[str, object] = {"ketasim_version": __version__, "card_hashes": card_versions()}
    if seed is not None:
        info["seed"] = int(seed)
    if run is not None:
        info["run"] = run
    return {"Description": json.dumps(info, sort_keys=True, default=str)}


#: run-metadata keys left out of a figure's ``run`` record: timings (they would make two
#: identical runs' figures differ) and what :func:`png_metadata` records at the top level
_NOT_IN_FIGURE = ("wall_ms", "card_hashes", "ketasim_version", "units")


def _run_info(metadata: dict) -> dict:
    """A run's metadata as recorded in its figure (see :data:`_NOT_IN_FIGURE`)."""
    return {k: v for k, v in metadata.items() if k not in _NOT_IN_FIGURE}


def _save(fig, path: str, seed: int | None = None, run: dict | None = None) -> None:
    """Save and close a figure with :func:`png_metadata`, atomically (rendered in memory,
    then a temporary file renamed over ``path``): a failed save leaves an existing file
    untouched. A failed write is a one-line error naming the file."""
    fig.tight_layout()
    try:
        data = _fig_png(fig, seed, run)
    except OSError as exc:
        raise KetasimError("plot", f"cannot write {path}: {exc.strerror or exc}") from exc
    _atomic_bytes(path, data, "plot")


def plot_pk(res, path: str, run: dict | None = None) -> None:
    """Plasma, metabolite and effect-site concentrations (ng/mL) against time (h) as a PNG.

    ``run``: the inputs recorded in the PNG's metadata (default: ``res.metadata``)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    t = res.time_h
    for sp, c in res.plasma_ng_per_ml.items():
        ax.plot(t, c[0], label=f"{sp} plasma")
    for sp, c in res.effect_ng_per_ml.items():
        ax.plot(t, c[0], "--", label=f"{sp} effect site")
    ax.set_xlabel("time after first dose (h)")
    ax.set_ylabel("concentration (ng/mL)")
    ax.set_title(f"{res.card.drug} · {res.card.id} ({res.card.sampling} sampling)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.text(0.99, 0.01, "ketasim — research tool, not medical advice", ha="right",
             fontsize=7, color="grey")
    _save(fig, path, run=_run_info(res.metadata if run is None else run))


def plot_mechanism(res, path: str, run: dict | None = None) -> None:
    """Every stage of a mechanism simulation as a multi-panel PNG.

    ``run``: the inputs recorded in the PNG's metadata (default: ``res.metadata``)."""
    fig, axes = plt.subplots(3, 2, figsize=(10, 8), dpi=110, sharex=True)
    t = res.time_h / 24.0
    ax = axes[0, 0]
    for k, v in res.plasma_ng_per_ml.items():
        ax.plot(t, v, label=k)
    ax.set_ylabel("plasma (ng/mL)")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for k in ("block_E2B", "block_Esyn", "block_I", "block_H"):
        ax.plot(t, res.readouts[k], label=k.replace("block_", ""))
    ax.set_ylabel("NMDAR block (fraction)")
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    for k in ("p_eef2", "bdnf", "trkb", "mtorc1"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("signalling (× baseline)")
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for k in ("glutamate", "lhb_burst"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("glutamate, LHb bursting")
    ax.legend(fontsize=7)
    ax = axes[2, 0]
    for k in ("synaptic_proteins", "spine_density", "synaptic_strength"):
        ax.plot(t, res.readouts[k], label=k)
    ax.set_ylabel("synapses (× baseline)")
    ax.legend(fontsize=7)
    ax.set_xlabel("days")
    ax = axes[2, 1]
    ax.plot(t, res.readouts["fst_immobility"])
    ax.set_ylabel("FST immobility (s, rodent readout)")
    ax.set_xlabel("days")
    for a in axes.ravel():
        a.grid(alpha=0.3)
    fig.suptitle("ketasim — dose to synapse (research tool, not medical advice)", fontsize=9)
    _save(fig, path, run=_run_info(res.metadata if run is None else run))


# --------------------------------------------------------------------------- virtual trials
_SCALE_LABEL = {"madrs": "MADRS", "hamd17": "HAM-D17", "hamd6": "HAM-D6"}


def _fig_png(fig, seed: int | None = None, run: dict | None = None) -> bytes:
    """PNG bytes of ``fig`` with :func:`png_metadata` (closes the figure)."""
    import io

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", metadata=png_metadata(seed, run))
    finally:
        plt.close(fig)
    return buf.getvalue()


def _score_table(result):
    """Per arm: visit labels (baseline first), mean score and its 95 % CI (t-based)."""
    import numpy as np

    from .stats import mean_ci

    labels = result.meta["visits"]
    out = {}
    for arm in result.scenario.arms:
        a = result.arm_arrays(arm.name).cols[result.scale]
        m = a.mean(axis=0)
        ci = np.array([mean_ci(a[:, j]) for j in range(a.shape[1])])
        out[arm.name] = (m, ci[:, 0], ci[:, 1])
    return labels, out


def plot_trial_scores(result) -> bytes:
    """Mean score ± 95 % CI per arm over the visits (PNG bytes)."""
    import numpy as np

    labels, rows = _score_table(result)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    x = np.arange(len(labels))
    k = len(rows)
    for i, (name, (m, lo, hi)) in enumerate(rows.items()):
        dx = (i - (k - 1) / 2) * 0.06
        ax.errorbar(x + dx, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=name)
    ax.set_xticks(x, labels)
    ax.set_xlabel("visit (time after the first dose)")
    ax.set_ylabel(f"mean {_SCALE_LABEL[result.scale]} ± 95% CI")
    ax.set_title(result.scenario.title or "virtual trial", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.99, 0.01, "ketasim — research tool, not medical advice", ha="right",
             fontsize=7, color="grey")
    fig.tight_layout()
    return _fig_png(fig, result.meta.get("seed"))


def plot_trial_response(result) -> bytes:
    """Response and remission rates per arm and visit (PNG bytes)."""
    import numpy as np

    s = result.summary
    visits = result.visits
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    x = np.arange(len(visits))
    k = len(s["arms"])
    w = 0.8 / k
    for ax, key, title in ((axes[0], "response_rate", "response"),
                           (axes[1], "remission_rate", "remission")):
        for i, (name, rows) in enumerate(s["arms"].items()):
            ax.bar(x + (i - (k - 1) / 2) * w, [100 * rows[v][key] for v in visits], w,
                   label=name)
        ax.set_xticks(x, visits)
        ax.set_title(f"{title} ({_SCALE_LABEL[result.scale]})", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("% of patients")
    axes[0].legend(fontsize=8)
    fig.text(0.99, 0.01, "ketasim — research tool, not medical advice", ha="right",
             fontsize=7, color="grey")
    fig.tight_layout()
    return _fig_png(fig, result.meta.get("seed"))


def trial_figures(result) -> dict[str, bytes]:
    """The trial's figures as PNG bytes: ``scores.png`` and ``response.png``."""
    return {"scores.png": plot_trial_scores(result), "response.png": plot_trial_response(result)}


def _f(v, nd: int = 1, pct: bool = False) -> str:
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if pct:
        return f"{100 * v:.{nd}f}%"
    return f"{v:.{nd}f}"


def _pair_label(s: dict, key: str) -> str:
    """"ARM1 vs ARM2" for a key of the summary's differences (the keys join the names with
    "-", ambiguous when a name contains one: "esketamine + AD-placebo + AD")."""
    arms = s.get("pairs", {}).get(key)
    return f"{arms[0]} vs {arms[1]}" if arms else key


def _bound(v, nd: int = 1, pct: bool = False, signed: bool = False) -> str:
    """A confidence bound: ``nd`` decimals, or more when a bound that is not 0 would otherwise
    read 0.0 or -0.0, so "[-3.8, -0.0]" does not hide whether the interval excludes 0: it
    reads "[-3.8, -0.004]" (one significant digit). ``pct``: a fraction shown as %;
    ``signed``: a fraction shown in signed percentage points (no unit)."""
    import math

    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    x = 100.0 * v if (pct or signed) else float(v)
    k = nd
    if x != 0:
        k = max(nd, min(nd + 6, -math.floor(math.log10(abs(x))))) \
            if round(abs(x), nd) == 0 else nd
    text = f"{x:+.{k}f}" if signed else f"{x:.{k}f}"
    return text + ("%" if pct else "")


def _ci(c, nd: int = 1, pct: bool = False) -> str:
    if c is None:
        return "–"
    return f"[{_bound(c[0], nd, pct)}, {_bound(c[1], nd, pct)}]"


def _pp(v) -> str:
    """A difference of two rates (fractions) in percentage points, signed, one decimal."""
    return "–" if v is None else f"{100 * v:+.1f}"


def _pp_ci(c) -> str:
    if c is None:
        return "–"
    return f"[{_bound(c[0], signed=True)}, {_bound(c[1], signed=True)}]"


def _html_table(headers: list[str], rows: list[list[str]], caption: str = "") -> str:
    from html import escape

    h = "".join(f"<th>{escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.6em}h3{font-size:1em}
.disclaimer{background:#fff4e5;border:1px solid #f0b36b;padding:.6em 1em;border-radius:4px}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
caption{text-align:left;font-weight:600;padding:.3em 0}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.muted{color:#666;font-size:.85em}
"""


def _kept_text(meta: dict) -> str:
    """What results.parquet holds: the visit-by-visit rows of the first ``trajectories``
    patients of each arm only, while every statistic of the report uses all patients (a
    reader recomputing the report from results.parquet alone would get other numbers)."""
    k = meta.get("trajectories")
    sizes = meta["n_per_arm"]
    if k is None:
        return "visit-by-visit rows of the kept patients"
    if all(k >= v for v in sizes.values()):
        return "visit-by-visit rows of every patient"
    return (f"visit-by-visit rows of the first {k} patients of each arm only (of "
            + ", ".join(f"{a}: {v}" for a, v in sizes.items())
            + "); the statistics above use every patient (per-patient summaries of all: "
            "ketasim trial --out DIR, then ketasim.trial.load_patients(DIR))")


def trial_html(result, figures: dict[str, bytes] | None = None) -> str:
    """A self-contained HTML report of a virtual trial (inline CSS, PNG figures as base64).

    ``figures`` may pass already rendered ``scores.png`` / ``response.png`` bytes."""
    import base64
    import json
    from html import escape

    from .trial import DISCLAIMER

    s = result.to_dict()
    sc = result.scenario
    meta = s["meta"]
    scale = _SCALE_LABEL[result.scale]
    title = sc.title or "ketasim virtual trial"
    figs = trial_figures(result) if figures is None else figures
    img = {k[:-4]: base64.b64encode(v).decode("ascii") for k, v in figs.items()}
    p = sc.population
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='disclaimer'><strong>{escape(DISCLAIMER)}</strong> Virtual patients from a "
        "mechanistic model; the numbers are model outputs, not clinical evidence. Do not use "
        "them to dose or treat anyone.</p>",
        "<h2>Scenario</h2>",
        f"<p>Population: {escape(p.disorder.upper())}, n = {p.n}, seed {p.seed}, weight "
        f"{p.weight_kg_mean:g} ± {p.weight_kg_sd:g} kg, age {p.age_mean:g} ± {p.age_sd:g} y, "
        f"{100 * p.female_fraction:.0f}% female, {escape(p.race)}"
        + (f", on {escape(', '.join(p.comedication))}" if p.comedication else "")
        + f". Scale {scale}; response = fall ≥ {100 * sc.endpoints.response_fraction:.0f}% "
        f"from baseline; remission = {scale} ≤ {meta['remission_threshold']:g}.</p>",
        _html_table(["arm", "n", "ratio", "treatment"],
                    [[a.name, str(s["arm_summary"][a.name]["n"]), f"{a.ratio:g}",
                      s["arm_summary"][a.name]["treatment"]] for a in sc.arms], "arms"),
        "<h2>Mean score over time</h2>",
        f"<img alt='mean {scale} per arm' src='data:image/png;base64,{img['scores']}'>",
        "<h2>Response and remission</h2>",
        f"<img alt='response rates' src='data:image/png;base64,{img['response']}'>",
        "<h2>Endpoints per arm</h2>",
    ]
    for name, rows in s["arms"].items():
        b = s["arm_summary"][name]
        parts.append(_html_table(
            ["visit", "n", f"mean {scale} (SD)", "change [95% CI]", "response", "remission",
             "Δ MADRS item 10", "Δ SSI"],
            [[v, str(r["n"]), f"{_f(r['mean'])} ({_f(r['sd'])})",
              f"{_f(r['change'])} {_ci(r['ci95'])}", _f(r["response_rate"], 1, True),
              _f(r["remission_rate"], 1, True), _f(r["madrs_item10_change"], 2),
              _f(r["ssi_change"], 2)] for v, r in rows.items()],
            f"{name} — baseline {scale} {_f(b['baseline_mean'])} ({_f(b['baseline_sd'])})"))
    parts.append("<h2>Differences between arms</h2>")
    parts.append("<p class='muted'>ARM1 minus ARM2 in mean change from baseline (negative "
                 "favours ARM1), Welch 95% CI; response-rate difference with Newcombe's "
                 "hybrid score 95% CI (Wilson-based); "
                 "Cohen's d of the change.</p>")
    drows = []
    for key, rows in s["differences"].items():
        for v, r in rows.items():
            drows.append([_pair_label(s, key), v, f"{_f(r['difference'])} {_ci(r['ci95'])}",
                          "–" if r["p_value"] is None else
                          ("<0.0001" if r["p_value"] < 1e-4 else f"{r['p_value']:.4f}"),
                          _f(r["cohens_d"], 2),
                          f"{_pp(r['response_rate_difference'])} "
                          f"{_pp_ci(r['response_rate_difference_ci95'])}"])
    if drows:
        parts.append(_html_table(["pair", "visit", "difference [95% CI]", "p", "Cohen's d",
                                  "response-rate difference, percentage points [95% CI]"],
                                 drows))
        on = [f"{_pair_label(s, k)}: {v['visit']} (favours {v['favours']})" if v
              else f"{_pair_label(s, k)}: none" for k, v in s["onset"].items()]
        parts.append(f"<p>Onset (first visit with a 95% CI excluding 0): "
                     f"{escape('; '.join(on))}.</p>")
    else:
        parts.append("<p>One arm only: no differences.</p>")
    parts.append("<h2>Side effects</h2>")
    parts.append(_html_table(
        ["arm", "median peak Ce (ng/mL, racemic-equivalent)", "mean peak CADSS", "peak CADSS ≥ 4",
         "mean peak ΔSBP (mmHg)"],
        [[n, _f(b["median_peak_effect_site_ng_per_ml"]), _f(b["mean_peak_cadss"]),
          _f(b["peak_dissociation_incidence"], 1, True), _f(b["mean_peak_sbp_change_mmhg"])]
         for n, b in s["arm_summary"].items()], "peaks per patient"))
    srows = [[n, v, _f(r["cadss_mean"], 2), _f(r["dissociation_incidence"], 1, True),
              _f(r["sbp_change_mmhg_mean"], 2), _f(r["sedation_mean"], 3),
              _f(r["bprs_positive_mean"], 2)]
             for n, rows in s["arms"].items() for v, r in rows.items()]
    parts.append(_html_table(["arm", "visit", "CADSS", "CADSS ≥ 4", "ΔSBP (mmHg)",
                              "sedation (0–1)", "BPRS+"], srows, "at the visits (means)"))
    parts.append("<h2>Time to response and relapse</h2>")
    trows = []
    for n, b in s["arm_summary"].items():
        t, r = b["time_to_response"], b["relapse"]
        head = [n, f"{t['n_responded']} / {t['n']}", _f(t["median_h"]),
                _f(t["median_among_responders_h"]), r["responder_visit"] or "–"]
        if r["n_relapsed"] is None:  # no visit after the responder visit
            trows.append([*head, f"not assessable: {r['note']}", "–", "–", "–"])
        else:
            trows.append([*head, str(r["n_at_risk"]), str(r["n_relapsed"]),
                          str(r["n_censored"]), _f(r["median_d"])])
    parts.append(_html_table(
        ["arm", "ever responded", "median time to response (h)", "… among responders (h)",
         "responder visit", "responders", "relapsed", "censored",
         "median time to relapse (d)"], trows))
    parts.append(f"<p class='muted'>{escape(meta['definitions']['time_to_response'])}. "
                 f"Relapse: {escape(meta['definitions']['relapse'])}. "
                 "– = not reached or not defined.</p>")
    parts.append("<h2>Run metadata</h2>")
    parts.append(_html_table(["key", "value"], [
        ["ketasim version", meta["ketasim_version"]], ["seed", str(meta["seed"])],
        ["executor", f"{meta['executor']} ({meta['workers']} worker(s), chunks of "
                     f"{meta['chunk_size']})"],
        ["kernel", str(meta.get("kernel", "lanes"))],
        ["wall time (s)", _f(meta["wall_s"], 2)],
        ["patients per arm", ", ".join(f"{k}: {v}" for k, v in meta["n_per_arm"].items())],
        ["results.parquet", _kept_text(meta)]]))
    parts.append(_html_table(["card", "sha256 (prefix)"],
                             [[k, v] for k, v in sorted(meta["card_hashes"].items())],
                             "card hashes"))
    parts.append("<h3>Scenario (validated)</h3><pre>"
                 + escape(json.dumps(meta["scenario"], indent=1, ensure_ascii=False))
                 + "</pre>")
    parts.append(f"<p class='muted'>{escape(DISCLAIMER)}</p></body></html>")
    return "\n".join(parts)


def _atomic_bytes(path: str, data: bytes, field: str) -> None:
    import os
    import tempfile

    target = os.path.abspath(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".ketasim-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        from .shards import _ordinary_mode

        _ordinary_mode(tmp)  # mkstemp makes 0600; outputs are ordinary files (umask read once)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise KetasimError(field, f"cannot write {path}: {exc.strerror or exc}") from exc


#: run metadata copied into a results file's Parquet key-value metadata (``ketasim.*``)
PROVENANCE_KEYS = ("seed", "ketasim_version", "card_hashes", "scenario_hash", "scenario",
                   "n_per_arm", "visits", "scale", "trajectories")


def _parquet_with_provenance(df, meta: dict,
                             keys: tuple[str, ...] = PROVENANCE_KEYS) -> bytes:
    """``df`` as Parquet bytes whose schema metadata carries the run's provenance under
    ``ketasim.<key>`` (JSON values) for each of ``keys`` in ``meta``: by default seed,
    ketasim version, card hashes, scenario (and its hash), so a results file copied or
    downloaded on its own still says how it was made
    (``pyarrow.parquet.read_schema(path).metadata``)."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    md = dict(table.schema.metadata or {})
    for k in keys:
        if k in meta:
            md[f"ketasim.{k}".encode()] = json.dumps(meta[k], default=str).encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(md), buf)
    return buf.getvalue()


#: a run-metadata line at the top of a CSV written by :func:`csv_with_provenance`
_CSV_META_LINE = re.compile(r"^# ([A-Za-z_][A-Za-z0-9_]*): (.*)$")


def csv_with_provenance(df, meta: dict, keys: tuple[str, ...] = PROVENANCE_KEYS,
                        title: str = "ketasim results") -> bytes:
    """``df`` as UTF-8 CSV bytes headed by the run's provenance, so that a CSV downloaded on
    its own still says how it was made (as :func:`_parquet_with_provenance` for Parquet).

    The first lines start with ``#``: ``title``, how to read the file, then one
    ``# <key>: <JSON value>`` line per key of ``keys`` in ``meta`` (the keys of the Parquet
    metadata, without the ``ketasim.`` prefix), then the disclaimer. ``pandas.read_csv(path,
    comment="#")`` reads the table; :func:`read_csv_metadata` the metadata. Should a text cell
    contain ``#``, every text cell is quoted, so ``comment="#"`` never cuts a row short."""
    import csv
    import json

    from .trial import DISCLAIMER

    lines = [f"# {title}",
             '# read the table with pandas.read_csv(path, comment="#"); the run metadata '
             "below are JSON values (ketasim.report.read_csv_metadata(path) reads them)"]
    lines += [f"# {k}: {json.dumps(meta[k], default=str)}" for k in keys if k in meta]
    lines.append(f"# disclaimer: {json.dumps(DISCLAIMER)}")
    text_cols = df.select_dtypes(exclude=["number", "bool"])
    hashed = any(text_cols[c].astype(str).str.contains("#", regex=False).any()
                 for c in text_cols.columns) or any("#" in str(c) for c in df.columns)
    body = df.to_csv(index=False, lineterminator="\n",
                     quoting=csv.QUOTE_NONNUMERIC if hashed else csv.QUOTE_MINIMAL)
    return ("\n".join(lines) + "\n" + body).encode("utf-8")


def read_csv_metadata(path: str) -> dict:
    """The run metadata from the ``# key: value`` lines at the top of a CSV written by
    :func:`csv_with_provenance` (e.g. the web app's ``results.csv``); ``{}`` if it has none."""
    import json

    out: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                m = _CSV_META_LINE.match(line.rstrip("\n"))
                if m:
                    out[m.group(1)] = json.loads(m.group(2))
    except OSError as exc:
        raise KetasimError("csv", f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise KetasimError("csv", f"{path}: a metadata line is not JSON: {exc}") from exc
    return out


def write_trial_outputs(result, folder: str, figures: bool = False,
                        extra: dict | None = None, field: str = "out") -> list[str]:
    """Write results.parquet (long table), summary.json and report.html (and, with
    ``figures``, scores.png and response.png) into ``folder``, each atomically: a failed
    write leaves any file already there untouched. Returns the paths written."""
    import json
    import os

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise KetasimError(field, f"not a folder: {folder}")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise KetasimError(field, f"cannot create folder {folder}: {exc.strerror}") from exc
    if not os.path.isdir(folder):
        raise KetasimError(field, f"not a folder: {folder}")
    names = ["results.parquet", "summary.json", "report.html"]
    if figures:
        names += ["scores.png", "response.png"]
    for name in names:  # checked before anything is written: all files are new, or none
        if os.path.isdir(os.path.join(folder, name)):
            raise KetasimError(field, f"{os.path.join(folder, name)} is a folder, not a file")
    files: dict[str, bytes] = {}
    files["results.parquet"] = _parquet_with_provenance(result.data, result.meta)
    summary = result.to_dict()
    if extra:
        summary.update(extra)
    files["summary.json"] = json.dumps(summary, indent=1, ensure_ascii=False).encode("utf-8")
    figs = trial_figures(result)
    files["report.html"] = trial_html(result, figs).encode("utf-8")
    if figures:
        files.update(figs)
    written = []
    for name, data in files.items():
        path = os.path.join(folder, name)
        _atomic_bytes(path, data, field)
        written.append(path)
    return written
