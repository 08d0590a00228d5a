"""Bit-identity of the batched kernels across a change of their source: every kernel call's
raw outputs (states ``ys``, PK states ``xs``, peaks, step statistics, trace) on the bench
course, the course of ``benchmarks/course28.toml`` and shipped scenarios, with
``kernel="lanes"`` and ``kernel="codegen"``, saved by one checkout and compared to the bit
(``np.array_equal``) by another.

    PYTHONPATH=<old checkout>/src python benchmarks/driver_identity.py save /tmp/old.npz
    PYTHONPATH=src python benchmarks/driver_identity.py check /tmp/old.npz

(Use a private ``KETASIM_CACHE_DIR`` / ``NUMBA_CACHE_DIR`` per checkout.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ketasim import _codegen, batch
from ketasim.bench_sbml import bench_arm, bench_patients, visits_h
from ketasim.mechanism import Hypotheses
from ketasim.scenario import load_scenario
from ketasim.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("fava2020", "transform2", "wilkinson_suicidality")
ENTRIES = ("_run_serial_lanes", "_run_batch_lanes", "_run_serial", "_run_batch",
           "_run_serial_cg", "_run_batch_cg")


class _Rec:
    """A kernel module whose entry points record their output arrays after each call."""

    def __init__(self, mod, log):
        self._mod, self._log = mod, log

    def __getattr__(self, a):
        f = getattr(self._mod, a)
        if a not in ENTRIES:
            return f

        def call(*args):
            r = f(*args)
            out = args[-9:-4]  # ys xs peak stats trace
            self._log.append((a, [np.array(x, copy=True) for x in out]))
            return r

        return call


def runs(n: int):
    """(label, thunk) per configuration; each thunk runs the fast path once."""
    arm, v = bench_arm(), visits_h()
    pts = bench_patients(n, 0)
    yield "bench t1", lambda: batch._fast_run(arm, pts, v, threads=1)
    yield "bench t2", lambda: batch._fast_run(arm, pts, v, threads=2)
    yield "bench 1 patient", lambda: batch._fast_run(arm, pts[:1], v, threads=1)
    yield "bench only:a", lambda: batch._fast_run(arm, pts[:24], v, threads=1,
                                                   hypotheses=Hypotheses.parse("only:a"))
    for name in ("course28", *SCENARIOS):
        path = ROOT / "benchmarks" / "course28.toml" if name == "course28" else \
            ROOT / "src" / "ketasim" / "scenarios" / f"{name}.toml"
        sc = load_scenario(str(path))
        sc = sc.model_copy(update={"population": sc.population.model_copy(
            update={"n": n if name == "course28" else max(n // 2, 10)})})
        yield name, lambda sc=sc: run_trial(sc, kernel=batch.KERNEL, trajectories=0)


def collect(n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    real_cg = _codegen.codegen_kernels
    for kernel in ("lanes", "codegen"):
        log: list = []
        batch._KERNELS = _Rec(batch._kernels(), log)
        _codegen.codegen_kernels = lambda args, log=log: (
            None if (m := real_cg(args)) is None else _Rec(m, log))
        batch.KERNEL = kernel
        try:
            for label, thunk in runs(n):
                k0 = len(log)
                thunk()
                for j, (entry, arrs) in enumerate(log[k0:]):
                    for nm, x in zip(("ys", "xs", "peak", "stats", "trace"), arrs, strict=True):
                        out[f"{kernel}|{label}|{j}|{entry}|{nm}"] = x
                print(f"{kernel:8s} {label:22s} {len(log) - k0} kernel calls "
                      f"({', '.join(sorted({e for e, _ in log[k0:]}))})", flush=True)
        finally:
            batch._KERNELS = batch._KERNELS._mod
            _codegen.codegen_kernels = real_cg
            batch.KERNEL = "lanes"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("save", "check"))
    ap.add_argument("file")
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args()
    out = collect(a.n)
    if a.mode == "save":
        np.savez_compressed(a.file, **out)
        print(f"saved {len(out)} arrays to {a.file}")
        return
    ref = dict(np.load(a.file))
    bad = [k for k in ref if k not in out or not np.array_equal(ref[k], out[k], equal_nan=True)]
    extra = [k for k in out if k not in ref]
    for kern in ("lanes", "codegen"):
        ks = [k for k in ref if k.startswith(kern + "|")]
        nb = sum(k.startswith(kern + "|") for k in bad)
        cells = sum(ref[k].size for k in ks)
        print(f"{kern}: {len(ks) - nb}/{len(ks)} arrays ({cells} values) bit-identical")
    for k in bad[:20]:
        print("DIFFERS:", k)
    if extra:
        print("not in the saved file:", extra[:10])
    sys.exit(1 if bad or extra else 0)


if __name__ == "__main__":
    main()
