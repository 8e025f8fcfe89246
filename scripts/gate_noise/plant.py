"""A planted slowdown for the A/B gate on the GPU: ``plant.mlstm_sig`` is ``tfla.mlstm_sig`` plus a second call on
the first EXTRA of the sequence (rounded up to whole chunks), so EXTRA = 0.2 does about 1.2x the work."""

import dataclasses
import math

from bench.registry import get, register

EXTRA = 0.0
_base = get("tfla.mlstm_sig")


def _fn(q, k, v, i, f, chunk=0):  # noqa: ANN001, ANN202
    out = _base.fn(q, k, v, i, f, chunk)
    h = out[0] if isinstance(out, tuple) else out
    if EXTRA:
        step = chunk or 128
        n = min(q.shape[2], math.ceil(q.shape[2] * EXTRA / step) * step)
        part = [x[:, :, :n].contiguous() for x in (q, k, v, i, f)]
        extra = _base.fn(*part, chunk)
        h = h + 0.0 * (extra[0] if isinstance(extra, tuple) else extra).sum()
    return h


register(dataclasses.replace(_base, name="plant.mlstm_sig", fn=_fn, description="tfla.mlstm_sig + EXTRA of its work"))
