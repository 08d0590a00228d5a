"""User-journey review (2026-11-27): what a pharmacometrician, a clinician-scientist and an
educator read in the CLI's tables, JSON and help texts agrees with what was computed."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import typer

from ketasim.cli import DISCLAIMER, app, main


def run(capsys, args):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _help(command: str, option: str) -> str:
    cmd = typer.main.get_command(app).commands[command]
    (p,) = [p for p in cmd.params if p.name == option]
    return p.help or ""


def test_pk_table_keeps_distinct_sub_minute_times_apart(capsys):
    # before: 0.5, 1.5 and 2.5 min were printed as 0, 2 and 2 (two rows with the same time)
    rc, out, err = run(capsys, ["pk", "--times-min", "0.5,1.5,2.5,30"])
    assert rc == 0, err
    times = re.findall(r"^│\s*([0-9.]+)\s*│", out, flags=re.M)
    assert times == ["0.5", "1.5", "2.5", "30"]


def test_simulate_peak_plasma_matches_pk_cmax(capsys):
    # before: simulate's grid skipped the end of the infusion (40 min), so its table, CSV and
    # figure peaked at 157 ng/mL while `ketasim pk` gave Cmax 177 ng/mL for the same dose
    rc, out, err = run(capsys, ["pk", "--times-min", "40", "--json"])
    assert rc == 0, err
    cmax = json.loads(out)["cmax_ng_per_ml"]
    rc, out, err = run(capsys, ["simulate", "--days", "1", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert max(d["plasma_ng_per_ml"]["ketamine"]) == pytest.approx(cmax, rel=1e-4)
    assert 40 / 60 == pytest.approx(min(t for t in d["time_h"] if t > 0.5))
    assert d["metadata"]["output_times"]["plus_end_of_each_infusion"] is True


def test_simulate_table_shows_large_values_and_units(capsys):
    # before: a mouse's 1201 ng/mL peak read "1.2e+03", and nothing said what block_* or
    # "1.01" meant
    rc, out, err = run(capsys, ["simulate", "--species", "mouse", "--route", "ip", "--dose",
                                "10 mg/kg", "--days", "1"])
    assert rc == 0, err
    assert "e+03" not in out
    assert re.search(r"│\s*0\.5\s*│\s*1\d{3}\s*│", out)
    assert "fraction of NMDA receptors blocked" in out and "× baseline" in out


def test_help_texts_state_the_defaults_behind_none_and_zero():
    # before: --days said "[default: 0.0]" with no word on what 0 simulates (14 days), and
    # --duration did not say that an IV infusion runs 40 min when none is given
    assert "14 days" in _help("simulate", "days")
    for command in ("pk", "simulate"):
        assert "40 min if not given" in _help(command, "duration")
    assert "past the last score" in _help("forecast", "days")


def test_help_texts_state_the_defaults_the_code_uses(monkeypatch, tmp_path):
    """Options whose default is None: the help says what the code then does (documentation
    audit, eleventh session: these four said nothing, or only half)."""
    import os

    from ketasim import sensitivity
    from ketasim.web.app import Settings

    samples = _help("sensitivity", "samples")
    assert "default 128" in samples and "default 10" in samples
    assert '128 if method == "sobol" else 10' in inspect.getsource(sensitivity.run_sensitivity)
    assert "$XDG_DATA_HOME/ketasim/web" in _help("serve", "data_dir")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Settings().data_dir == os.path.join(str(tmp_path), "ketasim", "web")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert Settings().data_dir == os.path.expanduser("~/.local/share/ketasim/web")
    assert "default 2" in _help("trial", "workers")
    assert "default serial" in _help("trial", "executor")
    assert "at most 1000" in _help("trial", "chunk_size")


@pytest.mark.parametrize("args", [
    ["experiment", "spine-blockade", "--json"],
    ["fit", "tests/data/fit/pk_small.csv", "--model", "kamp2020", "--estimate", "CL", "--json"],
    ["forecast", "tests/data/fit/patient.csv", "--steps", "100", "--days", "3", "--json"],
    ["sensitivity", "--samples", "2", "--n", "10", "--json"],
])
def test_result_json_carries_the_disclaimer(capsys, args):
    # before: pk, simulate, trial, run and validate JSON carried it; these four did not
    rc, out, err = run(capsys, args)
    assert rc == 0, err
    assert json.loads(out)["disclaimer"] == DISCLAIMER


def test_experiment_text_prints_the_disclaimer(capsys):
    rc, out, err = run(capsys, ["experiment", "spine-blockade"])
    assert rc == 0, err
    assert DISCLAIMER in out


def test_suicidality_column_names_the_madrs_item(capsys, tmp_path):
    # before: "Δ item 10" also in HAM-D6 trials, where HAM-D's item 10 is psychic anxiety
    rc, out, err = run(capsys, ["trial", "fava2020", "--n", "30", "--out", str(tmp_path)])
    assert rc == 0, err
    assert "Δ MADRS item 10" in out and "sedation (0–1)" in out
    assert "Δ MADRS item 10" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_esketamine_effect_site_is_labelled_racemic_equivalent(capsys, tmp_path):
    # before: "effect site median 217 ng/mL" for esketamine nasal spray, whose own plasma
    # Cmax is ≈ 73 ng/mL (`ketasim pk`): the value is esketamine × its potency factor
    rc, out, err = run(capsys, ["trial", "transform2", "--n", "20", "--out", str(tmp_path)])
    assert rc == 0, err
    line = next(x for x in out.splitlines() if "peaks per patient" in x)
    assert "ng/mL racemic-equivalent" in line
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "median peak Ce (ng/mL, racemic-equivalent)" in html


def test_pk_tmax_of_a_multi_week_schedule_reads_in_days(capsys):
    """Tmax after the first dose of a 4-week schedule printed only as minutes (35320 min)."""
    assert main(["pk", "--dose", "0.5 mg/kg", "--schedule", "twice weekly for 4 weeks"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Cmax"))
    assert "(day " in line and "after the first dose" in line
    assert main(["pk"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Cmax"))
    assert "at 40 min after the first dose" in line


def test_response_rate_differences_read_as_percentage_points(tmp_path, capsys):
    """A response-rate difference printed as "34%" reads like a relative change; it is a
    difference of two percentages, now shown signed in percentage points (text, report)."""
    toml = tmp_path / "s.toml"
    toml.write_text('title = "pp"\n[population]\nn = 20\nseed = 3\n[[arm]]\nname = "k"\n'
                    'drug = "ketamine"\nroute = "iv-infusion"\ndose = "0.5 mg/kg"\n'
                    '[[arm]]\nname = "p"\ncontrol = "saline"\n[endpoints]\nat = ["24 h"]\n')
    out = tmp_path / "run"
    assert main(["trial", str(toml), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Δ response (pp)" in text
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    diff = summary["differences"]["k-p"]["24 h"]["response_rate_difference"]
    assert f"{100 * diff:+.0f}" in text
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "percentage points" in html and f"{100 * diff:+.1f}" in html


def test_fit_table_gives_the_residual_error_units(capsys):
    """The fit table showed sigma_prop with an empty units cell next to IIV CVs in %."""
    from pathlib import Path

    data = Path(__file__).parent / "data" / "fit" / "pk_small.csv"
    assert main(["fit", str(data), "--model", "kamp2020", "--estimate", "CL",
                 "--method", "map"]) == 0
    row = next(x for x in capsys.readouterr().out.splitlines() if "sigma_prop" in x)
    assert "fraction of the prediction" in row


def test_trial_time_to_response_also_in_days(tmp_path, capsys):
    """Time to response was printed in hours beside a relapse median in days."""
    toml = tmp_path / "s.toml"
    toml.write_text('title = "d"\n[population]\nn = 20\nseed = 3\n[[arm]]\nname = "k"\n'
                    'drug = "ketamine"\nroute = "iv-infusion"\ndose = "0.5 mg/kg"\n'
                    '[[arm]]\nname = "p"\ncontrol = "saline"\n[endpoints]\n'
                    'at = ["24 h", "3 d", "7 d"]\n')
    assert main(["trial", str(toml), "--out", str(tmp_path / "run")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "time to response" in x]
    m = re.search(r"median ([0-9.]+) h = ([0-9.]+) d", lines[0])
    assert m and float(m.group(2)) == pytest.approx(float(m.group(1)) / 24, abs=0.06)


@pytest.mark.parametrize("args", [["models"], ["cards"], ["calibrate", "mechanism"],
                                  ["export-sbml", "--out", "{tmp}/m.xml"]])
def test_listing_commands_print_the_disclaimer(capsys, tmp_path, args):
    # before: models, cards, calibrate and export-sbml printed no disclaimer in text mode
    rc, out, err = run(capsys, [a.format(tmp=tmp_path) for a in args])
    assert rc == 0, err
    assert DISCLAIMER in out.replace("\n", " ")


def test_pk_without_effect_site_says_where_trials_take_it(capsys):
    # esketamine's PK card has no effect site, while trials report a racemic-equivalent Ce:
    # the pk table must say where that concentration comes from instead of staying silent
    rc, out, err = run(capsys, ["pk", "--drug", "esketamine", "--route", "intranasal",
                                "--dose", "84 mg", "--times-h", "1"])
    assert rc == 0, err
    text = " ".join(out.split())
    assert "has no effect site" in text and "racemic equivalents" in text
    rc, out, err = run(capsys, ["pk", "--times-h", "1"])  # racemic: has an effect site
    assert "effect site (ng/mL)" in out and "has no effect site" not in " ".join(out.split())
    # memantine (no effect site either) runs in `pk` but is not a trial drug: no trial clause
    rc, out, err = run(capsys, ["pk", "--drug", "memantine", "--route", "oral", "--dose",
                                "10 mg", "--times-h", "1"])
    assert rc == 0, err
    text = " ".join(out.split())
    assert "has no effect site" in text and "trials" not in text
    assert "memantine" in _help("pk", "drug")


def test_pk_json_times_are_the_minutes_asked_for(capsys):
    # before: the default times came back as 4.99999998, 10.00000002, ... minutes (hours
    # rounded to 1e-9 for the dose-event keys, then multiplied by 60)
    rc, out, err = run(capsys, ["pk", "--json"])
    assert rc == 0, err
    t = json.loads(out)["time_min"]
    assert t[:4] == [5.0, 10.0, 15.0, 20.0]
    rc, out, err = run(capsys, ["pk", "--json", "--times-min", "0.5,1.5,2.5"])
    assert json.loads(out)["time_min"] == [0.5, 1.5, 2.5]
