"""``bench profile``: where one pass of a kernel spends its time, kernel by kernel (``torch.profiler``).

On a GPU the split is over the CUDA kernels a pass launches (device time per pass, in microseconds); on the CPU
over the operators the pass runs (self CPU time per pass). The pass is the sweep's own step
(``bench.measure.build_step``) on the spec's inputs, so a profile shows the same work as a row of a sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bench.measure import build_step
from bench.problem import Problem
from bench.registry import KernelSpec


@dataclass(frozen=True)
class KernelTime:
    """One kernel (or CPU operator) of a pass: its name, calls per pass and time per pass (us, the mean over the
    passes); on the GPU also its time in each pass (``pass_us``, in pass order; empty on the CPU)."""

    name: str
    calls: float
    us: float
    pass_us: tuple[float, ...] = ()

    def band_us(self, low: float = 0.2, high: float = 0.8) -> tuple[float, float] | None:
        """The ``low`` and ``high`` quantiles of its per-pass times (``None`` without them): a kernel whose time
        jumps between passes (a bimodal row of a sweep) shows a wide band here."""
        if not self.pass_us:
            return None
        import numpy as np

        lo, hi = np.quantile(self.pass_us, [low, high])
        return float(lo), float(hi)


def per_pass_us(launches: Sequence[tuple[str, float, float]], passes: int) -> dict[str, tuple[float, ...]]:
    """Each kernel's time in each of ``passes`` passes (us), from its launches ``(name, start, end)`` in any order:
    a kernel launched ``n`` times a pass has its launches, in start order, summed ``n`` at a time. A kernel whose
    launch count is not a multiple of ``passes`` (e.g. one the warm-up alone ran) is left out."""
    by_name: dict[str, list[tuple[float, float]]] = {}
    for name, start, end in launches:
        by_name.setdefault(name, []).append((start, end))
    out = {}
    for name, spans in by_name.items():
        if len(spans) % passes:
            continue
        per = len(spans) // passes
        durations = [end - start for start, end in sorted(spans)]
        out[name] = tuple(sum(durations[i * per : (i + 1) * per]) for i in range(passes))
    return out


class Work(Protocol):
    """One part of a pass as a spec's ``kernel_work`` describes it (e.g. ``kernels.mlstm.cost.KernelWork``): its
    name, the compiled kernels that do it and the floor its FLOPs and bytes set."""

    kernel: str
    launch_names: tuple[str, ...]

    def floor_us(self, peak_tflops: float, peak_gbs: float) -> float: ...

    def bound(self, peak_tflops: float, peak_gbs: float) -> str: ...


@dataclass(frozen=True)
class KernelFloor:
    """A part of a pass, measured (``us`` per pass, over every launch that does it) against its floor
    (``floor_us`` at the given peaks, set by ``bound``: ``memory`` or ``compute``)."""

    kernel: str
    us: float
    floor_us: float
    bound: str

    @property
    def of_floor(self) -> float:
        """The floor as a share of the measured time (1.0: at the floor)."""
        return self.floor_us / self.us


def floors(times: Sequence[KernelTime], work: Sequence[Work], peak_tflops: float, peak_gbs: float) -> list[KernelFloor]:
    """Each part of ``work`` whose kernels ``times`` has (by name), with its measured time and floor; parts the
    profile did not see are left out (another backend's kernel, another mode). Parts done by one compiled kernel
    (the Gluon ``bw_dq_dk_kernel``: dq and dk, one launch each) are one row, ``bw_dq + bw_dk``, against the sum of
    their floors: the profile cannot tell their launches apart."""
    if peak_tflops <= 0 or peak_gbs <= 0:
        raise ValueError(f"peaks must be positive; got {peak_tflops} TFLOP/s and {peak_gbs} GB/s")
    by_name = {t.name: t.us for t in times}
    groups: list[tuple[list[Work], set[str]]] = []  # parts that share a launched kernel, and the kernels they saw
    for w in work:
        seen = {n for n in w.launch_names if n in by_name}
        if not seen:
            continue
        shared = next((g for g in groups if g[1] & seen), None)
        if shared is None:
            groups.append(([w], seen))
        else:
            shared[0].append(w)
            shared[1].update(seen)
    out = []
    for parts, seen in groups:
        bounds = dict.fromkeys(w.bound(peak_tflops, peak_gbs) for w in parts)
        out.append(
            KernelFloor(
                " + ".join(w.kernel for w in parts),
                sum(by_name[n] for n in seen),
                sum(w.floor_us(peak_tflops, peak_gbs) for w in parts),
                " + ".join(bounds),
            )
        )
    return out


@dataclass(frozen=True)
class Timeline:
    """The GPU's occupancy over profiled passes, per pass (us): ``span_us`` from the first device activity's start
    to the last one's end, divided by the passes (so the gaps between passes count, as they do in a sweep's timed
    repetitions); ``busy_us`` the time at least one kernel, copy or fill ran."""

    span_us: float
    busy_us: float

    @property
    def idle_us(self) -> float:
        """The span's time with nothing running on the GPU: launch gaps and host work the GPU waited for."""
        return self.span_us - self.busy_us


def timeline(intervals: Sequence[tuple[float, float]], passes: int) -> Timeline | None:
    """``Timeline`` of device activities given as ``(start, end)`` in us (overlapping ones, e.g. on two streams,
    counted once), or ``None`` without any."""
    if not intervals:
        return None
    ordered = sorted(intervals)
    busy, reach = 0.0, ordered[0][0]  # reach: the latest end so far
    for start, end in ordered:
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return Timeline((reach - ordered[0][0]) / passes, busy / passes)


@dataclass(frozen=True)
class PassProfile:
    """What ``profile_passes`` saw: each kernel's (or CPU operator's) time per pass, largest first, and the GPU's
    ``Timeline`` (``None`` on the CPU, whose operators nest)."""

    times: list[KernelTime]
    timeline: Timeline | None


def profile_passes(run: Callable[[], Any], passes: int, device: str = "cuda") -> PassProfile:
    """Time per pass of everything ``run`` launches, over ``passes`` calls after one warm-up call (which compiles).
    ``device``: ``cuda`` splits by CUDA kernel, ``cpu`` by operator (self time)."""
    import torch

    if passes < 1:
        raise ValueError(f"--passes must be a positive integer; got {passes!r}")
    activity = torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run()
    sync()
    with torch.profiler.profile(activities=[activity]) as prof:
        for _ in range(passes):
            run()
        sync()
    launches = device_launches(prof.events()) if device == "cuda" else []
    per_pass = per_pass_us(launches, passes)
    out = []
    for e in prof.key_averages():
        if device == "cuda":
            total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        else:
            total = e.self_cpu_time_total
        if total > 0:
            out.append(KernelTime(e.key, e.count / passes, total / passes, per_pass.get(e.key, ())))
    spans = [(start, end) for _, start, end in launches]
    return PassProfile(sorted(out, key=lambda k: -k.us), timeline(spans, passes))


def device_launches(events: Sequence[Any]) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` in us of the profiler events that ran on the GPU (``torch.profiler``'s
    ``FunctionEvent``: ``device_type`` CUDA)."""
    from torch.autograd import DeviceType

    return [(e.name, e.time_range.start, e.time_range.end) for e in events if e.device_type == DeviceType.CUDA]


def kernel_times(run: Callable[[], Any], passes: int, device: str = "cuda") -> list[KernelTime]:
    """``profile_passes``' times alone."""
    return profile_passes(run, passes, device).times


def profile(spec: KernelSpec, problem: Problem, passes: int = 3) -> PassProfile:
    """``profile_passes`` of one sweep step of ``spec`` on ``problem`` (its mode: fw, bw or fwbw). Gradients are
    reset before each pass, as the timers reset them between repetitions: otherwise every pass after the first
    adds its gradients to the last ones' (one elementwise kernel per input, which the timed step never runs)."""
    inputs = spec.make_inputs(problem)
    step, leaves = build_step(spec, inputs, problem.mode)

    def one_pass() -> None:
        for x in leaves:
            x.grad = None
        step()

    return profile_passes(one_pass, passes, problem.device)


def tfla_pass(inputs: list[Any], dh: Any, variant: str, chunk: int, tiles: Any = None) -> list[Any]:
    """One forward and backward pass of our kernel with ``tiles`` (the table's when ``None``), for the tile
    scripts: ``[h, dq, dk, dv, di, df]``. Gradients are reset first, as a sweep's step does."""
    from kernels.mlstm.tfla import mlstm_tfla

    for x in inputs:
        x.grad = None
    h = mlstm_tfla(*inputs, variant=variant, chunk_size=chunk, tiles=tiles)
    h.backward(dh)
    return [h.detach()] + [x.grad for x in inputs]


def tfla_inputs(shape: tuple[int, ...], dtype: str = "bfloat16", seed: int = 0, grad: bool = True) -> list[Any]:
    """``q, k, v, i, f`` of our kernel's spec (its ``make_inputs``) at ``shape`` (B, NH, S, DHQK, DHHV) on the
    GPU, seeded; ``grad``: as leaves that require gradients."""
    import torch

    from bench.registry import get

    torch.manual_seed(seed)
    b, nh, s, dqk, dv = shape
    problem = Problem(b, nh, s, dqk, dv, chunk_size=128, dtype=dtype, mode="fwbw" if grad else "fw")
    q, k, v, i, f, _ = get("tfla.mlstm_sig").make_inputs(problem)
    return [x.requires_grad_(grad) for x in (q, k, v, i, f)]
