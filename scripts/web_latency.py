"""Page update latency of the web app in headless Chromium (a benchmark: it prints numbers).

For each of ``--changes`` dose changes typed into the page (Playwright's ``fill``: one
``input`` event), the time from the ``input`` event (``performance.now()`` in a capturing
listener, before the page's own handler runs) to the last ``plotly_afterplot`` of each of the
nine plots, and to the MADRS plot's (a panel is drawn at its ``plotly_afterplot`` after a full
redraw, or its ``plotly_animated`` after a data-only update, whichever is last); the server's
own time for each ``/api/simulate`` (``metadata.wall_ms``), the page's fetch time (request,
transfer, JSON parse) and its drawing time (``Plotly.react``/``animate`` of the nine). Median
and 90th percentile over the changes (the first two are warm-up and not counted).

    .venv/bin/python scripts/web_latency.py                  # starts `ketasim serve` itself
    .venv/bin/python scripts/web_latency.py --url http://127.0.0.1:8000/ --changes 40
    .venv/bin/python scripts/web_latency.py --schedule "twice weekly for 4 weeks" --days 35

Chromium is Debian's ``/usr/bin/chromium`` (``KETASIM_CHROMIUM``); Playwright never
downloads a browser. Timings on a shared machine are noisy: report the load average with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

PLOTS = ["plot-plasma", "plot-brain", "plot-block", "plot-signal", "plot-spines",
         "plot-madrs", "plot-suicide", "plot-exposure", "plot-side"]

# installed once per page: input time, last afterplot per plot (ms, performance.now())
_PROBE = """(plots) => {
  const lat = {input: null, after: {}, count: {}};
  window.__lat = lat;
  window.addEventListener('input', () => {
    lat.input = performance.now(); lat.after = {}; lat.count = {};
  }, true);
  for (const id of plots) {
    const done = () => {
      lat.after[id] = performance.now();
      lat.count[id] = (lat.count[id] || 0) + 1;
    };
    // a full redraw ends with plotly_afterplot, a data-only one with plotly_animated
    // (Plotly.animate) or ketasim_redrawn (the page's own path rewrite, app.js fastRedraw)
    document.getElementById(id).on('plotly_afterplot', done);
    document.getElementById(id).on('plotly_animated', done);
    document.getElementById(id).on('ketasim_redrawn', done);
  }
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, data_dir: str) -> subprocess.Popen:
    code = ("from ketasim.web.app import Settings, serve; "
            f"serve(port={port}, settings=Settings(data_dir={data_dir!r}, job_mode='thread'))")
    # the access log goes to a file: an unread pipe fills up and blocks the server
    log = open(os.path.join(data_dir, "server.log"), "wb")  # noqa: SIM115 - closed with it
    return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


def _wait_warm(url: str, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url + "api/health", timeout=5).json()["warm"]:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    raise SystemExit(f"server at {url} did not become ready")


@contextmanager
def served(url: str | None) -> Iterator[str]:
    """The app's base URL (ending in ``/``), ready: ``url`` as given, or a ``ketasim serve``
    started here on a free loopback port with a temporary data folder and stopped at the end."""
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if not url:
            port = _free_port()
            proc = _start_server(port, tmp)
            url = f"http://127.0.0.1:{port}/"
        url = url.rstrip("/") + "/"
        try:
            _wait_warm(url)
            yield url
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def _pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(url: str, changes: int, schedule: str, days: int, chromium: str,
            screenshot: str | None = None) -> dict:
    """Type ``changes`` + 2 doses into the page at ``url``; per change the latencies (ms)."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        if schedule or days != 14:
            n = page.evaluate("window.ketasim.updates")
            page.fill("#f-schedule", schedule)
            page.fill("#f-days", str(days))
            _until(page, f"window.ketasim.updates > {n}")
            page.wait_for_timeout(500)
        page.evaluate(_PROBE, PLOTS)
        for i in range(changes + 2):
            dose = f"{0.2 + 0.01 * i:.2f} mg/kg"  # every value new: no cache hit anywhere
            n = page.evaluate("window.ketasim.updates")
            page.fill("#f-dose", dose)
            _until(page, f"window.ketasim.updates > {n} && "
                   f"Object.keys(window.__lat.after).length === {len(PLOTS)}")
            page.wait_for_timeout(250)  # any later redraw would still count
            r = page.evaluate("""() => ({lat: window.__lat, fetch: window.ketasim.lastFetchMs,
                render: window.ketasim.lastRenderMs, full: window.ketasim.lastFullRedraws,
                server: window.ketasim.results[0].metadata.wall_ms,
                n: window.ketasim.results[0].time_h.length})""")
            after = r["lat"]["after"]
            t_in = r["lat"]["input"]
            if i >= 2:
                rows.append({"all": max(after.values()) - t_in,
                             "madrs": after["plot-madrs"] - t_in,
                             "fetch": r["fetch"], "render": r["render"],
                             "server": r["server"], "points": r["n"],
                             "redraws": sum(r["lat"]["count"].values()),
                             "full": r["full"]})
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        b.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return {"rows": rows}


def _until(page, expr: str, timeout_s: float = 30.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if page.evaluate(f"() => Boolean({expr})"):
            return
        page.wait_for_timeout(5)
    raise SystemExit(f"timed out waiting for {expr}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print medians and 90th percentiles (``--json``: one object)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--changes", type=int, default=30, help="dose changes measured (≥ 20)")
    ap.add_argument("--schedule", default="", help="dosing schedule typed first")
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--screenshot", help="save a full-page screenshot here at the end")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    chromium = os.environ.get("KETASIM_CHROMIUM", "/usr/bin/chromium")
    with served(a.url) as url:
        res = measure(url, a.changes, a.schedule, a.days, chromium, a.screenshot)
    rows = res["rows"]
    out = {"changes": len(rows), "points_per_trace": rows[-1]["points"],
           "load_average": os.getloadavg()[0]}
    for k in ("all", "madrs", "fetch", "render", "server"):
        xs = [r[k] for r in rows]
        out[k] = {"median_ms": round(statistics.median(xs), 1),
                  "p90_ms": round(_pct(xs, 0.9), 1), "max_ms": round(max(xs), 1)}
    out["redraws_per_change"] = statistics.median(r["redraws"] for r in rows)
    out["full_redraws_per_change"] = round(statistics.mean(r["full"] for r in rows), 2)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['changes']} dose changes, {out['points_per_trace']} points per trace, "
              f"load average {out['load_average']:.1f}")
        for k, label in (("all", "input → all nine plots drawn"),
                         ("madrs", "input → MADRS plot drawn"),
                         ("fetch", "page fetch of /api/simulate"),
                         ("render", "drawing of the nine (JS)  "),
                         ("server", "server time in /api/simulate")):
            v = out[k]
            print(f"  {label:32s} median {v['median_ms']:7.1f} ms   p90 {v['p90_ms']:7.1f} ms"
                  f"   max {v['max_ms']:7.1f} ms")
        print(f"  panels drawn per change (median): {out['redraws_per_change']}, of which full "
              f"redraws (mean): {out['full_redraws_per_change']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
