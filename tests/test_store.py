"""The Parquet store: schema, atomic append, resume keys, replace, and load errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench import store
from bench.store import COLUMNS, SchemaError
from tests.rows import result_row


def _row(seq_len: int, runtime: float = 1.0, status: str = "ok") -> dict[str, object]:
    return result_row(
        kernel="k",
        heads=2,
        seq_len=seq_len,
        head_dim_qk=16,
        head_dim_v=16,
        chunk_size=16,
        dtype="float32",
        device="cpu",
        tokens=seq_len,
        status=status,
        runtime_ms=runtime,
        run_id="r",
        gpu_name="cpu",
    )


def test_append_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.parquet"
    store.append(path, [_row(64)])
    store.append(path, [_row(128, 2.0)])
    frame = store.load(path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["seq_len"].tolist() == [64, 128]
    assert frame["runtime_ms"].tolist() == [1.0, 2.0]
    assert store.existing_keys(path) == {("k", 1, 2, s, 16, 16, 16, "float32", "fw", "cpu") for s in (64, 128)}
    assert not list(path.parent.glob("*.tmp"))


def test_replace_drops_the_old_row_of_the_same_config(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    store.append(path, [_row(64, 1.0), _row(128, 1.0)])
    store.append(path, [_row(64, 5.0)], replace=True)
    frame = store.load(path)
    assert sorted(zip(frame.seq_len, frame.runtime_ms)) == [(64, 5.0), (128, 1.0)]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.load(tmp_path / "missing.parquet")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(SchemaError, match="lacks the columns kernel"):
        store.load(other)
    text = tmp_path / "text.parquet"
    text.write_text("not parquet")
    with pytest.raises(SchemaError, match="not a Parquet file"):
        store.load(text)


def test_files_written_before_the_timer_columns_load_and_take_appends(tmp_path: Path) -> None:
    """A file without ``timer`` and ``host_ms`` (written before they existed): GPU rows read as timed by
    events, CPU rows by the wall clock, no host time; appending a new row keeps the old ones."""
    path = tmp_path / "old.parquet"
    rows = [_row(64), {**_row(128), "device": "cuda"}]
    pq.write_table(store.to_table(rows).drop(list(store.ADDED_COLUMNS)), path)
    frame = store.load(path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.timer.tolist() == ["wall", "events"]
    assert frame.host_ms.isna().all()
    store.append(path, [{**_row(256), "timer": "wall"}])
    assert store.load(path).seq_len.tolist() == [64, 128, 256]


def test_resume_with_another_timer_measures_gpu_rows_again(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    gpu = {"device": "cuda", "timer": "events"}
    store.append(path, [_row(64) | {"timer": "wall"}, _row(128) | gpu, _row(256, status="error") | gpu])
    seq_lens = {key[3] for key in store.existing_keys(path, timer="cudagraph")}
    assert seq_lens == {64, 256}  # the CPU row and the failed row stay done; the events row is measured again
    assert {key[3] for key in store.existing_keys(path, timer="events")} == {64, 128, 256}
