"""NONMEM text conventions in data files: comment rows and lines, ``#`` headers, delimiters,
byte-order marks, and row numbers that stay those of the file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.fit import read_dataset

PLAIN = """ID,TIME,AMT,RATE,DV,MDV,EVID
1,0,35,52.5,.,1,1
1,0.25,.,.,120.5,0,0
1,1,.,.,80.1,0,0
2,0,35,52.5,.,1,1
2,0.5,.,.,110,0,0
"""


def _write(tmp_path, text: str, name: str = "d.csv", encoding: str = "utf-8") -> str:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return str(p)


def _obs(ds) -> list[tuple[int, float, float]]:
    return [(s.id, float(t), float(v)) for s in ds.subjects
            for t, v in zip(s.obs_time_h, s.obs_value, strict=True)]


def test_c_column_rows_are_comments(tmp_path):
    """NONMEM IGNORE=C: a first column named C marks comment rows; such a row must not be
    fitted (it was taken as an observation before)."""
    text = ("C,ID,TIME,AMT,RATE,DV,MDV,EVID\n"
            ".,1,0,35,52.5,.,1,1\n"
            ".,1,0.25,.,.,120.5,0,0\n"
            "C,1,0.5,.,.,999,0,0\n"
            ".,1,1,.,.,80.1,0,0\n")
    ds = read_dataset(_write(tmp_path, text))
    assert _obs(ds) == [(1, 0.25, 120.5), (1, 1.0, 80.1)]
    assert list(ds.subjects[0].rows) == [2, 4]  # data rows of the file, comment row counted


def test_c_column_in_a_dataframe():
    df = pd.DataFrame({"C": [".", "C", "."], "ID": [1, 1, 1], "TIME": [0, 0.5, 1],
                       "AMT": [35, 0, 0], "RATE": [52.5, 0, 0], "DV": [np.nan, 999, 80.1],
                       "MDV": [1, 0, 0], "EVID": [1, 0, 0]})
    ds = read_dataset(df)
    assert _obs(ds) == [(1, 1.0, 80.1)]


def test_hash_comment_lines_and_hash_header(tmp_path):
    text = ("# study KET-01, plasma ketamine\n"
            "#ID,TIME,AMT,RATE,DV,MDV,EVID\n"
            "1,0,35,52.5,.,1,1\n"
            "1,0.25,.,.,120.5,0,0\n"
            "#1,0.5,.,.,999,0,0\n"
            "\n"
            "# a note, with, commas, and more fields than the header, a, b, c, d\n"
            "1,1,.,.,80.1,0,0\n")
    ds = read_dataset(_write(tmp_path, text))
    assert _obs(ds) == [(1, 0.25, 120.5), (1, 1.0, 80.1)]
    assert list(ds.subjects[0].rows) == [3, 7]  # file lines 4 and 8


@pytest.mark.parametrize("sep", ["\t", " ", "   "])
def test_tab_and_whitespace_delimited(tmp_path, sep):
    ref = _obs(read_dataset(_write(tmp_path, PLAIN, "ref.csv")))
    text = "\n".join(sep.join(line.split(",")) for line in PLAIN.splitlines()) + "\n"
    assert _obs(read_dataset(_write(tmp_path, text, "ws.txt"))) == ref


def test_byte_order_mark_and_crlf(tmp_path):
    ref = _obs(read_dataset(_write(tmp_path, PLAIN, "ref.csv")))
    path = _write(tmp_path, PLAIN.replace("\n", "\r\n"), "bom.csv", encoding="utf-8-sig")
    assert _obs(read_dataset(path)) == ref


def test_error_rows_are_file_rows_after_comments_and_blank_lines(tmp_path):
    """Row N is file line N + 1 whatever comment or blank lines come before it."""
    text = ("ID,TIME,AMT,RATE,DV,MDV,EVID\n"   # line 1
            "1,0,35,52.5,.,1,1\n"               # line 2, row 1
            "# checked 2026-01-02\n"            # line 3, row 2
            "\n"                                # line 4, row 3
            "1,0.25,.,.,abc,0,0\n")             # line 5, row 4
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 4 column DV" in str(e.value)
    text = ("C,ID,TIME,AMT,RATE,DV,MDV,EVID\n"
            ".,1,0,35,52.5,.,1,1\n"
            "C,1,0.5,.,.,junk,0,0\n"             # a comment row may hold anything
            ".,1,2,.,.,80,0,0\n"
            ".,1,1,.,.,70,0,0\n")                # row 4: time decreases
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 4 column TIME" in str(e.value)


def test_no_header_and_unreadable_file_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(KetasimError, match="no header line"):
        read_dataset(_write(tmp_path, "# only a comment\n\n"))
    path = tmp_path / "latin1.csv"
    path.write_bytes("ID,TIME,AMT,DV,EVID\n1,0,35,.,1\n# caf\xe9\n".encode("latin-1"))
    rc = main(["fit", str(path), "--model", "kamp2020", "--estimate", "CL"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cannot read" in err


def test_doses_into_two_compartments_need_a_route_column(tmp_path):
    """Without ROUTE every dose is IV; doses into a depot (CMT 1) and the central compartment
    (CMT 2) must not silently become IV doses."""
    text = ("ID,TIME,AMT,RATE,CMT,DV,MDV,EVID\n"
            "1,0,35,52.5,2,.,1,1\n"
            "1,1,.,.,2,80.1,0,0\n"
            "2,0,50,0,1,.,1,1\n"
            "2,1,.,.,2,20,0,0\n")
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 3 column CMT" in str(e.value) and "ROUTE" in str(e.value)
    lines = ["ID,TIME,AMT,RATE,CMT,DV,MDV,EVID,ROUTE", "1,0,35,52.5,2,.,1,1,iv-infusion",
             "1,1,.,.,2,80.1,0,0,", "2,0,50,0,1,.,1,1,oral", "2,1,.,.,2,20,0,0,"]
    ds = read_dataset(_write(tmp_path, "\n".join(lines) + "\n", "r.csv"))
    assert [s.regimen.routes for s in ds.subjects] == [("iv-infusion",), ("oral",)]


def _two_period(evid_second: int) -> str:
    """Subject 1: an infusion at 0 h and a second at 24 h (EVID ``evid_second``), samples in
    both periods; subject 2: the second period alone, as a reference."""
    return ("ID,TIME,AMT,RATE,DV,MDV,EVID\n"
            "1,0,35,52.5,.,1,1\n"
            "1,1,.,.,120,0,0\n"
            "1,23.9,.,.,2,0,0\n"
            f"1,24,35,52.5,.,1,{evid_second}\n"
            "1,24.5,.,.,140,0,0\n"
            "1,26,.,.,60,0,0\n"
            "2,24,35,52.5,.,1,1\n"
            "2,24.5,.,.,140,0,0\n"
            "2,26,.,.,60,0,0\n")


def test_reset_evid4_removes_earlier_doses(tmp_path):
    """NONMEM EVID 4 (reset and dose): after the reset the prediction is that of the new dose
    alone; before it, that of the earlier doses. Without the reset the first dose's tail adds
    to the second period (EVID 1)."""
    from ketasim.fit import PKProblem

    reset = PKProblem("kamp2020", read_dataset(_write(tmp_path, _two_period(4))), ["CL"],
                      error="combined")
    plain = PKProblem("kamp2020", read_dataset(_write(tmp_path, _two_period(1), "p.csv")),
                      ["CL"], error="combined")
    th = reset.theta0()
    fr, fp = reset.predict(th), plain.predict(th)
    # subject 1, second period (obs 2, 3) equals subject 2 (who only had the second dose)
    np.testing.assert_allclose(fr[0, 2:4], fr[1, 0:2], rtol=1e-12)
    assert np.all(fp[0, 2:4] > fr[0, 2:4] * (1 + 1e-6))  # the tail of dose 1 is there
    np.testing.assert_array_equal(fr[0, :2], fp[0, :2])  # first period unchanged
    assert list(reset.subjects[0].reset_times_h) == [24.0]


def test_reset_evid3_then_concentration_before_next_dose_is_refused(tmp_path):
    """After a reset (EVID 3) and before a new dose the model predicts 0: a concentration
    there cannot be fitted with proportional error (one line naming the row)."""
    from ketasim.fit import PKProblem

    text = ("ID,TIME,AMT,RATE,DV,MDV,EVID\n"
            "1,0,35,52.5,.,1,1\n"
            "1,1,.,.,120,0,0\n"
            "1,12,.,.,.,1,3\n"
            "1,13,.,.,5,0,0\n")
    ds = read_dataset(_write(tmp_path, text))
    with pytest.raises(KetasimError) as e:
        PKProblem("kamp2020", ds, ["CL"], error="proportional")
    assert "row 4 column DV" in str(e.value) and "reset" in str(e.value)
    f = PKProblem("kamp2020", ds, ["CL"], error="combined").predict({"CL": 96.6})
    assert f[0, 0] > 0 and f[0, 1] == 0.0


def test_forecast_refuses_a_reset(tmp_path, capsys):
    text = ("ID,TIME,EVID,AMT,RATE,DV,DVID\n"
            "1,0,0,0,0,30,madrs\n"
            "1,0,1,35,52.5,.,\n"
            "1,24,0,0,0,20,madrs\n"
            "1,48,4,35,52.5,.,\n"
            "1,72,0,0,0,18,madrs\n")
    rc = main(["forecast", _write(tmp_path, text), "--json"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "EVID 3/4" in err


def test_steady_state_records_are_refused(tmp_path):
    text = ("ID,TIME,AMT,RATE,DV,MDV,EVID,SS,II\n"
            "1,0,35,0,.,1,1,0,.\n"
            "1,24,35,0,.,1,1,1,24\n"
            "1,25,.,.,80,0,0,.,.\n")
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 2 column SS" in str(e.value) and "\n" not in str(e.value)
    ok = read_dataset(_write(tmp_path, text.replace(",1,1,1,24", ",1,1,0,24"), "ok.csv"))
    assert len(ok.subjects[0].regimen) == 2


def test_evid_inferred_when_absent(tmp_path):
    """Without EVID (older NONMEM files): AMT > 0 is a dose, MDV 1 another event, else an
    observation — the same subjects as with EVID."""
    ref = read_dataset(_write(tmp_path, PLAIN, "ref.csv"))
    no_evid = "\n".join(",".join(line.split(",")[:-1]) for line in PLAIN.splitlines()) + "\n"
    ds = read_dataset(_write(tmp_path, no_evid, "n.csv"))
    assert _obs(ds) == _obs(ref)
    assert [s.regimen for s in ds.subjects] == [s.regimen for s in ref.subjects]


def test_observations_in_two_compartments_need_a_quantity_column(tmp_path):
    """Without DVID every observation is the parent drug; parent and metabolite told apart by
    CMT alone must not silently all become parent."""
    text = ("ID,TIME,AMT,RATE,CMT,DV,MDV,EVID\n"
            "1,0,35,52.5,1,.,1,1\n"
            "1,1,.,.,1,80.1,0,0\n"
            "1,1,.,.,3,30.2,0,0\n")
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 3 column CMT" in str(e.value) and "DVID" in str(e.value)
    with_q = text.replace("EVID\n", "EVID,DVID\n").replace("1,1\n", "1,1,\n")
    with_q = with_q.replace("80.1,0,0\n", "80.1,0,0,plasma\n").replace(
        "30.2,0,0\n", "30.2,0,0,metabolite\n")
    ds = read_dataset(_write(tmp_path, with_q, "q.csv"))
    assert list(ds.subjects[0].obs_quantity) == ["plasma", "metabolite"]


def test_blq_rows_with_comments_and_resets(tmp_path):
    """The censoring flags, NONMEM comment rows and resets together: a pre-dose BLQ sample
    is accepted under proportional error (below its limit with probability 1), a commented
    row is not read, and censored rows keep their file row numbers."""
    from ketasim.fit import PKProblem

    text = ("C,ID,TIME,AMT,RATE,DV,MDV,EVID,BLQ,LLOQ\n"
            ".,1,0,.,.,.,0,0,1,1\n"                # pre-dose sample, BLQ
            ".,1,0,35,52.5,.,1,1,0,.\n"
            "C,1,0.5,.,.,999,0,0,0,.\n"            # commented out
            ".,1,1,.,.,80,0,0,0,.\n"
            ".,1,24,35,52.5,.,1,4,0,.\n"           # reset and dose
            ".,1,48,.,.,.,0,0,1,1\n")              # BLQ 24 h after the second dose
    ds = read_dataset(_write(tmp_path, text))
    s = ds.subjects[0]
    assert list(s.rows) == [1, 4, 6] and list(s.obs_censored) == [True, False, True]
    assert list(s.obs_value) == [1.0, 80.0, 1.0] and list(s.reset_times_h) == [24.0]
    pr = PKProblem("kamp2020", ds, ["CL"], error="proportional")
    assert pr.n_censored == 2 and pr.any_censored


def test_rows_with_a_wrong_number_of_fields(tmp_path):
    """Rows with more fields than the header: when every row had them, pandas took the
    surplus leading fields as an index and shifted every column (the error then named the
    wrong column, or none); now the row is named. Trailing empty fields (a spreadsheet's
    trailing commas) are dropped."""
    with pytest.raises(KetasimError, match=r"row 1: 7 fields where the header names 5"):
        read_dataset(_write(tmp_path, "ID,TIME,AMT,DV,EVID\n1,0,35,.,1,9,9\n1,1,.,50,0,9,9\n",
                            "all.csv"))
    text = "ID,TIME,AMT,DV,EVID\n1,0,35,.,1\n1,1,.,50,0,9,9\n"
    with pytest.raises(KetasimError) as e:
        read_dataset(_write(tmp_path, text))
    assert "row 2" in str(e.value) and "7 fields" in str(e.value) and "names 5" in str(e.value)
    with pytest.raises(KetasimError, match="row 1: 3 fields"):
        read_dataset(_write(tmp_path, "ID,TIME,AMT,DV,EVID\n1,0,35\n", "short.csv"))
    ref = _obs(read_dataset(_write(tmp_path, PLAIN, "ref.csv")))
    head, *body = PLAIN.splitlines()
    trailing = "\n".join([head] + [line + ",," for line in body]) + "\n"
    assert _obs(read_dataset(_write(tmp_path, trailing, "t.csv"))) == ref
    quoted = PLAIN.replace("1,0.25,.,.,120.5,0,0", '"1","0.25",,,"120.5",0,0,,')
    assert _obs(read_dataset(_write(tmp_path, quoted, "q.csv"))) == ref
