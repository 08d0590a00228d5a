#!/usr/bin/env python
"""Rise in mouse synaptic strength at 24 h (ketamine 10 mg/kg i.p.) with each mechanism branch
alone and with the default combination, in wild type and within the eEF2K knockout (its own
vehicle arm as baseline); see docs/limitations.md, genetic interventions.

Usage: ``.venv/bin/python scripts/branch_attribution.py``
"""

import numpy as np

from ketasim import experiments as ex
from ketasim.mechanism import Hypotheses

T = np.array([0.5, 1.0, 2.0, 4.0, 24.0])


def rise(hyp, intervention=None) -> float:
    """Synaptic strength at 24 h, ketamine / vehicle − 1, in one genotype."""
    iv = [intervention] if intervention else None
    v = ex._run([], ex.MOUSE, T, iv, hypotheses=hyp).at("synaptic_strength", 24.0)
    k = ex._run(ex._mouse_ketamine(), ex.MOUSE, T, iv, hypotheses=hyp).at("synaptic_strength",
                                                                          24.0)
    return k / v - 1.0


for name in ("default", "only:a", "only:b", "only:c", "only:d", "only:e", "only:f"):
    hyp = None if name == "default" else Hypotheses.parse(name)
    wt, ko = rise(hyp), rise(hyp, "eef2k-knockout")
    removed = 1.0 - ko / wt if wt else float("nan")
    print(f"{name:8s} wild type {wt:+.4f}  eEF2K knockout {ko:+.4f}  removed {removed:.2f}")
