"""``bench``: the command line of tfla-bench (a thin layer over ``bench/`` and ``plots/``)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from bench.profile import KernelFloor

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Benchmark TFLA mLSTM kernels against the best baselines."
)
console = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)
TIMER_HELP = (
    "GPU timer: events (CUDA events per call, launch overhead included where the host is slower) or "
    "cudagraph (the calls replayed from a CUDA graph: kernel time alone)"
)
RETRY_HELP = "any of error, crash, timeout, oom, unsupported; unavailable rows are always measured again"


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {escape(message)}")  # a message may hold brackets (".[ray]", "[1, 2]")
    raise typer.Exit(code)


def _ints(value: Optional[str], name: str) -> Optional[list[int]]:
    if value is None:
        return None
    try:
        values = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        _fail(f"--{name} takes comma-separated integers, got {value!r}")
    if not values:
        _fail(f"--{name} needs at least one integer, got {value!r}")
    return values


def _strs(value: Optional[str], name: str) -> Optional[list[str]]:
    if value is None:
        return None
    values = [x.strip() for x in value.split(",") if x.strip()]
    if not values:
        _fail(f"--{name} needs at least one value, got {value!r}")
    return values


def _output_folder(out: Path, name: str = "--out") -> None:
    """Exit 2 unless ``out`` is a folder or can become one."""
    if out.exists() and not out.is_dir():
        _fail(f"{name} must be a folder for the figures; {str(out)!r} is a file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                _fail(f"{name} {str(out)!r} cannot be made: {str(parent)!r} is a file")
            break


@app.callback()
def _startup() -> None:
    """Loads the plugins named in TFLA_BENCH_PLUGINS first, so that a bad one is an exit 2 before any work."""
    from bench.registry import PluginError, check_plugins, plugin_modules

    if plugin_modules():
        try:
            check_plugins()
        except PluginError as e:
            _fail(str(e))


@app.command("list")
def list_kernels() -> None:
    """Every registered kernel: role (ours, baseline, reference), family, devices, availability here and the
    reason when unavailable.

    ``yes*``: available with a known problem on this machine (e.g. a backward that is broken here).
    """
    from bench.registry import all_specs, cuda_reason

    gpu = cuda_reason()
    table = Table(title="registered kernels")
    for col in ("kernel", "role", "family", "devices", "available", "reason / description"):
        table.add_column(col)
    for spec in all_specs():
        reason = spec.available()
        if reason is None and "cpu" not in spec.devices and gpu:
            reason = gpu
        caveat = spec.caveat() if reason is None else None
        available = "[red]no[/red]" if reason else ("[yellow]yes*[/yellow]" if caveat else "yes")
        row = (spec.name, spec.role, spec.family, ",".join(spec.devices), available)
        table.add_row(*row, reason or caveat or spec.description)
    console.print(table)


@app.command()
def sweep(
    preset: Annotated[
        Optional[str],
        typer.Option(help="preset name in bench/presets or a TOML path (default: gpu with a GPU, else cpu)"),
    ] = None,
    kernels: Annotated[
        Optional[str], typer.Option(help="comma-separated kernel names or globs, e.g. tfla.*,sdpa.cudnn")
    ] = None,
    seq_len: Annotated[Optional[str], typer.Option(help="e.g. 1024,2048,4096")] = None,
    chunk_size: Annotated[Optional[str], typer.Option(help="powers of two, e.g. 64,128")] = None,
    head_dim_qk: Annotated[Optional[str], typer.Option()] = None,
    head_dim_v: Annotated[Optional[str], typer.Option()] = None,
    batch: Annotated[Optional[str], typer.Option()] = None,
    heads: Annotated[Optional[str], typer.Option()] = None,
    dtype: Annotated[Optional[str], typer.Option(help="float32, float16, bfloat16")] = None,
    mode: Annotated[Optional[str], typer.Option(help="fw, bw, fwbw")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="const-token sweep: batch = tokens / seq_len")] = None,
    width: Annotated[Optional[int], typer.Option(help="const width: heads = width / head_dim_v")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Parquet file (default results/PRESET.parquet)")] = None,
    force: Annotated[bool, typer.Option(help="re-measure configs already in the file")] = False,
    retry: Annotated[
        Optional[str],
        typer.Option(
            help=f"also re-measure configs whose row has one of these statuses, e.g. timeout,crash ({RETRY_HELP})"
        ),
    ] = None,
    verify: Annotated[bool, typer.Option(help="also record the relative error against the family's reference")] = False,
    timeout: Annotated[float, typer.Option(help="seconds per config before the worker is killed")] = 300.0,
    timer: Annotated[str, typer.Option(help=TIMER_HELP)] = "events",
    parallel: Annotated[
        str,
        typer.Option(help="workers measuring at once: N or all (every visible GPU, one worker each; CPU: every core)"),
    ] = "1",
    ray: Annotated[
        Optional[str],
        typer.Option(help="each config a Ray task: auto (a running cluster), local (start Ray here) or an address"),
    ] = None,
) -> None:
    """Run a grid of configs (preset and/or flags; flags override) and append the rows to a Parquet file."""
    from bench.grid import default_preset, load_preset
    from bench.runner import summary_table

    name = preset or default_preset()
    _check_timer(timer)
    _check_timeout(timeout)
    try:
        grid = load_preset(name).with_overrides(
            kernels=_strs(kernels, "kernels"),
            seq_len=_ints(seq_len, "seq-len"),
            chunk_size=_ints(chunk_size, "chunk-size"),
            head_dim_qk=_ints(head_dim_qk, "head-dim-qk"),
            head_dim_v=_ints(head_dim_v, "head-dim-v"),
            batch=_ints(batch, "batch"),
            heads=_ints(heads, "heads"),
            dtype=_strs(dtype, "dtype"),
            mode=_strs(mode, "mode"),
            device=device,
            tokens=tokens,
            width=width,
        )
        configs = grid.configs()
    except ValueError as e:
        _fail(str(e))
    path = out or Path("results") / f"{Path(name).stem}.parquet"
    _check_out(path)
    workers = _check_parallel(parallel)
    if ray is not None:
        _check_ray(ray, parallel)
    retry_statuses = _check_retry(retry)
    err.print(f"preset [bold]{name}[/bold]: {len(configs)} configs -> {path}")
    rows = _sweep_or_exit(
        configs,
        path,
        force=force,
        retry=retry_statuses,
        verify=verify,
        timeout_s=timeout,
        timer=timer,
        parallel=workers,
        ray=ray,
    )
    console.print(summary_table(rows, title=f"{name}: {len(rows)} new rows in {path}"))


def _check_retry(value: Optional[str]) -> tuple[str, ...]:
    """``--retry`` as statuses of failed rows; exit 2 naming the allowed ones otherwise (``store.check_retry``)."""
    from bench.store import check_retry

    if value is None:
        return ()
    statuses = tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
    try:
        check_retry(statuses or (value,))  # a list of nothing is refused as what was given
    except ValueError as e:
        _fail(f"--{e}")
    return statuses


def _check_parallel(value: str) -> int | None:
    """``--parallel`` as a worker count (``None``: all); exit 2 on a bad value. Whether the configs can be placed
    on that many workers the runner checks before any work (``bench.executor.check_placement``)."""
    from bench.executor import parse_parallel

    try:
        return parse_parallel(value)
    except ValueError as e:
        _fail(str(e))
    return None


def _check_ray(address: str, parallel: str) -> None:
    """Exit 2 unless Ray is installed and ``--ray`` comes without ``--parallel`` (Ray places the tasks itself)."""
    import importlib.util

    if parallel != "1":
        _fail("give --ray or --parallel, not both: Ray runs as many tasks at once as the cluster has GPUs (CPUs)")
    if not address.strip():
        _fail("--ray takes auto, local or a cluster address; got ''")
    if importlib.util.find_spec("ray") is None:
        _fail("--ray needs the ray package: pip install -e .[ray]")


def _check_out(path: Path, name: str = "--out") -> None:
    """Exit 2 unless rows can be appended to ``path`` (checked before any config is measured)."""
    from bench.store import SchemaError, StoreError, check_writable

    try:
        check_writable(path)
    except (StoreError, SchemaError) as e:
        _fail(f"{name}: {e}")


def _check_timeout(timeout: float) -> None:
    from bench.runner import check_timeout

    try:
        check_timeout(timeout)
    except ValueError as e:
        _fail(f"--{e}")


@contextlib.contextmanager
def _exit_on_interrupt() -> Iterator[None]:
    """A measurement stopped by SIGINT / SIGTERM / SIGHUP ends the command with the signal's exit code, saying
    how many rows were kept where."""
    from bench.runner import SweepInterrupted

    try:
        yield
    except SweepInterrupted as stop:
        err.print(f"[yellow]{escape(str(stop))}[/yellow]")
        raise typer.Exit(stop.exit_code) from None


def _sweep_or_exit(configs: list, path: Path, **options: object) -> list[dict[str, object]]:
    """``bench.runner.sweep``; on SIGINT / SIGTERM / SIGHUP the rows kept so far and the signal's exit code."""
    from bench.runner import sweep as run_sweep

    with _exit_on_interrupt():
        try:
            return run_sweep(configs, path, **options)  # type: ignore[arg-type]
        except ValueError as e:  # refused before anything was measured (e.g. --ray without a usable cluster)
            _fail(str(e))
    return []


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """The run metadata recorded with every row (GPU, driver, CUDA, versions, commit, host)."""
    from bench.envinfo import collect
    from bench.registry import cuda_reason

    meta = collect("cuda" if cuda_reason() is None else "cpu").as_dict()
    if as_json:
        console.print_json(json.dumps(meta))
        return
    table = Table(title="environment")
    table.add_column("key")
    table.add_column("value")
    for key, value in meta.items():
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


def _device_and_dtype(device: Optional[str], dtype: Optional[str]) -> tuple[str, str]:
    """``--device`` (default: cuda where a GPU is visible, else cpu) and ``--dtype`` (default: bfloat16 on cuda,
    float32 on cpu); exit 2 on an unknown device or ``--device cuda`` without a GPU."""
    from bench.problem import DEVICES
    from bench.registry import cuda_reason

    if device is not None and device not in DEVICES:
        _fail(f"--device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cuda" and (reason := cuda_reason()):
        _fail(f"--device cuda: {reason}")
    dev = device or ("cuda" if cuda_reason() is None else "cpu")
    return dev, dtype or ("bfloat16" if dev == "cuda" else "float32")


def _shape(shape: Optional[str]) -> Optional[list[int]]:
    """``--shape B,NH,S,DHQK,DHHV``; exit 2 unless it is five integers."""
    dims = _ints(shape, "shape")
    if dims is not None and len(dims) != 5:
        _fail(f"--shape takes B,NH,S,DHQK,DHHV (five integers); got {shape!r}")
    return dims


@app.command()
def verify(
    kernels: Annotated[Optional[str], typer.Option(help="kernel names or globs (default: all available)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda if present)")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="default: bfloat16 on cuda, float32 on cpu")] = None,
    allow_skipped: Annotated[
        bool, typer.Option(help="pass when every kernel was skipped (by default that fails: nothing was verified)")
    ] = False,
    shape: Annotated[
        Optional[str], typer.Option(help="B,NH,S,DHQK,DHHV instead of the small shape, e.g. 8,8,8192,256,512 (7B)")
    ] = None,
    chunk_size: Annotated[
        Optional[str], typer.Option(help="chunk sizes, e.g. 64,128,1024 (default 64,256 on cuda, 32 on cpu)")
    ] = None,
    jobs: Annotated[
        int, typer.Option(help="workers at once, several to a GPU (only errors are kept): compiles overlap")
    ] = 1,
    timeout: Annotated[
        float, typer.Option(help="seconds per config (compile included) before its worker is killed")
    ] = 300.0,
) -> None:
    """Run each kernel at small shapes against its reference; exit 1 when an error exceeds its dtype's tolerance
    or nothing could be verified, 2 on unusable input (e.g. --device cuda without a GPU). Interrupted (SIGINT,
    SIGTERM), it judges the configs measured so far and exits with the signal's code."""
    from bench.verify import VerifyInterrupted, gate_failures, run_verify, verify_table

    dev, dtype = _device_and_dtype(device, dtype)
    names = _strs(kernels, "kernels") or ["*"]
    dims = _shape(shape)
    chunks = _ints(chunk_size, "chunk-size")
    try:
        results = run_verify(
            names,
            dev,
            dtype,
            timeout_s=timeout,
            shape=tuple(dims) if dims else None,
            chunks=tuple(chunks) if chunks else None,
            jobs=jobs,
        )
    except ValueError as e:
        _fail(str(e))
    except VerifyInterrupted as stop:
        console.print(verify_table(stop.results))
        err.print(f"{stop}: the table judges those; the other {stop.total - len(stop.results)} were not run")
        raise typer.Exit(stop.exit_code) from None
    console.print(verify_table(results))
    if known := [r.config for r in results if r.status == "known"]:
        err.print(f"known issues of the kernels (shown, not failures): {', '.join(known)}", markup=False)
    failures = gate_failures(results, allow_skipped)
    if failures:
        err.print(f"[red]verify failed:[/red] {escape('; '.join(failures))}")
        raise typer.Exit(1)


@app.command()
def profile(
    kernels: Annotated[str, typer.Option(help="kernel names or globs, e.g. tfla.mlstm_sig,fla.chunk_simple_gla")],
    shape: Annotated[
        Optional[str], typer.Option(help="B,NH,S,DHQK,DHHV (default: 8,8,8192,256,512 on cuda, 1,2,64,32,32 on cpu)")
    ] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="chunk size (default 128 on cuda, 32 on cpu)")] = None,
    mode: Annotated[str, typer.Option(help="fw, bw or fwbw")] = "fwbw",
    dtype: Annotated[Optional[str], typer.Option(help="default: bfloat16 on cuda, float32 on cpu")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda if present)")] = None,
    passes: Annotated[int, typer.Option(help="passes profiled after one warm-up pass")] = 3,
    top: Annotated[int, typer.Option(help="rows per kernel (the rest summed)")] = 15,
    peak_tflops: Annotated[
        Optional[float], typer.Option(help="matmul peak for the floors, TFLOP/s (default: measured on cuda)")
    ] = None,
    peak_gbs: Annotated[
        Optional[float], typer.Option(help="memory bandwidth for the floors, GB/s (default: measured on cuda)")
    ] = None,
) -> None:
    """Where one pass of each kernel spends its time: device time per pass of every CUDA kernel it launches (on
    the CPU: self time per operator); for kernels whose spec splits its work (ours), each part against its
    floor, the longer of its FLOPs at the matmul peak and its bytes at the copy bandwidth; on the GPU, the span of
    a pass against the time kernels ran (its idle share). Exit 1 when a kernel could not be profiled, 2 on unusable
    input."""
    from bench import measure
    from bench.problem import MODES, Problem
    from bench.profile import floors
    from bench.profile import profile as run_profile
    from bench.registry import resolve
    from bench.runner import precheck

    dev, dtype = _device_and_dtype(device, dtype)
    if mode not in MODES:
        _fail(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if passes < 1 or top < 1:
        _fail(f"--passes and --top must be positive integers; got {passes} and {top}")
    if any(x is not None and not x > 0 for x in (peak_tflops, peak_gbs)):
        _fail(f"--peak-tflops and --peak-gbs must be positive numbers; got {peak_tflops} and {peak_gbs}")
    dims = _shape(shape) or ([8, 8, 8192, 256, 512] if dev == "cuda" else [1, 2, 64, 32, 32])
    try:
        specs = resolve(_strs(kernels, "kernels") or [])
        problem = Problem(
            *dims,
            chunk_size=chunk_size or (128 if dev == "cuda" else 32),
            dtype=dtype,
            mode=mode,
            device=dev,
        )
    except ValueError as e:
        _fail(str(e))
    failed = []
    for spec in specs:
        run_on = problem if spec.uses_chunk_size else problem.with_(chunk_size=0)
        if (decided := precheck(spec, run_on)) is not None:
            err.print(f"[yellow]{spec.name}: {decided.status}: {escape(str(decided.message))}[/yellow]")
            failed.append(spec.name)
            continue
        try:
            profiled = run_profile(spec, run_on, passes)
        except Exception as e:  # noqa: BLE001 - a kernel that fails is reported, the others still run
            err.print(f"[red]{spec.name}: {type(e).__name__}: {escape(measure._first_line(e))}[/red]")
            failed.append(spec.name)
            continue
        times = profiled.times
        unit = "CUDA kernel" if dev == "cuda" else "CPU operator (self time)"
        table = Table(title=f"bench profile: {spec.name} {run_on}, {passes} passes")
        banded = any(t.pass_us for t in times)  # per-pass times: GPU profiles only
        for col in (unit, "calls / pass", "us / pass", *(["p20..p80 us"] if banded else []), "share"):
            table.add_column(col)
        total = sum(t.us for t in times) or 1.0
        shown = times[:top]
        rest = times[top:]
        for t in shown:
            band = [f"{b[0]:.1f}..{b[1]:.1f}" if (b := t.band_us()) is not None else ""] if banded else []
            table.add_row(t.name[:60], f"{t.calls:g}", f"{t.us:.1f}", *band, f"{t.us / total:.0%}")
        blank = [""] if banded else []
        if rest:
            table.add_row(f"({len(rest)} more)", "", f"{sum(t.us for t in rest):.1f}", *blank, "")
        table.add_row("total", "", f"{total:.1f}", *blank, "100%")
        console.print(table)
        if (line := profiled.timeline) is not None:  # what a timed row holds beyond its kernels: the GPU's idle time
            console.print(
                f"GPU per pass: span {line.span_us:.1f} us, busy {line.busy_us:.1f} us, "
                f"idle {line.idle_us:.1f} us ({line.idle_us / (line.span_us or 1.0):.0%})"
            )
        if spec.kernel_work is not None:
            if dev == "cuda" and (peak_tflops is None or peak_gbs is None):
                from bench.envinfo import measure_peaks

                measured = measure_peaks(dtype)
                peak_tflops, peak_gbs = peak_tflops or measured[0], peak_gbs or measured[1]
            if peak_tflops is not None and peak_gbs is not None:
                parts = floors(times, spec.kernel_work(run_on), peak_tflops, peak_gbs)
                if parts:
                    console.print(_floor_table(spec.name, parts, peak_tflops, peak_gbs))
                else:
                    console.print(
                        f"floors: none of {spec.name}'s kernels is in this profile (a CPU profile lists operators)"
                    )
    if failed:
        raise typer.Exit(1)


def _floor_table(name: str, parts: list[KernelFloor], peak_tflops: float, peak_gbs: float) -> Table:
    """``bench profile``'s floors of one kernel: each part's time, floor, what sets it and the floor's share."""
    table = Table(title=f"{name}: floors at {peak_tflops:.0f} TFLOP/s and {peak_gbs:.0f} GB/s")
    for col in ("part", "us / pass", "floor us", "bound", "floor / time"):
        table.add_column(col)
    for f in parts:
        table.add_row(f.kernel, f"{f.us:.1f}", f"{f.floor_us:.1f}", f.bound, f"{f.of_floor:.0%}")
    us, floor_us = sum(f.us for f in parts), sum(f.floor_us for f in parts)
    table.add_row("these parts", f"{us:.1f}", f"{floor_us:.1f}", "", f"{floor_us / us:.0%}")
    return table


@app.command()
def tune(
    kernel: Annotated[str, typer.Option(help="tfla.mlstm_sig or tfla.mlstm_exp")] = "tfla.mlstm_sig",
    shape: Annotated[
        Optional[str], typer.Option(help="B,NH,S,DHQK,DHHV (default: 8,8,8192,256,512 on cuda, 1,1,64,32,32 on cpu)")
    ] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="chunk size (default 128 on cuda, 32 on cpu)")] = None,
    tiles_of: Annotated[
        Optional[str],
        typer.Option(help="kernels to tune: fw_states,fw_output,bw_states,bw_dq,bw_dk,bw_dv (default all)"),
    ] = None,
    family: Annotated[str, typer.Option(help="candidates: rolled, unrolled, all or small (head dims <= 128)")] = "all",
    limit: Annotated[Optional[int], typer.Option(help="at most this many candidates per kernel")] = None,
    pipelined_states: Annotated[
        bool, typer.Option(help="the state readers' state loops run the candidate's stages (check_state_loads first)")
    ] = False,
    dtype: Annotated[Optional[str], typer.Option(help="default: bfloat16 on cuda, float32 on cpu")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda if present)")] = None,
    passes: Annotated[int, typer.Option(help="passes profiled per trial after one warm-up pass")] = 5,
    jobs: Annotated[int, typer.Option(help="processes compiling the candidates first (GPU)")] = 8,
    out: Annotated[Path, typer.Option(help="Parquet file: one row per trial, the tiles in kernel_params")] = Path(
        "results/tune.parquet"
    ),
) -> None:
    """Tile trials of our kernels: each candidate replaces one kernel's tiles in the current table, one profiled
    forward + backward pass per trial, outputs checked against the table's. Rows go to --out as they are measured
    (a second call resumes); prints the best tiles per kernel. Exit 2 on unusable input."""
    from bench.problem import Problem
    from bench.tune import rows_of, run_tune, tune_table
    from kernels.mlstm.tiles import KERNELS

    dev, dtype = _device_and_dtype(device, dtype)
    dims = _shape(shape) or ([8, 8, 8192, 256, 512] if dev == "cuda" else [1, 1, 64, 32, 32])
    names = _strs(tiles_of, "tiles-of") or list(KERNELS)
    if bad := [n for n in names if n not in KERNELS]:
        _fail(f"--tiles-of takes {', '.join(KERNELS)}; got {', '.join(bad)}")
    try:
        problem = Problem(
            *dims, chunk_size=chunk_size or (128 if dev == "cuda" else 32), dtype=dtype, mode="fwbw", device=dev
        )
        with _exit_on_interrupt():
            run_tune(
                kernel,
                problem,
                names,
                family,
                out,
                passes=passes,
                jobs=jobs,
                limit=limit,
                pipelined_states=pipelined_states,
            )
    except ValueError as e:
        _fail(str(e))
    rows = rows_of(out, kernel, problem)
    console.print(tune_table(rows))
    console.print(f"{len(rows)} trials of {kernel} at {problem} in {out}", markup=False)


@app.command()
def check(
    current: Annotated[Optional[Path], typer.Argument(help="results of the run to check (omit with --run)")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="results of the reference run")] = None,
    threshold: Annotated[
        str, typer.Option(help="slow-down that counts, e.g. 10% or 0.1 (host-bound runtimes: at least 50%)")
    ] = "10%",
    metric: Annotated[
        str, typer.Option(help="comma-separated: runtime_ms, peak_mem_bytes, tflops")
    ] = "runtime_ms,peak_mem_bytes",
    format: Annotated[str, typer.Option("--format", help="table, markdown or json")] = "table",
    allow_different_device: Annotated[bool, typer.Option(help="compare runs from different GPUs")] = False,
    allow_missing: Annotated[
        bool, typer.Option(help="pass a partial run (by default a baseline config missing from the run fails)")
    ] = False,
    run: Annotated[Optional[str], typer.Option(help="run this preset first, then check its results")] = None,
    out: Annotated[Optional[Path], typer.Option(help="with --run: where the new results go")] = None,
    timer: Annotated[str, typer.Option(help="with --run: " + TIMER_HELP)] = "events",
    against: Annotated[
        Optional[str],
        typer.Option(help="git ref: measure --run PRESET on that commit and on this tree, interleaved, and compare"),
    ] = None,
    rounds: Annotated[int, typer.Option(help="with --against: rounds per config and side (order A B, B A, ...)")] = 2,
    kernels: Annotated[Optional[str], typer.Option(help="with --run: only these kernels (names or globs)")] = None,
    timeout: Annotated[
        float, typer.Option(help="with --against: seconds per measurement before its worker is killed")
    ] = 300.0,
    strict: Annotated[
        bool, typer.Option(help="fail (exit 1) when the committed baseline may be stale, instead of warning")
    ] = False,
) -> None:
    """Compare a run with a baseline; exit 0 when it passes, 1 on a regression, a missing config or nothing compared,
    2 on unusable input. ``--against REF --run PRESET`` measures both commits on this machine now instead;
    ``bench check AB_FILE`` judges the rows of such an A/B run again (side B against side A)."""
    from bench import check as chk

    if format not in ("table", "markdown", "json"):
        _fail(f"--format must be one of table, markdown, json; got {format!r}")
    try:
        limit = chk.parse_threshold(threshold)
    except ValueError as e:
        _fail(str(e))
    metrics = tuple(x.strip() for x in metric.split(",") if x.strip())
    try:  # before anything is measured
        chk.check_metrics(metrics)
    except chk.CheckInputError as e:
        _fail(str(e))
    _check_timer(timer)
    measured_together = against is not None  # both sides measured in one job: no staleness to warn about
    if against is not None:
        cur, base, current, baseline = _against(against, run, baseline, out, rounds, kernels, timeout, timer)
    elif baseline is None:
        cur, base = _ab_file(current, run)
        measured_together, baseline = True, Path(f"side A of {current}")
    elif run is not None:
        try:  # refuse before spending minutes on the run
            chk.load_run(baseline, "baseline")
        except chk.CheckInputError as e:
            _fail(f"--baseline: {e}")
        current = out or Path("results") / f"{Path(run).stem}-check.parquet"
        _run_preset(run, current, force=True, timer=timer, kernels=kernels)
    if not measured_together:
        if current is None:
            _fail("give the CURRENT results file or --run PRESET")
        try:
            cur, base = chk.load_pair(current, baseline, allow_different_device)
        except chk.CheckInputError as e:
            _fail(str(e))
    try:
        results = chk.compare(cur, base, limit, metrics)
    except chk.CheckInputError as e:
        _fail(str(e))
    failures = chk.gate_failures(results, allow_missing)
    stale = [] if measured_together else chk.staleness(cur, base)
    for note in stale:
        err.print(f"[yellow]warning: the baseline may be stale:[/yellow] {escape(note)}")
    if stale and strict:
        failures.append(f"the baseline may be stale ({len(stale)} reason{'s' if len(stale) > 1 else ''}; --strict)")
    if format == "json":
        typer.echo(chk.to_json(results, allow_missing, failures))
    elif format == "markdown":
        typer.echo(chk.to_markdown(results))
    else:
        table = Table(title=f"bench check: {current} against {baseline} (threshold {limit:.0%})")
        for col in ("kernel", "config", "metric", "baseline", "current", "ratio", "verdict", "note"):
            table.add_column(col)
        colors = {"regression": "red", "slower": "yellow", "faster": "green", "failed": "red"}
        for r in results:
            c = colors.get(r.verdict)
            table.add_row(
                r.kernel,
                r.config,
                r.metric,
                chk._fmt(r.baseline),
                chk._fmt(r.current),
                chk._fmt(r.ratio, ".3f"),
                f"[{c}]{r.verdict}[/{c}]" if c else r.verdict,
                r.note[:60],
            )
        console.print(table)
    if failures:
        if format != "json":  # JSON carries them in "failures"
            err.print(f"[red]check failed:[/red] {escape('; '.join(failures))}")
        raise typer.Exit(1)


def _preset_configs(preset: str, kernels: Optional[str] = None) -> list:
    """The (spec, problem) pairs of ``preset`` (only ``kernels`` where given); exit 2 on a bad preset."""
    from bench.grid import load_preset

    try:
        return load_preset(preset).with_overrides(kernels=_strs(kernels, "kernels")).configs()
    except ValueError as e:
        _fail(str(e))
    return []


def _run_preset(
    preset: str, out: Path, force: bool = False, timer: str = "events", kernels: Optional[str] = None
) -> None:
    """Sweep a preset into ``out`` (for ``check --run`` and ``figures --run``); exit 2 on a bad preset."""
    configs = _preset_configs(preset, kernels)
    _check_out(out)
    _sweep_or_exit(configs, out, force=force, timer=timer)


def _against(
    ref: str,
    run: Optional[str],
    baseline: Optional[Path],
    out: Optional[Path],
    rounds: int,
    kernels: Optional[str],
    timeout: float,
    timer: str,
) -> tuple:
    """``check --against``: A/B of ``ref`` (A) and this tree (B) on ``run``'s configs into ``out``; returns the
    combined rows of B and A and their labels. Exit 2 on unusable input, before anything is measured."""
    from bench import ab, envinfo, store

    if run is None:
        _fail("--against needs --run PRESET: the configs to measure on both commits")
    if baseline is not None:
        _fail("give --baseline or --against, not both")
    if rounds < 1:
        _fail(f"--rounds must be a positive integer; got {rounds}")
    _check_timeout(timeout)
    configs = _preset_configs(run, kernels)
    path = out or Path("results") / f"{Path(run).stem}-ab.parquet"
    if store.exists(path):
        _fail(f"--out {str(path)!r} exists: an A/B run writes a new file (never over earlier rows)")
    _check_out(path)
    try:
        commit = ab.resolve_ref(ref)
        with _exit_on_interrupt(), ab.worktree(commit) as tree:  # the worktree is removed before the exit
            sides = (ab.Side("A", tree, commit), ab.Side("B", envinfo.ROOT, envinfo._git_commit()))
            ab.ab_sweep(configs, sides, path, rounds=rounds, timeout_s=timeout, timer=timer)
    except ValueError as e:
        _fail(str(e))
    frame = store.load(path)
    err.print(f"A/B rows: {path} (A = {ref} {commit[:12]}, B = this tree)")
    return ab.combine(frame, "B"), ab.combine(frame, "A"), f"this tree ({path})", f"{ref} ({commit[:12]})"


def _ab_file(current: Optional[Path], run: Optional[str]) -> tuple:
    """``check AB_FILE``: the combined rows of side B and side A of an earlier ``--against`` run; exit 2 when
    ``current`` is not such a file."""
    from bench import ab
    from bench.store import SchemaError

    usage = "give --baseline RESULTS (the reference run), --against REF --run PRESET, or an A/B file of --against"
    if current is None or run is not None:
        _fail(usage)
    try:
        sides = ab.load_sides(current)  # type: ignore[arg-type]
    except (FileNotFoundError, SchemaError) as e:
        _fail(f"CURRENT: {e}")
    if sides is None:
        _fail(f"{current} holds no A/B rows (no sides A and B): {usage}")
    return sides  # type: ignore[return-value]


def _check_timer(timer: str) -> None:
    """Exit 2 with the allowed timers unless ``timer`` is one."""
    from bench.measure import check_timer

    try:
        check_timer(timer)
    except ValueError as e:
        _fail(f"--{e}")


def _load_results(path: Path):  # noqa: ANN202
    from bench.store import SchemaError, load

    try:
        return load(path)
    except (FileNotFoundError, SchemaError) as e:
        _fail(str(e))


@app.command()
def plot(
    results: Annotated[Path, typer.Argument(help="results Parquet")],
    x: Annotated[
        str, typer.Option(help="seq_len, chunk_size, head_dim_qk, head_dim_v, batch, heads, tokens")
    ] = "seq_len",
    y: Annotated[str, typer.Option(help="runtime_ms, peak_mem_bytes, tflops, pct_peak, error, ...")] = "runtime_ms",
    hue: Annotated[str, typer.Option(help="one line per value of this column")] = "kernel",
    col: Annotated[Optional[str], typer.Option(help="one panel per value of this column ('' for one panel)")] = "mode",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("plots/out"),
) -> None:
    """Line plot of a results file (PNG and SVG); failed configs are crosses at the top of the axis."""
    from plots.lines import plot_lines, save

    _output_folder(out)
    frame = _load_results(results)
    try:
        fig = plot_lines(frame, x, y, hue=hue, col=col or None)
    except ValueError as e:
        _fail(str(e))
    for path in save(fig, out, f"{results.stem}_{y}_vs_{x}"):
        console.print(str(path))


@app.command()
def figures(
    name: Annotated[str, typer.Argument(help="consttoken, headdim, chunksize or roofline")],
    run: Annotated[bool, typer.Option("--run", help="run the figure's preset first")] = False,
    from_: Annotated[Optional[Path], typer.Option("--from", help="results Parquet to draw from")] = None,
    reference: Annotated[
        Optional[str], typer.Option(help="'paper', another results Parquet, or a paper-style CSV (dashed)")
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("plots/out"),
) -> None:
    """The TFLA paper's benchmark figures, from a run (``--from``) or measured now (``--run``)."""
    from plots.figures import get_recipe, render

    try:
        recipe = get_recipe(name)
    except ValueError as e:
        _fail(str(e))
    if run == (from_ is not None):
        _fail("give exactly one of --run or --from RESULTS")
    _output_folder(out)
    if run:
        from_ = Path("results") / f"{recipe.preset}.parquet"
        _run_preset(recipe.preset, from_)
    frame = _load_results(from_)
    try:
        paths = render(name, frame, out, reference)
    except ValueError as e:
        _fail(str(e))
    for path in paths:
        console.print(str(path))


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results Parquet")],
    out: Annotated[Optional[Path], typer.Option(help="Markdown file (default: beside the results)")] = None,
) -> None:
    """One Markdown page: environment, figures, runtime table, each kernel at its best chunk, speed-ups of our
    kernels, noisy and failed configs."""
    from plots.report import write_report

    target = out or results.with_suffix(".md")
    _check_report_target(results, target)
    frame = _load_results(results)
    path = write_report(frame, str(results), target)
    console.print(str(path))


def _is_parquet(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(4) == b"PAR1"


def _check_report_target(results: Path, target: Path) -> None:
    """Exit 2 when the report would write over its input, over any Parquet file, or onto a folder."""
    if target.exists() and target.resolve() == results.resolve():
        _fail(
            f"--out {str(target)!r} is the results file itself; give a Markdown path such as {str(results.with_suffix('.md'))!r}"
        )
    if target.is_dir():
        _fail(f"--out {str(target)!r} is a folder; give a Markdown file path")
    if target.suffix == ".parquet" or _is_parquet(target):
        _fail(f"--out {str(target)!r} is a Parquet file: the report never writes over results; give a .md path")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
