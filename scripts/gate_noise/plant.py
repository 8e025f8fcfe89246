"""A planted slowdown for the A/B gate on the GPU: ``plant.mlstm_sig`` is ``tfla.mlstm_sig`` with a GPU spin
(``torch.cuda._sleep``) after its forward and at the start of its backward, each EXTRA times that pass's own time,
so EXTRA = 0.2 makes every timed pass 1.2x as long: a slowdown of the size the gate must flag, with no extra memory
traffic and no extra launches of our kernels (extra work on a slice of the sequence ran 1.36x..1.70x, not 1.2x: the
slice's copies, its gradient scatter and its lower rate cost more than its FLOPs).

Each pass's time and the spin's cycles per millisecond are measured once per shape in the process (CUDA events,
median of ``CALIBRATION_CALLS``), on the first call: the timer's warm-up."""

import dataclasses
import functools
import statistics
from collections.abc import Callable

import torch

from bench.measure import build_step, first_output
from bench.registry import get, register

EXTRA = 0.0
CALIBRATION_CALLS = 5
_base = get("tfla.mlstm_sig")
_spins: dict[tuple, tuple[int, int]] = {}  # (forward cycles, backward cycles) by input shapes, dtype and chunk


def _median_ms(step: Callable[[], object]) -> float:
    """Median time of ``step`` on the GPU, in milliseconds (one untimed call first)."""
    step()
    times = []
    for _ in range(CALIBRATION_CALLS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@functools.cache
def _cycles_per_ms() -> float:
    cycles = 20_000_000
    return cycles / _median_ms(lambda: torch.cuda._sleep(cycles))


def _spin_cycles(q, k, v, i, f, chunk) -> tuple[int, int]:  # noqa: ANN001
    """Cycles to spin after the forward and before the backward: EXTRA of each pass's measured time."""
    key = (tuple(q.shape), tuple(v.shape), q.dtype, chunk)
    if key not in _spins:
        inputs = (*(x.detach().clone() for x in (q, k, v, i, f)), chunk)
        fw_ms = _median_ms(build_step(_base, inputs, "fw")[0])
        with torch.enable_grad():  # the timed forward may run under no_grad
            fwbw_ms = _median_ms(build_step(_base, inputs, "fwbw")[0])
        rate = _cycles_per_ms()
        _spins[key] = (round(EXTRA * fw_ms * rate), round(EXTRA * max(fwbw_ms - fw_ms, 0.0) * rate))
    return _spins[key]


class _Spin(torch.autograd.Function):
    """Returns ``h`` as it is after a spin of ``fw_cycles``; its backward spins ``bw_cycles`` first."""

    @staticmethod
    def forward(ctx, h, fw_cycles, bw_cycles):  # noqa: ANN001, ANN205
        torch.cuda._sleep(fw_cycles)
        ctx.bw_cycles = bw_cycles
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        torch.cuda._sleep(ctx.bw_cycles)
        return grad, None, None


def _fn(q, k, v, i, f, chunk=0):  # noqa: ANN001, ANN202
    out = _base.fn(q, k, v, i, f, chunk)
    if not EXTRA:
        return first_output(out)
    fw_cycles, bw_cycles = _spin_cycles(q, k, v, i, f, chunk)
    return _Spin.apply(first_output(out), fw_cycles, bw_cycles)


register(
    dataclasses.replace(
        _base, name="plant.mlstm_sig", fn=_fn, description="tfla.mlstm_sig, each pass spun to 1 + EXTRA its time"
    )
)
