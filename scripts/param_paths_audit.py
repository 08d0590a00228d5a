"""Parameter-perturbation audit of the three computational paths: a table.

Every parameter of the brain, receptor, signalling, interventions, hypotheses and clinic cards
(and each hypothesis weight set on an arm) is perturbed (×1.2; +0.2 from 0; −0.2 for fractions
near 1) on short courses (one 0.5 mg/kg IV infusion with visits to day 7, a four-dose series to
day 14, esketamine 56 mg, noisy patients, midazolam and saline controls, each intervention
switch), and the reference (engine/SciPy), fast (batched, numba) and SBML (libRoadRunner) paths
are compared. See tests/_param_paths.py for the rules; tests/test_param_paths.py runs the same
audit as a test.

Usage: PYTHONPATH=src python scripts/param_paths_audit.py [--card clinic] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _param_paths as P  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--card", action="append", help="only these cards")
    ap.add_argument("--only", nargs="*", help="only these parameters")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [(c, n) for c, n in P.all_parameters()
            if (not args.card or c in args.card) and (not args.only or n in args.only)]
    results = [P.audit(c, n) for c, n in rows]
    if not args.card and not args.only:
        results += [P.hypothesis_arm_audit(h) for h in "abcdef"]
    dead = [r for r in results if r.dead]
    bad = [r for r in results if r.mismatch]
    print(f"{'card':<15} {'parameter':<26} {'value':>10} {'->':>10}  "
          f"{'ref':>5} {'fast':>5} {'sbml':>5}  moves (fast path; sbml: MADRS and states only)")
    for r in results:
        flag = "DEAD" if r.dead else ("MISMATCH" if r.mismatch else "")
        outs = sorted(r.outputs("fast") | r.outputs("ref"))
        print(f"{r.card:<15} {r.name:<26} {r.value:>10.4g} {r.new:>10.4g}  "
              f"{len(r.outputs('ref')):>5} {len(r.outputs('fast')):>5} "
              f"{len(r.outputs('sbml')):>5}  {flag:<8} {','.join(outs)[:90]}")
        for d in r.disagree:
            print(f"    paths disagree: case {d[0]} {d[1]} {d[2]} {d[3]:.3g}")
        for o in r.one_sided:
            print(f"    only one path moves: case {o[0]} {o[1]} (moved in {o[2]})")
    print(f"\n{len(results)} perturbations, {len(dead)} dead "
          f"({', '.join(r.name for r in dead)}), {len(bad)} path mismatches "
          f"({', '.join(r.name for r in bad)}); {time.perf_counter() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
