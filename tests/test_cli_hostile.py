"""Hostile and malformed CLI input found by an audit (2026-11-27): every case must end with one
line naming the field (or the CSV row and column), exit code 2, no traceback, and no output
that existed before the run changed."""

from __future__ import annotations

import os

import pytest

from ketasim.cli import main

PRECIOUS = "PRECIOUS\n"


def _run(capsys, args, cwd=None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        rc = main([str(a) for a in args])
    finally:
        os.chdir(old)
    cap = capsys.readouterr()
    return rc, cap.err


def _one_line(err: str, has: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and has in lines[0], lines[0]
    assert "Traceback" not in err


def _csv(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


EV = "ID,TIME,EVID,AMT,RATE,CMT,II,ADDL,ROUTE\n"
FIT_HEAD = "ID,TIME,EVID,AMT,RATE,CMT,II,ADDL,ROUTE,DV,MDV,DVID,WT\n"
FIT_OK = ("1,0,1,35,52.5,1,0,0,iv-infusion,,1,,70\n1,1,0,0,0,1,0,0,,100,0,plasma,70\n"
          "1,2,0,0,0,1,0,0,,60,0,plasma,70\n1,4,0,0,0,1,0,0,,30,0,plasma,70\n")


@pytest.mark.parametrize("rows, has", [
    ("1,0,1,abc,52.5,1,0,0,iv-infusion\n", "ev.csv row 1 column AMT: not a number"),
    ("1,xyz,1,35,52.5,1,0,0,iv-infusion\n", "ev.csv row 1 column TIME: not a number"),
    ("1,0,1,inf,52.5,1,0,0,iv-infusion\n", "ev.csv row 1 column AMT"),
    ("1,-5,1,35,52.5,1,0,0,iv-infusion\n", "ev.csv row 1 column TIME"),
    ("1,0,1,35,52.5,1,0,0,teleport\n", "ev.csv row 1 column ROUTE: unknown route"),
    ("1,0,1,35,0,1,0,0,iv-infusion\n",
     "ev.csv row 1 column RATE: an IV infusion record needs RATE > 0"),
])
def test_pk_event_table_errors_name_row_and_column(capsys, tmp_path, rows, has):
    rc, err = _run(capsys, ["pk", "--regimen-csv", _csv(tmp_path, "ev.csv", EV + rows)])
    assert rc == 2
    _one_line(err, has)


@pytest.mark.parametrize("row, has", [
    ("1,6,0,0,0,1,0,0,,50,0,plasma,inf\n", "column WT: not finite"),
    ("1,0,1,1e308,52.5,1,0,0,iv-infusion,,1,,70\n", "column AMT"),
    ("1,1e300,0,0,0,1,0,0,,50,0,plasma,70\n", "column TIME"),
    ("1.5,6,0,0,0,1,0,0,,50,0,plasma,70\n", "column ID: must be a whole number"),
    ("1,6,0,0,0,1,0,0,,-5,0,plasma,70\n", "column DV: plasma value -5"),
    ("1,6,0,0,0,1,0,0,,999,0,madrs,70\n", "column DV: madrs value 999"),
    ("1,0,1,35,52.5,1,1,10000000,iv-infusion,,1,,70\n", "column ADDL"),
    ("1,0,1,35,inf,1,0,0,iv-infusion,,1,,70\n", "column RATE: inf is not finite"),
])
def test_fit_data_errors_name_row_and_column(capsys, tmp_path, row, has):
    p = _csv(tmp_path, "d.csv", FIT_HEAD + FIT_OK + row)
    rc, err = _run(capsys, ["fit", p, "--model", "kamp2020", "--estimate", "CL",
                            "--method", "map"])
    assert rc == 2
    _one_line(err, has)


def test_fit_data_duplicate_column_and_covariates(capsys, tmp_path):
    p = _csv(tmp_path, "d.csv", "ID,TIME,EVID,AMT,DV,DV\n1,0,1,35,,\n1,1,0,0,100,100\n")
    rc, err = _run(capsys, ["fit", p, "--model", "kamp2020", "--estimate", "CL"])
    assert rc == 2
    _one_line(err, "column DV: appears more than once")
    p = _csv(tmp_path, "s.csv", FIT_HEAD.replace(",WT", ",WT,SEX")
             + FIT_OK.replace(",70\n", ",70,robot\n"))
    rc, err = _run(capsys, ["fit", p, "--model", "kamp2020", "--estimate", "CL"])
    assert rc == 2
    _one_line(err, "row 1 column SEX: unknown sex")


def test_fit_report_for_one_sparse_subject_and_worker_cap(capsys, tmp_path):
    p = _csv(tmp_path, "d.csv", FIT_HEAD + FIT_OK)
    rc, err = _run(capsys, ["fit", p, "--model", "kamp2020", "--estimate", "CL", "--method",
                            "map", "--report", tmp_path / "r.html"])
    assert rc == 0, err  # too few observations for a VPC bin: the report has no VPC
    assert "Individual fits" in (tmp_path / "r.html").read_text(encoding="utf-8")
    rc, err = _run(capsys, ["fit", p, "--model", "kamp2020", "--estimate", "CL",
                            "--workers", "100000"])
    assert rc == 2
    _one_line(err, "workers")


@pytest.mark.parametrize("args, has", [
    (["--days", "nan"], "days"),
    (["--days", "-5"], "days"),
    (["--step-h", "1e-9", "--days", "1"], "step-h"),
    (["--times-h", "1e300"], None),  # pk only, below
])
def test_simulate_days_and_step(capsys, args, has):
    if has is None:
        rc, err = _run(capsys, ["pk", *args])
        assert rc == 2
        _one_line(err, "times-h: times must lie within 10 years")
        return
    rc, err = _run(capsys, ["simulate", *args])
    assert rc == 2
    _one_line(err, has)


@pytest.mark.parametrize("args", [
    ["--seed", "-1"],
    ["--days", "inf"],
    ["--days", "1e7"],
    ["--threshold", "nan"],
    ["--threshold", "-10"],
    ["--threshold", "1e300"],
])
def test_forecast_options_are_checked(capsys, tmp_path, args):
    p = _csv(tmp_path, "p.csv", "ID,TIME,EVID,AMT,RATE,DV,DVID\n1,0,1,35,52.5,,\n"
                                "1,24,0,0,0,20,madrs\n")
    rc, err = _run(capsys, ["forecast", p, *args])
    assert rc == 2
    _one_line(err, args[0].lstrip("-"))


def test_outputs_are_checked_before_anything_is_written(capsys, tmp_path):
    # pk: the CSV existed, the plot cannot be written: the CSV is left as it was
    csv = _csv(tmp_path, "existing.csv", PRECIOUS)
    rc, err = _run(capsys, ["pk", "--csv", csv, "--plot", tmp_path / "nodir" / "x.png"])
    assert rc == 2 and csv.read_text(encoding="utf-8") == PRECIOUS
    _one_line(err, "plot: folder does not exist")
    # simulate: three files in --out, a bad --plot
    o = tmp_path / "o"
    o.mkdir()
    for name in ("timecourse.csv", "metadata.json"):
        (o / name).write_text(PRECIOUS)
    rc, err = _run(capsys, ["simulate", "--days", "1", "--out", o, "--plot",
                            tmp_path / "nodir" / "x.png"])
    assert rc == 2 and (o / "timecourse.csv").read_text(encoding="utf-8") == PRECIOUS
    # an output name that is a folder, an --out that is a file
    (o / "timecourse.parquet").mkdir()
    rc, err = _run(capsys, ["simulate", "--days", "1", "--out", o])
    assert rc == 2 and (o / "metadata.json").read_text(encoding="utf-8") == PRECIOUS
    _one_line(err, "is a folder, not a file")
    rc, err = _run(capsys, ["simulate", "--days", "1", "--out", csv])
    assert rc == 2
    _one_line(err, "exists and is not a folder")
    # trial: report.html is a folder, summary.json existed
    t = tmp_path / "t"
    t.mkdir()
    (t / "report.html").mkdir()
    (t / "summary.json").write_text(PRECIOUS)
    rc, err = _run(capsys, ["trial", "default", "--n", "4", "--out", t])
    assert rc == 2 and (t / "summary.json").read_text(encoding="utf-8") == PRECIOUS
    # docs model into a folder, serve with a data dir that is a file
    rc, err = _run(capsys, ["docs", "model", "--out", t])
    assert rc == 2
    _one_line(err, "is a folder")
    rc, err = _run(capsys, ["serve", "--data-dir", csv])
    assert rc == 2
    _one_line(err, "data-dir")


def test_written_files_keep_the_usual_permissions(capsys, tmp_path):
    csv = tmp_path / "c.csv"
    rc, _ = _run(capsys, ["pk", "--csv", csv])
    assert rc == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (csv.stat().st_mode & 0o777) == 0o666 & ~umask


def test_validate_case_files_refuse_duplicate_keys_and_nan(capsys, tmp_path):
    from ketasim.validate import load_case, shipped_cases_dir

    src = sorted(p for p in os.listdir(shipped_cases_dir()) if p.endswith(".yaml"))[0]
    text = open(os.path.join(shipped_cases_dir(), src), encoding="utf-8").read()
    d = tmp_path / "dup"
    d.mkdir()
    (d / "c.yaml").write_text("id: x\n" + text)
    rc, err = _run(capsys, ["validate", "--cases", d, "--no-shipped"])
    assert rc == 2
    _one_line(err, "duplicate key 'id'")
    assert load_case(os.path.join(shipped_cases_dir(), src))  # the shipped file still loads
    n = tmp_path / "nan"
    n.mkdir()
    (n / "n.yaml").write_text(
        "id: a\nset: validation\nsource: s\ndescription: d\nkind: pk\n"
        "population: {seed: 6}\nstudy_n: {subjects: 10}\nendpoints:\n"
        '  - {name: "c", metric: cmax, regimen: {drug: ketamine, route: im, dose: "0.5 mg/kg"},'
        " observed: .nan, tolerance: {rule: rel, rel: 0.5}}\n")
    rc, err = _run(capsys, ["validate", "--cases", n, "--no-shipped"])
    assert rc == 2
    _one_line(err, "observed")


def test_unexpected_errors_are_one_line(capsys, monkeypatch):
    import ketasim.pk

    def boom(*a, **k):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr(ketasim.pk, "simulate_pk", boom)
    monkeypatch.delenv("KETASIM_DEBUG", raising=False)
    rc, err = _run(capsys, ["pk"])
    assert rc == 1
    _one_line(err, "unexpected RuntimeError: simulated bug")
