"""Isolated worker processes: a crash, an abort in a compiler or a hang becomes a status, not the end.

One ``KernelWorker`` serves one kernel at a time in a spawned process (so CUDA and Triton state never
leak between kernels) and is restarted after a crash or a timeout. The worker's stdout and stderr go
to a log file; the tail of it becomes the message of a ``crash`` row. A worker never outlives its sweep: it asks
the kernel for ``SIGKILL`` when its parent dies (Linux ``PR_SET_PDEATHSIG``) and a watchdog thread exits when it
finds itself orphaned (every POSIX system); Ctrl-C reaches the sweep, which stops its workers itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.measure import Measurement
from bench.problem import Problem

LOG_PREFIX = "bench-worker-"
PR_SET_PDEATHSIG = 1
WATCHDOG_PERIOD_S = 1.0


@dataclass(frozen=True)
class Task:
    kernel: str
    problem: Problem
    verify: bool = False
    peak_tflops: float | None = None
    timer: str = "events"


def die_with_parent(parent_pid: int) -> None:  # pragma: no cover - child process
    """Make this process end when ``parent_pid`` does: the kernel's parent-death signal where there is one, and a
    watchdog thread that polls the parent (it also catches a parent that died before the signal was armed)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(WATCHDOG_PERIOD_S)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _prepare_child(log_path: str, env: dict[str, str], parent_pid: int) -> None:  # pragma: no cover
    """A worker's first steps: end with its parent, leave Ctrl-C to the sweep (which stops its workers), write
    stdout and stderr to the log, take the worker's environment."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)


def _tasks(conn: Connection) -> Iterator[Any]:  # pragma: no cover - child process
    """The tasks sent to a worker, until the sweep sends ``None`` or closes the pipe."""
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        yield task


def _serve(conn: Connection, log_path: str, env: dict[str, str], parent_pid: int) -> None:  # pragma: no cover
    _prepare_child(log_path, env, parent_pid)
    from bench import registry
    from bench.measure import measure

    for task in _tasks(conn):
        spec = registry.get(task.kernel)
        conn.send(measure(spec, task.problem, check=task.verify, peak_tflops=task.peak_tflops, timer=task.timer))


# Top-level packages of a tfla-bench tree: a worker serving another tree (``root``) imports these from there
# (``baselines`` is where older trees kept their registry entries).
TREE_PACKAGES = ("bench", "kernels", "specs", "baselines", "plots", "cli", "tests")


def _serve_tree(conn: Connection, log_path: str, env: dict[str, str], parent_pid: int, root: str) -> None:
    """``_serve`` for the tree at ``root`` (e.g. another commit's worktree): its registry, kernels and ``measure``
    replace this tree's in the process. Tasks and results travel as plain dicts, so trees of other versions
    (another ``Measurement`` or ``Task``) can serve."""  # pragma: no cover - child process
    _prepare_child(log_path, env, parent_pid)
    for name in [m for m in sys.modules if m.split(".")[0] in TREE_PACKAGES]:
        del sys.modules[name]
    sys.path.insert(0, root)
    os.chdir(root)
    import dataclasses

    from bench import registry  # the tree's own
    from bench.measure import measure
    from bench.problem import Problem as TreeProblem

    for task in _tasks(conn):
        spec = registry.get(task["kernel"])
        problem = TreeProblem(**task["problem"])
        options = {"check": task["verify"], "peak_tflops": task["peak_tflops"]}
        try:
            m = measure(spec, problem, timer=task["timer"], **options)
        except TypeError:  # a tree from before the timer option
            m = measure(spec, problem, **options)
        conn.send(dataclasses.asdict(m))


def worker_env(device: str) -> dict[str, str]:
    """Environment of a worker: Triton's interpreter for CPU problems."""
    return {"TRITON_INTERPRET": "1"} if device == "cpu" else {}


def _task_dict(task: Task) -> dict[str, object]:
    return {
        "kernel": task.kernel,
        "problem": task.problem.as_dict(),
        "verify": task.verify,
        "peak_tflops": task.peak_tflops,
        "timer": task.timer,
    }


def _measurement(reply: dict[str, object]) -> Measurement:
    """A ``Measurement`` from another tree's fields (fields it lacks stay ``None``; ones this tree lacks dropped)."""
    known = {f.name for f in dataclasses.fields(Measurement)}
    return Measurement(**{k: v for k, v in reply.items() if k in known})  # type: ignore[arg-type]


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_logs(folder: str | Path | None = None) -> int:
    """Delete worker logs whose sweep is gone (a sweep killed by ``SIGKILL`` cannot remove its own); returns how
    many. A log is named ``bench-worker-<sweep pid>-<random>.log``."""
    removed = 0
    for log in Path(folder or tempfile.gettempdir()).glob(f"{LOG_PREFIX}*.log"):
        pid = log.name[len(LOG_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            log.unlink(missing_ok=True)
            removed += 1
    return removed


class KernelWorker:
    """A restartable worker process; ``run(task, timeout_s)`` always returns a ``Measurement``."""

    def __init__(self, device: str, root: str | Path | None = None, env: dict[str, str] | None = None) -> None:
        self.device = device
        self.root = None if root is None else str(root)  # serve another tree's kernels (``_serve_tree``)
        self.env = dict(env or {})  # added to the worker's environment (e.g. the GPU it is pinned to)
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        fd, log = tempfile.mkstemp(prefix=f"{LOG_PREFIX}{os.getpid()}-", suffix=".log")
        os.close(fd)
        self._log = Path(log)

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        args = (child, str(self._log), {**worker_env(self.device), **self.env}, os.getpid())
        if self.root is None:
            self._proc = self._ctx.Process(target=_serve, args=args, daemon=True)
        else:
            self._proc = self._ctx.Process(target=_serve_tree, args=(*args, self.root), daemon=True)
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
            self._conn.send(task if self.root is None else _task_dict(task))
            if self._conn.poll(timeout_s):
                reply = self._conn.recv()
                return reply if isinstance(reply, Measurement) else _measurement(reply)
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

    def interrupt(self) -> None:
        """SIGKILL the worker process now, from any thread: a ``run`` waiting in another thread returns a
        ``crash``; the clean-up (``close``) is the owner's."""
        proc = self._proc
        if proc is not None and proc.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)

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

    def close(self, kill: bool = False) -> None:
        """Stop the worker (``kill``: at once, e.g. on an interrupt) and remove its log."""
        self.stop(kill=kill)
        self._log.unlink(missing_ok=True)
