"""The trial's choice of compiled kernel (``run_trial(kernel=...)``, ``ketasim trial
--kernel``, ``ketasim bench --kernel``): one kernel per trial, recorded, part of the resume
identity, and the generated kernel gives the same per-patient results with any executor."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ketasim import trial as T
from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.scenario import parse_scenario

SMALL = {
    "title": "kernel test trial",
    "population": {"disorder": "trd", "n": 12, "seed": 3},
    "arm": [
        {"name": "ketamine", "drug": "ketamine", "route": "iv-infusion", "dose": "0.5 mg/kg",
         "duration": "40 min", "ratio": 1},
        {"name": "midazolam", "control": "active-placebo", "ratio": 1},
    ],
    "endpoints": {"scale": "madrs", "at": ["40 min", "24 h", "7 d"]},
}


@pytest.fixture(scope="module")
def small():
    return parse_scenario(SMALL)


@pytest.fixture(scope="module")
def lanes(small):
    return T.run_trial(small, chunk_size=5, executor="serial", kernel="lanes")


@pytest.fixture(scope="module")
def codegen(small):
    return T.run_trial(small, chunk_size=5, executor="serial", kernel="codegen")


def test_auto_picks_codegen_for_large_trials_only():
    assert T.trial_kernel("auto", T.TRIAL_CODEGEN_MIN - 1) == "lanes"
    assert T.trial_kernel("auto", T.TRIAL_CODEGEN_MIN) == "codegen"
    assert T.trial_kernel("lanes", 10**6) == "lanes"
    assert T.trial_kernel("codegen", 2) == "codegen"
    with pytest.raises(KetasimError, match="kernel"):
        T.trial_kernel("fastest", 10)


def test_kernel_is_recorded_and_small_trials_keep_lanes(small, lanes, codegen):
    default = T.run_trial(small, chunk_size=5, executor="serial")
    assert default.meta["kernel"] == "lanes"  # auto below TRIAL_CODEGEN_MIN
    pd.testing.assert_frame_equal(default.data, lanes.data, check_exact=True)
    assert lanes.meta["kernel"] == "lanes" and codegen.meta["kernel"] == "codegen"


def test_codegen_trial_agrees_with_lanes(lanes, codegen):
    """Every score of every patient and visit within 1e-5 points (the two kernels take the
    same steps up to rounding), and the same responders."""
    a, b = lanes.data, codegen.data
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    num = [c for c in a.columns if pd.api.types.is_float_dtype(a[c])]
    assert num
    np.testing.assert_allclose(b[num].to_numpy(), a[num].to_numpy(), rtol=0, atol=1e-5)
    for c in a.columns:
        if c not in num:
            assert a[c].equals(b[c]), c


def test_codegen_trial_is_identical_serially_and_with_two_processes(small, codegen):
    par = T.run_trial(small, chunk_size=3, executor="processes", workers=2, kernel="codegen")
    assert par.meta["kernel"] == "codegen" and par.meta["kernel_setup_s"] >= 0
    pd.testing.assert_frame_equal(par.data, codegen.data, check_exact=True)
    assert par.to_dict()["arms"] == codegen.to_dict()["arms"]


def test_resume_does_not_mix_kernels(small, tmp_path):
    """Shards written with one kernel are not reused by a rerun with the other: the kernel is
    part of the run's identity (lanes runs keep the identity they had before)."""
    out = str(tmp_path / "run")
    T.run_trial(small, chunk_size=6, executor="serial", out=out, kernel="lanes")
    again = T.run_trial(small, chunk_size=6, executor="serial", out=out, kernel="lanes")
    assert again.meta["chunks"]["resumed"] == again.meta["chunks"]["total"]
    other = T.run_trial(small, chunk_size=6, executor="serial", out=out, kernel="codegen")
    assert other.meta["chunks"]["resumed"] == 0
    with open(f"{out}/manifest.json", encoding="utf-8") as fh:
        assert json.load(fh)["kernel"] == "codegen"


def test_cli_kernel_option(capsys, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('title = "k"\n[population]\nn = 4\nseed = 1\n[[arm]]\nname = "k"\n'
                    'drug = "ketamine"\nroute = "iv-infusion"\ndose = "0.5 mg/kg"\n'
                    'duration = "40 min"\n[endpoints]\nat = ["24 h"]\n', encoding="utf-8")
    assert main(["trial", str(path), "--kernel", "lanes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["kernel"] == "lanes"
    assert main(["trial", str(path), "--kernel", "warp", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kernel" in err[0] and "Traceback" not in err[0], err
    assert main(["bench", "--n", "2", "--kernel", "warp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kernel" in err[0], err


@pytest.mark.parametrize("name", ["transform2", "fava2020"])
def test_codegen_agrees_with_lanes_on_other_arms(name):
    """Beyond the bench course: intranasal esketamine and four IV doses, 40 patients each,
    MADRS within the fast path's tolerance (measured ≤ 8.4e-5 points on every shipped arm,
    benchmarks/codegen_arms.py)."""
    from ketasim import batch
    from ketasim.population import sample_arm

    sc = T.resolve_scenario(name)
    _, v = T.visit_schedule(sc)
    n = 0
    for i, arm in enumerate(sc.arms):
        pts = sample_arm(sc.population, i, 40)
        a, ra = batch._fast_run(arm, pts, v, kernel="lanes")
        b, rb = batch._fast_run(arm, pts, v, kernel="codegen")
        if ra is None:
            continue
        n += 1
        assert rb.metadata["kernel"] == "codegen"
        np.testing.assert_allclose(b["madrs"], a["madrs"], rtol=1e-4, atol=2e-4)
    assert n >= 1
