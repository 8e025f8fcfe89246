"""The TFLA backward's ``dq`` kernel (``kernels.mlstm.chunk_bw.bw_chunk_dq_kernel``) in Gluon for Hopper,
warp-specialized.

Same inputs and outputs as ``launch_bw_dq``: per program ``BQ`` queries of one chunk and the whole q/k head dim (at
most 256), so ``dh v^T``, which contracts over the value head dim (512 at 7B), is formed once per key tile. Every
streamed operand is a ``PW x PW`` piece (64 x 64), so that one ring of equal buffers carries all of them:

- a 1-warp load partition brings the query tile and the ``dh`` rows (in ``PW``-wide pieces) once, then through a
  ring of ``STAGES`` buffers the chunk state's pieces ``C_c[j, p]`` (``j`` over the q/k head dim, ``p`` over the
  value head dim), then for each key tile up to the diagonal its value pieces and its key pieces;
- one consumer (4 warps, or 8 that split every product's columns: ``acc_layout``) holds ``dq`` as ``NK = DK / PW``
  accumulators of ``BQ x PW``, one per key piece (a product cannot accumulate into a column slice of another's
  accumulator): the inter-chunk term ``dh C_c^T`` piece by piece, then per key tile ``dp = dh v^T`` over the value pieces, ``a`` = the gate matrix times ``dp / den + dz``
  in registers, and per key piece ``scores += q_j k_j^T`` and ``dq_j += a k_j`` (``a`` from registers).

``q . dq`` for the gate gradients is summed in fp32 from the inter term and from ``a`` and the scores without the
diagonal, as in the Triton kernel (one head-dim tile: ``qdq`` is ``(1, BH, SP)``).

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

PIECE = 64  # rows and columns of every streamed piece (keys, values, state), and of each dq accumulator


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
def _load_partition(Q_D, DH_D, K_D, V_D, C_D, q_smem, dh_bufs, ring, fix_ready, ready, empty, bh, row0, c_row,
                    kv_row0, n_blocks):  # fmt: skip
    """The producer (module docstring): the query tile and the ``NV`` ``dh`` pieces once, then ring loads in the
    consumer's order: ``NK x NV`` state pieces, then per key tile ``NV`` value pieces and ``NK`` key pieces."""
    NV: gl.constexpr = dh_bufs.type.shape[0]
    PW: gl.constexpr = ring.type.shape[2]
    NK: gl.constexpr = Q_D.block_type.shape[2] // PW
    mbarrier.expect(fix_ready, Q_D.block_type.nbytes + NV * DH_D.block_type.nbytes)
    compat.tma_load(Q_D, [bh, row0, 0], fix_ready, q_smem)
    for p in gl.static_range(NV):
        compat.tma_load(DH_D, [bh, row0, p * PW], fix_ready, dh_bufs.index(p))
    for j in gl.static_range(NK):
        for p in gl.static_range(NV):
            _ring_load(C_D, c_row, j * PW, p * PW, ring, ready, empty, j * NV + p)
    for b in range(n_blocks):
        u0 = NK * NV + b * (NV + NK)
        for p in gl.static_range(NV):
            _ring_load(V_D, bh, kv_row0 + b * PW, p * PW, ring, ready, empty, u0 + p)
        for j in gl.static_range(NK):
            _ring_load(K_D, bh, kv_row0 + b * PW, j * PW, ring, ready, empty, u0 + NV + j)


@gluon.jit
def _ring_wait(ring, ready, u):
    """Stage ``u % STAGES`` of the ring once load ``u`` has landed, as a ``PW x PW`` tile."""
    stages: gl.constexpr = ring.type.shape[0]
    PW: gl.constexpr = ring.type.shape[2]
    mbarrier.wait(ready.index(u % stages), (u // stages) & 1)
    return ring.index(u % stages).reshape([PW, PW])


@gluon.jit
def _dh_products(dh_bufs, ring, ready, empty, acc, u0, ASYNC: gl.constexpr):
    """``acc + sum_p dh[:, p] piece(u0 + p)^T`` over the ``NV`` value pieces (ring loads ``u0 ..``), each ring stage
    handed back once its product has completed. ``ASYNC``: each product is issued before the previous one is waited
    for, so one runs while the next piece's load is awaited."""
    stages: gl.constexpr = ring.type.shape[0]
    NV: gl.constexpr = dh_bufs.type.shape[0]
    BQ: gl.constexpr = dh_bufs.type.shape[2]
    PW: gl.constexpr = ring.type.shape[2]
    for p in gl.static_range(NV):
        piece = _ring_wait(ring, ready, u0 + p)
        dh_p = dh_bufs.index(p).reshape([BQ, PW])
        if ASYNC:
            acc = warpgroup_mma(dh_p, piece.permute((1, 0)), acc, is_async=True)
            if p > 0:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                mbarrier.arrive(empty.index((u0 + p - 1) % stages), count=1)
        else:
            acc = warpgroup_mma(dh_p, piece.permute((1, 0)), acc)
            mbarrier.arrive(empty.index((u0 + p) % stages), count=1)
    if ASYNC:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((u0 + NV - 1) % stages), count=1)
    return acc


@gluon.jit
def _compute_partition(q_smem, dh_bufs, ring, out_bufs, fix_ready, ready, empty, DQ_D, QDQ, GATE_B, GATE_I, INV_DEN,
                       DZ, N_ST, M_ST, M_TOK, bh, st, row0, kv_row0, n_blocks, SP, DHQK, qk_scale, EXP: gl.constexpr,
                       ASYNC: gl.constexpr, o_layout: gl.constexpr):  # fmt: skip
    """The consumer warpgroup (module docstring); every product completes before its stage is handed back."""
    stages: gl.constexpr = ring.type.shape[0]
    NV: gl.constexpr = dh_bufs.type.shape[0]
    BQ: gl.constexpr = q_smem.type.shape[1]
    DK: gl.constexpr = q_smem.type.shape[2]
    PW: gl.constexpr = ring.type.shape[2]
    NK: gl.constexpr = DK // PW
    dtype: gl.constexpr = q_smem.dtype
    rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    cols: gl.constexpr = gl.SliceLayout(0, o_layout)
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)

    t_q = row0 + gl.arange(0, BQ, layout=rows)
    b_q = gl.load(GATE_B + bh * SP + t_q)
    inv_den = gl.load(INV_DEN + bh * SP + t_q)
    dz = gl.load(DZ + bh * SP + t_q)
    if EXP:
        m_q = gl.load(M_TOK + bh * SP + t_q)
        w_inter = gl.exp(b_q + gl.load(M_ST + st) - m_q)
    else:
        m_q = gl.zeros([BQ], gl.float32, rows)
        w_inter = gl.exp(b_q)
    mbarrier.wait(fix_ready, 0)
    q2 = q_smem.reshape([BQ, DK])

    # The inter-chunk term, one accumulator (key piece) at a time: dh C_c^T / den + dz n_c, weighted per query.
    zero = gl.zeros([BQ, PW], gl.float32, o_layout)
    acc0, acc1, acc2, acc3 = zero, zero, zero, zero
    qdq = gl.zeros([BQ], gl.float32, rows)
    for j in gl.static_range(NK):
        acc = _dh_products(dh_bufs, ring, ready, empty, zero, j * NV, ASYNC)  # C_c[j, p]: PW q/k rows x PW values
        offs = j * PW + gl.arange(0, PW, layout=cols)
        n_c = gl.load(N_ST + st * DHQK + offs, mask=offs < DHQK, other=0.0)
        acc = (acc * inv_den[:, None] + dz[:, None] * n_c[None, :]) * w_inter[:, None]
        qdq += gl.sum(q2.slice(j * PW, PW, dim=1).load(o_layout).to(gl.float32) * acc, axis=1)
        acc0, acc1, acc2, acc3 = _put(j, acc0, acc1, acc2, acc3, acc)

    # The key tiles up to the diagonal.
    row = (b_q - m_q) * LOG2E
    for b in range(n_blocks):
        u0 = NK * NV + b * (NV + NK)
        dp = _dh_products(dh_bufs, ring, ready, empty, zero, u0, ASYNC)
        t_s = kv_row0 + b * PW + gl.arange(0, PW, layout=cols)
        col = (gl.load(GATE_I + bh * SP + t_s) - gl.load(GATE_B + bh * SP + t_s)) * LOG2E
        gates = gl.exp2(gl.where(t_s[None, :] <= t_q[:, None], row[:, None] + col[None, :], -float("inf")))
        a = gates * (dp * inv_den[:, None] + dz[:, None])
        a_op = gl.convert_layout(a.to(dtype), a_layout)
        scores = zero
        for j in gl.static_range(NK):
            k_piece = _ring_wait(ring, ready, u0 + NV + j)  # keys x PW columns of the q/k head dim
            scores = warpgroup_mma(q2.slice(j * PW, PW, dim=1), k_piece.permute((1, 0)), scores)
            dq_j = warpgroup_mma(a_op, k_piece, _pick(j, acc0, acc1, acc2, acc3))
            acc0, acc1, acc2, acc3 = _put(j, acc0, acc1, acc2, acc3, dq_j)
            mbarrier.arrive(empty.index((u0 + NV + j) % stages), count=1)
        qdq += gl.sum(gl.where(t_s[None, :] < t_q[:, None], a * scores, 0.0), axis=1)

    # dq through the dh buffers (their last reads are done) and TMA; q . dq as the Triton kernel's one tile.
    for j in gl.static_range(NK):
        out_bufs.index(j).reshape([BQ, PW]).store((_pick(j, acc0, acc1, acc2, acc3) * qk_scale).to(DQ_D.dtype))
    fence_async_shared()
    for j in gl.static_range(NK):
        compat.tma_store(DQ_D, [bh, row0, j * PW], out_bufs.index(j))
    tma.store_wait(pendings=0)
    gl.store(QDQ + bh * SP + t_q, qdq * qk_scale)


@gluon.jit
def bw_dq_kernel(
    Q_D,
    DH_D,
    K_D,
    V_D,
    C_D,
    DQ_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    N_ST,
    M_ST,
    M_TOK,
    QDQ,
    SP,
    NC,
    DHQK,
    qk_scale,
    L: gl.constexpr,
    EXP: gl.constexpr,
    NV: gl.constexpr,
    STAGES: gl.constexpr,
    ASYNC: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Grid ``(NC * L / BQ, BH, 1)``. Descriptors over ``(heads, rows, cols)`` with blocks ``[1, rows, cols]``: ``Q_D``
    (BQ x DK, ``DK`` the padded q/k head dim), ``DH_D`` and ``DQ_D`` (BQ x PW), ``K_D`` and ``V_D`` (PW x PW), ``C_D``
    (PW x PW over the ``BH * NC`` chunk states); ``NV = cdiv(DHHV, PW)`` value pieces; ``ASYNC``: ``_dh_products``'."""
    BQ: gl.constexpr = Q_D.block_type.shape[1]
    DK: gl.constexpr = Q_D.block_type.shape[2]
    PW: gl.constexpr = K_D.block_type.shape[2]
    NK: gl.constexpr = DK // PW
    o_layout: gl.constexpr = acc_layout(num_warps, PW)
    pid_cq = gl.program_id(0)
    bh = gl.program_id(1)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    row0 = c * L + q_start
    n_blocks = gl.cdiv(q_start + BQ, PW)

    q_smem = gl.allocate_shared_memory(Q_D.dtype, [1, BQ, DK], Q_D.layout)
    dh_bufs = gl.allocate_shared_memory(DH_D.dtype, [NV, 1, BQ, PW], DH_D.layout)
    ring = gl.allocate_shared_memory(K_D.dtype, [STAGES, 1, PW, PW], K_D.layout)
    if NV >= NK:
        out_bufs = dh_bufs  # dq's pieces have dh's block shape and layout, and go out after dh's last read
    else:
        out_bufs = gl.allocate_shared_memory(DQ_D.dtype, [NK, 1, BQ, PW], DQ_D.layout)
    fix_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    init_ring(fix_ready, ready, empty, 1)

    gl.warp_specialize(
        [
            (
                _compute_partition,
                (q_smem, dh_bufs, ring, out_bufs, fix_ready, ready, empty, DQ_D, QDQ, GATE_B, GATE_I, INV_DEN, DZ,
                 N_ST, M_ST, M_TOK, bh, bh * (NC + 1) + c, row0, c * L, n_blocks, SP, DHQK, qk_scale, EXP, ASYNC,
                 o_layout),
            ),
            (
                _load_partition,
                (Q_D, DH_D, K_D, V_D, C_D, q_smem, dh_bufs, ring, fix_ready, ready, empty, bh, row0, bh * NC + c,
                 c * L, n_blocks),
            ),
        ],
        [LOAD_WARPS],
        [LOAD_REGS],
    )  # fmt: skip
    invalidate_ring(fix_ready, ready, empty)


def check(q: Any, chunk_size: int, bq: int) -> None:
    """``ValueError`` naming what the kernel cannot take: 32-bit inputs, a q/k head dim over 256 or (padded) below
    ``PIECE``, a ``BQ`` that is not a multiple of 64 dividing the chunk, a chunk that is not a multiple of ``PIECE``."""
    import torch

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the Gluon bw_dq takes float16 or bfloat16 inputs; got {q.dtype}")
    if not PIECE // 2 < q.shape[-1] <= MAX_HEAD_DIM_QK:
        raise ValueError(
            f"the Gluon bw_dq takes a q/k head dim from {PIECE // 2 + 1} to {MAX_HEAD_DIM_QK}; got {q.shape[-1]}"
        )
    if bq % 64 or chunk_size % bq or chunk_size % PIECE:
        raise ValueError(
            f"BQ (a multiple of 64) and the key tile ({PIECE}) must divide the chunk size {chunk_size}; got BQ={bq}"
        )


def launch_args(
    q: Any,
    k: Any,
    v: Any,
    dh: Any,
    gate_b: Any,
    gate_i: Any,
    inv_den: Any,
    dz: Any,
    c_st: Any,
    n_st: Any,
    m_st: Any,
    m_tok: Any,
    dq: Any,
    chunk_size: int,
    exp: bool,
    bq: int = 64,
    stages: int = 6,
    num_warps: int = 4,
    async_mma: bool = False,
) -> tuple[Any, tuple[int, int, int], dict[str, Any], dict[str, Any]]:
    """What ``launch_bw_dq`` launches: the kernel, its grid, its runtime arguments (``QDQ`` a new fp32 ``(1, BH,
    SP)`` tensor) and its constexprs, by name. ``stages``: ring buffers of ``PIECE x PIECE`` (8 KiB each in 16 bits);
    ``async_mma``: the ``dh`` products keep one wgmma in flight (``_dh_products``); ``num_warps`` 4 or 8 (8: two
    warpgroups split every product's columns, ``acc_layout``).
    ``ValueError`` from ``check``."""
    import torch

    check(q, chunk_size, bq)
    if num_warps not in (4, 8):
        raise ValueError(f"num_warps is 4 (one warpgroup) or 8 (two splitting the columns); got {num_warps}")
    dhqk, dhhv = q.shape[-1], v.shape[-1]
    dk = triton.next_power_of_2(dhqk)
    bh, nc = m_st.shape[0], m_st.shape[1] - 1
    sp = nc * chunk_size
    args = {
        "Q_D": head_tiles(q, bq, dk),
        "DH_D": head_tiles(dh, bq, PIECE),
        "K_D": head_tiles(k, PIECE, PIECE),
        "V_D": head_tiles(v, PIECE, PIECE),
        "C_D": head_tiles(c_st, PIECE, PIECE),
        "DQ_D": head_tiles(dq, bq, PIECE),
        "GATE_B": gate_b,
        "GATE_I": gate_i,
        "INV_DEN": inv_den,
        "DZ": dz,
        "N_ST": n_st,
        "M_ST": m_st,
        "M_TOK": m_tok,
        "QDQ": torch.empty(1, bh, sp, dtype=torch.float32, device=q.device),
        "SP": sp,
        "NC": nc,
        "DHQK": dhqk,
        "qk_scale": dhqk**-0.5,
    }
    constexprs = {
        "L": chunk_size,
        "EXP": exp,
        "NV": triton.cdiv(dhhv, PIECE),
        "STAGES": stages,
        "ASYNC": async_mma,
        "num_warps": num_warps,
    }
    return bw_dq_kernel, (nc * (chunk_size // bq), bh, 1), args, constexprs


def launch_bw_dq(*tensors: Any, **options: Any) -> Any:
    """As ``kernels.mlstm.chunk_bw.launch_bw_dq`` (same tensors and order, then ``chunk_size, exp``): writes ``dq``,
    returns the fp32 ``q . dq`` sums ``qdq (1, BH, SP)``. Options: ``launch_args``'. CPU tensors run through
    ``kernels.gluon.simulator`` (results, not timings)."""
    kernel, grid, args, constexprs = launch_args(*tensors, **options)
    intra_chunk.launch(kernel, grid, args, constexprs, tensors[0].device)
    return args["QDQ"]
