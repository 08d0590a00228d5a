"""Scale-out of virtual trials: identical per-patient results serially, with processes and on
a dask cluster; Parquet shards, manifest and resume; retries after a crashed or killed worker;
progress bar and the final throughput line."""

from __future__ import annotations

import io
import json
import os
import re
import signal

import numpy as np
import pandas as pd
import pytest

from ketasim import trial
from ketasim.cli import main
from ketasim.errors import KetasimError
from ketasim.scenario import parse_scenario
from ketasim.shards import MANIFEST
from ketasim.trial import RichProgress, run_trial, with_overrides

SMALL = {
    "title": "scale-out test",
    "population": {"disorder": "trd", "n": 12, "seed": 11},
    "arm": [
        {"name": "ketamine", "drug": "ketamine", "route": "iv-infusion", "dose": "0.5 mg/kg",
         "duration": "40 min"},
        {"name": "saline", "control": "saline"},
    ],
    "endpoints": {"scale": "madrs", "at": ["4 h", "24 h", "7 d"]},
}
TOML = ('title = "scale-out cli"\n[population]\nn = 8\nseed = 2\n'
        '[[arm]]\nname = "ketamine"\ndrug = "ketamine"\nroute = "iv-infusion"\n'
        'dose = "0.5 mg/kg"\nduration = "40 min"\n'
        '[[arm]]\nname = "saline"\ncontrol = "saline"\n'
        '[endpoints]\nat = ["4 h", "24 h"]\n')
SUMMARY_KEYS = ("arms", "differences", "arm_summary", "onset", "headline")
FINAL = re.compile(r"^[\d,]+ patients in [\d.]+ s \([\d,.]+ patients/s\)")


@pytest.fixture(scope="module")
def small():
    return parse_scenario(SMALL)


@pytest.fixture(scope="module")
def reference(small):
    """Serial, one chunk per arm, in memory."""
    return run_trial(small, chunk_size=1000, executor="serial")


@pytest.fixture(scope="module")
def cluster():
    """One dask LocalCluster (2 single-threaded worker processes) shared by the dask tests."""
    import logging

    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as c:
        yield c


def assert_same(res, ref):
    """Per-patient summaries identical (bit for bit) and the same endpoint statistics."""
    pd.testing.assert_frame_equal(res.patients(), ref.patients(), check_exact=True)
    a, b = res.to_dict(), ref.to_dict()
    for key in SUMMARY_KEYS:
        assert a[key] == b[key], key


def cli(capsys, args):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ------------------------------------------------------------------ identical results
def test_per_patient_table(reference):
    p = reference.patients()
    assert len(p) == 12
    assert list(p["patient"]) == [*range(6), *range(6)]
    for col in ("weight_kg", "age_years", "sex", "baseline_madrs", "madrs@baseline",
                "madrs@24 h", "ssi@7 d", "cadss@4 h", "peak_cadss", "peak_effect_site_ng_per_ml",
                "time_to_response_h", "responded", "relapse_at_risk", "relapse_time_h"):
        assert col in p.columns, col
    np.testing.assert_array_equal(p["madrs@baseline"], p["baseline_madrs"])
    # the long table of the kept trajectories agrees with the per-patient summaries
    d = reference.data
    k = d[(d["arm"] == "ketamine") & (d["visit"] == "24 h")].sort_values("patient")
    np.testing.assert_array_equal(k["madrs"].to_numpy(),
                                  p[p["arm"] == "ketamine"]["madrs@24 h"].to_numpy())


def test_chunk_size_does_not_matter(small, reference):
    assert_same(run_trial(small, chunk_size=4, executor="serial"), reference)


def test_processes_equal_serial(small, reference):
    res = run_trial(small, chunk_size=2, executor="processes", workers=2)
    assert res.meta["chunks"]["total"] == 6 and res.meta["workers"] == 2
    assert_same(res, reference)


def test_dask_cluster_equals_serial(small, reference, cluster):
    res = run_trial(small, chunk_size=3, executor="dask", scheduler=cluster.scheduler_address)
    assert res.meta["executor"] == "dask"
    assert_same(res, reference)


def test_generated_kernel_is_identical_serially_with_processes_and_on_dask(small, cluster):
    """The generated kernel (``kernel="codegen"``, what trials of ≥ TRIAL_CODEGEN_MIN patients
    use) gives the same per-patient results, to the bit, serially, with 2 processes and on a
    dask cluster (whose workers load it from the disk cache)."""
    ref = run_trial(small, chunk_size=1000, executor="serial", kernel="codegen")
    assert ref.meta["kernel"] == "codegen"
    for kw in ({"executor": "processes", "workers": 2, "chunk_size": 2},
               {"executor": "dask", "scheduler": cluster.scheduler_address, "chunk_size": 3}):
        res = run_trial(small, kernel="codegen", **kw)
        assert res.meta["kernel"] == "codegen"
        assert_same(res, ref)


# ------------------------------------------------------------------ failures and retries
def _crash_once(marker: str, start: int):
    real = trial._run_chunk

    def run_chunk(scenario, chunk, labels, visits_h, trajectories, *rest):
        if chunk.arm_index == 0 and chunk.start == start and not os.path.exists(marker):
            open(marker, "w", encoding="utf-8").close()
            os._exit(3)  # the worker process dies: BrokenProcessPool in the parent
        return real(scenario, chunk, labels, visits_h, trajectories, *rest)

    return run_chunk


def test_processes_crashed_worker_is_retried(small, reference, tmp_path, monkeypatch):
    marker = str(tmp_path / "crashed")
    monkeypatch.setattr(trial, "_run_chunk", _crash_once(marker, start=2))
    res = run_trial(small, chunk_size=2, executor="processes", workers=2,
                    out=str(tmp_path / "o"))
    assert os.path.exists(marker)  # the crash happened
    assert res.meta["chunks"]["resubmitted"] >= 1
    assert_same(res, reference)


def test_processes_give_up_after_retries(small, tmp_path, monkeypatch):
    def always_crash(scenario, chunk, *args):
        if chunk.start == 0 and chunk.arm_index == 1:
            os._exit(3)
        return trial.__dict__["_real_run_chunk"](scenario, chunk, *args)

    monkeypatch.setitem(trial.__dict__, "_real_run_chunk", trial._run_chunk)
    monkeypatch.setattr(trial, "_run_chunk", always_crash)
    with pytest.raises(KetasimError,
                       match="executor.*'saline' patients 0–5 failed 2 times: BrokenProcess"):
        run_trial(small, chunk_size=6, executor="processes", workers=2, retries=1)


def test_dask_killed_worker_mid_run_loses_nothing(small, reference, cluster, tmp_path):
    """SIGKILL one worker process as soon as a chunk comes back while a worker holds running
    chunks (each chunk is slowed by 0.5 s on the workers, so one always does; without that,
    1-patient chunks could all finish between two results): the scheduler reruns its tasks;
    every patient is present and every result identical to serial."""
    from distributed import Client

    def slow_chunks(seconds: float) -> None:
        """On a worker: every chunk first sleeps ``seconds`` (results unchanged), so a chunk
        is always running when a result comes back; ``0`` restores the real function."""
        import time

        import ketasim.trial as t

        real = t.__dict__.setdefault("_unslowed_run_chunk", t._run_chunk)
        if seconds <= 0:
            t._run_chunk = real
            return

        def run_chunk(*args):
            time.sleep(seconds)
            return real(*args)

        t._run_chunk = run_chunk

    with Client(cluster) as client:
        pids = client.run(os.getpid)
        client.run(slow_chunks, 0.5)
        killed: dict = {}

        def kill_one(done: int, total: int) -> None:
            if done == 0 or killed:
                return
            busy = client.run_on_scheduler(
                lambda dask_scheduler: {a: len(w.processing)
                                        for a, w in dask_scheduler.workers.items()})
            addr = max(busy, key=lambda a: busy[a])
            if busy[addr] == 0:
                return  # between submissions no worker holds a chunk: try at the next result
            killed.update(addr=addr, pid=pids[addr], processing=busy[addr])
            os.kill(pids[addr], signal.SIGKILL)

        try:
            res = run_trial(small, chunk_size=1, executor="dask",
                            scheduler=cluster.scheduler_address, progress=kill_one,
                            out=str(tmp_path / "o"))
        finally:
            client.wait_for_workers(2, timeout=60)
            client.run(slow_chunks, 0)  # the cluster is shared with later tests
        assert killed and killed["processing"] >= 1  # killed while it held running chunks
        assert killed["pid"] not in client.run(os.getpid).values()  # really gone
    assert res.meta["chunks"]["run"] == 12
    assert sorted(res.patients()["patient"]) == sorted([*range(6)] * 2)
    assert_same(res, reference)


# ------------------------------------------------------------------ shards and resume
def test_shards_manifest_and_atomic_files(small, reference, tmp_path):
    out = tmp_path / "o"
    res = run_trial(small, chunk_size=4, out=str(out), trajectories=3)
    assert_same(res, reference)
    man = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert man["status"] == "complete" and man["seed"] == 11
    assert man["ketasim_version"] and man["card_hashes"] and len(man["scenario_hash"]) == 64
    names = sorted(p.name for p in (out / "shards" / "arm=ketamine").iterdir())
    assert names == ["chunk-0.parquet", "chunk-4.parquet"]
    import pyarrow.parquet as pq

    meta = pq.read_schema(out / "shards" / "arm=saline" / "chunk-4.parquet").metadata
    assert meta[b"ketasim.chunk"] == b"1,4,2"
    assert int(meta[b"ketasim.chunk_seed"]) > 0
    # trajectories only for the first 3 patients of each arm, only in the first chunk
    assert sorted(p.name for p in (out / "trajectories" / "arm=saline").iterdir()) \
        == ["chunk-0.parquet"]
    assert sorted(res.data["patient"].unique()) == [0, 1, 2]
    assert len(res.data) == 2 * 3 * 4  # arms × patients × (baseline + 3 visits)
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_shards_read_back_with_pandas(small, reference, tmp_path):
    """A plain ``pandas.read_parquet(OUT/"shards")`` reads every per-patient summary (the
    ``arm=`` folders and the ``arm`` column agree in type), and ``load_patients`` gives the
    table of ``TrialResult.patients()`` in patient order."""
    out = tmp_path / "o"
    res = run_trial(small, chunk_size=4, out=str(out), trajectories=3)
    ref = reference.patients()
    got = pd.read_parquet(out / "shards")
    assert len(got) == len(ref) and set(got.columns) == set(ref.columns)
    got = (got.assign(arm=got["arm"].astype(str))
           .sort_values(["arm_index", "patient"]).reset_index(drop=True)[list(ref.columns)])
    pd.testing.assert_frame_equal(got, ref, check_exact=True, check_dtype=False)
    traj = pd.read_parquet(out / "trajectories")
    assert len(traj) == len(res.data) and set(traj["arm"].astype(str)) == {"ketamine", "saline"}
    pd.testing.assert_frame_equal(trial.load_patients(out), ref, check_exact=True)
    pd.testing.assert_frame_equal(trial.load_patients(str(out), arm="saline"),
                                  reference.patients("saline"), check_exact=True)
    with pytest.raises(KetasimError, match="no arm named"):
        trial.load_patients(out, arm="placebo")
    (out / "shards" / "arm=saline" / "chunk-4.parquet").unlink()
    with pytest.raises(KetasimError, match="1 of 4 shards missing"):
        trial.load_patients(out)
    with pytest.raises(KetasimError, match="no manifest.json"):
        trial.load_patients(tmp_path)


def test_runs_with_plain_arm_column_still_resume_and_load(small, reference, tmp_path,
                                                          monkeypatch):
    """Shards written before the ``arm`` column was dictionary-encoded (a plain string column,
    which clashes with the ``arm=`` folders for ``pandas.read_parquet``) still resume without
    recomputing and read back with ``load_patients``."""
    from ketasim import shards

    out = tmp_path / "o"
    with monkeypatch.context() as m:
        m.setattr(shards, "_encode_partition_columns", lambda table: table)
        run_trial(small, chunk_size=4, out=str(out), trajectories=3)
    with pytest.raises(Exception, match="incompatible types"):
        pd.read_parquet(out / "shards")
    pd.testing.assert_frame_equal(trial.load_patients(out), reference.patients(),
                                  check_exact=True)
    calls = []
    real = trial._run_chunk

    def spy(scenario, chunk, *args):
        calls.append(chunk.key)
        return real(scenario, chunk, *args)

    monkeypatch.setattr(trial, "_run_chunk", spy)
    res = run_trial(small, out=str(out))
    assert calls == [] and res.meta["chunks"]["resumed"] == 4
    assert_same(res, reference)


def test_resume_recomputes_only_missing_chunks(small, reference, tmp_path, monkeypatch):
    out = tmp_path / "o"
    run_trial(small, chunk_size=2, out=str(out))
    (out / "shards" / "arm=ketamine" / "chunk-2.parquet").unlink()
    (out / "shards" / "arm=saline" / "chunk-4.parquet").write_bytes(b"truncated")
    calls = []
    real = trial._run_chunk

    def spy(scenario, chunk, *args):
        calls.append((chunk.arm, chunk.start))
        return real(scenario, chunk, *args)

    monkeypatch.setattr(trial, "_run_chunk", spy)
    progress = []
    res = run_trial(small, out=str(out), progress=lambda d, t: progress.append((d, t)))
    assert sorted(calls) == [("ketamine", 2), ("saline", 4)]
    assert res.meta["chunks"] == {"total": 6, "run": 2, "resumed": 4, "resubmitted": 0,
                                  "patients_run": 4, "patients_resumed": 8}
    assert progress[0] == (8, 12) and progress[-1] == (12, 12)
    assert res.meta["chunk_size"] == 2  # taken from the manifest
    assert_same(res, reference)
    # a complete folder reruns nothing
    calls.clear()
    run_trial(small, out=str(out))
    assert calls == []


def test_resume_refuses_other_scenario(small, tmp_path, capsys):
    out = tmp_path / "o"
    run_trial(small, chunk_size=6, out=str(out))
    with pytest.raises(KetasimError, match="different scenario"):
        run_trial(with_overrides(small, seed=12), out=str(out))
    with pytest.raises(KetasimError, match="chunk-size"):
        run_trial(small, chunk_size=3, out=str(out))
    other = run_trial(with_overrides(small, seed=12), out=str(out), resume=False)
    assert other.meta["chunks"]["resumed"] == 0
    assert json.loads((out / MANIFEST).read_text(encoding="utf-8"))["seed"] == 12
    # the CLI: one line, exit 2
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    rc, stdout, err = cli(capsys, ["trial", str(path), "--json", "--out", str(out)])
    assert rc == 2 and stdout == "" and err.count("\n") == 1
    assert "different scenario" in err and "--no-resume" in err


def test_large_run_without_folder_uses_a_temporary_one(small, reference, monkeypatch):
    monkeypatch.setattr(trial, "IN_MEMORY_MAX", 5)
    res = run_trial(small, chunk_size=5)
    folder = res.store.folder
    assert os.path.isdir(folder)
    assert_same(res, reference)
    del res
    import gc

    gc.collect()
    assert not os.path.exists(folder)


# ------------------------------------------------------------------ input checks
@pytest.mark.parametrize("kwargs,field", [
    ({"executor": "spark"}, "executor"),
    ({"executor": "serial", "scheduler": "tcp://127.0.0.1:8786"}, "scheduler"),
    ({"executor": "dask", "scheduler": "127.0.0.1:8786"}, "scheduler"),
    ({"trajectories": -1}, "trajectories"),
    ({"retries": 99}, "retries"),
])
def test_bad_options(small, kwargs, field):
    with pytest.raises(KetasimError) as exc:
        run_trial(small, **kwargs)
    assert exc.value.field == field


# ------------------------------------------------------------------ progress
def test_progress_bar_after_one_second_and_final_line():
    from rich.console import Console

    now = [0.0]
    buf = io.StringIO()
    bar = RichProgress("patients", console=Console(file=buf, force_terminal=True, width=100),
                       clock=lambda: now[0])
    bar(0, 20)
    now[0] = 0.5
    bar(5, 20)
    assert bar.bar is None  # runs under a second show no bar
    now[0] = 1.5
    bar(10, 20)
    assert bar.bar is not None
    now[0] = 2.0
    bar(20, 20)
    line = bar.finish()
    assert line == "20 patients in 2.0 s (10.0 patients/s)"
    assert line in buf.getvalue() and "patients" in buf.getvalue()


def test_progress_line_counts_resumed_patients_apart():
    from rich.console import Console

    now = [0.0]
    bar = RichProgress(console=Console(file=io.StringIO()), clock=lambda: now[0])
    bar(30, 40)
    now[0] = 4.0
    bar(40, 40)
    assert bar.finish() == "10 patients in 4.0 s (2.5 patients/s); 30 resumed from shards"


def test_cli_processes_json_clean_and_final_line(capsys, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    out = tmp_path / "o"
    rc, stdout, err = cli(capsys, ["trial", str(path), "--json", "--out", str(out),
                                   "--executor", "processes", "--workers", "2",
                                   "--chunk-size", "2", "--trajectories", "1"])
    assert rc == 0, err
    d = json.loads(stdout)
    assert d["meta"]["executor"] == "processes" and d["meta"]["trajectories"] == 1
    assert FINAL.match(err.strip().splitlines()[-1]), err
    assert len(pd.read_parquet(out / "results.parquet")) == 2 * 1 * 3
    assert (out / MANIFEST).is_file()
    # rerun: everything resumed, same JSON
    rc, stdout2, err = cli(capsys, ["trial", str(path), "--json", "--out", str(out)])
    assert rc == 0, err
    assert "8 resumed from shards" in err
    d2 = json.loads(stdout2)
    for key in SUMMARY_KEYS:
        assert d2[key] == d[key]


@pytest.mark.slow
def test_cli_dask_default_local_cluster(capsys, tmp_path):
    """--executor dask without --scheduler starts (and stops) its own LocalCluster."""
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    rc, stdout, err = cli(capsys, ["trial", str(path), "--json", "--executor", "dask",
                                   "--workers", "2", "--chunk-size", "3"])
    assert rc == 0, err
    d = json.loads(stdout)
    rc, stdout, err2 = cli(capsys, ["trial", str(path), "--json"])
    ref = json.loads(stdout)
    assert d["meta"]["executor"] == "dask" and d["meta"]["workers"] == 2
    for key in SUMMARY_KEYS:
        assert d[key] == ref[key]
    assert FINAL.match(err.strip().splitlines()[-1]), err


def test_engine_seam_accepts_rows_in_any_order(small, reference, monkeypatch):
    """``_run_chunk`` calls the engine through one line (``mood.simulate_arm``); an engine
    (e.g. a batched one) that returns the same long table in another row order gives the same
    per-patient results."""
    import ketasim.mood

    real = ketasim.mood.simulate_arm

    def shuffled(arm, patients, visits_h, hypotheses=None):
        df = real(arm, patients, visits_h, hypotheses)
        return df.iloc[np.random.default_rng(0).permutation(len(df))].reset_index(drop=True)

    monkeypatch.setattr(ketasim.mood, "simulate_arm", shuffled)
    res = run_trial(small, chunk_size=5)
    assert_same(res, reference)
    pd.testing.assert_frame_equal(res.data, reference.data, check_exact=True)


def test_cli_bad_scheduler_and_executor(capsys, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    for args, key in ((["--scheduler", "localhost:8786"], "scheduler"),
                      (["--executor", "mpi"], "executor"),
                      (["--trajectories", "-3"], "trajectories")):
        rc, stdout, err = cli(capsys, ["trial", str(path), "--json", *args])
        assert rc == 2 and stdout == "", err
        assert err.startswith("error: ") and err.count("\n") == 1 and key in err
