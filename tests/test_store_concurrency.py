"""Concurrent writers and readers of one results file, appends that do not rewrite it, compaction."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench import store
from tests.rows import result_row
from tests.sweep_process import bench_process


def _row(seq_len: int, kernel: str = "k", runtime: float = 1.0) -> dict[str, object]:
    return result_row(
        kernel=kernel, heads=2, seq_len=seq_len, head_dim_qk=16, head_dim_v=16, chunk_size=16, dtype="float32",
        device="cpu", tokens=seq_len, runtime_ms=runtime, gpu_name="cpu",
    )  # fmt: skip


def test_two_real_sweeps_into_one_file_lose_no_row(tmp_path: Path) -> None:
    """The issue's repro: two `bench sweep` processes of 20 configs each append to one file while this process
    reads it over and over; every read succeeds and the file ends with all 40 rows, compacted."""
    out = tmp_path / "c.parquet"
    seq_lens = ",".join(str(s) for s in range(8, 161, 8))
    common = ["sweep", "--preset", "cpu", "--seq-len", seq_lens, "--mode", "fw", "--out", str(out)]
    sweeps = [bench_process(*common, "--kernels", k) for k in ("fake.ok", "sdpa.math")]
    reads, failures, seen = 0, [], [0]

    def read_loop() -> None:
        nonlocal reads
        while any(p.poll() is None for p in sweeps):
            try:
                if out.exists() or store.parts_dir(out).exists():
                    n = len(store.load(out))
                    assert n >= seen[-1], f"a reader saw {n} rows after {seen[-1]}"
                    seen.append(n)
                    reads += 1
            except Exception as err:  # noqa: BLE001 - counted, then reported
                failures.append(repr(err))
            time.sleep(0.005)

    reader = threading.Thread(target=read_loop)
    reader.start()
    results = [p.communicate(timeout=300) for p in sweeps]
    reader.join()
    for proc, (_, err) in zip(sweeps, results):
        assert proc.returncode == 0, err[-3000:]
    frame = store.load(out)
    assert len(frame) == 40 and (frame.status == "ok").all()
    assert sorted(frame.kernel.value_counts().tolist()) == [20, 20]
    assert not failures, failures[:3]
    assert reads > 10
    assert not store.parts_dir(out).exists()  # the last sweep to finish folded every fragment in
    assert len(pq.read_table(out)) == 40  # readable as a plain Parquet file too


def _append_many(path: str, writer: int, n: int) -> None:
    for i in range(n):
        store.append(path, [_row(1000 * writer + i, kernel=f"w{writer}")], replace=True)


def _compact_many(path: str, n: int) -> None:
    for _ in range(n):
        store.compact(path)


def test_many_writers_and_a_compactor_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "r.parquet")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(6)]
    procs.append(ctx.Process(target=_compact_many, args=(path, 30)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    frame = store.load(path)
    assert len(frame) == 240
    assert frame.groupby("kernel").seq_len.nunique().tolist() == [40] * 6
    assert store.compact(path) >= 0 and len(store.load(path)) == 240


def test_replace_across_fragments_keeps_the_newest_row(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    store.append(path, [_row(64, runtime=1.0), _row(128, runtime=1.0)])
    store.compact(path)
    store.append(path, [_row(64, runtime=2.0)], replace=True)
    store.append(path, [_row(64, runtime=3.0)], replace=True)
    store.append(path, [_row(256, runtime=4.0)])
    expected = [(64, 3.0), (128, 1.0), (256, 4.0)]
    assert sorted(zip(store.load(path).seq_len, store.load(path).runtime_ms)) == expected
    assert store.compact(path) == 3
    assert sorted(zip(store.load(path).seq_len, store.load(path).runtime_ms)) == expected
    assert not store.parts_dir(path).exists()


def _append_time_s(path: Path, seq_len: int, repeats: int = 7) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        store.append(path, [_row(seq_len + i)], replace=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def test_an_append_does_not_rewrite_a_file_of_100k_rows(tmp_path: Path) -> None:
    """Appending beside 10^5 rows costs what it costs beside 10 (one small fragment); the rows stay intact."""
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    store.append(small, [_row(s) for s in range(10)])
    store.compact(small)
    one = store.to_table([_row(0)])
    table = pa.concat_tables([one] * 100_000)
    table = table.set_column(table.schema.get_field_index("seq_len"), "seq_len", pa.array(range(100_000), pa.int64()))
    pq.write_table(table, big)
    before = big.stat().st_mtime_ns
    t_small, t_big = _append_time_s(small, 10**6), _append_time_s(big, 10**6)
    assert big.stat().st_mtime_ns == before  # the 10^5-row file itself was not touched
    assert t_big < 3 * t_small + 0.01, (t_small, t_big)
    assert len(store.load(big)) == 100_007


def test_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "r.parquet"
        store.append(path, [_row(64)])
        assert path.stat().st_mode & 0o777 == 0o644  # the first append makes the file itself
        store.append(path, [_row(128)])
        fragment = next(store.parts_dir(path).iterdir())
        assert fragment.stat().st_mode & 0o777 == 0o644
        store.compact(path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_a_read_only_results_file_without_fragments_loads_without_a_lock(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    store.append(path, [_row(64)])
    store.compact(path)
    store.lock_path(path).unlink()
    assert len(store.load(path)) == 1
    assert not store.lock_path(path).exists()  # reading committed results leaves nothing beside them
