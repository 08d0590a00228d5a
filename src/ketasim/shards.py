"""Per-patient result shards of a virtual trial: chunk plan, Parquet shards, manifest, stores.

A trial's patients are cut into chunks ``(arm, start, size)``. Each chunk's per-patient
summaries (one row per patient, every endpoint at every visit as ``<column>@<visit>``) go into
one Parquet shard, ``DIR/shards/arm=<name>/chunk-<start>.parquet``, written atomically (a
temporary file in the same folder, then a rename), so a shard is either complete or absent.
The few patients whose visit-by-visit long table is kept ("trajectories") go to
``DIR/trajectories/arm=<name>/chunk-<start>.parquet``. ``DIR/manifest.json`` records the
scenario hash, seed, ketasim version and card versions; a rerun with the same scenario
resumes from the shards that are present and valid.

The folders are Hive-style partitions (``arm=<name>``) and each file also holds the ``arm``
column, written dictionary-encoded (the type a Hive partition key is read as), so a plain
``pandas.read_parquet(DIR / "shards")`` (or ``"trajectories"``) reads every file of the run
(rows in file order, not patient order; ``arm`` comes back categorical). Runs written by
ketasim before this had ``arm`` as a plain string column, which clashes with the partition
key; :func:`load_patients` reads either kind, in patient order.

Stores give the statistics code columns, never the whole table: :class:`MemoryStore` keeps
small runs' shards as DataFrames, :class:`DirStore` reads the requested columns from the
Parquet shards, one arm at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import KetasimError

MANIFEST = "manifest.json"
FORMAT = "ketasim-trial-shards/1"
#: spawn key that separates chunk seeds from patient seeds (both use [seed, arm, index])
_CHUNK_SPAWN_KEY = 0x63686B  # "chk"


@dataclass(frozen=True)
class Chunk:
    """Patients ``start … start+size−1`` of arm ``arm_index`` (named ``arm``)."""

    arm_index: int
    arm: str
    start: int
    size: int

    def seed_entropy(self, seed: int) -> int:
        """Per-chunk seed (a 64-bit integer from ``SeedSequence([seed, arm, start])`` with its
        own spawn key, so it never equals a patient's stream). Patients keep their own
        per-patient seeds, so results do not depend on it or on the chunking; it is recorded
        with each shard for engines that draw per chunk."""
        ss = np.random.SeedSequence([seed, self.arm_index, self.start],
                                    spawn_key=(_CHUNK_SPAWN_KEY,))
        return int(ss.generate_state(1, np.uint64)[0])

    @property
    def key(self) -> str:
        """Identity of the chunk: ``<arm index>-<first patient>``."""
        return f"{self.arm_index}-{self.start}"


def plan_chunks(arm_names: list[str], sizes: list[int], chunk_size: int) -> list[Chunk]:
    """Every arm cut into chunks of ``chunk_size`` patients (the last one shorter)."""
    return [Chunk(a, arm_names[a], s, min(chunk_size, n - s))
            for a, n in enumerate(sizes) for s in range(0, n, chunk_size)]


def scenario_hash(scenario_json: dict) -> str:
    """SHA-256 of the scenario's canonical JSON (sorted keys)."""
    text = json.dumps(scenario_json, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- files
def shard_path(folder: str, chunk: Chunk, kind: str = "shards") -> str:
    """Path of a chunk's Parquet file under ``folder/kind/arm=<name>/``."""
    return os.path.join(folder, kind, f"arm={chunk.arm}", f"chunk-{chunk.start}.parquet")


#: columns stored dictionary-encoded: the Hive partition key of the shard folders
PARTITION_COLUMNS = ("arm",)


def _encode_partition_columns(table):
    """``table`` with the partition-key columns dictionary-encoded (int32 indices, string
    values), matching the type a reader infers for the ``arm=<name>`` folder key."""
    import pyarrow as pa

    for name in PARTITION_COLUMNS:
        i = table.schema.get_field_index(name)
        if i >= 0 and not pa.types.is_dictionary(table.schema.field(i).type):
            col = table.column(i).cast(pa.string()).dictionary_encode()
            table = table.set_column(i, pa.field(name, col.type), col)
    return table


def _decode_dictionaries(table):
    """``table`` with dictionary-encoded columns turned back into plain ones, so a shard reads
    into the same DataFrame as the in-memory store holds (``arm`` as strings, not
    categorical)."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            col = table.column(i).cast(f.type.value_type)
            table = table.set_column(i, pa.field(f.name, col.type), col)
    return table


def read_frame(path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One shard (or trajectory file) as a DataFrame, partition columns decoded to plain
    strings (the same table as was written)."""
    import pyarrow.parquet as pq

    return _decode_dictionaries(pq.read_table(path, columns=columns)).to_pandas()


def _process_umask() -> int:
    """The process umask, read once at import: ``os.umask`` can only be read by setting it,
    which is not safe while other threads (e.g. a threaded dask worker) create files."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _process_umask()


def _ordinary_mode(path: str) -> None:
    """Give a ``mkstemp`` file (mode 0600) the mode ``open()`` would have given it (0666 less
    the umask), as every other output: a run folder shared with other users or dask workers
    is readable as a whole."""
    os.chmod(path, 0o666 & ~_UMASK)


def write_parquet_atomic(df: pd.DataFrame, path: str, metadata: dict[str, str] | None = None,
                         field: str = "out") -> None:
    """Write ``df`` to ``path`` via a temporary file in the same folder and a rename (the
    ``arm`` column dictionary-encoded, see :data:`PARTITION_COLUMNS`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        table = _encode_partition_columns(pa.Table.from_pandas(df, preserve_index=False))
        if metadata:
            meta = dict(table.schema.metadata or {})
            meta.update({k.encode(): v.encode() for k, v in metadata.items()})
            table = table.replace_schema_metadata(meta)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            _ordinary_mode(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise KetasimError(field, f"cannot write {path}: {exc.strerror or exc}") from exc


def write_json_atomic(data: dict, path: str, field: str = "out") -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, ensure_ascii=False)
            _ordinary_mode(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise KetasimError(field, f"cannot write {path}: {exc.strerror or exc}") from exc


def shard_valid(path: str, chunk: Chunk, run_hash: str) -> bool:
    """A shard is valid when it reads as Parquet, carries this run's hash and chunk identity,
    and holds exactly the chunk's patients in order."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.metadata or {}
        if meta.get(b"ketasim.run_hash", b"").decode() != run_hash:
            return False
        if meta.get(b"ketasim.chunk", b"").decode() != f"{chunk.arm_index},{chunk.start},"\
                                                       f"{chunk.size}":
            return False
        if pf.metadata.num_rows != chunk.size:
            return False
        pts = pf.read(columns=["patient"]).column(0).to_numpy()
        return bool(np.array_equal(pts, np.arange(chunk.start, chunk.start + chunk.size)))
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a valid shard
        return False


def read_manifest(folder: str) -> dict | None:
    """The run manifest in ``folder``, or None when there is none."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise KetasimError("out", f"{path} is not a readable ketasim manifest",
                           "--no-resume to overwrite") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KetasimError("out", f"{path} is not a ketasim trial manifest",
                           "--no-resume to overwrite")
    return data


def clear_run(folder: str) -> None:
    """Remove a previous run's shards, trajectories and manifest (nothing else)."""
    for sub in ("shards", "trajectories"):
        p = os.path.join(folder, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)
    m = os.path.join(folder, MANIFEST)
    if os.path.exists(m):
        os.unlink(m)


# --------------------------------------------------------------------------- stores
class Store:
    """Per-patient summaries by chunk; the statistics read columns, one arm at a time."""

    plan: list[Chunk]

    def frame(self, chunk: Chunk, columns: list[str] | None = None) -> pd.DataFrame:
        """One chunk's per-patient table (optionally only ``columns``)."""
        raise NotImplementedError

    def columns(self, arm_index: int, names: list[str]) -> dict[str, np.ndarray]:
        """The named columns of one arm, in patient order, as arrays."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for ch in self.plan:
            if ch.arm_index != arm_index:
                continue
            df = self.frame(ch, names)
            for n in names:
                parts[n].append(df[n].to_numpy())
        return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in parts.items()}

    def table(self, arm_index: int | None = None) -> pd.DataFrame:
        """Every per-patient row (of one arm, or all): meant for small runs and tests."""
        frames = [self.frame(ch) for ch in self.plan
                  if arm_index is None or ch.arm_index == arm_index]
        return pd.concat(frames, ignore_index=True)


class MemoryStore(Store):
    """Shards kept in memory (small runs without an output folder)."""

    def __init__(self, plan: list[Chunk]) -> None:
        self.plan = plan
        self.frames: dict[str, pd.DataFrame] = {}

    def put(self, chunk: Chunk, df: pd.DataFrame) -> None:
        """Keep one chunk's per-patient table in memory."""
        self.frames[chunk.key] = df

    def frame(self, chunk: Chunk, columns: list[str] | None = None) -> pd.DataFrame:
        """One chunk's per-patient table (optionally only ``columns``)."""
        df = self.frames[chunk.key]
        return df if columns is None else df[columns]


class DirStore(Store):
    """Shards read from Parquet files under ``folder``."""

    def __init__(self, folder: str, plan: list[Chunk]) -> None:
        self.folder = folder
        self.plan = plan

    def frame(self, chunk: Chunk, columns: list[str] | None = None) -> pd.DataFrame:
        """One chunk's per-patient table read from its Parquet shard."""
        return read_frame(shard_path(self.folder, chunk), columns)

    def columns(self, arm_index: int, names: list[str]) -> dict[str, np.ndarray]:
        """The named columns of one arm, in patient order, read straight from the shards'
        Parquet columns (no per-shard DataFrame: for 10⁶ patients in 200 shards, the
        summary's 11 reads took 17 s of a 24-s resume through pandas; the resume now takes
        15 s)."""
        import pyarrow.parquet as pq

        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for ch in self.plan:
            if ch.arm_index != arm_index:
                continue
            tbl = _decode_dictionaries(pq.ParquetFile(shard_path(self.folder, ch))
                                       .read(columns=names))
            for n in names:
                parts[n].append(tbl.column(n).to_numpy())
        return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in parts.items()}


def run_plan(folder: str) -> list[Chunk]:
    """The chunk plan of the run in ``folder``, from its manifest."""
    man = read_manifest(folder)
    if man is None:
        raise KetasimError("out", f"no {MANIFEST} in {folder}", "a folder written by "
                           "ketasim trial --out or run_trial(out=...)")
    names = [a["name"] for a in man["scenario"]["arm"]]
    sizes = [int(man["n_per_arm"][n]) for n in names]
    return plan_chunks(names, sizes, int(man["chunk_size"]))


def load_patients(folder: str | os.PathLike, arm: str | None = None) -> pd.DataFrame:
    """Every per-patient summary of the run in ``folder`` (one row per patient, arms in
    scenario order, patients in order; ``arm`` as plain strings), read shard by shard, so it
    also reads runs written before the ``arm`` column was dictionary-encoded. The same table
    as :meth:`ketasim.trial.TrialResult.patients`. Refuses an incomplete run (a missing
    shard); ``arm`` selects one arm."""
    folder = os.fspath(folder)
    plan = run_plan(folder)
    if arm is not None:
        if arm not in {ch.arm for ch in plan}:
            raise KetasimError("arm", f"no arm named {arm!r}",
                               ", ".join(dict.fromkeys(ch.arm for ch in plan)))
        plan = [ch for ch in plan if ch.arm == arm]
    missing = [ch for ch in plan if not os.path.exists(shard_path(folder, ch))]
    if missing:
        raise KetasimError("out", f"{len(missing)} of {len(plan)} shards missing in {folder} "
                           f"(first: {shard_path(folder, missing[0])})",
                           "rerun the same scenario with the same --out to complete it")
    return DirStore(folder, plan).table()
