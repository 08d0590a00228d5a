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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from web_latency import _pct, served  # noqa: E402


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


class _Conn:
    """One kept-alive HTTP/1.1 connection written on asyncio streams: a few µs of client CPU
    per request (httpx spent ~8 ms per request with 32 connections on this machine, so the
    client, not the server, was measured)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        """POST ``payload`` (JSON) to ``path``; (status, headers in lower case, body)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(payload)}"
                          "\r\n\r\n".encode() + payload)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, body

    async def close(self) -> None:
        """Close the connection (a later post opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def _one(conn: _Conn, path: str, body: dict, out: list,
               start: float | None = None) -> None:
    t0 = time.perf_counter() if start is None else start
    try:
        status, headers, _ = await asyncio.wait_for(
            conn.post(path, json.dumps(body).encode()), timeout=30.0)
        ok = status == 200
        hit = headers.get("x-ketasim-cache") in ("hit", "shared")
        code: int | str = status
    except Exception as exc:  # noqa: BLE001 - every failure counts as an error
        ok, hit, code = False, False, type(exc).__name__
        await conn.close()
    out.append((t0, time.perf_counter() - t0, ok, hit, code))


async def run(url: str, rate: float, concurrency: int, duration: float, mode: str,
              connections: int = 32) -> dict:
    """Load ``url`` (…/api/simulate); per-request (start, latency s, ok, cache hit, status).

    Open loop (``rate`` > 0): request i is due at i/rate s; ``connections`` kept-alive
    connections take the next due request, wait for its time and send it; a request sent late
    because every connection was busy counts its lateness in its latency (no coordinated
    omission). Closed loop: ``concurrency`` connections send back to back."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    host, port, path = u.hostname or "127.0.0.1", u.port or 80, u.path
    out: list = []
    t_start = time.perf_counter()
    counter = iter(range(10**9))
    n_total = int(duration * rate) if rate > 0 else 0

    async def sender() -> None:
        conn = _Conn(host, port)
        try:
            for i in counter:
                if rate > 0:
                    if i >= n_total:
                        return
                    due = t_start + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await _one(conn, path, body_for(i, mode), out, start=due)
                else:
                    if time.perf_counter() - t_start >= duration:
                        return
                    await _one(conn, path, body_for(i, mode), out)
        finally:
            await conn.close()

    await asyncio.gather(*(sender() for _ in range(connections if rate > 0 else concurrency)))
    return {"rows": out, "wall_s": time.perf_counter() - t_start}


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
    ap.add_argument("--connections", type=int, default=32, help="client connections (open "
                    "loop)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    with served(a.url) as url:
        res = asyncio.run(run(url + "api/simulate", a.rate, a.concurrency, a.duration,
                              a.bodies, a.connections if a.rate else a.concurrency))
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
