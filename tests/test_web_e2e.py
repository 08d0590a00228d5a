"""End-to-end tests of the page in headless Chromium (Debian's ``chromium``; Playwright never
downloads a browser). Screenshots go to ``test-artifacts/web/`` (git-ignored).

Skipped when Playwright or /usr/bin/chromium is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

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


def _page(browser, url: str):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    # 422s are the answers to the invalid inputs typed on purpose (and half-typed doses)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error"
            and "status of 422" not in m.text else None)
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
    _until(page, "document.getElementById('error').textContent.includes('dose')")
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
    tables = page.locator(".trial-table")
    assert tables.count() == 2  # drug arm A + placebo
    text = tables.first.inner_text()
    assert "1 d" in text and "7 d" in text and "response" in text
    links = page.locator("#trial-downloads a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(h.endswith("results.csv") for h in hrefs)
    assert any(h.endswith("results.parquet") for h in hrefs)
    assert any(h.endswith("report.html") for h in hrefs)
    import httpx

    r = httpx.get(server + hrefs[0])
    assert r.status_code == 200 and r.text.startswith("patient,")
    page.locator("#trial").screenshot(path=os.path.join(ART, "04-trial.png"))
    # the job id travels in the URL: reloading shows the same result
    page2, errors2 = _page(browser, page.url)
    page2.wait_for_selector(".trial-table", timeout=60_000)
    assert page2.locator(".trial-table").count() == 2
    assert errors == [] and errors2 == [], errors + errors2


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


def test_artifacts_folder_is_ignored():
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, ".gitignore")) as fh:
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
        _until(page, "document.getElementById('error').textContent.includes('dose')")
        link = page.url
    finally:
        page.close()
    page, errors = _page(browser, link)  # waits for data-ready: the start did not fail
    try:
        err = page.locator("#error").text_content()
        assert "Could not start" not in err and "dose" in err, err
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
