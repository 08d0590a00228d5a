"""Command-line shell over the library (typer + rich). Errors: one line, exit code 2."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import KetasimError

# typer vendors click in recent releases; find its exception base without importing privates
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

DISCLAIMER = "ketasim is a research tool, not medical advice."
#: ``ketasim run`` keeps the visit rows of up to this many patients per arm (all at the default
#: n = 500: 3,500 rows); larger runs belong to ``ketasim trial --out`` (per-patient shards)
RUN_TRAJECTORIES_MAX = 10_000
#: most output times a one-subject command returns (a guard against a tiny step)
MAX_OUTPUT_TIMES = 200_000

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help=f"Simulate ketamine for depression, from dose to mood. {DISCLAIMER}")
bench_app = typer.Typer(add_completion=False, invoke_without_command=True,
                        help="Benchmarks (scripts that print numbers). Without a subcommand: "
                             "ketasim vs libRoadRunner vs SciPy side by side.")
app.add_typer(bench_app, name="bench")
out = Console(soft_wrap=True)
#: table width (characters) when stdout is not a terminal and COLUMNS is not set
NON_TTY_WIDTH = 160


def _jsonable(v):
    """Plain JSON: arrays as lists, NumPy scalars as numbers, NaN and ±inf as null (strict
    JSON has no NaN; ``jq``, browsers and most parsers reject it)."""
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _parse_times(text: str, field: str) -> np.ndarray:
    from .units import shorten

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise KetasimError(field, f"cannot read {shorten(text)} as comma-separated numbers") \
            from exc
    t = np.asarray(vals, dtype=float)
    if t.size == 0:
        raise KetasimError(field, "need at least one time")
    if t.size > MAX_OUTPUT_TIMES:
        raise KetasimError(field, f"{t.size} times; at most {MAX_OUTPUT_TIMES}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise KetasimError(field, "times must be finite and ≥ 0")
    if t.max() > 24 * 3650 * (60 if field.endswith("min") else 1):
        raise KetasimError(field, "times must lie within 10 years")
    if np.any(np.diff(t) <= 0):
        raise KetasimError(field, "times must be strictly increasing")
    return t


def _sig3(v: float) -> str:
    """Three significant digits without switching to exponent notation for large values
    (1204 ng/mL as 1204, not 1.2e+03); small values keep their exponent."""
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _minutes(m: float) -> str:
    """An output time in minutes for a table: whole minutes as integers, others with up to
    three decimals (so 0.5, 1.5 and 2.5 min are not all shown as a whole minute)."""
    return np.format_float_positional(round(float(m), 3), trim="-")


def _default_times_h(regimen) -> np.ndarray:
    end = regimen.end_h
    fine = np.arange(5, 4 * 60 + 1, 5) / 60.0
    coarse = np.arange(5.0, end + 24.0 + 1e-9, 1.0)
    doses = np.concatenate([d.time_h + fine for d in regimen])
    return np.unique(np.round(np.concatenate([fine, coarse, doses]), 9))


@app.command()
def pk(
    drug: Annotated[str, typer.Option(help="ketamine | esketamine | memantine")] = "ketamine",
    model: Annotated[str | None, typer.Option(help="PK model id (see `ketasim models`)")] = None,
    route: Annotated[str, typer.Option(help="iv-bolus, iv-infusion, intranasal, oral, im, sc, "
                                            "sublingual, rectal")] = "iv-infusion",
    dose: Annotated[str, typer.Option(help="e.g. '0.5 mg/kg', '56 mg' (base)")] = "0.5 mg/kg",
    duration: Annotated[str | None, typer.Option(help="IV infusion duration, e.g. '40 min' "
                                                      "(iv-infusion: 40 min if not given)")]
    = None,
    schedule: Annotated[str | None, typer.Option(help="e.g. 'every 3.5 d x 8', "
                                                      "'twice weekly for 4 weeks'")] = None,
    salt: Annotated[str | None, typer.Option(help="'hcl' if the dose is ketamine HCl")] = None,
    weight: Annotated[float, typer.Option(help="body weight, kg (0.5–300)")] = 70.0,
    age: Annotated[float, typer.Option(help="age, years")] = 40.0,
    sex: Annotated[str, typer.Option(help="male | female")] = "male",
    race: Annotated[str, typer.Option(help="caucasian, black, asian, japanese, other")]
    = "caucasian",
    times_min: Annotated[str | None, typer.Option(help="output times, min, comma-separated")]
    = None,
    times_h: Annotated[str | None, typer.Option(help="output times, h, comma-separated")] = None,
    regimen_csv: Annotated[str | None, typer.Option(help="read the regimen from a NONMEM-style "
                                                         "event table (CSV)")] = None,
    event_table: Annotated[str | None, typer.Option(help="write the regimen as a NONMEM-style "
                                                         "event table (CSV) to this file")] = None,
    enantiomers: Annotated[bool, typer.Option(help="also report S- and R-ketamine (racemic "
                                                   "models)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    plot: Annotated[str | None, typer.Option(help="save a figure (PNG) to this file")] = None,
    csv: Annotated[str | None, typer.Option(help="save the concentration table (CSV)")] = None,
) -> None:
    """Plasma, metabolite and effect-site concentrations for one patient and one regimen."""
    from .pk import Covariates, resolve_model, simulate_pk
    from .regimen import Regimen, normalise_route

    for path, fld in ((event_table, "event-table"), (plot, "plot"), (csv, "csv"),
                      (csv and csv + ".meta.json", "csv")):
        _out_file(path, fld)

    if regimen_csv:
        regimen = Regimen.from_event_table(_read_csv(regimen_csv, "regimen-csv"),
                                           source=regimen_csv)
    else:
        r = normalise_route(route)
        if r == "iv-infusion" and duration is None:
            duration = "40 min"
        regimen = Regimen.build(r, dose, duration=duration, schedule=schedule, salt=salt)
    cov = Covariates(weight_kg=weight, age_years=age, sex=sex, race=race)
    if times_min and times_h:
        raise KetasimError("times-min", "give --times-min or --times-h, not both")
    if times_min:
        t = _parse_times(times_min, "times-min") / 60.0
    elif times_h:
        t = _parse_times(times_h, "times-h")
    else:
        t = _default_times_h(regimen)
    card = resolve_model(drug, model, regimen.routes)
    res = simulate_pk(regimen, t, drug=drug, model=card.id, covariates=cov,
                      enantiomers=enantiomers)
    if event_table:
        from .pk.model import assemble

        system = assemble(card, cov, routes=regimen.routes)
        cmt = {rt: system.index(card.routes[rt].inputs[0].to) + 1 for rt in regimen.routes}
        _write(event_table, regimen.to_event_table(weight, cmt).to_csv(index=False),
               "event-table")
    s = {k: v[0] for k, v in res.summary.items()}
    payload = {
        "time_min": np.round(res.time_h * 60.0, 6).tolist(),  # undo the 1e-9-h key rounding
        "plasma_ng_per_ml": res.plasma_ng_per_ml[res.parent][0].tolist(),
        "cmax_ng_per_ml": s["cmax_ng_per_ml"],
        "tmax_min": round(float(s["tmax_h"]) * 60.0, 6),
        "auc_ng_h_per_ml": s["auc_0_inf_ng_h_per_ml"],
        "auc_0_24_ng_h_per_ml": s["auc_0_24_ng_h_per_ml"],
        "auc_0_last_ng_h_per_ml": s["auc_0_last_ng_h_per_ml"],
        "t_half_terminal_h": s["t_half_terminal_h"],
        "anaesthetic_range": bool(s.get("anaesthetic_range", False)),
    }
    for sp, c in res.plasma_ng_per_ml.items():
        if sp != res.parent:
            payload[f"{sp}_plasma_ng_per_ml"] = c[0].tolist()
            payload[f"{sp}_cmax_ng_per_ml"] = s[f"{sp}_cmax_ng_per_ml"]
    for c in res.effect_ng_per_ml.values():
        payload["effect_site_ng_per_ml"] = c[0].tolist()
    payload.update({
        "drug": drug, "model": card.id, "sampling": card.sampling, "route": list(regimen.routes),
        "n_doses": len(regimen), "dose_total_mg": regimen.total_mg(weight),
        "weight_kg": weight, "warnings": res.warnings,
        "auc_definition": "auc_ng_h_per_ml is AUC from 0 to infinity (all doses), exact",
        "metadata": {**{k: v for k, v in res.metadata.items()
                        if k not in ("dosed_mg", "presystemic_mg")},
                     "options": {"route": route, "dose": dose, "duration": duration,
                                 "schedule": schedule, "salt": salt,
                                 "regimen_csv": regimen_csv, "times_min": times_min,
                                 "times_h": times_h,
                                 "default_times": not (times_min or times_h)}},
        "disclaimer": DISCLAIMER,
    })
    if csv:
        # a CSV has no place for provenance: the run's metadata go beside it, so the table
        # never travels without the version, card hashes, covariates, regimen and options
        _write(csv + ".meta.json", json.dumps(_jsonable({
            "table": csv.replace("\\", "/").rsplit("/", 1)[-1], "metadata": payload["metadata"],
            "drug": drug, "model": card.id, "route": list(regimen.routes),
            "weight_kg": weight, "warnings": res.warnings,
            "columns": "time_h (h); plasma and effect-site concentrations in ng/mL, one "
                       "column per species",
            "disclaimer": DISCLAIMER}), indent=1), "csv")
        _write(csv, res.to_frame().drop(columns="patient").to_csv(index=False), "csv")
    if plot:
        from .report import plot_pk

        plot_pk(res, plot, run=payload["metadata"])
    if as_json:
        print(json.dumps(_jsonable(payload)))
        return
    table = Table(title=f"{drug} · {card.id} · {', '.join(regimen.routes)} · {weight:g} kg")
    table.add_column("time (min)", justify="right")
    table.add_column(f"{res.parent} plasma (ng/mL)", justify="right")
    for sp in res.plasma_ng_per_ml:
        if sp != res.parent:
            table.add_column(f"{sp} (ng/mL)", justify="right")
    if res.effect_ng_per_ml:
        table.add_column("effect site (ng/mL)", justify="right")
    for i, ti in enumerate(res.time_h):
        row = [_minutes(ti * 60), f"{res.plasma_ng_per_ml[res.parent][0, i]:.1f}"]
        row += [f"{c[0, i]:.1f}" for sp, c in res.plasma_ng_per_ml.items() if sp != res.parent]
        row += [f"{c[0, i]:.1f}" for c in res.effect_ng_per_ml.values()]
        table.add_row(*row)
    out.print(table)
    tmax = payload["tmax_min"]
    at = (f"{tmax:.0f} min" if tmax < 180 else
          f"{tmax:.0f} min ({tmax / 60:.1f} h)" if tmax < 2 * 1440 else
          f"{tmax:.0f} min (day {tmax / 1440:.2f})")
    out.print(f"Cmax {payload['cmax_ng_per_ml']:.1f} ng/mL at {at} after the first dose · "
              f"AUC0–∞ {payload['auc_ng_h_per_ml']:.0f} ng·h/mL · "
              f"AUC0–24 {payload['auc_0_24_ng_h_per_ml']:.0f} ng·h/mL · "
              f"terminal t½ {payload['t_half_terminal_h']:.1f} h")
    for w in res.warnings:
        out.print(f"[yellow]warning:[/] {w}")
    if not res.effect_ng_per_ml:
        req = " (racemic equivalents: × the esketamine potency factor)" \
            if drug == "esketamine" else ""
        # memantine is not a trial drug (scenario arms: ketamine, esketamine)
        trials = "" if drug == "memantine" else (
            ", and trials (`ketasim run`, `ketasim trial`) report this plasma concentration as "
            f"the effect-site concentration{req}")
        out.print(f"[dim]The {card.id} card has no effect site: the brain follows plasma "
                  f"without delay{trials}.[/]")
    out.print(f"[dim]{DISCLAIMER}[/]")


def _read_csv(path: str, field: str):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except FileNotFoundError as exc:
        raise KetasimError(field, f"file not found: {path}") from exc
    except Exception as exc:  # pandas parser errors
        raise KetasimError(field, f"cannot read {path} as CSV: {exc.__class__.__name__}") from exc


def _out_file(path: str | None, field: str) -> None:
    """Refuse an output file that cannot be written *before* any work is done, so a command
    never fails half-way with some outputs new and others old."""
    import os

    if not path:
        return
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise KetasimError(field, f"{path} is a folder, not a file")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise KetasimError(field, f"folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(target)
                                                    and not os.access(target, os.W_OK)):
        raise KetasimError(field, f"cannot write {path}: permission denied")


def _out_dir(path: str | None, field: str, names: tuple[str, ...] = ()) -> None:
    """As :func:`_out_file` for an output folder (created later if missing) and the files
    ``names`` that will be written into it."""
    import os

    if not path:
        return
    target = os.path.abspath(path)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise KetasimError(field, f"{path} exists and is not a folder")
        if not os.access(target, os.W_OK | os.X_OK):
            raise KetasimError(field, f"cannot write in {path}: permission denied")
        for name in names:
            _out_file(os.path.join(path, name), field)
    else:
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise KetasimError(field, f"folder does not exist: {parent}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise KetasimError(field, f"cannot create {path}: permission denied")


def _write(path: str, text: str | bytes, field: str) -> None:
    """Write atomically: a failed write leaves any existing file untouched."""
    import os
    import tempfile

    _out_file(path, field)
    target = os.path.abspath(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".ketasim-")
        with (os.fdopen(fd, "wb") if isinstance(text, bytes)
              else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            fh.write(text)
        from .shards import _ordinary_mode

        _ordinary_mode(tmp)  # mkstemp makes 0600; outputs are ordinary files (umask read once)
        os.replace(tmp, target)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise KetasimError(field, f"cannot write {path}: {exc.strerror or exc}") from exc


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List the PK models with their sources, routes and studied populations."""
    from .cards import load_pk_cards

    rows = []
    for c in load_pk_cards().values():
        rows.append({"id": c.id, "drug": c.drug, "title": c.title, "routes": list(c.routes),
                     "sampling": c.sampling, "default": bool(c.default_for),
                     "age_years": list(c.population.age_years),
                     "weight_kg": list(c.population.weight_kg),
                     "range_evidence": c.population.range_evidence,
                     "species": c.species, "citation": c.citation, "pmid": c.pmid,
                     "doi": c.doi, "urls": c.urls,
                     "transcription": c.transcription})
    if as_json:
        print(json.dumps(rows))
        return
    t = Table(title="PK models (ketasim models --json for everything)")
    for col in ("id", "drug", "title", "routes", "sampling", "population", "PMID / DOI"):
        t.add_column(col, overflow="fold")
    for r in rows:
        pop = f"{r['age_years'][0]:g}–{r['age_years'][1]:g} y, {r['weight_kg'][0]:g}–" \
              f"{r['weight_kg'][1]:g} kg" + (" (assumed)" if r["range_evidence"] == "assumed"
                                               else "")
        src = " ".join(x for x in (r["pmid"] and f"PMID {r['pmid']}",
                                   r["doi"] and f"doi {r['doi']}") if x)
        t.add_row(r["id"] + (" (default)" if r["default"] else ""), r["drug"], r["title"],
                  ", ".join(r["routes"]), r["sampling"], pop, src)
    out.print(t)
    out.print(f"[dim]{DISCLAIMER}[/]")


def _run_scenario(scenario, chunk_size: int | None, workers: int | None, label: str,
                  trajectories: int | None = None):
    from .progress import RichProgress
    from .trial import run_trial

    if workers is not None and not 1 <= workers <= 256:
        raise KetasimError("workers", f"must be 1..256, got {workers}")
    bar = RichProgress(label)
    try:
        if workers is not None and workers > 1:
            res = run_trial(scenario, chunk_size=chunk_size, executor="processes",
                            progress=bar, workers=workers, trajectories=trajectories)
        else:
            res = run_trial(scenario, chunk_size=chunk_size, executor="serial", progress=bar,
                            trajectories=trajectories)
    finally:
        bar.close()
    bar.finish()
    return res


def _p(v) -> str:
    return "–" if v is None else ("<0.0001" if v < 1e-4 else f"{v:.4f}")


def _fmt(v, nd: int = 1, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.{nd}f}%" if pct else f"{v:.{nd}f}"


def _pp(v) -> str:
    """A difference of two rates (fractions) in percentage points, signed."""
    return "–" if v is None else f"{100 * v:+.0f}"


def _relapse_text(rl: dict) -> str:
    """The relapse part of an arm's line: counts and median, or why it is not assessable."""
    if rl["n_relapsed"] is None:  # responder visit is the last visit: nothing to count
        return f"not assessable at {rl['responder_visit'] or '–'} ({rl['note']})"
    return (f"{rl['n_relapsed']}/{rl['n_at_risk']} responders at "
            f"{rl['responder_visit'] or '–'} relapsed, median "
            f"{_fmt(rl['median_d'])} d ({rl['n_censored']} censored)")


def _print_trial(s: dict) -> None:
    meta = s["meta"]
    scale = {"madrs": "MADRS", "hamd17": "HAM-D17", "hamd6": "HAM-D6"}[meta["scale"]]
    sc = meta["scenario"]
    out.print(f"[bold]{sc['title'] or 'virtual trial'}[/] · {sc['population']['disorder']} · "
              f"n = {sc['population']['n']} · seed {meta['seed']} · {meta['wall_s']:.1f} s "
              f"({meta['executor']})")
    drugs = {a["name"]: a.get("drug") for a in sc.get("arm", [])}
    for name, rows in s["arms"].items():
        b = s["arm_summary"][name]
        # the score and side-effect model's Ce is racemic-equivalent (esketamine × its potency
        # factor): say so where it is not the drug's own concentration
        ce_unit = "ng/mL racemic-equivalent" if drugs.get(name) == "esketamine" else "ng/mL"
        t = Table(title=f"{name}: {b['treatment']} (n = {b['n']}, baseline {scale} "
                        f"{_fmt(b['baseline_mean'])})")
        for col in ("visit", f"mean {scale}", "change", "95% CI", "response", "remission"):
            t.add_column(col, justify="right")
        u = Table(title=f"{name}: suicidality and side effects (means)")
        for col in ("visit", "Δ MADRS item 10", "Δ SSI", "CADSS", "CADSS ≥ 4", "ΔSBP mmHg",
                    "sedation (0–1)"):
            u.add_column(col, justify="right")
        for v, r in rows.items():
            lo, hi = r["ci95"]
            t.add_row(v, _fmt(r["mean"]), _fmt(r["change"]), f"[{_fmt(lo)}, {_fmt(hi)}]",
                      _fmt(r["response_rate"], 0, True), _fmt(r["remission_rate"], 0, True))
            u.add_row(v, _fmt(r["madrs_item10_change"], 2), _fmt(r["ssi_change"], 1),
                      _fmt(r["cadss_mean"]), _fmt(r["dissociation_incidence"], 0, True),
                      _fmt(r["sbp_change_mmhg_mean"]), _fmt(r["sedation_mean"], 2))
        out.print(t)
        out.print(u)
        # side effects peak at the end of an infusion, usually between visits: the per-patient
        # peaks (over the whole course) say what the visit means above cannot
        out.print(f"  peaks per patient: effect site median "
                  f"{_fmt(b['median_peak_effect_site_ng_per_ml'])} {ce_unit} · CADSS mean "
                  f"{_fmt(b['mean_peak_cadss'])} (≥ 4 in "
                  f"{_fmt(b['peak_dissociation_incidence'], 0, True)}) · ΔSBP mean "
                  f"{_fmt(b['mean_peak_sbp_change_mmhg'])} mmHg")
        tt, rl = b["time_to_response"], b["relapse"]
        days = ("" if tt["median_h"] is None or tt["median_h"] < 24 else
                f" = {_fmt(tt['median_h'] / 24)} d")
        out.print(f"  time to response: median {_fmt(tt['median_h'])} h{days} "
                  f"({tt['n_responded']}/{tt['n']} ever responded); relapse: "
                  + _relapse_text(rl))
    for key, rows in s["differences"].items():
        a1, a2 = s["pairs"][key]
        t = Table(title=f"{a1} vs {a2}: difference in mean {scale} change (negative favours "
                        f"{a1})")
        for col in ("visit", "difference", "95% CI", "p", "d", "Δ response (pp)", "95% CI "):
            t.add_column(col, justify="right")
        for v, r in rows.items():
            lo, hi = r["ci95"]
            rlo, rhi = r["response_rate_difference_ci95"]
            t.add_row(v, _fmt(r["difference"]), f"[{_fmt(lo)}, {_fmt(hi)}]",
                      _p(r["p_value"]), _fmt(r["cohens_d"], 2),
                      _pp(r["response_rate_difference"]),
                      f"[{_pp(rlo)}, {_pp(rhi)}]")
        out.print(t)


_TRIAL_FILES = ("results.parquet", "summary.json", "report.html")


@app.command()
def trial(
    scenario: Annotated[str | None, typer.Argument(help="scenario TOML file, or the name of a "
                                                        "shipped example (--list-examples)")]
    = None,
    list_examples: Annotated[bool, typer.Option("--list-examples",
                                                help="list the shipped scenarios")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    out_dir: Annotated[str | None, typer.Option("--out", help="write results.parquet, "
                                                             "summary.json, report.html here")]
    = None,
    chunk_size: Annotated[int | None, typer.Option(help="patients per chunk (results do not "
                                                        "depend on it; default: total / 100, "
                                                        "at least 50, serial; total / (8 × "
                                                        "workers) otherwise; at most 1000)")]
    = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (processes / dask "
                                                     "LocalCluster; default 2); >1 alone: "
                                                     "processes")]
    = None,
    n: Annotated[int | None, typer.Option("--n", help="override population.n")] = None,
    seed: Annotated[int | None, typer.Option(help="override population.seed", min=0)] = None,
    executor: Annotated[str | None, typer.Option(help="serial | processes | dask (default "
                                                      "serial; processes with --workers > 1, "
                                                      "dask with --scheduler)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="dask scheduler tcp://HOST:PORT (an "
                                                       "existing cluster; implies dask)")]
    = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="with --out: skip chunks whose shards are "
                                              "already there (--no-resume: start over)")]
    = True,
    trajectories: Annotated[int | None, typer.Option(help="patients per arm whose visit-by-"
                                                          "visit table is kept (default 20)")]
    = None,
    kernel: Annotated[str, typer.Option(help="compiled kernel: auto (codegen from 20,000 "
                                             "patients, else lanes), lanes or codegen "
                                             "(generated per arm, ~7 s once, ~5x faster)")]
    = "auto",
) -> None:
    """Run a virtual trial from a TOML scenario: arms, endpoints, differences, report.

    With --out DIR, each chunk's per-patient summaries go to DIR/shards (Parquet) and a rerun
    resumes from them."""
    from .trial import example_names, example_title, resolve_scenario, with_overrides

    if list_examples or scenario is None:
        rows = [{"name": e, "title": example_title(e)} for e in example_names()]
        if as_json:
            print(json.dumps(rows))
            return
        t = Table(title="shipped scenarios (ketasim trial NAME)")
        t.add_column("name")
        t.add_column("title", overflow="fold")
        for r in rows:
            t.add_row(r["name"], r["title"])
        out.print(t)
        return
    from .progress import RichProgress
    from .trial import run_trial

    _out_dir(out_dir, "out", _TRIAL_FILES)
    sc = with_overrides(resolve_scenario(scenario), n=n, seed=seed)
    if executor is None:
        executor = ("dask" if scheduler else
                    "processes" if workers is not None and workers > 1 else "serial")
    bar = RichProgress("patients")
    try:
        res = run_trial(sc, chunk_size=chunk_size, executor=executor, progress=bar,
                        workers=workers if workers is not None else 2, out=out_dir,
                        resume=resume, trajectories=trajectories, scheduler=scheduler,
                        kernel=kernel)
    finally:
        bar.close()
    bar.finish()
    s = res.to_dict()
    if out_dir:
        from .report import write_trial_outputs

        s["files"] = write_trial_outputs(res, out_dir)
    if as_json:
        print(json.dumps(s))
        return
    _print_trial(s)
    if out_dir:
        out.print(f"wrote {', '.join(s['files'])}")
    out.print(f"[dim]{DISCLAIMER}[/]")


@app.command()
def run(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    out_dir: Annotated[str, typer.Option("--out", help="folder for figures, results.parquet, "
                                                       "summary.json, report.html")]
    = "ketasim-out",
    n: Annotated[int | None, typer.Option("--n", help="virtual patients (default 500)")]
    = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default 0)", min=0)] = None,
    workers: Annotated[int, typer.Option(help="worker processes (1 = serial)")] = 2,
) -> None:
    """The main job: ketamine vs midazolam in 500 virtual TRD patients over 14 days.

    Ketamine 0.5 mg/kg IV over 40 min; prints a summary and writes figures and a report."""
    import time

    from .report import write_trial_outputs
    from .trial import resolve_scenario, with_overrides

    _out_dir(out_dir, "out", (*_TRIAL_FILES, "scores.png", "response.png"))
    t0 = time.perf_counter()
    sc = with_overrides(resolve_scenario("default"), n=n, seed=seed)
    # the main job keeps every patient's visit rows in results.parquet (up to
    # RUN_TRAJECTORIES_MAX per arm), so the file alone reproduces the report's statistics
    res = _run_scenario(sc, None, workers, "virtual patients",
                        trajectories=min(sc.population.n, RUN_TRAJECTORIES_MAX))
    s = res.to_dict()
    s["files"] = write_trial_outputs(res, out_dir, figures=True, field="out")
    s["meta"]["total_wall_s"] = round(time.perf_counter() - t0, 3)
    if as_json:
        print(json.dumps(s))
        return
    h = s["headline"]
    arms = list(s["arms"])
    drug, ctrl = arms[0], arms[1]
    out.print(f"[bold]ketasim {__version__}[/] — {sc.title}")
    per_arm = ", ".join(f"{k} {v}" for k, v in s["meta"]["n_per_arm"].items())
    out.print(f"{sc.population.n} virtual patients ({per_arm}), "
              f"seed {sc.population.seed}, visits {', '.join(sc.endpoints.at)}")
    out.print(f"PK: median peak effect-site ketamine "
              f"{_fmt(h['median_peak_effect_site_ng_per_ml'][drug])} ng/mL")
    on = h["onset"]
    out.print("Onset (first visit with a 95% CI of the MADRS difference excluding 0): "
              + (f"{on['visit']} (favours {on['favours']})" if on else "none"))
    t = Table(title="response / remission (MADRS) at 24 h and 7 d; every visit: report.html, "
                    "summary.json")
    for col in ("visit", *[f"{a} response" for a in arms], *[f"{a} remission" for a in arms]):
        t.add_column(col, justify="right")
    for v in h["response"]:
        t.add_row(v, *[_fmt(h["response"][v][a], 0, True) for a in arms],
                  *[_fmt(h["remission"][v][a], 0, True) for a in arms])
    out.print(t)
    d = h.get("difference_24h")
    if d:
        out.print(f"MADRS change at {d['visit']}, {drug} − {ctrl}: {_fmt(d['difference'])} "
                  f"[95% CI {_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}], "
                  f"p = {_p(d['p_value'])}")
    out.print(f"Dissociation: mean peak CADSS {drug} {_fmt(h['mean_peak_cadss'][drug])}, "
              f"{ctrl} {_fmt(h['mean_peak_cadss'][ctrl])}; mean peak ΔSBP {drug} "
              f"{_fmt(h['mean_peak_sbp_change_mmhg'][drug])} mmHg, {ctrl} "
              f"{_fmt(h['mean_peak_sbp_change_mmhg'][ctrl])} mmHg")
    out.print(f"wrote {', '.join(s['files'])} in {s['meta']['total_wall_s']:.1f} s")
    out.print(f"[dim]{DISCLAIMER}[/]")


calibrate_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Calibration scripts (rerunnable; print targets and residuals).")
app.add_typer(calibrate_app, name="calibrate")


@app.command()
def simulate(
    drug: Annotated[str, typer.Option(help="ketamine | esketamine | memantine")] = "ketamine",
    model: Annotated[str | None, typer.Option(help="PK model id")] = None,
    route: Annotated[str, typer.Option(help="route (ip for rodents)")] = "iv-infusion",
    dose: Annotated[str, typer.Option(help="e.g. '0.5 mg/kg'")] = "0.5 mg/kg",
    duration: Annotated[str | None, typer.Option(help="IV infusion duration (iv-infusion: "
                                                      "40 min if not given)")] = None,
    schedule: Annotated[str | None, typer.Option(help="e.g. 'twice weekly for 4 weeks'")] = None,
    salt: Annotated[str | None, typer.Option(help="'hcl' if the dose is ketamine HCl")] = None,
    species: Annotated[str, typer.Option(help="human | mouse | rat")] = "human",
    weight: Annotated[float | None, typer.Option(help="kg (default 70 human, 0.03 mouse, "
                                                      "0.3 rat)")] = None,
    age: Annotated[float, typer.Option(help="years")] = 40.0,
    sex: Annotated[str, typer.Option(help="male | female")] = "male",
    race: Annotated[str, typer.Option(help="caucasian, black, asian, japanese, other")]
    = "caucasian",
    hypotheses: Annotated[str, typer.Option(help="'default', 'a,b,f', 'only:c' or 'd=1,c=0'")]
    = "default",
    interventions: Annotated[str, typer.Option(help="comma list, e.g. 'rapamycin,mg=0.5'")]
    = "",
    days: Annotated[float, typer.Option(help="simulated days after the first dose; 0 "
                                             "(default): 7 days past the end of the last "
                                             "dose, at least 14 days")] = 0.0,
    step_h: Annotated[float, typer.Option(help="output step, h")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    out_dir: Annotated[str | None, typer.Option("--out", help="write timecourse.csv, "
                                                             "timecourse.parquet, metadata.json "
                                                             "to this folder")] = None,
    plot: Annotated[str | None, typer.Option(help="save a figure of every stage (PNG)")] = None,
) -> None:
    """One subject end to end: plasma → brain → receptor block → signalling → synapses."""
    import math

    _out_dir(out_dir, "out", ("timecourse.csv", "timecourse.parquet", "metadata.json"))
    _out_file(plot, "plot")
    if not (math.isfinite(days) and days >= 0):
        raise KetasimError("days", f"must be a finite number ≥ 0 (0: the default), got {days:g}")
    from .engine import Course
    from .engine import simulate as run_sim
    from .mechanism import Hypotheses, Interventions, readout_unit
    from .pk import Covariates
    from .regimen import Regimen, normalise_route

    r = normalise_route(route)
    if r == "iv-infusion" and duration is None:
        duration = "40 min"
    regimen = Regimen.build(r, dose, duration=duration, schedule=schedule, salt=salt)
    w = weight if weight is not None else {"human": 70.0, "mouse": 0.03, "rat": 0.3}.get(
        species, 70.0)
    cov = Covariates(weight_kg=w, age_years=age if species == "human" else 0.25, sex=sex,
                     race=race, species=species)
    if not (0 < step_h <= 24):
        raise KetasimError("step-h", f"must be within (0, 24] h, got {step_h:g}")
    horizon = days * 24.0 if days > 0 else max(regimen.end_h + 7 * 24.0, 14 * 24.0)
    if horizon > 24 * 365:
        raise KetasimError("days", "at most 365 days")
    if horizon / step_h + 1 > MAX_OUTPUT_TIMES:
        raise KetasimError("step-h", f"{horizon / step_h + 1:.0f} output times; at most "
                           f"{MAX_OUTPUT_TIMES} (a larger step or fewer days)")
    # the end of each infusion too: there plasma peaks, and a grid that misses it shows a
    # lower peak than `ketasim pk` (157 instead of 177 ng/mL for 0.5 mg/kg over 40 min)
    ends = np.array([d.time_h + d.duration_h for d in regimen if d.duration_h > 0])
    t = np.unique(np.concatenate([np.arange(0.0, horizon + 1e-9, step_h),
                                  np.array([d.time_h + x for d in regimen
                                            for x in (0.25, 0.5, 0.75)]), ends]))
    t = t[t <= horizon]
    res = run_sim([Course(drug, regimen, model)], t, cov,
                  hypotheses=Hypotheses.parse(hypotheses),
                  interventions=Interventions.parse(interventions))
    import pandas as pd

    cols = {"time_h": res.time_h}
    cols.update({f"{k}_plasma_ng_per_ml": v for k, v in res.plasma_ng_per_ml.items()})
    cols.update({f"{k}_brain_free_uM": v for k, v in res.brain_free_uM.items()})
    cols.update(res.readouts)
    df = pd.DataFrame(cols)
    meta = {**res.metadata, "regimen": {"route": r, "dose": dose, "duration": duration,
                                        "schedule": schedule, "salt": salt},
            "output_times": {"days": days, "step_h": step_h, "horizon_h": horizon,
                             "plus_h_after_each_dose": [0.25, 0.5, 0.75],
                             "plus_end_of_each_infusion": True},
            "units": {c: readout_unit(c) for c in df.columns},
            "disclaimer": DISCLAIMER}
    if out_dir:
        import os

        if not os.path.isdir(out_dir):
            os.makedirs(out_dir, exist_ok=True)
        _write(os.path.join(out_dir, "timecourse.csv"), df.to_csv(index=False), "out")
        from .report import _parquet_with_provenance

        # as trial's results.parquet: the table carries its run's metadata (ketasim.<key>,
        # JSON; the timing left out so that two identical runs write identical files)
        jmeta = _jsonable(meta)
        _write(os.path.join(out_dir, "timecourse.parquet"), _parquet_with_provenance(
            df, jmeta, tuple(k for k in jmeta if k != "wall_ms")), "out")
        _write(os.path.join(out_dir, "metadata.json"), json.dumps(_jsonable(meta), indent=1),
               "out")
    if plot:
        from .report import plot_mechanism

        plot_mechanism(res, plot, run=meta)
    if as_json:
        print(json.dumps(_jsonable({"time_h": res.time_h, "plasma_ng_per_ml":
                                    res.plasma_ng_per_ml, "brain_free_uM": res.brain_free_uM,
                                    "readouts": res.readouts, "metadata": meta})))
        return
    keep = ["time_h", f"{drug}_plasma_ng_per_ml", "block_E2B", "block_I", "block_H", "p_eef2",
            "mtorc1", "synaptic_proteins", "spine_density", "synaptic_strength"]
    show = df[[c for c in keep if c in df.columns]]
    idx = np.unique(np.searchsorted(res.time_h, [0.5, 1, 2, 4, 8, 24, 72, 168, 336, 672]))
    table = Table(title=f"{drug} · {species} · {res.metadata['courses'][0]['model']} · "
                        f"hypotheses {hypotheses} · interventions {interventions or 'none'}")
    for c in show.columns:
        table.add_column(c.replace("_plasma_ng_per_ml", " ng/mL"), justify="right")
    for i in idx[idx < len(df)]:
        table.add_row(*[_sig3(v) for v in show.iloc[i]])
    out.print(table)
    out.print("[dim]block_*: fraction of NMDA receptors blocked (0–1); p_eef2 to "
              "synaptic_strength: × baseline[/]")
    out.print(f"[dim]{res.metadata['wall_ms']:.0f} ms · {DISCLAIMER}[/]")


@app.command()
def experiment(
    name: Annotated[str | None, typer.Argument(help="experiment name (see --list)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list experiments")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Run a named in-silico experiment with and without its intervention.

    Genetic experiments (glun2b-deletion, eef2k-knockout, bdnf-knockout) also give
    compensated-genotype readouts, listed last: ``<readout>_within_genotype`` (arm / its
    genotype's vehicle) and ``fst_immobility_compensated`` (s; each genotype's drug-free state
    taken as its baseline, the wild-type vehicle immobility as the no-change value)."""
    from .experiments import EXPERIMENTS, run_experiment

    if list_ or name is None:
        rows = [{"name": e.name, "species": e.species, "finding": e.finding}
                for e in EXPERIMENTS.values()]
        if as_json:
            print(json.dumps(rows))
            return
        t = Table(title="in-silico experiments")
        for col in ("name", "species", "finding"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r["name"], r["species"], r["finding"])
        out.print(t)
        return
    res = run_experiment(name)
    if as_json:
        print(json.dumps(_jsonable({**res, "disclaimer": DISCLAIMER})))
        return
    out.print(f"[bold]{res['name']}[/] ({res['species']}): {res['finding']}")
    t = Table()
    arms = list(res["readouts"][0]["arms"])
    for col in ("readout", "units", "time (h)", *arms):
        t.add_column(col, justify="right", overflow="fold")
    for r in res["readouts"]:
        t.add_row(r["readout"], r.get("units", ""), f"{r['time_h']:g}",
                  *[f"{r['arms'][a]:.4g}" for a in arms])
    out.print(t)
    if any(r["readout"] == "fst_immobility_compensated" for r in res["readouts"]):
        out.print("compensated genotype (assumes development compensates for the gene): "
                  "*_within_genotype = arm / its genotype's vehicle; "
                  "fst_immobility_compensated = immobility from LHb burst and synaptic "
                  "strength relative to the genotype's vehicle, from the wild-type vehicle "
                  "(definitions in --json)")
    out.print(f"[dim]{DISCLAIMER}[/]")


@app.command()
def cards(
    evidence: Annotated[bool, typer.Option("--evidence", help="count parameters by evidence "
                                                             "tag")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Parameters per card by evidence tag (read / derived / calibrated / assumed).

    ``--evidence`` is accepted for clarity; the evidence summary is what this command prints."""
    from .cards import all_parameters

    del evidence
    rows = all_parameters()
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        c = counts.setdefault(r["card"], {"read": 0, "derived": 0, "calibrated": 0,
                                          "assumed": 0})
        c[r["evidence"]] += 1
    total = {k: sum(c[k] for c in counts.values()) for k in ("read", "derived",
                                                               "calibrated", "assumed")}
    if as_json:
        print(json.dumps({"cards": counts, "total": total, "n_parameters": len(rows)}))
        return
    t = Table(title="parameters by evidence tag")
    for col in ("card", "read", "derived", "calibrated", "assumed"):
        t.add_column(col, justify="right")
    for name, c in counts.items():
        t.add_row(name, *[str(c[k]) for k in ("read", "derived", "calibrated", "assumed")])
    t.add_row("[bold]total[/]", *[f"[bold]{total[k]}[/]" for k in total])
    out.print(t)
    out.print(f"[dim]{DISCLAIMER}[/]")


@calibrate_app.command("mechanism")
def calibrate_mechanism(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    write: Annotated[str | None, typer.Option(help="also save the report (JSON; with --fit, "
                                                   "the search's result) to this file, "
                                                   "e.g. docs/calibration-mechanism.json")]
    = None,
    do_fit: Annotated[bool, typer.Option("--fit", help="search the calibrated constants "
                                                       "(Nelder-Mead, minutes)")] = False,
    max_evaluations: Annotated[int, typer.Option(help="model evaluations for --fit")] = 200,
) -> None:
    """Check every mechanism timing target and experiment criterion; print values and misses.

    With --fit, search the calibrated constants from the card values and print the best set."""
    _out_file(write, "write")
    from .calibration import fit, report

    if do_fit:
        if not 1 <= max_evaluations <= 5000:
            raise KetasimError("max-evaluations", "must be 1..5000")
        from .cards import card_versions
        from .progress import RichProgress

        bar = RichProgress("objective evaluations")
        try:
            f = fit(max_evaluations, progress=bar)
        finally:
            bar.close()
        f = {**f, "max_evaluations": max_evaluations, "ketasim_version": __version__,
             "card_hashes": card_versions()}
        if write:
            _write(write, json.dumps(_jsonable(f), indent=1), "write")
        if as_json:
            print(json.dumps(_jsonable(f)))
            return
        out.print(f"penalty {f['penalty_start']:.3g} → {f['penalty_best']:.3g} "
                  f"({f['evaluations']} evaluations)")
        for k, v in f["best"].items():
            out.print(f"{k}: {f['start'][k]:.4g} → {v:.4g}")
        return
    r = report()
    if write or as_json:
        from .cards import card_versions

        # every card: the experiments also use the rodent PK cards
        r_out = {**r, "ketasim_version": __version__, "card_hashes": card_versions()}
        if write:
            _write(write, json.dumps(_jsonable(r_out), indent=1), "write")
        if as_json:
            print(json.dumps(_jsonable(r_out)))
            return
    for k, ok in r["timing"].items():
        basis = r["timing_basis"][k].split(":")[0]
        out.print(("[green]met[/]  " if ok else "[red]MISS[/] ") + k + f" [dim]({basis})[/]")
    for k, v in r["experiments"].items():
        out.print(("[green]met[/]  " if v["met"] else "[red]MISS[/] ") + f"{k}: {v['value']:.3g}")
    out.print(f"[bold]{r['met']} / {r['total']} targets met[/]")
    if r["open_checks"]:
        out.print("Checked but not fitted (known discrepancies stay visible here):")
        for k, v in r["open_checks"].items():
            out.print(("[green]met[/]  " if v["met"] else "[yellow]MISS[/] ")
                      + f"{k}: {v['value']:.3g}")
    out.print(f"[dim]{DISCLAIMER}[/]")


@calibrate_app.command("clinic")
def calibrate_clinic(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    do_fit: Annotated[bool, typer.Option("--fit", help="search the calibrated clinical "
                                                       "constants (Nelder-Mead, minutes)")]
    = False,
    max_evaluations: Annotated[int, typer.Option(help="loss evaluations for --fit")] = 1000,
    write: Annotated[str | None, typer.Option(help="also save the report (JSON; with --fit, "
                                                   "the search's result) to this file, "
                                                   "e.g. docs/calibration-clinic.json")] = None,
) -> None:
    """Clinical targets from the calibration studies: model value and whether each is met.

    With --fit, search the clinical constants from the card values and print the best set
    (write them into cards/mechanism/clinic.yaml, tagged calibrated)."""
    _out_file(write, "write")
    from .clinic_calibration import evaluate, fit_clinic, metrics

    if do_fit:
        if not 1 <= max_evaluations <= 20000:
            raise KetasimError("max-evaluations", "must be 1..20000")
        from .cards import card_versions
        from .clinic_calibration import DESIGNS, targets_hash
        from .progress import RichProgress

        bar = RichProgress("loss evaluations")
        try:
            f = fit_clinic(max_evaluations, progress=bar)
        finally:
            bar.close()
        f = {**f, "max_evaluations": max_evaluations,
             "seeds": {k: d["population"]["seed"] for k, d in DESIGNS.items()},
             "ketasim_version": __version__, "card_hashes": card_versions(),
             "targets_sha256": targets_hash()}
        if write:
            _write(write, json.dumps(_jsonable(f), indent=1), "write")
        if as_json:
            print(json.dumps(_jsonable(f)))
            return
        out.print(f"loss {f['loss_start']:.3g} → {f['loss_best']:.3g}")
        for k, v in f["best"].items():
            out.print(f"{k}: {v:.4g}")
        return
    r = evaluate()
    if as_json or write:
        from .cards import card_versions
        from .clinic_calibration import DESIGNS, N_PER_ARM, load_param_card, targets_hash

        c = {k: v.value for k, v in load_param_card("clinic").parameters.items()}
        report = _jsonable({
            "targets": {k: {"value": v, "met": ok} for k, (v, ok) in r.items()},
            "metrics": metrics(c), "met": sum(ok for _, ok in r.values()), "total": len(r),
            "patients_per_arm": N_PER_ARM,
            "calibrated": {k: v.value for k, v in load_param_card("clinic").parameters.items()
                           if v.evidence == "calibrated"},
            "seeds": {k: d["population"]["seed"] for k, d in DESIGNS.items()},
            "ketasim_version": __version__,
            # every card: the scores run through the mechanism and PK cards too
            "card_hashes": card_versions(),
            "targets_sha256": targets_hash()})
        if write:
            _write(write, json.dumps(report, indent=1), "write")
        if as_json:
            print(json.dumps(report))
            return
    for k, (v, ok) in r.items():
        out.print(("[green]met[/]  " if ok else "[red]MISS[/] ") + f"{k}: {v:.3g}")
    out.print(f"[bold]{sum(ok for _, ok in r.values())} / {len(r)} clinical targets met[/]")
    out.print(f"[dim]{DISCLAIMER}[/]")


@bench_app.command("pk")
def bench_pk(
    n: Annotated[int, typer.Option(help="number of virtual patients")] = 100_000,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """µs per patient for N virtual patients on a 28-day, 8-dose IV regimen."""
    from .bench import run_pk_bench

    if n < 1 or n > 10_000_000:
        raise KetasimError("n", f"must be 1..10,000,000, got {n}")
    r = run_pk_bench(n_patients=n, seed=seed)
    if as_json:
        print(json.dumps(_jsonable(r)))
        return
    for k, v in r.items():
        out.print(f"{k}: {v}")


@bench_app.callback()
def bench_side_by_side(
    ctx: typer.Context,
    n: Annotated[int, typer.Option(help="virtual patients (ketasim and libRoadRunner)")] = 100,
    n_scipy: Annotated[int, typer.Option(help="patients for the SciPy reference")] = 5,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    kernel: Annotated[str, typer.Option(help="ketasim kernel timed as ketasim_us_per_patient: "
                                             "codegen (generated for the configuration) or "
                                             "lanes; the other is timed too")] = "codegen",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """28-day twice-weekly IV course: µs per patient-course for ketasim, libRoadRunner on the
    exported SBML, and SciPy's reference, with ratios and maximum relative differences."""
    if ctx.invoked_subcommand is not None:
        return
    if not 1 <= n <= 100_000:
        raise KetasimError("n", f"must be 1..100,000, got {n}")
    if not 1 <= n_scipy <= 1000:
        raise KetasimError("n-scipy", f"must be 1..1000, got {n_scipy}")
    if kernel not in ("codegen", "lanes"):
        raise KetasimError("kernel", f"unknown kernel {kernel!r}", "codegen, lanes")
    from .bench_sbml import run_side_by_side

    r = run_side_by_side(n_patients=n, seed=seed, n_scipy=n_scipy, kernel=kernel)
    if as_json:
        print(json.dumps(_jsonable({k: v for k, v in r.items() if k != "details"})))
        return
    d = r["details"]
    t = Table(title=f"{d['course']}: MADRS and plasma at {len(d['visits'])} visits")
    for col in ("path", "µs per patient-course", "× ketasim", "max rel. diff vs ketasim"):
        t.add_column(col, justify="right")
    k = r["ketasim_us_per_patient"]
    kern, other = kernel, "lanes" if kernel == "codegen" else "codegen"
    t.add_row(f"ketasim, {r['kernel']} kernel ({r['n_patients']} patients)", f"{k:,.0f}", "1",
              "–")
    ko = r[f"ketasim_{other}_us_per_patient"]
    t.add_row(f"ketasim, {other} kernel ({r['n_patients']})", f"{ko:,.0f}", f"{ko / k:.2f}",
              f"{r[f'max_rel_diff_{other}_vs_{kern}']:.1e}")
    t.add_row(f"libRoadRunner loop ({r['n_patients']})", f"{r['roadrunner_us_per_patient']:,.0f}",
              f"{r['roadrunner_us_per_patient'] / k:.2f}",
              f"{r['max_rel_diff_vs_roadrunner']:.1e}")
    t.add_row(f"SciPy reference ({d['n_scipy']})", f"{r['scipy_us_per_patient']:,.0f}",
              f"{r['scipy_us_per_patient'] / k:.2f}", f"{r['max_rel_diff_vs_scipy']:.1e}")
    t.add_row(f"SciPy, refined mood grid ({d['n_scipy']})",
              f"{r['scipy_refined_us_per_patient']:,.0f}",
              f"{r['scipy_refined_us_per_patient'] / k:.2f}",
              f"{r['max_rel_diff_vs_scipy_refined']:.1e}")
    out.print(t)
    setup = ", ".join(f"{k} {v:.2f} s" for k, v in d["ketasim_setup_s"].items())
    out.print(f"ketasim setup (generate and compile, or load, each kernel; once per "
              f"configuration, not in the per-course times): {setup}")
    for key in ("ketasim_path", "roadrunner", "roadrunner_load_s", "sbml_export_s",
                "roadrunner_param_prep_us_per_patient", "diff_vs_roadrunner", "diff_vs_scipy",
                "madrs_worst_visit_vs_roadrunner", "madrs_mood_grid_vs_refined_grid",
                "madrs_roadrunner_vs_refined_grid", "scipy_path"):
        out.print(f"{key}: {d[key]}")
    out.print(f"machine: {r['machine']}")
    out.print("[dim]timings on a shared machine are noisy[/]")


@app.command("export-sbml")
def export_sbml(
    scenario: Annotated[str, typer.Argument(help="scenario TOML file or shipped example name")]
    = "default",
    out_path: Annotated[str | None, typer.Option("--out", help="SBML file to write")] = None,
    arm: Annotated[str | None, typer.Option("--arm", help="arm name (default: the first drug "
                                                          "arm)")] = None,
) -> None:
    """Write one typical patient's model of an arm as SBML (libRoadRunner, COPASI, tellurium).

    PK, mechanism and mood, with the doses as SBML events."""
    _out_file(out_path, "out")
    from .sbml import export_arm, pick_arm, typical_patient
    from .shards import scenario_hash
    from .trial import resolve_scenario, scenario_dict

    if not out_path:
        raise KetasimError("out", "give the SBML file to write with --out FILE")
    sc = resolve_scenario(scenario)
    a = pick_arm(sc, arm)
    em = export_arm(a, typical_patient(sc), seed=sc.population.seed,
                    source={"scenario": scenario, "scenario_title": sc.title,
                            "scenario_hash": scenario_hash(scenario_dict(sc))})
    _write(out_path, em.sbml, "out")
    out.print(f"wrote {out_path}: arm {a.name!r}, model {em.metadata['pk_model']}, "
              f"{len(em.state_ids)} states; outputs {', '.join(em.plasma.values())}, madrs")
    out.print(f"[dim]{DISCLAIMER} (The SBML notes say so too.)[/]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1: this machine only)")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[str | None, typer.Option(help="folder for the jobs database and trial "
                                                     "results (default "
                                                     "$XDG_DATA_HOME/ketasim/web, else "
                                                     "~/.local/share/ketasim/web)")] = None,
    max_n: Annotated[int, typer.Option(help="most patients in one trial job")] = 2000,
    max_days: Annotated[float, typer.Option(help="latest trial visit, days")] = 120.0,
    max_concurrent: Annotated[int, typer.Option(help="trial jobs running at once")] = 1,
    max_active: Annotated[int, typer.Option(help="trial jobs queued or running")] = 16,
    max_body_kb: Annotated[int, typer.Option(help="largest request body, KiB")] = 64,
    cors_origin: Annotated[list[str] | None, typer.Option(help="allow this browser origin "
                                                               "(repeatable; CORS is off by "
                                                               "default)")] = None,
) -> None:
    """Serve the web page and JSON API (FastAPI + uvicorn; OpenAPI docs at /docs)."""
    _out_dir(data_dir, "data-dir")
    from .web.app import Settings
    from .web.app import serve as run_server

    if not 1 <= port <= 65535:
        raise KetasimError("port", f"must be 1..65535, got {port}")
    for name, v, lo, hi in (("max-n", max_n, 1, 100_000), ("max-days", max_days, 1, 400),
                            ("max-concurrent", max_concurrent, 1, 64),
                            ("max-active", max_active, 1, 10_000),
                            ("max-body-kb", max_body_kb, 1, 10_240)):
        if not lo <= v <= hi:
            raise KetasimError(name, f"must be {lo}..{hi}, got {v:g}")
    s = Settings(max_n=max_n, max_days=max_days, max_concurrent=max_concurrent,
                 max_active=max_active, max_body_bytes=max_body_kb * 1024,
                 cors_origins=list(cors_origin or []))
    if data_dir:
        s.data_dir = data_dir
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach it can run simulations",
              file=sys.stderr)
    out.print(f"ketasim {__version__} on http://{host}:{port}/ (API docs /docs) · {DISCLAIMER}")
    run_server(host, port, s)


docs_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Generate documentation from the code and the cards.")
app.add_typer(docs_app, name="docs")


@docs_app.command("model")
def docs_model(
    out_path: Annotated[str, typer.Option("--out", help="write the page here")]
    = "docs/model.md",
    check: Annotated[bool, typer.Option("--check", help="only check: exit 2 if the page at "
                                        "--out is stale")] = False,
) -> None:
    """Model page (every equation and card parameter with its source) from the cards and code."""
    import os

    if os.path.isdir(out_path):
        raise KetasimError("out", f"{out_path} is a folder, not a file")
    from .docsgen import model_page_is_stale, write_model_page

    if check:
        if model_page_is_stale(out_path):
            raise KetasimError("out", f"{out_path} is stale: run `ketasim docs model --out "
                               f"{out_path}`")
        out.print(f"{out_path} is up to date")
        return
    out.print(f"wrote {write_model_page(out_path)}")


@docs_app.command("cli")
def docs_cli(
    out_path: Annotated[str | None, typer.Option("--out", help="write here (default: print)")]
    = None,
) -> None:
    """Command-line reference (Markdown) generated from this typer app."""
    _out_file(out_path, "out")
    from .docsgen import cli_reference

    text = cli_reference()
    if out_path is None:
        print(text)
        return
    _write(out_path, text, "out")
    out.print(f"wrote {out_path}")


@bench_app.command("engine")
def bench_engine(
    n: Annotated[int, typer.Option(help="patients in the timed batch")] = 200,
    reference: Annotated[int, typer.Option(help="patients run through the SciPy reference")] = 3,
    courses: Annotated[int, typer.Option(
        help="also run this many patient-courses in chunks, summaries only (e.g. 1000000)")] = 0,
    chunk: Annotated[int, typer.Option(help="patients per chunk for --courses")] = 5000,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """µs per patient-course of the batched engine vs the SciPy reference (28 days, 8 doses)."""
    from .bench_engine import run_engine_bench

    for name, v, lo, hi in (("n", n, 1, 1_000_000), ("reference", reference, 1, 100),
                            ("courses", courses, 0, 100_000_000), ("chunk", chunk, 1, 1_000_000)):
        if not lo <= v <= hi:
            raise KetasimError(name, f"must be {lo:,}..{hi:,}, got {v}")
    r = run_engine_bench(n_patients=n, n_reference=reference, courses=courses, chunk=chunk,
                         seed=seed)
    if as_json:
        print(json.dumps(_jsonable(r)))
        return
    for k, v in r.items():
        out.print(f"{k}: {v}")


# --------------------------------------------------------------------------- credibility
report_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Reports (self-contained HTML).")
app.add_typer(report_app, name="report")


def _num(v, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return v
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_num(x, nd) for x in v) + "]"
    return f"{v:.{nd}g}"


def _print_scorecard(r: dict) -> None:
    for c in r["cases"]:
        head = f"[bold]{c['id']}[/] ({c['set']})"
        if not c["endpoints"]:
            out.print(f"{head}: no endpoints – {c['reason']}")
            continue
        t = Table(title=head, title_justify="left")
        for col in ("endpoint", "observed", "predicted", "PI90", "accepted", "within"):
            t.add_column(col, justify="left" if col == "endpoint" else "right")
        for e in c["endpoints"]:
            acc = e["tolerance"]["interval"] or e["tolerance"]["rule"]
            mark = "" if e.get("mc_stable", True) else "~"
            t.add_row(e["name"], _num(e["observed"]), _num(e["predicted"]), _num(e["pi90"]),
                      _num(acc), f"[green]yes{mark}[/]" if e["within"] else f"[red]no{mark}[/]")
        out.print(t)
    for s, v in r["summary"].items():
        if v["endpoints"]:
            out.print(f"[bold]{s}: {v['within']} / {v['endpoints']} endpoints within tolerance "
                      f"({100 * v['fraction_within']:.0f}%), {v['cases']} cases[/]; "
                      f"{v.get('mc_unstable', 0)} verdicts (~) within the Monte Carlo error "
                      f"of {r['meta']['n_per_arm']} patients per arm (another seed may flip "
                      "them)")
    m = r["meta"]
    out.print(f"seed {m['seed']}, {m['n_per_arm']} virtual patients per arm, "
              f"{m['replicates']} replicates, hypotheses {m['hypotheses']}, "
              f"ketasim {m['ketasim_version']}. {DISCLAIMER}")


@app.command()
def validate(
    cases: Annotated[str | None, typer.Option("--cases", help="folder of extra case files "
                                                              "(*.yaml, docs/validation.md)")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    strict: Annotated[bool, typer.Option(help="exit 1 when an endpoint is outside its "
                                              "tolerance")] = False,
    n: Annotated[int, typer.Option(help="virtual patients per arm")] = 100,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    replicates: Annotated[int, typer.Option(help="virtual-trial replicates for the 90% "
                                                 "prediction intervals")] = 100,
    case: Annotated[list[str] | None, typer.Option("--case", help="run only this case id "
                                                                  "(repeatable)")] = None,
    hypotheses: Annotated[str | None, typer.Option(
        help="mechanism hypotheses for every drug arm (e.g. 'only:e'), or 'all' to compare "
             "the default with each hypothesis alone")] = None,
    compare_hypotheses: Annotated[bool, typer.Option(
        "--compare-hypotheses", help="same as --hypotheses all")] = False,
    no_shipped: Annotated[bool, typer.Option("--no-shipped", help="run only the cases in "
                                                                  "--cases")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not read or write the "
                                                              "simulation cache")] = False,
    write: Annotated[str | None, typer.Option(help="also save the JSON to this file")] = None,
) -> None:
    """Run the literature cases and print the scorecard (observed, predicted, 90% PI, within)."""
    _out_file(write, "write")
    from .validate import compare_hypotheses as compare
    from .validate import run_validation

    if no_shipped and cases is None:
        raise KetasimError("no-shipped", "needs --cases FOLDER")
    if seed < 0:
        raise KetasimError("seed", "must be ≥ 0")
    if no_cache:
        import os

        os.environ["KETASIM_CACHE"] = "off"
    def _progress(i: int, total: int, cid: str) -> None:
        if sys.stderr.isatty():
            print(f"\r[{i + 1}/{total}] {cid:<40}", end="", file=sys.stderr, flush=True)

    if compare_hypotheses or hypotheses == "all":
        r = compare(cases, n=n, seed=seed, replicates=replicates, only=case,
                    include_shipped=not no_shipped, progress=_progress)
        if write:
            _write(write, json.dumps(_jsonable(r), indent=1), "write")
        if as_json:
            print(json.dumps(_jsonable(r)))
        else:
            sets = list(r["hypotheses"])
            short = {h: ("def" if h == "default" else h.removeprefix("only:")) for h in sets}
            t = Table(title="endpoints within tolerance per hypothesis set (def = default "
                            "combination; a–f = that branch alone)", title_justify="left")
            t.add_column("case", no_wrap=True)
            for h in sets:
                t.add_column(short[h], justify="right")
            t.add_column("best")
            for cid, best in r["best_by_case"].items():
                t.add_row(cid, *[str(r["within_by_case"][h][cid]) for h in sets],
                          ",".join(short[b] for b in best))
            t.add_row("[bold]total[/]", *[
                str(sum(v["within"] for v in r["hypotheses"][h]["summary"].values()))
                for h in sets], "")
            out.print(t)
        bad = any(e["within"] is False for h in r["hypotheses"].values()
                  for c in h["cases"] for e in c["endpoints"])
    else:
        r = run_validation(cases, n=n, seed=seed, replicates=replicates, hypotheses=hypotheses,
                           only=case, include_shipped=not no_shipped, progress=_progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if write:
            _write(write, json.dumps(_jsonable(r), indent=1), "write")
        if as_json:
            print(json.dumps(_jsonable(r)))
        else:
            _print_scorecard(r)
        bad = any(not e["within"] for c in r["cases"] for e in c["endpoints"])
    if strict and bad:
        raise typer.Exit(1)


@app.command()
def sensitivity(
    endpoint: Annotated[str, typer.Option(help="METRIC@TIME, e.g. madrs_change@24h")]
    = "madrs_change@24h",
    method: Annotated[str, typer.Option(help="sobol or morris")] = "morris",
    samples: Annotated[int | None, typer.Option(
        help="Sobol: base samples N (power of 2; default 128); Morris: trajectories "
             "(default 10)")] = None,
    n: Annotated[int, typer.Option(help="virtual patients")] = 100,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    spread: Annotated[float, typer.Option(help="bounds: card value × (1 ± spread)")] = 0.5,
    params: Annotated[str | None, typer.Option(
        help="comma-separated parameter names (default: the documented subset)")] = None,
    plot: Annotated[str | None, typer.Option(help="save a bar chart (PNG) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Global sensitivity (SALib) of one endpoint to clinic and mechanism card parameters."""
    _out_file(plot, "plot")
    from .progress import RichProgress
    from .sensitivity import plot_indices, run_sensitivity

    bar = RichProgress("model evaluations")
    try:
        r = run_sensitivity(endpoint, method=method, samples=samples, n=n, seed=seed,
                            spread=spread, params=params.split(",") if params else None,
                            progress=bar)
    finally:
        bar.close()
    if plot:
        _write_bytes(plot, plot_indices(r), "plot")
        r["plot"] = plot
    if as_json:
        print(json.dumps(_jsonable({**r, "disclaimer": DISCLAIMER})))
        return
    if r.get("constant_output") and r["method"] == "sobol":
        out.print(r["message"])
        out.print(f"seed {seed}, {r['wall_s']:.1f} s. {DISCLAIMER}")
        return
    t = Table(title=f"{r['method']} sensitivity of {r['endpoint']} "
                    f"(nominal {r['nominal']:.3g}, {r['evaluations']} evaluations)")
    cols = (["parameter", "S1", "S1 CI", "ST", "ST CI"] if r["method"] == "sobol"
            else ["parameter", "mu*", "mu* CI", "sigma"])
    for col in cols:
        t.add_column(col, justify="left" if col == "parameter" else "right")
    for p in r["parameters"]:
        if r["method"] == "sobol":
            t.add_row(p["name"], f"{p['S1']:.3f}", f"±{p['S1_conf']:.3f}", f"{p['ST']:.3f}",
                      f"±{p['ST_conf']:.3f}")
        else:
            t.add_row(p["name"], f"{p['mu_star']:.3g}", f"±{p['mu_star_conf']:.3g}",
                      f"{p['sigma']:.3g}")
    out.print(t)
    if r["method"] == "sobol":
        out.print(f"sum S1 = {r['sum_S1']:.3f} ± {r['sum_S1_conf']:.3f}")
    if r.get("message"):
        out.print(r["message"])
    out.print(f"seed {seed}, {r['wall_s']:.1f} s. {DISCLAIMER}")


def _write_bytes(path: str, data: bytes, field: str) -> None:
    _write(path, data, field)


@report_app.command("credibility")
def report_credibility(
    out_path: Annotated[str, typer.Option("--out", help="HTML file to write")] = "report.html",
    n: Annotated[int, typer.Option(help="virtual patients per arm for the scorecard")] = 100,
    seed: Annotated[int, typer.Option(help="random seed", min=0)] = 0,
    replicates: Annotated[int, typer.Option(help="replicates for prediction intervals")] = 100,
    cases: Annotated[str | None, typer.Option("--cases", help="extra case folder")] = None,
    sensitivity_samples: Annotated[int, typer.Option(
        help="Morris trajectories for the sensitivity section")] = 8,
    no_shipped: Annotated[bool, typer.Option("--no-shipped", help="scorecard of --cases only")]
    = False,
) -> None:
    """Write the credibility report: context of use, diagram, verification, parameters,
    calibration fits, scorecard, sensitivity and limitations (one self-contained HTML file)."""
    _out_file(out_path, "out")
    from .credibility import build_report

    if no_shipped and cases is None:
        raise KetasimError("no-shipped", "needs --cases FOLDER")
    from .progress import RichStatus

    status = RichStatus("credibility report")
    try:
        html = build_report(n=n, seed=seed, replicates=replicates, cases_dir=cases,
                            sensitivity_samples=sensitivity_samples,
                            include_shipped=not no_shipped, progress=status)
    finally:
        status.close()
    _write(out_path, html, "out")
    out.print(f"wrote {out_path}")


def _names(text: str, field: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise KetasimError(field, "give comma-separated parameter names, e.g. CL,V1")
    return names


@app.command()
def fit(
    data: Annotated[str, typer.Argument(help="NONMEM-style CSV (ID, TIME, EVID, AMT, RATE, CMT, "
                                             "DV, MDV, DVID, WT ...)")],
    model: Annotated[str, typer.Option(help="PK model id (see `ketasim models`)")],
    estimate: Annotated[str, typer.Option(help="card parameters to estimate, e.g. CL,V1")],
    iiv: Annotated[str | None, typer.Option(help="parameters with IIV (default: all "
                                                 "estimated)")] = None,
    error: Annotated[str, typer.Option(help="additive | proportional | combined")]
    = "proportional",
    method: Annotated[str, typer.Option(help="foce (population FOCE-I) | map (individual MAP, "
                                             "card prior)")] = "foce",
    report: Annotated[str | None, typer.Option(help="write an HTML report (GOF, individual "
                                                    "fits, VPC) to this file")] = None,
    seed: Annotated[int, typer.Option(help="seed for the VPC simulations", min=0)] = 1,
    workers: Annotated[int, typer.Option(help="worker processes for the population fit's "
                                              "objective evaluations (foce; the same results "
                                              "as 1)")] = 1,
    blq: Annotated[str, typer.Option(help="concentrations below the limit of quantification "
                                          "(CENS or BLQ column): m3 (likelihood of being "
                                          "below the limit) | m1 (drop them)")] = "m3",
    error_per_quantity: Annotated[bool, typer.Option(
        "--error-per-quantity", help="a separate residual error (of the --error kind) for each "
                                     "observed quantity, parent plasma and metabolite (needs "
                                     "both in the data)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Fit a PK model to data: typical values, IIV and residual error (FOCE-I), or MAP."""
    _out_file(report, "report")
    if not 1 <= workers <= 256:
        raise KetasimError("workers", f"must be 1..256, got {workers}")
    from .cards import card_versions
    from .fit import check_blq, fit_population

    blq = check_blq(blq)
    from .progress import RichStatus

    status = RichStatus(f"fitting {model}")
    try:
        problem, res = fit_population(data, model, _names(estimate, "estimate"), error,
                                      _names(iiv, "iiv") if iiv else None, method,
                                      progress=status, workers=workers, blq=blq,
                                      error_by_quantity=error_per_quantity)
    finally:
        status.close()
    d = res.to_dict()
    from .fit.data import file_sha256

    d["metadata"] = {"ketasim_version": __version__, "model": model, "seed": seed,
                     "data": data, "data_sha256": file_sha256(data),
                     "card_hashes": {k: v for k, v in card_versions().items()
                                     if k.startswith("pk")},
                     # the options that rerun this fit (with the data and the model)
                     "options": {"estimate": list(problem.estimate),
                                 "iiv": _names(iiv, "iiv") if iiv else list(problem.estimate),
                                 "error": error, "method": method, "blq": blq,
                                 # recorded only when on: the keys of a default fit unchanged
                                 **({"error_per_quantity": True} if error_per_quantity
                                    else {})},
                     "units": {k: problem.units(k) for k in problem.estimate}}
    if hasattr(res, "individual"):
        d["individual"] = {str(i): {k: e.to_dict() for k, e in v.items()}
                           for i, v in res.individual.items()}
    if report:
        from .fit.report import fit_report_html

        _write(report, fit_report_html(problem, res, seed=seed), "report")
    if as_json:
        print(json.dumps(_jsonable({**d, "disclaimer": DISCLAIMER})))
        return
    t = Table(title=f"{res.method} fit of {model}: {res.n_subjects} subjects, {res.n_obs} obs")
    for c in ("parameter", "estimate", "SE", "95% CI", "IIV CV", "units"):
        t.add_column(c)
    for k, e in res.estimates.items():
        how = " (profile)" if e.ci95_method == "profile-likelihood" else ""
        t.add_row(k, f"{e.value:.4g}", f"{e.se:.3g}", f"{e.ci95[0]:.4g}–{e.ci95[1]:.4g}{how}",
                  "" if e.iiv_cv is None else f"{100 * e.iiv_cv:.1f}%", problem.units(k))
    res_units = {"sigma_prop": "fraction of the prediction",
                 "sigma_add": "DV units (ng/mL for concentrations)"}
    for k, e in res.residual.items():
        base = next((b for b in res_units if k == b or k.startswith(b + "_")), k)
        t.add_row(k, f"{e.value:.4g}", f"{e.se:.3g}", f"{e.ci95[0]:.4g}–{e.ci95[1]:.4g}", "",
                  res_units.get(base, ""))
    out.print(t)
    out.print(f"objective (−2 log L): {res.objective:.3f}; converged: {res.converged}; "
              f"{res.elapsed_s:.1f} s")
    n_cens = getattr(res, "n_censored", 0)
    if n_cens:
        how = ("in the likelihood as below the limit (M3)" if res.blq == "m3"
               else "dropped (M1)")
        out.print(f"{n_cens} observation(s) below the limit of quantification: {how}")
    for w in res.warnings():
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if report:
        out.print(f"report: {report}")
    out.print(f"[dim]{DISCLAIMER}[/]")


@app.command()
def forecast(
    patient: Annotated[str, typer.Argument(help="one patient's CSV: doses (EVID 1) and MADRS "
                                                "scores (EVID 0, DVID madrs)")],
    days: Annotated[float, typer.Option(help="forecast horizon, days from the first dose "
                                             "(at least one day past the last score)")]
    = 28.0,
    threshold: Annotated[float | None, typer.Option(help="MADRS the next dose should keep the "
                                                         "patient below (default: the "
                                                         "response level)")] = None,
    probability: Annotated[float, typer.Option(help="required probability of staying below "
                                                    "the threshold")] = 0.8,
    drug: Annotated[str, typer.Option(help="ketamine | esketamine")] = "ketamine",
    model: Annotated[str | None, typer.Option(help="PK model id")] = None,
    seed: Annotated[int, typer.Option(help="MCMC seed", min=0)] = 1,
    steps: Annotated[int, typer.Option(help="MCMC steps per walker")] = 1500,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Forecast a patient's MADRS: 80% band, response and relapse probabilities, next dose."""
    from .fit.forecast import forecast_patient

    if drug not in ("ketamine", "esketamine"):
        raise KetasimError("drug", f"unknown drug {drug!r}", "ketamine, esketamine")
    if not 100 <= steps <= 100_000:
        raise KetasimError("steps", f"must be 100–100000, got {steps}")
    from .progress import RichProgress

    bar = RichProgress("MCMC steps")
    try:
        fc = forecast_patient(patient, horizon_days=days, threshold=threshold,
                              probability=probability, drug=drug, model=model, seed=seed,
                              n_steps=steps, progress=bar)
    finally:
        bar.close()
    d = fc.to_dict()
    if as_json:
        print(json.dumps(_jsonable({**d, "disclaimer": DISCLAIMER})))
        return
    t = Table(title=f"MADRS forecast, patient {fc.metadata['patient_id']}")
    for c in ("day", "median", "80% band", "P(response)", "P(relapse by)"):
        t.add_column(c)
    for i, day in enumerate(fc.day):
        t.add_row(f"{day:g}", f"{fc.median[i]:.1f}", f"{fc.lo80[i]:.1f}–{fc.hi80[i]:.1f}",
                  f"{fc.p_response[i]:.2f}", f"{fc.p_relapse_by[i]:.2f}")
    out.print(t)
    nd = fc.next_dose_day
    level = (f"MADRS {threshold:g}" if threshold is not None else
             f"the response level ({100 * (1 - fc.metadata['response_fraction']):g}% of "
             "baseline)")
    if fc.next_dose_status == "due_now" or nd is None:
        when = "now (already likely above the threshold)"
    elif fc.next_dose_status == "beyond_horizon":
        when = f"not within the forecast (holds to day {nd:g}; extend --days)"
    else:
        when = f"{nd:.2f}"
    out.print(f"latest day for the next dose (score below {level} with probability "
              f"{probability:g}): {when}")
    dg = fc.diagnostics
    out.print(f"MCMC: acceptance {dg['acceptance_fraction']:.2f}, R-hat max "
              f"{max(dg['rhat']):.3f}, autocorrelation time max {max(dg['autocorr_time']):.1f}")
    out.print(f"[dim]{DISCLAIMER}[/]")


def main(argv: list[str] | None = None) -> int:
    """Entry point: maps ketasim and usage errors to one line on stderr and exit code 2."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="ketasim")
    # piped or redirected output has no terminal width; rich's 80-column default cut table
    # cells into fragments ("populati / on"), so such output gets room (COLUMNS still wins)
    import os

    out.width = (NON_TTY_WIDTH if not out.file.isatty() and "COLUMNS" not in os.environ
                 else None)
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="ketasim")
        if isinstance(rv, int) and rv:  # typer.Exit(code) comes back as a return value
            return rv
    except KetasimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 2
    except _ClickException as exc:
        msg = exc.format_message().replace("\n", " ").strip()
        if msg:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    except (BrokenPipeError, KeyboardInterrupt):
        return 2
    except OSError as exc:  # a path that cannot be read or written
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: this request needs more memory than the machine has (fewer output "
              "times, patients or days)", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line, not a traceback (KETASIM_DEBUG=1 shows it)
        import os

        if os.environ.get("KETASIM_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: unexpected {exc.__class__.__name__}: {msg[:300]} (a ketasim bug: please "
              "report it; KETASIM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
