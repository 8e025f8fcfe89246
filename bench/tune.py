"""``bench tune``: tile trials of our kernels, one store row per trial.

For each kernel of ``kernels.mlstm.tiles.KERNELS`` asked for, each candidate of its search space
(``kernels.mlstm.tile_search``) replaces that kernel's tiles in the current table (``choose_tiles``) while the
other kernels keep theirs; one forward + backward pass is profiled (``bench.profile.kernel_times``) and its
outputs compared with the table's. On a GPU the candidates compile first in ``jobs`` spawned processes on a
one-head problem of the same specialization, so the timed passes only hit Triton's cache.

Rows use the store's schema: ``runtime_ms`` is the pass's summed kernel time (``timer`` ``profiler``: no host
time), ``error`` the worst relative difference of the outputs and gradients from the table's, and
``kernel_params`` (JSON) holds ``tuned`` (the kernel whose tiles changed, ``table`` for the table itself),
``tiles`` (every kernel's ``KernelTiles``) and ``kernel_us`` (each kernel's time per pass; empty on the CPU, where
the interpreter runs them). A trial that fails to compile, raises or differs beyond the dtype's tolerance is a row
with status ``error`` and the reason. Rows are appended as they are measured; a second call skips the trials in
``out`` (same kernel, problem, tuned kernel and tiles).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import envinfo, store
from bench.measure import Measurement
from bench.problem import Problem
from bench.profile import kernel_times
from bench.registry import get
from bench.runner import interruptible, make_row
from bench.verify import TOLERANCE  # a trial's outputs against the table's, by dtype

TUNABLE = ("tfla.mlstm_exp", "tfla.mlstm_sig")
TIMER = "profiler"


@dataclass(frozen=True)
class Trial:
    """One pass to time: ``tuned`` is the kernel whose tiles ``tiles`` changed (``None``: the table itself)."""

    tuned: str | None
    tiles: Any  # kernels.mlstm.tiles.TileConfig

    @property
    def key(self) -> str:
        """What identifies the trial in a results file (``trial_key``)."""
        return trial_key(self.tuned or "table", asdict(self.tiles))


def trial_key(tuned: str, tiles: dict) -> str:
    """A trial's identity in a results file: the tuned kernel (``table`` for the table) and every kernel's tiles,
    as JSON."""
    return json.dumps({"tuned": tuned, "tiles": tiles}, sort_keys=True)


def variant_of(kernel: str) -> str:
    """``exp`` or ``sig`` of a ``TUNABLE`` kernel name; ``ValueError`` naming the allowed ones otherwise."""
    if kernel not in TUNABLE:
        raise ValueError(f"--kernel must be one of {', '.join(TUNABLE)}; got {kernel!r}")
    return kernel.rsplit("_", 1)[1]


def table_for(problem: Problem) -> Any:
    """The tile table ``mlstm_tfla`` would use for ``problem`` on this machine."""
    import torch

    from kernels.mlstm.launch import gpu_sm_count, interpreting
    from kernels.mlstm.tiles import choose_tiles

    dtype = getattr(torch, problem.dtype)
    sms = gpu_sm_count(torch.device(problem.device)) if problem.device == "cuda" else 0
    return choose_tiles(
        problem.chunk_size,
        problem.head_dim_qk,
        problem.head_dim_v,
        interpreting(),
        dtype,
        problem.batch * problem.heads,
        sms,
    )


def plan(
    problem: Problem, kernels: list[str], family: str, pipelined_states: bool = False, limit: int | None = None
) -> list[Trial]:
    """The table's trial first, then per kernel (in ``kernels``' order) up to ``limit`` candidates of ``family``
    that differ from the table's tiles. ``ValueError`` naming the kernel or family when unknown."""
    from kernels.mlstm.tile_search import search_space

    base = table_for(problem)
    trials = [Trial(None, base)]
    for kernel in kernels:
        space = search_space(
            kernel, family, problem.chunk_size, problem.head_dim_qk, problem.head_dim_v, pipelined_states
        )
        found = [t for t in space if t != getattr(base, kernel)]
        trials += [Trial(kernel, replace(base, **{kernel: t})) for t in found[:limit]]
    return trials


def _inputs(problem: Problem, seed: int = 0) -> list[Any]:
    """``q, k, v, i, f`` of our spec at ``problem``, seeded, as leaves that require gradients."""
    import torch

    torch.manual_seed(seed)
    q, k, v, i, f, _ = get("tfla.mlstm_sig").make_inputs(problem)
    return [x.requires_grad_(True) for x in (q, k, v, i, f)]


def _pass(inputs: list[Any], dh: Any, variant: str, chunk: int, tiles: Any) -> list[Any]:
    """One forward and backward pass with ``tiles``: ``[h, dq, dk, dv, di, df]``."""
    from kernels.mlstm.tfla import mlstm_tfla

    for x in inputs:
        x.grad = None
    h = mlstm_tfla(*inputs, variant=variant, chunk_size=chunk, tiles=tiles)
    h.backward(dh)
    return [h.detach()] + [x.grad for x in inputs]


def compile_one(problem: Problem, variant: str, tiles: Any) -> str:
    """Run ``tiles`` once on a one-head, batch-1 copy of ``problem`` so Triton compiles it; '' or the error."""
    import torch

    try:
        small = replace(problem, batch=1, heads=1)
        inputs = _inputs(small)
        _pass(inputs, torch.randn_like(inputs[2]), variant, problem.chunk_size, tiles)
        torch.cuda.synchronize()
        return ""
    except Exception as e:  # noqa: BLE001 - reported per trial
        return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def rows_of(out: str | Path, kernel: str, problem: Problem) -> list[dict[str, object]]:
    """The tune rows in ``out`` of ``kernel`` at ``problem`` (fwbw), NaN read as ``None``."""
    problem = replace(problem, mode="fwbw")
    if not store.exists(out):
        return []
    frame = store.load(out)
    mine = frame[frame.kernel == kernel]
    for name, value in problem.as_dict().items():
        mine = mine[mine[name] == value]
    return [r for r in store.records(mine) if "tiles" in json.loads(str(r["kernel_params"] or "{}"))]


def row_key(row: dict[str, object]) -> str:
    """``Trial.key`` of a tune row."""
    p = json.loads(str(row["kernel_params"]))
    return trial_key(p["tuned"], p["tiles"])


def _short_names(times: dict[str, float]) -> dict[str, float]:
    """Kernel time per pass (us) by ``KERNELS`` name, from the profile's Triton function names."""
    from kernels.mlstm.tile_search import KERNEL_FUNCTIONS

    return {
        kernel: sum(us for name, us in times.items() if function in name)
        for kernel, function in KERNEL_FUNCTIONS.items()
        if any(function in name for name in times)
    }


def run_tune(
    kernel: str,
    problem: Problem,
    kernels: list[str],
    family: str,
    out: str | Path,
    *,
    passes: int = 5,
    jobs: int = 8,
    limit: int | None = None,
    pipelined_states: bool = False,
    console: Console | None = None,
    on_row: Callable[[dict[str, object]], None] | None = None,
) -> list[dict[str, object]]:
    """Time every trial of ``plan`` not yet in ``out`` and append its row there; returns the new rows.
    ``ValueError`` before any work on a bad kernel, family, count or problem (``Problem.validate``);
    ``bench.runner.SweepInterrupted`` on SIGINT / SIGTERM / SIGHUP, the rows measured so far kept."""
    import torch

    from kernels.mlstm.accuracy import relative_error

    variant = variant_of(kernel)
    problem = replace(problem, mode="fwbw").validate()
    for name, value in (("--passes", passes), ("--jobs", jobs), ("--limit", 1 if limit is None else limit)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if problem.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible")
    out = Path(out)
    store.check_writable(out)
    spec = get(kernel)
    if (reason := spec.supports(problem)) is not None:
        raise ValueError(f"{kernel} does not support this problem: {reason}")
    console = console or Console(stderr=True)
    done = {row_key(r) for r in rows_of(out, kernel, problem)}
    trials = [t for t in plan(problem, kernels, family, pipelined_states, limit) if t.key not in done]
    if done:
        console.print(f"resume: {len(done)} trials already in {out}", markup=False)
    meta = envinfo.collect(problem.device)
    compile_errors = [""] * len(trials)
    if problem.device == "cuda" and trials:
        with ProcessPoolExecutor(min(jobs, len(trials)), mp_context=mp.get_context("spawn")) as pool:
            compile_errors = list(pool.map(compile_one, *zip(*[(problem, variant, t.tiles) for t in trials])))
    rows: list[dict[str, object]] = []
    inputs = _inputs(problem)
    dh = torch.randn_like(inputs[2])
    reference = _pass(inputs, dh, variant, problem.chunk_size, table_for(problem))
    sync = torch.cuda.synchronize if problem.device == "cuda" else (lambda: None)
    with interruptible(out, rows) as interrupts:
        for trial, compile_error in zip(trials, compile_errors):
            params = {"variant": variant, "chunk_size": problem.chunk_size, "tuned": trial.tuned or "table"}
            params["tiles"] = asdict(trial.tiles)
            m: Measurement
            if compile_error:
                m = Measurement("error", f"compile: {compile_error}", timer=TIMER)
            else:
                try:
                    outputs = _pass(inputs, dh, variant, problem.chunk_size, trial.tiles)
                    sync()
                    worst = max(relative_error(a, b) for a, b in zip(outputs, reference))
                    times = {
                        t.name: t.us
                        for t in kernel_times(
                            lambda t=trial: _pass(inputs, dh, variant, problem.chunk_size, t.tiles),
                            passes,
                            problem.device,
                        )
                    }
                    params["kernel_us"] = _short_names(times)
                    total_ms = sum(times.values()) / 1e3
                    wrong = not worst <= TOLERANCE[problem.dtype]
                    m = Measurement(
                        "error" if wrong else "ok",
                        f"outputs differ from the table's by {worst:.2e}" if wrong else "",
                        runtime_ms=None if wrong else total_ms,
                        error=worst,
                        timer=TIMER,
                    )
                except Exception as err:  # noqa: BLE001 - every failing trial becomes a row
                    m = Measurement("error", f"{type(err).__name__}: {err}"[:2000], timer=TIMER)
            row = make_row(spec, problem, m, meta) | {"kernel_params": json.dumps(params, sort_keys=True)}
            with interrupts.writing():
                store.append(out, [row])
                rows.append(row)
            if on_row:
                on_row(row)
    return rows


def _us(row: dict[str, object], params: dict, kernel: str) -> float | None:
    """The trial's time of ``kernel`` per pass (us); on the CPU, where no kernel is named, the whole pass's."""
    if kernel in params.get("kernel_us", {}):
        return params["kernel_us"][kernel]
    runtime = row.get("runtime_ms")
    return None if params.get("kernel_us") or runtime is None else float(runtime) * 1e3  # type: ignore[arg-type]


def best_per_kernel(rows: list[dict[str, object]]) -> list[tuple[str, float | None, float | None, dict, int]]:
    """Per tuned kernel: (kernel, best trial's us, the table's us, the best tiles, failed trials), from the rows
    of one problem (the table's row is the reference)."""
    params = [(r, json.loads(str(r["kernel_params"]))) for r in rows]
    table = next(((r, p) for r, p in params if p["tuned"] == "table" and r["status"] == "ok"), None)
    out = []
    for kernel in dict.fromkeys(p["tuned"] for _, p in params if p["tuned"] != "table"):
        mine = [(r, p) for r, p in params if p["tuned"] == kernel]
        timed = [(us, p) for r, p in mine if r["status"] == "ok" and (us := _us(r, p, kernel)) is not None]
        failed = sum(r["status"] != "ok" for r, _ in mine)
        base = _us(*table, kernel) if table else None
        if not timed:
            out.append((kernel, None, base, {}, failed))
            continue
        us, best = min(timed, key=lambda x: x[0])
        out.append((kernel, us, base, best["tiles"][kernel], failed))
    return out


def tune_table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="bench tune: best tiles per kernel (us per pass; the table's in the next column)")
    for col in ("kernel", "best us", "table us", "ratio", "best tiles", "failed"):
        table.add_column(col)
    for kernel, best, base, tiles, failed in best_per_kernel(rows):
        ratio = f"{best / base:.3f}" if best and base else "-"
        shown = " ".join(f"{k}={v}" for k, v in tiles.items() if v is not None) or "-"
        table.add_row(
            kernel,
            "-" if best is None else f"{best:.1f}",
            "-" if base is None else f"{base:.1f}",
            ratio,
            shown,
            str(failed),
        )
    return table
