"""The Parquet store: one schema, written down here; atomic appends; loading with a schema check."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
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
        ("error", pa.float64()),
        # the run's metadata
        ("run_id", pa.string()),
        ("timestamp", pa.string()),
        ("host", pa.string()),
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
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Columns added after the first results were written; files without them load with these filled in (every
# earlier GPU row was timed by CUDA events, every CPU row by the wall clock; no host time was recorded).
ADDED_COLUMNS = ("timer", "host_ms")


class SchemaError(ValueError):
    """A file that is not a tfla-bench results file (missing columns)."""


def to_table(rows: Iterable[dict[str, object]]) -> pa.Table:
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


def load(path: str | Path) -> pd.DataFrame:
    """Read a results file; ``FileNotFoundError`` or ``SchemaError`` with the path and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SchemaError(f"{path} is not a Parquet file: {err}") from err
    return _complete(table, path).to_pandas()


def _complete(table: pa.Table, path: Path) -> pa.Table:
    """``table`` in ``SCHEMA``'s columns, with ``ADDED_COLUMNS`` filled in for files written before them;
    ``SchemaError`` when any other column is missing."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if [c for c in missing if c not in ADDED_COLUMNS]:
        raise SchemaError(f"{path} lacks the columns {', '.join(missing)}: not a tfla-bench results file")
    if "timer" in missing:
        timers = pc.if_else(pc.equal(table["device"], "cuda"), "events", "wall")
        table = table.append_column("timer", timers.cast(pa.string()))
    if "host_ms" in missing:
        table = table.append_column("host_ms", pa.nulls(len(table), pa.float64()))
    return table.select(list(COLUMNS)).cast(SCHEMA)


def key_of(row: dict[str, object] | pd.Series) -> tuple[object, ...]:
    return tuple(row[k] for k in KEY_FIELDS)


RETRY_STATUSES = ("unavailable",)


def existing_keys(
    path: str | Path, retry: tuple[str, ...] = RETRY_STATUSES, timer: str | None = None
) -> set[tuple[object, ...]]:
    """Config keys already in ``path``, except rows whose status is in ``retry`` (tried again on resume:
    a package installed since then turns an ``unavailable`` row into a measurement) and, with ``timer``, GPU rows
    timed by another timer (a sweep with another timer measures them again; a row whose CUDA-graph capture
    failed, timed by events, is tried again too)."""
    path = Path(path)
    if not path.exists():
        return set()
    frame = load(path)
    frame = frame[~frame.status.isin(retry)]
    if timer is not None:
        frame = frame[(frame.device != "cuda") | (frame.timer == timer) | (frame.status != "ok")]
    return {tuple(r) for r in frame[list(KEY_FIELDS)].itertuples(index=False, name=None)}


def append(path: str | Path, rows: list[dict[str, object]], replace: bool = False) -> None:
    """Add ``rows`` to ``path`` atomically (write a temporary file, then rename over the old one).

    With ``replace``, earlier rows with the same config key are dropped first. A process killed at any
    moment leaves either the old or the new file, both complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = to_table(rows)
    if path.exists():
        old = _complete(pq.read_table(path), path)
        if replace:
            frame = old.to_pandas()
            keys = pd.MultiIndex.from_tuples([key_of(r) for r in rows], names=KEY_FIELDS)
            keep = ~pd.MultiIndex.from_frame(frame[list(KEY_FIELDS)]).isin(keys)
            old = pa.Table.from_pandas(frame[keep], schema=SCHEMA, preserve_index=False)
        new = pa.concat_tables([old, new])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(new, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
