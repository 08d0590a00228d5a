"""Pool the parameter-recovery coverage of several `recovery_study.py --json` files.

Counts, per parameter, the replicates whose 95% interval (`ci95`, profile likelihood by
default) contains the truth, and the same for the IIV CV interval (`iiv_cv_ci95`), per file
and pooled, with Clopper–Pearson 95% intervals of the coverage. Prints numbers; fits nothing.

    .venv/bin/python scripts/coverage_pool.py docs/fit-recovery.json docs/fit-recovery-seed*.json
"""

from __future__ import annotations

import argparse
import json

from scipy.stats import beta


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact binomial 95% interval of k successes in n."""
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    pooled: dict[str, list[int]] = {}
    for f in args.files:
        d = json.load(open(f))
        truth, tcv = d["truth"], d["true_cv"]
        cells = [f"seed {d['seed']}"]
        for p, t in truth.items():
            k = kcv = ncv = 0
            for r in d["replicates"]:
                e = r["estimates"][p]
                lo, hi = e["ci95"]
                k += lo <= t <= hi
                clo, chi = e.get("iiv_cv_ci95") or (None, None)
                if clo is not None:
                    cv = tcv[p] if isinstance(tcv, dict) else tcv
                    kcv += clo <= cv <= chi
                    ncv += 1
            n = len(d["replicates"])
            acc = pooled.setdefault(p, [0, 0, 0, 0])
            acc[0] += k
            acc[1] += n
            acc[2] += kcv
            acc[3] += ncv
            cells.append(f"{p} {k}/{n}")
        print("  ".join(cells))
    for p, (k, n, kcv, ncv) in pooled.items():
        lo, hi = clopper_pearson(k, n)
        line = (f"pooled {p}: {k}/{n} = {100 * k / n:.1f}% "
                f"(Clopper-Pearson {100 * lo:.1f}-{100 * hi:.1f}%)")
        if ncv:
            clo, chi = clopper_pearson(kcv, ncv)
            line += (f"; IIV CV interval {kcv}/{ncv} = {100 * kcv / ncv:.1f}% "
                     f"({100 * clo:.1f}-{100 * chi:.1f}%)")
        print(line)


if __name__ == "__main__":
    main()
