"""The Parquet store: one schema, written down here; appends that any number of processes may make at once.

A results file ``R.parquet`` holds the compacted rows. ``append`` never rewrites it: each call writes one immutable
fragment into ``R.parquet.parts/`` (to a temporary name, then renamed, so a reader never sees half a fragment),
so an append costs the same beside 10 rows or 10^5. ``load`` reads the file and its fragments as one table;
``compact`` folds the fragments into the file (the sweep does so at its start and its end). A lock file beside
the results (``.R.parquet.lock``, ``flock``) keeps the snapshot consistent: appends and reads share it, ``compact``
takes it alone. A file with no fragments is read without the lock (it is only ever replaced by a rename), so
results in a read-only place load as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.problem import KEY_FIELDS

SCHEMA = pa.schema(
    [
        # the config
        ("kernel", pa.string()),
        ("family", pa.string()),
        ("batch", pa.int64()),
        ("heads", pa.int64()),
        ("seq_len", pa.int64()),
        ("head_dim_qk", pa.int64()),
        ("head_dim_v", pa.int64()),
        ("chunk_size", pa.int64()),
        ("dtype", pa.string()),
        ("mode", pa.string()),
        ("device", pa.string()),
        ("tokens", pa.int64()),
        ("kernel_params", pa.string()),  # JSON: the kernel's own shape mapping and options
        # the measurement
        ("status", pa.string()),
        ("message", pa.string()),
        ("runtime_ms", pa.float64()),
        ("runtime_p20_ms", pa.float64()),
        ("runtime_p80_ms", pa.float64()),
        ("timer", pa.string()),  # events, cudagraph (GPU) or wall (CPU): bench.measure.TIMERS
        ("host_ms", pa.float64()),  # host time per call, not synchronized (GPU rows)
        ("peak_mem_bytes", pa.int64()),
        ("flops", pa.float64()),
        ("bytes", pa.float64()),
        ("tflops", pa.float64()),
        ("pct_peak", pa.float64()),
        ("error", pa.float64()),  # the worst relative error of ``errors``
        ("errors", pa.string()),  # JSON: relative error against the reference per output ("out", "dq", ...)
        ("config_s", pa.float64()),  # seconds the config took in its worker: start-up, compiles, autotuning included
        # the run's metadata
        ("run_id", pa.string()),
        ("timestamp", pa.string()),
        ("host", pa.string()),
        ("gpu_index", pa.int64()),  # the GPU that measured the row, among those visible to the sweep; empty on the CPU
        ("gpu_name", pa.string()),
        ("driver", pa.string()),
        ("cuda", pa.string()),
        ("torch", pa.string()),
        ("triton", pa.string()),
        ("python", pa.string()),
        ("git_commit", pa.string()),
        ("packages", pa.string()),
        ("peak_tflops", pa.float64()),
        ("peak_bandwidth_gbs", pa.float64()),
        # same-machine A/B (``bench check --against``): which tree measured the row (A: the ref, B: this tree), and
        # in which round; empty for plain sweeps
        ("side", pa.string()),
        ("round", pa.int64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Columns added after the first results were written; files without them load with these filled in (every
# earlier GPU row was timed by CUDA events, every CPU row by the wall clock; no host time, per-output error, A/B
# side, GPU index or config time was recorded).
ADDED_COLUMNS = ("timer", "host_ms", "errors", "side", "round", "gpu_index", "config_s")
# A fragment written by ``append(..., replace=True)`` says so in its Parquet metadata: its rows supersede every
# earlier row with the same config key when the store is read or compacted.
REPLACE_KEY = b"tfla_bench.replace"
PARTS_SUFFIX = ".parts"
_SEQUENCE = itertools.count()


class SchemaError(ValueError):
    """A file that is not a tfla-bench results file (missing columns, wrong types, not Parquet)."""


class StoreError(ValueError):
    """A results path that cannot be written (a folder, a folder that cannot be made or written)."""


def parts_dir(path: str | Path) -> Path:
    """The folder of ``path``'s fragments not yet compacted into it."""
    path = Path(path)
    return path.with_name(path.name + PARTS_SUFFIX)


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    with open(lock_path(path), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def to_table(rows: Iterable[dict[str, object]]) -> pa.Table:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


def _read_parquet(path: Path) -> pa.Table:
    """One file read through one open handle (a second open could meet a file renamed over in between)."""
    try:
        with open(path, "rb") as fh:
            return pq.read_table(fh)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise SchemaError(f"{path} is not a Parquet file: {err}") from err


def _complete(table: pa.Table, path: Path) -> pa.Table:
    """``table`` in ``SCHEMA``'s columns and types, with ``ADDED_COLUMNS`` filled in for files written before them;
    ``SchemaError`` naming the column when one is missing or holds values of another type."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if [c for c in missing if c not in ADDED_COLUMNS]:
        raise SchemaError(f"{path} lacks the columns {', '.join(missing)}: not a tfla-bench results file")
    if "timer" in missing:
        timers = pc.if_else(pc.equal(table["device"], "cuda"), "events", "wall")
        table = table.append_column("timer", timers.cast(pa.string()))
    for name in ADDED_COLUMNS:
        if name in missing and name != "timer":  # timer: filled in by device above
            table = table.append_column(name, pa.nulls(len(table), SCHEMA.field(name).type))
    columns = []
    for field in SCHEMA:
        column = table[field.name]
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowException, ValueError) as err:
            raise SchemaError(
                f"{path}: column {field.name!r} holds {column.type}, expected {field.type} ({err})"
            ) from err
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _fragments(path: Path) -> list[Path]:
    parts = parts_dir(path)
    if not parts.is_dir():
        return []
    return sorted(p for p in parts.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))


def _fold(tables: list[tuple[pa.Table, bool]]) -> pa.Table:
    """The tables in order as one; rows of a ``replace`` table drop the earlier rows with the same key."""
    if not tables:
        return SCHEMA.empty_table()
    if not any(replace for _, replace in tables[1:]):
        return pa.concat_tables([t for t, _ in tables])
    frames = []
    for seq, (table, replace) in enumerate(tables):
        frame = table.to_pandas()
        frames.append(frame.assign(_seq=seq, _replace=replace))
    frame = pd.concat(frames, ignore_index=True)
    keys = list(KEY_FIELDS)
    cutoff = frame[frame._replace].groupby(keys, dropna=False)._seq.max().rename("_cutoff")
    frame = frame.merge(cutoff, how="left", left_on=keys, right_index=True, sort=False)
    keep = frame._cutoff.isna() | (frame._seq >= frame._cutoff)
    frame = frame[keep].drop(columns=["_seq", "_replace", "_cutoff"])
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


def _snapshot(path: Path) -> tuple[pa.Table, list[Path]]:
    """The compacted file and its fragments as one table, and the fragments read (call under the lock)."""
    tables = [(_complete(_read_parquet(path), path), False)] if path.is_file() else []
    fragments = _fragments(path)
    for frag in fragments:
        table = _read_parquet(frag)
        replace = (table.schema.metadata or {}).get(REPLACE_KEY) == b"1"
        tables.append((_complete(table, frag), replace))
    return _fold(tables), fragments


def load(path: str | Path) -> pd.DataFrame:
    """Read a results file with its fragments; ``FileNotFoundError`` or ``SchemaError`` with the path and what is
    wrong."""
    path = Path(path)
    if path.is_dir():
        raise SchemaError(f"{str(path)!r} is a folder, not a results file")
    if not exists(path):
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    if not parts_dir(path).is_dir():
        return _complete(_read_parquet(path), path).to_pandas()
    try:
        with _locked(path, exclusive=False):
            return _snapshot(path)[0].to_pandas()
    except PermissionError:  # a read-only place: nobody can be writing there
        return _snapshot(path)[0].to_pandas()


def records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """``frame``'s rows as the dicts the runner writes: missing values (NaN) as ``None``."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def key_of(row: dict[str, object] | pd.Series) -> tuple[object, ...]:
    return tuple(row[k] for k in KEY_FIELDS)


RETRY_STATUSES = ("unavailable",)  # measured again on every resume
RETRYABLE = ("error", "crash", "timeout", "oom", "unsupported")  # measured again on a resume that asks (--retry)


def check_retry(statuses: tuple[str, ...]) -> None:
    """``ValueError`` naming the allowed statuses unless every one of ``statuses`` is in ``RETRYABLE``."""
    bad = [x for x in statuses if x not in RETRYABLE]
    if bad:
        raise ValueError(
            f"retry takes statuses of failed rows (any of {', '.join(RETRYABLE)}; unavailable rows are always "
            f"measured again); got {', '.join(map(repr, bad))}"
        )


def exists(path: str | Path) -> bool:
    """Whether ``path`` holds results: the file, or fragments not yet compacted into it."""
    path = Path(path)
    return path.is_file() or parts_dir(path).is_dir()


def existing_keys(
    path: str | Path, retry: tuple[str, ...] = RETRY_STATUSES, timer: str | None = None
) -> set[tuple[object, ...]]:
    """Config keys already in ``path``, except rows whose status is in ``retry`` (tried again on resume:
    a package installed since then turns an ``unavailable`` row into a measurement) and, with ``timer``, GPU rows
    timed by another timer (a sweep with another timer measures them again; a row whose CUDA-graph capture
    failed, timed by events, is tried again too)."""
    path = Path(path)
    if not exists(path):
        return set()
    frame = load(path)
    frame = frame[~frame.status.isin(retry)]
    if timer is not None:
        frame = frame[(frame.device != "cuda") | (frame.timer == timer) | (frame.status != "ok")]
    return _keys(frame)


def _keys(frame: pd.DataFrame) -> set[tuple[object, ...]]:
    """The config keys (``KEY_FIELDS``) of ``frame``'s rows."""
    return {tuple(r) for r in frame[list(KEY_FIELDS)].itertuples(index=False, name=None)}


def keys_without_error(path: str | Path) -> set[tuple[object, ...]]:
    """Config keys of ``ok`` rows in ``path`` that carry no error value because they were measured without
    ``--verify`` (not those whose verification was skipped: their message says ``verify skipped``)."""
    path = Path(path)
    if not exists(path):
        return set()
    frame = load(path)
    skipped = frame.message.fillna("").str.contains("verify skipped", regex=False)
    return _keys(frame[(frame.status == "ok") & frame.error.isna() & ~skipped])


def check_writable(path: str | Path) -> None:
    """Raise ``StoreError`` (or ``SchemaError`` for a file that is not tfla-bench results) unless rows can be
    appended to ``path``: checked before a sweep measures anything."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{str(path)!r} is a folder; give a results file such as {str(path / 'results.parquet')!r}")
    if exists(path):
        load(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path(path), "a+b"):
            pass
        probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StoreError(f"cannot write results to {str(path)!r}: {err.strerror or err}") from err


def _write_atomic(table: pa.Table, target: Path) -> None:
    """Write ``table`` to a temporary name beside ``target`` and rename it over ``target``; the file's mode
    follows the umask."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{next(_SEQUENCE)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def append(path: str | Path, rows: list[dict[str, object]], replace: bool = False) -> None:
    """Add ``rows`` to ``path`` as one new fragment; any number of processes may append at once.

    With ``replace``, earlier rows with the same config key are superseded (dropped when read or compacted).
    A process killed at any moment leaves every earlier append complete and this one either whole or absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(rows)
    if not exists(path):  # the first rows become the file itself, so that it exists from the first append on
        with _locked(path, exclusive=True):
            if not exists(path):
                _write_atomic(table, path)
                return
    table = table.replace_schema_metadata({REPLACE_KEY: b"1" if replace else b"0"})
    with _locked(path, exclusive=False):
        parts = parts_dir(path)
        parts.mkdir(exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_SEQUENCE):06d}.parquet"
        _write_atomic(table, parts / name)


def compact(path: str | Path) -> int:
    """Fold ``path``'s fragments into the file itself (the file is replaced by a rename, the fragments removed);
    returns how many fragments were folded. Waits for appends and reads in progress."""
    path = Path(path)
    if not parts_dir(path).is_dir():
        return 0
    with _locked(path, exclusive=True):
        table, fragments = _snapshot(path)
        if fragments:
            _write_atomic(table, path)
        parts = parts_dir(path)
        for frag in fragments:
            frag.unlink()
        for stale in parts.glob(".*.tmp"):  # left by a writer killed mid-write; none can be writing now
            stale.unlink()
        with contextlib.suppress(OSError):
            parts.rmdir()
    return len(fragments)
