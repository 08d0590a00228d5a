"""End-to-end tests of the page in headless Chromium (Debian's ``chromium``; Playwright never
downloads a browser). Screenshots go to ``test-artifacts/web/`` (git-ignored).

Skipped when Playwright or /usr/bin/chromium is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

pytest.importorskip("playwright")
CHROMIUM = os.environ.get("KETASIM_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

ART = os.path.join(os.path.dirname(__file__), "..", "test-artifacts", "web")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from ketasim.web.app import Settings, create_app

    data = tmp_path_factory.mktemp("web")
    app = create_app(Settings(data_dir=str(data), job_mode="thread", max_n=200))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    import httpx

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").json()["warm"]:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:  # pragma: no cover
        pytest.fail("server did not start")
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def browser():
    os.makedirs(ART, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _page(browser, url: str, strict: bool = False):
    """A page and the console errors it logs; unless ``strict``, the browser's own "status of
    422" lines (the server's answers to invalid values entered on purpose) are left out."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and (strict or "status of 422" not in m.text) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, errors


def _until(page, expr: str, timeout_s: float = 30.0) -> None:
    """Poll ``expr`` in the page (Playwright's wait_for_function evals a string, which the
    page's Content-Security-Policy rightly forbids)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate(f"() => Boolean({expr})"):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"timed out waiting for {expr}")


def _madrs(page) -> list[list[float]]:
    return page.evaluate("document.getElementById('plot-madrs').data.map(t => t.y)")


def _wait_updates(page, n: int) -> None:
    _until(page, f"window.ketasim.updates >= {n}")


_PANELS = """() => {
  const r = window.ketasim.results;
  const pick = {
    "plot-plasma": r.flatMap((x) => Object.values(x.plasma_ng_per_ml)),
    "plot-block": r.flatMap((x) => [x.readouts.block_E2B, x.readouts.block_Esyn,
      x.readouts.block_I, x.readouts.block_H]),
    "plot-spines": r.flatMap((x) => [x.readouts.spine_density, x.readouts.synaptic_proteins,
      x.readouts.synaptic_strength]),
    "plot-madrs": r.map((x) => x.scores.madrs),
    "plot-side": r.flatMap((x) => [x.scores.cadss, x.scores.sbp_change_mmhg,
      x.scores.sedation.map((v) => v * 10), x.scores.bprs_positive]),
  };
  const out = [];
  for (const [id, want] of Object.entries(pick)) {
    const gd = document.getElementById(id);
    const got = gd.data.map((t) => Array.from(t.y));
    const same = JSON.stringify(got) === JSON.stringify(want);
    const ys = got.flat().filter((v) => v !== null);
    const range = gd._fullLayout.yaxis.range;
    out.push([id, same, Math.min(...ys) >= range[0] && Math.max(...ys) <= range[1]]);
  }
  return out;
}"""


def _check_panels_show_results(page) -> None:
    for pid, same, inside in page.evaluate(_PANELS):
        assert same, f"{pid} does not show the last result"
        assert inside, f"{pid}: a curve leaves the y range"


def test_page_dose_change_moves_madrs_and_compare_and_reload(server, browser):
    page, errors = _page(browser, server + "/")
    assert page.locator("#disclaimer").is_visible()
    assert "not medical advice" in page.locator("#disclaimer").inner_text()
    # every form control has a label (accessibility)
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)""")
    assert unlabelled == []
    before = _madrs(page)
    assert len(before) == 1 and min(before[0]) < before[0][0]  # ketamine lowers MADRS
    page.screenshot(path=os.path.join(ART, "01-start.png"), full_page=True)

    # change the dose with the keyboard: focus, select all, type
    n = page.evaluate("window.ketasim.updates")
    page.focus("#f-dose")
    page.keyboard.press("Control+A")
    page.keyboard.type("0.1 mg/kg")
    _wait_updates(page, n + 1)
    _until(page, "document.getElementById('f-dose').value === '0.1 mg/kg' && "
                           "window.ketasim.results[0].metadata.courses.length === 1")
    page.wait_for_timeout(300)
    after = _madrs(page)
    assert min(after[0]) > min(before[0]) + 1.0, "a lower dose should help less"
    # latency of one change (weight), repeated: server round trip + re-plotting all panels
    times = []
    for w in (71, 72, 73, 74, 75, 76):
        n = page.evaluate("window.ketasim.updates")
        page.fill("#f-weight", str(w))
        _wait_updates(page, n + 1)
        times.append(page.evaluate("[window.ketasim.lastFirstMs, window.ketasim.lastUpdateMs, "
                                   "window.ketasim.lastFetchMs]"))
    med = [sorted(c)[len(c) // 2] for c in zip(*times, strict=True)]
    print(f"page update after one change, medians of 6: MADRS panel {med[0]:.0f} ms, "
          f"all nine panels {med[1]:.0f} ms (server round trip {med[2]:.0f} ms); "
          "scripts/web_latency.py measures it properly")
    # the 100 ms goal is measured and reported (docs/benchmarks.md), not asserted (shared CPU)
    assert med[0] < 2000 and med[1] < 3000
    # every panel shows the last result (data-only updates included), inside its axes
    page.wait_for_timeout(300)
    _check_panels_show_results(page)

    # a bad dose names the field
    page.fill("#f-dose", "0.1 mg/xx")
    _until(page, "document.getElementById('error').textContent.includes('Dose: ')")
    page.fill("#f-dose", "0.1 mg/kg")
    _until(page, "document.getElementById('error').textContent === ''")

    # compare: B = A at 1 mg/kg
    n = page.evaluate("window.ketasim.updates")
    page.click("#add-scenario")
    _wait_updates(page, n + 1)
    n = page.evaluate("window.ketasim.updates")
    page.fill("#f-dose", "1 mg/kg")
    _until(page, "window.ketasim.results.length === 2 && "
                           "window.ketasim.state.scenarios[1].dose === '1 mg/kg'")
    _wait_updates(page, n + 1)
    page.wait_for_timeout(300)
    two = _madrs(page)
    assert len(two) == 2 and min(two[1]) < min(two[0])
    _check_panels_show_results(page)
    assert page.locator("#summary tbody tr").count() == 2
    page.screenshot(path=os.path.join(ART, "02-compare.png"), full_page=True)
    exposure = page.evaluate("document.getElementById('plot-exposure').layout.annotations"
                             ".map(a => a.text)")
    assert any("anaesthetic" in t for t in exposure)

    # reload from the URL in a fresh page: same scenarios, same curves
    url = page.url
    assert "#s=" in url
    page2, errors2 = _page(browser, url)
    assert page2.evaluate("window.ketasim.state.scenarios.map(s => s.dose)") == \
        ["0.1 mg/kg", "1 mg/kg"]
    assert _madrs(page2) == two
    page2.screenshot(path=os.path.join(ART, "03-reloaded.png"), full_page=True)
    assert errors == [] and errors2 == [], errors + errors2


def test_page_legend_toggles_and_linear_time_axis(server, browser):
    page, errors = _page(browser, server + "/")
    vis = "document.getElementById('plot-plasma').data.map(t => t.visible)"
    first = page.locator("#plot-plasma-legend button").first
    assert first.get_attribute("aria-pressed") == "true" and page.evaluate(vis)[0] is True
    first.click()
    _until(page, f"{vis}[0] === false")
    assert page.locator("#plot-plasma-legend button").first.get_attribute(
        "aria-pressed") == "false"
    page.locator("#plot-plasma-legend button").first.click()
    _until(page, f"{vis}[0] === true")
    n = page.evaluate("window.ketasim.updates")
    page.select_option("#x-axis", "linear")
    _wait_updates(page, n + 1)
    page.wait_for_timeout(300)
    ax = page.evaluate("""['plot-plasma', 'plot-madrs', 'plot-side'].map(id => {
        const gd = document.getElementById(id);
        return [gd._fullLayout.xaxis.type, Math.max(...gd.data[0].x)]; })""")
    assert all(t == "linear" and abs(xmax - 14.0) < 1e-9 for t, xmax in ax), ax  # days
    _check_panels_show_results(page)
    assert errors == [], errors


def test_page_runs_a_small_trial(server, browser):
    page, errors = _page(browser, server + "/")
    page.fill("#t-n", "12")
    page.fill("#t-at", "1 d, 7 d")
    page.dispatch_event("#t-at", "change")
    page.click("#run-trial")
    page.wait_for_selector(".trial-table", timeout=180_000)
    assert page.locator("#progress-bar").evaluate("e => e.value") == 1
    # accessibility audit: the live region says the trial is done (WCAG 4.1.3)
    _until(page, "document.getElementById('trial-status').textContent.includes('done')")
    tables = page.locator(".trial-table")
    assert tables.count() == 2  # drug arm A + placebo
    text = tables.first.inner_text()
    assert "1 d" in text and "7 d" in text and "response" in text
    # the run line names seed and package version (it read a key the trial no longer has)
    from ketasim import __version__

    meta_line = page.locator("#trial p.muted").last.inner_text()
    assert f"ketasim {__version__}" in meta_line and "undefined" not in meta_line, meta_line
    # the difference table names its two arms with "vs" (the key joins them with "-")
    caps = page.evaluate("[...document.querySelectorAll('#trial caption')].map(c => "
                         "c.textContent).filter(t => t.startsWith('Difference'))")
    assert len(caps) == 1 and " vs " in caps[0], caps
    links = page.locator("#trial-downloads a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(h.endswith("results.csv") for h in hrefs)
    assert any(h.endswith("results.parquet") for h in hrefs)
    assert any(h.endswith("report.html") for h in hrefs)
    import httpx

    r = httpx.get(server + hrefs[0])
    assert r.status_code == 200 and r.text.startswith("# ")  # the run's metadata on top
    rows = r.text.splitlines()
    assert any(x.startswith("# seed: ") for x in rows)
    assert next(x for x in rows if not x.startswith("#")).startswith("patient,")
    page.locator("#trial").screenshot(path=os.path.join(ART, "04-trial.png"))
    # the job id travels in the URL: reloading shows the same result
    page2, errors2 = _page(browser, page.url)
    page2.wait_for_selector(".trial-table", timeout=60_000)
    assert page2.locator(".trial-table").count() == 2
    assert errors == [] and errors2 == [], errors + errors2


def test_page_trial_ci_bounds_never_read_zero_when_they_are_not(server, browser):
    """The trial tables' 95% CIs showed a bound of -0.004 as "-0.0" (and -0.04 as "-0.0"),
    hiding whether the interval excludes 0; they now show its first significant digit, as
    the HTML report does (ketasim.report._ci)."""
    from ketasim.report import _ci

    page, errors = _page(browser, server + "/")
    cases = [[-3.8, -0.004], [-0.04, 3.2], [-0.0499, 2.0], [-3.84, -1.0], [0.0, 1.0],
             [1.24, 2.5]]
    shown = page.evaluate(f"{json.dumps(cases)}.map((c) => ci(c))")
    assert shown == [_ci(c) for c in cases]
    assert shown[:2] == ["[-3.8, -0.004]", "[-0.04, 3.2]"]
    assert errors == []



def test_page_rounds_ties_like_the_report(server, browser):
    """The page rounded exact ties away from zero (JS toFixed: 1.25 -> "1.3", 12.5% -> "13%")
    where the HTML report (Python's format) rounds them half to even ("1.2", "12%"), so the
    same number read differently in the two. fixed() now agrees with Python's format on ties,
    near-ties (1.35, 1.45, 0.125 are not exact in binary), negatives and random values."""
    import random

    rng = random.Random(7)
    cases = [[1.25, 1], [1.35, 1], [1.45, 1], [0.125, 2], [0.375, 2], [12.5, 0], [13.5, 0],
             [0.5, 0], [-0.5, 0], [-2.5, 0], [-1.25, 1], [-0.04, 1], [2.675, 2], [0.0, 1],
             [1e-9, 4], [123456.5, 0], [0.00005, 4], [0.00015, 4], [-3.75, 1]]
    cases += [[rng.choice([-1, 1]) * rng.randrange(0, 20000) / 8, rng.randrange(0, 4)]
              for _ in range(200)]
    cases += [[rng.uniform(-100, 100), rng.randrange(0, 5)] for _ in range(200)]
    page, errors = _page(browser, server + "/")
    shown = page.evaluate(f"{json.dumps(cases)}.map(([v, nd]) => fixed(v, nd))")
    assert shown == [f"{v:.{nd}f}" for v, nd in cases]
    assert shown[:2] == ["1.2", "1.4"] and shown[5] == "12"
    assert page.evaluate("[pct(0.125), pp(-0.125), fmt(2.25, 1)]") == ["12%", "-12", "2.2"]
    assert errors == []

# every panel's lines as drawn: per trace (by index) the path's segments as [x, y] pixel lists
_PATHS = """() => Object.fromEntries(["plot-plasma", "plot-brain", "plot-block", "plot-signal",
  "plot-spines", "plot-madrs", "plot-suicide", "plot-exposure", "plot-side"].map((id) => {
  const gd = document.getElementById(id);
  const parse = (d) => d.split("M").filter(Boolean).map((seg) => seg.replace(/Z/g, "")
    .split("L").map((p) => p.split(",").map(Number)));
  return [id, Array.from(gd.querySelectorAll("g.trace.scatter")).map((g) => {
    const el = g.querySelector("path.js-line");
    return [g.__data__[0].trace.index, parse(el ? el.getAttribute("d") : "")];
  }).sort((a, b) => a[0] - b[0])];
}))"""


def _assert_same_lines(fast: dict, full: dict) -> None:
    assert fast.keys() == full.keys()
    for pid in full:
        assert len(fast[pid]) == len(full[pid]), pid
        for (i, a), (j, b) in zip(fast[pid], full[pid], strict=True):
            assert i == j and len(a) == len(b) and len(b) >= 1, (pid, i)
            for sa, sb in zip(a, b, strict=True):
                assert len(sa) == len(sb), (pid, i)
                d = max(max(abs(p[0] - q[0]), abs(p[1] - q[1]))
                        for p, q in zip(sa, sb, strict=True))
                assert d <= 0.01, (pid, i, d)


@pytest.mark.parametrize("axis", ["log", "linear"])
def test_page_fast_redraw_draws_what_plotly_draws(server, browser, axis):
    """A small dose change takes the page's own data-only redraw (app.js ``fastRedraw``);
    its lines are the ones Plotly draws for the same data (same segments, within 0.01 px),
    and the panels hold the new values (data, hover)."""
    page, errors = _page(browser, server + "/")
    if axis == "linear":
        n = page.evaluate("window.ketasim.updates")
        page.select_option("#x-axis", "linear")
        _wait_updates(page, n + 1)
    for dose in ("0.51 mg/kg", "0.52 mg/kg"):
        n = page.evaluate("window.ketasim.updates")
        page.fill("#f-dose", dose)
        _wait_updates(page, n + 1)
    assert page.evaluate("window.ketasim.lastFastRedraws") == 9
    fast = page.evaluate(_PATHS)
    _check_panels_show_results(page)
    page.evaluate("""Promise.all(["plot-plasma", "plot-brain", "plot-block", "plot-signal",
        "plot-spines", "plot-madrs", "plot-suicide", "plot-exposure", "plot-side"]
        .map((id) => Plotly.redraw(id)))""")
    _assert_same_lines(fast, page.evaluate(_PATHS))
    assert errors == [], errors


_MARKERS = r"""() => Object.fromEntries(["plot-plasma", "plot-madrs", "plot-side"].map((id) => {
  const gd = document.getElementById(id);
  return [id, Array.from(gd.querySelectorAll("g.trace.scatter")).map((g) => [
    g.__data__[0].trace.index,
    g.__data__[0].trace.mode === "lines" ? null : g.__data__[0].trace.marker.symbol,
    Array.from(g.querySelectorAll("path.point")).filter((p) => p.style.display !== "none")
      .map((p) => (p.getAttribute("transform").match(/translate\(([^,]+),([^)]+)\)/) || [])
        .slice(1).map(Number))])
    .sort((a, b) => a[0] - b[0])];
}))"""


def test_page_scenarios_differ_by_marker_not_colour_alone(server, browser):
    """WCAG 1.4.1: scenario B's curves carry circle markers (A a plain line) and the scenario
    legend shows each marker glyph; a small change to B takes the fast redraw, which moves the
    markers exactly where Plotly's own redraw puts them."""
    page, errors = _page(browser, server + "/")
    n = page.evaluate("window.ketasim.updates")
    page.click("#add-scenario")
    _wait_updates(page, n + 1)
    _until(page, "window.ketasim.results.length === 2")
    page.wait_for_timeout(300)
    marks = page.evaluate(_MARKERS)
    for pid, traces in marks.items():
        syms = {sym for _, sym, _ in traces}
        assert syms == {None, "circle"}, (pid, syms)
        assert all(len(pts) == 0 for _, sym, pts in traces if sym is None), pid
        assert all(3 <= len(pts) <= 12 for _, sym, pts in traces if sym == "circle"), pid
    legend = page.locator("#legend").inner_text()
    assert "—" in legend and "●" in legend
    for dose in ("0.51 mg/kg", "0.52 mg/kg"):
        n = page.evaluate("window.ketasim.updates")
        page.fill("#f-dose", dose)
        _wait_updates(page, n + 1)
    assert page.evaluate("window.ketasim.lastFastRedraws") == 9
    fast_lines, fast_marks = page.evaluate(_PATHS), page.evaluate(_MARKERS)
    page.evaluate("""Promise.all(["plot-plasma", "plot-brain", "plot-block", "plot-signal",
        "plot-spines", "plot-madrs", "plot-suicide", "plot-exposure", "plot-side"]
        .map((id) => Plotly.redraw(id)))""")
    _assert_same_lines(fast_lines, page.evaluate(_PATHS))
    full_marks = page.evaluate(_MARKERS)
    for pid in full_marks:
        for (i, _, a), (j, _, b) in zip(fast_marks[pid], full_marks[pid], strict=True):
            assert i == j and len(a) == len(b), (pid, i)
            for p, q in zip(a, b, strict=True):
                assert max(abs(p[0] - q[0]), abs(p[1] - q[1])) <= 0.01, (pid, i, p, q)
    assert errors == [], errors


def test_page_live_regions_do_not_repeat_themselves(server, browser):
    """An unchanged error is not rewritten (a rewrite replaces the text node, which screen
    readers announce again), and the timing line is not a live region."""
    page, errors = _page(browser, server + "/")
    assert page.evaluate("document.getElementById('status').getAttribute('aria-live')") is None
    page.fill("#f-dose", "0.1 mg/xx")
    _until(page, "document.getElementById('error').textContent.includes('Dose: ')")
    page.evaluate("""() => { window.__errMut = 0;
        new MutationObserver((m) => { window.__errMut += m.length; })
          .observe(document.getElementById('error'),
                   {childList: true, characterData: true, subtree: true}); }""")
    text = page.evaluate("document.getElementById('error').textContent")
    for w in ("71", "72", "73"):  # other fields change; the dose stays wrong
        page.fill("#f-weight", w)
        page.wait_for_timeout(400)
    assert page.evaluate("document.getElementById('error').textContent") == text
    assert page.evaluate("window.__errMut") == 0
    page.fill("#f-dose", "0.1 mg/kg")
    _until(page, "document.getElementById('error').textContent === ''")
    assert page.evaluate("window.__errMut") >= 1
    assert errors == [], errors


def test_artifacts_folder_is_ignored():
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, ".gitignore"), encoding="utf-8") as fh:
        assert "test-artifacts/" in fh.read()


def test_page_audit_fixes_share_button_bad_link_and_unreadable_numbers(server, browser):
    """From a browser audit (2026-11-27): no Plotly "Share chart" button (it opened
    cloud.plotly.com with the data); a link holding an invalid value starts, shows the error
    and recovers once the value is fixed (it stopped at "Could not start: $(...).on is not a
    function"); a number the browser cannot read is an error, not 0 or the default."""
    page, errors = _page(browser, server)
    try:
        assert page.locator(".modebar-btn[data-title*='Share']").count() == 0
        assert page.locator(".modebar-btn[data-title*='Chart Studio']").count() == 0
        page.fill("#f-dose", "bogus")
        _until(page, "document.getElementById('error').textContent.includes('Dose: ')")
        link = page.url
    finally:
        page.close()
    page, errors = _page(browser, link)  # waits for data-ready: the start did not fail
    try:
        err = page.locator("#error").text_content()
        assert "Could not start" not in err and "Dose: " in err, err
        n = page.evaluate("window.ketasim.updates")
        page.fill("#f-dose", "0.5 mg/kg")
        _wait_updates(page, n + 1)
        assert page.locator("#error").text_content() == ""
        # the plots drawn after the fix are linked: zooming one zooms the others
        page.evaluate("Plotly.relayout('plot-madrs', {'xaxis.range[0]': 1, "
                      "'xaxis.range[1]': 2})")  # what a drag-zoom emits
        _until(page, "JSON.stringify(document.getElementById('plot-plasma')"
                     "._fullLayout.xaxis.range) === JSON.stringify(document.getElementById("
                     "'plot-madrs')._fullLayout.xaxis.range)")
        page.fill("#f-weight", "1e400")
        _until(page, "document.getElementById('error').textContent.includes("
                     "'Weight: enter a number')")
        assert not [e for e in errors if "Could not start" in e or "on is not" in e]
    finally:
        page.close()


def test_page_tab_click_right_after_editing_a_field_lands(server, browser):
    """Audit finding: the first click on a scenario tab after editing a field was lost (the
    field's `change` on blur rebuilt the tab bar between mousedown and click)."""
    page, errors = _page(browser, server)
    try:
        n = page.evaluate("window.ketasim.updates")
        page.click("#add-scenario")
        _wait_updates(page, n + 1)
        page.click("#tab-A")
        assert page.evaluate("window.ketasim.state.active") == 0
        page.focus("#f-weight")
        page.keyboard.press("Control+A")
        page.keyboard.type("72")
        page.click("#tab-B")  # blurs the weight field first: `change`
        assert page.evaluate("window.ketasim.state.active") == 1
        assert page.locator("#tab-B").get_attribute("aria-selected") == "true"
        assert page.locator("#tab-A").get_attribute("aria-selected") == "false"
        assert page.evaluate("window.ketasim.state.scenarios.map(s => String(s.weight))") == \
            ["72", "70"]
        assert page.locator("#f-weight").input_value() == "70"  # the form shows B
        assert errors == [], errors
    finally:
        page.close()


def test_page_typing_sends_only_readable_values(server, browser):
    """Audit finding: typing sent a request per keystroke, and every half-typed value ("0.5
    mg/", a weight of "8" on the way to 85, "-") was an HTTP 422 that the browser logs as a
    console error. Values the server would refuse are no longer sent (the error line names the
    field meanwhile); every value that reads is still sent at once, and the last one is drawn."""
    page, errors = _page(browser, server, strict=True)  # a logged 422 counts
    statuses: list[int] = []
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json)
            if r.url.endswith("/api/simulate") else None)
    page.on("response", lambda r: statuses.append(r.status)
            if r.url.endswith("/api/simulate") else None)
    try:
        hints = []
        for sel, value in (("#f-weight", "85"), ("#f-age", "-"), ("#f-age", "33"),
                           ("#f-mg", "0.8"), ("#f-dose", "0.25 mg/kg"),
                           ("#f-duration", "45 min"), ("#f-schedule", "twice weekly for 2 weeks")):
            page.focus(sel)
            page.keyboard.press("Control+A")
            page.keyboard.press("Delete")
            for ch in value:
                page.keyboard.type(ch)
                hints.append(page.locator("#error").text_content())
        page.keyboard.press("Tab")
        want = {"weight_kg": 85.0, "age_years": 33.0}
        _until(page, "document.getElementById('error').textContent === '' && "
                     "window.ketasim.results.length === 1 && "
                     "window.ketasim.results[0].metadata.courses[0].n_doses === 4")
        page.wait_for_timeout(300)
        last = sent[-1]
        assert {k: last["patient"][k] for k in want} == want
        assert last["arm"]["dose"] == "0.25 mg/kg" and last["arm"]["duration"] == "45 min"
        assert last["arm"]["schedule"] == "twice weekly for 2 weeks"
        assert last["arm"]["interventions"] == "mg=0.8"
        assert _madrs(page)[0] == page.evaluate("window.ketasim.results[0].scores.madrs")
        assert statuses and set(statuses) == {200}, statuses
        # while a value did not read, the error line said which field
        assert any(h.startswith("Scenario A: Weight: at least 40") for h in hints), hints
        assert any(h.startswith("Scenario A: Dose: ") for h in hints), hints
        assert any(h.startswith("Scenario A: Schedule: ") for h in hints), hints
        assert errors == [], errors
    finally:
        page.close()


_TYPED = {"dose": ["0.5 mg/kg", "56 mg", "250 µg/kg", " 1e-1 MG / KG ", "2 g", "0 mg",
                   "-1 mg", ".5 ug", "5 mcg/kg", "3 milligram", "1 mg/xx", "x", "1 2 mg"],
          "duration": ["40 min", "2 h", "3.5 d", "1 week", "90", "0 min", "-2 h", "1 mi n",
                       "10 secs", "2 wk", "5 hours", "3 zz"],
          "schedule": ["", "once", "Single", "twice weekly for 4 weeks", "every 3.5 d x 8",
                       "every 24 h for 5 d", "daily x 7", "at 0, 3.5 d, 7 d", "at 0, 1 d,",
                       "thrice weekly x 6", "2 times daily for 3 d", "every 2 d × 3",
                       "weekly for 3 weeks", "daily", "every 0 h x 2", "daily x 0",
                       "twice weekly for 4", "five daily x2", "0 daily x 2", "at 7 d, 1 d",
                       "every 1 h for 20000 h", "seven weekly for 1 wk", "at 1 zz"]}


def test_page_input_checks_agree_with_the_parsers(server, browser):
    """The page's checks (app.js ``inputProblem``) never hold back a value the library reads:
    on every prefix of many values, a value with a problem is one the parser refuses."""
    from ketasim.errors import KetasimError
    from ketasim.regimen import parse_schedule
    from ketasim.units import parse_dose, parse_duration

    parse = {"dose": parse_dose, "duration": parse_duration, "schedule": parse_schedule}
    cases = sorted({(kind, v[:i]) for kind, values in _TYPED.items() for v in values
                    for i in range(len(v) + 1)})
    page, errors = _page(browser, server)
    try:
        got = page.evaluate("(cases) => cases.map(([k, t]) => window.ketasim.inputProblem(k, t))",
                            [list(c) for c in cases])
    finally:
        page.close()
    held = 0
    for (kind, text), problem in zip(cases, got, strict=True):
        if problem:
            held += 1
            with pytest.raises(KetasimError):
                parse[kind](text)
        elif kind in ("dose", "duration") and text in _TYPED[kind]:
            parse[kind](text)  # in full, read by both (the checks leave dose limits out)
    assert held > len(cases) // 2  # most half-typed values are held back
    assert errors == [], errors


def test_page_errors_name_fields_as_on_screen(server, browser):
    """Audit finding: errors named API fields ("arm: dose: …", "patient.weight_kg: …"); they
    name the field as labelled on screen and keep the server's reason."""
    page, errors = _page(browser, server)
    try:
        page.fill("#f-dose", "300 mg/kg")  # reads, but above the largest dose: the server says
        _until(page, "document.getElementById('error').textContent.includes('above')")
        err = page.locator("#error").text_content()
        assert err.startswith("Scenario A: Dose: '300 mg/kg' is above the largest dose"), err
        assert page.locator("#f-dose").get_attribute("aria-invalid") == "true"
        text = "window.ketasim.errorText({detail: [{loc: %s, msg: %s}]}, ['A', 'placebo'])"
        for loc, msg, want in [
            (["body", "patient", "weight_kg"], "Input should be greater than or equal to 40",
             "Weight: Input should be greater than or equal to 40"),
            (["body", "days"], "Input should be a valid number", "Days simulated: Input should "
             "be a valid number"),
            (["body", "arm"], "schedule duration: unknown time unit 'we'",
             "Schedule (duration): unknown time unit 'we'"),
            (["body", "arm", "interventions"], "mg must be within 0–20 mM",
             "Interventions: mg must be within 0–20 mM"),
            (["body", "arm", 0], "dose: unknown unit 'mg/xx'", "arm A: Dose: unknown unit 'mg/xx'"),
            (["body", "endpoints", "at"], "endpoints.at: unknown time unit 'zz'",
             "Visits: unknown time unit 'zz'"),
            (["body", "population", "n"], "Input should be greater than or equal to 1",
             "Patients: Input should be greater than or equal to 1"),
        ]:
            assert page.evaluate(text % (json.dumps(loc), json.dumps(msg))) == want
        # a trial error from the server, end to end
        page.fill("#f-dose", "0.5 mg/kg")
        page.fill("#t-at", "1 d, 7 zz")
        page.dispatch_event("#t-at", "change")
        page.click("#run-trial")
        _until(page, "document.getElementById('trial-error').textContent !== ''")
        assert page.locator("#trial-error").text_content() == \
            "Trial: Visits: unknown time unit 'zz' (allowed: s, min, h, d, week)"
        assert errors == [], errors
    finally:
        page.close()


_FOCUS = "document.activeElement && document.activeElement.id"


def test_page_keyboard_reaches_the_trial_in_few_tabs(server, browser):
    """Audit finding: ~100 Tab presses from the form to the trial (Plotly's mode-bar buttons
    were in the tab order). The mode bars are out of it (still there for the mouse); each
    plot legend is one Tab stop whose entries the arrow keys move between."""
    page, errors = _page(browser, server)
    try:
        assert page.locator(".modebar-btn").count() >= 9  # the mouse still has them
        page.focus("#f-mg")
        presses = 0
        while page.evaluate(_FOCUS) != "t-n" and presses < 40:
            page.keyboard.press("Tab")
            presses += 1
        print(f"Tab presses from the last form field to the trial: {presses}")
        assert presses <= 12, presses  # the time axis, nine legends, then the trial
        # a legend: Tab lands on its first entry, the arrow keys move, Enter toggles and keeps
        # the focus where it was
        page.focus("#f-mg")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        first = "document.querySelector('#plot-plasma-legend button')"
        assert page.evaluate(f"document.activeElement === {first}")
        page.keyboard.press("ArrowRight")
        second = "document.querySelectorAll('#plot-plasma-legend button')[1]"
        assert page.evaluate(f"document.activeElement === {second}")
        page.keyboard.press("Enter")
        _until(page, "document.getElementById('plot-plasma').data[1].visible === false")
        assert page.evaluate(f"document.activeElement === {second}")
        assert page.evaluate(f"{second}.getAttribute('aria-pressed')") == "false"
        # after a zoom (Plotly redraws), the mode bars stay out of the tab order
        page.evaluate("Plotly.relayout('plot-madrs', {'xaxis.range[0]': 0, "
                      "'xaxis.range[1]': 2})")
        page.wait_for_timeout(300)
        assert page.evaluate("[...document.querySelectorAll('.modebar-btn')]"
                             ".every(b => b.tabIndex === -1)")
        assert page.locator("#disclaimer").is_visible()
        assert errors == [], errors
    finally:
        page.close()


# ---------------------------------------------------------------- accessibility (WCAG 2.1 AA)
def _luminance(rgb: str) -> float:
    parts = [float(v) for v in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    c = [v / 255 for v in parts]
    c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def _contrast(a: str, b: str) -> float:
    la, lb = sorted([_luminance(a), _luminance(b)], reverse=True)
    return (la + 0.05) / (lb + 0.05)


# a colour as computed, and the first opaque background behind the element
_COLOURS = """([sel, prop]) => {
  const el = document.querySelector(sel);
  let bg = el.parentElement;
  while (bg && getComputedStyle(bg).backgroundColor.match(/rgba\\(.*, 0\\)|transparent/)) {
    bg = bg.parentElement;
  }
  const white = "rgb(255, 255, 255)";
  return [getComputedStyle(el)[prop], bg ? getComputedStyle(bg).backgroundColor : white];
}"""

_FOCUSABLE = "button, a[href], input, select, textarea, [tabindex]"


def test_page_accessibility(server, browser):
    """Accessibility audit findings (WCAG 2.1 AA), checked in the live DOM."""
    page, errors = _page(browser, server)
    try:
        # 4.1.2 (axe nested-interactive): no role=img holds a focusable element (Plotly's
        # mode-bar buttons were inside the role=img plot containers)
        assert page.evaluate(f"""[...document.querySelectorAll('[role=img]')]
            .filter((e) => e.querySelector('{_FOCUSABLE}')).map((e) => e.id)""") == []
        # 1.1.1: every plot has a text alternative with the values, which follows the inputs;
        # the drawing itself is hidden from screen readers, the figure named by its caption
        plots = page.evaluate("[...document.querySelectorAll('.plot')].map((e) => e.id)")
        assert len(plots) == 9
        for pid in plots:
            fig = f"document.getElementById('{pid}').closest('figure')"
            assert page.evaluate(f"{fig}.getAttribute('aria-labelledby')") == f"{pid}-title"
            assert page.locator(f"#{pid}").get_attribute("aria-hidden") == "true"
            desc = page.locator(f"#{pid}-desc").text_content()
            assert "Scenario A" in desc and any(ch.isdigit() for ch in desc), (pid, desc)
        before = page.locator("#plot-plasma-desc").text_content()
        n = page.evaluate("window.ketasim.updates")
        page.fill("#f-dose", "1 mg/kg")
        _wait_updates(page, n + 1)
        assert page.locator("#plot-plasma-desc").text_content() != before
        # 4.1.2: the scenario tabs follow the ARIA tabs pattern
        n = page.evaluate("window.ketasim.updates")
        page.click("#add-scenario")
        _wait_updates(page, n + 1)
        assert page.locator("#tabs").get_attribute("role") == "tablist"
        tabs = page.evaluate("""[...document.querySelectorAll('#tabs > *')].map((t) =>
            [t.id, t.getAttribute('role'), t.getAttribute('aria-selected'), t.tabIndex])""")
        assert tabs == [["tab-A", "tab", "false", -1], ["tab-B", "tab", "true", 0]], tabs
        panel = page.locator("#tab-B").get_attribute("aria-controls")
        assert page.locator(f"#{panel}").get_attribute("role") == "tabpanel"
        assert page.locator(f"#{panel}").get_attribute("aria-labelledby") == "tab-B"
        page.focus("#tab-B")
        page.keyboard.press("ArrowLeft")
        assert page.evaluate(_FOCUS) == "tab-A"
        assert page.evaluate("window.ketasim.state.active") == 0
        assert page.locator(f"#{panel}").get_attribute("aria-labelledby") == "tab-A"
        # 3.3.1 / 4.1.2: an error is tied to its field (aria-invalid + aria-describedby), in
        # the scenario form and in the trial form
        page.fill("#f-weight", "500")
        _until(page, "document.getElementById('error').textContent.includes('Weight')")
        assert page.locator("#f-weight").get_attribute("aria-invalid") == "true"
        assert "error" in page.locator("#f-weight").get_attribute("aria-describedby").split()
        page.fill("#f-weight", "70")
        _until(page, "document.getElementById('error').textContent === ''")
        assert page.locator("#f-weight").get_attribute("aria-describedby") is None
        assert page.locator("#f-dose").get_attribute("aria-describedby") == "dose-help"
        page.fill("#t-n", "5000")
        page.dispatch_event("#t-n", "change")
        page.click("#run-trial")
        _until(page, "document.getElementById('trial-error').textContent !== ''")
        assert page.locator("#t-n").get_attribute("aria-invalid") == "true"
        assert page.locator("#t-n").get_attribute("aria-describedby") == "trial-error"
        # 4.1.3: the trial's live region is on the page (not inside the hidden progress row,
        # where screen readers do not track it)
        live = page.evaluate("""[...document.querySelectorAll('#trial [aria-live]')]
            .filter((e) => !e.closest('[hidden]')).map((e) => e.id)""")
        assert "trial-status" in live, live
        # 1.4.3 text ≥ 4.5:1 (a legend entry switched off was 2.5:1) and 1.4.11 control borders
        # and the focus ring ≥ 3:1 (were 2.5:1 and 2.1:1), computed from the page's styles
        page.click("#plot-plasma-legend button")
        page.focus("#f-mg")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")  # the first plot legend's entry, focus visible
        assert page.evaluate("document.activeElement.matches(':focus-visible')")
        page.evaluate("document.activeElement.id = 'focused-now'")
        for sel, prop, least in [
            ("body", "color", 4.5), (".muted", "color", 4.5), ("small", "color", 4.5),
            (".error", "color", 4.5), ("#run-trial", "backgroundColor", 4.5),
            ("#plot-plasma-legend button[aria-pressed=false]", "color", 4.5),
            ("#f-dose", "borderTopColor", 3.0), ("#t-control", "borderTopColor", 3.0),
            ("#focused-now", "outlineColor", 3.0)]:
            fg, bg = page.evaluate(_COLOURS, [sel, prop])
            if prop == "backgroundColor":  # white text on the accent
                text = f"getComputedStyle(document.querySelector('{sel}')).color"
                fg, bg = page.evaluate(text), fg
            assert _contrast(fg, bg) >= least, (sel, prop, fg, bg, round(_contrast(fg, bg), 2))
        assert errors == [], errors
    finally:
        page.close()


def test_page_reflows_at_320_css_px(server, browser):
    """WCAG 1.4.10: at 320 CSS px wide (1280 px at 400% zoom) the page needs no sideways
    scrolling (wide data tables scroll in their own box)."""
    page = browser.new_page(viewport={"width": 320, "height": 640})
    try:
        page.goto(server)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 320, width
        # the summary table scrolls in its own box, which the keyboard can reach (2.1.1)
        box = "document.getElementById('summary').parentElement"
        assert page.evaluate(f"{box}.scrollWidth > {box}.clientWidth")
        assert page.evaluate(f"[{box}.tabIndex, {box}.getAttribute('role')]") == [0, "region"]
    finally:
        page.close()
