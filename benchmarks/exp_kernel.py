"""Twelfth pass (docs/benchmarks.md): the experimental exponential integrator of
``benchmarks/_exp_etd.py`` on the benchmark's course and virtual patients, through the
unchanged fast path (``batch._fast_run``: the kernel module is swapped for a shim whose run
functions call the ETD kernel with the same prepared arrays).

    python benchmarks/exp_kernel.py accuracy --n 200 [--rtol 1e-4] [--blk2]
    python benchmarks/exp_kernel.py time --n 200 --reps 10 --threads 1 [--blk2]
    python benchmarks/exp_kernel.py where --rtol 1e-4

``accuracy``: step attempts per course and the largest relative MADRS difference from a
tight solution (shipped RODAS4 kernel at rtol 1e-10, atol 1e-12 on every state; cached in
/tmp), for the shipped fast path and the ETD kernel. ``time``: paired, alternating
repetitions (shipped, ETD) of the same ``_fast_run`` call; CPU and wall µs per patient-course
and the per-repetition ratio shipped/ETD.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

import ketasim.batch as B
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.mechanism import STATE_NAMES

sys.path.insert(0, str(Path(__file__).parent))
import _exp_etd as X  # noqa: E402

CFG = {"blk2": False}


def shim() -> types.SimpleNamespace:
    """The kernel module with its four run functions replaced by the ETD kernel."""
    real = B._kernels()
    ns = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real)
                                  if not k.startswith("__")})

    def pick(a):
        nblk = a[10].shape[0]
        ia, ib = nblk + STATE_NAMES.index("mtorc1"), nblk + STATE_NAMES.index("mtor_feedback")
        return (*a[:18], *a[32:36], a[36], a[37], a[38], a[39], CFG["blk2"], ia, ib)

    ns._run_serial = ns._run_serial_lanes = lambda *a: X.etd_run_serial(*pick(a))
    ns._run_batch = lambda *a: X.etd_run_batch(*pick(a))
    ns._run_batch_lanes = lambda ng, *a: X.etd_run_batch(*pick(a))
    return ns


REAL = None


def use(kind: str) -> None:
    global REAL
    if REAL is None:
        B._KERNELS = None
        REAL = B._kernels()
    B._KERNELS = REAL if kind == "shipped" else shim()


def tight(arm, pts, v) -> np.ndarray:
    path = Path(f"/tmp/exp_tight_{len(pts)}.npy")
    if path.exists():
        return np.load(path)
    use("shipped")
    saved = B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR
    B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR = 1e-10, 1e-12, 1.0
    try:
        sc, _ = B._fast_run(arm, pts, v, threads=2)
    finally:
        B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR = saved
    np.save(path, sc["madrs"])
    return sc["madrs"]


def run(kind, arm, pts, v, threads, rtol=None, atol=None):
    use(kind)
    saved = B.FAST_RTOL, B.FAST_ATOL
    if rtol is not None:
        B.FAST_RTOL = rtol
    if atol is not None:
        B.FAST_ATOL = atol
    try:
        sc, res = B._fast_run(arm, pts, v, threads=threads)
    finally:
        B.FAST_RTOL, B.FAST_ATOL = saved
    return sc["madrs"], res.stats


def accuracy(a) -> None:
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    ref = tight(arm, pts, v)
    for kind, rt, at in (("shipped", None, None), ("etd", a.rtol, a.atol)):
        if kind == "shipped" and a.skip_shipped:
            continue
        m, st = run(kind, arm, pts, v, 2, rt, at)
        att = (st[:, 0] + st[:, 1]).mean()
        rel = np.max(np.abs(m - ref) / np.abs(ref))
        ab = np.max(np.abs(m - ref))
        print(f"{kind:8s} rtol {rt or B.FAST_RTOL:g} atol {at or B.FAST_ATOL:g} "
              f"blk2 {CFG['blk2']}: attempts per course {att:.1f} (rejected or cut "
              f"{st[:, 1].mean():.1f}), max rel. MADRS error {rel:.2e}, "
              f"max abs {ab:.2e} points", flush=True)


def timing(a) -> None:
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    for kind in ("shipped", "etd"):
        extra = (a.rtol, a.atol) if kind == "etd" else ()
        run(kind, arm, pts[:16], v, a.threads, *extra)
    print("load average at start", os.getloadavg(), flush=True)
    res = {"shipped": [], "etd": []}
    for _ in range(a.reps):
        for kind in ("shipped", "etd"):
            c, w = time.process_time(), time.perf_counter()
            run(kind, arm, pts, v, a.threads, *((a.rtol, a.atol) if kind == "etd" else ()))
            res[kind].append((1e6 * (time.process_time() - c) / a.n,
                              1e6 * (time.perf_counter() - w) / a.n))
    for kind, r in res.items():
        x = np.array(r)
        print(f"{kind:8s} CPU µs/course median {np.median(x[:, 0]):.0f} (min {x[:, 0].min():.0f})"
              f"; wall median {np.median(x[:, 1]):.0f} (min {x[:, 1].min():.0f})")
    s, e = np.array(res["shipped"]), np.array(res["etd"])
    for j, nm in ((0, "CPU"), (1, "wall")):
        q = s[:, j] / e[:, j]
        print(f"shipped/ETD {nm} per repetition (paired): median {np.median(q):.3f}, "
              f"quartiles {np.percentile(q, 25):.3f}–{np.percentile(q, 75):.3f}, "
              f"min {q.min():.3f}, max {q.max():.3f}")
    print("load average at end", os.getloadavg())


def where(a) -> None:
    """Attempts per dose interval of bench patient 0 by time since the infusion started."""
    arm, v, pts = bench_arm(), visits_h(), bench_patients(1, 0)
    orig = B.simulate_batch
    edges = [0.0, 40 / 60, 2.0, 12.0, 84.0, 1e9]
    for kind, rt, at in (("shipped", None, None), ("etd", a.rtol, a.atol)):
        tr = np.zeros((200000, 4))
        B.simulate_batch = lambda *x, tr=tr, **kw: orig(*x, **kw, trace=tr)
        try:
            run(kind, arm, pts, v, 1, rt, at)
        finally:
            B.simulate_batch = orig
        n = int(np.count_nonzero(tr[:, 1]))
        tau = np.mod(tr[:n, 0], 84.0)
        cnt, _ = np.histogram(tau, edges)
        med = [np.median(tr[:n, 1][(tau >= lo) & (tau < hi)]) * 60
               if np.any((tau >= lo) & (tau < hi)) else np.nan
               for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        print(f"{kind:8s} {n} attempts; per dose interval by τ = time since infusion start "
              "(0–40 min, 40 min–2 h, 2–12 h, 12–84 h): "
              + ", ".join(f"{c / 8:.1f} (median step {m:.3g} min)"
                          for c, m in zip(cnt[:4], med[:4], strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("accuracy", "time", "where"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rtol", type=float, default=None)
    ap.add_argument("--atol", type=float, default=None)
    ap.add_argument("--skip-shipped", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--blk2", action="store_true")
    a = ap.parse_args()
    CFG["blk2"] = a.blk2
    {"accuracy": accuracy, "time": timing, "where": where}[a.mode](a)


if __name__ == "__main__":
    main()
