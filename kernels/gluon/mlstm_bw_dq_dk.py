"""The TFLA backward's ``dq`` and ``dk`` kernels (``kernels.mlstm.chunk_bw.bw_chunk_dq_kernel`` and
``bw_chunk_dk_kernel``) in Gluon for Hopper, warp-specialized: one kernel, the two being mirror images.

A ``dq`` program takes ``BR`` queries of one chunk (its rows) and walks the chunk's key tiles up to the diagonal (its
columns); a ``dk`` program takes ``BR`` keys and walks the query tiles from the diagonal to the chunk's end. Both
take the whole q/k head dim ``W`` (padded, 64..256), so the product over the value head dim (512 at 7B), ``dh v^T``
for ``dq`` and ``v dh^T`` for ``dk``, is formed once per column tile, and the gradient is one ``BR x W``
accumulator that each column tile's product updates whole (an ``N = W`` wgmma). The roles, rows' operands first:

| | rows (fixed) | their value-side rows (fixed) | columns (streamed) | their value-side rows | state |
| --- | --- | --- | --- | --- | --- |
| ``dq`` | ``q`` | ``dh`` | ``k`` | ``v`` | ``C_c`` |
| ``dk`` | ``k`` | ``v`` | ``q`` | ``dh`` | ``dC_{c+1}`` |

Every streamed operand is a slot of ``64 x W`` elements, so that one ring of equal buffers carries all of them:

- a 1-warp load partition brings the row tile and its value-side rows (``NVH = cdiv(DV, W)`` buffers of ``BR x W``)
  once, then through a ring of ``STAGES`` slots the state in ``W x 64`` slices (all q/k rows, 64 values each: ``NS
  = cdiv(DV, 64)`` of them, the slot seen with that shape), then for each column tile its ``NVH`` value-side slots
  and its q/k slot (``64 x W``);
- one consumer (4 warps, or 8 whose two warpgroups split every product's columns: ``acc_layout``): the inter-chunk
  term ``xv[:, 64 values] @ state_slice^T`` into the accumulator, then per column tile ``dp = xv @ yv^T`` over the
  value-side slots, ``a`` = the gate matrix times ``dp`` scaled and shifted per query (the normalizer's ``1 / den``
  and ``dz``), in registers, ``scores = x y^T`` and ``acc += a y``.

The dot products of the rows with their gradient for the gate gradients (``q . dq``; ``k . dk`` with its inter and
off-diagonal parts apart) are summed in fp32 from the inter term and from ``a`` and the scores, as in the Triton
kernels (one head-dim tile: each is ``(1, BH, SP)``).

``bw_dq_dk_kernel`` is one role a launch (``KEYS``); ``bw_dq_dk_pair_kernel`` both in one launch, programs ``2t`` and
``2t + 1`` the ``dq`` and ``dk`` programs of row tile ``t``, so that a chunk's q, k, v and dh tiles are read from
DRAM once while both are resident (two launches read all four twice: 4.84 against 3.24 GB at 7B, S 8192); its role
is a runtime value (``_consume``).

Not yet: 32-bit inputs, a q/k head dim of 32 or less, the gate math overlapped with the products.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from kernels.gluon import compat, intra_chunk
from kernels.gluon.intra_chunk import (
    LOAD_REGS,
    LOAD_WARPS,
    LOG2E,
    MAX_HEAD_DIM_QK,
    claim_stage,
    head_tiles,
    invalidate_ring,
    mma_layout,
    ring_barriers,
)
from kernels.mlstm.sm90_compile import HOPPER_SMEM_BYTES

TILE = gl.constexpr(64)  # rows of a program and of every streamed q/k or value slot; values in each state slice
MAX_STAGES = 8


@gluon.constexpr_function
def acc_layout(num_warps: int, n: int) -> gl.NVMMADistributedLayout:
    """The wgmma layout of a ``64 x n`` product: one warpgroup (4 warps) takes whole rows; two (8 warps) split the
    columns, each an ``n / 2``-wide wgmma."""
    if num_warps == 4:
        return mma_layout(num_warps, n)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, num_warps // 4], instr_shape=[16, n // 2, 16])


@gluon.jit
def _load_partition(X_D, XV_D, Y_D, YV_D, S_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, bh, row0, state_row,
                    col0, n_blocks):  # fmt: skip
    """The producer (module docstring): the row tile and its ``NVH`` value-side buffers once, then ring loads in the
    consumer's order: the ``NS`` state slices, then per column tile (``n_blocks`` of them from token ``col0``) its
    ``NVH`` value-side slots and its q/k slot."""
    NVH: gl.constexpr = xv_bufs.type.shape[0]
    W: gl.constexpr = X_D.block_type.shape[2]
    NS: gl.constexpr = NVH * (W // TILE)
    mbarrier.expect(fix_ready, X_D.block_type.nbytes + NVH * XV_D.block_type.nbytes)
    compat.tma_load(X_D, [bh, row0, 0], fix_ready, x_smem)
    for h in gl.static_range(NVH):
        compat.tma_load(XV_D, [bh, row0, h * W], fix_ready, xv_bufs.index(h))
    for p in gl.static_range(NS):
        s = claim_stage(ready, empty, S_D.block_type.nbytes, p)
        slice_buf = compat.reinterpret_as(ring.index(s), S_D)
        compat.tma_load(S_D, [state_row, 0, p * TILE], ready.index(s), slice_buf)
    for b in range(n_blocks):
        u0 = NS + b * (NVH + 1)
        for h in gl.static_range(NVH):
            s = claim_stage(ready, empty, YV_D.block_type.nbytes, u0 + h)
            compat.tma_load(YV_D, [bh, col0 + b * TILE, h * W], ready.index(s), ring.index(s))
        s = claim_stage(ready, empty, Y_D.block_type.nbytes, u0 + NVH)
        compat.tma_load(Y_D, [bh, col0 + b * TILE, 0], ready.index(s), ring.index(s))


@gluon.jit
def _ring_wait(ring, ready, u):
    """Stage ``u % STAGES`` of the ring once load ``u`` has landed."""
    stages: gl.constexpr = ring.type.shape[0]
    mbarrier.wait(ready.index(u % stages), (u // stages) & 1)
    return ring.index(u % stages)


@gluon.jit
def _chain(a, b, acc, empty, u, first: gl.constexpr, ASYNC: gl.constexpr):
    """``acc + a @ b`` with ``b`` in ring stage ``u % STAGES``, one link of a chain of products into ``acc``: the
    stage is handed back once its product has completed. ``ASYNC``: the product is issued before the previous
    link's is waited for (that one's stage is handed back here; ``_chain_end`` hands back the last)."""
    stages: gl.constexpr = empty.type.shape[0]
    if ASYNC:
        acc = warpgroup_mma(a, b, acc, is_async=True)
        if not first:
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            mbarrier.arrive(empty.index((u - 1) % stages), count=1)
    else:
        acc = warpgroup_mma(a, b, acc)
        mbarrier.arrive(empty.index(u % stages), count=1)
    return acc


@gluon.jit
def _chain_end(acc, empty, u_last, ASYNC: gl.constexpr):
    """The chain's last product completed and its stage (load ``u_last``) handed back (``_chain``)."""
    stages: gl.constexpr = empty.type.shape[0]
    if ASYNC:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index(u_last % stages), count=1)
    return acc


@gluon.jit
def _row_vectors(GATE_B, GATE_I, INV_DEN, DZ, M_ST, M_TOK, bh, st, t_r, c_end, SP, KEYS,
                 EXP: gl.constexpr, BR: gl.constexpr, layout: gl.constexpr):  # fmt: skip
    """Per row (the ``BR`` tokens ``t_r`` in ``layout``): the inter term's weight, scale and shift, and the row's
    part of the gate matrix's exponent (log2)."""
    b_r = gl.load(GATE_B + bh * SP + t_r)
    m_st = gl.load(M_ST + st) if EXP else 0.0
    if KEYS == 1:  # w (v dC^T + dn) with w = exp(g - b_s + i_s - m_next); exponent i_s - b_s
        i_r = gl.load(GATE_I + bh * SP + t_r)
        w_inter = gl.exp(gl.load(GATE_B + bh * SP + c_end - 1) - b_r + i_r - m_st)
        row = (i_r - b_r) * LOG2E
        scale = gl.full([BR], 1.0, gl.float32, layout)
        shift = scale
    else:  # w (dh C^T / den + dz n) with w = exp(b_t + m_c - m_t); exponent b_t - m_t
        m_r = gl.load(M_TOK + bh * SP + t_r) if EXP else gl.zeros([BR], gl.float32, layout)
        w_inter = gl.exp(b_r + m_st - m_r)
        row = (b_r - m_r) * LOG2E
        scale = gl.load(INV_DEN + bh * SP + t_r)
        shift = gl.load(DZ + bh * SP + t_r)
    return w_inter, row, scale, shift


@gluon.jit
def _consume(x_smem, xv_bufs, ring, fix_ready, ready, empty, S_D, GATE_B, GATE_I, INV_DEN, DZ, VEC_ST, M_ST, M_TOK, bh,
             st, row0, col0, c_end, n_blocks, SP, DHQK, qk_scale, KEYS, EXP: gl.constexpr, ASYNC: gl.constexpr,
             num_warps: gl.constexpr, RUNTIME_ROLE: gl.constexpr = False):  # fmt: skip
    """The consumer's products (module docstring) up to its gradient's store: ``acc`` (the gradient, unscaled) and
    the rows' sums of ``x . dx`` from the inter term, the off-diagonal and the diagonal (``dk`` only) column tiles,
    with the rows' tokens ``t_r``. ``st``: the index of the state the inter term reads (``M_ST``, ``VEC_ST``: ``n`` for
    ``dq``, ``dn`` for ``dk``); ``c_end``: the token after the chunk's last. ``KEYS`` (the role) is a constexpr in the
    kernels of one role; with ``RUNTIME_ROLE`` (``bw_dq_dk_pair_kernel``) a runtime 0 or 1, and the column tiles'
    gate math has no branch on it: both roles' factors are a row vector times a column vector, the other side's being
    1 (the shift's 0), and the causal mask a select between the two compares, so one loop serves both (a body a role,
    or a branch in the loop that the compiler unswitched into a loop a role, made ptxas spill 344 or 172 bytes a
    thread at 7B with one warpgroup; this, 4)."""
    NVH: gl.constexpr = xv_bufs.type.shape[0]
    BR: gl.constexpr = x_smem.type.shape[1]
    W: gl.constexpr = x_smem.type.shape[2]
    PER: gl.constexpr = W // TILE  # state slices in one value-side buffer
    stages: gl.constexpr = ring.type.shape[0]
    dtype: gl.constexpr = x_smem.dtype
    o_layout: gl.constexpr = acc_layout(num_warps, W)  # the gradient, BR x W
    s_layout: gl.constexpr = acc_layout(num_warps, TILE)  # dp, the scores, the gates: BR x TILE
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    cols_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    t_o = row0 + gl.arange(0, BR, layout=rows_o)
    w_inter, _, inter_scale, inter_shift = _row_vectors(
        GATE_B, GATE_I, INV_DEN, DZ, M_ST, M_TOK, bh, st, t_o, c_end, SP, KEYS, EXP, BR, rows_o
    )
    t_r = row0 + gl.arange(0, BR, layout=rows_s)
    _, row, scale, shift = _row_vectors(
        GATE_B, GATE_I, INV_DEN, DZ, M_ST, M_TOK, bh, st, t_r, c_end, SP, KEYS, EXP, BR, rows_s
    )
    mbarrier.wait(fix_ready, 0)
    x2 = x_smem.reshape([BR, W])

    # The inter-chunk term: xv (64 values at a time) times the state slices, transposed.
    acc = gl.zeros([BR, W], gl.float32, o_layout)
    for p in gl.static_range(NVH * PER):
        slice_buf = compat.reinterpret_as(_ring_wait(ring, ready, p), S_D)
        xv_p = xv_bufs.index(p // PER).reshape([BR, W]).slice((p % PER) * TILE, TILE, dim=1)
        acc = _chain(xv_p, slice_buf.reshape([W, TILE]).permute((1, 0)), acc, empty, p, p == 0, ASYNC)
    acc = _chain_end(acc, empty, NVH * PER - 1, ASYNC)
    offs = gl.arange(0, W, layout=gl.SliceLayout(0, o_layout))
    vec = gl.load(VEC_ST + st * DHQK + offs, mask=offs < DHQK, other=0.0)
    acc = (acc * inter_scale[:, None] + inter_shift[:, None] * vec[None, :]) * w_inter[:, None]
    xdx_inter = gl.convert_layout(gl.sum(x2.load(o_layout).to(gl.float32) * acc, axis=1), rows_s)

    # The column tiles: keys up to the diagonal (dq), queries from the diagonal on (dk).
    if RUNTIME_ROLE:  # the factors of both roles as row x column (module docstring of _consume); KEYS is 0 or 1
        is_dq = KEYS == 0
        row_shift = shift * (1 - KEYS)
        col_plus = GATE_I  # the column's exponent: col_plus - col_minus (dq: i_s - b_s; dk: b_t - m_t, sig: b_t)
        col_minus = GATE_B
        if KEYS == 1:
            col_plus = GATE_B
            col_minus = M_TOK
        minus_end = SP if EXP else SP * (1 - KEYS)  # columns before it load col_minus: all, or dq's
        query_end = SP * KEYS  # columns before it are queries with a scale and shift: dk's
    zero = gl.zeros([BR, TILE], gl.float32, s_layout)
    xdx_off = gl.zeros([BR], gl.float32, rows_s)
    xdx_diag = gl.zeros([BR], gl.float32, rows_s)
    for b in range(n_blocks):
        u0 = NVH * PER + b * (NVH + 1)
        dp = zero
        for h in gl.static_range(NVH):
            yv = _ring_wait(ring, ready, u0 + h).reshape([TILE, W])
            dp = _chain(xv_bufs.index(h).reshape([BR, W]), yv.permute((1, 0)), dp, empty, u0 + h, h == 0, ASYNC)
        dp = _chain_end(dp, empty, u0 + NVH - 1, ASYNC)
        t_c = col0 + b * TILE + gl.arange(0, TILE, layout=cols_s)
        if RUNTIME_ROLE:
            minus = gl.load(col_minus + bh * SP + t_c, mask=t_c < minus_end, other=0.0)
            col = gl.load(col_plus + bh * SP + t_c) - minus
            # dq: keys s <= t; dk: queries t >= s (a column vector t * sign, 16 registers a thread, spilled 160 bytes)
            causal = gl.where(is_dq, t_c[None, :] <= t_r[:, None], t_c[None, :] >= t_r[:, None])
            gates = gl.exp2(gl.where(causal, row[:, None] + (col * LOG2E)[None, :], -float("inf")))
            query_cols = t_c < query_end
            col_scale = gl.load(INV_DEN + bh * SP + t_c, mask=query_cols, other=1.0 / qk_scale) * qk_scale
            col_shift = gl.load(DZ + bh * SP + t_c, mask=query_cols, other=0.0) * qk_scale
            factor = scale[:, None] * col_scale[None, :]
            a = gates * (dp * factor + (row_shift[:, None] + col_shift[None, :]))
        elif KEYS:
            # columns are queries: D[s, t] = exp(i_s - b_s + b_t - m_t), t >= s, times (dp / den_t + dz_t) * scale
            b_c = gl.load(GATE_B + bh * SP + t_c)
            m_c = gl.load(M_TOK + bh * SP + t_c) if EXP else gl.zeros([TILE], gl.float32, cols_s)
            causal = t_c[None, :] >= t_r[:, None]
            gates = gl.exp2(gl.where(causal, row[:, None] + ((b_c - m_c) * LOG2E)[None, :], -float("inf")))
            den = gl.load(INV_DEN + bh * SP + t_c) * qk_scale
            a = gates * (dp * den[None, :] + (gl.load(DZ + bh * SP + t_c) * qk_scale)[None, :])
        else:  # columns are keys: D[t, s] = exp(b_t - m_t + i_s - b_s), s <= t, times dp / den_t + dz_t
            causal = t_c[None, :] <= t_r[:, None]
            col = (gl.load(GATE_I + bh * SP + t_c) - gl.load(GATE_B + bh * SP + t_c)) * LOG2E
            gates = gl.exp2(gl.where(causal, row[:, None] + col[None, :], -float("inf")))
            a = gates * (dp * scale[:, None] + shift[:, None])
        a_op = gl.convert_layout(a.to(dtype), a_layout)
        y = _ring_wait(ring, ready, u0 + NVH).reshape([TILE, W])  # TILE columns' tokens x the q/k head dim
        scores = warpgroup_mma(x2, y.permute((1, 0)), zero, use_acc=False, is_async=True)
        acc = warpgroup_mma(a_op, y, acc, is_async=True)
        scores, acc, a_op = warpgroup_mma_wait(num_outstanding=0, deps=(scores, acc, a_op))
        mbarrier.arrive(empty.index((u0 + NVH) % stages), count=1)
        d_gate = a * scores
        if RUNTIME_ROLE:  # as dk's below (a is 0 off the causal part in both roles)
            xdx_off += gl.sum(gl.where(t_c[None, :] != t_r[:, None], d_gate, 0.0), axis=1)
            xdx_diag += gl.sum(gl.where(t_c[None, :] == t_r[:, None], d_gate, 0.0), axis=1)
        elif KEYS:  # a is 0 off the causal part; not asking for the mask again saves dk 40 bytes of spills (dq's 0 not)
            xdx_off += gl.sum(gl.where(t_c[None, :] != t_r[:, None], d_gate, 0.0), axis=1)
            xdx_diag += gl.sum(gl.where(t_c[None, :] == t_r[:, None], d_gate, 0.0), axis=1)
        else:
            xdx_off += gl.sum(gl.where(causal & (t_c[None, :] != t_r[:, None]), d_gate, 0.0), axis=1)

    if RUNTIME_ROLE:  # dq's sum leaves the diagonal out
        xdx_diag = xdx_diag * KEYS
    return acc, xdx_inter, xdx_off, xdx_diag, t_r


@gluon.jit
def _epilogue(x_smem, OUT_D, SUMS, acc, xdx_inter, xdx_off, xdx_diag, t_r, bh, row0, SP, qk_scale,
              KEYS: gl.constexpr):  # fmt: skip
    """The gradient through the row tile's buffer (its last read is done) and TMA; the sums as the Triton kernels'
    one tile: q . dq (times the scale, as dq), or k . dk, its inter part and its off-diagonal part."""
    BR: gl.constexpr = x_smem.type.shape[1]
    W: gl.constexpr = x_smem.type.shape[2]
    out_scale = 1.0 if KEYS else qk_scale
    x_smem.reshape([BR, W]).store((acc * out_scale).to(OUT_D.dtype))
    fence_async_shared()
    compat.tma_store(OUT_D, [bh, row0, 0], x_smem)
    tma.store_wait(pendings=0)
    plane = gl.num_programs(1) * SP
    gl.store(SUMS + bh * SP + t_r, (xdx_inter + xdx_off + xdx_diag) * out_scale)
    if KEYS:
        gl.store(SUMS + plane + bh * SP + t_r, xdx_inter)
        gl.store(SUMS + 2 * plane + bh * SP + t_r, xdx_off)


@gluon.jit
def _compute_partition(x_smem, xv_bufs, ring, fix_ready, ready, empty, S_D, OUT_D, SUMS, GATE_B, GATE_I, INV_DEN,
                       DZ, VEC_ST, M_ST, M_TOK, bh, st, row0, col0, c_end, n_blocks, SP, DHQK, qk_scale,
                       KEYS: gl.constexpr, EXP: gl.constexpr, ASYNC: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """The consumer of one role (module docstring; ``_consume``'s arguments)."""
    acc, xdx_inter, xdx_off, xdx_diag, t_r = _consume(
        x_smem, xv_bufs, ring, fix_ready, ready, empty, S_D, GATE_B, GATE_I, INV_DEN, DZ, VEC_ST, M_ST, M_TOK, bh, st,
        row0, col0, c_end, n_blocks, SP, DHQK, qk_scale, KEYS, EXP, ASYNC, num_warps,
    )  # fmt: skip
    _epilogue(x_smem, OUT_D, SUMS, acc, xdx_inter, xdx_off, xdx_diag, t_r, bh, row0, SP, qk_scale, KEYS)


@gluon.jit
def _role(pid_c, bh, NC, L, BR: gl.constexpr, KEYS):
    """Row tile ``pid_c`` of head ``bh`` as a ``dq`` program or, ``KEYS`` (a constexpr, or a runtime 0 or 1), a ``dk``
    one: ``st`` (the index of the state its inter term's ``M_ST`` / ``VEC_ST`` row), ``state_row`` (its state tile's
    row in ``S_D``), ``row0``, ``col0`` (its first column token), ``c_end`` (the token after its chunk) and
    ``n_blocks`` (its column tiles)."""
    c = pid_c // (L // BR)
    r_start = (pid_c % (L // BR)) * BR
    row0 = c * L + r_start
    if KEYS == 1:  # the next state's gradient; query tiles from the diagonal to the chunk's end
        st = bh * (NC + 1) + c + 1
        state_row = st
        col0 = row0
        n_blocks = (L - r_start) // TILE
    else:  # this chunk's state; key tiles from the chunk's start to the diagonal
        st = bh * (NC + 1) + c
        state_row = bh * NC + c
        col0 = c * L
        n_blocks = gl.cdiv(r_start + BR, TILE)
    return st, state_row, row0, col0, c * L + L, n_blocks


@gluon.jit
def _buffers(X_D, XV_D, Y_D, NVH: gl.constexpr, STAGES: gl.constexpr):
    """The row tile, its ``NVH`` value-side buffers, the ring of ``STAGES`` column slots (``TILE x W``) and its
    barriers (``intra_chunk.ring_barriers``), for descriptors with ``X_D``'s, ``XV_D``'s and ``Y_D``'s blocks."""
    BR: gl.constexpr = X_D.block_type.shape[1]
    W: gl.constexpr = X_D.block_type.shape[2]
    x_smem = gl.allocate_shared_memory(X_D.dtype, [1, BR, W], X_D.layout)
    xv_bufs = gl.allocate_shared_memory(XV_D.dtype, [NVH, 1, BR, W], XV_D.layout)
    ring = gl.allocate_shared_memory(Y_D.dtype, [STAGES, 1, TILE, W], Y_D.layout)
    fix_ready, ready, empty = ring_barriers(STAGES, 1)
    return x_smem, xv_bufs, ring, fix_ready, ready, empty


@gluon.jit
def bw_dq_dk_kernel(
    X_D,
    XV_D,
    Y_D,
    YV_D,
    S_D,
    OUT_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    VEC_ST,
    M_ST,
    M_TOK,
    SUMS,
    SP,
    NC,
    DHQK,
    qk_scale,
    L,
    KEYS: gl.constexpr,
    EXP: gl.constexpr,
    NVH: gl.constexpr,
    STAGES: gl.constexpr,
    ASYNC: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(NC * L / BR, BH, 1)``; ``KEYS``: the ``dk`` kernel, else ``dq`` (module docstring's table). Descriptors
    over ``(heads, rows, cols)`` with blocks ``[1, rows, cols]``: ``X_D`` and ``OUT_D`` (BR x W, ``W`` the padded q/k
    head dim), ``XV_D`` (BR x W over the value head dim, ``NVH`` of them), ``Y_D`` and ``YV_D`` (TILE x W), ``S_D`` (W
    x TILE over the ``BH * NC`` chunk states ``C_c`` or the ``BH * (NC + 1)`` state gradients ``dC``); ``VEC_ST (BH *
    (NC + 1), DHQK)``: ``n`` or ``dn``; ``SUMS``: one ``(BH, SP)`` plane of ``q . dq``, or three of ``k . dk`` (all,
    inter, off-diagonal); ``ASYNC``: ``_chain``'s."""
    BR: gl.constexpr = X_D.block_type.shape[1]
    bh = gl.program_id(1)
    st, state_row, row0, col0, c_end, n_blocks = _role(gl.program_id(0), bh, NC, L, BR, KEYS)
    x_smem, xv_bufs, ring, fix_ready, ready, empty = _buffers(X_D, XV_D, Y_D, NVH, STAGES)
    gl.warp_specialize(
        [
            (
                _compute_partition,
                (x_smem, xv_bufs, ring, fix_ready, ready, empty, S_D, OUT_D, SUMS, GATE_B, GATE_I, INV_DEN, DZ, VEC_ST,
                 M_ST, M_TOK, bh, st, row0, col0, c_end, n_blocks, SP, DHQK, qk_scale, KEYS, EXP, ASYNC,
                 num_warps),
            ),
            (
                _load_partition,
                (X_D, XV_D, Y_D, YV_D, S_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, bh, row0, state_row, col0,
                 n_blocks),
            ),
        ],
        [LOAD_WARPS],
        [LOAD_REGS],
    )  # fmt: skip
    invalidate_ring(fix_ready, ready, empty)


@gluon.jit
def _pair_compute(C_D, DQ_D, DK_D, SUMS_Q, SUMS_K, GATE_B, GATE_I, INV_DEN, DZ, N_ST, DN_ST, M_ST, M_TOK, x_smem,
                  xv_bufs, ring, fix_ready, ready, empty, pid, bh, SP, NC, DHQK, qk_scale, L, EXP: gl.constexpr,
                  ASYNC: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """``bw_dq_dk_pair_kernel``'s consumer: ``_consume`` in program ``pid``'s role (a runtime flag), then that
    role's ``_epilogue``."""
    BR: gl.constexpr = x_smem.type.shape[1]
    keys = pid % 2  # the role, 0 (dq) or 1 (dk): _consume's arithmetic takes it as a number
    st, _, row0, col0, c_end, n_blocks = _role(pid // 2, bh, NC, L, BR, keys)
    vec_st = N_ST
    if keys == 1:
        vec_st = DN_ST
    acc, xdx_inter, xdx_off, xdx_diag, t_r = _consume(
        x_smem, xv_bufs, ring, fix_ready, ready, empty, C_D, GATE_B, GATE_I, INV_DEN, DZ, vec_st, M_ST, M_TOK, bh, st,
        row0, col0, c_end, n_blocks, SP, DHQK, qk_scale, keys, EXP, ASYNC, num_warps, True,
    )  # fmt: skip
    if keys == 1:
        _epilogue(x_smem, DK_D, SUMS_K, acc, xdx_inter, xdx_off, xdx_diag, t_r, bh, row0, SP, qk_scale, True)
    else:
        _epilogue(x_smem, DQ_D, SUMS_Q, acc, xdx_inter, xdx_off, xdx_diag, t_r, bh, row0, SP, qk_scale, False)


@gluon.jit
def _pair_load(Q_D, K_D, V_D, DH_D, C_D, DC_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, pid, bh, NC, L):
    """``bw_dq_dk_pair_kernel``'s producer: ``_load_partition`` in program ``pid``'s role."""
    BR: gl.constexpr = Q_D.block_type.shape[1]
    keys = pid % 2
    _, state_row, row0, col0, _, n_blocks = _role(pid // 2, bh, NC, L, BR, keys)
    if keys == 1:  # the module docstring's table: the descriptors in each role's order
        _load_partition(K_D, V_D, Q_D, DH_D, DC_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, bh, row0,
                        state_row, col0, n_blocks)  # fmt: skip
    else:
        _load_partition(Q_D, DH_D, K_D, V_D, C_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, bh, row0,
                        state_row, col0, n_blocks)  # fmt: skip


@gluon.jit
def bw_dq_dk_pair_kernel(
    Q_D,
    K_D,
    V_D,
    DH_D,
    C_D,
    DC_D,
    DQ_D,
    DK_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    N_ST,
    DN_ST,
    M_ST,
    M_TOK,
    SUMS_Q,
    SUMS_K,
    SP,
    NC,
    DHQK,
    qk_scale,
    L,
    EXP: gl.constexpr,
    NVH: gl.constexpr,
    STAGES: gl.constexpr,
    ASYNC: gl.constexpr,
    num_warps: gl.constexpr,
):
    """``dq`` and ``dk`` in one launch: grid ``(2 * NC * L / BR, BH, 1)``, program ``2 t`` the ``dq`` program of row
    tile ``t`` and ``2 t + 1`` its ``dk`` program, so that the two read a chunk's q, k, v and dh tiles while they
    are both resident and the second read of each is an L2 hit (two launches read them from DRAM twice). Every
    descriptor's block is ``[1, 64, W]`` (states: ``[1, W, 64]``), as ``bw_dq_dk_kernel``'s in either role; ``SUMS_Q``,
    ``SUMS_K``: its ``SUMS`` of each role."""
    pair_program(
        Q_D, K_D, V_D, DH_D, C_D, DC_D, DQ_D, DK_D, GATE_B, GATE_I, INV_DEN, DZ, N_ST, DN_ST, M_ST, M_TOK, SUMS_Q,
        SUMS_K, SP, NC, DHQK, qk_scale, L, gl.program_id(0), gl.program_id(1), EXP, NVH, STAGES, ASYNC, num_warps,
    )  # fmt: skip


@gluon.jit
def pair_program(Q_D, K_D, V_D, DH_D, C_D, DC_D, DQ_D, DK_D, GATE_B, GATE_I, INV_DEN, DZ, N_ST, DN_ST, M_ST, M_TOK,
                 SUMS_Q, SUMS_K, SP, NC, DHQK, qk_scale, L, pid, bh, EXP: gl.constexpr, NVH: gl.constexpr,
                 STAGES: gl.constexpr, ASYNC: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """``bw_dq_dk_pair_kernel``'s program ``(pid, bh)`` (also a program of ``mlstm_bw_grads.bw_grads_kernel``)."""
    x_smem, xv_bufs, ring, fix_ready, ready, empty = _buffers(Q_D, DH_D, K_D, NVH, STAGES)
    gl.warp_specialize(
        [
            (
                _pair_compute,
                (C_D, DQ_D, DK_D, SUMS_Q, SUMS_K, GATE_B, GATE_I, INV_DEN, DZ, N_ST, DN_ST, M_ST, M_TOK, x_smem,
                 xv_bufs, ring, fix_ready, ready, empty, pid, bh, SP, NC, DHQK, qk_scale, L, EXP, ASYNC, num_warps),
            ),
            (
                _pair_load,
                (Q_D, K_D, V_D, DH_D, C_D, DC_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, pid, bh, NC, L),
            ),
        ],
        [LOAD_WARPS],
        [LOAD_REGS],
    )  # fmt: skip
    invalidate_ring(fix_ready, ready, empty)


def padded_head_dim(dhqk: int) -> int:
    """``W``: the q/k head dim rounded up to a power of two, at least ``TILE``."""
    return max(TILE.value, triton.next_power_of_2(dhqk))


def shared_bytes(dhqk: int, dhhv: int, stages: int, itemsize: int = 2) -> int:
    """Shared memory the kernel allocates (without its few barriers): the row tile, its value-side buffers and the
    ring's ``stages`` slots, each ``TILE x W``."""
    w = padded_head_dim(dhqk)
    return TILE.value * w * itemsize * (1 + triton.cdiv(dhhv, w) + stages)


def ring_stages(dhqk: int, dhhv: int, num_warps: int = 4) -> int:
    """The deepest ring (at most ``MAX_STAGES``) that fits sm_90's shared memory beside the fixed buffers, 1 KiB
    for the barriers and, with 8 warps, the scratch through which the two warpgroups exchange ``a`` (a ``TILE x
    TILE`` 16-bit tile: 3.9 KB in the sm_90 compile at 7B); 0 where not even two slots fit."""
    reserve = 1024 + (2 * TILE.value * TILE.value if num_warps == 8 else 0)
    fits = [s for s in range(2, MAX_STAGES + 1) if shared_bytes(dhqk, dhhv, s) + reserve <= HOPPER_SMEM_BYTES]
    return max(fits, default=0)


def head_dims_reason(kernel: str, dhqk: int, dhhv: int) -> str | None:
    """Why ``kernel`` (``bw_dq`` or ``bw_dk``) cannot take these head dims (``None``: it can): a q/k head dim of 32 or
    less or over 256, or buffers that leave no room for a ring of two slots."""
    if not TILE.value // 2 < dhqk <= MAX_HEAD_DIM_QK:
        return f"the Gluon {kernel} takes a q/k head dim from {TILE.value // 2 + 1} to {MAX_HEAD_DIM_QK}; got {dhqk}"
    if not ring_stages(dhqk, dhhv):
        return (
            f"the Gluon {kernel}'s buffers for head dims {dhqk} x {dhhv} leave no room in shared memory for a ring of "
            "two slots"
        )
    return None


def check(kernel: str, q: Any, chunk_size: int, dhhv: int) -> None:
    """``ValueError`` naming what ``kernel`` (``bw_dq`` or ``bw_dk``) cannot take: 32-bit inputs, a chunk that is not
    a multiple of ``TILE``, or head dims (``head_dims_reason``)."""
    import torch

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the Gluon {kernel} takes float16 or bfloat16 inputs; got {q.dtype}")
    if (reason := head_dims_reason(kernel, q.shape[-1], dhhv)) is not None:
        raise ValueError(reason)
    if chunk_size % TILE.value:
        raise ValueError(f"the Gluon {kernel} takes a chunk size that is a multiple of {TILE.value}; got {chunk_size}")


def launch_args(
    kernel: str,
    q: Any,
    k: Any,
    v: Any,
    dh: Any,
    gate_b: Any,
    gate_i: Any,
    inv_den: Any,
    dz: Any,
    state: Any,
    vec_st: Any,
    m_st: Any,
    m_tok: Any,
    grad: Any,
    chunk_size: int,
    exp: bool,
    stages: int | None = None,
    num_warps: int = 4,
    async_mma: bool = False,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_<kernel>`` (``bw_dq`` or ``bw_dk``) launches on the tensors its Triton twin takes, in their
    order (``state, vec_st``: ``c_st, n_st`` for ``dq``, ``dc_st, dn_st`` for ``dk``; ``grad``: the ``dq`` or ``dk``
    to write): the kernel, its grid, its runtime arguments (``SUMS`` a new fp32 ``(1, BH, SP)`` tensor of ``q . dq``,
    or ``(3, BH, SP)``: ``k . dk``, its part from later chunks, its intra-chunk part without the diagonal) and its
    constexprs, by name. ``stages``: ring slots (default ``ring_stages``: as many as fit); ``async_mma``: the chained
    products keep one wgmma in flight (``_chain``); ``num_warps`` 4 or 8 (8: two warpgroups split every product's
    columns, ``acc_layout``). ``ValueError`` from ``check``, or naming the allowed ``num_warps`` and ``stages``."""
    import torch

    keys = kernel == "bw_dk"
    x, xv, y, yv = (k, v, q, dh) if keys else (q, dh, k, v)  # the module docstring's table
    dhqk, dhhv = x.shape[-1], xv.shape[-1]
    check(kernel, x, chunk_size, dhhv)
    if num_warps not in (4, 8):
        raise ValueError(f"num_warps is 4 (one warpgroup) or 8 (two splitting the columns); got {num_warps}")
    fit = ring_stages(dhqk, dhhv, num_warps)
    stages = fit if stages is None else stages
    if not 2 <= stages <= fit:
        raise ValueError(f"stages is 2 to {fit} at head dims {dhqk} x {dhhv} (shared memory); got {stages}")
    w = padded_head_dim(dhqk)
    bh, nc = m_st.shape[0], m_st.shape[1] - 1
    sp = nc * chunk_size
    args = {
        "X_D": head_tiles(x, TILE.value, w),
        "XV_D": head_tiles(xv, TILE.value, w),
        "Y_D": head_tiles(y, TILE.value, w),
        "YV_D": head_tiles(yv, TILE.value, w),
        "S_D": head_tiles(state, w, TILE.value),
        "OUT_D": head_tiles(grad, TILE.value, w),
        "GATE_B": gate_b,
        "GATE_I": gate_i,
        "INV_DEN": inv_den,
        "DZ": dz,
        "VEC_ST": vec_st,
        "M_ST": m_st,
        "M_TOK": m_tok,
        "SUMS": torch.empty(3 if keys else 1, bh, sp, dtype=torch.float32, device=x.device),
        "SP": sp,
        "NC": nc,
        "DHQK": dhqk,
        "qk_scale": dhqk**-0.5,
        "L": chunk_size,  # not a constexpr: one compile serves every chunk size
    }
    constexprs = {
        "KEYS": keys,
        "EXP": exp,
        "NVH": triton.cdiv(dhhv, w),
        "STAGES": stages,
        "ASYNC": async_mma,
        "num_warps": num_warps,
    }
    return bw_dq_dk_kernel, (nc * (chunk_size // TILE.value), bh, 1), args, constexprs


def launch_bw_dq(*tensors: Any, **options: Any) -> Any:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dq`` (same tensors and order, then ``chunk_size, exp``): writes ``dq``,
    returns the fp32 ``q . dq`` sums ``qdq (1, BH, SP)``. Options: ``launch_args``'. CPU tensors run through
    ``kernels.gluon.simulator`` (results, not timings)."""
    kernel, grid, args, constexprs = launch_args("bw_dq", *tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    return args["SUMS"]


def key_sums(sums: Any) -> tuple[Any, Any, Any]:
    """``k . dk``, its inter part and its off-diagonal part, each ``(1, BH, SP)``, from the ``dk`` role's ``SUMS``."""
    return sums[0:1], sums[1:2], sums[2:3]


def launch_bw_dk(*tensors: Any, **options: Any) -> tuple[Any, Any, Any]:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dk`` (same tensors and order, then ``chunk_size, exp``): writes ``dk``,
    returns the fp32 sums ``kdk, kdk_inter, kdk_off`` (each ``(1, BH, SP)``). Options: ``launch_args``'."""
    kernel, grid, args, constexprs = launch_args("bw_dk", *tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    return key_sums(args["SUMS"])


# bw_dq_dk_pair_kernel's arguments from the two roles' ``launch_args``: (role, name there) by its own name.
PAIR_ARGS = {
    "Q_D": ("bw_dq", "X_D"),
    "K_D": ("bw_dq", "Y_D"),
    "V_D": ("bw_dq", "YV_D"),
    "DH_D": ("bw_dq", "XV_D"),
    "C_D": ("bw_dq", "S_D"),
    "DC_D": ("bw_dk", "S_D"),
    "DQ_D": ("bw_dq", "OUT_D"),
    "DK_D": ("bw_dk", "OUT_D"),
    "N_ST": ("bw_dq", "VEC_ST"),
    "DN_ST": ("bw_dk", "VEC_ST"),
    "SUMS_Q": ("bw_dq", "SUMS"),
    "SUMS_K": ("bw_dk", "SUMS"),
}


def pair_launch_args(
    dq_tensors: tuple[Any, ...], dk_tensors: tuple[Any, ...], chunk_size: int, exp: bool, **options: Any
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_bw_dq_dk`` launches in one launch (``bw_dq_dk_pair_kernel``): kernel, grid, runtime arguments
    and constexprs, by name, from the tensors each of ``launch_bw_dq`` and ``launch_bw_dk`` takes (without
    ``chunk_size, exp``). Options and errors: ``launch_args``'."""
    _, (n_tiles, bh, _), dq_args, constexprs = launch_args("bw_dq", *dq_tensors, chunk_size, exp, **options)
    roles = {"bw_dq": dq_args, "bw_dk": launch_args("bw_dk", *dk_tensors, chunk_size, exp, **options)[2]}
    args = {name: roles[role][there] for name, (role, there) in PAIR_ARGS.items()}
    mapped = {there for role, there in PAIR_ARGS.values()}
    args |= {name: value for name, value in dq_args.items() if name not in mapped}  # gates, sizes: the same in both
    del constexprs["KEYS"]
    return bw_dq_dk_pair_kernel, (2 * n_tiles, bh, 1), args, constexprs


def launch_bw_dq_dk(
    dq_tensors: tuple[Any, ...],
    dk_tensors: tuple[Any, ...],
    chunk_size: int,
    exp: bool,
    one_launch: bool = True,
    **options: Any,
) -> tuple[Any, Any, Any, Any]:
    """``dq`` and ``dk`` (``launch_bw_dq``'s and ``launch_bw_dk``'s tensors, without ``chunk_size, exp``): in one
    launch of ``bw_dq_dk_pair_kernel`` or, without ``one_launch``, a launch each. Returns ``qdq, kdk, kdk_inter,
    kdk_off``. Options: ``launch_args``'."""
    if not one_launch:
        qdq = launch_bw_dq(*dq_tensors, chunk_size, exp, **options)
        return (qdq, *launch_bw_dk(*dk_tensors, chunk_size, exp, **options))
    kernel, grid, args, constexprs = pair_launch_args(dq_tensors, dk_tensors, chunk_size, exp, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, dq_tensors[0].device)
    return (args["SUMS_Q"], *key_sums(args["SUMS_K"]))
