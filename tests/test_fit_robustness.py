"""Defects found by scripts/fit_robustness_sweep.py (fit and forecast inputs), one test each.

Bad data must give one line naming the row and the column (exit code 2 on the command line);
valid data must give finite, sane output.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.fit import PKProblem, read_dataset

DATA = Path(__file__).parent / "data" / "fit"
COLS = ["ID", "TIME", "EVID", "AMT", "RATE", "II", "ADDL", "DV", "MDV"]


def _table(dose: list, obs: list | None = None) -> pd.DataFrame:
    """One subject: a dose row and an observation row (columns ``COLS``)."""
    rows = [dose, obs or [1, 1.0, 0, 0, 0, 0, 0, 100.0, 0]]
    return pd.DataFrame(rows, columns=COLS)


def _one_line_naming(exc: pytest.ExceptionInfo, *names: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    for n in names:
        assert n in msg, msg


def test_infusion_rate_too_slow_names_row_and_rate():
    """RATE 1e-300 mg/h makes a 3.5e301 h infusion: the error named only ``duration``."""
    with pytest.raises(KetasimError) as e:
        read_dataset(_table([1, 0.0, 1, 35.0, 1e-300, 0, 0, None, 1]))
    _one_line_naming(e, "row 1 column RATE")


def test_additional_doses_beyond_ten_years_name_row_and_addl():
    """II 87600 h × ADDL 5 puts doses past the time limit: the error named only ``time``."""
    with pytest.raises(KetasimError) as e:
        read_dataset(_table([1, 0.0, 1, 35.0, 0, 87600.0, 5, None, 1]))
    _one_line_naming(e, "row 1 column ADDL")


def test_huge_subject_id_is_refused():
    """ID 1e300 passed as a 301-digit integer into the results and the JSON."""
    with pytest.raises(KetasimError) as e:
        read_dataset(_table([1e300, 0.0, 1, 35.0, 0, 0, 0, None, 1],
                            [1e300, 1.0, 0, 0, 0, 0, 0, 100.0, 0]))
    _one_line_naming(e, "row 1 column ID")


def test_cli_slow_rate_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "slow.csv"
    _table([1, 0.0, 1, 35.0, 1e-300, 0, 0, None, 1]).to_csv(path, index=False)
    rc = main(["fit", str(path), "--model", "kamp2020", "--estimate", "CL"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "row 1 column RATE" in err


def test_fit_with_every_parameter_at_a_bound_reports_instead_of_crashing(capsys):
    """Junk concentrations (hornik2018, 5 subjects): CL, its IIV and σ all end at a bound;
    the quadrature refinement took the largest eigenvalue of an empty Hessian (exit 1,
    "unexpected ValueError")."""
    rc = main(["fit", str(DATA / "all_at_bounds.csv"), "--model", "hornik2018",
               "--estimate", "CL", "--error", "additive", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    d = json.loads(out.out, parse_constant=_no_constant)
    assert "theta_CL" in d["diagnostics"]["at_bounds"]
    assert any("no standard error" in w for w in d["warnings"])


def test_unbounded_interval_is_a_warning_not_a_numpy_overflow(capsys):
    """Three subjects by IM, V2 and CL with a combined error: the Wald interval of σ_prop
    overflows. It was ``[0, null]`` in the JSON with no warning, and NumPy printed overflow
    RuntimeWarnings on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rc = main(["fit", str(DATA / "unbounded_interval.csv"), "--model", "kamp2020",
                   "--estimate", "V2,CL", "--error", "combined", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    d = json.loads(out.out, parse_constant=_no_constant)
    assert None in d["residual_error"]["sigma_prop"]["ci95"]
    assert any("sigma_prop is unbounded" in w for w in d["warnings"])


def _no_constant(tok: str) -> None:
    raise AssertionError(f"JSON has {tok}")


@pytest.mark.parametrize("rows, where", [
    # a pre-dose sample of 5 ng/mL (NONMEM order: before the dose row at the same time)
    ([[1, 0.0, 0, 0, 0, 0, 0, 5.0, 0], [1, 0.0, 1, 35.0, 52.5, 0, 0, None, 1],
      [1, 1.0, 0, 0, 0, 0, 0, 100.0, 0]], "row 1 column DV"),
    # a subject with a concentration and no dose at all
    ([[1, 0.0, 1, 35.0, 52.5, 0, 0, None, 1], [1, 1.0, 0, 0, 0, 0, 0, 100.0, 0],
      [2, 1.0, 0, 0, 0, 0, 0, 50.0, 0]], "row 3 column DV"),
])
def test_concentration_where_the_model_predicts_zero_is_refused_for_proportional_error(
        rows, where):
    """Under a proportional error the residual variance at a zero prediction is 0: such a
    row made −2LL ~1e13 and the fit ran without converging or SEs (objective 5e13)."""
    ds = read_dataset(pd.DataFrame(rows, columns=COLS))
    with pytest.raises(KetasimError) as e:
        PKProblem("kamp2020", ds, ["CL"], "proportional")
    _one_line_naming(e, where, "proportional")
    PKProblem("kamp2020", ds, ["CL"], "combined")  # fine where the variance has a floor
