"""The sweep runner: resume, isolation, one row written per measured config, progress and summary."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import envinfo, store
from bench.flops import min_input_bytes
from bench.measure import Measurement, check_timer, host_bound
from bench.problem import Problem
from bench.registry import KernelSpec
from bench.worker import Task, remove_stale_logs


class SweepInterrupted(Exception):
    """A sweep stopped by SIGINT / SIGTERM / SIGHUP after its cleanup: every row measured before is in the file."""

    def __init__(self, signum: int, rows_kept: int, out: Path) -> None:
        self.signum, self.rows_kept, self.out = signum, rows_kept, out
        super().__init__(f"interrupted: {rows_kept} rows kept in {out} ({signal.Signals(signum).name})")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Interrupts:
    """Turns the interrupting signals into ``_Stop`` in the sweep's thread; inside ``writing()`` (a row being
    appended) the signal waits until the row is written, so no measured row is lost."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._writing = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in INTERRUPTS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: object) -> None:
        self.pending = signum
        if not self._writing:
            raise _Stop(signum)

    def hold(self) -> None:
        """From now on, remember a signal instead of raising it."""
        self._writing = True

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self.pending is not None:
            raise _Stop(self.pending)


class _Stop(BaseException):  # BaseException: no ``except Exception`` on the way swallows it
    def __init__(self, signum: int) -> None:
        self.signum = signum


def check_timeout(timeout_s: object) -> None:
    """``ValueError`` naming the timeout unless it is a finite number of seconds above zero."""
    number = isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
    if not number or not math.isfinite(timeout_s) or timeout_s <= 0:  # type: ignore[arg-type]
        raise ValueError(f"timeout must be a finite number of seconds above 0; got {timeout_s!r}")


def precheck(spec: KernelSpec, problem: Problem) -> Measurement | None:
    """A row decided before launching anything (unavailable / unsupported), or ``None`` to run."""
    if problem.device not in spec.devices:
        return Measurement("unavailable", f"{spec.name} runs on {', '.join(spec.devices)} only")
    if reason := precheck_device(problem):
        return Measurement("unavailable", reason)
    if reason := spec.available():
        return Measurement("unavailable", reason)
    if reason := memory_reason(problem):
        return Measurement("unsupported", reason)
    if reason := spec.supports(problem):
        return Measurement("unsupported", reason)
    return None


def memory_reason(problem: Problem, capacity: int | None = None) -> str | None:
    """Why ``problem``'s tensors cannot fit the device's memory (``capacity`` bytes; default: this machine's), or
    ``None``: refused before anything is allocated."""
    capacity = envinfo.device_memory_bytes(problem.device) if capacity is None else capacity
    need = min_input_bytes(
        problem.batch,
        problem.heads,
        problem.seq_len,
        problem.head_dim_qk,
        problem.head_dim_v,
        4 if problem.dtype == "float32" else 2,
        problem.mode,
    )
    if capacity and need > capacity:
        return (
            f"the inputs{'' if problem.mode == 'fw' else ' and their gradients'} need at least {need / 1e9:.3g} GB; "
            f"the {problem.device} device has {capacity / 1e9:.3g} GB"
        )
    return None


def with_peaks(
    meta: envinfo.RunMetadata, peaks: dict[str, tuple[float, float]], problem: Problem
) -> envinfo.RunMetadata:
    """``meta`` with the device's measured peaks in ``problem``'s dtype, measured once per dtype of a GPU run (cached
    in ``peaks``); no peaks on the CPU."""
    if problem.device == "cuda" and problem.dtype not in peaks:
        peaks[problem.dtype] = envinfo.measure_peaks(problem.dtype)
    peak_tflops, peak_gbs = peaks.get(problem.dtype, (None, None))
    return envinfo.RunMetadata(**{**meta.as_dict(), "peak_tflops": peak_tflops, "peak_bandwidth_gbs": peak_gbs})


def _cuda_reason() -> str | None:
    from bench.registry import cuda_reason

    return cuda_reason()


KNOWN_ISSUE = "known issue: "  # how an ok row's message starts when its kernel declares one at its config


def make_row(spec: KernelSpec, problem: Problem, m: Measurement, meta: envinfo.RunMetadata) -> dict[str, object]:
    row: dict[str, object] = {"kernel": spec.name, "family": spec.family, **problem.as_dict()}
    row["tokens"] = problem.tokens
    row["kernel_params"] = json.dumps(spec.params(problem), sort_keys=True)
    row.update(asdict(m))
    if m.status == "ok" and (issue := spec.known_issue(problem)):  # measured, but the reader must know
        row["message"] = "; ".join(text for text in (f"{KNOWN_ISSUE}{issue.what}", m.message) if text)
    if row["flops"] is None:
        row["flops"], row["bytes"] = spec.flops(problem), spec.bytes(problem)
    row.update(meta.as_dict())
    return row


def sweep(
    configs: list[tuple[KernelSpec, Problem]],
    out: str | Path,
    *,
    force: bool = False,
    retry: tuple[str, ...] = (),
    verify: bool = False,
    timeout_s: float = 300.0,
    timer: str = "events",
    console: Console | None = None,
    on_row: Callable[[dict[str, object]], None] | None = None,
    parallel: int | None = 1,
    ray: str | None = None,
    share_gpus: bool = False,
) -> list[dict[str, object]]:
    """Measure every config not yet in ``out`` (all of them with ``force``); returns the new rows. GPU configs
    are timed by ``timer`` (one of ``bench.measure.TIMERS``). ``parallel`` workers measure at once, each on a GPU
    of its own (``None``: every visible GPU, or every CPU core; ``bench.executor``); ``ray`` (an address,
    ``auto`` or ``local``) runs each config as a Ray task instead. ``ValueError`` before any work when the configs
    cannot be placed so (``bench.executor.check_placement``). ``share_gpus`` lets several workers share a GPU: for
    untimed work only (``bench verify``), since their rows' times are not clean.

    Each row is appended to ``out`` as soon as it is measured, so an interrupted sweep keeps its rows
    and the same call resumes it. ``unavailable`` rows, rows whose status is in ``retry`` (``store.RETRYABLE``),
    GPU rows timed by another timer and, with ``verify``, ``ok`` rows without an error value are measured again on
    resume; each new row replaces its config's old one. ``out`` is checked before anything is
    measured (``ValueError``: ``store.StoreError`` / ``store.SchemaError``). SIGINT, SIGTERM and SIGHUP stop the
    workers and raise ``SweepInterrupted`` once the rows measured so far are in ``out``.
    """
    check_timer(timer)
    check_timeout(timeout_s)
    out = Path(out)
    store.check_writable(out)
    from bench.executor import check_placement

    check_placement({p.device for _, p in configs}, parallel, ray, share_gpus)
    console = console or Console(stderr=True)
    remove_stale_logs()
    rows: list[dict[str, object]] = []
    with interruptible(out, rows) as interrupts:
        store.compact(out)
        todo = _todo(configs, out, force, verify, timer, retry)
        skipped = len(configs) - len(todo)
        if skipped:
            console.print(f"[dim]resume: {skipped} of {len(configs)} configs already in {out}[/dim]")
        _run(todo, out, verify, timeout_s, timer, console, on_row, rows, interrupts, parallel, ray, share_gpus)
    return rows


@contextlib.contextmanager
def interruptible(out: Path, rows: list[dict[str, object]]) -> Iterator[_Interrupts]:
    """The block's SIGINT / SIGTERM / SIGHUP become ``SweepInterrupted`` once ``out`` is compacted; ``rows`` (the
    rows measured so far) gives its count. Rows appended inside ``interrupts.writing()`` are never cut off."""
    with _Interrupts() as interrupts:
        try:
            try:
                yield interrupts
            finally:
                interrupts.hold()  # a signal during the clean-up is remembered, not raised
                with contextlib.suppress(OSError):
                    store.compact(out)
        except _Stop as stop:
            raise SweepInterrupted(stop.signum, len(rows), out) from None
        if interrupts.pending is not None:
            raise SweepInterrupted(interrupts.pending, len(rows), out)


def _todo(
    configs: list[tuple[KernelSpec, Problem]],
    out: Path,
    force: bool,
    verify: bool,
    timer: str,
    retry: tuple[str, ...] = (),
) -> list[tuple[KernelSpec, Problem]]:
    """The configs to measure: those not in ``out`` (every one with ``force``) or whose row's status is in
    ``retry``; with ``verify`` also those whose ``ok`` row has no error value, for kernels that have a reference."""
    if force:
        return list(configs)
    store.check_retry(retry)
    done = store.existing_keys(out, retry=store.RETRY_STATUSES + tuple(retry), timer=timer)
    if verify:
        verifiable = {s.name for s, _ in configs if s.reference is not None}
        done -= {key for key in store.keys_without_error(out) if key[0] in verifiable}
    return [(s, p) for s, p in configs if (s.name, *p.as_dict().values()) not in done]


def _run(
    todo: list[tuple[KernelSpec, Problem]],
    out: Path,
    verify: bool,
    timeout_s: float,
    timer: str,
    console: Console,
    on_row: Callable[[dict[str, object]], None] | None,
    rows: list[dict[str, object]],
    interrupts: _Interrupts,
    parallel: int | None,
    ray: str | None = None,
    share_gpus: bool = False,
) -> None:
    """Measure ``todo`` in the slots of ``bench.executor.local_slots`` (one worker each, restarted per kernel), or
    as Ray tasks with ``ray`` (a cluster address, ``auto`` or ``local``), appending each row to ``out`` and to
    ``rows`` as it arrives. Several slots, and Ray, take the configs longest-first."""
    from bench.executor import LocalPool, RayPool, local_slots, longest_first

    devices = {p.device for _, p in todo}  # one, unless a single local slot serves several (check_placement)
    device = next(iter(devices)) if devices else "cpu"
    meta = envinfo.collect(device)
    metas: dict[str, envinfo.RunMetadata] = {}

    def task(spec: KernelSpec, problem: Problem) -> Task:
        return Task(spec.name, problem, verify, metas.get(problem.dtype, meta).peak_tflops, timer)

    pool: LocalPool | RayPool
    if ray is not None:  # the peaks, like every row's metadata, are taken where Ray runs the task
        pool = RayPool(ray, device, task, meta, timeout_s)
        label, order = f"sweep on Ray ({pool.capacity} at once)", longest_first(todo)
    else:
        slots = local_slots(parallel, device, share_gpus)
        peaks: dict[str, tuple[float, float]] = {}
        metas.update({p.dtype: with_peaks(meta, peaks, p) for _, p in todo if precheck_device(p) is None})
        pool = LocalPool(slots, task, lambda p: metas.get(p.dtype, meta), precheck, timeout_s)
        label = "sweep" if len(slots) == 1 else f"sweep, {len(slots)} workers"
        order = longest_first(todo) if len(slots) > 1 else todo
    interrupted = True
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(label, total=len(todo))
            for result in pool.results(order):
                spec, problem, m = result.spec, result.problem, result.measurement
                if m.status in ("crash", "timeout"):
                    console.print(f"[yellow]{spec.name} {problem}: {m.status} after {result.seconds:.0f} s[/yellow]")
                where = {"gpu_index": result.slot.gpu, "config_s": result.seconds}
                row = make_row(spec, problem, m, result.meta) | where
                with interrupts.writing():
                    store.append(out, [row], replace=True)  # one row per config: a retry replaces the old one
                    rows.append(row)
                if on_row:
                    on_row(row)
                progress.update(
                    bar,
                    advance=1,
                    description=f"{label}: {spec.name} S={problem.seq_len} B={problem.batch} H={problem.heads} "
                    f"L={problem.chunk_size} {problem.dtype} {problem.mode}",
                )
        interrupted = False
    finally:
        pool.close(kill=interrupted)


def precheck_device(problem: Problem) -> str | None:
    """Why ``problem``'s device cannot run anything here (no GPU for a CUDA problem), else ``None``."""
    return _cuda_reason() if problem.device == "cuda" else None


def fmt(value: object, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def summary_table(rows: list[dict[str, object]], title: str = "sweep") -> Table:
    """One line per row; host ms marked ``*`` where the runtime is host-bound (``bench.measure.host_bound``); ``s``
    is the seconds the config took in its worker (worker start-up, compiles and autotuning included)."""
    notes = []
    if any(_host_bound(r) for r in rows):
        notes.append("* host-bound: the host's time per call reaches the runtime (try --timer cudagraph)")
    if any(_known_issue(r) for r in rows):
        notes.append("ok! measured, with a known issue of the kernel at this config (the row's message says which)")
    table = Table(title=title, caption="\n".join(notes) or None)
    columns = ("kernel", "mode", "dtype", "B", "H", "S", "L", "status", "ms", "host ms", "TFLOP/s", "mem GB", "err")
    for col in (*columns, "s"):  # s: the config's seconds in its worker
        table.add_column(col, justify="right" if col not in ("kernel", "status", "mode", "dtype") else "left")
    for r in rows:
        mem = r["peak_mem_bytes"]
        table.add_row(
            str(r["kernel"]),
            str(r["mode"]),
            str(r["dtype"]),
            str(r["batch"]),
            str(r["heads"]),
            str(r["seq_len"]),
            str(r["chunk_size"] or "-"),
            _status_cell(r),
            fmt(r["runtime_ms"]),
            _host_cell(r),
            fmt(r["tflops"]),
            fmt(mem / 1e9 if isinstance(mem, (int, float)) else None),
            fmt(r["error"], ".1e"),
            fmt(r.get("config_s"), ".0f"),
        )
    return table


def _known_issue(row: dict[str, object]) -> bool:
    return row["status"] == "ok" and str(row.get("message") or "").startswith(KNOWN_ISSUE)


def _status_cell(row: dict[str, object]) -> str:
    if _known_issue(row):
        return "[yellow]ok![/yellow]"
    return str(row["status"]) if row["status"] == "ok" else f"[red]{row['status']}[/red]"


def _host_bound(row: dict[str, object]) -> bool:
    return host_bound(row["runtime_ms"], row.get("host_ms"), row.get("timer"))  # type: ignore[arg-type]


def _host_cell(row: dict[str, object]) -> str:
    """The row's host ms per call, in yellow with a ``*`` where its runtime is host-bound."""
    host = fmt(row.get("host_ms"))
    return f"[yellow]{host}*[/yellow]" if _host_bound(row) else host
