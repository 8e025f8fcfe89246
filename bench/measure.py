"""Measure one kernel on one problem: runtime quantiles, host time, peak memory, FLOPs, TFLOP/s, optional error.

Runs inside a worker process (``bench.worker``). GPU timers (``TIMERS``): ``events`` is
``triton.testing.do_bench`` (CUDA events around each call, warm-up, L2 flush between repetitions, a minimum
measured time): what an eager training step sees, launch overhead included where the host is slower than the
kernels. ``cudagraph`` is ``triton.testing.do_bench_cudagraph`` (the calls captured in one CUDA graph and
replayed): the kernels alone, without host overhead or L2 flush. CPU timing is ``time.perf_counter`` (``wall``).
``host_ms`` is the host's time per call without synchronizing (launches queue behind running kernels): where it
reaches the ``events`` runtime (``host_bound``), that runtime measures the host, not the kernels. Peak memory is
the CUDA allocator's peak above what was allocated before the timed step (inputs, and for ``bw`` the saved
forward graph, are not counted); ``None`` on the CPU.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.flops import tflops
from bench.problem import Problem
from bench.registry import KernelSpec

STATUSES = ("ok", "unsupported", "unavailable", "oom", "error", "crash", "timeout")
VERIFY_MAX_ELEMENTS = 1 << 27  # heads * seq_len**2 of the float64 reference (CPU; GPUs: verify_max_elements)
TIMERS = ("events", "cudagraph")  # GPU timers; CPU rows are timed by the wall clock ("wall")
CPU_TIMER = "wall"
# An events runtime is host-bound when the host's time per call reaches this fraction of it: the GPU then idles
# between launches, and repeated runs of such a config differed by up to 50 % on the H100 (docs/performance.md, v8).
HOST_BOUND_FRACTION = 0.8
HOST_SAMPLES = (3, 10)  # calls timed on the host: at least, at most (fewer for long calls: HOST_BUDGET_MS)
HOST_BUDGET_MS = 200.0


@dataclass(frozen=True)
class Timing:
    """Median, 20th and 80th percentile of the runtime, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float


@dataclass(frozen=True)
class Measurement:
    """The outcome of one config; numbers are ``None`` when the status is not ``ok``."""

    status: str
    message: str = ""
    runtime_ms: float | None = None
    runtime_p20_ms: float | None = None
    runtime_p80_ms: float | None = None
    peak_mem_bytes: int | None = None
    flops: float | None = None
    bytes: float | None = None
    tflops: float | None = None
    pct_peak: float | None = None
    error: float | None = None  # the worst of ``errors``
    errors: str | None = None  # JSON: relative error per output ("out", "dq", ...), from ``verify``
    timer: str | None = None
    host_ms: float | None = None


def check_timer(timer: object) -> None:
    """Raise ``ValueError`` naming the timer and the allowed ones unless ``timer`` is one of ``TIMERS``."""
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {', '.join(TIMERS)}; got {timer!r}")


def host_bound(runtime_ms: float | None, host_ms: float | None, timer: str | None) -> bool:
    """An ``events`` runtime that measures the host: its time per call is at least ``HOST_BOUND_FRACTION`` of it."""
    if timer != "events" or runtime_ms is None or host_ms is None:
        return False
    return host_ms >= HOST_BOUND_FRACTION * runtime_ms


def first_output(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _float_tensors(inputs: tuple[Any, ...]) -> list[Any]:
    import torch

    return [x for x in inputs if isinstance(x, torch.Tensor) and x.is_floating_point()]


def build_step(spec: KernelSpec, inputs: tuple[Any, ...], mode: str) -> tuple[Callable[[], None], list[Any]]:
    """The timed callable for ``mode`` and the tensors whose ``.grad`` is reset between repetitions."""
    import torch

    if mode == "fw":

        def fw() -> None:
            with torch.no_grad():
                spec.fn(*inputs)

        return fw, []
    leaves = _float_tensors(inputs)
    for x in leaves:
        x.requires_grad_(True)
    if mode == "fwbw":
        probe = first_output(spec.fn(*inputs))
        grad = torch.randn_like(probe)
        del probe

        def fwbw() -> None:
            first_output(spec.fn(*inputs)).backward(grad)

        return fwbw, leaves
    out = first_output(spec.fn(*inputs))
    grad = torch.randn_like(out)

    def bw() -> None:
        out.backward(grad, retain_graph=True)

    return bw, leaves


def time_cuda(
    step: Callable[[], None], grad_to_none: list[Any], timer: str = "events", warmup_ms: int = 25, rep_ms: int = 100
) -> Timing:
    """Runtime quantiles of ``step`` by ``timer`` (``TIMERS``). ``cudagraph`` raises what the capture raised (a
    step that synchronizes with the host, e.g. ``.item()``, cannot be captured)."""
    import triton.testing

    check_timer(timer)
    quantiles = [0.5, 0.2, 0.8]
    if timer == "cudagraph":
        med, p20, p80 = triton.testing.do_bench_cudagraph(
            step, rep=rep_ms, grad_to_none=grad_to_none or None, quantiles=quantiles
        )
    else:
        med, p20, p80 = triton.testing.do_bench(
            step, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none or None, quantiles=quantiles
        )
    return Timing(med, p20, p80)


def host_time_cuda(step: Callable[[], None], grad_to_none: list[Any], runtime_ms: float) -> float:
    """Median host time of one call of ``step`` (ms), not synchronized: the launches queue behind the kernels
    still running. ``HOST_SAMPLES`` calls, fewer where they would take more than ``HOST_BUDGET_MS`` of GPU time."""
    import torch

    low, high = HOST_SAMPLES
    n = max(low, min(high, int(HOST_BUDGET_MS / max(runtime_ms, 1e-3))))
    torch.cuda.synchronize()
    samples = []
    for _ in range(n):
        for x in grad_to_none:
            x.grad = None
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(samples)


def time_cpu(step: Callable[[], None], grad_to_none: list[Any], min_reps: int = 3, min_time_s: float = 0.2) -> Timing:
    step()  # warm-up (compilation, caches)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_reps or time.perf_counter() - start < min_time_s:
        for x in grad_to_none:
            x.grad = None
        t0 = time.perf_counter()
        step()
        samples.append((time.perf_counter() - t0) * 1e3)
        if len(samples) >= 1000:
            break
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else samples * 9
    return Timing(statistics.median(samples), q[1], q[7])


def peak_memory_cuda(step: Callable[[], None], grad_to_none: list[Any]) -> int:
    import torch

    for x in grad_to_none:
        x.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def relative_error(out: Any, ref: Any) -> float:
    """``||out - ref|| / ||ref||`` in float64; ``inf`` when the output has NaN or Inf."""
    import torch

    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def verify(spec: KernelSpec, problem: Problem) -> tuple[dict[str, float], str]:
    """Relative errors against ``spec.reference`` (float64) at batch 1 with fresh inputs, per output: ``out`` (the
    forward output) and, for ``bw`` / ``fwbw``, ``d<name>`` for the gradient of every floating-point input (names
    from ``spec.input_names``), all under one random output gradient. Empty with a note when not checked.

    A kernel with a ``spec.backward`` convention has its gradients checked against that convention's reference;
    the note says so and how far they are from the forward's true gradient."""
    import torch

    if spec.reference is None:
        return {}, "no reference"
    small = problem.with_(batch=1)
    if small.heads * small.seq_len**2 > verify_max_elements(problem.device):
        return {}, "verify skipped: the float64 reference would be too large"
    inputs = spec.make_inputs(small)
    names = [spec.input_names[n] if n < len(spec.input_names) else f"x{n}" for n in range(len(inputs))]
    if problem.mode == "fw":
        with torch.no_grad():
            out = first_output(spec.fn(*inputs))
            ref = first_output(spec.reference(*[x.double() if _is_float(x) else x for x in inputs]))
        return {"out": relative_error(out, ref)}, ""
    mine = [x.detach().clone().requires_grad_(True) if _is_float(x) else x for x in inputs]
    out = first_output(spec.fn(*mine))
    grad = torch.randn_like(out)
    out.backward(grad)
    expected = spec.backward.reference if spec.backward is not None else spec.reference
    ref, ref_grads = _float64_gradients(expected, inputs, grad)
    errors = {"out": relative_error(out.detach(), ref)}
    errors.update(_gradient_errors(names, mine, ref_grads))
    if spec.backward is None:
        return errors, ""
    true = _gradient_errors(names, mine, _float64_gradients(spec.reference, inputs, grad)[1])
    apart = ", ".join(f"{k} {v:.1e}" for k, v in true.items())
    return (
        errors,
        f"backward checked against its convention ({spec.backward.description}); vs the true gradient: {apart}",
    )


def _float64_gradients(fn: Callable[..., Any], inputs: tuple[Any, ...], grad: Any) -> tuple[Any, list[Any]]:
    """``fn``'s output on float64 copies of ``inputs`` and the gradient of each input under ``grad`` (``None`` for
    inputs that are not floating point or get none)."""
    leaves = [x.detach().double().requires_grad_(True) if _is_float(x) else x for x in inputs]
    ref = first_output(fn(*leaves))
    ref.backward(grad.double())
    return ref.detach(), [x.grad if _is_float(x) else None for x in leaves]


def _gradient_errors(names: list[str], mine: list[Any], ref_grads: list[Any]) -> dict[str, float]:
    """``d<name>``: relative error of each of ``mine``'s gradients that the reference has (``inf`` if missing)."""
    errors = {}
    for name, x, r in zip(names, mine, ref_grads):
        if r is None:
            continue
        errors[f"d{name}"] = float("inf") if x.grad is None else relative_error(x.grad, r)
    return errors


def verify_max_elements(device: str) -> int:
    """The largest ``heads * seq_len**2`` whose float64 reference is computed: ``VERIFY_MAX_ELEMENTS`` on the CPU; on
    a GPU what 16 float64 copies of the score matrix (the parallel reference and its backward) leave in memory."""
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return VERIFY_MAX_ELEMENTS
    return max(VERIFY_MAX_ELEMENTS, torch.cuda.get_device_properties(0).total_memory // (8 * 16))


def worst(errors: dict[str, float]) -> float | None:
    """The largest of the per-output errors (``None`` for none)."""
    return max(errors.values()) if errors else None


# What PyTorch's CPU allocator raises (as a RuntimeError) when an allocation fails.
CPU_OOM_TEXT = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_cpu_oom(err: BaseException) -> bool:
    """An exception that is a failed host allocation (``oom``, not ``error``)."""
    return isinstance(err, RuntimeError) and any(t in str(err) for t in CPU_OOM_TEXT)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:2000]


def _is_float(x: Any) -> bool:
    import torch

    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _time_gpu(step: Callable[[], None], leaves: list[Any], timer: str) -> tuple[Timing, str, str]:
    """``time_cuda`` by ``timer``; a step that cannot be captured in a CUDA graph is timed by ``events`` instead.
    Returns the timing, the timer used and a note (why the timer changed, else empty)."""
    import torch

    try:
        return time_cuda(step, leaves, timer), timer, ""
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as err:
        if timer != "cudagraph":
            raise
        torch.cuda.synchronize()
        note = f"cudagraph capture failed ({type(err).__name__}: {str(err)[:300]}); timed by events"
        return time_cuda(step, leaves, "events"), "events", note


def measure(
    spec: KernelSpec,
    problem: Problem,
    *,
    check: bool = False,
    peak_tflops: float | None = None,
    timer: str = "events",
) -> Measurement:
    """Run ``spec`` on ``problem`` (GPU problems timed by ``timer``, one of ``TIMERS``); out-of-memory and
    exceptions become a status, never a raise."""
    import torch

    n_flops, n_bytes = spec.flops(problem), spec.bytes(problem)
    host_ms, used, notes = None, CPU_TIMER, []
    try:
        torch.manual_seed(0)
        inputs = spec.make_inputs(problem)
        step, leaves = build_step(spec, inputs, problem.mode)
        if problem.device == "cuda":
            timing, used, note = _time_gpu(step, leaves, timer)
            notes.append(note)
            host_ms = host_time_cuda(step, leaves, timing.median_ms)
            peak = peak_memory_cuda(step, leaves)
        else:
            timing, peak = time_cpu(step, leaves), None
        del step, leaves, inputs
        errors, note = verify(spec, problem) if check else ({}, "")
        notes.append(note)
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        return Measurement("oom", _first_line(err), flops=n_flops, bytes=n_bytes)
    except Exception as err:  # noqa: BLE001 - every failure of a kernel becomes a row
        if is_cpu_oom(err):
            return Measurement("oom", _first_line(err), flops=n_flops, bytes=n_bytes)
        return Measurement("error", f"{type(err).__name__}: {err}"[:2000], flops=n_flops, bytes=n_bytes)
    achieved = tflops(n_flops, timing.median_ms)
    return Measurement(
        status="ok",
        message="; ".join(n for n in notes if n),
        runtime_ms=timing.median_ms,
        runtime_p20_ms=timing.p20_ms,
        runtime_p80_ms=timing.p80_ms,
        peak_mem_bytes=peak,
        flops=n_flops,
        bytes=n_bytes,
        tflops=achieved,
        pct_peak=100.0 * achieved / peak_tflops if peak_tflops else None,
        error=worst(errors),
        errors=json.dumps(errors, sort_keys=True) if errors else None,
        timer=used,
        host_ms=host_ms,
    )
