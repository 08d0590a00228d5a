"""Run every tutorial on small n in one process and report the time each took.

``make tutorials`` runs this with ``KETASIM_TUTORIAL_N`` small; every tutorial writes
``build/tutorials/<name>.png`` and ``<name>.md``. Exits 1 if a tutorial fails, does not write
its figure, or all of them together take longer than ``KETASIM_TUTORIAL_BUDGET_S`` (default
120 s).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUTORIALS = ("single_infusion", "repeated_infusions", "esketamine", "rodent", "hypotheses")


def main() -> int:
    """Run all tutorials; print and save their timings; return the exit status."""
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("KETASIM_TUTORIAL_N", "24")
    from _common import OUT

    budget = float(os.environ.get("KETASIM_TUTORIAL_BUDGET_S", "120"))
    timings: dict[str, float] = {}
    failed: list[str] = []
    t_all = time.perf_counter()
    for name in TUTORIALS:
        png = OUT / f"{name}.png"
        png.unlink(missing_ok=True)
        t0 = time.perf_counter()
        print(f"=== tutorial {name} (n = {os.environ['KETASIM_TUTORIAL_N']})", flush=True)
        try:
            importlib.import_module(name).main()
        except Exception:  # report every failing tutorial, not just the first
            traceback.print_exc()
            failed.append(name)
        timings[name] = round(time.perf_counter() - t0, 2)
        if name not in failed and not png.is_file():
            print(f"tutorial {name} wrote no figure {png}", file=sys.stderr)
            failed.append(name)
    total = round(time.perf_counter() - t_all, 2)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "timings.json").write_text(json.dumps({"seconds": timings, "total_s": total,
                                                  "n": int(os.environ["KETASIM_TUTORIAL_N"])},
                                                 indent=1))
    for name, s in timings.items():
        print(f"{name:20s} {s:7.1f} s")
    print(f"{'total':20s} {total:7.1f} s (budget {budget:g} s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if total > budget:
        print(f"tutorials took {total:.0f} s, over the {budget:g} s budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
