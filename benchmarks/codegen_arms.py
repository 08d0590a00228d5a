"""The generated kernel against the lanes kernel on every drug arm of the shipped scenarios
(40 patients each, the trial's own patients and visits): largest MADRS difference in points
and relative (floor 1e-3 points). A benchmark script: it prints numbers.

    .venv/bin/python benchmarks/codegen_arms.py
"""

import time

import numpy as np

from ketasim import batch
from ketasim.population import sample_arm
from ketasim.trial import example_names, resolve_scenario, visit_schedule


def main() -> None:
    worst = 0.0
    for name in example_names():
        sc = resolve_scenario(name)
        _, v = visit_schedule(sc)
        for i, arm in enumerate(sc.arms):
            pts = sample_arm(sc.population, i, 40)
            t0 = time.perf_counter()
            a, ra = batch._fast_run(arm, pts, v, kernel="lanes")
            b, rb = batch._fast_run(arm, pts, v, kernel="codegen")
            if ra is None:
                continue
            d = np.abs(a["madrs"] - b["madrs"])
            rel = (d / np.maximum(np.maximum(abs(a["madrs"]), abs(b["madrs"])), 1e-3)).max()
            worst = max(worst, d.max())
            print(f"{name:24s} {arm.name:20s} ran={rb.metadata['kernel']:8s} "
                  f"max|dMADRS| {d.max():.2e} rel {rel:.2e} "
                  f"({time.perf_counter() - t0:.1f} s)")
    print(f"largest MADRS difference: {worst:.2e} points")


if __name__ == "__main__":
    main()
