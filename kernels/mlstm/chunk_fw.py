"""TFLA forward kernels for the mLSTM (both variants) and their launchers; tiles move through TMA descriptors.

Layout shared by all kernels (``BH = B * NH``; ``SP = NC * L`` is S padded to whole chunks):
``q, k: (BH, S, DHQK)``, ``v, h: (BH, S, DHHV)`` in the input dtype; fp32 gate arrays ``gate_b (BH, SP)``
(``logsigmoid(f)`` summed inside each chunk, inclusive) and ``gate_i (BH, SP)`` (log input gate, ``-inf`` on
padding); chunk states ``C (BH, NC, DHQK, DHHV)`` in the state dtype (the input dtype for 16-bit inputs:
the kernels feed them to ``tl.dot`` in that dtype), fp32 ``n (BH, NC+1, DHQK)`` and ``m (BH, NC+1)``, where
index ``c`` is the state before chunk ``c`` (the last state ``C_NC`` goes to its own fp32 array); per-token fp32
``m_tok, z_tok (BH, SP)`` kept for the backward.
``EXP`` selects mLSTMexp (max-state stabilizer); otherwise mLSTMsig (``m = 0``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunk_common import LOG2E, gate_matrix, head_dim_products, operand_once
from kernels.mlstm.launch import dot_precision, head_tiles
from kernels.mlstm.tiles import KernelTiles, slice_args


@triton.jit
def _add_token_slice(
    C,
    n,
    K_D,
    V_D,
    GATE_B,
    GATE_I,
    bh,
    SP,
    t0,
    g_minus_m,
    k0,
    v0,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """One ``BL``-token slice (from token ``t0``) of a chunk added to the state tile: ``C += (k w)^T v``,
    ``n += sum(k w)`` with ``w_t = exp(g - b_t + i_t - m_new)`` (``g_minus_m = g - m_new``). Returns ``C, n``."""
    t = t0 + tl.arange(0, BL)
    w = tl.exp(g_minus_m - tl.load(GATE_B + bh * SP + t) + tl.load(GATE_I + bh * SP + t))
    k_tile = K_D.load([bh, t0, k0]).reshape(BL, BK)
    v_tile = V_D.load([bh, t0, v0]).reshape(BL, BV)
    kw = k_tile.to(tl.float32) * w[:, None]
    C += tl.dot(tl.trans(kw.to(K_D.dtype)), v_tile, input_precision=DOT_PREC)
    n += tl.sum(kw, axis=0)
    return C, n


@triton.jit
def _enter_chunk(
    C,
    n,
    m,
    C_D,
    N_ST,
    M_ST,
    GATE_B,
    GATE_I,
    bh,
    c,
    SP,
    NC,
    DHQK,
    k0,
    v0,
    offs_k,
    mask_k,
    holds_n,
    holds_m,
    L: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
):
    """Entering chunk ``c``: stores the state before it (``n`` where ``holds_n``, ``m`` where ``holds_m``),
    moves the stabilizer to the chunk's ``m_new`` and decays ``C, n`` over the chunk. Returns
    ``C, n, m_new, g - m_new`` (``g`` the chunk's summed log forget gate)."""
    st = bh * (NC + 1) + c
    C_D.store([bh * NC + c, k0, v0], C.to(C_D.dtype).reshape(1, BK, BV))
    if holds_n:
        tl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
        if holds_m:
            tl.store(M_ST + st, m)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    m_new = tl.full([], 0.0, tl.float32)
    if EXP:
        offs_t = bh * SP + c * L + tl.arange(0, L)
        m_new = tl.maximum(g + m, tl.max(g - tl.load(GATE_B + offs_t) + tl.load(GATE_I + offs_t), axis=0))
    decay = tl.exp(g + m - m_new)
    return C * decay, n * decay, m_new, g - m_new


@triton.jit
def fw_chunk_states_kernel(
    K_D,
    V_D,
    GATE_B,
    GATE_I,
    C0,
    N0,
    M0,
    C_D,
    N_ST,
    M_ST,
    C_LAST,
    SP,
    NC,
    DHQK,
    DHHV,
    L: tl.constexpr,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    HAS_INIT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """Inter-chunk recurrence: materialize the states every ``L`` tokens.

    Grid ``(cdiv(DHQK, BK), cdiv(DHHV, BV), BH)``. A program owns a ``BK x BV`` tile of ``C`` (and the
    ``BK`` slice of ``n``) for one head, walks the chunks in order and reads each chunk's ``k`` and ``v``
    in ``BL``-token slices through the TMA descriptors ``K_D [BH, S, DHQK]`` (block ``[1, BL, BK]``) and
    ``V_D [BH, S, DHHV]`` (``[1, BL, BV]``); tokens past ``S`` read as zeros. Writes the states through
    ``C_D [BH * NC, DHQK, DHHV]`` (block ``[1, BK, BV]``, the state dtype) at ``0..NC-1``, ``N_ST, M_ST`` at
    ``0..NC`` and the last state to ``C_LAST (BH, DHQK, DHHV)`` in fp32. The slices of all chunks form one
    loop, which Triton software-pipelines: the next slices' TMA loads run during this slice's product and
    across the chunk boundaries, with ``num_stages`` slices of ``k, v`` in shared memory (a loop per chunk
    drained its pipeline at each chunk, docs/performance.md v17).
    """
    NS: tl.constexpr = L // BL  # slices a chunk
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c_tile_off = offs_k[:, None] * DHHV + offs_v[None, :]
    if HAS_INIT:
        C = tl.load(C0 + bh * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0).to(tl.float32)
        n = tl.load(N0 + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
    m = tl.full([], 0.0, tl.float32)
    if EXP and HAS_INIT:
        m = tl.load(M0 + bh).to(tl.float32)
    k0, v0 = pid_k * BK, pid_v * BV
    g_minus_m = tl.full([], 0.0, tl.float32)
    for i in range(NC * NS):  # the slices of all chunks; one flat loop, pipelined across chunk boundaries
        c = i // NS
        if i % NS == 0:  # entering chunk c (with NS == 1 the compiler drops the test)
            C, n, m, g_minus_m = _enter_chunk(
                C, n, m, C_D, N_ST, M_ST, GATE_B, GATE_I, bh, c, SP, NC, DHQK, k0, v0, offs_k, mask_k,
                pid_v == 0, pid_k == 0, L, BK, BV, EXP,
            )  # fmt: skip
        C, n = _add_token_slice(
            C, n, K_D, V_D, GATE_B, GATE_I, bh, SP, c * L + (i % NS) * BL, g_minus_m, k0, v0, BL, BK, BV, DOT_PREC
        )
    st = bh * (NC + 1) + NC
    tl.store(C_LAST + bh * DHQK * DHHV + c_tile_off, C, mask=mask_kv)
    if pid_v == 0:
        tl.store(N_ST + st * DHQK + offs_k, n, mask=mask_k)
        if pid_k == 0:
            tl.store(M_ST + st, m)


@triton.jit
def fw_chunk_output_kernel(
    Q_D,
    QS_D,
    K_D,
    V_D,
    GATE_B,
    GATE_I,
    C_D,
    N_ST,
    M_ST,
    H_D,
    M_TOK,
    Z_TOK,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    eps,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BS: tl.constexpr,
    EXP: tl.constexpr,
    NORMALIZE: tl.constexpr,
    DOT_PREC: tl.constexpr,
    STATE_STAGES: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """Intra-chunk parallel part, tiled a second time (TFLA): the chunk size is not bounded by SRAM.

    Grid ``(cdiv(DHHV, BV), NC * L / BQ, BH)``. A program owns ``BQ`` queries of one chunk and a ``BV``
    slice of the output: it adds the inter-chunk term ``q C_c`` (looping over ``BS`` slices of the head
    dim, through ``QS_D`` (block ``[1, BQ, BS]``) and ``C_D``), then loops over the ``BKV`` key blocks up to the
    diagonal.
    ``M_TOK`` (mLSTMexp) holds each query's stabilizer, computed beforehand by ``stabilizer_per_token``, so
    the key loop needs no running max and no rescaling. Tiles move through TMA descriptors: ``Q_D, K_D
    [BH, S, DHQK]`` (blocks ``[1, BQ, BK]``, ``[1, BKV, BK]``), ``V_D, H_D [BH, S, DHHV]`` (``[1, BKV, BV]``,
    ``[1, BQ, BV]``) and the states ``C_D [BH * NC, DHQK, DHHV]`` (``[1, BS, BV]``); tokens past ``S`` read as
    zeros and are not written. Writes ``H``; the ``pid 0`` slice also writes ``Z_TOK`` (the normalizer before
    abs). ``STATE_STAGES``: pipeline stages of the loop that loads the states. ``NSLICE = cdiv(DHQK, BK)``;
    ``UNROLL`` unrolls the ``q k^T`` slices (``head_dim_products``) so that the key loop is pipelined, and with
    one slice loads the query tile once.
    """
    pid_v, pid_cq, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    t_q = c * L + q_start + tl.arange(0, BQ)
    v0 = pid_v * BV
    dtype = Q_D.dtype
    b_q = tl.load(GATE_B + bh * SP + t_q)
    st = bh * (NC + 1) + c

    acc = tl.zeros((BQ, BV), dtype=tl.float32)
    z = tl.zeros((BQ,), dtype=tl.float32)
    for kk in tl.range(0, DHQK, BS, num_stages=STATE_STAGES):
        offs_k = kk + tl.arange(0, BS)
        q_tile = QS_D.load([bh, c * L + q_start, kk]).reshape(BQ, BS)
        c_tile = C_D.load([bh * NC + c, kk, v0]).reshape(BS, BV)
        acc += tl.dot(q_tile, c_tile.to(dtype), input_precision=DOT_PREC)
        n_tile = tl.load(N_ST + st * DHQK + offs_k, mask=offs_k < DHQK, other=0.0)
        z += tl.sum(q_tile.to(tl.float32) * n_tile[None, :], axis=1)
    if EXP:
        m_run = tl.load(M_TOK + bh * SP + t_q)
        w_inter = qk_scale * tl.exp(b_q + tl.load(M_ST + st) - m_run)
    else:
        m_run = tl.zeros((BQ,), dtype=tl.float32)
        w_inter = qk_scale * tl.exp(b_q)
    acc = acc * w_inter[:, None]
    z = z * w_inter

    q_once = operand_once(Q_D, c * L + q_start, bh, BQ, BK, NSLICE, UNROLL)
    row = (b_q - m_run) * LOG2E + tl.log2(qk_scale)
    for s0 in range(0, q_start + BQ, BKV):
        t_s = c * L + s0 + tl.arange(0, BKV)
        scores = head_dim_products(
            Q_D, c * L + q_start, q_once, K_D, c * L + s0, bh, DHQK, BQ, BKV, BK, NSLICE, UNROLL, DOT_PREC
        )
        col = (tl.load(GATE_I + bh * SP + t_s) - tl.load(GATE_B + bh * SP + t_s)) * LOG2E
        p = gate_matrix(row, col, t_s[None, :] <= t_q[:, None]) * scores
        z += tl.sum(p, axis=1)
        v_tile = V_D.load([bh, c * L + s0, v0]).reshape(BKV, BV)
        acc += tl.dot(p.to(dtype), v_tile, input_precision=DOT_PREC)

    if NORMALIZE:
        acc = acc / (tl.maximum(tl.abs(z), tl.exp(-m_run)) + eps)[:, None]
    H_D.store([bh, c * L + q_start, v0], acc.to(H_D.dtype).reshape(1, BQ, BV))
    if pid_v == 0:
        tl.store(Z_TOK + bh * SP + t_q, z)


def launch_fw_states(
    k: torch.Tensor,
    v: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    c_last: torch.Tensor,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> None:
    """``fw_chunk_states_kernel``: fills ``c_st (BH, NC, DHQK, DHHV)`` (its dtype is the state dtype), fp32
    ``n_st (BH, NC+1, DHQK)``, ``m_st (BH, NC+1)`` and ``c_last (BH, DHQK, DHHV)`` from contiguous ``k, v``
    (``BH`` heads of ``S`` tokens, any leading shape), ``gate_b, gate_i (BH, SP)`` and the optional initial
    states ``(C0, n0, m0)``."""
    DHQK, DHHV = k.shape[-1], v.shape[-1]
    BH, NC = c_st.shape[:2]
    fw_chunk_states_kernel[(triton.cdiv(DHQK, t.BK), triton.cdiv(DHHV, t.BV), BH)](
        head_tiles(k, t.BQ, t.BK),
        head_tiles(v, t.BQ, t.BV),
        gate_b,
        gate_i,
        *(init or (c_last, n_st, m_st)),
        head_tiles(c_st, t.BK, t.BV),
        n_st,
        m_st,
        c_last,
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        **fw_states_constexprs(t, chunk_size, k.dtype, exp, init is not None),
    )


def fw_states_constexprs(
    t: KernelTiles, chunk_size: int, dtype: torch.dtype, exp: bool, has_init: bool
) -> dict[str, object]:
    """The compile-time arguments of a ``fw_chunk_states_kernel`` launch, warps and stages included."""
    return dict(
        L=chunk_size, BL=t.BQ, BK=t.BK, BV=t.BV, EXP=exp, HAS_INIT=has_init, DOT_PREC=dot_precision(dtype), **t.launch()
    )


def launch_fw_output(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    h: torch.Tensor,
    m_tok: torch.Tensor,
    z_tok: torch.Tensor,
    chunk_size: int,
    exp: bool,
    normalize: bool,
    eps: float,
    t: KernelTiles,
) -> None:
    """``fw_chunk_output_kernel``: writes ``h`` (shaped like ``v``) and fp32 ``z_tok (BH, SP)`` from the
    chunk states of ``launch_fw_states`` and mLSTMexp's per-token stabilizer ``m_tok (BH, SP)``."""
    DHQK, DHHV = q.shape[-1], v.shape[-1]
    BH, NC = c_st.shape[:2]
    slices = slice_args("fw_output", t, DHQK, DHHV, q.element_size())
    bs = slices["BS"]
    fw_chunk_output_kernel[(triton.cdiv(DHHV, t.BV), NC * (chunk_size // t.BQ), BH)](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(q, t.BQ, bs),
        head_tiles(k, t.BKV, t.BK),
        head_tiles(v, t.BKV, t.BV),
        gate_b,
        gate_i,
        head_tiles(c_st, bs, t.BV),
        n_st,
        m_st,
        head_tiles(h, t.BQ, t.BV),
        m_tok,
        z_tok,
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        eps,
        L=chunk_size,
        BQ=t.BQ,
        BKV=t.BKV,
        BK=t.BK,
        BV=t.BV,
        EXP=exp,
        NORMALIZE=normalize,
        DOT_PREC=dot_precision(q.dtype),
        STATE_STAGES=t.state_loop_stages,
        **slices,
        **t.launch(),
    )
