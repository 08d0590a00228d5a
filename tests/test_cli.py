"""CLI contract: JSON keys, exit codes and one-line errors (run in-process through main())."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketasim.cli import main

KAMP = ["pk", "--drug", "ketamine", "--model", "kamp2020", "--route", "iv-infusion", "--dose",
        "0.5 mg/kg", "--duration", "40 min", "--weight", "70", "--times-min", "5,10,20,40",
        "--json"]


def run(capsys, args):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_pk_json_contract(capsys):
    rc, out, err = run(capsys, KAMP)
    assert rc == 0, err
    d = json.loads(out)
    assert d["time_min"] == [5.0, 10.0, 20.0, 40.0]
    assert len(d["plasma_ng_per_ml"]) == 4
    for key in ("cmax_ng_per_ml", "tmax_min", "auc_ng_h_per_ml"):
        assert isinstance(d[key], float)
    # the infusion peak is at its end; concentrations rise during the infusion
    assert d["tmax_min"] == pytest.approx(40.0, abs=1e-3)
    assert all(b > a for a, b in zip(d["plasma_ng_per_ml"], d["plasma_ng_per_ml"][1:],
                                                   strict=False))
    # AUC 0-inf of a linear model with elimination from the sampled compartment = dose / CL
    assert d["auc_ng_h_per_ml"] == pytest.approx(35.0 / 84.0 * 1000.0, rel=1e-9)
    assert d["metadata"]["model"] == "kamp2020"
    assert d["anaesthetic_range"] is False


def test_pk_esketamine_intranasal(capsys):
    rc, out, err = run(capsys, ["pk", "--drug", "esketamine", "--model", "perez-ruixo-2021",
                                "--route", "intranasal", "--dose", "56 mg", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    assert 10.0 < d["tmax_min"] < 90.0
    assert "noresketamine_plasma_ng_per_ml" in d


@pytest.mark.parametrize("route", ["iv-bolus", "iv-infusion", "intranasal", "oral", "im", "sc",
                                   "sublingual", "rectal"])
def test_every_racemic_route(capsys, route):
    rc, out, err = run(capsys, ["pk", "--route", route, "--dose", "0.5 mg/kg", "--times-h",
                                "0.5,1,2,4", "--json"])
    assert rc == 0, err
    assert max(json.loads(out)["plasma_ng_per_ml"]) > 0


def test_anaesthetic_flag(capsys):
    rc, out, _ = run(capsys, ["pk", "--model", "kamp2020", "--route", "iv-bolus", "--dose",
                              "2 mg/kg", "--times-min", "1,5", "--json"])
    d = json.loads(out)
    assert rc == 0 and d["anaesthetic_range"] is True
    assert any("anaesthetic" in w for w in d["warnings"])


@pytest.mark.parametrize("args, field", [
    (["--dose", "-1 mg"], "dose"),
    (["--dose", "0 mg/kg"], "dose"),
    (["--dose", "5 furlongs"], "dose"),
    (["--dose", "5 kg"], "dose"),
    (["--duration", "40 parsecs"], "duration"),
    (["--model", "nope"], "model"),
    (["--route", "teleport"], "route"),
    (["--drug", "esketamine", "--route", "im"], "route"),
    (["--weight", "0.1"], "weight"),
    (["--weight", "301"], "weight"),
    (["--times-min", "5,5,10"], "times-min"),
    (["--times-min", "10,5"], "times-min"),
    (["--times-min", "a,b"], "times-min"),
    (["--schedule", "now and then"], "schedule"),
    (["--salt", "sulfate"], "salt"),
    (["--weight", "abc"], "--weight"),
])
def test_bad_input_one_line_exit_2(capsys, args, field):
    rc, out, err = run(capsys, ["pk", *args])
    assert rc == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and field in lines[0]
    assert "Traceback" not in err


def test_failed_write_keeps_existing_file(capsys, tmp_path):
    target = tmp_path / "conc.csv"
    target.write_text("precious")
    rc, _, err = run(capsys, [*KAMP[:-1], "--weight", "999", "--csv", str(target)])
    assert rc == 2
    assert target.read_text(encoding="utf-8") == "precious"


def test_pk_csv_carries_its_provenance(capsys, tmp_path):
    """A CSV cannot hold metadata, so `pk --csv` writes them beside it (FILE.meta.json):
    version, card hashes, covariates, regimen and options, as the JSON output has them."""
    target = tmp_path / "conc.csv"
    rc, out, err = run(capsys, [*KAMP[:-1], "--weight", "82", "--age", "61", "--csv",
                                str(target), "--json"])
    assert rc == 0, err
    printed = json.loads(out)["metadata"]
    side = json.loads((tmp_path / "conc.csv.meta.json").read_text(encoding="utf-8"))
    assert side["table"] == "conc.csv"
    assert side["metadata"] == printed
    assert side["metadata"]["card_hashes"]["pk/kamp2020"]
    assert side["metadata"]["covariates"]["weight_kg"] == 82.0
    assert side["metadata"]["covariates"]["age_years"] == 61.0
    assert side["weight_kg"] == 82.0 and "not medical advice" in side["disclaimer"].lower()
    header = target.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[0] == "time_h" and len(target.read_text(encoding="utf-8").splitlines()) == 5


def test_pk_csv_sidecar_checked_before_work(capsys, tmp_path):
    (tmp_path / "conc.csv.meta.json").mkdir()
    rc, _, err = run(capsys, [*KAMP[:-1], "--csv", str(tmp_path / "conc.csv")])
    assert rc == 2 and "csv" in err and "is a folder" in err
    assert not (tmp_path / "conc.csv").exists()


def test_event_table_round_trip(capsys, tmp_path):
    table = tmp_path / "doses.csv"
    rc, out1, err = run(capsys, ["pk", "--dose", "0.5 mg/kg", "--duration", "40 min",
                                 "--schedule", "every 3.5 d x 8", "--times-h", "1,200",
                                 "--event-table", str(table), "--json"])
    assert rc == 0, err
    assert "ADDL" in table.read_text(encoding="utf-8")
    rc, out2, err = run(capsys, ["pk", "--regimen-csv", str(table), "--times-h", "1,200",
                                 "--json"])
    assert rc == 0, err
    a, b = json.loads(out1), json.loads(out2)
    assert b["n_doses"] == 8
    assert b["plasma_ng_per_ml"] == pytest.approx(a["plasma_ng_per_ml"], rel=1e-12)


def test_models_lists_sources(capsys):
    rc, out, _ = run(capsys, ["models", "--json"])
    rows = json.loads(out)
    assert rc == 0
    ids = {r["id"] for r in rows}
    assert {"kamp2020", "domino", "clements1981", "hijazi2003", "herd2007", "hornik2018",
            "perez-ruixo-2021"} <= ids
    assert all(r["pmid"] or r["doi"] or r["urls"] for r in rows)


def test_run_main_job(capsys, tmp_path):
    # the main job is the default virtual trial (tests/test_trial.py checks it in detail)
    rc, out, err = run(capsys, ["run", "--json", "--n", "10", "--out", str(tmp_path)])
    assert rc == 0, err
    res = json.loads(out)
    assert set(res["arms"]) == {"ketamine", "midazolam"}
    assert res["headline"]["median_peak_effect_site_ng_per_ml"]["ketamine"] > 0
    for fig in ("scores.png", "response.png"):  # figures carry the seed and card hashes
        info = _png_provenance(tmp_path / fig)
        assert info["seed"] == 0 and info["card_hashes"] == res["meta"]["card_hashes"]


def test_enantiomers_add_up_to_racemate(capsys):
    rc, out, err = run(capsys, ["pk", "--times-min", "20,40,120,600", "--enantiomers", "--json"])
    assert rc == 0, err
    d = json.loads(out)
    s, r, total = (d["s-ketamine_plasma_ng_per_ml"], d["r-ketamine_plasma_ng_per_ml"],
                   d["plasma_ng_per_ml"])
    # S is cleared faster than R, so after the infusion S < R; together they track the racemate
    assert s[-1] < r[-1]
    for a, b, t in zip(s, r, total, strict=True):
        assert a + b == pytest.approx(t, rel=0.02)
    rc, _, err = run(capsys, ["pk", "--drug", "esketamine", "--route", "intranasal", "--dose",
                              "56 mg", "--enantiomers"])
    assert rc == 2 and "enantiomers" in err


def test_calibrate_mechanism_json_records_version_and_every_card(capsys):
    """The report printed with --json carries its provenance (it used to only with --write):
    the ketasim version and every card's hash, the rodent PK cards of the experiments
    included, and which timing targets are data and which assumed."""
    code, out, _ = run(capsys, ["calibrate", "mechanism", "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["ketasim_version"] and d["met"] == d["total"]
    assert {"mechanism/signalling", "pk/mouse-ip"} <= set(d["card_hashes"])
    assert set(d["timing_basis"]) == set(d["timing"])


# --------------------------------------------------------------------------- provenance
ESK_IN = ["pk", "--drug", "esketamine", "--route", "intranasal", "--dose", "56 mg", "--json"]


def test_pk_metadata_records_covariates_regimen_and_times(capsys):
    """Two patients with different Cmax must not share the same metadata."""
    rc, out, err = run(capsys, [*ESK_IN, "--age", "30"])
    assert rc == 0, err
    young = json.loads(out)
    rc, out, err = run(capsys, [*ESK_IN, "--age", "75", "--race", "asian"])
    assert rc == 0, err
    old = json.loads(out)
    assert young["cmax_ng_per_ml"] != old["cmax_ng_per_ml"]
    assert young["metadata"] != old["metadata"]
    cov = old["metadata"]["covariates"]
    assert cov == {"weight_kg": 70.0, "age_years": 75.0, "sex": "male", "race": "asian",
                   "species": "human"}
    assert old["metadata"]["regimen"] == [{"time_h": 0.0, "amount": 56.0, "unit": "mg",
                                           "duration_h": 0.0, "route": "intranasal"}]
    times = old["metadata"]["times"]
    assert times["n"] == len(old["time_min"])
    assert [t * 60.0 for t in times["values_h"]] == pytest.approx(old["time_min"])
    assert old["metadata"]["options"]["default_times"] is True
    # existing keys stay
    assert {"ketasim_version", "model", "card_hashes", "solver"} <= set(old["metadata"])


def test_pk_metadata_records_infusion_schedule_and_times(capsys):
    rc, out, err = run(capsys, ["pk", "--dose", "0.5 mg/kg", "--duration", "40 min",
                                "--schedule", "every 3.5 d x 2", "--weight", "80",
                                "--times-min", "5,10,20", "--json"])
    assert rc == 0, err
    m = json.loads(out)["metadata"]
    assert [(d["time_h"], d["amount"], d["unit"], d["duration_h"]) for d in m["regimen"]] == [
        (0.0, 0.5, "mg/kg", pytest.approx(40 / 60)), (84.0, 0.5, "mg/kg", pytest.approx(40 / 60))]
    assert m["covariates"]["weight_kg"] == 80.0
    assert m["options"]["times_min"] == "5,10,20" and m["options"]["default_times"] is False
    assert m["options"]["schedule"] == "every 3.5 d x 2"
    assert m["times"]["values_h"] == pytest.approx([5 / 60, 10 / 60, 20 / 60])


def test_simulate_metadata_records_covariates_and_output_times(capsys, tmp_path):
    args = ["simulate", "--days", "1", "--step-h", "6", "--weight", "82", "--age", "61",
            "--sex", "female", "--race", "black", "--schedule", "daily x 2"]
    rc, out, err = run(capsys, [*args, "--json"])
    assert rc == 0, err
    d = json.loads(out)
    m = d["metadata"]
    assert m["covariates"] == {"weight_kg": 82.0, "age_years": 61.0, "sex": "female",
                               "race": "black", "species": "human"}
    assert m["output_times"] == {"days": 1.0, "step_h": 6.0, "horizon_h": 24.0,
                                 "plus_h_after_each_dose": [0.25, 0.5, 0.75],
                                 "plus_end_of_each_infusion": True}
    assert m["times"]["values_h"] == d["time_h"]
    course = m["courses"][0]
    assert [x["time_h"] for x in course["regimen"]] == [0.0, 24.0]
    assert course["regimen"][0]["duration_h"] == pytest.approx(40 / 60)
    assert m["overrides"] == {}
    assert {"ketasim_version", "card_hashes", "hypotheses", "solver", "regimen"} <= set(m)
    rc, _, err = run(capsys, [*args, "--out", str(tmp_path)])
    assert rc == 0, err
    saved = json.loads((tmp_path / "metadata.json").read_text(encoding="utf-8"))
    assert saved["covariates"] == m["covariates"]
    assert saved["output_times"] == m["output_times"]


def _png_provenance(path) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["Description"])


def test_pk_plot_png_records_version_and_cards(capsys, tmp_path):
    from ketasim import __version__
    from ketasim.cards import card_versions

    p = tmp_path / "pk.png"
    rc, _, err = run(capsys, [*KAMP, "--plot", str(p)])
    assert rc == 0, err
    info = _png_provenance(p)
    assert info["ketasim_version"] == __version__
    assert info["card_hashes"] == card_versions()
    assert "seed" not in info  # a PK run has no random numbers


def test_simulate_plot_png_records_version(capsys, tmp_path):
    from ketasim import __version__

    p = tmp_path / "mech.png"
    rc, _, err = run(capsys, ["simulate", "--days", "1", "--step-h", "6", "--plot", str(p)])
    assert rc == 0, err
    assert _png_provenance(p)["ketasim_version"] == __version__


def test_python_dash_m_runs_the_cli():
    """``python -m ketasim`` works (e.g. from a source checkout with PYTHONPATH=src)."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "ketasim", "models", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert any(m["id"] == "clements1981" for m in json.loads(r.stdout))


def test_piped_tables_are_not_cut_to_80_columns(capsys, monkeypatch):
    """Output to a pipe or file has no terminal width; tables get room instead of rich's 80
    columns (which broke headers into "populati / on"); COLUMNS still sets the width."""
    monkeypatch.delenv("COLUMNS", raising=False)
    rc, out, _ = run(capsys, ["models"])
    assert rc == 0
    assert "population" in out and "clements1981 (default)" in out
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = run(capsys, ["models"])
    assert rc == 0 and max(len(x) for x in out.splitlines()) <= 80
