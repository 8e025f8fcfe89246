"""``bench sweep --parallel``: several workers from one queue, the sweep the only writer; slots pinned to GPUs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench import executor, store
from bench.grid import load_preset
from bench.problem import KEY_FIELDS
from tests.sweep_process import alive, bench_process, wait_for, workers_of

CPU_SUBSET = ("--preset", "cpu", "--kernels", "reference.*,sdpa.math,fake.ok", "--seq-len", "32,64")


def _sweep(*args: str, timeout: float = 600) -> tuple[int, str]:
    proc = bench_process("sweep", *args)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _keys(path: Path) -> set[tuple]:
    return {tuple(r) for r in store.load(path)[list(KEY_FIELDS)].itertuples(index=False)}


def test_three_workers_write_exactly_the_rows_of_one(tmp_path: Path) -> None:
    one, three = tmp_path / "one.parquet", tmp_path / "three.parquet"
    code, err = _sweep(*CPU_SUBSET, "--out", str(one))
    assert code == 0, err[-2000:]
    code, err = _sweep(*CPU_SUBSET, "--out", str(three), "--parallel", "3")
    assert code == 0, err[-2000:]
    assert "3 workers" in err
    rows = store.load(three)
    assert _keys(three) == _keys(one) and len(rows) == len(store.load(one)) > 6
    assert set(rows.status) == {"ok"}
    assert rows.gpu_index.isna().all() and rows.host.notna().all()  # CPU workers: no GPU index
    again, err = _sweep(*CPU_SUBSET, "--out", str(three), "--parallel", "3")  # resume: nothing left
    assert again == 0 and "resume:" in err and len(store.load(three)) == len(rows)


def test_a_worker_that_aborts_is_a_crash_row_and_the_others_go_on(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    code, err = _sweep(
        "--preset", "cpu", "--kernels", "fake.ok,fake.abort,reference.mlstm_sig_parallel", "--seq-len", "32,64",
        "--mode", "fw", "--out", str(out), "--parallel", "2",
    )  # fmt: skip
    assert code == 0, err[-2000:]
    status = dict(zip(zip(*[store.load(out)[c] for c in ("kernel", "seq_len")]), store.load(out).status))
    assert status == {
        ("fake.abort", 32): "crash",
        ("fake.abort", 64): "crash",
        ("fake.ok", 32): "ok",
        ("fake.ok", 64): "ok",
        ("reference.mlstm_sig_parallel", 32): "ok",
        ("reference.mlstm_sig_parallel", 64): "ok",
    }


def test_sigterm_leaves_no_worker_behind(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    args = ("--preset", "cpu", "--kernels", "fake.hang", "--seq-len", "32,64,128", "--mode", "fw")
    proc = bench_process("sweep", *args, "--out", str(out), "--parallel", "2", "--timeout", "600")
    wait_for(lambda: len(workers_of(proc.pid)) == 2, 120, "two workers, each in a hanging config")
    workers = workers_of(proc.pid)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted: 0 rows kept" in " ".join(err.split()) and "Traceback" not in err
    wait_for(lambda: not any(alive(w) for w in workers), 10, "both workers to end with the sweep")


def test_gpu_slots_are_pinned_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = executor.local_slots(None, "cuda")
    assert [(s.gpu, s.env) for s in slots] == [(0, {"CUDA_VISIBLE_DEVICES": "3"}), (1, {"CUDA_VISIBLE_DEVICES": "5"})]
    assert len(executor.local_slots(1, "cuda")) == 1
    with pytest.raises(ValueError, match=r"--parallel 3: only 2 GPU\(s\) visible"):
        executor.local_slots(3, "cuda")
    assert [s.gpu for s in executor.local_slots(2, "cpu")] == [None, None]


def test_parallel_values_and_the_longest_first_queue() -> None:
    assert executor.parse_parallel("all") is None and executor.parse_parallel("4") == 4
    for bad in ("0", "-1", "x", "1.5", ""):
        with pytest.raises(ValueError, match="--parallel takes a positive number of workers or 'all'"):
            executor.parse_parallel(bad)
    configs = load_preset("consttoken7b").configs()
    ordered = executor.longest_first(configs)
    work = [spec.flops(p) for spec, p in ordered]
    assert sorted(ordered, key=lambda c: id(c)) == sorted(configs, key=lambda c: id(c))
    assert work == sorted(work, reverse=True)


@pytest.mark.parametrize(
    "value,message",
    [("0", "--parallel takes a positive number"), ("two", "--parallel takes a positive number")],
)
def test_bad_parallel_exits_2_before_any_work(tmp_path: Path, value: str, message: str) -> None:
    out = tmp_path / "r.parquet"
    code, err = _sweep(*CPU_SUBSET, "--out", str(out), "--parallel", value, timeout=120)
    assert code == 2 and message in " ".join(err.split())
    assert not store.exists(out)


def test_ray_and_parallel_together_are_refused(tmp_path: Path) -> None:
    code, err = _sweep(*CPU_SUBSET, "--out", str(tmp_path / "r.parquet"), "--ray", "local", "--parallel", "2")
    assert code == 2 and "give --ray or --parallel, not both" in " ".join(err.split())


def test_configs_on_several_devices_need_one_worker() -> None:
    executor.check_placement({"cpu", "cuda"}, 1, None)  # one slot serves both, a worker per device in turn
    with pytest.raises(ValueError, match="--parallel needs the configs on one device; got cpu, cuda"):
        executor.check_placement({"cpu", "cuda"}, 2, None)
    with pytest.raises(ValueError, match="--ray needs the configs on one device"):
        executor.check_placement({"cpu", "cuda"}, 1, "local")


def test_shared_slots_take_the_gpus_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """For untimed work (bench verify --jobs) several workers may share a GPU; a timed sweep never does."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = executor.local_slots(3, "cuda", share_gpus=True)
    assert [(s.gpu, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [(0, "3"), (1, "5"), (0, "3")]
    executor.check_placement({"cuda"}, 3, None, share_gpus=True)
    with pytest.raises(ValueError, match="a GPU is never shared by two workers"):
        executor.check_placement({"cuda"}, 3, None)
