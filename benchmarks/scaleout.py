"""Scale-out benchmark: executor, shard and aggregation overhead at up to 10^6 patients.

The per-patient engine (``mood.simulate_arm``, tens of ms per patient) is not what this
measures; it swaps in a stand-in batched engine for *control arms* (saline / active placebo):
their mechanism components are zero, so ``mood.scores_batch`` over a whole chunk gives the
same long table as ``simulate_arm`` in one vectorised call. That is the shape of the coming
``ketasim.batch.simulate_arm_batched``, plugged in through the one engine line of
``trial._run_chunk``. Prints numbers (wall time, patients/s, peak RSS); not a test.

    .venv/bin/python benchmarks/scaleout.py --n 1000000 --executor processes --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np
import pandas as pd


def controls_batched(arm, patients, visits_h, hypotheses=None) -> pd.DataFrame:
    """Same long table as ``mood.simulate_arm`` for a control arm, vectorised over patients."""
    from ketasim import mood

    if arm.control is None:
        raise ValueError("the stand-in engine handles control arms only")
    t = mood._grid(visits_h, None)
    zero = np.zeros((len(patients), len(t)))
    out = mood.scores_batch(arm, patients, t, visits_h,
                            {"fast": zero, "proteins": zero, "spines": zero, "ce": zero})
    nv = len(visits_h)
    n = len(patients)
    cols = {"patient": np.repeat([p.index for p in patients], nv),
            "arm": np.full(n * nv, arm.name, dtype=object),
            "time_h": np.tile(visits_h, n)}
    for k, v in out.items():
        if k != "time_h":
            cols[k] = np.asarray(v).reshape(-1)
    cols["baseline_madrs"] = np.repeat([p.baseline_madrs for p in patients], nv)
    return pd.DataFrame(cols)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--executor", default="processes")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=5000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import ketasim.mood
    from ketasim import trial
    from ketasim.scenario import parse_scenario

    ketasim.mood.simulate_arm = controls_batched  # the one engine line of trial._run_chunk
    sc = parse_scenario({
        "title": "controls (scale-out benchmark)",
        "population": {"n": args.n, "seed": 1},
        "arm": [{"name": "saline", "control": "saline"},
                {"name": "midazolam", "control": "active-placebo"}],
        "endpoints": {"at": ["4 h", "24 h", "3 d", "7 d", "14 d"]},
    })
    out = args.out or tempfile.mkdtemp(prefix="ketasim-bench-")
    bar = trial.RichProgress("patients")
    t0 = time.perf_counter()
    res = trial.run_trial(sc, chunk_size=args.chunk_size, executor=args.executor,
                          workers=args.workers, out=out, resume=False, progress=bar)
    t_run = time.perf_counter() - t0
    bar.finish()
    rss_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    s = res.to_dict()
    t_sum = time.perf_counter() - t1
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({
        "n": args.n, "executor": args.executor, "workers": args.workers,
        "chunk_size": args.chunk_size, "run_s": round(t_run, 1),
        "patients_per_s": round(args.n / t_run), "summary_s": round(t_sum, 1),
        "peak_rss_main_after_run_mb": round(rss_run), "peak_rss_main_mb": round(own),
        "peak_rss_largest_worker_mb": round(kids),
        "response_24h": {a: s["arms"][a]["24 h"]["response_rate"] for a in s["arms"]},
    }))


if __name__ == "__main__":
    main()
