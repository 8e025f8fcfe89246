"""The TFLA forward's output kernel (``kernels.mlstm.chunk_fw.fw_chunk_output_kernel``) in Gluon for Hopper.

Same inputs and outputs as ``launch_fw_output``: per program ``BQ`` queries of one chunk and a ``BV`` slice of
the output. The query tile and the chunk state slice load once (the whole q/k head dim, at most 256); the inter-
chunk term is one wgmma ``q C_c``; the key loop runs over ``BKV`` key tiles up to the diagonal, the gated scores
fed to the second wgmma from registers. Two kernels share that work (the ``_inter_chunk``, ``_key_block`` and
``_epilogue`` helpers):

- ``fw_output_kernel``: one warpgroup issues its own TMA loads, the next key tile's under the current tile's
  products (double-buffered);
- ``fw_output_ws_kernel``: warp-specialized: a 1-warp load partition streams the key tiles through a ring of
  ``STAGES`` buffers (ready / empty mbarriers) and the warpgroup only computes.

With ``state_pieces`` the state slice streams in ``BKV``-row pieces through the V buffers ahead of the key tiles
(``STATE_PIECES`` wgmmas of ``q[:, piece] C[piece, :]``), so a ``BV`` of 256 fits beside a q/k head dim of 256.

With ``consumers=2`` the warp-specialized kernel runs two consumer warpgroups, each on its own ``BQ`` queries of
the chunk, fed by the one load partition (each ring stage is freed when both have used it): one warpgroup's gate
math can run under the other's products. With ``pingpong`` their products over the key tiles both multiply are
issued in strict turns (``intra_chunk.wait_turn``), so that this overlap is what happens rather than what may.

``fw_output_shared_scores_kernel`` (``shared_scores``) puts its two consumers on the same queries instead, each on
half of the program's ``2 * BV`` columns: a key tile's gated scores are computed once, by one consumer in turn, and
pass through shared memory to both, where two programs of ``BV`` columns would each compute them.

Not yet: 32-bit inputs.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma

from kernels.gluon import compat, intra_chunk
from kernels.gluon.intra_chunk import (
    CONSUMER_REGS,
    LOAD_REGS,
    LOAD_WARPS,
    LOG2E,
    claim_stage,
    head_tiles,
    init_turns,
    invalidate_ring,
    invalidate_turns,
    load_partition,
    mma_layout,
    product,
    ring_barriers,
    state_product,
)
from kernels.gluon.ws_matmul import instr_n


@gluon.jit
def _program(NC, L: gl.constexpr, BQ: gl.constexpr, BKV: gl.constexpr, BV: gl.constexpr):
    """This program's place in the grid ``(cdiv(DHHV, BV), NC * L / BQ, BH)``: ``(pid_v, bh, chunk, first query
    row, first output column, index of its chunk state, key tiles up to the diagonal)``."""
    pid_v = gl.program_id(0)
    pid_cq = gl.program_id(1)
    bh = gl.program_id(2)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    return pid_v, bh, c, c * L + q_start, pid_v * BV, bh * (NC + 1) + c, gl.cdiv(q_start + BQ, BKV)


@gluon.jit
def _inter_chunk(q2, acc, N_ST, M_ST, M_TOK, GATE_B, bh, st, row0, SP, DHQK, qk_scale, EXP: gl.constexpr,
                 o_layout: gl.constexpr, s_layout: gl.constexpr):  # fmt: skip
    """The inter-chunk term from its product ``acc = q C_c`` and the normalizer part ``q . n_c``, weighted per
    query, and the per-query values the key loop and the epilogue need: ``(acc, z, m_run, t_q, row, t_qs)``."""
    BQ: gl.constexpr = q2.type.shape[0]
    DK: gl.constexpr = q2.type.shape[1]
    num_warps: gl.constexpr = gl.num_warps()
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    q_regs: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    offs_k = gl.arange(0, DK, layout=gl.SliceLayout(0, q_regs))
    n_c = gl.load(N_ST + st * DHQK + offs_k, mask=offs_k < DHQK, other=0.0)
    z = gl.convert_layout(gl.sum(q2.load(q_regs).to(gl.float32) * n_c[None, :], axis=1), rows_o)
    t_q = row0 + gl.arange(0, BQ, layout=rows_o)
    b_q = gl.load(GATE_B + bh * SP + t_q)
    if EXP:
        m_run = gl.load(M_TOK + bh * SP + t_q)
        w_inter = qk_scale * gl.exp(b_q + gl.load(M_ST + st) - m_run)
    else:
        m_run = gl.zeros([BQ], gl.float32, rows_o)
        w_inter = qk_scale * gl.exp(b_q)
    acc = acc * w_inter[:, None]
    z = z * w_inter
    t_qs = row0 + gl.arange(0, BQ, layout=rows_s)
    row = (gl.load(GATE_B + bh * SP + t_qs) - gl.convert_layout(m_run, rows_s)) * LOG2E + gl.log2(qk_scale)
    return acc, z, m_run, t_q, row, t_qs


@gluon.jit
def _gated(scores, row, t_qs, GATE_B, GATE_I, bh, SP, t0, BKV: gl.constexpr, s_layout: gl.constexpr):
    """The scores ``q k^T`` of a key tile from token ``t0`` (BQ x BKV, fp32) times their gates ``exp(row + col)``
    (``row`` per query from ``_inter_chunk``, ``col = i - b`` per key), zero above the diagonal."""
    t_s = t0 + gl.arange(0, BKV, layout=gl.SliceLayout(0, s_layout))
    col = (gl.load(GATE_I + bh * SP + t_s) - gl.load(GATE_B + bh * SP + t_s)) * LOG2E
    keep = t_s[None, :] <= t_qs[:, None]
    return gl.exp2(gl.where(keep, row[:, None] + col[None, :], -float("inf"))) * scores


@gluon.jit
def _key_block(q2, k2, v2, acc, z, row, t_qs, GATE_B, GATE_I, bh, SP, t0, turns, o_layout: gl.constexpr,
               s_layout: gl.constexpr, ME: gl.constexpr = 0, PINGPONG: gl.constexpr = False):  # fmt: skip
    """One key tile ``k2`` (BKV x DK), ``v2`` (BKV x BV) from token ``t0``: the gated scores and their products,
    added to ``acc`` and ``z``. The wgmmas have completed when it returns: the tiles' buffers are free. With
    ``PINGPONG`` consumer ``ME`` issues each product in its turn (``turns``: ``intra_chunk.wait_turn``)."""
    BQ: gl.constexpr = q2.type.shape[0]
    BKV: gl.constexpr = k2.type.shape[0]
    dtype: gl.constexpr = q2.dtype
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_zeros = gl.zeros([BQ, BKV], gl.float32, s_layout)
    scores = product(q2, k2.permute((1, 0)), s_zeros, turns, ME, 0, PINGPONG, use_acc=False)
    p = _gated(scores, row, t_qs, GATE_B, GATE_I, bh, SP, t0, BKV, s_layout)
    z += gl.convert_layout(gl.sum(p, axis=1), gl.SliceLayout(1, o_layout))
    acc = product(gl.convert_layout(p.to(dtype), p_layout), v2, acc, turns, ME, 1, PINGPONG, A_IN_REGISTERS=True)
    return acc, z


@gluon.jit
def _epilogue(acc, z, m_run, t_q, eps, H_D, h_smem, Z_TOK, bh, row0, v0, SP, pid_v, NORMALIZE: gl.constexpr):
    """Normalize (mLSTMexp), store the output tile through shared memory and TMA, and ``z`` from slice 0."""
    BQ: gl.constexpr = h_smem.type.shape[1]
    BV: gl.constexpr = h_smem.type.shape[2]
    if NORMALIZE:
        acc = acc / (gl.maximum(gl.abs(z), gl.exp(-m_run)) + eps)[:, None]
    h_smem.reshape([BQ, BV]).store(acc.to(H_D.dtype))
    fence_async_shared()
    compat.tma_store(H_D, [bh, row0, v0], h_smem)
    tma.store_wait(pendings=0)
    if pid_v == 0:
        gl.store(Z_TOK + bh * SP + t_q, z)


@gluon.jit
def fw_output_kernel(
    Q_D,
    K_D,
    V_D,
    C_D,
    H_D,
    GATE_B,
    GATE_I,
    N_ST,
    M_ST,
    M_TOK,
    Z_TOK,
    SP,
    NC,
    DHQK,
    qk_scale,
    eps,
    L: gl.constexpr,
    EXP: gl.constexpr,
    NORMALIZE: gl.constexpr,
    S_INSTR_N: gl.constexpr,
    O_INSTR_N: gl.constexpr,
    STATE_PIECES: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(cdiv(DHHV, BV), NC * L / BQ, BH)``. Descriptors over ``(heads, rows, cols)`` with blocks
    ``[1, rows, cols]``: ``Q_D`` (BQ x DK), ``K_D`` (BKV x DK), ``V_D`` (BKV x BV), ``C_D`` (DK x BV over
    ``BH * NC`` states, or BKV x BV with ``STATE_PIECES = DK / BKV``: the state slice in pieces through the V
    buffers, so that a whole-DK slice need not sit in shared memory beside the key tiles), ``H_D`` (BQ x BV);
    ``DK`` is the q/k head dim padded to a power of two."""
    BQ: gl.constexpr = Q_D.block_type.shape[1]
    DK: gl.constexpr = Q_D.block_type.shape[2]
    BKV: gl.constexpr = K_D.block_type.shape[1]
    BV: gl.constexpr = V_D.block_type.shape[2]
    s_layout: gl.constexpr = mma_layout(num_warps, S_INSTR_N)
    o_layout: gl.constexpr = mma_layout(num_warps, O_INSTR_N)
    pid_v, bh, c, row0, v0, st, n_blocks = _program(NC, L, BQ, BKV, BV)
    P: gl.constexpr = STATE_PIECES

    q_smem = gl.allocate_shared_memory(Q_D.dtype, [1, BQ, DK], Q_D.layout)
    k_smem = gl.allocate_shared_memory(K_D.dtype, [2, 1, BKV, DK], K_D.layout)
    v_smem = gl.allocate_shared_memory(V_D.dtype, [2, 1, BKV, BV], V_D.layout)
    h_smem = gl.allocate_shared_memory(H_D.dtype, [1, BQ, BV], H_D.layout)
    bars = gl.allocate_shared_memory(gl.int64, [3, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(3):
        mbarrier.init(bars.index(i), count=1)

    # One stream of loads through the two-stage ring: the P state pieces (into the V buffers), then the key
    # tiles; load u lands in stage u % 2, and load u + 1 is issued before load u is waited for.
    q2 = q_smem.reshape([BQ, DK])
    o_zeros = gl.zeros([BQ, BV], gl.float32, o_layout)
    if P == 0:
        c_smem = gl.allocate_shared_memory(C_D.dtype, [1, DK, BV], C_D.layout)
        mbarrier.expect(bars.index(2), Q_D.block_type.nbytes + C_D.block_type.nbytes)
        compat.tma_load(Q_D, [bh, row0, 0], bars.index(2), q_smem)
        compat.tma_load(C_D, [bh * NC + c, 0, v0], bars.index(2), c_smem)
        _load_key_tile(K_D, V_D, k_smem, v_smem, bars, 0, bh, c * L, v0)
        mbarrier.wait(bars.index(2), 0)
        acc = warpgroup_mma(q2, c_smem.reshape([DK, BV]), o_zeros, use_acc=False)
    else:
        mbarrier.expect(bars.index(2), Q_D.block_type.nbytes)
        compat.tma_load(Q_D, [bh, row0, 0], bars.index(2), q_smem)
        _load_state_piece(C_D, v_smem, bars, 0, bh * NC + c, v0)
        mbarrier.wait(bars.index(2), 0)
        acc = o_zeros
        for p in gl.static_range(P):
            if p + 1 < P:
                _load_state_piece(C_D, v_smem, bars, p + 1, bh * NC + c, v0)
            else:
                _load_key_tile(K_D, V_D, k_smem, v_smem, bars, P, bh, c * L, v0)
            mbarrier.wait(bars.index(p % 2), (p // 2) & 1)
            acc = warpgroup_mma(q2.slice(p * BKV, BKV, dim=1), v_smem.index(p % 2).reshape([BKV, BV]), acc)
    acc, z, m_run, t_q, row, t_qs = _inter_chunk(
        q2, acc, N_ST, M_ST, M_TOK, GATE_B, bh, st, row0, SP, DHQK, qk_scale, EXP, o_layout, s_layout
    )
    for j in range(n_blocks):
        u = P + j
        if j + 1 < n_blocks:  # the next tile's loads run under this tile's products
            _load_key_tile(K_D, V_D, k_smem, v_smem, bars, u + 1, bh, c * L + (j + 1) * BKV, v0)
        s = u % 2
        mbarrier.wait(bars.index(s), (u // 2) & 1)
        acc, z = _key_block(
            q2, k_smem.index(s).reshape([BKV, DK]), v_smem.index(s).reshape([BKV, BV]), acc, z, row, t_qs, GATE_B,
            GATE_I, bh, SP, c * L + j * BKV, bars, o_layout, s_layout,
        )  # fmt: skip
    for i in gl.static_range(3):
        mbarrier.invalidate(bars.index(i))
    _epilogue(acc, z, m_run, t_q, eps, H_D, h_smem, Z_TOK, bh, row0, v0, SP, pid_v, NORMALIZE)


@gluon.jit
def _load_key_tile(K_D, V_D, k_smem, v_smem, bars, u, bh, kv_row, v0):
    """Load ``u`` of ``fw_output_kernel``'s stream: the key tile from token ``kv_row`` (K and the V slice) into
    stage ``u % 2``."""
    s = u % 2
    mbarrier.expect(bars.index(s), K_D.block_type.nbytes + V_D.block_type.nbytes)
    compat.tma_load(K_D, [bh, kv_row, 0], bars.index(s), k_smem.index(s))
    compat.tma_load(V_D, [bh, kv_row, v0], bars.index(s), v_smem.index(s))


@gluon.jit
def _load_state_piece(C_D, v_smem, bars, p: gl.constexpr, state, v0):
    """Load ``p`` of ``fw_output_kernel``'s stream: rows ``p * BKV ..`` of the chunk state's ``BV`` slice into the V
    buffer of stage ``p % 2`` (a state piece has the V tile's shape and layout)."""
    BKV: gl.constexpr = C_D.block_type.shape[1]
    mbarrier.expect(bars.index(p % 2), C_D.block_type.nbytes)
    compat.tma_load(C_D, [state, p * BKV, v0], bars.index(p % 2), v_smem.index(p % 2))


@gluon.jit
def _ring_key_block(q2, k_bufs, v_bufs, ready, empty, turns, acc, z, row, t_qs, GATE_B, GATE_I, bh, SP, kv_row0, u, j,
                    o_layout: gl.constexpr, s_layout: gl.constexpr, ME: gl.constexpr, PINGPONG: gl.constexpr):  # fmt: skip
    """Key tile ``j`` (the ring's load ``u``) once it is ready, through ``_key_block``; its stage handed back after."""
    stages: gl.constexpr = k_bufs.type.shape[0]
    BKV: gl.constexpr = k_bufs.type.shape[2]
    DK: gl.constexpr = k_bufs.type.shape[3]
    BV: gl.constexpr = v_bufs.type.shape[3]
    s = u % stages
    mbarrier.wait(ready.index(s), (u // stages) & 1)
    acc, z = _key_block(
        q2, k_bufs.index(s).reshape([BKV, DK]), v_bufs.index(s).reshape([BKV, BV]), acc, z, row, t_qs, GATE_B, GATE_I,
        bh, SP, kv_row0 + j * BKV, turns, o_layout, s_layout, ME, PINGPONG,
    )  # fmt: skip
    mbarrier.arrive(empty.index(s), count=1)
    return acc, z


@gluon.jit
def _compute_partition(q_smem, c_smem, k_bufs, v_bufs, h_smem, qc_ready, ready, empty, turns, H_D, GATE_B, GATE_I,
                       N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, kv_row0, v0, pid_v, n_both, n_blocks, n_loaded, SP,
                       DHQK, qk_scale, eps, EXP: gl.constexpr, NORMALIZE: gl.constexpr, o_layout: gl.constexpr,
                       s_layout: gl.constexpr, P: gl.constexpr, ME: gl.constexpr, PINGPONG: gl.constexpr):  # fmt: skip
    """A consumer warpgroup (the default partition, and with two consumers one worker partition too): for its query
    tile from ``row0``, the inter-chunk term (its state pieces from the ring when ``P > 0``), its ``n_blocks`` key
    tiles, then the epilogue. Each stage is handed back as soon as its products are done; the key tiles past its
    diagonal that the ring brings for a later consumer (up to ``n_loaded``) are handed back unread. With
    ``PINGPONG``, consumer ``ME`` takes turns with the other over the first ``n_both`` tiles (those both multiply)."""
    stages: gl.constexpr = k_bufs.type.shape[0]
    BQ: gl.constexpr = q_smem.type.shape[1]
    DK: gl.constexpr = q_smem.type.shape[2]
    acc = state_product(q_smem, c_smem, v_bufs, qc_ready, ready, empty, o_layout, P)
    q2 = q_smem.reshape([BQ, DK])
    acc, z, m_run, t_q, row, t_qs = _inter_chunk(
        q2, acc, N_ST, M_ST, M_TOK, GATE_B, bh, st, row0, SP, DHQK, qk_scale, EXP, o_layout, s_layout
    )
    for j in range(n_both):
        acc, z = _ring_key_block(
            q2, k_bufs, v_bufs, ready, empty, turns, acc, z, row, t_qs, GATE_B, GATE_I, bh, SP, kv_row0, P + j, j,
            o_layout, s_layout, ME, PINGPONG,
        )  # fmt: skip
    for j in range(n_both, n_blocks):
        acc, z = _ring_key_block(
            q2, k_bufs, v_bufs, ready, empty, turns, acc, z, row, t_qs, GATE_B, GATE_I, bh, SP, kv_row0, P + j, j,
            o_layout, s_layout, ME, False,
        )  # fmt: skip
    for j in range(n_blocks, n_loaded):  # waited first: an early arrival would count towards the stage's last use
        u = P + j
        mbarrier.wait(ready.index(u % stages), (u // stages) & 1)
        mbarrier.arrive(empty.index(u % stages), count=1)
    _epilogue(acc, z, m_run, t_q, eps, H_D, h_smem, Z_TOK, bh, row0, v0, SP, pid_v, NORMALIZE)


@gluon.jit
def fw_output_ws_kernel(
    Q_D,
    K_D,
    V_D,
    C_D,
    H_D,
    GATE_B,
    GATE_I,
    N_ST,
    M_ST,
    M_TOK,
    Z_TOK,
    SP,
    NC,
    DHQK,
    qk_scale,
    eps,
    L: gl.constexpr,
    EXP: gl.constexpr,
    NORMALIZE: gl.constexpr,
    S_INSTR_N: gl.constexpr,
    O_INSTR_N: gl.constexpr,
    STAGES: gl.constexpr,
    STATE_PIECES: gl.constexpr,
    CONSUMERS: gl.constexpr,
    PINGPONG: gl.constexpr,
    num_warps: gl.constexpr,
):
    """``fw_output_kernel``'s descriptors and results, warp-specialized (module docstring). A program covers
    ``CONSUMERS * BQ`` queries, ``BQ`` per consumer warpgroup, on the grid ``(cdiv(DHHV, BV), NC * L / (CONSUMERS *
    BQ), BH)``; the consumers share the state and the key tiles (each stage freed by all of them). ``PINGPONG``
    (two consumers): their products over the key tiles both multiply in strict turns."""
    BQ: gl.constexpr = Q_D.block_type.shape[1]
    DK: gl.constexpr = Q_D.block_type.shape[2]
    BKV: gl.constexpr = K_D.block_type.shape[1]
    BV: gl.constexpr = V_D.block_type.shape[2]
    s_layout: gl.constexpr = mma_layout(num_warps, S_INSTR_N)
    o_layout: gl.constexpr = mma_layout(num_warps, O_INSTR_N)
    pid_v, bh, c, row0, v0, st, n_loaded = _program(NC, L, CONSUMERS * BQ, BKV, BV)

    q_bufs = gl.allocate_shared_memory(Q_D.dtype, [CONSUMERS, 1, BQ, DK], Q_D.layout)
    k_bufs = gl.allocate_shared_memory(K_D.dtype, [STAGES, 1, BKV, DK], K_D.layout)
    v_bufs = gl.allocate_shared_memory(V_D.dtype, [STAGES, 1, BKV, BV], V_D.layout)
    if STATE_PIECES == 0:
        c_smem = gl.allocate_shared_memory(C_D.dtype, [1, DK, BV], C_D.layout)
    else:
        c_smem = v_bufs  # the pieces pass through the V buffers: no buffer of its own (not read as c_smem)
    if CONSUMERS > 1 and DK == BV:
        h_bufs = q_bufs  # the output tile has the query tile's shape and layout: it goes out through that buffer
    else:
        h_bufs = gl.allocate_shared_memory(H_D.dtype, [CONSUMERS, 1, BQ, BV], H_D.layout)
    qc_ready, ready, empty = ring_barriers(STAGES, CONSUMERS)
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    init_turns(turns)

    n_first = gl.cdiv(row0 - c * L + BQ, BKV)  # the first consumer's key tiles (the second's: n_loaded, all)
    # The partitions are written out in each branch: Gluon takes them only as literal (function, args) tuples (an
    # argument tuple held in a variable is converted to tensors, which the layouts and constexprs are not).
    if CONSUMERS == 1:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (q_bufs.index(0), c_smem, k_bufs, v_bufs, h_bufs.index(0), qc_ready, ready, empty, turns, H_D,
                     GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, c * L, v0, pid_v, n_first, n_first,
                     n_loaded, SP, DHQK, qk_scale, eps, EXP, NORMALIZE, o_layout, s_layout, STATE_PIECES, 0, PINGPONG),
                ),
                (
                    load_partition,
                    (Q_D, K_D, V_D, C_D, q_bufs, c_smem, k_bufs, v_bufs, qc_ready, ready, empty, bh, row0,
                     bh * NC + c, c * L, v0, n_loaded, STATE_PIECES),
                ),
            ],
            [LOAD_WARPS],
            [LOAD_REGS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _compute_partition,
                    (q_bufs.index(0), c_smem, k_bufs, v_bufs, h_bufs.index(0), qc_ready, ready, empty, turns, H_D,
                     GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, c * L, v0, pid_v, n_first, n_first,
                     n_loaded, SP, DHQK, qk_scale, eps, EXP, NORMALIZE, o_layout, s_layout, STATE_PIECES, 0, PINGPONG),
                ),
                (
                    _compute_partition,
                    (q_bufs.index(1), c_smem, k_bufs, v_bufs, h_bufs.index(1), qc_ready, ready, empty, turns, H_D,
                     GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0 + BQ, c * L, v0, pid_v, n_first, n_loaded,
                     n_loaded, SP, DHQK, qk_scale, eps, EXP, NORMALIZE, o_layout, s_layout, STATE_PIECES, 1,
                     PINGPONG),
                ),
                (
                    load_partition,
                    (Q_D, K_D, V_D, C_D, q_bufs, c_smem, k_bufs, v_bufs, qc_ready, ready, empty, bh, row0,
                     bh * NC + c, c * L, v0, n_loaded, STATE_PIECES),
                ),
            ],
            [num_warps, LOAD_WARPS],
            [CONSUMER_REGS, LOAD_REGS],
        )  # fmt: skip
    invalidate_ring(qc_ready, ready, empty)
    invalidate_turns(turns)


@gluon.jit
def _halves_load_partition(Q_D, K_D, V_D, C_D, q_smem, k_bufs, v_lo, v_hi, q_ready, ready, empty, bh, row0, st_row,
                           kv_row0, v0, n_tiles, P: gl.constexpr):  # fmt: skip
    """Producer of ``fw_output_shared_scores_kernel``: the query tile once, then through the ring the ``P`` state
    pieces (both ``BV`` halves of ``BKV`` state rows, the first into ``v_lo``'s stage, the second into ``v_hi``'s),
    then ``n_tiles`` key tiles: K (whole head dim) and both halves of V. Load ``u`` goes into stage ``u % STAGES`` once
    both consumers freed it."""
    BKV: gl.constexpr = K_D.block_type.shape[1]
    BV: gl.constexpr = V_D.block_type.shape[2]
    mbarrier.expect(q_ready, Q_D.block_type.nbytes)
    compat.tma_load(Q_D, [bh, row0, 0], q_ready, q_smem)
    for p in gl.static_range(P):
        s = claim_stage(ready, empty, 2 * C_D.block_type.nbytes, p)
        compat.tma_load(C_D, [st_row, p * BKV, v0], ready.index(s), v_lo.index(s))
        compat.tma_load(C_D, [st_row, p * BKV, v0 + BV], ready.index(s), v_hi.index(s))
    for j in range(n_tiles):
        s = claim_stage(ready, empty, K_D.block_type.nbytes + 2 * V_D.block_type.nbytes, P + j)
        kv_row = kv_row0 + j * BKV
        compat.tma_load(K_D, [bh, kv_row, 0], ready.index(s), k_bufs.index(s))
        compat.tma_load(V_D, [bh, kv_row, v0], ready.index(s), v_lo.index(s))
        compat.tma_load(V_D, [bh, kv_row, v0 + BV], ready.index(s), v_hi.index(s))


@gluon.jit
def _half_partition(q_smem, k_bufs, v_bufs, p_bufs, z_smem, h_smem, q_ready, ready, empty, p_ready, p_empty, z_ready,
                    H_D, GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, kv_row0, v0, pid_v, n_blocks, SP,
                    DHQK, qk_scale, eps, EXP: gl.constexpr, NORMALIZE: gl.constexpr, o_layout: gl.constexpr,
                    s_layout: gl.constexpr, P: gl.constexpr, ME: gl.constexpr):  # fmt: skip
    """Consumer ``ME`` of ``fw_output_shared_scores_kernel``: output columns ``v0 + ME * BV ..`` of the program's
    queries. The gated scores of key tile ``j`` are computed once, by consumer ``j % 2``, and reach both consumers
    through ``p_bufs[j % 2]`` (``p_ready`` / ``p_empty``: one writer, two readers); each consumer multiplies every
    tile's scores with its own half of the values (``v_bufs``: its ring of value and state-piece halves). The
    normalizer's key sums (each consumer has those of its own
    tiles) are exchanged through ``z_smem`` before the epilogue."""
    stages: gl.constexpr = k_bufs.type.shape[0]
    BQ: gl.constexpr = q_smem.type.shape[1]
    DK: gl.constexpr = q_smem.type.shape[2]
    BKV: gl.constexpr = k_bufs.type.shape[2]
    BV: gl.constexpr = v_bufs.type.shape[3]
    dtype: gl.constexpr = q_smem.dtype
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    acc = state_product(q_smem, v_bufs, v_bufs, q_ready, ready, empty, o_layout, P)  # pieces pass through v_bufs
    q2 = q_smem.reshape([BQ, DK])
    acc, z, m_run, t_q, row, t_qs = _inter_chunk(
        q2, acc, N_ST, M_ST, M_TOK, GATE_B, bh, st, row0, SP, DHQK, qk_scale, EXP, o_layout, s_layout
    )
    z_own = gl.zeros([BQ], gl.float32, rows_o)
    s_zeros = gl.zeros([BQ, BKV], gl.float32, s_layout)
    for j in range(n_blocks):
        u = P + j
        s = u % stages
        mbarrier.wait(ready.index(s), (u // stages) & 1)
        if j % 2 == ME:  # this consumer's turn to compute the tile's gated scores for both
            mbarrier.wait(p_empty.index(ME), ((j // 2) & 1) ^ 1)
            scores = warpgroup_mma(q2, k_bufs.index(s).reshape([BKV, DK]).permute((1, 0)), s_zeros, use_acc=False)
            g = _gated(scores, row, t_qs, GATE_B, GATE_I, bh, SP, kv_row0 + j * BKV, BKV, s_layout)
            z_own += gl.convert_layout(gl.sum(g, axis=1), rows_o)
            p_bufs.index(ME).store(g.to(dtype))
            fence_async_shared()
            gl.thread_barrier()  # every thread's scores stored before the one arrival below
            mbarrier.arrive(p_ready.index(ME), count=1)
        mbarrier.wait(p_ready.index(j % 2), (j // 2) & 1)
        acc = warpgroup_mma(p_bufs.index(j % 2), v_bufs.index(s).reshape([BKV, BV]), acc)
        mbarrier.arrive(p_empty.index(j % 2), count=1)
        mbarrier.arrive(empty.index(s), count=1)
    z_smem.index(ME).store(z_own)
    gl.thread_barrier()
    mbarrier.arrive(z_ready, count=1)
    mbarrier.wait(z_ready, 0)
    z += z_smem.index(0).load(rows_o) + z_smem.index(1).load(rows_o)
    _epilogue(acc, z, m_run, t_q, eps, H_D, h_smem, Z_TOK, bh, row0, v0 + ME * BV, SP, 2 * pid_v + ME, NORMALIZE)


@gluon.jit
def fw_output_shared_scores_kernel(
    Q_D,
    K_D,
    V_D,
    C_D,
    H_D,
    GATE_B,
    GATE_I,
    N_ST,
    M_ST,
    M_TOK,
    Z_TOK,
    SP,
    NC,
    DHQK,
    qk_scale,
    eps,
    L: gl.constexpr,
    EXP: gl.constexpr,
    NORMALIZE: gl.constexpr,
    S_INSTR_N: gl.constexpr,
    O_INSTR_N: gl.constexpr,
    STAGES: gl.constexpr,
    STATE_PIECES: gl.constexpr,
    num_warps: gl.constexpr,
):
    """``fw_output_kernel``'s descriptors and results (``C_D`` in ``BKV``-row pieces: ``STATE_PIECES`` of them),
    warp-specialized with two consumer warpgroups on the same ``BQ`` queries, each writing ``BV`` output columns:
    a program covers ``2 * BV`` columns on the grid ``(cdiv(DHHV, 2 * BV), NC * L / BQ, BH)``, and each key tile's
    gated scores are computed once for both halves instead of once per program of ``BV`` columns (at 7B, DHHV 512:
    once per query tile instead of twice)."""
    BQ: gl.constexpr = Q_D.block_type.shape[1]
    DK: gl.constexpr = Q_D.block_type.shape[2]
    BKV: gl.constexpr = K_D.block_type.shape[1]
    BV: gl.constexpr = V_D.block_type.shape[2]
    s_layout: gl.constexpr = mma_layout(num_warps, S_INSTR_N)
    o_layout: gl.constexpr = mma_layout(num_warps, O_INSTR_N)
    pid_v, bh, c, row0, v0, st, n_blocks = _program(NC, L, BQ, BKV, 2 * BV)

    q_smem = gl.allocate_shared_memory(Q_D.dtype, [1, BQ, DK], Q_D.layout)
    k_bufs = gl.allocate_shared_memory(K_D.dtype, [STAGES, 1, BKV, DK], K_D.layout)
    v_lo = gl.allocate_shared_memory(V_D.dtype, [STAGES, 1, BKV, BV], V_D.layout)  # the first consumer's half
    v_hi = gl.allocate_shared_memory(V_D.dtype, [STAGES, 1, BKV, BV], V_D.layout)  # the second's
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BQ, BKV], Q_D.dtype)
    p_bufs = gl.allocate_shared_memory(Q_D.dtype, [2, BQ, BKV], p_layout)
    z_smem = gl.allocate_shared_memory(gl.float32, [2, BQ], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    h_bufs = gl.allocate_shared_memory(H_D.dtype, [2, 1, BQ, BV], H_D.layout)
    q_ready, ready, empty = ring_barriers(STAGES, 2)
    p_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    p_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    z_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(p_ready.index(i), count=1)
        mbarrier.init(p_empty.index(i), count=2)
    mbarrier.init(z_ready, count=2)

    gl.warp_specialize(
        [
            (
                _half_partition,
                (q_smem, k_bufs, v_lo, p_bufs, z_smem, h_bufs.index(0), q_ready, ready, empty, p_ready, p_empty,
                 z_ready, H_D, GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, c * L, v0, pid_v, n_blocks, SP,
                 DHQK, qk_scale, eps, EXP, NORMALIZE, o_layout, s_layout, STATE_PIECES, 0),
            ),
            (
                _half_partition,
                (q_smem, k_bufs, v_hi, p_bufs, z_smem, h_bufs.index(1), q_ready, ready, empty, p_ready, p_empty,
                 z_ready, H_D, GATE_B, GATE_I, N_ST, M_ST, M_TOK, Z_TOK, bh, st, row0, c * L, v0, pid_v, n_blocks, SP,
                 DHQK, qk_scale, eps, EXP, NORMALIZE, o_layout, s_layout, STATE_PIECES, 1),
            ),
            (
                _halves_load_partition,
                (Q_D, K_D, V_D, C_D, q_smem, k_bufs, v_lo, v_hi, q_ready, ready, empty, bh, row0, bh * NC + c, c * L,
                 v0, n_blocks, STATE_PIECES),
            ),
        ],
        [num_warps, LOAD_WARPS],
        [CONSUMER_REGS, LOAD_REGS],
    )  # fmt: skip
    invalidate_ring(q_ready, ready, empty)
    for i in gl.static_range(2):
        mbarrier.invalidate(p_ready.index(i))
        mbarrier.invalidate(p_empty.index(i))
    mbarrier.invalidate(z_ready)


def check(q: Any, chunk_size: int, bq: int, bkv: int, bv: int, dhhv: int, state_pieces: bool = False) -> None:
    """``intra_chunk.check`` for this kernel: ``BQ`` queries a program, ``BKV``-row key tiles and state pieces."""
    intra_chunk.check("fw_output", q, chunk_size, ("BQ", bq), ("BKV", bkv), bv, dhhv, state_pieces)


def launch_args(
    q: Any,
    k: Any,
    v: Any,
    gate_b: Any,
    gate_i: Any,
    c_st: Any,
    n_st: Any,
    m_st: Any,
    h: Any,
    m_tok: Any,
    z_tok: Any,
    chunk_size: int,
    exp: bool,
    normalize: bool,
    eps: float,
    bq: int = 64,
    bkv: int = 64,
    bv: int = 128,
    num_warps: int = 4,
    stages: int = 2,
    warp_specialized: bool = True,
    state_pieces: bool = False,
    consumers: int = 1,
    pingpong: bool = False,
    shared_scores: bool = False,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_fw_output`` launches: the kernel, its grid, its runtime arguments and its constexprs, by
    name (the CPU compile tests build the same from CPU tensors). ``state_pieces`` loads the chunk state's ``BV``
    slice in ``BKV``-row pieces through the V buffers instead of whole (what lets ``BV`` 256 fit beside a q/k head
    dim of 256); ``consumers`` (1 or 2, warp-specialized only) is the number of consumer warpgroups, each with its
    own ``BQ`` queries; ``pingpong`` (two consumers only) issues their products in turns. ``shared_scores``
    (``fw_output_shared_scores_kernel``: warp-specialized, state pieces, two consumers on the same queries, each
    ``BV`` of a program's ``2 * BV`` columns) computes each key tile's scores once for both. ``ValueError`` from
    ``check``."""
    dhqk, dhhv = q.shape[-1], v.shape[-1]
    bh, nc = c_st.shape[:2]
    bv = min(bv, triton.next_power_of_2(dhhv))  # the output tile at most the padded head dim, as the Triton tiles
    check(q, chunk_size, bq, bkv, bv, dhhv, state_pieces)
    if shared_scores and not (warp_specialized and state_pieces and consumers == 2 and not pingpong):
        raise ValueError(
            "shared_scores runs warp-specialized with state pieces and two consumers on the same queries, without "
            f"pingpong; got warp_specialized={warp_specialized}, state_pieces={state_pieces}, "
            f"consumers={consumers}, pingpong={pingpong}"
        )
    queries = bq if shared_scores else consumers * bq  # a program's query rows
    if consumers not in (1, 2) or (consumers == 2 and not warp_specialized) or chunk_size % queries:
        raise ValueError(
            f"consumers is 1 or 2 (2 only warp-specialized, with 2 * BQ dividing the chunk size {chunk_size}); "
            f"got {consumers} with BQ={bq}, warp_specialized={warp_specialized}"
        )
    intra_chunk.check_pingpong(pingpong, consumers)
    dk = triton.next_power_of_2(dhqk)
    args = {
        "Q_D": head_tiles(q, bq, dk),
        "K_D": head_tiles(k, bkv, dk),
        "V_D": head_tiles(v, bkv, bv),
        "C_D": head_tiles(c_st, bkv if state_pieces else dk, bv),
        "H_D": head_tiles(h, bq, bv),
        "GATE_B": gate_b,
        "GATE_I": gate_i,
        "N_ST": n_st,
        "M_ST": m_st,
        "M_TOK": m_tok,
        "Z_TOK": z_tok,
        "SP": nc * chunk_size,
        "NC": nc,
        "DHQK": dhqk,
        "qk_scale": dhqk**-0.5,
        "eps": eps,
    }
    constexprs = {
        "L": chunk_size,
        "EXP": exp,
        "NORMALIZE": normalize,
        "S_INSTR_N": instr_n(bq, bkv, num_warps),
        "O_INSTR_N": instr_n(bq, bv, num_warps),
        "STATE_PIECES": dk // bkv if state_pieces else 0,
        "num_warps": num_warps,
    }
    columns = 2 * bv if shared_scores else bv  # a program's output columns: both consumers' halves when shared
    grid = (triton.cdiv(dhhv, columns), nc * (chunk_size // queries), bh)
    if shared_scores:
        return fw_output_shared_scores_kernel, grid, args, constexprs | {"STAGES": stages}
    kernel = fw_output_ws_kernel if warp_specialized else fw_output_kernel
    if warp_specialized:
        constexprs |= {"STAGES": stages, "CONSUMERS": consumers, "PINGPONG": pingpong}
    return kernel, grid, args, constexprs


def launch_fw_output(*tensors: Any, **options: Any) -> None:
    """As ``kernels.mlstm.chunk_fw.launch_fw_output`` (same tensors and order, ``kernels.mlstm.tfla.ForwardState``'s
    shapes, then ``chunk_size, exp, normalize, eps``): writes ``h`` and ``z_tok``. Options (``launch_args``): the
    tiles ``bq, bkv, bv``, ``num_warps``, ``state_pieces``, and ``warp_specialized`` (``fw_output_ws_kernel`` with a
    ring of ``stages`` key-tile buffers, ``consumers`` consumer warpgroups and ``pingpong`` turns between two; else
    ``fw_output_kernel``, two).
    CPU tensors run through ``kernels.gluon.simulator`` (for tests: results, not timings)."""
    intra_chunk.launch(*launch_args(*tensors, **options), tensors[0].device)
