"""A/B of the batched engine's kernel file: the version at a git revision against the working
tree, both loaded side by side in one process (numba-cached under names that hash their
text), alternating repetitions on the benchmark's virtual patients through
``batch._fast_run``; prints CPU (and wall) µs per patient-course, min and median, and whether
the MADRS results are identical. Prints numbers (no assertions).

    python benchmarks/kernel_ab.py --rev HEAD~3 --n 200 --reps 7 --threads 1

Only ``_batch_kernels.py`` is swapped: both versions use the working tree's
``ketasim.mechanism`` (the right-hand sides and the Jacobian).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np

import ketasim.batch as B
from ketasim import mechanism
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.pk.fast import generated_module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", required=True, help="git revision of the 'old' kernel file")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    here = Path(B.__file__).with_name("_batch_kernels.py")
    root = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"],
                                        cwd=here.parent, text=True).strip())
    old = subprocess.check_output(["git", "show", f"{a.rev}:{here.relative_to(root)}"],
                                  cwd=root, text=True)
    mech = Path(mechanism.__file__).read_text(encoding="utf-8")
    mods = {"old": generated_module("ketasim_batch_kernels", old, salt=mech),
            "new": generated_module("ketasim_batch_kernels", here.read_text(encoding="utf-8"),
                                    salt=mech)}
    arm, v, pts = bench_arm(), visits_h(), bench_patients(a.n, 0)
    for m in mods.values():
        B._KERNELS = m
        B._fast_run(arm, pts[:16], v, threads=a.threads)  # compile / load
    print("load average at start", os.getloadavg(), flush=True)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in mods}
    out = {}
    for _ in range(a.reps):
        for k, m in mods.items():
            B._KERNELS = m
            c, w = time.process_time(), time.perf_counter()
            sc, _ = B._fast_run(arm, pts, v, threads=a.threads)
            res[k].append((1e6 * (time.process_time() - c) / a.n,
                           1e6 * (time.perf_counter() - w) / a.n))
            out[k] = sc["madrs"]
    for k, r in res.items():
        x = np.array(r)
        print(f"{k} ({a.rev if k == 'old' else 'working tree'}): CPU µs per course min "
              f"{x[:, 0].min():.0f} median {np.median(x[:, 0]):.0f}; wall min {x[:, 1].min():.0f} "
              f"median {np.median(x[:, 1]):.0f}; CPU 10th percentile "
              f"{np.percentile(x[:, 0], 10):.0f}")
    ratio = np.array(res["new"])[:, 0] / np.array(res["old"])[:, 0]
    print(f"new/old CPU per repetition (paired, alternating): median {np.median(ratio):.3f}, "
          f"quartiles {np.percentile(ratio, 25):.3f}–{np.percentile(ratio, 75):.3f}")
    print("MADRS identical:", bool(np.array_equal(out["old"], out["new"])))
    print("load average at end", os.getloadavg())


if __name__ == "__main__":
    main()
