"""A planted slowdown for the A/B gate on the GPU: ``plant.mlstm_sig`` is ``tfla.mlstm_sig`` plus a second call on
the first EXTRA of the sequence (rounded up to whole chunks), so EXTRA = 0.2 does about 1.2x the work, forward and
backward. The second output is tied to the first without touching it (``_Tie``): no extra pass over the output."""

import dataclasses
import math

import torch

from bench.registry import get, register

EXTRA = 0.0
_base = get("tfla.mlstm_sig")


class _Tie(torch.autograd.Function):
    """Returns ``h`` as it is and makes ``extra`` part of the graph, so the backward runs the extra call's too."""

    @staticmethod
    def forward(ctx, h, extra):  # noqa: ANN001, ANN205
        ctx.extra_shape, ctx.extra_dtype = extra.shape, extra.dtype
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad, torch.zeros(ctx.extra_shape, dtype=ctx.extra_dtype, device=grad.device)


def _fn(q, k, v, i, f, chunk=0):  # noqa: ANN001, ANN202
    out = _base.fn(q, k, v, i, f, chunk)
    h = out[0] if isinstance(out, tuple) else out
    if EXTRA:
        step = chunk or 128
        n = min(q.shape[2], math.ceil(q.shape[2] * EXTRA / step) * step)
        extra = _base.fn(*(x[:, :, :n].contiguous() for x in (q, k, v, i, f)), chunk)
        h = _Tie.apply(h, extra[0] if isinstance(extra, tuple) else extra)
    return h


register(dataclasses.replace(_base, name="plant.mlstm_sig", fn=_fn, description="tfla.mlstm_sig + EXTRA of its work"))
