"""The TFLA backward's ``dv`` kernel (``kernels.mlstm.chunk_bw.bw_chunk_dv_kernel``) in Gluon for Hopper,
warp-specialized.

Same inputs and output as ``launch_bw_dv``: per program ``BKV`` keys of one chunk and a ``BV`` slice of ``dv``. It
is the output kernel (``kernels.gluon.mlstm_fw_output``) with the roles of queries and keys swapped, and it shares
that kernel's producer (``load_partition``): a 1-warp partition loads the key tile once (the whole q/k head dim, at
most 256), then the state gradient's slice ``dC_{c+1}[:, v0:v0+BV]`` (whole, or in ``BQ``-row pieces through the
``dh`` buffers), then the query and ``dh`` tiles from the diagonal to the chunk's end through a ring of ``STAGES``
buffers. One consumer warpgroup forms the inter-chunk term ``w_s k_s dC`` (one wgmma, or one per piece with the key
tile sliced along the head dim) and, per query tile, the transposed scores ``k q^T`` (wgmma from shared memory), the
gated, normalizer-scaled matrix ``P^T`` in registers and ``dv += P^T dh`` (wgmma with ``P^T`` from registers).

With ``consumers=2`` two consumer warpgroups take 64 keys each from the same query tiles (the second hands back,
unread, the tile before its diagonal), as the output kernel's two consumers share key tiles; with ``pingpong`` their
products over the query tiles both multiply are issued in strict turns (``intra_chunk.wait_turn``).

Not yet: 32-bit inputs.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma

from kernels.gluon import compat, intra_chunk
from kernels.gluon.config import state_tiles
from kernels.gluon.intra_chunk import (
    CONSUMER_REGS,
    LOAD_REGS,
    LOAD_WARPS,
    LOG2E,
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
def _dv_tile(k2, q_bufs, dh_bufs, ready, empty, turns, acc, row, t_ss, GATE_B, INV_DEN, M_TOK, bh, q_row0, SP, u, j,
             EXP: gl.constexpr, o_layout: gl.constexpr, s_layout: gl.constexpr, ME: gl.constexpr,
             PINGPONG: gl.constexpr):  # fmt: skip
    """Query tile ``j`` from token ``q_row0`` (the ring's load ``u``) once it is ready: the transposed scores, the
    gated and normalizer-scaled ``P^T`` and ``acc += P^T dh``; its stage handed back once both products have
    completed. With ``PINGPONG`` consumer ``ME`` issues each product in its turn (``intra_chunk.wait_turn``)."""
    stages: gl.constexpr = q_bufs.type.shape[0]
    BKV: gl.constexpr = k2.type.shape[0]
    DK: gl.constexpr = k2.type.shape[1]
    BQ: gl.constexpr = q_bufs.type.shape[2]
    BV: gl.constexpr = dh_bufs.type.shape[3]
    dtype: gl.constexpr = k2.dtype
    cols_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s = u % stages
    mbarrier.wait(ready.index(s), (u // stages) & 1)
    q2 = q_bufs.index(s).reshape([BQ, DK])
    s_zeros = gl.zeros([BKV, BQ], gl.float32, s_layout)
    scores = product(k2, q2.permute((1, 0)), s_zeros, turns, ME, 0, PINGPONG, use_acc=False)
    t_q = q_row0 + j * BQ + gl.arange(0, BQ, layout=cols_s)
    if EXP:
        col = (gl.load(GATE_B + bh * SP + t_q) - gl.load(M_TOK + bh * SP + t_q)) * LOG2E
    else:
        col = gl.load(GATE_B + bh * SP + t_q) * LOG2E
    keep = t_q[None, :] >= t_ss[:, None]
    pt = gl.exp2(gl.where(keep, row[:, None] + col[None, :], -float("inf"))) * scores
    pt = pt * gl.load(INV_DEN + bh * SP + t_q)[None, :]
    pt_op = gl.convert_layout(pt.to(dtype), p_layout)
    acc = product(pt_op, dh_bufs.index(s).reshape([BQ, BV]), acc, turns, ME, 1, PINGPONG, A_IN_REGISTERS=True)
    mbarrier.arrive(empty.index(s), count=1)
    return acc


@gluon.jit
def _dv_partition(k_smem, dc_smem, q_bufs, dh_bufs, dv_smem, k_ready, ready, empty, turns, DV_D, GATE_B, GATE_I,
                  INV_DEN, M_ST, M_TOK, bh, st, s0, chunk_end, q_row0, v0, n_skip, n_alone, n_tiles, SP, qk_scale,
                  EXP: gl.constexpr, o_layout: gl.constexpr, s_layout: gl.constexpr, P: gl.constexpr,
                  ME: gl.constexpr, PINGPONG: gl.constexpr):  # fmt: skip
    """A consumer warpgroup (module docstring): ``dv`` of keys ``s0 ..`` from the ring's ``n_tiles`` query tiles
    from token ``q_row0``, of which the first ``n_skip`` lie before its diagonal (brought for an earlier consumer's
    keys: waited for and handed back unread); ``chunk_end`` is the chunk's last token (its gate ``b`` scales the
    inter-chunk term). It multiplies the tiles from ``n_skip`` to ``n_alone`` (at least ``n_skip``: for the first of two
    consumers, those the other skips) on its own, the rest with ``PINGPONG`` in turns with the other consumer ``1 -
    ME``."""
    BKV: gl.constexpr = k_smem.type.shape[1]
    DK: gl.constexpr = k_smem.type.shape[2]
    BV: gl.constexpr = dh_bufs.type.shape[3]
    stages: gl.constexpr = q_bufs.type.shape[0]
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)

    acc = state_product(k_smem, dc_smem, dh_bufs, k_ready, ready, empty, o_layout, P)
    k2 = k_smem.reshape([BKV, DK])
    t_s = s0 + gl.arange(0, BKV, layout=rows_o)
    m_next = gl.load(M_ST + st) if EXP else 0.0
    b_end = gl.load(GATE_B + bh * SP + chunk_end)
    acc = acc * gl.exp(b_end - gl.load(GATE_B + bh * SP + t_s) + gl.load(GATE_I + bh * SP + t_s) - m_next)[:, None]
    t_ss = s0 + gl.arange(0, BKV, layout=rows_s)
    row = (gl.load(GATE_I + bh * SP + t_ss) - gl.load(GATE_B + bh * SP + t_ss)) * LOG2E + gl.log2(qk_scale)

    for j in range(n_skip):  # waited first: an early arrival would count towards the stage's next use
        u = P + j
        mbarrier.wait(ready.index(u % stages), (u // stages) & 1)
        mbarrier.arrive(empty.index(u % stages), count=1)
    for j in range(n_skip, n_alone):
        acc = _dv_tile(
            k2, q_bufs, dh_bufs, ready, empty, turns, acc, row, t_ss, GATE_B, INV_DEN, M_TOK, bh, q_row0, SP, P + j, j,
            EXP, o_layout, s_layout, ME, False,
        )  # fmt: skip
    for j in range(n_alone, n_tiles):
        acc = _dv_tile(
            k2, q_bufs, dh_bufs, ready, empty, turns, acc, row, t_ss, GATE_B, INV_DEN, M_TOK, bh, q_row0, SP, P + j, j,
            EXP, o_layout, s_layout, ME, PINGPONG,
        )  # fmt: skip

    dv_smem.reshape([BKV, BV]).store(acc.to(DV_D.dtype))
    fence_async_shared()
    compat.tma_store(DV_D, [bh, s0, v0], dv_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def dv_program(Q_D, K_D, DH_D, DC_D, DV_D, GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, SP, NC, qk_scale, pid_v, pid_cs, bh,
               L: gl.constexpr, EXP: gl.constexpr, S_INSTR_N: gl.constexpr, O_INSTR_N: gl.constexpr,
               STAGES: gl.constexpr, STATE_PIECES: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr,
               num_warps: gl.constexpr):  # fmt: skip
    """``bw_dv_kernel``'s program ``(pid_v, pid_cs, bh)``: ``dv[bh]`` of the ``CONSUMERS * BKV`` keys ``pid_cs``,
    columns ``pid_v * BV ..`` (also a program of ``mlstm_bw_grads.bw_grads_kernel``)."""
    BKV: gl.constexpr = K_D.block_type.shape[1]
    DK: gl.constexpr = K_D.block_type.shape[2]
    BQ: gl.constexpr = Q_D.block_type.shape[1]
    BV: gl.constexpr = DH_D.block_type.shape[2]
    s_layout: gl.constexpr = mma_layout(num_warps, S_INSTR_N)
    o_layout: gl.constexpr = mma_layout(num_warps, O_INSTR_N)
    keys: gl.constexpr = CONSUMERS * BKV
    c = pid_cs // (L // keys)
    s_start = (pid_cs % (L // keys)) * keys
    q_first = (s_start // BQ) * BQ  # the query tile holding the first diagonal, then every one to the chunk's end
    n_skip = (s_start + BKV) // BQ - s_start // BQ  # the second consumer's query tiles before its diagonal
    st = bh * (NC + 1) + c + 1

    k_bufs = gl.allocate_shared_memory(K_D.dtype, [CONSUMERS, 1, BKV, DK], K_D.layout)
    q_bufs = gl.allocate_shared_memory(Q_D.dtype, [STAGES, 1, BQ, DK], Q_D.layout)
    dh_bufs = gl.allocate_shared_memory(DH_D.dtype, [STAGES, 1, BQ, BV], DH_D.layout)
    if STATE_PIECES == 0:
        dc_smem = gl.allocate_shared_memory(DC_D.dtype, [1, DK, BV], DC_D.layout)
    else:
        dc_smem = dh_bufs  # the pieces pass through the dh buffers (not read as dc_smem)
    if DK == BV:
        dv_bufs = k_bufs  # an output tile has its key tile's shape and layout, and goes out after that tile's reads
    else:
        dv_bufs = gl.allocate_shared_memory(DV_D.dtype, [CONSUMERS, 1, BKV, BV], DV_D.layout)
    k_ready, ready, empty = ring_barriers(STAGES, CONSUMERS)
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    init_turns(turns)

    n_tiles = (L - q_first) // BQ
    # The partitions are written out per branch: Gluon takes them only as literal (function, args) tuples.
    if CONSUMERS == 1:
        gl.warp_specialize(
            [
                (
                    _dv_partition,
                    (k_bufs.index(0), dc_smem, q_bufs, dh_bufs, dv_bufs.index(0), k_ready, ready, empty, turns, DV_D,
                     GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, bh, st, c * L + s_start, c * L + L - 1, c * L + q_first,
                     pid_v * BV, 0, n_skip, n_tiles, SP, qk_scale, EXP, o_layout, s_layout, STATE_PIECES, 0,
                     PINGPONG),
                ),
                (
                    load_partition,
                    (K_D, Q_D, DH_D, DC_D, k_bufs, dc_smem, q_bufs, dh_bufs, k_ready, ready, empty, bh,
                     c * L + s_start, st, c * L + q_first, pid_v * BV, n_tiles, STATE_PIECES),
                ),
            ],
            [LOAD_WARPS],
            [LOAD_REGS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _dv_partition,
                    (k_bufs.index(0), dc_smem, q_bufs, dh_bufs, dv_bufs.index(0), k_ready, ready, empty, turns, DV_D,
                     GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, bh, st, c * L + s_start, c * L + L - 1, c * L + q_first,
                     pid_v * BV, 0, n_skip, n_tiles, SP, qk_scale, EXP, o_layout, s_layout, STATE_PIECES, 0,
                     PINGPONG),
                ),
                (
                    _dv_partition,
                    (k_bufs.index(1), dc_smem, q_bufs, dh_bufs, dv_bufs.index(1), k_ready, ready, empty, turns, DV_D,
                     GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, bh, st, c * L + s_start + BKV, c * L + L - 1,
                     c * L + q_first, pid_v * BV, n_skip, n_skip, n_tiles, SP, qk_scale, EXP, o_layout, s_layout,
                     STATE_PIECES, 1, PINGPONG),
                ),
                (
                    load_partition,
                    (K_D, Q_D, DH_D, DC_D, k_bufs, dc_smem, q_bufs, dh_bufs, k_ready, ready, empty, bh,
                     c * L + s_start, st, c * L + q_first, pid_v * BV, n_tiles, STATE_PIECES),
                ),
            ],
            [num_warps, LOAD_WARPS],
            [CONSUMER_REGS, LOAD_REGS],
        )  # fmt: skip
    invalidate_ring(k_ready, ready, empty)
    invalidate_turns(turns)


@gluon.jit
def bw_dv_kernel(
    Q_D,
    K_D,
    DH_D,
    DC_D,
    DV_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    M_ST,
    M_TOK,
    SP,
    NC,
    qk_scale,
    L: gl.constexpr,
    EXP: gl.constexpr,
    S_INSTR_N: gl.constexpr,
    O_INSTR_N: gl.constexpr,
    STAGES: gl.constexpr,
    STATE_PIECES: gl.constexpr,
    CONSUMERS: gl.constexpr,
    PINGPONG: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(cdiv(DHHV, BV), NC * L / (CONSUMERS * BKV), BH)``: ``CONSUMERS`` (1 or 2) warpgroups of ``BKV`` keys
    each, fed the same query tiles by the one load warp (each stage freed by all of them). Descriptors over ``(heads, rows, cols)`` with blocks
    ``[1, rows, cols]``: ``K_D`` (BKV x DK), ``Q_D`` (BQ x DK), ``DH_D`` (BQ x BV), ``DC_D`` (DK x BV over the
    ``BH * (NC + 1)`` state gradients, or BQ x BV with ``STATE_PIECES = DK / BQ``), ``DV_D`` (BKV x BV); ``DK`` is
    the q/k head dim padded to a power of two. ``PINGPONG`` (two consumers): their products over the query tiles
    both multiply in strict turns."""
    dv_program(
        Q_D, K_D, DH_D, DC_D, DV_D, GATE_B, GATE_I, INV_DEN, M_ST, M_TOK, SP, NC, qk_scale, gl.program_id(0),
        gl.program_id(1), gl.program_id(2), L, EXP, S_INSTR_N, O_INSTR_N, STAGES, STATE_PIECES, CONSUMERS, PINGPONG,
        num_warps,
    )  # fmt: skip


def shared_bytes(
    dhqk: int, dhhv: int, stages: int, bq: int = 64, bkv: int = 64, consumers: int = 1, itemsize: int = 2
) -> int:
    """Shared memory ``bw_dv_kernel`` allocates with ``launch_args``' default state tiles (without its few
    barriers): each consumer's key tile, ``stages`` query and ``dh`` tiles, the whole state slice unless it comes in
    pieces, and the output tiles unless they reuse the key tiles."""
    dk = triton.next_power_of_2(dhqk)
    pieces, bv = state_tiles(dhqk, bq, dhhv)
    out = 0 if dk == bv else consumers * bkv * bv
    return itemsize * (consumers * bkv * dk + stages * bq * (dk + bv) + (0 if pieces else dk * bv) + out)


def check(q: Any, chunk_size: int, bq: int, bkv: int, bv: int, dhhv: int, state_pieces: bool) -> None:
    """``intra_chunk.check`` for this kernel: ``BKV`` keys a program, ``BQ``-row query tiles and state pieces."""
    intra_chunk.check("bw_dv", q, chunk_size, ("BKV", bkv), ("BQ", bq), bv, dhhv, state_pieces)


def launch_args(
    q: Any,
    k: Any,
    dh: Any,
    gate_b: Any,
    gate_i: Any,
    inv_den: Any,
    dc_st: Any,
    m_st: Any,
    m_tok: Any,
    dv: Any,
    chunk_size: int,
    exp: bool,
    bq: int = 64,
    bkv: int = 64,
    bv: int | None = None,
    num_warps: int = 4,
    stages: int = 2,
    state_pieces: bool | None = None,
    consumers: int = 1,
    pingpong: bool = False,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_bw_dv`` launches: the kernel, its grid, its runtime arguments and its constexprs, by name.
    ``state_pieces`` (default: where the padded q/k head dim holds a ``BQ``-row piece) streams the state gradient's
    slice in pieces; ``bv`` defaults to 256 with pieces and 128 without (what fits at the 7B head dims), at most the
    padded ``DHHV``; ``consumers`` (1 or 2) the consumer warpgroups, each with its own ``BKV`` keys; ``pingpong``
    (two consumers only) issues their products in turns. ``ValueError`` from ``check``."""
    dhqk, dhhv = q.shape[-1], dv.shape[-1]
    dk = triton.next_power_of_2(dhqk)
    pieces, default_bv = state_tiles(dhqk, bq, dhhv, state_pieces)
    bv = min(bv, triton.next_power_of_2(dhhv)) if bv else default_bv
    check(q, chunk_size, bq, bkv, bv, dhhv, pieces)
    if consumers not in (1, 2) or chunk_size % (consumers * bkv):
        raise ValueError(
            f"consumers is 1 or 2 (with consumers * BKV dividing the chunk size {chunk_size}); got {consumers} with "
            f"BKV={bkv}"
        )
    intra_chunk.check_pingpong(pingpong, consumers)
    bh, nc = m_st.shape[0], m_st.shape[1] - 1
    args = {
        "Q_D": head_tiles(q, bq, dk),
        "K_D": head_tiles(k, bkv, dk),
        "DH_D": head_tiles(dh, bq, bv),
        "DC_D": head_tiles(dc_st, bq if pieces else dk, bv),
        "DV_D": head_tiles(dv, bkv, bv),
        "GATE_B": gate_b,
        "GATE_I": gate_i,
        "INV_DEN": inv_den,
        "M_ST": m_st,
        "M_TOK": m_tok,
        "SP": nc * chunk_size,
        "NC": nc,
        "qk_scale": dhqk**-0.5,
    }
    constexprs = {
        "L": chunk_size,
        "EXP": exp,
        "S_INSTR_N": instr_n(bkv, bq, num_warps),
        "O_INSTR_N": instr_n(bkv, bv, num_warps),
        "STAGES": stages,
        "STATE_PIECES": dk // bq if pieces else 0,
        "CONSUMERS": consumers,
        "PINGPONG": pingpong,
        "num_warps": num_warps,
    }
    return bw_dv_kernel, (triton.cdiv(dhhv, bv), nc * (chunk_size // (consumers * bkv)), bh), args, constexprs


def launch_bw_dv(*tensors: Any, **options: Any) -> None:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dv`` (same tensors and order, then ``chunk_size, exp``): writes ``dv``.
    Options: ``launch_args``'. CPU tensors run through ``kernels.gluon.simulator`` (results, not timings)."""
    intra_chunk.launch(*launch_args(*tensors, **options), tensors[0].device)
