"""TFLA backward kernels for the mLSTM (layout as in ``chunk_fw``) and their launchers.

The output gradient enters as ``dh (BH, S, DHHV)`` with two per-token fp32 arrays prepared by the
wrapper: ``inv_den (BH, SP)`` (so that ``dN_t = dh_t * inv_den_t`` is the gradient of the numerator)
and ``dz (BH, SP)`` (the gradient of the normalizer ``Z_t``); both are 0 on padding. The stabilizer
``m`` carries no gradient. Gate gradients are formed afterwards from ``q.dq`` and ``k.dk``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunk_common import LOG2E, gate_matrix, head_dim_products, operand_once
from kernels.mlstm.launch import dot_precision, head_tiles, interpreting
from kernels.mlstm.tiles import KernelTiles, reads_state_ahead, slice_args, tile_args


@triton.jit
def _add_grad_slice(
    dC,
    dn,
    Q_D,
    DH_D,
    GATE_B,
    INV_DEN,
    DZ,
    M_TOK,
    bh,
    SP,
    t0,
    m_c,
    k0,
    v0,
    qk_scale,
    holds_dn,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """One ``BL``-token slice (from token ``t0``) of a chunk added to the state-gradient tile:
    ``dC += (q w)^T (dh / den)`` and, where ``holds_dn``, ``dn += sum(q w dz)`` with
    ``w_t = exp(b_t + m_c - m_t) * qk_scale``. Returns ``dC, dn``."""
    t = t0 + tl.arange(0, BL)
    dtype = Q_D.dtype
    m_t = tl.load(M_TOK + bh * SP + t) if EXP else 0.0
    w = tl.exp(tl.load(GATE_B + bh * SP + t) + m_c - m_t) * qk_scale
    q_tile = Q_D.load([bh, t0, k0]).reshape(BL, BK)
    dh_tile = DH_D.load([bh, t0, v0]).reshape(BL, BV)
    qw = q_tile.to(tl.float32) * w[:, None]
    inv_den = tl.load(INV_DEN + bh * SP + t)
    if dtype == tl.float16:
        # fp16's exponent range: a forgotten state's weights (e^-30 and less) and the inverse normalizer of a
        # token whose stabilizer is far below 0 (e^-12 and less) would flush to 0 or to subnormals in the
        # operands. Both per-token factors go onto q, scaled to the slice's largest product and scaled back in
        # fp32; dh enters as it is.
        a = w * inv_den
        a_max = tl.max(a, axis=0)
        a_max = tl.where(a_max > 0, a_max, 1.0)
        qa = q_tile.to(tl.float32) * (a / a_max)[:, None]
        dC += tl.dot(tl.trans(qa.to(dtype)), dh_tile, input_precision=DOT_PREC) * a_max
    else:
        qa = qw * inv_den[:, None]
        dC += tl.dot(tl.trans(qa.to(dtype)), dh_tile, input_precision=DOT_PREC)
    if holds_dn:
        dn += tl.sum(qw * tl.load(DZ + bh * SP + t)[:, None], axis=0)
    return dC, dn


@triton.jit
def _state_dot(dC, c_tile, state_dtype: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, STATE_AHEAD: tl.constexpr,
               COMPILED: tl.constexpr):  # fmt: skip
    """``sum(dC * C)`` over the tile. With ``STATE_AHEAD``, ``c_tile (BK, BV // 2)`` holds the 16-bit state
    (``state_dtype``) as int32 words, element ``2j`` in the low half, loaded a chunk before: compiled, they
    pass an opaque move first, so that nothing that waits for the load moves up to it. (Loaded in the state
    dtype, LLVM repacks the registers for the layout conversion right after the load, in the previous
    iteration, and the wait is back; docs/performance.md v17.)"""
    if STATE_AHEAD:
        words = c_tile
        if COMPILED:  # the interpreter has no inline assembly
            words = tl.inline_asm_elementwise(
                "mov.b32 $0, $1;", "=r,r", [c_tile], dtype=tl.int32, is_pure=False, pack=1
            )
        c_even = (words & 65535).to(tl.int16).to(state_dtype, bitcast=True).to(tl.float32)
        c_odd = (words >> 16).to(tl.int16).to(state_dtype, bitcast=True).to(tl.float32)
        d_even, d_odd = tl.split(tl.reshape(dC, (BK, BV // 2, 2)))
        return tl.sum(tl.sum(d_even * c_even + d_odd * c_odd, axis=1), axis=0)
    else:
        return tl.sum(tl.sum(dC * c_tile.to(tl.float32), axis=1), axis=0)


@triton.jit
def _load_chunk_operands(C_ST, C_D, N_ST, M_ST, GATE_B, bh, c, SP, NC, DHQK, DHHV, k0, v0, offs_k, mask_k,
                         L: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         EXP: tl.constexpr, STATE_AHEAD: tl.constexpr):  # fmt: skip
    """What entering chunk ``c`` reads (``_enter_grad_chunk``): the forward's state tile ``C_c`` (state dtype),
    ``n_c``, the chunk's summed log forget gate and, for ``EXP``, the stabilizers before and after the chunk.
    ``STATE_AHEAD`` (called a chunk ahead): plain loads of ``C_ST``, whose latency then hides behind the
    previous chunk's products (Triton pipelines only the loads that feed a dot); else the tile comes through
    the TMA descriptor ``C_D``, which is waited for at once."""
    st = bh * (NC + 1) + c + 1
    if STATE_AHEAD:  # bf16 pairs as int32 words (see _state_dot)
        words = v0 // 2 + tl.arange(0, BV // 2)
        pairs = C_ST.to(tl.pointer_type(tl.int32)) + (bh * NC + c).to(tl.int64) * DHQK * (DHHV // 2)
        c_tile = tl.load(
            pairs + offs_k[:, None] * (DHHV // 2) + words[None, :],
            mask=mask_k[:, None] & (words < DHHV // 2)[None, :],
            other=0,
        )
    else:
        c_tile = C_D.load([bh * NC + c, k0, v0]).reshape(BK, BV)
    n_c = tl.load(N_ST + (st - 1) * DHQK + offs_k, mask=mask_k, other=0.0)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    if EXP:
        m_before, m_after = tl.load(M_ST + st - 1), tl.load(M_ST + st)
    else:
        m_before, m_after = tl.full([], 0.0, tl.float32), tl.full([], 0.0, tl.float32)
    return c_tile, n_c, g, m_before, m_after


@triton.jit
def _enter_grad_chunk(
    dC,
    dn,
    DC_D,
    DN_ST,
    x_part,
    c_tile,
    n_c,
    g,
    m_before,
    m_after,
    bh,
    c,
    NC,
    DHQK,
    k0,
    v0,
    offs_k,
    mask_k,
    holds_dn,
    BK: tl.constexpr,
    BV: tl.constexpr,
    STATE_AHEAD: tl.constexpr,
    COMPILED: tl.constexpr,
):
    """Entering chunk ``c`` (walking back) with its operands from ``_load_chunk_operands``: stores the
    gradient of the state after the chunk (``dn`` only where ``holds_dn``, the ``pid_v == 0`` programs),
    decays ``dC, dn`` over the chunk and writes the chunk's part of the forget-gate gradient to ``x_part + c``.
    Returns ``dC, dn``."""
    st = bh * (NC + 1) + c + 1
    DC_D.store([st, k0, v0], dC.to(DC_D.dtype).reshape(1, BK, BV))
    if holds_dn:
        tl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)
    decay = tl.exp(g + m_before - m_after)
    dC = dC * decay
    dn = dn * decay
    x_sum = _state_dot(dC, c_tile, DC_D.dtype, BK, BV, STATE_AHEAD, COMPILED)
    if holds_dn:
        x_sum += tl.sum(dn * n_c, axis=0)
    tl.store(x_part + c, x_sum)
    return dC, dn


@triton.jit
def bw_chunk_state_grads_kernel(
    Q_D,
    DH_D,
    GATE_B,
    INV_DEN,
    DZ,
    C_ST,
    C_D,
    N_ST,
    M_ST,
    M_TOK,
    DC_LAST,
    DN_LAST,
    DC_D,
    DN_ST,
    DC_FIRST,
    X_PART,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BL: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    EXP: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    DOT_PREC: tl.constexpr,
    STATE_AHEAD: tl.constexpr,
    COMPILED: tl.constexpr,
):
    """Reverse inter-chunk recurrence for the state gradients.

    Grid ``(cdiv(DHQK, BK), cdiv(DHHV, BV), BH)``. Reads ``q`` and ``dh`` in ``BL``-token slices through
    the TMA descriptors ``Q_D [BH, S, DHQK]`` (block ``[1, BL, BK]``) and ``DH_D [BH, S, DHHV]``
    (``[1, BL, BV]``), and the forward's states ``C_ST (BH, NC, DHQK, DHHV)``: a chunk ahead where
    ``STATE_AHEAD`` (``tiles.reads_state_ahead``), else through ``C_D [BH * NC, DHQK, DHHV]`` (``[1, BK, BV]``).
    Writes through ``DC_D [BH * (NC+1), DHQK, DHHV]`` (``[1, BK, BV]``, input dtype) at ``c = 1..NC`` the
    gradient of the state before chunk ``c`` from every later query and the last state; ``DN_ST`` (fp32)
    likewise, ``c = 0..NC``. The gradient of the initial state goes to ``DC_FIRST (BH, DHQK, DHHV)`` in fp32.
    ``X_PART (cdiv(DHQK, BK) * cdiv(DHHV, BV), BH, NC)`` gets this tile's part of
    ``<dC_{c+1}, a_c C_c> + <dn_{c+1}, a_c n_c>`` (``a_c`` the decay over chunk ``c``): the forget-gate
    gradient of every (query after chunk ``c``, key before it) pair, summed exactly in fp32.
    The slices of all chunks form one loop, which Triton software-pipelines: the next slices' TMA loads run
    during this slice's product and across the chunk boundaries (a loop per chunk drained its pipeline at
    each chunk, ``docs/performance.md`` v17).
    """
    NS: tl.constexpr = L // BL  # slices a chunk
    pid_k, pid_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_k = pid_k * BK + tl.arange(0, BK)
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_k, mask_v = offs_k < DHQK, offs_v < DHHV
    mask_kv = mask_k[:, None] & mask_v[None, :]
    c_tile_off = offs_k[:, None] * DHHV + offs_v[None, :]
    if HAS_DLAST:
        dC = tl.load(DC_LAST + bh * DHQK * DHHV + c_tile_off, mask=mask_kv, other=0.0).to(tl.float32)
        dn = tl.load(DN_LAST + bh * DHQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        dC = tl.zeros((BK, BV), dtype=tl.float32)
        dn = tl.zeros((BK,), dtype=tl.float32)
    k0, v0 = pid_k * BK, pid_v * BV
    x_part = X_PART + ((pid_k * tl.num_programs(1) + pid_v) * tl.num_programs(2) + bh) * NC
    # the operands of the first chunk entered (the last chunk); with STATE_AHEAD those of the next, a chunk ahead
    c_tile, n_c, g, m_c, m_after = _load_chunk_operands(
        C_ST, C_D, N_ST, M_ST, GATE_B, bh, NC - 1, SP, NC, DHQK, DHHV, k0, v0, offs_k, mask_k, L, BK, BV, EXP,
        STATE_AHEAD,
    )  # fmt: skip
    m_slices = m_c
    # dz's load feeds no dot, so Triton does not pipeline it: with STATE_AHEAD only the programs that keep dn
    # (pid_v == 0) load it; else every program does (a constant, no branch: the branch spilled at one slice a chunk)
    dz_here = pid_v == 0 if STATE_AHEAD else True
    for i in range(NC * NS):  # the slices from the last; one flat loop, pipelined across chunk boundaries
        c = NC - 1 - i // NS
        if i % NS == 0:  # entering chunk c (with NS == 1 the compiler drops the test)
            if not STATE_AHEAD:
                c_tile, n_c, g, m_c, m_after = _load_chunk_operands(
                    C_ST, C_D, N_ST, M_ST, GATE_B, bh, c, SP, NC, DHQK, DHHV, k0, v0, offs_k, mask_k, L, BK, BV,
                    EXP, STATE_AHEAD,
                )  # fmt: skip
            dC, dn = _enter_grad_chunk(
                dC, dn, DC_D, DN_ST, x_part, c_tile, n_c, g, m_c, m_after, bh, c, NC, DHQK, k0, v0, offs_k, mask_k,
                pid_v == 0, BK, BV, STATE_AHEAD, COMPILED,
            )  # fmt: skip
            m_slices = m_c
            if STATE_AHEAD:
                c_tile, n_c, g, m_c, m_after = _load_chunk_operands(
                    C_ST, C_D, N_ST, M_ST, GATE_B, bh, tl.maximum(c - 1, 0), SP, NC, DHQK, DHHV, k0, v0, offs_k,
                    mask_k, L, BK, BV, EXP, STATE_AHEAD,
                )  # fmt: skip
        dC, dn = _add_grad_slice(
            dC, dn, Q_D, DH_D, GATE_B, INV_DEN, DZ, M_TOK, bh, SP, c * L + (i % NS) * BL, m_slices, k0, v0,
            qk_scale, dz_here, BL, BK, BV, EXP, DOT_PREC,
        )  # fmt: skip
    st = bh * (NC + 1)
    tl.store(DC_FIRST + bh * DHQK * DHHV + c_tile_off, dC, mask=mask_kv)
    if pid_v == 0:
        tl.store(DN_ST + st * DHQK + offs_k, dn, mask=mask_k)


@triton.jit
def bw_chunk_dq_kernel(
    Q_D,
    K_D,
    V_D,
    DH_D,
    DHS_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    C_D,
    N_ST,
    M_ST,
    M_TOK,
    DQ_D,
    QDQ,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BS: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
    STATE_STAGES: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """``dq`` for ``BQ`` queries of one chunk and a ``BK`` slice of the head dim.

    Grid ``(cdiv(DHQK, BK), NC * L / BQ, BH)``. Inter term ``dN C_c^T + dz n_c``, then key blocks up to
    the diagonal: ``dq += (P * (dN v^T + dz)) k`` with ``P`` the gate matrix and ``dN = dh / den`` (the
    row scale is applied to ``dh v^T`` in fp32, built over ``BV`` slices).
    Also writes this slice's part of ``q . dq`` without the diagonal (``s == t``) terms to
    ``QDQ (cdiv(DHQK, BK), BH, SP)``; its intra-chunk part is summed in fp32 from the gate matrix and the
    slice's scores (not from the ``dq`` tile, whose operands are rounded to the input dtype), so that it
    cancels against the same sum of the ``dk`` kernel to fp32 accuracy in the forget-gate gradient.
    Tiles move through TMA descriptors ``Q_D, K_D, DQ_D [BH, S, DHQK]`` (blocks ``[1, BQ, BK]``,
    ``[1, BKV, BK]``, ``[1, BQ, BK]``), ``V_D, DH_D [BH, S, DHHV]`` (``[1, BKV, BV]``, ``[1, BQ, BV]``); the
    inter term loops over ``BS`` slices through ``DHS_D`` (``dh``, ``[1, BQ, BS]``) and ``C_D [BH * NC, DHQK,
    DHHV]`` (``[1, BK, BS]``). ``STATE_STAGES``: pipeline stages of the loop that loads
    the states. ``NSLICE = cdiv(DHHV, BV)``; ``UNROLL`` unrolls the ``dh v^T`` slices so that the key loop is
    pipelined (``head_dim_products``), and with one slice loads the ``dh`` tile once.
    """
    pid_k, pid_cq, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cq // (L // BQ)
    q_start = (pid_cq % (L // BQ)) * BQ
    t_q = c * L + q_start + tl.arange(0, BQ)
    q0, k0 = c * L + q_start, pid_k * BK
    offs_k = k0 + tl.arange(0, BK)
    dtype = Q_D.dtype
    st = bh * (NC + 1) + c
    b_q = tl.load(GATE_B + bh * SP + t_q)
    inv_den = tl.load(INV_DEN + bh * SP + t_q)
    dz = tl.load(DZ + bh * SP + t_q)
    if EXP:
        m_q = tl.load(M_TOK + bh * SP + t_q)
        w_inter = tl.exp(b_q + tl.load(M_ST + st) - m_q)
    else:
        m_q = tl.zeros((BQ,), dtype=tl.float32)
        w_inter = tl.exp(b_q)

    dq = tl.zeros((BQ, BK), dtype=tl.float32)
    for vv in tl.range(0, DHHV, BS, num_stages=STATE_STAGES):
        dh_tile = DHS_D.load([bh, q0, vv]).reshape(BQ, BS)
        c_tile = C_D.load([bh * NC + c, k0, vv]).reshape(BK, BS)
        dq += tl.dot(dh_tile, tl.trans(c_tile.to(dtype)), input_precision=DOT_PREC)
    n_tile = tl.load(N_ST + st * DHQK + offs_k, mask=offs_k < DHQK, other=0.0)
    dq = (dq * inv_den[:, None] + dz[:, None] * n_tile[None, :]) * w_inter[:, None]
    q_tile = Q_D.load([bh, q0, k0]).reshape(BQ, BK)
    qdq = tl.sum(q_tile.to(tl.float32) * dq, axis=1)

    dh_once = operand_once(DH_D, q0, bh, BQ, BV, NSLICE, UNROLL)
    row = (b_q - m_q) * LOG2E
    for s0 in range(0, q_start + BQ, BKV):
        t_s = c * L + s0 + tl.arange(0, BKV)
        dp = head_dim_products(DH_D, q0, dh_once, V_D, c * L + s0, bh, DHHV, BQ, BKV, BV, NSLICE, UNROLL, DOT_PREC)
        col = (tl.load(GATE_I + bh * SP + t_s) - tl.load(GATE_B + bh * SP + t_s)) * LOG2E
        a = gate_matrix(row, col, t_s[None, :] <= t_q[:, None]) * (dp * inv_den[:, None] + dz[:, None])
        k_tile = K_D.load([bh, c * L + s0, k0]).reshape(BKV, BK)
        dq += tl.dot(a.to(dtype), k_tile, input_precision=DOT_PREC)
        scores = tl.dot(q_tile, tl.trans(k_tile), input_precision=DOT_PREC)
        qdq += tl.sum(tl.where(t_s[None, :] < t_q[:, None], a * scores, 0.0), axis=1)
    DQ_D.store([bh, q0, k0], (dq * qk_scale).to(DQ_D.dtype).reshape(1, BQ, BK))
    tl.store(QDQ + (pid_k * tl.num_programs(2) + bh) * SP + t_q, qdq * qk_scale)


@triton.jit
def bw_chunk_dk_kernel(
    Q_D,
    K_D,
    V_D,
    VS_D,
    DH_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DZ,
    DC_D,
    DN_ST,
    M_ST,
    M_TOK,
    DK_D,
    KDK,
    KDK_INTER,
    KDK_OFF,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BS: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """``dk`` for ``BKV`` keys of one chunk and a ``BK`` slice of the head dim.

    Grid ``(cdiv(DHQK, BK), NC * L / BKV, BH)``. Inter term from the next state's gradient
    ``w_s (dC_{c+1} v_s + dn_{c+1})``, then query blocks from the diagonal to the chunk end.
    Also writes this slice's parts of ``k . dk`` (each ``(cdiv(DHQK, BK), BH, SP)``, fp32): ``KDK`` all of
    it, ``KDK_INTER`` the term from later chunks, ``KDK_OFF`` the intra-chunk term without the diagonal
    (``t == s``), summed from the gate matrix and the slice's scores as in the ``dq`` kernel.
    Descriptors: ``Q_D, K_D, DK_D [BH, S, DHQK]`` (blocks ``[1, BQ, BK]``, ``[1, BKV, BK]``, ``[1, BKV, BK]``),
    ``V_D, DH_D [BH, S, DHHV]`` (``[1, BKV, BV]``, ``[1, BQ, BV]``); the inter term loops over ``BS`` slices
    through ``VS_D`` (``v``, ``[1, BKV, BS]``) and ``DC_D [BH * (NC+1), DHQK, DHHV]`` (``[1, BK, BS]``). ``NSLICE = cdiv(DHHV, BV)``; ``UNROLL`` unrolls the ``v dh^T`` slices so that the query
    loop is pipelined, and with one slice loads the value tile once.
    """
    pid_k, pid_cs, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cs // (L // BKV)
    s_start = (pid_cs % (L // BKV)) * BKV
    t_s = c * L + s_start + tl.arange(0, BKV)
    s0, k0 = c * L + s_start, pid_k * BK
    offs_k = k0 + tl.arange(0, BK)
    dtype = Q_D.dtype
    st = bh * (NC + 1) + c + 1
    b_s = tl.load(GATE_B + bh * SP + t_s)
    i_s = tl.load(GATE_I + bh * SP + t_s)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    m_next = tl.load(M_ST + st) if EXP else 0.0
    w_inter = tl.exp(g - b_s + i_s - m_next)

    dk = tl.zeros((BKV, BK), dtype=tl.float32)
    for vv in range(0, DHHV, BS):
        v_tile = VS_D.load([bh, s0, vv]).reshape(BKV, BS)
        dc_tile = DC_D.load([st, k0, vv]).reshape(BK, BS)
        dk += tl.dot(v_tile, tl.trans(dc_tile.to(dtype)), input_precision=DOT_PREC)
    dn_tile = tl.load(DN_ST + st * DHQK + offs_k, mask=offs_k < DHQK, other=0.0)
    dk = (dk + dn_tile[None, :]) * w_inter[:, None]
    k_tile = K_D.load([bh, s0, k0]).reshape(BKV, BK)
    kdk_inter = tl.sum(k_tile.to(tl.float32) * dk, axis=1)
    kdk_diag = tl.zeros((BKV,), dtype=tl.float32)
    kdk_off = tl.zeros((BKV,), dtype=tl.float32)

    v_once = operand_once(V_D, s0, bh, BKV, BV, NSLICE, UNROLL)
    row = (i_s - b_s) * LOG2E  # the dq kernel adds the same two parts: both form the same gate matrix
    for q_off in range((s_start // BQ) * BQ, L, BQ):
        t_q = c * L + q_off + tl.arange(0, BQ)
        inv_den = tl.load(INV_DEN + bh * SP + t_q)
        dpt = head_dim_products(V_D, s0, v_once, DH_D, c * L + q_off, bh, DHHV, BKV, BQ, BV, NSLICE, UNROLL, DOT_PREC)
        m_q = tl.load(M_TOK + bh * SP + t_q) if EXP else tl.zeros((BQ,), dtype=tl.float32)
        col = (tl.load(GATE_B + bh * SP + t_q) - m_q) * LOG2E
        dz_q = tl.load(DZ + bh * SP + t_q)
        at = gate_matrix(row, col, t_q[None, :] >= t_s[:, None]) * (dpt * inv_den[None, :] + dz_q[None, :]) * qk_scale
        q_tile = Q_D.load([bh, c * L + q_off, k0]).reshape(BQ, BK)
        dk += tl.dot(at.to(dtype), q_tile, input_precision=DOT_PREC)
        d_gate = at * tl.dot(k_tile, tl.trans(q_tile), input_precision=DOT_PREC)
        kdk_off += tl.sum(tl.where(t_q[None, :] > t_s[:, None], d_gate, 0.0), axis=1)
        kdk_diag += tl.sum(tl.where(t_q[None, :] == t_s[:, None], d_gate, 0.0), axis=1)
    DK_D.store([bh, s0, k0], dk.to(DK_D.dtype).reshape(1, BKV, BK))
    part = (pid_k * tl.num_programs(2) + bh) * SP + t_s
    tl.store(KDK + part, kdk_inter + kdk_off + kdk_diag)
    tl.store(KDK_INTER + part, kdk_inter)
    tl.store(KDK_OFF + part, kdk_off)


@triton.jit
def bw_chunk_dv_kernel(
    Q_D,
    K_D,
    KS_D,
    DH_D,
    GATE_B,
    GATE_I,
    INV_DEN,
    DC_D,
    M_ST,
    M_TOK,
    DV_D,
    SP,
    NC,
    DHQK,
    DHHV,
    qk_scale,
    L: tl.constexpr,
    BQ: tl.constexpr,
    BKV: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    BS: tl.constexpr,
    EXP: tl.constexpr,
    DOT_PREC: tl.constexpr,
    NSLICE: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """``dv`` for ``BKV`` keys of one chunk and a ``BV`` slice of the value head dim.

    Grid ``(cdiv(DHHV, BV), NC * L / BKV, BH)``. Inter term ``w_s dC_{c+1}^T k_s``, then query blocks from
    the diagonal: ``dv += (P * q k^T / den)^T dh`` with the scores built over ``BK`` slices (the inverse
    normalizer scales the gate matrix's query columns in fp32, not ``dh``).
    Descriptors: ``Q_D, K_D [BH, S, DHQK]`` (blocks ``[1, BQ, BK]``, ``[1, BKV, BK]``), ``DH_D, DV_D
    [BH, S, DHHV]`` (``[1, BQ, BV]``, ``[1, BKV, BV]``); the inter term loops over ``BS`` slices through
    ``KS_D`` (``k``, ``[1, BKV, BS]``) and ``DC_D [BH * (NC+1), DHQK, DHHV]`` (``[1, BS, BV]``). ``NSLICE = cdiv(DHQK, BK)``; ``UNROLL`` unrolls the ``k q^T`` slices so that the query loop is pipelined,
    and with one slice loads the key tile once.
    """
    pid_v, pid_cs, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = pid_cs // (L // BKV)
    s_start = (pid_cs % (L // BKV)) * BKV
    t_s = c * L + s_start + tl.arange(0, BKV)
    s0, v0 = c * L + s_start, pid_v * BV
    dtype = Q_D.dtype
    st = bh * (NC + 1) + c + 1
    b_s = tl.load(GATE_B + bh * SP + t_s)
    i_s = tl.load(GATE_I + bh * SP + t_s)
    g = tl.load(GATE_B + bh * SP + c * L + L - 1)
    m_next = tl.load(M_ST + st) if EXP else 0.0
    w_inter = tl.exp(g - b_s + i_s - m_next)

    dv = tl.zeros((BKV, BV), dtype=tl.float32)
    for kk in range(0, DHQK, BS):
        k_tile = KS_D.load([bh, s0, kk]).reshape(BKV, BS)
        dc_tile = DC_D.load([st, kk, v0]).reshape(BS, BV)
        dv += tl.dot(k_tile, dc_tile.to(dtype), input_precision=DOT_PREC)
    dv = dv * w_inter[:, None]

    k_once = operand_once(K_D, s0, bh, BKV, BK, NSLICE, UNROLL)
    row = (i_s - b_s) * LOG2E + tl.log2(qk_scale)
    for q_off in range((s_start // BQ) * BQ, L, BQ):
        t_q = c * L + q_off + tl.arange(0, BQ)
        st_scores = head_dim_products(
            K_D, s0, k_once, Q_D, c * L + q_off, bh, DHQK, BKV, BQ, BK, NSLICE, UNROLL, DOT_PREC
        )
        m_q = tl.load(M_TOK + bh * SP + t_q) if EXP else tl.zeros((BQ,), dtype=tl.float32)
        col = (tl.load(GATE_B + bh * SP + t_q) - m_q) * LOG2E
        inv_den = tl.load(INV_DEN + bh * SP + t_q)
        pt = gate_matrix(row, col, t_q[None, :] >= t_s[:, None]) * st_scores * inv_den[None, :]
        dh_tile = DH_D.load([bh, c * L + q_off, v0]).reshape(BQ, BV)
        dv += tl.dot(pt.to(dtype), dh_tile, input_precision=DOT_PREC)
    DV_D.store([bh, s0, v0], dv.to(DV_D.dtype).reshape(1, BKV, BV))


def launch_bw_states(
    q: torch.Tensor,
    dh: torch.Tensor,
    gate_b: torch.Tensor,
    inv_den: torch.Tensor,
    dz: torch.Tensor,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    m_tok: torch.Tensor,
    dc_last: torch.Tensor,
    dn_last: torch.Tensor,
    dc_st: torch.Tensor,
    dn_st: torch.Tensor,
    dc_first: torch.Tensor,
    has_dlast: bool,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> torch.Tensor:
    """``bw_chunk_state_grads_kernel``: fills the state gradients ``dc_st (BH, NC+1, DHQK, DHHV)`` (input dtype),
    fp32 ``dn_st (BH, NC+1, DHQK)`` and ``dc_first (BH, DHQK, DHHV)`` (the initial state's) from ``dh`` and the
    forward's chunk states; returns the fp32 per-chunk partial sums ``x_part (tiles, BH, NC)`` of the forget
    gates' gradient."""
    DHQK, DHHV = q.shape[-1], dh.shape[-1]
    BH, NC = c_st.shape[:2]
    grid = (triton.cdiv(DHQK, t.BK), triton.cdiv(DHHV, t.BV), BH)
    x_part = torch.empty(grid[0] * grid[1], BH, NC, dtype=torch.float32, device=q.device)
    bw_chunk_state_grads_kernel[grid](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(dh, t.BQ, t.BV),
        gate_b,
        inv_den,
        dz,
        c_st,
        head_tiles(c_st, t.BK, t.BV),
        n_st,
        m_st,
        m_tok,
        dc_last,
        dn_last,
        head_tiles(dc_st, t.BK, t.BV),
        dn_st,
        dc_first,
        x_part,
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        **bw_states_constexprs(t, chunk_size, q.dtype, exp, has_dlast),
    )
    return x_part


def bw_states_constexprs(
    t: KernelTiles, chunk_size: int, dtype: torch.dtype, exp: bool, has_dlast: bool
) -> dict[str, object]:
    """The compile-time arguments of a ``bw_chunk_state_grads_kernel`` launch, warps and stages included."""
    return dict(
        L=chunk_size,
        BL=t.BQ,
        BK=t.BK,
        BV=t.BV,
        EXP=exp,
        HAS_DLAST=has_dlast,
        DOT_PREC=dot_precision(dtype),
        STATE_AHEAD=reads_state_ahead(t, dtype, chunk_size),
        COMPILED=not interpreting(),
        **t.launch(),
    )


def launch_bw_dq(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dh: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    inv_den: torch.Tensor,
    dz: torch.Tensor,
    c_st: torch.Tensor,
    n_st: torch.Tensor,
    m_st: torch.Tensor,
    m_tok: torch.Tensor,
    dq: torch.Tensor,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> torch.Tensor:
    """``bw_chunk_dq_kernel``: writes ``dq`` (shaped like ``q``); returns the fp32 per-tile ``q . dq`` sums
    ``qdq (tiles, BH, SP)`` for the gate gradients."""
    DHQK, DHHV = q.shape[-1], v.shape[-1]
    BH, NC = m_st.shape[0], m_st.shape[1] - 1
    SP = NC * chunk_size
    qdq = torch.empty(triton.cdiv(DHQK, t.BK), BH, SP, dtype=torch.float32, device=q.device)
    slices = slice_args("bw_dq", t, DHQK, DHHV, q.element_size())
    bs = slices["BS"]
    bw_chunk_dq_kernel[(triton.cdiv(DHQK, t.BK), NC * (chunk_size // t.BQ), BH)](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(k, t.BKV, t.BK),
        head_tiles(v, t.BKV, t.BV),
        head_tiles(dh, t.BQ, t.BV),
        head_tiles(dh, t.BQ, bs),
        gate_b,
        gate_i,
        inv_den,
        dz,
        head_tiles(c_st, t.BK, bs),
        n_st,
        m_st,
        m_tok,
        head_tiles(dq, t.BQ, t.BK),
        qdq,
        SP,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        STATE_STAGES=t.state_loop_stages,
        **slices,
        **tile_args(t),
        L=chunk_size,
        EXP=exp,
        DOT_PREC=dot_precision(q.dtype),
    )
    return qdq


def launch_bw_dk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dh: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    inv_den: torch.Tensor,
    dz: torch.Tensor,
    dc_st: torch.Tensor,
    dn_st: torch.Tensor,
    m_st: torch.Tensor,
    m_tok: torch.Tensor,
    dk: torch.Tensor,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bw_chunk_dk_kernel``: writes ``dk`` (shaped like ``k``); returns the fp32 per-tile sums ``kdk``,
    ``kdk_inter`` and ``kdk_off`` (each ``(tiles, BH, SP)``) of ``k . dk`` for the gate gradients."""
    DHQK, DHHV = q.shape[-1], v.shape[-1]
    BH, NC = m_st.shape[0], m_st.shape[1] - 1
    SP = NC * chunk_size
    kdk, kdk_inter, kdk_off = (
        torch.empty(triton.cdiv(DHQK, t.BK), BH, SP, dtype=torch.float32, device=q.device) for _ in range(3)
    )
    slices = slice_args("bw_dk", t, DHQK, DHHV, q.element_size())
    bs = slices["BS"]
    bw_chunk_dk_kernel[(triton.cdiv(DHQK, t.BK), NC * (chunk_size // t.BKV), BH)](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(k, t.BKV, t.BK),
        head_tiles(v, t.BKV, t.BV),
        head_tiles(v, t.BKV, bs),
        head_tiles(dh, t.BQ, t.BV),
        gate_b,
        gate_i,
        inv_den,
        dz,
        head_tiles(dc_st, t.BK, bs),
        dn_st,
        m_st,
        m_tok,
        head_tiles(dk, t.BKV, t.BK),
        kdk,
        kdk_inter,
        kdk_off,
        SP,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        **slices,
        **tile_args(t),
        L=chunk_size,
        EXP=exp,
        DOT_PREC=dot_precision(q.dtype),
    )
    return kdk, kdk_inter, kdk_off


def launch_bw_dv(
    q: torch.Tensor,
    k: torch.Tensor,
    dh: torch.Tensor,
    gate_b: torch.Tensor,
    gate_i: torch.Tensor,
    inv_den: torch.Tensor,
    dc_st: torch.Tensor,
    m_st: torch.Tensor,
    m_tok: torch.Tensor,
    dv: torch.Tensor,
    chunk_size: int,
    exp: bool,
    t: KernelTiles,
) -> None:
    """``bw_chunk_dv_kernel``: writes ``dv`` (shaped like ``v``)."""
    DHQK, DHHV = q.shape[-1], dv.shape[-1]
    BH, NC = m_st.shape[0], m_st.shape[1] - 1
    slices = slice_args("bw_dv", t, DHQK, DHHV, q.element_size())
    bs = slices["BS"]
    bw_chunk_dv_kernel[(triton.cdiv(DHHV, t.BV), NC * (chunk_size // t.BKV), BH)](
        head_tiles(q, t.BQ, t.BK),
        head_tiles(k, t.BKV, t.BK),
        head_tiles(k, t.BKV, bs),
        head_tiles(dh, t.BQ, t.BV),
        gate_b,
        gate_i,
        inv_den,
        head_tiles(dc_st, bs, t.BV),
        m_st,
        m_tok,
        head_tiles(dv, t.BKV, t.BV),
        NC * chunk_size,
        NC,
        DHQK,
        DHHV,
        DHQK**-0.5,
        **slices,
        **tile_args(t),
        L=chunk_size,
        EXP=exp,
        DOT_PREC=dot_precision(q.dtype),
    )
