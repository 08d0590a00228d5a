#!/usr/bin/env python
"""The SciPy reference through two SciPy interfaces: ``odeint`` (shipped in
``ketasim.engine.simulate``) and ``solve_ivp(method="LSODA")``, with the same compiled
right-hand side, tolerances and dose breakpoints, on the ``ketasim bench`` course. Prints ms per
patient-course for each (alternating, two rounds) and the largest relative MADRS difference.

Usage: ``.venv/bin/python benchmarks/scipy_interfaces.py [N]`` (default 3 patients).
"""

import sys
import time

import numpy as np
from scipy.integrate import odeint, solve_ivp

import ketasim.engine as eng
from ketasim import bench_sbml as bs


def odeint_ivp(fun, y0, t_eval, tfirst=True, rtol=None, atol=None, args=(), full_output=True,
               mxstep=None):
    """``odeint``'s call as used by the engine, answered by ``solve_ivp(method="LSODA")``."""
    r = solve_ivp(fun, (t_eval[0], t_eval[-1]), y0, method="LSODA", t_eval=t_eval, rtol=rtol,
                  atol=atol, args=args)
    return r.y.T, {"message": "Integration successful." if r.success else r.message}


def main(n: int = 3) -> None:
    arm, vis = bs.bench_arm(), bs.visits_h()
    pts = bs.bench_patients(n)
    bs.scipy_madrs(arm, pts[:1], vis)  # warm-up (numba compile)
    out = {}
    for name, f in (("odeint", odeint), ("solve_ivp", odeint_ivp)) * 2:
        eng.odeint = f
        t0 = time.perf_counter()
        out[name] = bs.scipy_madrs(arm, pts, vis)
        ms = (time.perf_counter() - t0) / n * 1e3
        print(f"{name:9s} {ms:7.1f} ms per patient-course", flush=True)
    eng.odeint = odeint
    a, b = out["odeint"], out["solve_ivp"]
    print("max rel MADRS diff", float(np.max(np.abs(a - b) / np.maximum(np.abs(a), np.abs(b)))))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
