"""Paired A/B of the batched kernels against their source at an older commit, in one process:
the lanes kernel (``_run_serial_lanes``) and the codegen kernel (``_run_serial_cg``) of this
checkout and of ``--rev`` (loaded from ``git show REV:…`` as modules of their own; the old
codegen driver is appended to the same generated step), on the same captured arguments of
the bench course (``ketasim bench``'s patients), alternating old/new/new/old.

    python benchmarks/driver_ab.py --rev e417791 --n 200 --reps 30

Prints the first-call time of each (compile, or load from numba's cache), checks that old
and new outputs are equal to the bit, and per kernel the paired new/old CPU-time ratio per
repetition (median, quartiles).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from ketasim import _codegen as G
from ketasim import batch, mechanism
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.pk.fast import generated_module

ROOT = Path(__file__).resolve().parents[1]


def _show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="e417791")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args()
    args = G.captured_args(bench_arm(), bench_patients(a.n, 0), visits_h())
    mech = Path(mechanism.__file__).read_text(encoding="utf-8")
    old_k = generated_module(f"ab_old_kernels_{a.rev}",
                             _show(a.rev, "src/ketasim/_batch_kernels.py"), salt=mech)
    step = G.emit_ir(G.config_of(dict(zip(G.ARG_NAMES, args, strict=True))), "fd",
                     name="step8")
    old_cg = generated_module(f"ab_old_codegen_{a.rev}",
                              step + "\n\n" + _show(a.rev, "src/ketasim/_codegen_driver.py"),
                              salt=mech + Path(batch.__file__).with_name(
                                  "_batch_kernels.py").read_text(encoding="utf-8"))
    new_cg = G.codegen_kernels(args)
    fns = {("lanes", "old"): old_k._run_serial_lanes,
           ("lanes", "new"): batch._kernels()._run_serial_lanes,
           ("codegen", "old"): old_cg._run_serial_cg,
           ("codegen", "new"): new_cg._run_serial_cg}
    outs = {}
    for key, f in fns.items():
        t0 = time.perf_counter()
        f(*args)
        outs[key] = [np.array(x, copy=True) for x in args[33:37]]
        print(f"{key[0]:8s} {key[1]}: first call {time.perf_counter() - t0:.1f} s", flush=True)
    for kern in ("lanes", "codegen"):
        same = all(np.array_equal(x, y) for x, y in
                   zip(outs[(kern, "old")], outs[(kern, "new")], strict=True))
        print(f"{kern}: new outputs equal the old to the bit: {same}")
    print("load average at start", os.getloadavg(), flush=True)
    cpu = {k: [] for k in fns}
    for r in range(a.reps):
        order = ("old", "new", "new", "old") if r % 2 == 0 else ("new", "old", "old", "new")
        for kern in ("lanes", "codegen"):
            for who in order:
                c = time.process_time()
                fns[(kern, who)](*args)
                cpu[(kern, who)].append(time.process_time() - c)
    print("load average at end", os.getloadavg())
    for kern in ("lanes", "codegen"):
        o = np.array(cpu[(kern, "old")]).reshape(-1, 2).sum(1)
        n = np.array(cpu[(kern, "new")]).reshape(-1, 2).sum(1)
        q = n / o
        print(f"{kern}: CPU µs per course old {1e6 * np.median(o) / 2 / a.n:.0f}, new "
              f"{1e6 * np.median(n) / 2 / a.n:.0f}; new/old per repetition (paired, {a.reps} "
              f"reps): median {np.median(q):.3f}, quartiles {np.percentile(q, 25):.3f}–"
              f"{np.percentile(q, 75):.3f}")


if __name__ == "__main__":
    main()
