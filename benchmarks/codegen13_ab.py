"""Thirteenth pass, stage 2: the batched engine with the generated vector step
(``kernel="codegen"``) against the shipped lanes kernel, on the benchmark's virtual patients
through ``batch._fast_run`` (the path ``ketasim bench`` times).

    python benchmarks/codegen13_ab.py ab --n 200 --reps 15 --threads 1
    python benchmarks/codegen13_ab.py accuracy --n 200
    python benchmarks/codegen13_ab.py single --n 20 --reps 7

``ab``: alternating repetitions (lanes, codegen, lanes, …), CPU (and wall) µs per course, the
paired codegen/lanes CPU ratio per repetition (median, quartiles). ``accuracy``: MADRS at the
visits of both kernels against a tight solution (the lanes kernel at rtol 1e-10, atol 1e-12
on every state), attempts per course. ``single``: one patient per call, alternating.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import ketasim.batch as B
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h


def run(kernel, arm, pts, v, threads):
    B.KERNEL = kernel
    try:
        return B._fast_run(arm, pts, v, threads=threads)
    finally:
        B.KERNEL = "lanes"


def ab(a) -> None:
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    kinds = ("lanes", "codegen")
    for k in kinds:
        t0 = time.perf_counter()
        _, res = run(k, arm, pts[:16], v, a.threads)
        print(f"{k}: first call {time.perf_counter() - t0:.1f} s "
              f"(kernel used: {res.metadata['kernel']})", flush=True)
    print("load average at start", os.getloadavg(), flush=True)
    r = {k: [] for k in kinds}
    out = {}
    for _ in range(a.reps):
        for k in kinds:
            c, w = time.process_time(), time.perf_counter()
            sc, res = run(k, arm, pts, v, a.threads)
            r[k].append((1e6 * (time.process_time() - c) / a.n,
                         1e6 * (time.perf_counter() - w) / a.n))
            out[k] = (sc["madrs"], res.stats)
    for k in kinds:
        x = np.array(r[k])
        st = out[k][1]
        print(f"{k}: CPU µs per course median {np.median(x[:, 0]):.0f} (min {x[:, 0].min():.0f}),"
              f" wall median {np.median(x[:, 1]):.0f} (min {x[:, 1].min():.0f}); attempts per "
              f"course {np.mean(st[:, 0] + st[:, 1]):.2f}")
    for j, nm in ((0, "CPU"), (1, "wall")):
        q = np.array(r["codegen"])[:, j] / np.array(r["lanes"])[:, j]
        print(f"codegen/lanes {nm} per repetition (paired, alternating, {a.reps} reps): median "
              f"{np.median(q):.3f}, quartiles {np.percentile(q, 25):.3f}–"
              f"{np.percentile(q, 75):.3f} (lanes/codegen {1 / np.median(q):.2f}×)")
    d = np.abs(out["codegen"][0] - out["lanes"][0]) / np.abs(out["lanes"][0])
    print(f"MADRS codegen vs lanes: max rel difference {d.max():.2e}")
    print("load average at end", os.getloadavg())


def accuracy(a) -> None:
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    saved = B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR, B.FAST_STATE_ATOL_FACTOR
    B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR = 1e-10, 1e-12, 1.0
    B.FAST_STATE_ATOL_FACTOR = {}
    try:
        ref, _ = run("lanes", arm, pts, v, a.threads)
    finally:
        B.FAST_RTOL, B.FAST_ATOL, B.FAST_BLOCK_ATOL_FACTOR, B.FAST_STATE_ATOL_FACTOR = saved
    ref = ref["madrs"]
    for k in ("lanes", "codegen"):
        sc, res = run(k, arm, pts, v, a.threads)
        m = sc["madrs"]
        rel = np.abs(m - ref) / np.abs(ref)
        st = res.stats
        print(f"{k} ({res.metadata['kernel']}): attempts per course "
              f"{np.mean(st[:, 0] + st[:, 1]):.2f} (rejected or cut {np.mean(st[:, 1]):.2f}); "
              f"MADRS vs tight: max rel {rel.max():.2e}, max abs {np.abs(m - ref).max():.2e} "
              "points")


def single(a) -> None:
    """One patient per call (the web app's and ``ketasim simulate``'s case): the lanes
    setting runs the one-at-a-time kernel there, codegen one busy lane of 8."""
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    kinds = ("lanes", "codegen")
    for k in kinds:
        run(k, arm, pts[:1], v, 1)
    r = {k: [] for k in kinds}
    used = {}
    for _ in range(a.reps):
        for k in kinds:
            c = time.process_time()
            for p in pts:
                _, res = run(k, arm, [p], v, 1)
            r[k].append(1e6 * (time.process_time() - c) / a.n)
            used[k] = res.metadata["kernel"]
    for k in kinds:
        print(f"{k} ({used[k]}): CPU µs per one-patient call, median {np.median(r[k]):.0f} "
              f"(min {min(r[k]):.0f}), incl. Python set-up")
    q = np.array(r["codegen"]) / np.array(r["lanes"])
    print(f"codegen/lanes paired median {np.median(q):.3f}, quartiles {np.percentile(q, 25):.3f}"
          f"–{np.percentile(q, 75):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("ab", "accuracy", "single"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    {"ab": ab, "accuracy": accuracy, "single": single}[a.what](a)


if __name__ == "__main__":
    main()
