"""Mamba (``selective_scan_fn``) and Mamba2 (``mamba_chunk_scan_combined``) from ``mamba-ssm``.

Shape mapping (TFLA paper): width = ``heads * head_dim_v``; Mamba d_inner = 2 * width, d_state 16;
Mamba2 head dim 64, d_state 64, heads = 2 * width / 64, one group, chunk 256.
"""

from __future__ import annotations

from typing import Any

from bench import flops
from bench.problem import Problem
from bench.registry import KernelSpec, package_reason, register
from specs.shapes import (
    MAMBA2_CHUNK,
    MAMBA2_HEAD_DIM,
    MAMBA2_STATE,
    MAMBA_EXPAND,
    MAMBA_STATE,
    itemsize,
    width,
)


def _d_inner(p: Problem) -> int:
    return MAMBA_EXPAND * width(p)


def _mamba2_heads(p: Problem) -> int:
    return max(1, MAMBA_EXPAND * width(p) // MAMBA2_HEAD_DIM)


def mamba_inputs(p: Problem) -> tuple[Any, ...]:
    import torch

    d, n, dt, dev = _d_inner(p), MAMBA_STATE, p.torch_dtype, p.device
    u = torch.randn(p.batch, d, p.seq_len, dtype=dt, device=dev)
    delta = torch.rand(p.batch, d, p.seq_len, dtype=dt, device=dev) * 0.1
    A = -torch.rand(d, n, device=dev)
    B = torch.randn(p.batch, n, p.seq_len, dtype=dt, device=dev)
    C = torch.randn(p.batch, n, p.seq_len, dtype=dt, device=dev)
    D = torch.randn(d, device=dev)
    return u, delta, A, B, C, D


def mamba2_inputs(p: Problem) -> tuple[Any, ...]:
    import torch

    h, hd, n, dt, dev = _mamba2_heads(p), MAMBA2_HEAD_DIM, MAMBA2_STATE, p.torch_dtype, p.device
    x = torch.randn(p.batch, p.seq_len, h, hd, dtype=dt, device=dev)
    dt_ = torch.rand(p.batch, p.seq_len, h, device=dev) * 0.1
    A = -torch.rand(h, device=dev)
    B = torch.randn(p.batch, p.seq_len, 1, n, dtype=dt, device=dev)
    C = torch.randn(p.batch, p.seq_len, 1, n, dtype=dt, device=dev)
    return x, dt_, A, B, C


def selective_scan_reference(u, delta, A, B, C, D):  # noqa: ANN001, ANN201
    """Mamba's selective scan, step by step in the inputs' promoted dtype (float64 for ``bench verify``), as
    ``_mamba`` calls it: ``u, delta (b, d, l)``, ``A (d, n)``, ``B, C (b, n, l)``, ``D (d,)``, softplus on ``delta``.

    ``x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t`` (state ``(b, d, n)``), ``y_t = x_t . C_t + D u_t``;
    returns ``y (b, d, l)``.
    """
    import torch
    import torch.nn.functional as F

    dt = F.softplus(delta)
    decay = torch.exp(dt[..., None] * A[:, None, :])  # (b, d, l, n)
    drive = (dt * u)[..., None] * B.transpose(1, 2)[:, None]  # (b, d, l, n)
    state = torch.zeros_like(drive[:, :, 0])
    ys = []
    for t in range(u.shape[-1]):
        state = decay[:, :, t] * state + drive[:, :, t]
        ys.append((state * C[:, None, :, t]).sum(-1))
    return torch.stack(ys, dim=-1) + u * D[:, None]


def ssd_reference(x, dt, A, B, C):  # noqa: ANN001, ANN201
    """Mamba2's SSD in its quadratic form, in the inputs' promoted dtype, as ``_mamba2`` calls it (no softplus, no
    ``D``): ``x (b, l, h, p)``, ``dt (b, l, h)``, ``A (h,)``, ``B, C (b, l, g, n)`` with one group.

    ``y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<r<=t} dt_r A) dt_s x_s``, the output of the recurrence
    ``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``, ``y_t = H_t C_t``; returns ``y (b, l, h, p)``.
    """
    import torch

    L = x.shape[1]
    cum = torch.cumsum(dt * A, dim=1).transpose(1, 2)  # (b, h, l)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = torch.where(causal, cum[..., :, None] - cum[..., None, :], -torch.inf).exp()  # (b, h, t, s)
    scores = (C[:, :, 0] @ B[:, :, 0].transpose(1, 2))[:, None] * decay * dt.transpose(1, 2)[..., None, :]
    return (scores @ x.transpose(1, 2)).transpose(1, 2)


def _mamba(u, delta, A, B, C, D):  # noqa: ANN001, ANN202
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, delta_softplus=True)


def _mamba2(x, dt, A, B, C):  # noqa: ANN001, ANN202
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(x, dt, A, B, C, MAMBA2_CHUNK)


register(
    KernelSpec(
        name="mamba.mamba",
        family="ssm",
        make_inputs=mamba_inputs,
        fn=_mamba,
        flops=lambda p: flops.selective_scan_flops(p.batch, p.seq_len, _d_inner(p), MAMBA_STATE, p.mode),
        bytes=lambda p: flops.sequence_mixer_bytes(
            p.batch, 1, p.seq_len, 2 * MAMBA_STATE, 2 * _d_inner(p), itemsize(p), p.mode
        ),
        available=lambda: package_reason("mamba_ssm", "selective_scan_cuda"),
        params=lambda p: {"d_inner": _d_inner(p), "d_state": MAMBA_STATE},
        reference=selective_scan_reference,
        input_names=("u", "delta", "A", "B", "C", "D"),
        description="Mamba selective scan (mamba-ssm CUDA kernel)",
    )
)
register(
    KernelSpec(
        name="mamba.mamba2",
        family="ssm",
        make_inputs=mamba2_inputs,
        fn=_mamba2,
        flops=lambda p: flops.chunkwise_flops(
            p.batch, _mamba2_heads(p), p.seq_len, MAMBA2_STATE, MAMBA2_HEAD_DIM, MAMBA2_CHUNK, p.mode
        ),
        bytes=lambda p: flops.sequence_mixer_bytes(
            p.batch, _mamba2_heads(p), p.seq_len, MAMBA2_STATE, MAMBA2_HEAD_DIM, itemsize(p), p.mode, 1
        ),
        available=lambda: package_reason("mamba_ssm", "selective_scan_cuda"),
        params=lambda p: {
            "heads": _mamba2_heads(p),
            "head_dim": MAMBA2_HEAD_DIM,
            "d_state": MAMBA2_STATE,
            "chunk_size": MAMBA2_CHUNK,
            "groups": 1,
        },
        reference=ssd_reference,
        input_names=("x", "dt", "A", "B", "C"),
        description="Mamba2 SSD (mamba-ssm Triton mamba_chunk_scan_combined)",
    )
)
