"""Triton helpers shared by the chunk kernels of ``chunk_fw`` and ``chunk_bw``: the gate matrix and the sliced
head-dim products of the intra-chunk loops."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def gate_matrix(row, col, keep):
    """A block of the gate matrix: ``exp2(row[i] + col[j])`` where ``keep[i, j]`` (the causal mask), else 0, from
    its per-row and per-column log2 parts (fp32 vectors; ``LOG2E`` times the natural-log gates). The sum of two
    vectors is the one full-size operation before ``exp2``."""
    return tl.exp2(tl.where(keep, row[:, None] + col[None, :], -float("inf")))


@triton.jit
def operand_once(
    A_D,
    a_row,
    bh,
    BA: tl.constexpr,
    BD: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """The loop-invariant operand ``A[a_row : a_row + BA]`` of ``head_dim_products``, loaded once before the token
    loop where one unrolled slice covers the head dim (a placeholder, never read, otherwise)."""
    if UNROLL and NSLICE == 1:
        tile = A_D.load([bh, a_row, 0]).reshape(BA, BD)
    else:
        tile = tl.zeros((BA, BD), dtype=A_D.dtype)
    return tile


@triton.jit
def head_dim_products(
    A_D,
    a_row,
    a_once,
    B_D,
    b_row,
    bh,
    D,
    BA: tl.constexpr,
    BB: tl.constexpr,
    BD: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``A[a_row : a_row + BA] B[b_row : b_row + BB]^T`` summed over the head dim ``D`` in ``BD`` slices:
    fp32 ``(BA, BB)``, for two descriptors ``[BH, S, D]`` with blocks ``[1, BA, BD]`` and ``[1, BB, BD]``.
    ``UNROLL`` unrolls the ``NSLICE = cdiv(D, BD)`` slices, so that the caller's token loop is the innermost
    loop, which Triton software-pipelines (the next token block's tiles load during this one's products); with one
    slice, ``A`` is ``a_once`` (``operand_once``, loaded before the loop)."""
    if UNROLL and NSLICE == 1:
        b = B_D.load([bh, b_row, 0]).reshape(BB, BD)
        acc = tl.dot(a_once, tl.trans(b), input_precision=DOT_PREC)
    else:
        acc = tl.zeros((BA, BB), dtype=tl.float32)
        if UNROLL:
            for j in tl.static_range(NSLICE):
                a = A_D.load([bh, a_row, j * BD]).reshape(BA, BD)
                b = B_D.load([bh, b_row, j * BD]).reshape(BB, BD)
                acc += tl.dot(a, tl.trans(b), input_precision=DOT_PREC)
        else:
            for d0 in range(0, D, BD):
                a = A_D.load([bh, a_row, d0]).reshape(BA, BD)
                b = B_D.load([bh, b_row, d0]).reshape(BB, BD)
                acc += tl.dot(a, tl.trans(b), input_precision=DOT_PREC)
    return acc
