"""``bench verify``: each available kernel at a small shape against its family's float64 reference, forward and
backward: the relative error of the output and of the gradient of every input (``bench.measure.verify``)."""

from __future__ import annotations

import json
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench import store
from bench.grid import Grid
from bench.problem import Problem
from bench.registry import KernelSpec, get
from bench.runner import SweepInterrupted, sweep

TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "bfloat16": 2e-2}


@dataclass(frozen=True)
class VerifyResult:
    kernel: str
    dtype: str
    error: float | None  # the worst of ``errors``
    tolerance: float
    status: str  # pass, fail, known (only outputs its kernel declares wrong are off: KernelSpec.known_issue), skip
    message: str
    mode: str = "fw"
    errors: dict[str, float] = field(default_factory=dict)  # relative error per output: out, dq, dk, ...
    chunk_size: int = 0  # 0 for kernels without one

    @property
    def config(self) -> str:
        """The kernel, mode and chunk, e.g. ``mlstm_kernels.xl_chunk fwbw chunk 256``."""
        return f"{self.kernel} {self.mode}" + (f" chunk {self.chunk_size}" if self.chunk_size else "")


SHAPE_FIELDS = ("batch", "heads", "seq_len", "head_dim_qk", "head_dim_v")
PROBLEM_FIELDS = tuple(Problem.__dataclass_fields__)


# The GPU's default chunks: 64 is legal for every kernel (the Gluon one needs multiples of 64), 256 with two chunks
# of the sequence covers the large-chunk paths (ours, and the official xl_chunk's split into inter and intra chunks).
GPU_CHUNKS = (64, 256)
CPU_CHUNKS = (32,)


def verify_grid(
    kernels: list[str],
    device: str,
    dtype: str,
    shape: tuple[int, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
) -> Grid:
    """Small shapes by default: on the GPU S=512, two heads, head dims 64, chunks ``GPU_CHUNKS``; on the CPU (the
    Triton interpreter) S=64, head dims 32, chunks ``CPU_CHUNKS``. ``shape`` (``SHAPE_FIELDS``, e.g. the 7B shape on
    the GPU) and ``chunks`` replace them. Forward and forward + backward; the errors are taken at batch 1
    (``bench.measure.verify``)."""
    small = device == "cpu"
    if shape is not None and len(shape) != len(SHAPE_FIELDS):
        raise ValueError(f"--shape takes {','.join(SHAPE_FIELDS)} (five integers); got {shape!r}")
    b, h, s, dqk, dv = shape or (1, 2, 64 if small else 512, 32 if small else 64, 32 if small else 64)
    return Grid(
        kernels=tuple(kernels),
        seq_len=(s,),
        batch=(b,),
        heads=(h,),
        head_dim_qk=(dqk,),
        head_dim_v=(dv,),
        chunk_size=chunks or (CPU_CHUNKS if small else GPU_CHUNKS),
        dtype=(dtype,),
        mode=("fw", "fwbw"),
        device=device,
    )


class VerifyInterrupted(Exception):
    """``bench verify`` stopped by a signal: ``results`` judges the configs measured before it, of ``total``."""

    def __init__(self, results: list[VerifyResult], total: int, exit_code: int, signal_name: str) -> None:
        self.results, self.total, self.exit_code = results, total, exit_code
        super().__init__(f"verify interrupted ({signal_name}) after {len(results)} of {total} configs")


def run_verify(
    kernels: list[str],
    device: str,
    dtype: str,
    timeout_s: float = 300.0,
    shape: tuple[int, ...] | None = None,
    chunks: tuple[int, ...] | None = None,
    jobs: int = 1,
) -> list[VerifyResult]:
    """Every config of ``verify_grid`` measured with ``--verify`` in workers, each judged against its dtype's
    tolerance (a backward that checked no gradient fails). ``jobs`` workers at once, several to a GPU if need be:
    only errors are kept, so sharing does not matter, and compile-bound kernels (FLA's autotuning) overlap.
    ``VerifyInterrupted`` on SIGINT / SIGTERM / SIGHUP, with the configs measured so far judged."""
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCE)}; got {dtype!r}")
    if jobs < 1:
        raise ValueError(f"--jobs takes a positive number of workers; got {jobs!r}")
    configs = verify_grid(kernels, device, dtype, shape, chunks).configs()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "verify.parquet"
        try:
            rows = sweep(
                configs,
                out,
                verify=True,
                timeout_s=timeout_s,
                console=Console(stderr=True),  # progress on stderr: a slow compile shows where the time goes
                parallel=jobs,
                share_gpus=True,
            )
        except SweepInterrupted as stop:
            name = signal.Signals(stop.signum).name
            kept = judge(store.records(store.load(out)), dtype)
            raise VerifyInterrupted(kept, len(configs), stop.exit_code, name) from None
    return judge(rows, dtype)


def judge(rows: list[dict], dtype: str) -> list[VerifyResult]:
    """A ``VerifyResult`` per row of a ``--verify`` sweep at ``dtype``. A measured row beyond the tolerance is
    ``known`` where every output beyond it is one that its kernel declares wrong at that problem (a baseline's
    upstream bug: shown, not a failure of the gate), else ``fail``."""
    tol = TOLERANCE[dtype]
    results = []
    for r in rows:
        err = r["error"]
        spec = get(str(r["kernel"]))
        errors = json.loads(r["errors"]) if isinstance(r.get("errors"), str) else {}
        no_reference = r["status"] == "ok" and spec.reference is None
        if r["status"] in ("unavailable", "unsupported") or no_reference:
            status = "skip"
        elif r["status"] != "ok" or err is None or not err <= tol:
            status = "known" if r["status"] == "ok" and _only_known(spec, r, errors, tol) else "fail"
        else:
            status = "pass"
        if status == "pass" and r["mode"] != "fw" and len(errors) < 2:
            status, r["message"] = "fail", "no gradient was checked"  # the backward gave no input a gradient
        results.append(
            VerifyResult(
                str(r["kernel"]),
                dtype,
                err,
                tol,
                status,
                str(r["message"] or ""),
                str(r["mode"]),
                errors,
                int(r["chunk_size"]),
            )
        )
    return results


def _only_known(spec: KernelSpec, row: dict, errors: dict[str, float], tol: float) -> bool:
    """Whether the outputs of ``row`` beyond ``tol`` are all ones its kernel declares wrong at its problem."""
    issue = spec.known_issue(Problem(**{f: row[f] for f in PROBLEM_FIELDS}))
    beyond = {name for name, err in errors.items() if not err <= tol}
    return issue is not None and bool(beyond) and beyond <= set(issue.outputs)


def gate_failures(results: list[VerifyResult], allow_skipped: bool = False) -> list[str]:
    """Why ``bench verify`` fails (empty: it passes): a kernel beyond its tolerance, or nothing verified at all
    (every kernel skipped, unless ``allow_skipped``)."""
    reasons = []  # a ``known`` row is the declared bug of a baseline: the table shows it, the gate does not fail
    if failed := [r.config for r in results if r.status == "fail"]:
        reasons.append(f"{len(failed)} failed ({', '.join(failed)})")
    if not allow_skipped and not any(r.status == "pass" for r in results):
        reasons.append("nothing was verified: every kernel was skipped (--allow-skipped accepts that)")
    return reasons


def verify_table(results: list[VerifyResult]) -> Table:
    table = Table(title="bench verify")
    for col in ("kernel", "chunk", "mode", "dtype", "worst rel. error", "per output", "tolerance", "result"):
        table.add_column(col)
    table.add_column("message", ratio=1)  # wrapped, never cut: it says why a row failed or what it was held to
    colors = {"pass": "green", "fail": "red", "known": "yellow", "skip": "dim"}
    for r in results:
        table.add_row(
            r.kernel,
            str(r.chunk_size or "-"),
            r.mode,
            r.dtype,
            "-" if r.error is None else f"{r.error:.2e}",
            " ".join(f"{k} {v:.1e}" for k, v in r.errors.items()),
            f"{r.tolerance:.0e}",
            f"[{colors[r.status]}]{r.status}[/{colors[r.status]}]",
            Text(r.message),  # text, not markup: a message may hold brackets
        )
    return table
