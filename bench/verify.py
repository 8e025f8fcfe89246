"""``bench verify``: each available kernel at a small shape against its family's float64 reference."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.grid import Grid
from bench.registry import get
from bench.runner import sweep

TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "bfloat16": 2e-2}


@dataclass(frozen=True)
class VerifyResult:
    kernel: str
    dtype: str
    error: float | None
    tolerance: float
    status: str  # pass, fail, skip
    message: str


def verify_grid(kernels: list[str], device: str, dtype: str) -> Grid:
    """Small shapes: S=128 (S=64 on the CPU), two heads, head dims 64 (32 on the CPU), chunk 32, forward."""
    small = device == "cpu"
    return Grid(
        kernels=tuple(kernels),
        seq_len=(64 if small else 256,),
        batch=(1,),
        heads=(2,),
        head_dim_qk=(32 if small else 64,),
        head_dim_v=(32 if small else 64,),
        chunk_size=(32,),
        dtype=(dtype,),
        mode=("fw",),
        device=device,
    )


def run_verify(kernels: list[str], device: str, dtype: str, timeout_s: float = 300.0) -> list[VerifyResult]:
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCE)}; got {dtype!r}")
    configs = verify_grid(kernels, device, dtype).configs()
    with tempfile.TemporaryDirectory() as tmp:
        rows = sweep(
            configs,
            Path(tmp) / "verify.parquet",
            verify=True,
            timeout_s=timeout_s,
            console=Console(stderr=True),  # progress on stderr: a slow compile shows where the time goes
        )
    tol = TOLERANCE[dtype]
    results = []
    for r in rows:
        err = r["error"]
        no_reference = r["status"] == "ok" and get(str(r["kernel"])).reference is None
        if r["status"] in ("unavailable", "unsupported") or no_reference:
            status = "skip"
        elif r["status"] != "ok" or err is None or not err <= tol:
            status = "fail"
        else:
            status = "pass"
        results.append(VerifyResult(str(r["kernel"]), dtype, err, tol, status, str(r["message"] or "")))
    return results


def gate_failures(results: list[VerifyResult], allow_skipped: bool = False) -> list[str]:
    """Why ``bench verify`` fails (empty: it passes): a kernel beyond its tolerance, or nothing verified at all
    (every kernel skipped, unless ``allow_skipped``)."""
    reasons = []
    if failed := [r.kernel for r in results if r.status == "fail"]:
        reasons.append(f"{len(failed)} failed ({', '.join(failed)})")
    if not allow_skipped and not any(r.status == "pass" for r in results):
        reasons.append("nothing was verified: every kernel was skipped (--allow-skipped accepts that)")
    return reasons


def verify_table(results: list[VerifyResult]) -> Table:
    table = Table(title="bench verify")
    for col in ("kernel", "dtype", "rel. error", "tolerance", "result", "message"):
        table.add_column(col)
    colors = {"pass": "green", "fail": "red", "skip": "dim"}
    for r in results:
        table.add_row(
            r.kernel,
            r.dtype,
            "-" if r.error is None else f"{r.error:.2e}",
            f"{r.tolerance:.0e}",
            f"[{colors[r.status]}]{r.status}[/{colors[r.status]}]",
            r.message[:80],
        )
    return table
