"""Virtual-trial jobs that survive a restart: an embedded SQLite table plus result folders.

Each submitted scenario becomes a row (``jobs``) with its validated scenario (JSON), status
(``queued`` → ``running`` → ``done`` | ``failed``), progress (patients done / total), attempts,
error and the folder of its results (``results.parquet``, ``results.csv`` headed by the run's
provenance in ``#`` lines, ``summary.json``, ``report.html``). Job ids are
``secrets.token_urlsafe(18)``: results are reachable only by id.

A dispatcher thread starts queued jobs, at most ``max_concurrent`` at once, each in its own
process (``spawn``; ``mode="thread"`` runs them in threads instead, for tests). On start-up,
:meth:`JobStore.recover` puts jobs left ``running`` by a stopped server back in the queue (the
run is deterministic given the seed, so rerunning resumes it) unless they have already been
tried ``max_attempts`` times, in which case they fail with a message saying so. Nothing
submitted is dropped silently: every row ends ``done`` or ``failed`` with a reason.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    scenario TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_dir TEXT
);
"""
STATUSES = ("queued", "running", "done", "failed")


def new_job_id() -> str:
    """An unguessable job id (24 URL-safe characters, 144 random bits)."""
    return secrets.token_urlsafe(18)


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode (readers do not block the job writing its progress)."""
    con = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA busy_timeout=30000")
    return con


@dataclass
class JobRow:
    """One job as stored."""

    id: str
    status: str
    scenario: dict
    created: float
    started: float | None
    finished: float | None
    done: int
    total: int
    attempts: int
    error: str | None
    result_dir: str | None


def _row(r: sqlite3.Row) -> JobRow:
    d = dict(r)
    d["scenario"] = json.loads(d["scenario"])
    return JobRow(**d)


class JobStore:
    """The jobs table and the result folders under ``data_dir``."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.results_dir = os.path.join(self.data_dir, "results")
        os.makedirs(self.results_dir, exist_ok=True)
        self.db_path = os.path.join(self.data_dir, "jobs.sqlite")
        self._lock = threading.Lock()
        self.con = connect(self.db_path)
        self.con.executescript(_SCHEMA)

    def submit(self, scenario: dict, total: int) -> str:
        """Record a new trial job (queued) with its scenario and patient count; returns its id."""
        jid = new_job_id()
        with self._lock:
            self.con.execute("INSERT INTO jobs (id, status, scenario, created, total) "
                             "VALUES (?, 'queued', ?, ?, ?)",
                             (jid, json.dumps(scenario), time.time(), total))
        return jid

    def get(self, jid: str) -> JobRow | None:
        """The job row for ``jid``, or None."""
        with self._lock:
            r = self.con.execute("SELECT * FROM jobs WHERE id = ?", (jid,)).fetchone()
        return _row(r) if r else None

    def count(self, *statuses: str) -> int:
        """Number of jobs with the given statuses."""
        q = ",".join("?" * len(statuses))
        with self._lock:
            return int(self.con.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({q})",
                                        statuses).fetchone()[0])

    def claim_next(self) -> JobRow | None:
        """Mark the oldest queued job running (attempts + 1) and return it."""
        with self._lock:
            r = self.con.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created "
                                 "LIMIT 1").fetchone()
            if r is None:
                return None
            self.con.execute("UPDATE jobs SET status = 'running', started = ?, done = 0, "
                             "attempts = attempts + 1, error = NULL WHERE id = ?",
                             (time.time(), r["id"]))
        return self.get(r["id"])

    def fail(self, jid: str, error: str) -> None:
        """Mark a job failed with a one-line reason."""
        with self._lock:
            self.con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? "
                             "WHERE id = ? AND status IN ('queued', 'running')",
                             (time.time(), error, jid))

    def requeue(self, jid: str) -> None:
        """Put a job back in the queue (after an interrupted run)."""
        with self._lock:
            self.con.execute("UPDATE jobs SET status = 'queued', done = 0 WHERE id = ? AND "
                             "status = 'running'", (jid,))

    def recover(self, max_attempts: int) -> dict[str, int]:
        """After a restart: rerun interrupted jobs (or fail them once tried too often)."""
        with self._lock:
            failed = self.con.execute(
                "UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE status = "
                "'running' AND attempts >= ?",
                (time.time(), f"interrupted by a server restart {max_attempts} times; not "
                 "retried", max_attempts)).rowcount
            resumed = self.con.execute("UPDATE jobs SET status = 'queued', done = 0 WHERE "
                                       "status = 'running'").rowcount
        return {"resumed": resumed, "failed": failed}


def run_job(db_path: str, results_dir: str, jid: str, chunk_size: int = 10) -> None:
    """Run one claimed job to the end (in a worker process or thread); never raises.

    Progress (patients done) is written to the row as chunks finish; the results are written
    to ``results_dir/jid`` before the row is marked ``done``."""
    con = connect(db_path)
    try:
        from ..errors import KetasimError
        from ..report import _atomic_bytes, csv_with_provenance, write_trial_outputs
        from ..scenario import parse_scenario
        from ..trial import run_trial

        row = con.execute("SELECT scenario FROM jobs WHERE id = ?", (jid,)).fetchone()
        scenario = parse_scenario(json.loads(row["scenario"]))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2 or done >= total:
                last[0] = now
                con.execute("UPDATE jobs SET done = ?, total = ? WHERE id = ?",
                            (done, total, jid))

        try:
            result = run_trial(scenario, chunk_size=chunk_size, executor="serial",
                               progress=progress)
            folder = os.path.join(results_dir, jid)
            write_trial_outputs(result, folder)
            # downloaded on its own, the CSV carries the run's provenance as results.parquet
            # does: '# key: JSON value' lines on top (pandas.read_csv(path, comment="#"))
            _atomic_bytes(os.path.join(folder, "results.csv"), csv_with_provenance(
                result.data, result.meta, title="ketasim virtual trial: visit-by-visit scores "
                "of the kept patients (results.parquet as CSV)"), "out")
        except KetasimError as exc:
            con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (time.time(), str(exc), jid))
            return
        con.execute("UPDATE jobs SET status = 'done', finished = ?, result_dir = ?, done = total "
                    "WHERE id = ?", (time.time(), folder, jid))
    except Exception as exc:  # noqa: BLE001 - a job must end failed, with a reason
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        try:
            con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                        (time.time(), f"internal error: {tb}", jid))
        except sqlite3.Error:  # pragma: no cover
            pass
    finally:
        con.close()


def _exit_with_parent() -> None:
    """In a worker process: exit at once when the server process is gone (killed with
    SIGKILL, say), so an orphan never keeps running a job that the restarted server will run
    again, and never marks it done behind the new server's back."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(70)

    threading.Thread(target=watch, daemon=True, name="ketasim-parent-watch").start()


def worker_main(db_path: str, results_dir: str, jid: str) -> None:
    """Entry point of a job's worker process: :func:`run_job`, ended with the server."""
    _exit_with_parent()
    run_job(db_path, results_dir, jid)


class Dispatcher:
    """Starts queued jobs (at most ``max_concurrent`` running) and watches their workers."""

    def __init__(self, store: JobStore, max_concurrent: int = 1, mode: str = "process",
                 poll_s: float = 0.2) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread', got {mode!r}")
        self.store = store
        self.max_concurrent = max_concurrent
        self.mode = mode
        self.poll_s = poll_s
        self.workers: dict[str, object] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the dispatcher thread that runs queued jobs."""
        self._thread = threading.Thread(target=self._loop, name="ketasim-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Wake the dispatcher (a job was queued or finished)."""
        self._wake.set()

    def _launch(self, row: JobRow) -> None:
        args = (self.store.db_path, self.store.results_dir, row.id)
        if self.mode == "thread":
            w = threading.Thread(target=run_job, args=args, daemon=True)
        else:
            import multiprocessing as mp

            w = mp.get_context("spawn").Process(target=worker_main, args=args, daemon=True)
        w.start()
        self.workers[row.id] = w

    def _reap(self) -> None:
        for jid, w in list(self.workers.items()):
            if w.is_alive():
                continue
            del self.workers[jid]
            code = getattr(w, "exitcode", 0)
            row = self.store.get(jid)
            if row is not None and row.status == "running":
                self.store.fail(jid, f"worker stopped (exit code {code}) before finishing")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                while len(self.workers) < self.max_concurrent and not self._stop.is_set():
                    row = self.store.claim_next()
                    if row is None:
                        break
                    self._launch(row)
            except Exception:  # noqa: BLE001 - keep dispatching; errors land on the rows
                traceback.print_exc()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop dispatching; worker processes are ended and their jobs queued again, so the
        next start resumes them. Threads cannot be ended: their rows are recovered later."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for jid, w in list(self.workers.items()):
            if hasattr(w, "terminate") and w.is_alive():
                w.terminate()
                w.join(timeout)
                self.store.requeue(jid)
