"""Provenance audit: every output records what reruns it (ketasim version, seed, card hashes,
inputs), reruns are identical, and a failed write never clobbers a file already saved."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from ketasim import __version__
from ketasim.cards import card_versions
from ketasim.cli import main

DATA = Path(__file__).parent / "data" / "fit"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_web_simulate_metadata_records_the_request(tmp_path) -> None:
    """The /api/simulate metadata named neither the dose nor the patient nor the days: the
    response could not be rerun from itself. It now carries the validated request."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ketasim.web.app import Settings, create_app

    req = {"arm": {"name": "A", "drug": "ketamine", "route": "iv-infusion",
                   "dose": "0.7 mg/kg"},
           "patient": {"weight_kg": 90.0, "age_years": 60.0, "sex": "female"}, "days": 2.0}
    app = create_app(Settings(data_dir=str(tmp_path), warm_up=False, job_mode="thread"))
    with TestClient(app) as c:
        r = c.post("/api/simulate", json=req)
    assert r.status_code == 200, r.text
    m = r.json()["metadata"]
    assert m["ketasim_version"] == __version__ and m["card_hashes"] == card_versions()
    rq = m["request"]
    assert rq["arm"]["dose"] == "0.7 mg/kg" and rq["days"] == 2.0
    assert rq["patient"]["weight_kg"] == 90.0 and rq["patient"]["sex"] == "female"
    assert rq["patient"]["disorder"] == "trd"  # defaults recorded too


def test_simulate_parquet_carries_provenance_and_reruns_identically(tmp_path) -> None:
    """timecourse.parquet had no ketasim metadata (trial's results.parquet has): copied on its
    own it could not say how it was made. Two identical runs write identical bytes."""
    import pyarrow.parquet as pq

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert main(["simulate", "--days", "1", "--step-h", "6", "--dose", "0.4 mg/kg",
                     "--out", str(d)]) == 0
    md = pq.read_schema(a / "timecourse.parquet").metadata
    assert json.loads(md[b"ketasim.ketasim_version"]) == __version__
    assert json.loads(md[b"ketasim.card_hashes"]) == card_versions()
    assert json.loads(md[b"ketasim.regimen"])["dose"] == "0.4 mg/kg"
    assert json.loads(md[b"ketasim.covariates"])["weight_kg"] == 70.0
    assert b"ketasim.wall_ms" not in md
    assert (a / "timecourse.parquet").read_bytes() == (b / "timecourse.parquet").read_bytes()
    assert (a / "timecourse.csv").read_bytes() == (b / "timecourse.csv").read_bytes()


def test_failed_plot_leaves_the_existing_png(tmp_path, monkeypatch, capsys) -> None:
    """--plot saved straight onto the target: a save failing half-way left a truncated PNG
    where the previous figure was. It is now rendered in memory and renamed into place."""
    import matplotlib.figure

    png = tmp_path / "pk.png"
    png.write_bytes(b"previous figure")

    def broken_savefig(self, fname, *args, **kwargs):
        if isinstance(fname, str | os.PathLike):
            with open(fname, "wb") as fh:
                fh.write(b"\x89PNG trunc")
        else:
            fname.write(b"\x89PNG trunc")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    rc = main(["pk", "--times-h", "1,2", "--plot", str(png)])
    assert rc == 2 and "cannot write" in capsys.readouterr().err
    assert png.read_bytes() == b"previous figure"
    assert [p.name for p in tmp_path.iterdir()] == ["pk.png"]  # no temporary file left


def test_plot_records_the_run_inputs(tmp_path) -> None:
    """A figure recorded version and card hashes but not what was simulated; it now records
    the run's inputs (model, covariates, regimen, options) and no timing, so identical runs
    give identical PNGs."""
    from PIL import Image

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in paths:
        assert main(["pk", "--times-h", "1,2", "--dose", "0.3 mg/kg", "--weight", "80",
                     "--plot", str(p)]) == 0
    info = json.loads(Image.open(paths[0]).text["Description"])
    assert info["ketasim_version"] == __version__ and info["card_hashes"] == card_versions()
    run = info["run"]
    assert run["model"] and run["options"]["dose"] == "0.3 mg/kg"
    assert run["covariates"]["weight_kg"] == 80.0 and "wall_ms" not in run
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize("which", ["mechanism", "clinic"])
def test_calibrate_fit_records_provenance_and_honours_write(which, tmp_path, monkeypatch,
                                                            capsys) -> None:
    """``calibrate … --fit --json`` printed the best constants without the ketasim version or
    card hashes, and ``--write`` was silently ignored with ``--fit``."""
    import ketasim.calibration
    import ketasim.clinic_calibration

    best = {"best": {"x": 1.0}, "evaluations": 1}
    if which == "mechanism":
        monkeypatch.setattr(ketasim.calibration, "fit", lambda n, progress=None: dict(best))
    else:
        monkeypatch.setattr(ketasim.clinic_calibration, "fit_clinic",
                            lambda n, progress=None: dict(best))
    out = tmp_path / "fit.json"
    assert main(["calibrate", which, "--fit", "--max-evaluations", "3", "--json",
                 "--write", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert printed == saved
    assert saved["ketasim_version"] == __version__ and saved["card_hashes"] == card_versions()
    assert saved["max_evaluations"] == 3 and saved["best"] == {"x": 1.0}
    if which == "clinic":
        from ketasim.clinic_calibration import DESIGNS, targets_hash

        assert saved["targets_sha256"] == targets_hash()
        assert saved["seeds"] == {k: d["population"]["seed"] for k, d in DESIGNS.items()}


def test_validate_meta_records_case_selection_and_content(tmp_path, monkeypatch) -> None:
    """The scorecard's meta named neither the cases folder, the selection nor the cases'
    content; an extra case file edited between runs changed results silently. The compare
    mode's meta said ``hypotheses: default`` for every set."""
    from ketasim.validate import case_hash, compare_hypotheses, load_cases, run_validation

    monkeypatch.setenv("KETASIM_CACHE", "off")
    r = run_validation(n=10, replicates=2, only=["berman2000"])
    m = r["meta"]
    assert m["options"] == {"cases_dir": None, "include_shipped": True,
                            "only": ["berman2000"]}
    case = next(c for c in load_cases() if c.id == "berman2000")
    assert m["case_hashes"] == {"berman2000": case_hash(case)}
    assert len(case_hash(case)) == 12
    c = compare_hypotheses(n=10, replicates=2, only=["berman2000"],
                           sets=["default", "only:a"])
    assert c["meta"]["hypotheses"] == "all"
    assert c["meta"]["hypothesis_sets"] == ["default", "only:a"]


def test_fit_metadata_names_data_content_and_options(capsys) -> None:
    """The fit's metadata named the data by path only and left out the estimated parameters,
    IIV, error model and method."""
    data = DATA / "pk_small.csv"
    assert main(["fit", str(data), "--model", "kamp2020", "--estimate", "CL",
                 "--method", "map", "--error", "proportional", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metadata"]
    assert m["data_sha256"] == _sha256(data)
    assert m["options"] == {"estimate": ["CL"], "iiv": ["CL"], "error": "proportional",
                            "method": "map", "blq": "m3"}  # BLQ handling (default M3)


def test_forecast_metadata_names_data_horizon_and_sampler() -> None:
    """The forecast's metadata had the seed but not the data, horizon or MCMC settings that
    the numbers depend on."""
    from ketasim.fit.forecast import forecast_patient

    data = DATA / "patient.csv"
    fc = forecast_patient(str(data), horizon_days=7, seed=3, n_walkers=8, n_steps=60)
    m = fc.metadata
    assert m["seed"] == 3 and m["data"] == str(data) and m["data_sha256"] == _sha256(data)
    assert m["horizon_days"] == 7.0 and m["n_walkers"] == 8 and m["n_steps"] == 60
    assert m["comedication"] == []
    assert forecast_patient(pd.read_csv(data), horizon_days=7, seed=3, n_walkers=8,
                            n_steps=60).metadata["data_sha256"] is None


def test_shard_and_manifest_files_are_ordinary_files(tmp_path) -> None:
    """Shards and the manifest kept mkstemp's mode 0600 (every other output: 0666 less the
    umask), so a run folder shared with other users or dask workers was partly unreadable."""
    from ketasim import shards

    old = os.umask(0o022)
    try:
        shards.write_json_atomic({"a": 1}, str(tmp_path / "manifest.json"))
        shards.write_parquet_atomic(pd.DataFrame({"x": [1.0]}),
                                    str(tmp_path / "s" / "chunk-0.parquet"))
    finally:
        os.umask(old)
    for p in (tmp_path / "manifest.json", tmp_path / "s" / "chunk-0.parquet"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_export_sbml_records_the_scenario(tmp_path):
    """The SBML export's metadata names the scenario it came from and its SHA-256 (as trial
    outputs do), so an exported model can be traced to the scenario file."""
    from ketasim.sbml import read_metadata
    from ketasim.shards import scenario_hash
    from ketasim.trial import resolve_scenario, scenario_dict

    out = tmp_path / "m.xml"
    assert main(["export-sbml", "default", "--out", str(out)]) == 0
    meta = read_metadata(out.read_text(encoding="utf-8"))
    assert meta["scenario"] == "default"
    assert meta["scenario_hash"] == scenario_hash(scenario_dict(resolve_scenario("default")))


# --------------------------------------------------------------- one name for the card hashes
def _keys(obj: object) -> set[str]:
    """Every dict key anywhere in a JSON-like value."""
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list | tuple):
        return {k for v in obj for k in _keys(v)}
    return set()


def _one_card_key(obj: dict, where: str) -> None:
    keys = _keys(obj)
    assert "card_hashes" in keys, f"{where}: no card_hashes"
    assert "card_versions" not in keys, f"{where}: still card_versions"


def test_every_output_names_the_card_hashes_card_hashes(tmp_path, capsys,
                                                        monkeypatch) -> None:
    """Outputs named the same thing (SHA-256 prefixes of the card files) ``card_hashes`` in
    most places and ``card_versions`` in the fit, forecast, validate and sensitivity JSON and
    the trial manifest. Walks the outputs that are cheap to produce: every one has
    ``card_hashes`` and none ``card_versions``."""
    import pyarrow.parquet as pq
    from PIL import Image

    from ketasim.fit.forecast import forecast_patient
    from ketasim.sbml import read_metadata
    from ketasim.sensitivity import run_sensitivity
    from ketasim.validate import run_validation

    monkeypatch.setenv("KETASIM_CACHE", "off")
    seen: dict[str, dict] = {}

    def cli_json(args: list[str]) -> dict:
        assert main(args) == 0, args
        return json.loads(capsys.readouterr().out)

    png, csv = tmp_path / "pk.png", tmp_path / "pk.csv"
    seen["pk --json"] = cli_json(["pk", "--times-h", "1,2", "--json", "--csv", str(csv),
                                  "--plot", str(png)])
    seen["pk --csv meta.json"] = json.loads(Path(f"{csv}.meta.json").read_text(encoding="utf-8"))
    seen["PNG text"] = json.loads(Image.open(png).text["Description"])
    sim = tmp_path / "sim"
    seen["simulate --json"] = cli_json(["simulate", "--days", "1", "--step-h", "12", "--json",
                                        "--out", str(sim)])
    seen["simulate metadata.json"] = json.loads((sim / "metadata.json").read_text(encoding="utf-8"))
    seen["fit --json"] = cli_json(["fit", str(DATA / "pk_small.csv"), "--model", "kamp2020",
                                   "--estimate", "CL", "--method", "map", "--json"])
    seen["forecast"] = forecast_patient(str(DATA / "patient.csv"), horizon_days=3, seed=1,
                                        n_walkers=8, n_steps=30).metadata
    seen["validate"] = run_validation(n=10, replicates=2, only=["berman2000"])
    seen["sensitivity"] = run_sensitivity("response_rate@24h", method="morris", samples=2, n=10,
                                          params=["drug_emax", "residual_sd"])
    toml = tmp_path / "s.toml"
    toml.write_text('title = "keys"\n[population]\nn = 4\nseed = 2\n[[arm]]\nname = "k"\n'
                    'drug = "ketamine"\nroute = "iv-infusion"\ndose = "0.5 mg/kg"\n'
                    '[[arm]]\nname = "p"\ncontrol = "saline"\n[endpoints]\nat = ["24 h"]\n')
    run = tmp_path / "run"
    seen["trial --json"] = cli_json(["trial", str(toml), "--json", "--out", str(run)])
    seen["summary.json"] = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    seen["manifest.json"] = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    for name in ("results.parquet", "sim/timecourse.parquet"):
        folder = run if name == "results.parquet" else tmp_path
        md = pq.read_schema(folder / name).metadata
        seen[name] = {k.decode().removeprefix("ketasim."): v for k, v in md.items()}
    xml = tmp_path / "m.xml"
    assert main(["export-sbml", "default", "--out", str(xml)]) == 0
    seen["SBML notes"] = read_metadata(xml.read_text(encoding="utf-8"))
    try:
        from fastapi.testclient import TestClient

        from ketasim.web.app import Settings, create_app
    except ImportError:  # the web extra is optional; test_web_api.py covers the rest
        pass
    else:
        app = create_app(Settings(data_dir=str(tmp_path / "web"), warm_up=False,
                                  job_mode="thread"))
        with TestClient(app) as c:
            r = c.post("/api/simulate", json={"arm": {"name": "A", "drug": "ketamine",
                                                      "route": "iv-bolus", "dose": "0.2 mg/kg"},
                                              "days": 1.0})
        assert r.status_code == 200, r.text
        seen["web /api/simulate"] = r.json()
    for where, obj in seen.items():
        _one_card_key(obj, where)
        # and one name for the package version (the trial outputs said "version")
        assert "ketasim_version" in _keys(obj), f"{where}: no ketasim_version"
        assert "version" not in obj, f"{where}: still version"
    assert seen["manifest.json"]["card_hashes"] == card_versions()
    # and the HTML reports label them as hashes
    assert "card_versions" not in (run / "report.html").read_text(encoding="utf-8")


def test_resume_reads_a_manifest_with_the_old_card_key(tmp_path, monkeypatch) -> None:
    """Manifests written before the rename call the card hashes ``card_versions``: a rerun of
    the same scenario still resumes from them (nothing recomputed), and still refuses one whose
    cards differ."""
    from ketasim import trial
    from ketasim.errors import KetasimError
    from ketasim.scenario import parse_scenario

    sc = parse_scenario({"population": {"n": 4, "seed": 1},
                         "arm": [{"name": "k", "drug": "ketamine", "route": "iv-infusion",
                                  "dose": "0.5 mg/kg"}, {"name": "p", "control": "saline"}],
                         "endpoints": {"at": ["24 h"]}})
    out = tmp_path / "o"
    trial.run_trial(sc, chunk_size=2, out=str(out))
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    man["card_versions"] = man.pop("card_hashes")
    man["version"] = man.pop("ketasim_version")  # the package version's old key, too
    (out / "manifest.json").write_text(json.dumps(man))
    calls = []
    real = trial._run_chunk
    monkeypatch.setattr(trial, "_run_chunk", lambda sc_, ch, *a: calls.append(ch) or
                        real(sc_, ch, *a))
    res = trial.run_trial(sc, out=str(out))
    chunks = res.meta["chunks"]
    assert calls == [] and chunks["run"] == 0 and chunks["resumed"] == chunks["total"] > 0
    rewritten = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert "card_hashes" in rewritten
    man["card_versions"] = {**man["card_versions"], "pk/kamp2020": "000000000000"}
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(KetasimError, match="other cards"):
        trial.run_trial(sc, out=str(out))


def test_csv_with_provenance_reads_back_with_comment_option(tmp_path) -> None:
    """The metadata lines of a provenance-headed CSV are skipped by
    ``pandas.read_csv(comment="#")``; a ``#`` inside a text cell is quoted, so the row is not
    cut there; a CSV without such lines has no metadata."""
    from ketasim.report import csv_with_provenance, read_csv_metadata

    df = pd.DataFrame({"arm": ["a #1", "b"], "x": [1.5, float("nan")], "ok": [True, False]})
    path = tmp_path / "r.csv"
    path.write_bytes(csv_with_provenance(df, {"seed": 7, "card_hashes": {"pk/x": "ab#c"},
                                              "other": 1}))
    back = pd.read_csv(path, comment="#")
    pd.testing.assert_frame_equal(back, df)
    md = read_csv_metadata(str(path))
    assert "not medical advice" in md.pop("disclaimer")
    assert md == {"seed": 7, "card_hashes": {"pk/x": "ab#c"}}  # only the provenance keys
    plain = tmp_path / "plain.csv"
    df.to_csv(plain, index=False)
    assert read_csv_metadata(str(plain)) == {}
