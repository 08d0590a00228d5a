"""Outputs are UTF-8 whatever the process's locale. Importing COPASI (python-copasi) in the same
process switches the C library to the "C" locale, after which Python's default text encoding
is ASCII: ketasim's writers then failed on the first "µ" or "–" (export-sbml: "unexpected
UnicodeEncodeError ... a ketasim bug"), so every text file is opened with an explicit
encoding."""

from __future__ import annotations

import json
import locale

import pytest

from ketasim.cli import main


@pytest.fixture
def c_locale():
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C")
    except locale.Error:  # pragma: no cover - every libc has "C"
        pytest.skip("no C locale")
    try:
        yield locale.getpreferredencoding(False)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_files_are_written_as_utf8_under_the_c_locale(c_locale, tmp_path, capsys):
    sbml, run_dir, csv = tmp_path / "m.xml", tmp_path / "run", tmp_path / "pk.csv"
    assert main(["export-sbml", "--out", str(sbml)]) == 0
    assert main(["run", "--n", "10", "--workers", "1", "--out", str(run_dir)]) == 0
    assert main(["pk", "--csv", str(csv), "--times-h", "1,2"]) == 0
    capsys.readouterr()
    text = sbml.read_text(encoding="utf-8")
    assert "µ" in text or "–" in text  # the notes carry non-ASCII text, written as UTF-8
    assert "ketasim" in (run_dir / "report.html").read_text(encoding="utf-8")
    json.loads((tmp_path / "pk.csv.meta.json").read_text(encoding="utf-8"))

