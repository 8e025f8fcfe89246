"""The sweep runner: resume, isolation, one row written per measured config, progress and summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import envinfo, store
from bench.measure import Measurement, check_timer, host_bound
from bench.problem import Problem
from bench.registry import KernelSpec
from bench.worker import KernelWorker, Task


def precheck(spec: KernelSpec, problem: Problem) -> Measurement | None:
    """A row decided before launching anything (unavailable / unsupported), or ``None`` to run."""
    if problem.device not in spec.devices:
        return Measurement("unavailable", f"{spec.name} runs on {', '.join(spec.devices)} only")
    if problem.device == "cuda" and (reason := _cuda_reason()):
        return Measurement("unavailable", reason)
    if reason := spec.available():
        return Measurement("unavailable", reason)
    if reason := spec.supports(problem):
        return Measurement("unsupported", reason)
    return None


def _cuda_reason() -> str | None:
    from bench.registry import cuda_reason

    return cuda_reason()


def make_row(spec: KernelSpec, problem: Problem, m: Measurement, meta: envinfo.RunMetadata) -> dict[str, object]:
    row: dict[str, object] = {"kernel": spec.name, "family": spec.family, **problem.as_dict()}
    row["tokens"] = problem.tokens
    row["kernel_params"] = json.dumps(spec.params(problem), sort_keys=True)
    row.update(asdict(m))
    if row["flops"] is None:
        row["flops"], row["bytes"] = spec.flops(problem), spec.bytes(problem)
    row.update(meta.as_dict())
    return row


def sweep(
    configs: list[tuple[KernelSpec, Problem]],
    out: str | Path,
    *,
    force: bool = False,
    verify: bool = False,
    timeout_s: float = 300.0,
    timer: str = "events",
    console: Console | None = None,
    on_row: Callable[[dict[str, object]], None] | None = None,
) -> list[dict[str, object]]:
    """Measure every config not yet in ``out`` (all of them with ``force``); returns the new rows. GPU configs
    are timed by ``timer`` (one of ``bench.measure.TIMERS``).

    Each row is appended to ``out`` as soon as it is measured, so an interrupted sweep keeps its rows
    and the same call resumes it. ``unavailable`` rows, and GPU rows timed by another timer, are measured
    again on resume.
    """
    check_timer(timer)
    console = console or Console(stderr=True)
    done = set() if force else store.existing_keys(out, timer=timer)
    todo = [(s, p) for s, p in configs if (s.name, *p.as_dict().values()) not in done]
    skipped = len(configs) - len(todo)
    if skipped:
        console.print(f"[dim]resume: {skipped} of {len(configs)} configs already in {out}[/dim]")
    devices = {p.device for _, p in todo}
    meta = envinfo.collect(next(iter(devices)) if devices else "cpu")
    peaks: dict[str, tuple[float, float]] = {}
    rows: list[dict[str, object]] = []
    workers: dict[str, KernelWorker] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("sweep", total=len(todo))
            for spec, problem in todo:
                progress.update(
                    bar,
                    description=f"{spec.name} S={problem.seq_len} B={problem.batch} "
                    f"H={problem.heads} L={problem.chunk_size} {problem.dtype} {problem.mode}",
                )
                m = precheck(spec, problem)
                run_meta = meta
                if m is None:
                    if problem.device == "cuda" and problem.dtype not in peaks:
                        peaks[problem.dtype] = envinfo.measure_peaks(problem.dtype)
                    peak = peaks.get(problem.dtype, (None, None))
                    run_meta = envinfo.RunMetadata(
                        **{**meta.as_dict(), "peak_tflops": peak[0], "peak_bandwidth_gbs": peak[1]}
                    )
                    worker = workers.setdefault(problem.device, KernelWorker(problem.device))
                    t0 = time.perf_counter()
                    m = worker.run(Task(spec.name, problem, verify, peak[0], timer), timeout_s)
                    if m.status in ("crash", "timeout"):
                        console.print(
                            f"[yellow]{spec.name} {problem}: {m.status} after {time.perf_counter() - t0:.0f} s[/yellow]"
                        )
                    if m.status != "ok" or spec is not _next_spec(todo, spec, problem):
                        worker.stop(kill=m.status != "ok")  # a fresh process for the next kernel
                row = make_row(spec, problem, m, run_meta)
                store.append(out, [row], replace=True)  # one row per config: a retry replaces the old one
                rows.append(row)
                if on_row:
                    on_row(row)
                progress.advance(bar)
    finally:
        for w in workers.values():
            w.close()
    return rows


def _next_spec(todo: list[tuple[KernelSpec, Problem]], spec: KernelSpec, problem: Problem) -> KernelSpec | None:
    idx = todo.index((spec, problem))
    return todo[idx + 1][0] if idx + 1 < len(todo) else None


def fmt(value: object, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def summary_table(rows: list[dict[str, object]], title: str = "sweep") -> Table:
    """One line per row; host ms marked ``*`` where the runtime is host-bound (``bench.measure.host_bound``)."""
    bound = any(_host_bound(r) for r in rows)
    caption = "* host-bound: the host's time per call reaches the runtime (try --timer cudagraph)" if bound else None
    table = Table(title=title, caption=caption)
    for col in ("kernel", "mode", "dtype", "B", "H", "S", "L", "status", "ms", "host ms", "TFLOP/s", "mem GB", "err"):
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
            str(r["status"]) if r["status"] == "ok" else f"[red]{r['status']}[/red]",
            fmt(r["runtime_ms"]),
            _host_cell(r),
            fmt(r["tflops"]),
            fmt(mem / 1e9 if isinstance(mem, (int, float)) else None),
            fmt(r["error"], ".1e"),
        )
    return table


def _host_bound(row: dict[str, object]) -> bool:
    return host_bound(row["runtime_ms"], row.get("host_ms"), row.get("timer"))  # type: ignore[arg-type]


def _host_cell(row: dict[str, object]) -> str:
    """The row's host ms per call, in yellow with a ``*`` where its runtime is host-bound."""
    host = fmt(row.get("host_ms"))
    return f"[yellow]{host}*[/yellow]" if _host_bound(row) else host
