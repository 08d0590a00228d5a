"""One-at-a-time kernel (``_course``) vs the lock-step lanes kernel (``_course_lanes``) at
several lane counts, 1 and 2 threads, on the benchmark's virtual patients through
``batch._fast_run``; repetitions interleaved in one process; CPU (``time.process_time``) and
wall time per patient-course, with the load average. Prints numbers (no assertions beyond
bit-equality of the results across kernels).

    python benchmarks/lanes.py --n 200 --reps 5 --lanes 4,8,16 --threads 1,2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import ketasim.batch as B
from ketasim import mechanism
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.pk.fast import generated_module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--lanes", default="4,8,16")
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args()
    lanes = [int(x) for x in a.lanes.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    text = Path(B.__file__).with_name("_batch_kernels.py").read_text(encoding="utf-8")
    mech = Path(mechanism.__file__).read_text(encoding="utf-8")
    default = f"\nLANES = {B._kernels().LANES}\n"
    mods = {L: generated_module("ketasim_batch_kernels", text.replace(default, f"\nLANES = {L}\n"),
                                salt=mech) for L in lanes}

    def use(L: int) -> None:  # L = 0: the one-at-a-time kernel
        B._KERNELS = mods[L or lanes[0]]
        B.KERNEL = "lanes" if L else "course"

    for L in [0, *lanes]:
        for th in threads:
            use(L)
            B._fast_run(arm, pts[:11], v, threads=th)  # compile / load
    ref, res = None, {}
    print("load average at start", os.getloadavg(), flush=True)
    for r in range(a.reps):
        for th in threads:
            for L in [0, *lanes]:
                use(L)
                t, c = time.perf_counter(), time.process_time()
                sc, rr = B._fast_run(arm, pts, v, threads=th)
                w = 1e6 * (time.perf_counter() - t) / a.n
                cp = 1e6 * (time.process_time() - c) / a.n
                if ref is None:
                    ref = (sc["madrs"], rr.stats)
                same = np.array_equal(sc["madrs"], ref[0]) and np.array_equal(rr.stats, ref[1])
                res.setdefault((L, th), []).append((w, cp))
                name = "course" if L == 0 else f"lanes L={L}"
                print(f"rep {r} {name:11s} threads {th}: wall {w:5.0f} cpu {cp:5.0f} us/course"
                      f"  identical {same}  load {os.getloadavg()[0]:.2f}", flush=True)
    print("load average at end", os.getloadavg())
    print(f"{a.n} patients, {a.reps} repetitions, us per patient-course, min / median / max")
    for (L, th), vals in sorted(res.items()):
        w = sorted(x[0] for x in vals)
        c = sorted(x[1] for x in vals)
        name = "course" if L == 0 else f"lanes L={L}"
        print(f"{name:11s} threads {th}: wall {w[0]:.0f} / {w[len(w) // 2]:.0f} / {w[-1]:.0f}"
              f"   cpu {c[0]:.0f} / {c[len(c) // 2]:.0f} / {c[-1]:.0f}")


if __name__ == "__main__":
    main()
