"""A sweep stopped by a signal: no worker outlives it, SIGTERM / SIGINT keep every measured row and say so."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench import store
from bench.worker import LOG_PREFIX, remove_stale_logs
from tests.sweep_process import alive, bench_process, wait_for, workers_of

ARGS = ("sweep", "--preset", "cpu", "--kernels", "fake.ok,fake.hang", "--seq-len", "32", "--mode", "fw")


def _rows(out: Path) -> int:
    try:
        return len(store.load(out))
    except FileNotFoundError:
        return 0


def _start_hanging_sweep(out: Path) -> tuple[object, int]:
    """A sweep whose first config is measured and whose second hangs in its worker; returns it and that worker."""
    proc = bench_process(*ARGS, "--timeout", "600", "--out", str(out))
    wait_for(lambda: _rows(out) == 1, 120, "the first row")
    wait_for(lambda: bool(workers_of(proc.pid)), 60, "the hanging config's worker")
    worker = workers_of(proc.pid)[0]
    time.sleep(1.0)  # inside the kernel by now
    return proc, worker


def test_a_sweep_killed_by_sigkill_leaves_no_worker(tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    proc, worker = _start_hanging_sweep(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(lambda: not alive(worker), 10, f"worker {worker} to die with its sweep")
    frame = store.load(out)  # the row measured before the kill is there, from its fragment
    assert frame.kernel.tolist() == ["fake.ok"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_and_keep_the_rows(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    out = tmp_path / "r.parquet"
    proc, worker = _start_hanging_sweep(out)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted: 1 rows kept" in " ".join(err.split())
    assert "Traceback" not in err
    assert not alive(worker)
    assert store.load(out).kernel.tolist() == ["fake.ok"]
    assert not store.parts_dir(out).exists()  # the clean-up compacted the file
    resumed = bench_process(*ARGS, "--timeout", "2", "--out", str(out))
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert "resume: 1 of 2 configs" in err
    assert sorted(zip(*[store.load(out)[c] for c in ("kernel", "status")])) == [
        ("fake.hang", "timeout"),
        ("fake.ok", "ok"),
    ]


def test_logs_of_dead_sweeps_are_removed(tmp_path: Path) -> None:
    proc = bench_process("list")
    proc.communicate(timeout=120)
    dead = tmp_path / f"{LOG_PREFIX}{proc.pid}-abc.log"
    live = tmp_path / f"{LOG_PREFIX}{os.getppid()}-def.log"
    for log in (dead, live):
        log.write_text("x")
    assert remove_stale_logs(tmp_path) == 1
    assert not dead.exists() and live.exists()


def test_sigterm_stops_verify_with_its_exit_code_judging_what_it_measured() -> None:
    proc = bench_process("verify", "--device", "cpu", "--kernels", "fake.ok,fake.hang")
    wait_for(lambda: bool(workers_of(proc.pid)), 120, "verify's first worker")
    first = workers_of(proc.pid)[0]
    # fake.ok's configs are done once fake.hang's worker has replaced its worker
    wait_for(lambda: any(w != first for w in workers_of(proc.pid)), 120, "fake.hang's worker")
    worker = next(w for w in workers_of(proc.pid) if w != first)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    said = " ".join(err.split())
    assert "verify interrupted (SIGTERM) after 2 of 4 configs" in said and "the other 2 were not run" in said, said
    assert "fake.ok" in out and "pass" in out and "fake.hang" not in out  # the measured configs, judged
    assert "Traceback" not in err
    wait_for(lambda: not alive(worker), 10, f"worker {worker} to end with verify")
