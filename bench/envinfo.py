"""Run metadata: GPU, driver, CUDA, torch, Triton, baseline package versions, git commit, host, time."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGES = (
    "torch",
    "triton",
    "mlstm_kernels",
    "fla-core",
    "mamba_ssm",
    "flash_attn",
    "flash-attn-4",
    "nvidia-cutlass-dsl",
    "causal-conv1d",
)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunMetadata:
    """One run's environment; every stored row carries it."""

    run_id: str
    timestamp: str
    host: str
    gpu_name: str
    driver: str
    cuda: str
    torch: str
    triton: str
    python: str
    git_commit: str
    packages: str  # JSON: {distribution: version}
    peak_tflops: float | None = None  # measured dense matmul peak in the run's dtype
    peak_bandwidth_gbs: float | None = None  # measured device-to-device copy, GB/s (read + write)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def release(version: str) -> tuple[int, ...]:
    """A version string's first three dot-separated parts that are plain numbers, as a tuple to compare:
    ``"2.0.6"`` -> ``(2, 0, 6)``, ``"0.6"`` -> ``(0, 6)``, ``""`` (not installed) -> ``()``."""
    return tuple(int(x) for x in version.split(".")[:3] if x.isdigit())


def installed_version(dist: str) -> str:
    """The installed version of the distribution ``dist`` ("" when it is not installed)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def git(*args: str, repo: Path = ROOT, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """``git -C repo ARGS``, output captured; a missing ``git`` or a time-out is returncode 127 with the reason in
    ``stderr`` (callers read the return code, never an exception)."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        return subprocess.CompletedProcess(["git", *args], 127, "", str(err))


def _git_commit() -> str:
    """``git rev-parse HEAD`` (``-dirty`` with local changes), or ``$TFLA_BENCH_GIT_COMMIT`` without a git tree
    (e.g. a copy of the tree on a GPU machine)."""
    sha = git("rev-parse", "HEAD", timeout_s=5)
    commit = sha.stdout.strip()
    if sha.returncode != 0 or len(commit) != 40:
        return os.environ.get("TFLA_BENCH_GIT_COMMIT", "")
    dirty = git("status", "--porcelain", timeout_s=5)
    return f"{commit}-dirty" if dirty.stdout.strip() else commit


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def collect(device: str = "cuda") -> RunMetadata:
    """The metadata of this machine now (no device peaks: ``measure_peaks`` adds them)."""
    import torch

    now = dt.datetime.now(dt.timezone.utc)
    has_gpu = device == "cuda" and torch.cuda.is_available()
    return RunMetadata(
        run_id=now.strftime("%Y%m%dT%H%M%S") + f"-{socket.gethostname()}",
        timestamp=now.isoformat(timespec="seconds"),
        host=socket.gethostname(),
        gpu_name=torch.cuda.get_device_name() if has_gpu else f"cpu ({platform.processor() or platform.machine()})",
        driver=_driver() if has_gpu else "",
        cuda=torch.version.cuda or "",
        torch=torch.__version__,
        triton=installed_version("triton"),
        python=platform.python_version(),
        git_commit=_git_commit(),
        packages=json.dumps({p: v for p in PACKAGES if (v := installed_version(p))}, sort_keys=True),
    )


def _matmul_tflops(dtype: str, n: int = 8192) -> float:
    import torch
    import triton.testing

    a = torch.randn(n, n, device="cuda", dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device="cuda", dtype=getattr(torch, dtype))
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n**3 / (ms * 1e-3) / 1e12


def _copy_gbs(n: int = 1 << 28) -> float:
    import torch
    import triton.testing

    x = torch.empty(n, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def measure_peaks(dtype: str) -> tuple[float, float]:
    """Measured dense matmul TFLOP/s in ``dtype`` (8192^3) and copy bandwidth in GB/s on the current GPU."""
    import torch

    peaks = _matmul_tflops(dtype), _copy_gbs()
    torch.cuda.empty_cache()  # this runs in the sweep's parent: leave the memory to the workers
    return peaks


def device_memory_bytes(device: str) -> int | None:
    """The memory of ``device``: the GPU's total for ``cuda`` (``None`` without a GPU), the machine's physical
    memory (or its cgroup limit, when lower) for ``cpu``."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    return min(total, int(limit)) if limit.isdigit() else total
