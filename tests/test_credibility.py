"""The credibility report: self-contained HTML with every section; opened in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from ketasim.cli import main
from ketasim.credibility import build_report, sbml_status, verification_checks
from ketasim.sensitivity import run_sensitivity
from ketasim.validate import run_validation

DATA = Path(__file__).parent / "data" / "cases"
SECTIONS = ("context", "diagram", "verification", "parameters", "calibration", "scorecard",
            "sensitivity", "limitations")
CHROMIUM = "/usr/bin/chromium"
MESSAGES: list[str] = []  # progress messages of the fixture's report
SC: dict = {}  # the fixture's scorecard and sensitivity


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> str:
    os.environ.setdefault("KETASIM_CACHE", str(tmp_path_factory.mktemp("kcache")))
    sc = run_validation(str(DATA), n=8, seed=0, replicates=10, include_shipped=False,
                        only=["example_single_iv", "example_pk", "example_bipolar_suicidality"])
    sens = run_sensitivity("madrs_change@24h", method="morris", samples=3, n=20, seed=0,
                           params=["drug_emax", "placebo_active", "drive50"])
    SC.update(scorecard=sc, sensitivity=sens)
    return build_report(scorecard=sc, sensitivity=sens, progress=MESSAGES.append)


def test_progress_messages_name_the_work_done_now(html):
    # scorecard and sensitivity were given, so only the verification checks run here
    assert MESSAGES == ["verification checks"]


def test_verification_numbers_are_computed_now():
    v = verification_checks()
    assert v["n_checks"] >= 10 and v["n_errors"] == 0
    assert v["max_rel_diff_vs_lsoda"] < 1e-5
    assert v["max_mass_balance_error"] < 1e-8
    routes = {r["route"] for r in v["rows"]}
    assert {"iv-infusion", "intranasal", "oral", "im"} <= routes


def test_sbml_status_runs_the_libroadrunner_agreement():
    # before: it looked for agreement functions that do not exist and reported "offers no
    # agreement check function", although `ketasim bench` runs that comparison
    import importlib.util

    s = sbml_status(n_patients=2)
    have = all(importlib.util.find_spec(m) is not None for m in ("roadrunner", "libsbml"))
    assert s["available"] == have
    if not have:
        assert s["text"].startswith("not available")
        return
    assert s["met"] and 0.0 <= s["max_rel_diff_vs_roadrunner"] <= 1e-4
    assert "libRoadRunner" in s["text"] and "no agreement" not in s["text"]


def test_report_is_self_contained_with_every_section(html):
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    assert "<svg" in html and "data:image/png;base64," in html
    # nothing fetched from the network: no external src/href (only in-page anchors)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html and "<link" not in html
    assert "research tool, not medical advice" in html
    assert "mechanism/uncertainty" in html  # card versions recorded
    assert "tagged <i>assumed</i>" in html
    # the scorecard lists the out-of-sample cases and says which endpoints missed and why
    assert "example_single_iv" in html and "out of sample" in html
    assert "Endpoints outside tolerance, and why" in html


def test_cli_report_writes_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KETASIM_CACHE", str(tmp_path / "c"))
    sub = tmp_path / "cases"
    sub.mkdir()
    shutil.copy(DATA / "pk_user.yaml", sub)
    out = tmp_path / "r.html"
    rc = main(["report", "credibility", "--out", str(out), "--cases", str(sub), "--no-shipped",
               "--n", "6", "--replicates", "5", "--sensitivity-samples", "2"])
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    assert all(f'id="{s}"' in text for s in SECTIONS)
    assert main(["report", "credibility", "--out", str(tmp_path / "no" / "r.html"),
                 "--cases", str(sub), "--no-shipped", "--n", "6", "--replicates", "5",
                 "--sensitivity-samples", "2"]) == 2


def test_report_opens_offline_in_headless_chromium(html, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = ctx.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            for sid in SECTIONS:
                assert page.locator(f"#{sid}").is_visible(), sid
            # every embedded figure decoded (non-zero natural width)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert widths and all(w > 0 for w in widths)
            assert page.locator("#diagram-svg").is_visible()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_figures_carry_provenance(html):
    """Every embedded PNG has the text chunk with the ketasim version, card hashes and the
    scorecard's seed (a figure saved from the page still says how it was made)."""
    import base64
    import io
    import json

    from PIL import Image

    from ketasim import __version__

    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) >= 2
    for b64 in pngs:
        info = json.loads(Image.open(io.BytesIO(base64.b64decode(b64))).text["Description"])
        assert info["ketasim_version"] == __version__ and info["card_hashes"]
        assert info["seed"] == 0


def test_report_records_the_case_selection_and_sensitivity_design(html):
    """The run-metadata table says which cases made the scorecard (not the shipped ones;
    only three example cases) and the sensitivity design, so the report can be rerun."""
    assert "no shipped cases" in html
    assert "only example_single_iv, example_pk, example_bipolar_suicidality" in html
    assert "morris, 3 samples" in html


def test_scorecard_marks_verdicts_within_the_monte_carlo_error():
    """`ketasim validate` marks a verdict another seed may flip with "~" and counts them; the
    credibility report's scorecard showed every yes / no as firm (76 of 142 at n = 60)."""
    from ketasim.credibility import _scorecard_html

    ep = {"name": "e", "observed": 1.0, "predicted": 1.1, "pi90": [0.9, 1.3],
          "tolerance": {"interval": [0.8, 1.2], "rule": None}, "within": True,
          "scale": "madrs", "at": "24 h", "arm": "ketamine", "vs": None}
    sc = {"cases": [{"id": "c1", "set": "calibration", "reason": None, "kind": "trial",
                     "endpoints": [
        {**ep, "mc_stable": False}, {**ep, "name": "f", "within": False, "mc_stable": True}]}],
        "summary": {"calibration": {"cases": 1, "endpoints": 2, "within": 1,
                                    "fraction_within": 0.5, "mc_unstable": 1},
                    "validation": {"cases": 0, "endpoints": 0, "within": 0,
                                   "fraction_within": None, "mc_unstable": 0}},
        "meta": {"n_per_arm": 60}}
    out = _scorecard_html(sc)
    assert '<span class="ok">yes~</span>' in out and '<span class="bad">no</span>' in out
    assert "1 verdicts (~) within the Monte Carlo error of 60 patients per arm" in out


def test_report_seed_is_the_scorecards(html):
    """build_report(scorecard=...) showed its own default seed (0) in the run metadata while
    the figures, drawn from the scorecard, recorded the scorecard's seed."""
    import copy

    sc = copy.deepcopy(SC["scorecard"])
    sc["meta"]["seed"] = 7
    out = build_report(scorecard=sc, sensitivity=SC["sensitivity"])
    assert "<td>seed</td><td>7</td>" in out
