"""Isolated worker processes: a crash, an abort in a compiler or a hang becomes a status, not the end.

One ``KernelWorker`` serves one kernel at a time in a spawned process (so CUDA and Triton state never
leak between kernels) and is restarted after a crash or a timeout. The worker's stdout and stderr go
to a log file; the tail of it becomes the message of a ``crash`` row.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from bench.measure import Measurement
from bench.problem import Problem


@dataclass(frozen=True)
class Task:
    kernel: str
    problem: Problem
    verify: bool = False
    peak_tflops: float | None = None
    timer: str = "events"


def _serve(conn: Connection, log_path: str, env: dict[str, str]) -> None:  # pragma: no cover - child process
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from bench import registry
    from bench.measure import measure

    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        spec = registry.get(task.kernel)
        conn.send(measure(spec, task.problem, check=task.verify, peak_tflops=task.peak_tflops, timer=task.timer))


def worker_env(device: str) -> dict[str, str]:
    """Environment of a worker: Triton's interpreter for CPU problems."""
    return {"TRITON_INTERPRET": "1"} if device == "cpu" else {}


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class KernelWorker:
    """A restartable worker process; ``run(task, timeout_s)`` always returns a ``Measurement``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._log = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve, args=(child, str(self._log), worker_env(self.device)), daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent

    def _log_tail(self, n: int = 1500) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line for line in text[-n:].splitlines() if line.strip())

    def run(self, task: Task, timeout_s: float) -> Measurement:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        assert self._conn is not None and self._proc is not None
        self._log.write_text("")
        pipe_closed = False
        try:
            self._conn.send(task)
            if self._conn.poll(timeout_s):
                return self._conn.recv()
        except (EOFError, OSError):  # BrokenPipeError, ConnectionResetError included
            pipe_closed = True  # the worker died; it may still be exiting
        if not pipe_closed:
            self.stop(kill=True)
            return Measurement("timeout", f"no result within {timeout_s:g} s; worker killed")
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        message = f"worker died ({_signal_name(self._proc.exitcode)})"
        tail = self._log_tail()
        self._proc = None
        return Measurement("crash", f"{message}: {tail}" if tail else message)

    def stop(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if kill:
            self._proc.kill()
        else:
            try:
                assert self._conn is not None
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)
