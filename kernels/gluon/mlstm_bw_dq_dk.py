"""The TFLA backward's ``dq`` and ``dk`` kernels (``kernels.mlstm.chunk_bw.bw_chunk_dq_kernel`` and
``bw_chunk_dk_kernel``) in Gluon for Hopper, warp-specialized: one kernel, the two being mirror images.

A ``dq`` program takes ``BR`` queries of one chunk (its rows) and walks the chunk's key tiles up to the diagonal (its
columns); a ``dk`` program takes ``BR`` keys and walks the query tiles from the diagonal to the chunk's end. Both
take the whole q/k head dim (at most 256), so the product over the value head dim (512 at 7B), ``dh v^T`` for
``dq`` and ``v dh^T`` for ``dk``, is formed once per column tile. The roles, rows' operands first:

| | rows (fixed) | their value-side rows (fixed) | columns (streamed) | their value-side rows | state |
| --- | --- | --- | --- | --- | --- |
| ``dq`` | ``q`` | ``dh`` | ``k`` | ``v`` | ``C_c`` |
| ``dk`` | ``k`` | ``v`` | ``q`` | ``dh`` | ``dC_{c+1}`` |

Every streamed operand is a ``PW x PW`` piece (64 x 64), so that one ring of equal buffers carries all of them:

- a 1-warp load partition brings the row tile and its value-side rows (in ``PW``-wide pieces) once, then through a
  ring of ``STAGES`` buffers the state's pieces ``[j, p]`` (``j`` over the q/k head dim, ``p`` over the value head
  dim), then for each column tile its value-side pieces and its q/k pieces;
- one consumer (4 warps, or 8 that split every product's columns: ``acc_layout``) holds the gradient as ``NK = DK /
  PW`` accumulators of ``BR x PW``, one per q/k piece (a product cannot accumulate into a column slice of another's
  accumulator): the inter-chunk term (value-side rows times the state pieces, transposed) piece by piece, then per
  column tile ``dp`` over the value pieces, ``a`` = the gate matrix times ``dp`` scaled and shifted per query (the
  normalizer's ``1 / den`` and ``dz``), in registers, and per q/k piece ``scores += x_j y_j^T`` and ``acc_j += a
  y_j`` (``a`` from registers).

The dot products of the rows with their gradient for the gate gradients (``q . dq``; ``k . dk`` with its inter and
off-diagonal parts apart) are summed in fp32 from the inter term and from ``a`` and the scores, as in the Triton
kernels (one head-dim tile: each is ``(1, BH, SP)``).

Not yet: 32-bit inputs, a padded q/k head dim below 64, the gate math overlapped with the products.
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
    head_tiles,
    init_ring,
    invalidate_ring,
    mma_layout,
)

PIECE = 64  # rows and columns of every streamed piece (q/k, value side, state), and of each gradient accumulator


@gluon.constexpr_function
def acc_layout(num_warps: int, n: int) -> gl.NVMMADistributedLayout:
    """The wgmma layout of every ``64 x n`` product: one warpgroup (4 warps) takes whole rows; two (8 warps) split
    the columns, each an ``n / 2``-wide wgmma, so that each thread holds half of every accumulator."""
    if num_warps == 4:
        return mma_layout(num_warps, n)
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, num_warps // 4], instr_shape=[16, n // 2, 16])


@gluon.jit
def _pick(j: gl.constexpr, a0, a1, a2, a3):
    """Accumulator ``j`` of the four (``j`` a constexpr)."""
    x = a0
    if j == 1:
        x = a1
    if j == 2:
        x = a2
    if j == 3:
        x = a3
    return x


@gluon.jit
def _put(j: gl.constexpr, a0, a1, a2, a3, x):
    """The four accumulators with ``j`` replaced by ``x``."""
    if j == 0:
        a0 = x
    if j == 1:
        a1 = x
    if j == 2:
        a2 = x
    if j == 3:
        a3 = x
    return a0, a1, a2, a3


@gluon.jit
def _ring_load(desc, row_a, row_b, col, ring, ready, empty, u):
    """Load ``u`` of the ring: ``desc``'s block at ``[row_a, row_b, col]`` into stage ``u % STAGES`` once the
    consumer has freed it (the first pass over the stages does not wait)."""
    stages: gl.constexpr = ring.type.shape[0]
    s = u % stages
    mbarrier.wait(empty.index(s), ((u // stages) & 1) ^ 1)
    mbarrier.expect(ready.index(s), desc.block_type.nbytes)
    compat.tma_load(desc, [row_a, row_b, col], ready.index(s), ring.index(s))


@gluon.jit
def _load_partition(X_D, XV_D, Y_D, YV_D, S_D, x_smem, xv_bufs, ring, fix_ready, ready, empty, bh, row0, state_row,
                    col0, n_blocks):  # fmt: skip
    """The producer (module docstring): the row tile and the ``NV`` pieces of its value-side rows once, then ring
    loads in the consumer's order: ``NK x NV`` state pieces, then per column tile (``n_blocks`` of them from token
    ``col0``) ``NV`` value-side pieces and ``NK`` q/k pieces."""
    NV: gl.constexpr = xv_bufs.type.shape[0]
    PW: gl.constexpr = ring.type.shape[2]
    NK: gl.constexpr = X_D.block_type.shape[2] // PW
    mbarrier.expect(fix_ready, X_D.block_type.nbytes + NV * XV_D.block_type.nbytes)
    compat.tma_load(X_D, [bh, row0, 0], fix_ready, x_smem)
    for p in gl.static_range(NV):
        compat.tma_load(XV_D, [bh, row0, p * PW], fix_ready, xv_bufs.index(p))
    for j in gl.static_range(NK):
        for p in gl.static_range(NV):
            _ring_load(S_D, state_row, j * PW, p * PW, ring, ready, empty, j * NV + p)
    for b in range(n_blocks):
        u0 = NK * NV + b * (NV + NK)
        for p in gl.static_range(NV):
            _ring_load(YV_D, bh, col0 + b * PW, p * PW, ring, ready, empty, u0 + p)
        for j in gl.static_range(NK):
            _ring_load(Y_D, bh, col0 + b * PW, j * PW, ring, ready, empty, u0 + NV + j)


@gluon.jit
def _ring_wait(ring, ready, u):
    """Stage ``u % STAGES`` of the ring once load ``u`` has landed, as a ``PW x PW`` tile."""
    stages: gl.constexpr = ring.type.shape[0]
    PW: gl.constexpr = ring.type.shape[2]
    mbarrier.wait(ready.index(u % stages), (u // stages) & 1)
    return ring.index(u % stages).reshape([PW, PW])


@gluon.jit
def _value_products(xv_bufs, ring, ready, empty, acc, u0, ASYNC: gl.constexpr):
    """``acc + sum_p xv[:, p] piece(u0 + p)^T`` over the ``NV`` value pieces (ring loads ``u0 ..``), each ring stage
    handed back once its product has completed. ``ASYNC``: each product is issued before the previous one is waited
    for, so one runs while the next piece's load is awaited."""
    stages: gl.constexpr = ring.type.shape[0]
    NV: gl.constexpr = xv_bufs.type.shape[0]
    BR: gl.constexpr = xv_bufs.type.shape[2]
    PW: gl.constexpr = ring.type.shape[2]
    for p in gl.static_range(NV):
        piece = _ring_wait(ring, ready, u0 + p)
        xv_p = xv_bufs.index(p).reshape([BR, PW])
        if ASYNC:
            acc = warpgroup_mma(xv_p, piece.permute((1, 0)), acc, is_async=True)
            if p > 0:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                mbarrier.arrive(empty.index((u0 + p - 1) % stages), count=1)
        else:
            acc = warpgroup_mma(xv_p, piece.permute((1, 0)), acc)
            mbarrier.arrive(empty.index((u0 + p) % stages), count=1)
    if ASYNC:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((u0 + NV - 1) % stages), count=1)
    return acc


@gluon.jit
def _compute_partition(x_smem, xv_bufs, ring, out_bufs, fix_ready, ready, empty, OUT_D, SUMS, GATE_B, GATE_I, INV_DEN,
                       DZ, VEC_ST, M_ST, M_TOK, bh, st, row0, col0, c_end, n_blocks, SP, DHQK, qk_scale,
                       KEYS: gl.constexpr, EXP: gl.constexpr, ASYNC: gl.constexpr, o_layout: gl.constexpr):  # fmt: skip
    """The consumer (module docstring); every product completes before its stage is handed back. ``st``: the
    index of the state the inter term reads (``M_ST``, ``VEC_ST``: ``n`` for ``dq``, ``dn`` for ``dk``); ``c_end``:
    the token after the chunk's last."""
    stages: gl.constexpr = ring.type.shape[0]
    NV: gl.constexpr = xv_bufs.type.shape[0]
    BR: gl.constexpr = x_smem.type.shape[1]
    DK: gl.constexpr = x_smem.type.shape[2]
    PW: gl.constexpr = ring.type.shape[2]
    NK: gl.constexpr = DK // PW
    dtype: gl.constexpr = x_smem.dtype
    rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    cols: gl.constexpr = gl.SliceLayout(0, o_layout)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    # Per row: the inter term's weight, scale and shift, and the row's part of the gate matrix's exponent.
    t_r = row0 + gl.arange(0, BR, layout=rows)
    b_r = gl.load(GATE_B + bh * SP + t_r)
    m_st = gl.load(M_ST + st) if EXP else 0.0
    if KEYS:  # w (v dC^T + dn), and i_s - b_s
        i_r = gl.load(GATE_I + bh * SP + t_r)
        w_inter = gl.exp(gl.load(GATE_B + bh * SP + c_end - 1) - b_r + i_r - m_st)
        row = (i_r - b_r) * LOG2E
        inter_scale = gl.full([BR], 1.0, gl.float32, rows)
        inter_shift = inter_scale
    else:  # w (dh C^T / den + dz n), and b_t - m_t
        m_r = gl.load(M_TOK + bh * SP + t_r) if EXP else gl.zeros([BR], gl.float32, rows)
        w_inter = gl.exp(b_r + m_st - m_r)
        row = (b_r - m_r) * LOG2E
        inter_scale = gl.load(INV_DEN + bh * SP + t_r)
        inter_shift = gl.load(DZ + bh * SP + t_r)
    mbarrier.wait(fix_ready, 0)
    x2 = x_smem.reshape([BR, DK])

    # The inter-chunk term, one accumulator (q/k piece) at a time.
    zero = gl.zeros([BR, PW], gl.float32, o_layout)
    acc0, acc1, acc2, acc3 = zero, zero, zero, zero
    xdx_inter = gl.zeros([BR], gl.float32, rows)
    for j in gl.static_range(NK):
        acc = _value_products(xv_bufs, ring, ready, empty, zero, j * NV, ASYNC)  # state[j, p]: PW q/k rows x PW values
        offs = j * PW + gl.arange(0, PW, layout=cols)
        vec = gl.load(VEC_ST + st * DHQK + offs, mask=offs < DHQK, other=0.0)
        acc = (acc * inter_scale[:, None] + inter_shift[:, None] * vec[None, :]) * w_inter[:, None]
        xdx_inter += gl.sum(x2.slice(j * PW, PW, dim=1).load(o_layout).to(gl.float32) * acc, axis=1)
        acc0, acc1, acc2, acc3 = _put(j, acc0, acc1, acc2, acc3, acc)

    # The column tiles: keys up to the diagonal (dq), queries from the diagonal on (dk).
    xdx_off = gl.zeros([BR], gl.float32, rows)
    xdx_diag = gl.zeros([BR], gl.float32, rows)
    for b in range(n_blocks):
        u0 = NK * NV + b * (NV + NK)
        dp = _value_products(xv_bufs, ring, ready, empty, zero, u0, ASYNC)
        t_c = col0 + b * PW + gl.arange(0, PW, layout=cols)
        b_c = gl.load(GATE_B + bh * SP + t_c)
        if KEYS:  # columns are queries: D[s, t] = exp(i_s - b_s + b_t - m_t), t >= s, times (dp / den_t + dz_t) * scale
            m_c = gl.load(M_TOK + bh * SP + t_c) if EXP else gl.zeros([PW], gl.float32, cols)
            causal = t_c[None, :] >= t_r[:, None]
            gates = gl.exp2(gl.where(causal, row[:, None] + ((b_c - m_c) * LOG2E)[None, :], -float("inf")))
            den = gl.load(INV_DEN + bh * SP + t_c) * qk_scale
            a = gates * (dp * den[None, :] + (gl.load(DZ + bh * SP + t_c) * qk_scale)[None, :])
        else:  # columns are keys: D[t, s] = exp(b_t - m_t + i_s - b_s), s <= t, times dp / den_t + dz_t
            causal = t_c[None, :] <= t_r[:, None]
            col = (gl.load(GATE_I + bh * SP + t_c) - b_c) * LOG2E
            gates = gl.exp2(gl.where(causal, row[:, None] + col[None, :], -float("inf")))
            a = gates * (dp * inter_scale[:, None] + inter_shift[:, None])
        a_op = gl.convert_layout(a.to(dtype), a_layout)
        scores = zero
        for j in gl.static_range(NK):
            y_piece = _ring_wait(ring, ready, u0 + NV + j)  # PW columns' tokens x PW of the q/k head dim
            scores = warpgroup_mma(x2.slice(j * PW, PW, dim=1), y_piece.permute((1, 0)), scores)
            acc_j = warpgroup_mma(a_op, y_piece, _pick(j, acc0, acc1, acc2, acc3))
            acc0, acc1, acc2, acc3 = _put(j, acc0, acc1, acc2, acc3, acc_j)
            mbarrier.arrive(empty.index((u0 + NV + j) % stages), count=1)
        d_gate = a * scores
        xdx_off += gl.sum(gl.where(causal & (t_c[None, :] != t_r[:, None]), d_gate, 0.0), axis=1)
        if KEYS:
            xdx_diag += gl.sum(gl.where(t_c[None, :] == t_r[:, None], d_gate, 0.0), axis=1)

    # The gradient through the value-side buffers (their last reads are done) and TMA; the sums as the Triton
    # kernels' one tile: q . dq (times the scale, as dq), or k . dk, its inter part and its off-diagonal part.
    out_scale = 1.0 if KEYS else qk_scale
    for j in gl.static_range(NK):
        out_bufs.index(j).reshape([BR, PW]).store((_pick(j, acc0, acc1, acc2, acc3) * out_scale).to(OUT_D.dtype))
    fence_async_shared()
    for j in gl.static_range(NK):
        compat.tma_store(OUT_D, [bh, row0, j * PW], out_bufs.index(j))
    tma.store_wait(pendings=0)
    plane = gl.num_programs(1) * SP
    gl.store(SUMS + bh * SP + t_r, (xdx_inter + xdx_off + xdx_diag) * out_scale)
    if KEYS:
        gl.store(SUMS + plane + bh * SP + t_r, xdx_inter)
        gl.store(SUMS + 2 * plane + bh * SP + t_r, xdx_off)


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
    NV: gl.constexpr,
    STAGES: gl.constexpr,
    ASYNC: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(NC * L / BR, BH, 1)``; ``KEYS``: the ``dk`` kernel, else ``dq`` (module docstring's table). Descriptors
    over ``(heads, rows, cols)`` with blocks ``[1, rows, cols]``: ``X_D`` (BR x DK, ``DK`` the padded q/k head dim),
    ``XV_D`` and ``OUT_D`` (BR x PW), ``Y_D`` and ``YV_D`` (PW x PW), ``S_D`` (PW x PW over the ``BH * NC`` chunk
    states ``C_c`` or the ``BH * (NC + 1)`` state gradients ``dC``); ``VEC_ST (BH * (NC + 1), DHQK)``: ``n`` or
    ``dn``; ``SUMS``: one ``(BH, SP)`` plane of ``q . dq``, or three of ``k . dk`` (all, inter, off-diagonal); ``NV
    = cdiv(DHHV, PW)`` value pieces; ``ASYNC``: ``_value_products``'."""
    BR: gl.constexpr = X_D.block_type.shape[1]
    DK: gl.constexpr = X_D.block_type.shape[2]
    PW: gl.constexpr = Y_D.block_type.shape[2]
    o_layout: gl.constexpr = acc_layout(num_warps, PW)
    pid_c = gl.program_id(0)
    bh = gl.program_id(1)
    c = pid_c // (L // BR)
    r_start = (pid_c % (L // BR)) * BR
    row0 = c * L + r_start
    if KEYS:  # the next state's gradient; query tiles from the diagonal to the chunk's end
        st = bh * (NC + 1) + c + 1
        state_row = st
        col0 = row0
        n_blocks = (L - r_start) // PW
    else:  # this chunk's state; key tiles from the chunk's start to the diagonal
        st = bh * (NC + 1) + c
        state_row = bh * NC + c
        col0 = c * L
        n_blocks = gl.cdiv(r_start + BR, PW)

    x_smem = gl.allocate_shared_memory(X_D.dtype, [1, BR, DK], X_D.layout)
    xv_bufs = gl.allocate_shared_memory(XV_D.dtype, [NV, 1, BR, PW], XV_D.layout)
    ring = gl.allocate_shared_memory(Y_D.dtype, [STAGES, 1, PW, PW], Y_D.layout)
    if NV >= DK // PW:
        out_bufs = xv_bufs  # the gradient's pieces have the value-side pieces' block shape and layout
    else:
        out_bufs = gl.allocate_shared_memory(OUT_D.dtype, [DK // PW, 1, BR, PW], OUT_D.layout)
    fix_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    init_ring(fix_ready, ready, empty, 1)

    gl.warp_specialize(
        [
            (
                _compute_partition,
                (x_smem, xv_bufs, ring, out_bufs, fix_ready, ready, empty, OUT_D, SUMS, GATE_B, GATE_I, INV_DEN, DZ,
                 VEC_ST, M_ST, M_TOK, bh, st, row0, col0, c * L + L, n_blocks, SP, DHQK, qk_scale, KEYS, EXP, ASYNC,
                 o_layout),
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


def check(kernel: str, q: Any, chunk_size: int, br: int) -> None:
    """``ValueError`` naming what ``kernel`` (``bw_dq`` or ``bw_dk``) cannot take: 32-bit inputs, a q/k head dim over
    256 or (padded) below ``PIECE``, a row tile ``br`` that is not a multiple of 64 dividing the chunk, a chunk that is
    not a multiple of ``PIECE``."""
    import torch

    rows = {"bw_dq": "BQ", "bw_dk": "BKV"}[kernel]
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the Gluon {kernel} takes float16 or bfloat16 inputs; got {q.dtype}")
    if not PIECE // 2 < q.shape[-1] <= MAX_HEAD_DIM_QK:
        raise ValueError(
            f"the Gluon {kernel} takes a q/k head dim from {PIECE // 2 + 1} to {MAX_HEAD_DIM_QK}; got {q.shape[-1]}"
        )
    if br % 64 or chunk_size % br or chunk_size % PIECE:
        raise ValueError(
            f"{rows} (a multiple of 64) and the column tile ({PIECE}) must divide the chunk size {chunk_size}; "
            f"got {rows}={br}"
        )


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
    rows: int = 64,
    stages: int = 6,
    num_warps: int = 4,
    async_mma: bool = False,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_<kernel>`` (``bw_dq`` or ``bw_dk``) launches on the tensors its Triton twin takes, in their
    order (``state, vec_st``: ``c_st, n_st`` for ``dq``, ``dc_st, dn_st`` for ``dk``; ``grad``: the ``dq`` or ``dk``
    to write): the kernel, its grid, its runtime arguments (``SUMS`` a new fp32 ``(1, BH, SP)`` tensor of ``q . dq``,
    or ``(3, BH, SP)``: ``k . dk``, its part from later chunks, its intra-chunk part without the diagonal) and its
    constexprs, by name. ``rows``: queries (``dq``) or keys (``dk``) per program; ``stages``: ring buffers of ``PIECE
    x PIECE`` (8 KiB each in 16 bits); ``async_mma``: the value-side products keep one wgmma in flight
    (``_value_products``); ``num_warps`` 4 or 8 (8: two warpgroups split every product's columns, ``acc_layout``).
    ``ValueError`` from ``check``, or naming the allowed ``num_warps``."""
    import torch

    keys = kernel == "bw_dk"
    x, xv, y, yv = (k, v, q, dh) if keys else (q, dh, k, v)  # the module docstring's table
    check(kernel, x, chunk_size, rows)
    if num_warps not in (4, 8):
        raise ValueError(f"num_warps is 4 (one warpgroup) or 8 (two splitting the columns); got {num_warps}")
    dhqk, dhhv = x.shape[-1], xv.shape[-1]
    bh, nc = m_st.shape[0], m_st.shape[1] - 1
    sp = nc * chunk_size
    args = {
        "X_D": head_tiles(x, rows, triton.next_power_of_2(dhqk)),
        "XV_D": head_tiles(xv, rows, PIECE),
        "Y_D": head_tiles(y, PIECE, PIECE),
        "YV_D": head_tiles(yv, PIECE, PIECE),
        "S_D": head_tiles(state, PIECE, PIECE),
        "OUT_D": head_tiles(grad, rows, PIECE),
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
        "NV": triton.cdiv(dhhv, PIECE),
        "STAGES": stages,
        "ASYNC": async_mma,
        "num_warps": num_warps,
    }
    return bw_dq_dk_kernel, (nc * (chunk_size // rows), bh, 1), args, constexprs


def launch_bw_dq(*tensors: Any, **options: Any) -> Any:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dq`` (same tensors and order, then ``chunk_size, exp``): writes ``dq``,
    returns the fp32 ``q . dq`` sums ``qdq (1, BH, SP)``. Options: ``launch_args``'. CPU tensors run through
    ``kernels.gluon.simulator`` (results, not timings)."""
    kernel, grid, args, constexprs = launch_args("bw_dq", *tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    return args["SUMS"]


def launch_bw_dk(*tensors: Any, **options: Any) -> tuple[Any, Any, Any]:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dk`` (same tensors and order, then ``chunk_size, exp``): writes ``dk``,
    returns the fp32 sums ``kdk, kdk_inter, kdk_off`` (each ``(1, BH, SP)``). Options: ``launch_args``'."""
    kernel, grid, args, constexprs = launch_args("bw_dk", *tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    sums = args["SUMS"]
    return sums[0:1], sums[1:2], sums[2:3]
