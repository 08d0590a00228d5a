"""Load test of ``POST /api/simulate`` (a benchmark: it prints numbers, it asserts nothing).

Two ways to load the server:

* ``--rate R`` (default 100): open loop, a new request every 1/R s whatever the answers, for
  ``--duration`` s; the requests actually completed per second, the latency percentiles and
  the errors show whether the server sustains R.
* ``--concurrency C`` (``--rate 0``): closed loop, C clients each sending its next request as
  soon as the last is answered: the most the server does.

Request bodies (``--bodies``): ``distinct`` gives every request a new patient (weight
40–200 kg in 0.01 kg steps, alternating dose), so each one is simulated (no cache hit);
``same`` repeats one body (after the first, the LRU cache answers); ``mixed`` draws from 50
bodies (a few users changing a few inputs). The server is started here (``ketasim serve`` in a
subprocess, as a user runs it) unless ``--url`` is given.

    .venv/bin/python scripts/web_load.py                         # distinct, 100 req/s, 20 s
    .venv/bin/python scripts/web_load.py --bodies same --rate 200
    .venv/bin/python scripts/web_load.py --rate 0 --concurrency 16 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from web_latency import _free_port, _pct, _start_server, _wait_warm  # noqa: E402


def body_for(i: int, mode: str) -> dict:
    """The ``i``-th request body for ``mode`` (distinct, same or mixed)."""
    if mode == "same":
        i = 0
    elif mode == "mixed":
        i = random.Random(i).randrange(50)
    weight = 40.0 + (i * 0.01) % 160.0
    dose = "0.5 mg/kg" if i % 2 == 0 else "0.75 mg/kg"
    return {"arm": {"name": "A", "drug": "ketamine", "route": "iv-infusion", "dose": dose,
                    "duration": "40 min"},
            "patient": {"weight_kg": round(weight, 2)}, "days": 14}


async def _one(client, url: str, body: dict, out: list) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post(url, json=body)
        ok = r.status_code == 200
        hit = r.headers.get("x-ketasim-cache") == "hit"
        code = r.status_code
        if ok:
            await asyncio.to_thread(len, r.content)
    except Exception as exc:  # noqa: BLE001 - every failure counts as an error
        ok, hit, code = False, False, type(exc).__name__
    out.append((t0, time.perf_counter() - t0, ok, hit, code))


async def run(url: str, rate: float, concurrency: int, duration: float, mode: str) -> dict:
    """Load ``url`` (…/api/simulate); per-request (start, latency s, ok, cache hit, status)."""
    import httpx

    out: list = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        t_start = time.perf_counter()
        if rate > 0:
            tasks = []
            i = 0
            while True:
                due = t_start + i / rate
                now = time.perf_counter()
                if due - t_start >= duration:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                tasks.append(asyncio.create_task(_one(client, url, body_for(i, mode), out)))
                i += 1
            await asyncio.gather(*tasks)
        else:
            counter = iter(range(10**9))

            async def worker() -> None:
                while time.perf_counter() - t_start < duration:
                    await _one(client, url, body_for(next(counter), mode), out)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t_start
    return {"rows": out, "wall_s": wall}


def summarise(res: dict, rate: float, concurrency: int, mode: str) -> dict:
    """Requests per second, latency percentiles (ms), errors and cache hits."""
    rows = res["rows"]
    lat = [r[1] * 1e3 for r in rows if r[2]]
    errors = [r[4] for r in rows if not r[2]]
    return {"bodies": mode, "offered_rate": rate or None,
            "concurrency": None if rate else concurrency, "requests": len(rows),
            "wall_s": round(res["wall_s"], 2),
            "completed_per_s": round(len(lat) / res["wall_s"], 1),
            "errors": len(errors), "error_kinds": sorted({str(e) for e in errors}),
            "cache_hits": sum(r[3] for r in rows),
            "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "p90_ms": round(_pct(lat, 0.90), 1) if lat else None,
            "p99_ms": round(_pct(lat, 0.99), 1) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None,
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print a summary (``--json``: one object)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second offered "
                    "(open loop); 0: closed loop with --concurrency")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--bodies", choices=["distinct", "same", "mixed"], default="distinct")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = a.url
        if not url:
            port = _free_port()
            proc = _start_server(port, tmp)
            url = f"http://127.0.0.1:{port}/"
        url = url.rstrip("/") + "/"
        try:
            _wait_warm(url)
            res = asyncio.run(run(url + "api/simulate", a.rate, a.concurrency, a.duration,
                                  a.bodies))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    s = summarise(res, a.rate, a.concurrency, a.bodies)
    if a.json:
        print(json.dumps(s))
    else:
        how = (f"{a.rate:g} req/s offered" if a.rate else f"{a.concurrency} clients, closed loop")
        print(f"/api/simulate, {a.bodies} bodies, {how}, {s['wall_s']} s, load average "
              f"{s['load_average']:.1f}")
        print(f"  completed {s['requests'] - s['errors']} of {s['requests']}: "
              f"{s['completed_per_s']} req/s; errors {s['errors']} {s['error_kinds'] or ''}; "
              f"cache hits {s['cache_hits']}")
        print(f"  latency ms: p50 {s['p50_ms']}  p90 {s['p90_ms']}  p99 {s['p99_ms']}  "
              f"max {s['max_ms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
